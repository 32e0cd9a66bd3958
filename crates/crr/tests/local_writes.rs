//! Local-write capture rules (crr-model.md 4 and 5), checked on the
//! changes each statement leaves behind.

use patina_crr::{pk, Change, CrrConn, CrrError, SiteId, Value};

fn site(byte: u8) -> SiteId {
    SiteId([byte; 16])
}

fn db(schema: &str) -> CrrConn {
    let mut c = CrrConn::open_in_memory_with_site_id(Some(site(0x11))).unwrap();
    c.apply_schema(schema).unwrap();
    c
}

const T: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INTEGER, c);";

fn tx(c: &mut CrrConn, sql: &str) -> Option<u64> {
    let mut tx = c.transaction().unwrap();
    tx.execute_batch(sql).unwrap();
    tx.commit().unwrap()
}

/// `cid:value cv/dbv/seq` entries of one row, sorted by seq, plus its cl.
fn row(c: &CrrConn, id: i64) -> (Vec<String>, i64) {
    let pk = pk::pack_values(&[Value::Integer(id)]).unwrap();
    let changes: Vec<Change> = c
        .changes_since(0, None)
        .unwrap()
        .into_iter()
        .filter(|ch| ch.pk == pk)
        .collect();
    let cl = changes.first().map_or(0, |ch| ch.cl);
    let mut changes = changes;
    changes.sort_by_key(|ch| (ch.db_version, ch.seq));
    let entries = changes
        .iter()
        .map(|ch| {
            let v = match &ch.val {
                Value::Null => String::new(),
                Value::Integer(i) => format!(":{i}"),
                Value::Real(f) => format!(":{f:?}"),
                Value::Text(t) => format!(":'{t}'"),
                Value::Blob(b) => format!(":{b:?}"),
            };
            format!(
                "{}{v} {}/{}/{}",
                ch.cid, ch.col_version, ch.db_version, ch.seq
            )
        })
        .collect();
    (entries, cl)
}

#[test]
fn worked_trace() {
    let mut c = db(T);
    assert_eq!(tx(&mut c, "INSERT INTO t VALUES (1,'x',1,1)"), Some(1));
    assert_eq!(
        row(&c, 1),
        (
            vec!["a:'x' 1/1/0".into(), "b:1 1/1/1".into(), "c:1 1/1/2".into()],
            1
        )
    );

    assert_eq!(tx(&mut c, "UPDATE t SET b=2; UPDATE t SET b=3"), Some(2));
    assert!(row(&c, 1).0.contains(&"b:3 3/2/1".to_string()));

    assert_eq!(tx(&mut c, "UPDATE t SET c=1.0"), Some(3));
    assert!(row(&c, 1).0.contains(&"c:1.0 2/3/0".to_string()));

    assert_eq!(
        tx(&mut c, "UPDATE t SET a='x'"),
        None,
        "a no-op takes no db_version"
    );
    assert_eq!(c.db_version(), 3);

    assert_eq!(tx(&mut c, "DELETE FROM t"), Some(4));
    assert_eq!(row(&c, 1), (vec!["-1 2/4/0".into()], 2));

    assert_eq!(tx(&mut c, "INSERT INTO t VALUES (1,'z',5,5)"), Some(5));
    assert_eq!(
        row(&c, 1),
        (
            vec![
                "-1 3/5/0".into(),
                "a:'z' 1/5/1".into(),
                "b:5 1/5/2".into(),
                "c:5 1/5/3".into()
            ],
            3
        )
    );

    assert_eq!(
        tx(&mut c, "INSERT OR REPLACE INTO t VALUES (1,'z',5,5)"),
        Some(6)
    );
    assert_eq!(
        row(&c, 1),
        (
            vec![
                "-1 5/6/1".into(),
                "a:'z' 1/6/2".into(),
                "b:5 1/6/3".into(),
                "c:5 1/6/4".into()
            ],
            5
        )
    );

    assert_eq!(tx(&mut c, "UPDATE t SET id=3, a='m' WHERE id=1"), Some(7));
    assert_eq!(row(&c, 1), (vec!["-1 6/7/0".into()], 6));
    assert_eq!(
        row(&c, 3),
        (
            vec![
                "-1 1/7/1".into(),
                "b:5 2/7/3".into(),
                "c:5 2/7/4".into(),
                "a:'m' 3/7/5".into()
            ],
            1
        )
    );
}

