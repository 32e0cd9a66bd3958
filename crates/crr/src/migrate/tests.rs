use super::*;

const BASE: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT);";

fn db(sql: &str) -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(sql).unwrap();
    conn
}

fn refused(conn: &Connection, sql: &str) -> Vec<SchemaViolation> {
    match plan(conn, "main", sql) {
        Err(CrrError::Schema(v)) => v,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn assert_one(v: &[SchemaViolation], table: &str, column: Option<&str>, word: &str) {
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].table, table);
    assert_eq!(v[0].column.as_deref(), column);
    assert!(v[0].rule.contains(word), "{:?} lacks {word:?}", v[0].rule);
}

fn apply(conn: &Connection, p: &SchemaPlan) {
    for s in &p.statements {
        conn.execute_batch(s).unwrap();
    }
}

#[test]
fn new_table_with_index() {
    let conn = db("");
    let sql = "-- users\nCREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY NOT NULL, a TEXT);
               CREATE INDEX IF NOT EXISTS t_a ON t(a); /* done */";
    let p = plan(&conn, "main", sql).unwrap();
    assert_eq!(
        p.statements,
        [
            "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT)",
            "CREATE INDEX t_a ON t(a)"
        ]
    );
    assert_eq!(p.new_tables, ["t"]);
    assert!(p.altered_tables.is_empty());
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 0, "planning must not touch the target");
}

#[test]
fn new_nullable_column() {
    let conn = db(BASE);
    let p = plan(
        &conn,
        "main",
        "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INT)",
    )
    .unwrap();
    assert_eq!(p.statements, ["ALTER TABLE \"t\" ADD COLUMN b INT"]);
    assert_eq!(p.altered_tables, ["t"]);
    assert!(p.new_tables.is_empty());
}

#[test]
fn new_defaulted_column_keeps_check_and_collate() {
    let conn = db(BASE);
    let def = "\"b c\" TEXT NOT NULL DEFAULT 'x, y' CHECK (length(\"b c\") > 0) COLLATE NOCASE";
    let sql =
        format!("CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, {def}, CHECK (id > 0))");
    let conn2 = db("CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, CHECK (id > 0))");
    let p = plan(&conn2, "main", &sql).unwrap();
    assert_eq!(
        p.statements,
        [format!("ALTER TABLE \"t\" ADD COLUMN {def}")]
    );
    // Without the table CHECK the old table differs in its constraints.
    assert_one(&refused(&conn, &sql), "t", None, "constraint");
}

#[test]
fn new_index_on_existing_table() {
    let conn = db(BASE);
    let p = plan(
        &conn,
        "main",
        &format!("{BASE} CREATE INDEX t_a ON t(a COLLATE NOCASE)"),
    )
    .unwrap();
    assert_eq!(p.statements, ["CREATE INDEX t_a ON t(a COLLATE NOCASE)"]);
    assert_eq!(p.altered_tables, ["t"]);
}

#[test]
fn up_to_date_schema_plans_nothing() {
    let sql = "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY NOT NULL, a TEXT);
               create index t_a on t(a);";
    let conn = db(sql);
    let reformatted =
        "create table if not exists T ( ID integer primary key not null , \"a\" text ) ;
                       CREATE INDEX  t_a ON t( a )";
    assert_eq!(plan(&conn, "main", sql).unwrap(), SchemaPlan::default());
    assert_eq!(
        plan(&conn, "main", reformatted).unwrap(),
        SchemaPlan::default()
    );
    assert_eq!(plan(&conn, "main", "").unwrap(), SchemaPlan::default());
}

#[test]
fn applied_plan_replans_empty() {
    let conn = db(BASE);
    let sql = "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT,
                 b TEXT DEFAULT 'x' CHECK (b <> '') COLLATE NOCASE, c INT AS (id * 2),
                 d REAL DEFAULT -1.5e3, e BLOB DEFAULT (x'00'));
               CREATE INDEX t_b ON t(b);
               CREATE TABLE u(k TEXT PRIMARY KEY NOT NULL, v ANY) STRICT;
               CREATE INDEX u_v ON u(v) WHERE v IS NOT NULL;";
    let p = plan(&conn, "main", sql).unwrap();
    assert_eq!(p.new_tables, ["u"]);
    assert_eq!(p.altered_tables, ["t"]);
    assert_eq!(p.statements.len(), 7, "{:?}", p.statements);
    apply(&conn, &p);
    assert_eq!(plan(&conn, "main", sql).unwrap(), SchemaPlan::default());
}

