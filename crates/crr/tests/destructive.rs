//! Destructive schema changes (docs/crr.md, "Destructive schema changes"):
//! a dropped column's or table's values and clocks go, every other
//! column's stay exactly as they were, and remote changes still naming
//! what was dropped are ignored and counted while the rest of their batch
//! merges.

#[allow(dead_code)] // the merge tests' helpers, of which these tests use a few
mod common;

use common::{p_pk, t_pk, Site, IDS, SCHEMA};
use patina_crr::migrate::Drops;
use patina_crr::{Change, CrrConn, CrrError};

/// `SCHEMA` without column `b` of `t` (the middle one of `a, b, c`).
const WITHOUT_B: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, c);
CREATE TABLE p(k TEXT PRIMARY KEY NOT NULL);";
/// `SCHEMA` without table `p`.
const WITHOUT_P: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INTEGER, c);";

fn without_cid(changes: Vec<Change>, cid: &str) -> Vec<Change> {
    changes.into_iter().filter(|c| c.cid != cid).collect()
}

/// `t` as `(id, a, c)` tuples: what two replicas that both know `a` and
/// `c` must agree on.
fn t_ac(site: &Site) -> Vec<String> {
    site.strings("SELECT quote(id) || ',' || quote(a) || ',' || quote(c) FROM t ORDER BY id")
}

fn sql_names(site: &Site) -> Vec<String> {
    site.strings("SELECT name FROM sqlite_master ORDER BY name")
}

/// Two converged replicas whose rows of `t` hold entries of both sites in
/// every column, some of them in versions that wrote `b` alone.
fn converged_pair() -> (Site, Site) {
    let (mut a, mut b) = (Site::new(0), Site::new(1));
    a.exec("INSERT INTO t VALUES (1, 'a1', 10, 'c1'), (2, 'a2', 20, 'c2'), (3, 'a3', 30, 'c3')");
    b.pull_from(&a);
    b.exec("UPDATE t SET c = 'c2-b', b = 21 WHERE id = 2");
    b.exec("UPDATE t SET b = 31 WHERE id = 3");
    b.exec("INSERT INTO t VALUES (4, 'a4', 40, NULL)");
    a.exec("UPDATE t SET a = 'a1-a' WHERE id = 1");
    a.pull_from(&b);
    b.pull_from(&a);
    assert_eq!(a.t(), b.t());
    (a, b)
}

#[test]
fn dropping_a_middle_column_keeps_every_other_value_and_clock() {
    let (mut a, mut b) = converged_pair();
    let kept = without_cid(a.changes(), "b");
    let rows_before = t_ac(&a);
    // b's version 2 wrote only column b of row 3.
    let b_only = a.conn.changes_of(IDS[1], 2..=2).unwrap();
    assert!(!b_only.is_empty() && b_only.iter().all(|c| c.cid == "b"));

    let plan = a.conn.apply_schema_with(WITHOUT_B, Drops::Allowed).unwrap();
    assert_eq!(plan.dropped_columns.len(), 1);
    assert_eq!(plan.dropped_columns[0].columns, ["b"]);
    assert!(plan.dropped_tables.is_empty());

    // Same values, and the same clocks — seen through the changes they
    // read as, which carry each entry's col_version, version, site and seq.
    assert_eq!(t_ac(&a), rows_before);
    assert_eq!(a.changes(), kept);
    assert!(a.conn.is_dropped("t", "b"));
    assert!(!a.conn.is_dropped("t", "c"));
    // The version that wrote only b holds nothing any more.
    assert!(a.conn.changes_of(IDS[1], 2..=2).unwrap().is_empty());
    assert!(a.conn.version_rows(IDS[1], 2..=2).unwrap().is_empty());

    // Later writes on both sides, concurrent on row 2's column c: b still
    // has column b and writes it too.
    b.exec("UPDATE t SET a = 'a2-b', b = 22, c = 'c2-b2' WHERE id = 2");
    b.exec("UPDATE t SET b = 99 WHERE id = 1");
    b.exec("INSERT INTO t VALUES (5, 'a5', 50, 'c5')");
    a.exec("UPDATE t SET c = 'c2-a' WHERE id = 2");
    a.exec("INSERT INTO t VALUES (6, 'a6', 'c6')");
    let from_b = b.conn.changes_since(0, Some(a.id)).unwrap();
    let b_changes = from_b.iter().filter(|c| c.cid == "b").count();
    assert!(b_changes >= 3);
    let report = a.apply(&from_b);
    assert_eq!(
        report.dropped, b_changes,
        "every change of column b, only them"
    );
    assert_eq!(
        report.won.len() + report.lost + report.ignored + report.dropped,
        from_b.len()
    );
    // `won` indexes point into the batch as given, gaps and all.
    assert!(report.won.iter().all(|&i| from_b[i].cid != "b"));
    b.pull_from(&a);
    assert_eq!(t_ac(&a), t_ac(&b), "a and c converge");
    let b_row5: Vec<String> = b.strings("SELECT quote(b) FROM t WHERE id = 5");
    assert_eq!(b_row5, ["50"]);
    let a_cols = a.strings("SELECT name FROM pragma_table_info('t') ORDER BY cid");
    assert_eq!(a_cols, ["id", "a", "c"]);
    // Merging the same again changes nothing and still counts.
    let again = a.apply(&from_b);
    assert!(again.won.is_empty());
    assert_eq!(again.dropped, b_changes);
}

