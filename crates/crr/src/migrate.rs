//! Additive schema planning: what statements bring a database's tables to
//! the tables a schema text declares, without dropping or changing anything.

use rusqlite::{Connection, OptionalExtension};

use crate::error::{CrrError, Result, SchemaViolation};
use crate::schema::{introspect, quote_ident, ColumnInfo, TableInfo};
use crate::schema_rules::{validate, violation};
use crate::sql_text::{normalized, tokenize, Kind};

mod statements;
mod table_text;

use statements::*;
use table_text::*;

/// What it takes to bring a database's tables to a schema text, additively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaPlan {
    /// SQL statements to run, in order: CREATE TABLE for new tables, ALTER TABLE ... ADD COLUMN for new columns, CREATE INDEX for new indexes.
    pub statements: Vec<String>,
    /// Tables the schema creates (not yet in the database), in schema order.
    pub new_tables: Vec<String>,
    /// Existing tables that gain columns or indexes.
    pub altered_tables: Vec<String>,
}

/// Plans how to bring the tables of database `schema` on `conn` to `sql`:
/// the text of one or more schema files (CREATE TABLE and CREATE INDEX
/// statements, `IF NOT EXISTS` allowed, comments allowed).
///
/// Statements come grouped per table, in schema order: a new table's
/// CREATE TABLE then its indexes; an existing table's ALTER TABLE ... ADD
/// COLUMN statements then its new indexes. They are meant to run on `conn`
/// itself: for a `schema` other than `main` they name it (`CREATE TABLE
/// "global".t ...`, `CREATE INDEX "global".i ON t ...`).
///
/// Tables of the database that the text does not mention are left alone.
/// Every table of the text must satisfy the CRR rules, and existing tables
/// may only gain columns (appended, nullable or defaulted, not in the
/// primary key) and indexes. Anything else refuses the whole plan with
/// [`CrrError::Schema`] naming every violation. `conn` is only read.
pub fn plan(conn: &Connection, schema: &str, sql: &str) -> Result<SchemaPlan> {
    let scratch = Connection::open_in_memory()?;
    let (mut violations, ran) = load(&scratch, sql)?;
    let mut planner = Planner {
        target: conn,
        schema,
        scratch: &scratch,
        plan: SchemaPlan::default(),
        violations: Vec::new(),
    };
    // A statement that did not run leaves the scratch tables incomplete:
    // comparing them would only add noise.
    if ran {
        for (name, table_sql) in scratch_tables(&scratch)? {
            planner.table(&name, &table_sql)?;
        }
    }
    violations.append(&mut planner.violations);
    if violations.is_empty() {
        Ok(planner.plan)
    } else {
        Err(CrrError::Schema(violations))
    }
}

// ---- running the schema text in a scratch database ----

/// Runs the allowed statements of `sql` in `scratch`; returns the violations
/// and whether every allowed statement ran.
fn load(scratch: &Connection, sql: &str) -> Result<(Vec<SchemaViolation>, bool)> {
    let tokens = tokenize(sql);
    let mut violations = Vec::new();
    for tokens in split_statements(&tokens) {
        let statement = classify(sql, tokens);
        match statement.object {
            Object::Refused(rule) => violations.push(violation(&statement.table, None, rule)),
            Object::Table | Object::Index => {
                if let Err(e) = scratch.execute(statement.text, []) {
                    let rule = format!("schema SQL does not run: {e}");
                    violations.push(violation(&statement.table, None, rule));
                    return Ok((violations, false));
                }
            }
        }
    }
    violations.extend(temp_objects(scratch)?);
    Ok((violations, true))
}

fn temp_objects(scratch: &Connection) -> Result<Vec<SchemaViolation>> {
    let mut stmt = scratch.prepare("SELECT tbl_name FROM temp.sqlite_master ORDER BY rowid")?;
    let tables = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(tables
        .iter()
        .map(|t| {
            violation(
                t,
                None,
                "temporary tables and indexes are not allowed in schema files",
            )
        })
        .collect())
}

/// (name, CREATE TABLE sql) of the scratch tables, in schema order.
fn scratch_tables(scratch: &Connection) -> Result<Vec<(String, String)>> {
    let mut stmt = scratch.prepare(
        "SELECT name, coalesce(sql, '') FROM main.sqlite_master
         WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid",
    )?;
    let tables = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(tables)
}

// ---- comparing with the target ----

struct Planner<'c> {
    target: &'c Connection,
    schema: &'c str,
    scratch: &'c Connection,
    plan: SchemaPlan,
    violations: Vec<SchemaViolation>,
}