#[test]
fn rolled_back_transactions_take_no_version() {
    let mut c = db(T);
    let mut t = c.transaction().unwrap();
    t.execute("INSERT INTO t VALUES (1,'x',1,1)", []).unwrap();
    t.rollback();
    assert_eq!(tx(&mut c, "INSERT INTO t VALUES (2,'x',1,1)"), Some(1));
    assert_eq!(tx(&mut c, "DELETE FROM t WHERE id = 99"), None);
}

#[test]
fn upserts_and_ignores() {
    let mut c = db(T);
    tx(&mut c, "INSERT INTO t VALUES (1,'x',1,NULL)");
    assert_eq!(
        tx(&mut c, "INSERT OR IGNORE INTO t VALUES (1,'y',2,NULL)"),
        None
    );
    assert_eq!(
        tx(
            &mut c,
            "INSERT INTO t VALUES (1,'ignored',7,NULL) ON CONFLICT(id) DO UPDATE SET b=excluded.b"
        ),
        Some(2)
    );
    assert!(row(&c, 1).0.contains(&"b:7 2/2/0".to_string()));
    assert_eq!(
        tx(
            &mut c,
            "INSERT INTO t VALUES (2,'n',1,NULL) ON CONFLICT DO NOTHING"
        ),
        Some(3)
    );
    assert_eq!(row(&c, 2).0.len(), 3);
}

#[test]
fn pk_only_tables_write_sentinels() {
    let mut c = db("CREATE TABLE p(k TEXT PRIMARY KEY NOT NULL);");
    tx(&mut c, "INSERT INTO p VALUES ('k')");
    let pk = pk::pack_values(&[Value::Text("k".into())]).unwrap();
    let ch = c.changes_since(0, None).unwrap();
    assert_eq!(ch.len(), 1);
    assert_eq!(
        (ch[0].cid.as_str(), ch[0].cl, ch[0].pk == pk),
        ("-1", 1, true)
    );
    tx(&mut c, "INSERT OR REPLACE INTO p VALUES ('k')");
    assert_eq!(c.changes_since(0, None).unwrap()[0].cl, 3);
}

#[test]
fn writes_outside_a_transaction_are_refused() {
    let c = db(T);
    let err = c
        .connection()
        .execute("INSERT INTO t VALUES (1,'x',1,1)", [])
        .unwrap_err();
    assert!(err.to_string().contains("CRR transaction"), "{err}");
    let n: i64 = c
        .connection()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn foreign_connections_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    {
        let mut c = CrrConn::open(&path).unwrap();
        c.apply_schema(T).unwrap();
    }
    let plain = rusqlite::Connection::open(&path).unwrap();
    let err = plain
        .execute("INSERT INTO t VALUES (1,'x',1,1)", [])
        .unwrap_err();
    assert!(err.to_string().contains("crr_capture"), "{err}");
    plain.execute_batch("DROP TRIGGER t__crr_ins").unwrap();
    drop(plain);
    let err = CrrConn::open(&path)
        .err()
        .expect("open must refuse a table with dropped triggers");
    assert!(err.to_string().contains("bypassed replication"), "{err}");
}

#[test]
fn failed_statements_poison_the_transaction() {
    let mut c = db(T);
    let mut t = c.transaction().unwrap();
    t.execute("INSERT INTO t VALUES (1,'x',1,1)", []).unwrap();
    assert!(t.execute("INSERT INTO nope VALUES (1)", []).is_err());
    assert!(matches!(
        t.execute("SELECT 1", []),
        Err(CrrError::TransactionPoisoned)
    ));
    assert!(matches!(t.commit(), Err(CrrError::TransactionPoisoned)));
    assert_eq!(c.db_version(), 0);
    assert!(c.changes_since(0, None).unwrap().is_empty());
}

#[test]
fn transaction_control_is_refused() {
    let mut c = db(T);
    let mut t = c.transaction().unwrap();
    assert!(matches!(
        t.execute_batch("COMMIT"),
        Err(CrrError::StatementNotAllowed(_))
    ));
}