#[test]
fn a_live_row_known_only_through_the_dropped_column_stays_alive_and_replicates() {
    let (mut a, mut b) = (Site::new(0), Site::new(1));
    b.exec("INSERT INTO t VALUES (7, 'a7', 70, 'c7')");
    // a has merged only row 7's change of column b so far.
    let only_b: Vec<Change> = b.changes().into_iter().filter(|c| c.cid == "b").collect();
    a.apply(&only_b);
    a.conn.apply_schema_with(WITHOUT_B, Drops::Allowed).unwrap();
    assert_eq!(a.strings("SELECT quote(id) FROM t"), ["7"]);
    let sentinel = a.sentinel("t", &t_pk(7)).expect("row 7 keeps a clock");
    assert_eq!((sentinel.cl, sentinel.site_id), (1, IDS[1]));
    assert_eq!(
        (sentinel.db_version, sentinel.seq),
        (only_b[0].db_version, only_b[0].seq)
    );

    // A replica learning the row from a alone gets it.
    let mut c = Site::new(2);
    c.conn.apply_schema_with(WITHOUT_B, Drops::Allowed).unwrap();
    c.pull_from(&a);
    assert_eq!(c.strings("SELECT quote(id) FROM t"), ["7"]);
    // The rest of row 7 still merges on a.
    a.pull_from(&b);
    assert_eq!(t_ac(&a), ["7,'a7','c7'"]);
}

#[test]
fn dropping_a_table_takes_its_rows_clocks_and_version_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let mut a = CrrConn::open_with_site_id(&path, Some(IDS[0])).unwrap();
    a.apply_schema(SCHEMA).unwrap();
    let mut tx = a.transaction().unwrap();
    tx.execute_batch("INSERT INTO t VALUES (1, 'a1', 1, NULL); INSERT INTO p VALUES ('k1')")
        .unwrap();
    assert_eq!(tx.commit().unwrap(), Some(1));
    let mut tx = a.transaction().unwrap();
    tx.execute_batch("INSERT INTO p VALUES ('k2')").unwrap();
    tx.commit().unwrap();
    let t_changes = without_cid(a.changes_since(0, None).unwrap(), "-1")
        .into_iter()
        .filter(|c| c.table == "t")
        .collect::<Vec<_>>();

    let refused = a.apply_schema(WITHOUT_P).unwrap_err();
    assert!(refused.drops_data(), "{refused}");
    assert!(
        refused.to_string().contains("table was removed"),
        "{refused}"
    );
    let plan = a.apply_schema_with(WITHOUT_P, Drops::Allowed).unwrap();
    assert_eq!(plan.dropped_tables, ["p"]);

    let site = Site {
        conn: a,
        id: IDS[0],
        name: "a".into(),
    };
    let names = sql_names(&site);
    assert!(
        !names.iter().any(|n| n.starts_with("p")),
        "no table, clock table, trigger or index of p is left: {names:?}"
    );
    let left: i64 = site
        .conn
        .connection()
        .query_row(
            "SELECT (SELECT count(*) FROM crr_version_pks WHERE tbl NOT IN (SELECT id FROM crr_tables))
                  + (SELECT count(*) FROM crr_versions WHERE tbl NOT IN (SELECT id FROM crr_tables))",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "the version index names no dropped table");
    // Version 1 wrote both tables: its t part stays readable; version 2 is gone.
    assert_eq!(site.conn.changes_since(0, None).unwrap(), t_changes);
    assert!(site.conn.changes_of(IDS[0], 2..=2).unwrap().is_empty());
    drop(site);

    // Remembered across a restart.
    let mut a = CrrConn::open_with_site_id(&path, Some(IDS[0])).unwrap();
    assert!(a.is_dropped("p", "-1") && a.is_dropped("P", "k"));
    assert!(!a.is_dropped("t", "a") && !a.is_dropped("other", "x"));
    // A peer still writing p and t: the batch's t changes merge, p's are
    // counted.
    let mut b = Site::new(1);
    b.exec("INSERT INTO p VALUES ('k3'), ('k4'); INSERT INTO t VALUES (2, 'a2', 2, 'c2')");
    b.exec("UPDATE t SET a = 'a2-b' WHERE id = 2; DELETE FROM p WHERE k = 'k3'");
    let batch = b.changes();
    let for_p = batch.iter().filter(|c| c.table == "p").count();
    assert!(for_p >= 2);
    let report = a.apply_changes(&batch).unwrap();
    assert_eq!(report.dropped, for_p);
    let row: String = a
        .connection()
        .query_row("SELECT a FROM t WHERE id = 2", [], |r| r.get(0))
        .unwrap();
    assert_eq!(row, "a2-b");
    assert!(b.sentinel("p", &p_pk("k3")).is_some(), "b deleted k3");
    let p_left: i64 = a
        .connection()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name LIKE 'p%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(p_left, 0, "nothing of p came back");
}