#[test]
fn attached_schema_statements_name_it() {
    let conn = db("ATTACH ':memory:' AS global; CREATE TABLE global.t(id INTEGER PRIMARY KEY NOT NULL, a TEXT)");
    let sql = "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INT);
               CREATE INDEX t_b ON t(b);
               CREATE TABLE u(id INTEGER PRIMARY KEY NOT NULL)";
    let p = plan(&conn, "global", sql).unwrap();
    assert_eq!(
        p.statements,
        [
            "ALTER TABLE \"global\".\"t\" ADD COLUMN b INT",
            "CREATE INDEX \"global\".t_b ON t(b)",
            "CREATE TABLE \"global\".u(id INTEGER PRIMARY KEY NOT NULL)",
        ]
    );
    apply(&conn, &p);
    assert_eq!(plan(&conn, "global", sql).unwrap(), SchemaPlan::default());
    let in_main: i64 = conn
        .query_row("SELECT count(*) FROM main.sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(in_main, 0);
}

#[test]
fn removed_column_is_refused() {
    let conn = db(BASE);
    let v = refused(&conn, "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL)");
    assert_one(&v, "t", Some("a"), "removed");
}

#[test]
fn removed_crr_table_is_refused() {
    let conn = db(BASE);
    conn.execute_batch(
        "CREATE TABLE crr_tables(id INTEGER PRIMARY KEY, name TEXT);
         INSERT INTO crr_tables(name) VALUES ('t');",
    )
    .unwrap();
    let v = refused(&conn, "CREATE TABLE other(id INTEGER PRIMARY KEY NOT NULL)");
    assert_one(&v, "t", None, "table was removed");
    // Named in another case, it is the same table.
    assert!(plan(&conn, "main", &BASE.replace("TABLE t(", "TABLE T(")).is_ok());
}

#[test]
fn type_change_is_refused() {
    let conn = db(BASE);
    let v = refused(
        &conn,
        "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a INT)",
    );
    assert_one(&v, "t", Some("a"), "from TEXT to INT");
    let v = refused(
        &conn,
        "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT COLLATE NOCASE)",
    );
    assert_one(&v, "t", Some("a"), "definition changed");
    let v = refused(
        &conn,
        "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT DEFAULT 'z')",
    );
    assert_one(&v, "t", Some("a"), "DEFAULT changed");
    let v = refused(
        &conn,
        "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT) STRICT",
    );
    assert_one(&v, "t", None, "STRICT");
}

#[test]
fn not_null_column_without_default_is_refused() {
    let conn = db(BASE);
    let v = refused(
        &conn,
        "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INT NOT NULL)",
    );
    assert_one(&v, "t", Some("b"), "DEFAULT");
}

#[test]
fn unaddable_columns_are_refused() {
    let conn = db(BASE);
    let v = refused(
        &conn,
        "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, b INT, a TEXT)",
    );
    assert_one(&v, "t", Some("b"), "after all existing");
    let v = refused(
        &conn,
        "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INT AS (id) STORED)",
    );
    assert_one(&v, "t", Some("b"), "STORED");
    let v = refused(
        &conn,
        "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, b DEFAULT CURRENT_TIMESTAMP)",
    );
    assert_one(&v, "t", Some("b"), "constant DEFAULT");
    let v = refused(
        &conn,
        "CREATE TABLE t(a TEXT, id INTEGER PRIMARY KEY NOT NULL)",
    );
    assert!(v.iter().any(|v| v.rule.contains("order")), "{v:?}");
}

#[test]
fn index_redefinition_is_refused() {
    let conn = db(&format!("{BASE} CREATE INDEX t_a ON t(a)"));
    let v = refused(&conn, &format!("{BASE} CREATE INDEX t_a ON t(a, id)"));
    assert_one(&v, "t", None, "create a new index under a new name");
}

#[test]
fn garbage_is_refused() {
    let conn = db("");
    let v = refused(
        &conn,
        "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT,);",
    );
    assert_one(&v, "t", None, "schema SQL does not run");
    let v = refused(&conn, "this is not sql");
    assert_eq!(v.len(), 1);
    assert!(v[0].rule.contains("only CREATE TABLE"), "{v:?}");
    let v = refused(
        &conn,
        "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a 'unterminated",
    );
    assert!(v[0].rule.contains("does not run"), "{v:?}");
}

#[test]
fn views_triggers_and_other_statements_are_refused() {
    let conn = db("");
    let sql = "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT);
               CREATE VIEW v AS SELECT * FROM t;
               CREATE TRIGGER tr AFTER INSERT ON t BEGIN
                 UPDATE t SET a = CASE WHEN a IS NULL THEN 'x' ELSE a END; SELECT 1;
               END;
               INSERT INTO t VALUES (1, 'a');
               CREATE TEMP TABLE tmp(id INTEGER PRIMARY KEY NOT NULL);";
    let v = refused(&conn, sql);
    let tables: Vec<_> = v.iter().map(|v| v.table.as_str()).collect();
    assert_eq!(tables, ["v", "t", "", "tmp"], "{v:?}");
    assert!(v[1].rule.contains("trigger tr"));
}

#[test]
fn rule_violations_of_all_tables_are_reported() {
    let conn = db("");
    let sql = "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT UNIQUE);
               CREATE TABLE u(a, b NOT NULL)";
    let v = refused(&conn, sql);
    let found: Vec<_> = v
        .iter()
        .map(|v| (v.table.as_str(), v.column.as_deref()))
        .collect();
    assert_eq!(
        found,
        [
            ("t", Some("id")),
            ("t", Some("a")),
            ("u", None),
            ("u", Some("b"))
        ]
    );
}

#[test]
fn existing_tables_not_in_the_text_are_left_alone() {
    let conn =
        db("CREATE TABLE legacy(x); CREATE TABLE crr_tables(id INTEGER PRIMARY KEY, name TEXT)");
    assert_eq!(plan(&conn, "main", "").unwrap(), SchemaPlan::default());
    let p = plan(&conn, "main", BASE).unwrap();
    assert_eq!(p.new_tables, ["t"]);
}

#[test]
fn name_taken_by_another_kind_is_refused() {
    let conn = db(&format!("{BASE} CREATE VIEW v AS SELECT 1"));
    let v = refused(&conn, "CREATE TABLE v(id INTEGER PRIMARY KEY NOT NULL)");
    assert_one(&v, "v", None, "already has a view");
}

#[test]
fn constant_defaults() {
    for d in ["1", "-1.5", "'a'", "NULL", "TRUE", "x'00'", "(5)", "((-2))"] {
        assert!(is_constant(d), "{d}");
    }
    for d in ["CURRENT_TIMESTAMP", "(1 + 1)", "(random())", "- 'a'"] {
        assert!(!is_constant(d), "{d}");
    }
}

#[test]
fn byte_order_mark_is_ignored() {
    let conn = db("");
    let p = plan(&conn, "main", &format!("\u{feff}{BASE}\u{feff}")).unwrap();
    assert_eq!(p.new_tables, ["t"]);
}

const FRAGMENTS: &[&str] = &[
    "CREATE",
    "TABLE",
    "INDEX",
    "UNIQUE",
    "TRIGGER",
    "VIEW",
    "IF NOT EXISTS",
    "t",
    "u",
    "\"t\"",
    "[a b]",
    "`c`",
    "(",
    ")",
    ",",
    ";",
    "id",
    "INTEGER",
    "PRIMARY KEY",
    "NOT NULL",
    "DEFAULT",
    "'x'",
    "'",
    "\"",
    "--",
    "\n",
    "/*",
    "*/",
    "CHECK",
    "AS",
    "STORED",
    "ON",
    "BEGIN",
    "END",
    "CASE",
    "1e-",
    "x'0",
    "é",
    "AUTOINCREMENT",
    "REFERENCES",
    "COLLATE",
];

proptest::proptest! {
    #[test]
    fn never_panics(parts in proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..40)) {
        let conn = db(BASE);
        let _ = plan(&conn, "main", &parts.join(" "));
        let _ = plan(&conn, "main", &parts.concat());
    }

    #[test]
    fn never_panics_on_any_text(text in "\\PC{0,120}") {
        let conn = db(BASE);
        let _ = plan(&conn, "main", &text);
    }
}