/// A schema object of the target: (type, name, sql).
type TargetObject = (String, String, String);

impl Planner<'_> {
    fn table(&mut self, name: &str, sql: &str) -> Result<()> {
        self.violations
            .extend(validate(self.scratch, "main", name)?);
        match self.target_object(name)? {
            None => {
                let create = self.qualify(sql)?;
                self.plan.statements.push(create);
                let indexes = self.indexes(name)?;
                self.plan.statements.extend(indexes);
                self.plan.new_tables.push(name.to_owned());
            }
            Some((kind, existing, existing_sql)) if kind == "table" => {
                let mut statements = self.alter(name, sql, &existing, &existing_sql)?;
                statements.extend(self.indexes(name)?);
                if !statements.is_empty() {
                    self.plan.statements.extend(statements);
                    self.plan.altered_tables.push(existing);
                }
            }
            Some((kind, existing, _)) => {
                let rule = format!("the database already has a {kind} named {existing}");
                self.violations.push(violation(name, None, rule));
            }
        }
        Ok(())
    }

    fn target_object(&self, name: &str) -> Result<Option<TargetObject>> {
        let row = self
            .target
            .query_row(
                &format!(
                    "SELECT type, name, coalesce(sql, '') FROM {}.sqlite_master
                     WHERE name = ?1 COLLATE NOCASE",
                    quote_ident(self.schema)
                ),
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(row)
    }

    fn is_main(&self) -> bool {
        self.schema.eq_ignore_ascii_case("main")
    }

    /// Makes a CREATE TABLE/INDEX text from sqlite_master (which always
    /// reads `CREATE [UNIQUE] TABLE|INDEX name…`) name the target schema.
    fn qualify(&self, sql: &str) -> Result<String> {
        if self.is_main() {
            return Ok(sql.to_owned());
        }
        let tokens = tokenize(sql);
        let name = tokens
            .iter()
            .position(|t| t.is_word("TABLE") || t.is_word("INDEX"))
            .and_then(|i| tokens.get(i + 1))
            .ok_or_else(|| {
                CrrError::Corrupt(format!("unexpected schema SQL from SQLite: {sql}"))
            })?;
        let (head, tail) = sql.split_at(name.start);
        Ok(format!("{head}{}.{tail}", quote_ident(self.schema)))
    }

    fn table_ref(&self, table: &str) -> String {
        if self.is_main() {
            quote_ident(table)
        } else {
            format!("{}.{}", quote_ident(self.schema), quote_ident(table))
        }
    }

    /// The scratch indexes of `table` missing from the target, as statements.
    fn indexes(&mut self, table: &str) -> Result<Vec<String>> {
        let mut stmt = self.scratch.prepare(
            "SELECT name, sql FROM main.sqlite_master
             WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL ORDER BY rowid",
        )?;
        let indexes = stmt
            .query_map([table], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out = Vec::new();
        for (index, sql) in indexes {
            match self.target_object(&index)? {
                None => out.push(self.qualify(&sql)?),
                Some((kind, _, existing)) if kind == "index" => {
                    if normalized(&tokenize(&existing)) != normalized(&tokenize(&sql)) {
                        let rule = format!(
                            "index {index} differs from the database's: changing an index is not \
                             supported; create a new index under a new name"
                        );
                        self.violations.push(violation(table, None, rule));
                    }
                }
                Some((kind, existing, _)) => {
                    let rule = format!(
                        "index {index}: the database already has a {kind} named {existing}"
                    );
                    self.violations.push(violation(table, None, rule));
                }
            }
        }
        Ok(out)
    }

    /// ALTER TABLE statements for the columns `sql` adds to the existing
    /// table; anything else that differs is a violation.
    fn alter(
        &mut self,
        name: &str,
        sql: &str,
        existing: &str,
        existing_sql: &str,
    ) -> Result<Vec<String>> {
        let (Some(old), Some(new)) = (
            introspect(self.target, self.schema, existing)?,
            introspect(self.scratch, "main", name)?,
        ) else {
            return Ok(Vec::new());
        };
        let old_text = TableText::parse(existing_sql);
        let new_text = TableText::parse(sql);
        let before = self.violations.len();
        self.violations
            .extend(table_changes(existing, &old_text, &new_text));
        self.violations
            .extend(existing_columns(existing, &old, &new, &old_text, &new_text));
        let additions = self.new_columns(existing, &old, &new, &new_text);
        if self.violations.len() > before || additions.is_empty() {
            return Ok(Vec::new());
        }
        self.violations
            .extend(dry_run(existing, existing_sql, &additions, &new)?);
        let table = self.table_ref(existing);
        Ok(additions
            .iter()
            .map(|(_, def)| format!("ALTER TABLE {table} ADD COLUMN {def}"))
            .collect())
    }

    /// (column name, definition text) of each column to add.
    fn new_columns(
        &mut self,
        table: &str,
        old: &TableInfo,
        new: &TableInfo,
        text: &TableText,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (pos, c) in new.columns.iter().enumerate() {
            if position(old, &c.name).is_some() {
                continue;
            }
            let def = text.column(&c.name);
            let problems = new_column_problems(pos, old.columns.len(), c, def);
            if problems.is_empty() {
                if let Some(def) = def {
                    out.push((c.name.clone(), def.text.clone()));
                }
            }
            self.violations.extend(
                problems
                    .into_iter()
                    .map(|rule| violation(table, Some(&c.name), rule)),
            );
        }
        out
    }
}

/// Why `column`, new at `pos` of a table that had `old_len` columns, cannot
/// be added with ALTER TABLE ADD COLUMN.
fn new_column_problems(
    pos: usize,
    old_len: usize,
    c: &ColumnInfo,
    def: Option<&ColumnDef>,
) -> Vec<&'static str> {
    let mut out = Vec::new();
    if pos < old_len {
        out.push("a new column must come after all existing columns (SQLite appends added columns at the end)");
    }
    if c.pk_order > 0 {
        out.push("a new column cannot be part of the primary key (the keys of existing rows cannot change)");
    }
    match def {
        None => out.push("cannot find this column's definition in the CREATE TABLE text"),
        Some(d) if c.generated && d.norm.iter().skip(1).any(|t| t == "stored") => out.push(
            "a STORED generated column cannot be added to an existing table (ALTER TABLE ADD COLUMN \
             cannot add one); make it VIRTUAL",
        ),
        Some(_) => {}
    }
    if c.default.as_deref().is_some_and(|d| !is_constant(d)) {
        out.push(
            "a column added to an existing table needs a constant DEFAULT (a literal): SQLite \
             cannot add a column whose default is CURRENT_TIMESTAMP or an expression",
        );
    }
    out
}