#[test]
fn without_drops_allowed_a_removal_changes_nothing() {
    let (mut a, _) = converged_pair();
    let before = (a.t(), a.changes());
    let e = a.conn.apply_schema(WITHOUT_B).unwrap_err();
    assert!(e.drops_data(), "{e}");
    let CrrError::Schema(v) = &e else {
        panic!("{e}")
    };
    assert_eq!(
        (v[0].table.as_str(), v[0].column.as_deref()),
        ("t", Some("b"))
    );
    assert!(v[0].rule.contains("column was removed"), "{e}");
    assert_eq!((a.t(), a.changes()), before);
    assert!(!a.conn.is_dropped("t", "b"));
}

#[test]
fn a_rename_is_refused_even_with_drops_allowed() {
    let (mut a, _) = converged_pair();
    let renamed = WITHOUT_B.replace("a TEXT, c", "a TEXT, c, bee INTEGER");
    let e = a
        .conn
        .apply_schema_with(&renamed, Drops::Allowed)
        .unwrap_err();
    let text = e.to_string();
    assert!(!e.drops_data(), "the flag cannot help: {text}");
    for word in ["\"b\"", "bee", "renaming", "UPDATE", "later reload"] {
        assert!(text.contains(word), "{word:?} missing: {text}");
    }
    let table_renamed = format!("{WITHOUT_P}\nCREATE TABLE q(k TEXT PRIMARY KEY NOT NULL);");
    let e = a
        .conn
        .apply_schema_with(&table_renamed, Drops::Allowed)
        .unwrap_err()
        .to_string();
    for word in ["\"p\"", "table q", "renaming a table", "INSERT INTO q"] {
        assert!(e.contains(word), "{word:?} missing: {e}");
    }
    assert_eq!(a.strings("SELECT quote(count(*)) FROM p"), ["0"]);
}

#[test]
fn a_column_declared_again_starts_empty_and_merges_again() {
    let (mut a, mut b) = converged_pair();
    a.conn.apply_schema_with(WITHOUT_B, Drops::Allowed).unwrap();
    // Declared again: appended at the end, as any new column.
    let again = WITHOUT_B.replace("a TEXT, c", "a TEXT, c, b INTEGER");
    let plan = a.conn.apply_schema_with(&again, Drops::Refused).unwrap();
    assert!(!plan.drops());
    assert!(!a.conn.is_dropped("t", "b"));
    assert_eq!(
        a.strings("SELECT quote(b) FROM t ORDER BY id"),
        ["NULL", "NULL", "NULL", "NULL"]
    );
    // Changes naming b merge again: the peer's new writes, and its older
    // values when they are sent again (replication does not resend
    // versions already applied; this pull sends everything).
    b.exec("UPDATE t SET b = 123 WHERE id = 1");
    let report = a.pull_from(&b);
    assert_eq!(report.dropped, 0);
    assert_eq!(
        a.strings("SELECT quote(b) FROM t WHERE id IN (1, 2) ORDER BY id"),
        ["123", "21"]
    );
    // A local write of b replicates.
    a.exec("UPDATE t SET b = 456 WHERE id = 2");
    b.pull_from(&a);
    assert_eq!(b.strings("SELECT quote(b) FROM t WHERE id = 2"), ["456"]);
}