const WIDE: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INT, c TEXT);";

fn crr_db(sql: &str, tables: &[&str]) -> Connection {
    let conn = db(sql);
    conn.execute_batch("CREATE TABLE crr_tables(id INTEGER PRIMARY KEY, name TEXT);")
        .unwrap();
    for t in tables {
        conn.execute("INSERT INTO crr_tables(name) VALUES (?1)", [t])
            .unwrap();
    }
    conn
}

#[test]
fn drops_are_planned_only_when_allowed() {
    let conn = crr_db(
        &format!("{WIDE} CREATE INDEX t_b ON t(b); CREATE TABLE u(k TEXT PRIMARY KEY NOT NULL);"),
        &["t", "u"],
    );
    let text = "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, c TEXT);";
    let v = refused(&conn, text);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v.iter().all(|v| v.drops_data), "{v:?}");
    assert_eq!(v[0].column.as_deref(), Some("b"));
    assert_eq!((v[1].table.as_str(), v[1].column.as_deref()), ("u", None));

    let p = plan_with(&conn, "main", text, Drops::Allowed).unwrap();
    assert_eq!(
        p.dropped_columns,
        [DroppedColumns {
            table: "t".into(),
            columns: vec!["b".into()],
            indexes: vec!["t_b".into()],
        }]
    );
    assert_eq!(p.dropped_tables, ["u"]);
    assert!(p.statements.is_empty() && p.drops());
}