/// Whether a DEFAULT is a literal, which ADD COLUMN can fill existing rows with.
fn is_constant(default: &str) -> bool {
    let tokens = tokenize(default);
    let mut t = tokens.as_slice();
    while t.len() >= 2 && t[0].is_punct('(') && t[t.len() - 1].is_punct(')') {
        t = &t[1..t.len() - 1];
    }
    match t {
        [lit] => {
            matches!(lit.kind, Kind::Number | Kind::Str)
                || ["NULL", "TRUE", "FALSE"].iter().any(|k| lit.is_word(k))
        }
        [a, b] => {
            let signed = (a.is_punct('-') || a.is_punct('+')) && b.kind == Kind::Number;
            let blob = a.is_word("X") && b.kind == Kind::Str;
            signed || blob
        }
        _ => false,
    }
}

/// Replays the ALTER statements on a copy of the existing table's
/// definition, so what SQLite refuses is refused at planning time.
fn dry_run(
    table: &str,
    existing_sql: &str,
    additions: &[(String, String)],
    new: &TableInfo,
) -> Result<Vec<SchemaViolation>> {
    let replay = Connection::open_in_memory()?;
    // Not every table can be rebuilt alone (e.g. a collation only the
    // target has); applying the plan still checks for real.
    if replay.execute(existing_sql, []).is_err() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (column, def) in additions {
        let alter = format!("ALTER TABLE {} ADD COLUMN {def}", quote_ident(table));
        if let Err(e) = replay.execute(&alter, []) {
            out.push(violation(
                table,
                Some(column),
                format!("SQLite cannot add this column: {e}"),
            ));
        }
    }
    let replayed = introspect(&replay, "main", table)?.map(|t| t.columns);
    if out.is_empty() && replayed.as_ref() != Some(&new.columns) {
        let rule = "ALTER TABLE ADD COLUMN would not reproduce this table's definition; \
                    declare the new columns the way they are meant to be added";
        out.push(violation(table, None, rule));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
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
        let sql = format!(
            "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, {def}, CHECK (id > 0))"
        );
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
        let conn = db(
            "CREATE TABLE legacy(x); CREATE TABLE crr_tables(id INTEGER PRIMARY KEY, name TEXT)",
        );
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
}