#[test]
fn an_indexed_column_is_dropped_with_its_indexes() {
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INTEGER, c);
        CREATE INDEX t_b ON t(b);
        CREATE INDEX t_c_where_b ON t(c) WHERE b > 0;
        CREATE INDEX t_a ON t(a);";
    let mut a = CrrConn::open_in_memory().unwrap();
    a.apply_schema(schema).unwrap();
    let mut tx = a.transaction().unwrap();
    tx.execute("INSERT INTO t VALUES (1, 'x', 2, 3)", [])
        .unwrap();
    tx.commit().unwrap();
    let without = "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, c);
        CREATE INDEX t_a ON t(a);";
    let plan = a.apply_schema_with(without, Drops::Allowed).unwrap();
    assert_eq!(plan.dropped_columns[0].indexes, ["t_b", "t_c_where_b"]);
    let indexes: Vec<String> = a
        .connection()
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 't' ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(indexes, ["t_a"]);
    // Capture follows the new shape.
    let mut tx = a.transaction().unwrap();
    tx.execute("UPDATE t SET c = 4 WHERE id = 1", []).unwrap();
    tx.commit().unwrap();
    let cids: Vec<String> = a
        .changes_since(1, None)
        .unwrap()
        .into_iter()
        .map(|c| c.cid)
        .collect();
    assert_eq!(cids, ["c"]);
}

#[test]
fn a_generated_column_is_dropped_without_a_mark() {
    let mut a = CrrConn::open_in_memory().unwrap();
    a.apply_schema("CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, g AS (a || '!'), c);")
        .unwrap();
    let mut tx = a.transaction().unwrap();
    tx.execute("INSERT INTO t (id, a, c) VALUES (1, 'x', 'y')", [])
        .unwrap();
    tx.commit().unwrap();
    let before = a.changes_since(0, None).unwrap();
    let refused = a
        .apply_schema("CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, c);")
        .unwrap_err();
    assert!(refused.drops_data(), "{refused}");
    a.apply_schema_with(
        "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, c);",
        Drops::Allowed,
    )
    .unwrap();
    assert_eq!(a.changes_since(0, None).unwrap(), before);
    assert!(a.dropped().is_empty(), "no change ever names g");
}

#[test]
fn a_table_declared_again_with_fewer_columns_still_knows_the_others_as_dropped() {
    let (mut a, _) = converged_pair();
    let without_t = "CREATE TABLE p(k TEXT PRIMARY KEY NOT NULL);";
    a.conn.apply_schema_with(without_t, Drops::Allowed).unwrap();
    assert!(a.conn.is_dropped("t", "-1") && a.conn.is_dropped("t", "a"));
    let again = "CREATE TABLE p(k TEXT PRIMARY KEY NOT NULL);
        CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT);";
    a.conn.apply_schema(again).unwrap();
    assert_eq!(
        a.strings("SELECT quote(count(*)) FROM t"),
        ["0"],
        "it starts empty"
    );
    assert!(!a.conn.is_dropped("t", "-1") && !a.conn.is_dropped("t", "a"));
    assert!(a.conn.is_dropped("t", "b") && a.conn.is_dropped("t", "c"));
}

#[test]
fn clocks_of_a_table_larger_than_one_pass_are_all_rewritten() {
    let mut a = Site::new(0);
    a.exec(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 9000)
         INSERT INTO t SELECT i, 'a' || i, i, 'c' || i FROM n",
    );
    a.exec("UPDATE t SET c = 'later' WHERE id % 1000 = 0");
    let kept = without_cid(a.changes(), "b");
    a.conn.apply_schema_with(WITHOUT_B, Drops::Allowed).unwrap();
    assert_eq!(a.changes(), kept);
    let rows = a.conn.version_rows(IDS[0], 1..=2).unwrap();
    assert_eq!(rows, [(1, 9000), (2, 9)]);
}