#[test]
fn a_primary_key_column_is_never_dropped() {
    let conn = crr_db(
        "CREATE TABLE t(a TEXT NOT NULL, b TEXT NOT NULL, v, PRIMARY KEY (a, b));",
        &["t"],
    );
    let err = plan_with(
        &conn,
        "main",
        "CREATE TABLE t(a TEXT NOT NULL, v, PRIMARY KEY (a));",
        Drops::Allowed,
    )
    .unwrap_err();
    let CrrError::Schema(v) = err else {
        panic!("{err}")
    };
    assert!(
        v.iter().any(|v| v.rule.contains("primary-key column")),
        "{v:?}"
    );
    assert!(v.iter().all(|v| !v.drops_data), "{v:?}");
}

#[test]
fn what_sqlite_cannot_drop_is_refused_at_planning() {
    // A table CHECK reads b: removing it changes a table constraint.
    let conn = crr_db(
        "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INT, CHECK (b > 0));",
        &["t"],
    );
    let err = plan_with(
        &conn,
        "main",
        "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, CHECK (b > 0));",
        Drops::Allowed,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no such column"), "{err}");
    let err = plan_with(
        &conn,
        "main",
        "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT);",
        Drops::Allowed,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("table constraint"), "{err}");
    // A generated column reading the dropped one.
    let conn = crr_db(
        "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INT, g AS (b * 2));",
        &["t"],
    );
    let err = plan_with(
        &conn,
        "main",
        "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, g AS (a || 'x'));",
        Drops::Allowed,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("g"), "{err}");
}

#[test]
fn a_rename_is_refused_with_the_way_to_do_it() {
    let conn = crr_db(WIDE, &["t"]);
    for drops in [Drops::Refused, Drops::Allowed] {
        let v = match plan_with(
            &conn,
            "main",
            "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, c TEXT, bb INT);",
            drops,
        ) {
            Err(CrrError::Schema(v)) => v,
            other => panic!("{other:?}"),
        };
        assert_one(&v, "t", Some("b"), "renaming a column is not supported");
        assert!(
            v[0].rule.contains("UPDATE \"t\" SET \"bb\" = \"b\""),
            "{v:?}"
        );
        assert!(!v[0].drops_data);
    }
}