#[test]
fn a_typo_is_a_syntax_error_not_a_refusal() {
    let mut c = db(T);
    let mut t = c.transaction().unwrap();
    let err = t.execute("INSRT INTO t VALUES (1)", []).unwrap_err();
    assert!(
        matches!(err, CrrError::NotAStatement(ref w) if w == "INSRT"),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("near \"INSRT\": syntax error"),
        "{err}"
    );
}

#[test]
fn backfill_records_existing_rows_in_one_version() {
    let mut c = CrrConn::open_in_memory().unwrap();
    c.connection()
        .execute_batch(&format!(
            "{T} INSERT INTO t VALUES (1,'a',1,1), (2,'b',2,2);"
        ))
        .unwrap();
    c.as_crr("t").unwrap();
    assert_eq!(c.db_version(), 1);
    let ch = c.changes_since(0, None).unwrap();
    assert_eq!(ch.len(), 6);
    assert!(ch.iter().all(|c| c.col_version == 1 && c.db_version == 1));
}

fn index_rows(c: &CrrConn) -> (i64, i64) {
    c.connection()
        .query_row(
            "SELECT (SELECT count(*) FROM crr_versions), (SELECT count(*) FROM crr_version_pks)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

#[test]
fn version_index_forgets_overwritten_versions() {
    let mut c = db(T);
    tx(&mut c, "INSERT INTO t VALUES (1,'x',1,1), (2,'y',2,2)");
    assert_eq!(index_rows(&c), (1, 1));
    // Row 1 loses every entry of version 1; row 2 still holds it.
    tx(&mut c, "UPDATE t SET a='p', b=9, c=9 WHERE id = 1");
    assert_eq!(index_rows(&c), (2, 2));
    assert_eq!(c.changes_of(site(0x11), 1..=1).unwrap().len(), 3);
    // Now nothing holds version 1: its count and key lists are gone.
    tx(&mut c, "DELETE FROM t WHERE id = 2");
    assert!(c.changes_of(site(0x11), 1..=1).unwrap().is_empty());
    assert_eq!(index_rows(&c), (2, 2));
    let versions: Vec<i64> = c
        .connection()
        .prepare("SELECT db_version FROM crr_versions ORDER BY 1")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(versions, vec![2, 3]);
}

#[test]
fn changes_of_reads_one_sites_version_range() {
    let mut c = db(T);
    for i in 1..=5 {
        tx(&mut c, &format!("INSERT INTO t VALUES ({i},'x',1,1)"));
    }
    let got: Vec<i64> = c
        .changes_of(site(0x11), 2..=4)
        .unwrap()
        .iter()
        .map(|ch| ch.db_version)
        .collect();
    assert_eq!(got, vec![2, 2, 2, 3, 3, 3, 4, 4, 4]);
    assert!(c.changes_of(site(0x99), 1..=5).unwrap().is_empty());
    assert_eq!(c.changes_since(4, None).unwrap().len(), 3);
    assert!(c.changes_since(0, Some(site(0x11))).unwrap().is_empty());
}

#[test]
fn reinsert_in_a_batch_with_new_keys_redoes_the_guess() {
    let mut c = db(T);
    tx(&mut c, "INSERT INTO t VALUES (1,'x',1,1)");
    tx(&mut c, "DELETE FROM t WHERE id = 1");
    // 1 is a tombstone, 2..=200 are new: the assumed-new flush misses on 1.
    let values: Vec<String> = (1..=200).map(|i| format!("({i},'n',{i},NULL)")).collect();
    assert_eq!(
        tx(
            &mut c,
            &format!("INSERT INTO t VALUES {}", values.join(","))
        ),
        Some(3)
    );
    let (entries, cl) = row(&c, 1);
    assert_eq!(cl, 3);
    assert_eq!(entries[0], "-1 3/3/0");
    assert_eq!(
        row(&c, 2).0[0],
        "a:'n' 1/3/4",
        "seqs after the re-insert's sentinel"
    );
}

#[test]
fn added_columns_leave_existing_clocks_alone() {
    let mut c = db(T);
    tx(&mut c, "INSERT INTO t VALUES (1,'x',1,1)");
    let before = c.changes_since(0, None).unwrap();
    c.apply_schema(
        "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INTEGER, c, d TEXT DEFAULT 'dd', e REAL);
         CREATE INDEX t_a ON t(a);",
    )
    .unwrap();
    assert_eq!(
        c.changes_since(0, None).unwrap(),
        before,
        "no clock written for new columns"
    );
    assert_eq!(c.db_version(), 1, "a schema change takes no db_version");
    tx(&mut c, "UPDATE t SET e = 2.5 WHERE id = 1");
    assert!(row(&c, 1).0.contains(&"e:2.5 1/2/0".to_string()));
    // New rows clock every column, the added ones included.
    tx(&mut c, "INSERT INTO t (id) VALUES (2)");
    assert_eq!(row(&c, 2).0.len(), 5);
    // A replica on the new schema merges the old one's changes and back.
    let mut other = CrrConn::open_in_memory_with_site_id(Some(site(0x22))).unwrap();
    other
        .apply_schema("CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INTEGER, c, d TEXT DEFAULT 'dd', e REAL);")
        .unwrap();
    other
        .apply_changes(&c.changes_since(0, None).unwrap())
        .unwrap();
    let dump = |c: &CrrConn| -> Vec<Vec<Value>> {
        let mut stmt = c
            .connection()
            .prepare("SELECT * FROM t ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| (0..6).map(|i| r.get(i)).collect())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(dump(&c), dump(&other));
}

#[test]
fn non_additive_schema_changes_are_refused_whole() {
    let mut c = db(T);
    let err = c
        .apply_schema("CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a INTEGER, b INTEGER, c); CREATE TABLE u(k TEXT PRIMARY KEY NOT NULL);")
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("\"t\"") && msg.contains("\"a\""), "{msg}");
    assert!(
        c.table("u").is_none(),
        "nothing of a refused schema is applied"
    );
    let err = CrrConn::open_in_memory()
        .unwrap()
        .apply_schema("CREATE TABLE bad(id INTEGER PRIMARY KEY, v TEXT NOT NULL, w UNIQUE);")
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("NOT NULL") && msg.contains("\"v\"") && msg.contains("UNIQUE"),
        "{msg}"
    );
}

/// A statement's count is its own: a SELECT counts 0 whatever wrote before
/// it in the transaction, `… RETURNING` counts the rows it wrote.
#[test]
fn rows_affected_is_each_statements_own() {
    let mut c = db("CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, v INTEGER);");
    let mut tx = c.transaction().unwrap();
    assert_eq!(
        tx.execute("INSERT INTO t VALUES (1, 1), (2, 2), (3, 3)", [])
            .unwrap(),
        3
    );
    assert_eq!(tx.execute("SELECT 1", []).unwrap(), 0);
    assert_eq!(tx.execute("SELECT v FROM t", []).unwrap(), 0);
    assert_eq!(
        tx.execute("UPDATE t SET v = 9 WHERE id < 3 RETURNING id", [])
            .unwrap(),
        2
    );
    assert_eq!(
        tx.execute("UPDATE t SET v = 9 WHERE id > 9", []).unwrap(),
        0
    );
    assert_eq!(tx.execute("SELECT count(*) FROM t", []).unwrap(), 0);
    tx.commit().unwrap();
}

/// Everything a commit leaves that replication reads: the changes, the
/// version index's counts (site, db_version, table, live), each version's
/// changes through the index, and the row count.
type CommittedState = (Vec<Change>, Vec<(i64, i64, i64, i64)>, Vec<Change>, i64);

fn committed_state(c: &CrrConn) -> CommittedState {
    let index = c
        .connection()
        .prepare("SELECT site, db_version, tbl, live FROM crr_versions ORDER BY 1, 2, 3")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let rows = c
        .connection()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    (
        c.changes_since(0, None).unwrap(),
        index,
        c.changes_of(site(0x11), 1..=c.db_version()).unwrap(),
        rows,
    )
}

#[test]
fn a_commit_larger_than_the_clock_cache_records_the_same_clocks() {
    // More rows than the cache holds (8,192), touched again after being
    // written out: updated, deleted, re-inserted (assumed new, found
    // stored), their keys changed; and a tombstone from before re-inserted.
    let big = "
        WITH RECURSIVE n(x) AS (SELECT 100 UNION ALL SELECT x + 1 FROM n WHERE x < 20099)
        INSERT INTO t SELECT x, 'v' || x, x, NULL FROM n;
        UPDATE t SET b = b + 1 WHERE id % 7 = 0;
        DELETE FROM t WHERE id % 11 = 0 AND id >= 100;
        WITH RECURSIVE n(x) AS (SELECT 100 UNION ALL SELECT x + 1 FROM n WHERE x < 20099)
        INSERT INTO t SELECT x, 'again', x, 1 FROM n WHERE x % 11 = 0 AND x % 3 = 0;
        INSERT INTO t VALUES (5, 'back', 5, 5);
        UPDATE t SET id = id + 100000 WHERE id % 13 = 0 AND id >= 100;
        UPDATE t SET c = 2 WHERE id % 17 = 0;";
    let setup = |c: &mut CrrConn| {
        tx(
            c,
            "INSERT INTO t VALUES (1,'x',1,1), (5,'y',5,5), (9,'z',9,9)",
        );
        tx(c, "DELETE FROM t WHERE id = 5");
    };
    // commit() spills its cache; commit_changes() never does.
    let mut spilled = db(T);
    setup(&mut spilled);
    let mut whole = db(T);
    setup(&mut whole);
    let mut t = spilled.transaction().unwrap();
    t.execute_batch(big).unwrap();
    assert_eq!(t.commit().unwrap(), Some(3));
    let mut t = whole.transaction().unwrap();
    t.execute_batch(big).unwrap();
    let (v, changes) = t.commit_changes().unwrap().unwrap();
    assert_eq!(v, 3);
    let state = committed_state(&spilled);
    assert_eq!(state, committed_state(&whole));
    assert!(changes.len() > 50_000, "{} changes", changes.len());
    assert_eq!(
        changes,
        spilled.changes_of(site(0x11), 3..=3).unwrap(),
        "the changes the unspilled commit built are the spilled one's"
    );
    assert_eq!(row(&spilled, 5).1, 3, "the tombstone came back");
}

#[test]
fn patinas_own_tables_replicate_and_only_patina_writes_them() {
    const CREATE: &str =
        "CREATE TABLE IF NOT EXISTS patina_notes (k TEXT NOT NULL PRIMARY KEY, v TEXT)";
    let mut a = db("CREATE TABLE t (id INTEGER NOT NULL PRIMARY KEY, x TEXT)");
    a.ensure_internal_crr("patina_notes", CREATE).unwrap();
    // Idempotent: every start ensures it.
    a.ensure_internal_crr("patina_notes", CREATE).unwrap();

    // A client statement may not write it, and may not name a table so.
    let mut t = a.transaction().unwrap();
    let refused = t
        .execute("INSERT INTO patina_notes VALUES ('a', 'b')", [])
        .unwrap_err();
    assert!(refused.to_string().contains("patina_notes"), "{refused}");
    drop(t);
    assert!(a
        .apply_schema("CREATE TABLE patina_x (id INTEGER NOT NULL PRIMARY KEY)")
        .is_err());

    // Patina's statement is captured like any write.
    let mut t = a.transaction().unwrap();
    t.execute_internal("INSERT INTO patina_notes VALUES (?1, ?2)", ["ams", "up"])
        .unwrap();
    let version = t.commit().unwrap();
    assert_eq!(version, Some(1));

    // Applying the schema files, which never name it, keeps it.
    a.apply_schema("CREATE TABLE t (id INTEGER NOT NULL PRIMARY KEY, x TEXT)")
        .unwrap();

    // A replica that ensured the same table merges the change.
    let mut b = CrrConn::open_in_memory_with_site_id(Some(site(0x22))).unwrap();
    b.apply_schema("CREATE TABLE t (id INTEGER NOT NULL PRIMARY KEY, x TEXT)")
        .unwrap();
    b.ensure_internal_crr("patina_notes", CREATE).unwrap();
    let changes = a.changes_since(0, None).unwrap();
    assert!(!changes.is_empty());
    b.apply_changes(&changes).unwrap();
    let v: String = b
        .connection()
        .query_row("SELECT v FROM patina_notes WHERE k = 'ams'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(v, "up");
}
