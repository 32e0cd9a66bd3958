//! Bad input (crr-model.md 8, 9, 12): garbage changes from peers, garbage
//! SQL from users, corrupt bookkeeping on disk. Nothing may panic; a refused
//! batch or transaction changes nothing; whatever a replica accepts it can
//! hand on to a peer.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use crr::{pk, Change, CrrConn, CrrError, SiteId, Value};
use proptest::prelude::*;

const SCHEMA: &str = "
CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INTEGER, c);
CREATE TABLE s(k TEXT PRIMARY KEY NOT NULL, v REAL) STRICT;
CREATE TABLE p(x INTEGER NOT NULL, y BLOB NOT NULL, PRIMARY KEY (x, y));";
const DUMPS: [&str; 3] = [
    "SELECT * FROM t ORDER BY id",
    "SELECT * FROM s ORDER BY k",
    "SELECT * FROM p ORDER BY x, y",
];
/// The receiver; larger than SOURCE so equal-value ties go both ways.
const ME: SiteId = SiteId([0xAA; 16]);
const SOURCE: SiteId = SiteId([0x55; 16]);
const PEER: SiteId = SiteId([0x77; 16]);
/// The receiver's db_version after its local rows.
const MY_COUNTER: i64 = 2;

fn replica(id: SiteId) -> CrrConn {
    let mut c = CrrConn::open_in_memory_with_site_id(Some(id)).unwrap();
    c.apply_schema(SCHEMA).unwrap();
    c
}

fn exec(c: &mut CrrConn, sql: &str) -> Option<u64> {
    let mut tx = c.transaction().unwrap();
    tx.execute_batch(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    tx.commit().unwrap()
}

/// A replica with local rows overlapping the source's.
fn receiver() -> CrrConn {
    let mut c = replica(ME);
    exec(
        &mut c,
        "INSERT INTO t VALUES (1,'x',1,NULL),(2,'y',2,2.5);
         INSERT INTO s VALUES ('k',1.5); INSERT INTO p VALUES (1,X'01')",
    );
    exec(
        &mut c,
        "UPDATE t SET a='z' WHERE id=1; DELETE FROM t WHERE id=2",
    );
    assert_eq!(c.db_version(), MY_COUNTER as u64);
    c
}

/// Valid changes of every kind (columns, tombstones, resurrections).
fn source_changes() -> &'static [Change] {
    static CHANGES: OnceLock<Vec<Change>> = OnceLock::new();
    CHANGES.get_or_init(|| {
        let mut c = replica(SOURCE);
        for sql in [
            "INSERT INTO t VALUES (1,'q',5,X'00'),(2,'w',NULL,1e300),(3,'e',-1,'t');
             INSERT INTO s VALUES ('k',2.5),('é',-1.0); INSERT INTO p VALUES (1,X'01'),(-7,X'')",
            "UPDATE t SET b=b+1 WHERE id=1; DELETE FROM t WHERE id=3",
            "INSERT INTO t(id,a) VALUES (3,'back'); DELETE FROM p WHERE x=-7",
            "DELETE FROM s WHERE k='é'; UPDATE t SET id=9 WHERE id=2",
        ] {
            exec(&mut c, sql);
        }
        c.changes_since(0, None).unwrap()
    })
}

fn dump(c: &CrrConn) -> Vec<Vec<Vec<Value>>> {
    DUMPS
        .iter()
        .map(|sql| {
            let mut stmt = c.connection().prepare(sql).unwrap();
            let n = stmt.column_count();
            stmt.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        })
        .collect()
}

type Snapshot = (Vec<Vec<Vec<Value>>>, Vec<Change>, Vec<(SiteId, u64)>, u64);

fn snapshot(c: &CrrConn) -> Snapshot {
    let changes = c.changes_since(0, None).unwrap();
    (dump(c), changes, c.site_versions(), c.db_version())
}

/// What `c` reads out is in range, and a fresh peer accepts all of it and
/// ends with the same tables.
fn peer_accepts(c: &CrrConn) -> Result<(), String> {
    let changes = c
        .changes_since(0, None)
        .map_err(|e| format!("changes_since: {e}"))?;
    if let Some(bad) = changes
        .iter()
        .find(|ch| ch.cl < 1 || ch.col_version < 0 || ch.db_version < 1 || ch.seq < 0)
    {
        return Err(format!("out-of-range clock read out: {bad:?}"));
    }
    let mut peer = replica(PEER);
    peer.apply_changes(&changes)
        .map_err(|e| format!("a fresh peer refuses what this replica reads out: {e}"))?;
    if dump(&peer) != dump(c) {
        return Err(format!("peer {:?} != origin {:?}", dump(&peer), dump(c)));
    }
    Ok(())
}

/// Runs `f`, turning a panic into a failure that names `what`.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| panic!("{what} panicked"))
}

fn change(table: &str, pk_values: &[Value], cid: &str, val: Value, clock: [i64; 4]) -> Change {
    let [cl, col_version, db_version, seq] = clock;
    Change {
        table: table.into(),
        pk: pk::pack_values(pk_values).unwrap(),
        cid: cid.into(),
        val,
        col_version,
        db_version,
        site_id: SOURCE,
        cl,
        seq,
    }
}

fn int(i: i64) -> Value {
    Value::Integer(i)
}

// ---- strategies ----

fn arb_real() -> impl Strategy<Value = f64> {
    // NaN has its own test (SQLite stores it as NULL).
    prop_oneof![
        any::<f64>().prop_map(|f| if f.is_nan() { 0.5 } else { f }),
        prop::sample::select(vec![
            0.0,
            -0.0,
            1.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e300
        ]),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        prop::sample::select(vec![0, 1, -1, 128, i64::MIN, i64::MAX]).prop_map(Value::Integer),
        arb_real().prop_map(Value::Real),
        "\\PC{0,6}".prop_map(Value::Text),
        prop::sample::select(vec!["k", "x", "5", "1.5", ""]).prop_map(|s| Value::Text(s.into())),
        prop::collection::vec(any::<u8>(), 0..6).prop_map(Value::Blob),
    ]
}

fn arb_clock() -> impl Strategy<Value = i64> {
    prop_oneof![
        prop::sample::select(vec![i64::MIN, -1, 0, 1, 2, 3, 4, i64::MAX - 1, i64::MAX]),
        1..10i64,
        any::<i64>(),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Pk(Vec<u8>),
    Truncate(usize),
    Extend(Vec<u8>),
    PkValues(Vec<Value>),
    Table(&'static str),
    Cid(&'static str),
    Val(Value),
    Cl(i64),
    ColVersion(i64),
    DbVersion(i64),
    Seq(i64),
    Site(SiteId),
    /// The receiver's own site id, db_version = its counter + offset.
    OwnSite(i64),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    use Mutation::*;
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..12).prop_map(Pk),
        (0..12usize).prop_map(Truncate),
        prop::collection::vec(any::<u8>(), 1..4).prop_map(Extend),
        prop::collection::vec(arb_value(), 0..4).prop_map(PkValues),
        prop::sample::select(vec![
            "t",
            "s",
            "p",
            "T",
            "nope",
            "",
            "crr_sites",
            "t__crr_clock"
        ])
        .prop_map(Table),
        prop::sample::select(vec![
            "-1", "a", "b", "c", "v", "id", "k", "x", "y", "A", "", "-2"
        ])
        .prop_map(Cid),
        arb_value().prop_map(Val),
        arb_clock().prop_map(Cl),
        arb_clock().prop_map(ColVersion),
        arb_clock().prop_map(DbVersion),
        arb_clock().prop_map(Seq),
        prop::sample::select(vec![SOURCE, PEER, SiteId([0; 16]), SiteId([0xff; 16])])
            .prop_map(Site),
        (-2..3i64).prop_map(OwnSite),
    ]
}

fn mutate(mut c: Change, m: Mutation) -> Change {
    match m {
        Mutation::Pk(b) => c.pk = b,
        Mutation::Truncate(n) => c.pk.truncate(n),
        Mutation::Extend(b) => c.pk.extend(b),
        Mutation::PkValues(v) => c.pk = pk::pack_values(&v).unwrap(),
        Mutation::Table(t) => c.table = t.into(),
        Mutation::Cid(cid) => c.cid = cid.into(),
        Mutation::Val(v) => c.val = v,
        Mutation::Cl(v) => c.cl = v,
        Mutation::ColVersion(v) => c.col_version = v,
        Mutation::DbVersion(v) => c.db_version = v,
        Mutation::Seq(v) => c.seq = v,
        Mutation::Site(s) => c.site_id = s,
        Mutation::OwnSite(offset) => {
            c.site_id = ME;
            c.db_version = (MY_COUNTER + offset).max(1);
        }
    }
    c
}

fn arb_change() -> impl Strategy<Value = Change> {
    let n = source_changes().len();
    let mutations = prop_oneof![
        2 => Just(Vec::new()),
        3 => prop::collection::vec(arb_mutation(), 1..4),
    ];
    (0..n, mutations).prop_map(|(i, ms)| ms.into_iter().fold(source_changes()[i].clone(), mutate))
}

/// A packed pk: random bytes, or a valid packing, possibly damaged.
fn arb_packed() -> impl Strategy<Value = Vec<u8>> {
    let packed =
        || prop::collection::vec(arb_value(), 0..4).prop_map(|v| pk::pack_values(&v).unwrap());
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..24),
        packed(),
        (packed(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut b, at, byte)| {
            let i = at.index(b.len());
            b[i] = byte;
            b
        }),
    ]
}

/// SQL literals, some of them failing at run time.
fn arb_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "NULL",
            "0",
            "1",
            "2",
            "-1",
            "5",
            "1.5",
            "-0.0",
            "1e308",
            "'k'",
            "'é'",
            "'5'",
            "X''",
            "X'00FF'",
            "9223372036854775807",
            "-9223372036854775808",
            "zeroblob(3)",
            "abs(-9223372036854775808)",
            "nosuchcol",
            "(SELECT max(id) FROM t)",
            "random()",
        ])
        .prop_map(str::to_owned),
        "[a-z']{0,4}".prop_map(|s| format!("'{}'", s.replace('\'', "''"))),
        any::<i64>().prop_map(|i| i.to_string()),
    ]
}

fn arb_statement() -> impl Strategy<Value = String> {
    let l = arb_literal;
    let conflict = prop::sample::select(vec![
        "",
        "OR IGNORE",
        "OR REPLACE",
        "OR FAIL",
        "OR ABORT",
        "OR ROLLBACK",
    ]);
    let col = prop::sample::select(vec!["a", "b", "c", "id", "nope"]);
    let op = prop::sample::select(vec!["=", "<", ">=", "<>"]);
    let grammar = prop_oneof![
        (conflict.clone(), l(), l(), l(), l())
            .prop_map(|(o, i, a, b, c)| format!("INSERT {o} INTO t VALUES ({i}, {a}, {b}, {c})")),
        (l(), l()).prop_map(|(i, a)| format!(
            "INSERT INTO t(id, a) VALUES ({i}, {a}) ON CONFLICT(id) DO UPDATE SET b = excluded.a"
        )),
        (col, l(), op.clone(), l())
            .prop_map(|(c, v, o, i)| format!("UPDATE t SET {c} = {v} WHERE id {o} {i}")),
        (op, l()).prop_map(|(o, i)| format!("DELETE FROM t WHERE id {o} {i}")),
        (conflict.clone(), l(), l())
            .prop_map(|(o, k, v)| format!("INSERT {o} INTO s VALUES ({k}, {v})")),
        (l(), l()).prop_map(|(v, k)| format!("UPDATE s SET v = {v} WHERE k = {k}")),
        (l(), l()).prop_map(|(k2, k)| format!("UPDATE s SET k = {k2} WHERE k = {k}")),
        l().prop_map(|k| format!("DELETE FROM s WHERE k = {k}")),
        (conflict, l(), l()).prop_map(|(o, x, y)| format!("INSERT {o} INTO p VALUES ({x}, {y})")),
        (l(), l()).prop_map(|(x, y)| format!("UPDATE p SET x = {x} WHERE y = {y}")),
        l().prop_map(|x| format!("DELETE FROM p WHERE x = {x}")),
        Just("SELECT * FROM t, s, p".to_owned()),
        Just("REPLACE INTO t SELECT id + 100, a, b, c FROM t".to_owned()),
    ];
    let refused = prop::sample::select(vec![
        "BEGIN",
        "COMMIT",
        "END",
        "ROLLBACK",
        "SAVEPOINT a",
        "RELEASE a",
        "VACUUM",
        "PRAGMA recursive_triggers = 0",
        "DROP TABLE t",
        "ALTER TABLE t ADD COLUMN z",
        "CREATE TABLE z(a)",
        "ATTACH ':memory:' AS x",
        "/* c */ COMMIT",
        "-- x\nDROP TABLE s",
        ";COMMIT",
        "SELECT 1; COMMIT",
        "DELETE FROM t; ROLLBACK",
        "",
        "  ",
        ";",
        "/* open",
    ])
    .prop_map(str::to_owned);
    let token = prop::sample::select(vec![
        "INSERT",
        "INTO",
        "t",
        "s",
        "p",
        "VALUES",
        "(",
        ")",
        ",",
        "1",
        "'x'",
        "SELECT",
        "UPDATE",
        "SET",
        "a",
        "=",
        "WHERE",
        "DELETE",
        "FROM",
        "OR",
        "REPLACE",
        "*",
        ";",
        "--",
        "/*",
        "*/",
        "NULL",
        "X'00'",
        "id",
        "k",
        "v",
        "RETURNING",
        "ON",
        "CONFLICT",
        "DO",
        "NOTHING",
        "WITH",
    ]);
    prop_oneof![
        6 => grammar,
        2 => refused,
        1 => "\\PC{0,24}",
        1 => prop::collection::vec(token, 0..10).prop_map(|t| t.join(" ")),
    ]
}

fn fast() -> ProptestConfig {
    ProptestConfig {
        cases: 96,
        failure_persistence: None,
        max_shrink_iters: 300,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(fast())]

    /// Task: garbage mixed into valid batches. Either the batch is refused and
    /// nothing changed, or it merged, merges again to no effect, and what the
    /// receiver now reads out is acceptable to a peer.
    #[test]
    fn apply_changes_is_all_or_nothing(batch in prop::collection::vec(arb_change(), 1..7)) {
        let mut r = receiver();
        let before = snapshot(&r);
        match r.apply_changes(&batch) {
            Err(_) => prop_assert_eq!(snapshot(&r), before.clone(), "a refused batch changed something"),
            Ok(_) => {
                let again = r.apply_changes(&batch);
                prop_assert!(again.is_ok(), "second apply failed: {:?}", again);
                prop_assert_eq!(again.unwrap().won, Vec::<usize>::new(), "second apply won");
                prop_assert_eq!(r.db_version(), before.3, "a merge moved the local counter");
                peer_accepts(&r).map_err(TestCaseError::fail)?;
            }
        }
        let next = exec(&mut r, "INSERT OR REPLACE INTO t VALUES (1000, 'n', 0, 0)");
        prop_assert_eq!(next, Some(before.3 + 1));
    }

    #[test]
    fn unpack_never_panics_and_repacks_canonically(bytes in arb_packed()) {
        if let Ok(values) = pk::unpack(&bytes) {
            let canonical = pk::pack_values(&values).unwrap();
            let again = pk::pack_values(&pk::unpack(&canonical).unwrap()).unwrap();
            prop_assert_eq!(&again, &canonical);
        }
    }

    #[test]
    fn pack_unpack_round_trips(
        values in prop::collection::vec(prop_oneof![arb_value(), any::<f64>().prop_map(Value::Real)], 0..6)
    ) {
        let packed = pk::pack_values(&values).unwrap();
        let back = pk::unpack(&packed).unwrap();
        prop_assert_eq!(back.len(), values.len());
        for (b, v) in back.iter().zip(&values) {
            match (b, v) {
                (Value::Real(x), Value::Real(y)) => prop_assert_eq!(x.to_bits(), y.to_bits()),
                _ => prop_assert_eq!(b, v),
            }
        }
        prop_assert_eq!(pk::pack_values(&back).unwrap(), packed);
    }

    /// Arbitrary SQL in a CrrTx: no panic; after the first error every call
    /// is refused and commit fails with nothing committed.
    #[test]
    fn local_sql_never_panics_and_poisons(
        calls in prop::collection::vec((0..3u8, arb_statement()), 1..8)
    ) {
        let mut r = receiver();
        let before = snapshot(&r);
        let mut tx = r.transaction().unwrap();
        let mut failed: Option<String> = None;
        for (how, sql) in &calls {
            let result = match how {
                0 => tx.execute(sql, []).map(drop),
                1 => tx.execute_batch(sql),
                _ => tx.query(sql, [], |_| Ok(())).map(drop),
            };
            if let Some(first) = &failed {
                prop_assert!(
                    matches!(result, Err(CrrError::TransactionPoisoned)),
                    "{:?} ran after {} failed: {:?}", sql, first, result
                );
            }
            if let Err(e) = result {
                prop_assert!(!matches!(e, CrrError::Sqlite(rusqlite::Error::UnwindingPanic)));
                failed.get_or_insert_with(|| format!("{sql:?} ({e})"));
            }
        }
        let committed = tx.commit();
        if failed.is_some() {
            prop_assert!(committed.is_err(), "commit after a failure: {:?}", committed);
            prop_assert_eq!(snapshot(&r), before, "a failed transaction left something");
        } else {
            match committed {
                Err(e) => return Err(TestCaseError::fail(format!("commit failed: {e}"))),
                Ok(None) => prop_assert_eq!(snapshot(&r), before),
                Ok(Some(v)) => {
                    prop_assert_eq!(v, before.3 + 1);
                    prop_assert_eq!(r.db_version(), v);
                    peer_accepts(&r).map_err(TestCaseError::fail)?;
                }
            }
        }
        let counter = r.db_version();
        let next = exec(&mut r, "INSERT OR REPLACE INTO t VALUES (1000, 'n', 0, 0)");
        prop_assert_eq!(next, Some(counter + 1));
    }

    /// A huge db_version from a peer (or from "us") is merged or refused;
    /// either way the local counter only moves by local transactions.
    #[test]
    fn huge_db_versions_leave_the_local_counter_alone(
        i in any::<prop::sample::Index>(),
        db_version in prop::sample::select(vec![i64::MAX, i64::MAX - 1, 1 << 62, MY_COUNTER + 1]),
        own in any::<bool>(),
    ) {
        let mut r = receiver();
        let before = snapshot(&r);
        let mut c = source_changes()[i.index(source_changes().len())].clone();
        c.db_version = db_version;
        if own {
            c.site_id = ME;
        }
        match r.apply_changes(std::slice::from_ref(&c)) {
            Ok(_) => {
                prop_assert!(!own, "own site id above the counter was merged");
                let seen = r.site_versions().into_iter().find(|(s, _)| *s == SOURCE);
                prop_assert_eq!(seen, Some((SOURCE, db_version as u64)));
                prop_assert!(r.changes_since(db_version as u64, None).unwrap().is_empty());
            }
            Err(_) => {
                prop_assert!(own, "a valid change was refused");
                prop_assert_eq!(snapshot(&r), before);
            }
        }
        prop_assert_eq!(r.db_version(), MY_COUNTER as u64);
        let next = exec(&mut r, "UPDATE t SET b = 99 WHERE id = 1");
        prop_assert_eq!(next, Some(MY_COUNTER as u64 + 1));
        peer_accepts(&r).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn too_many_pk_columns_is_an_error_not_a_panic() {
    let values = vec![Value::Null; 256];
    assert!(pk::pack_values(&values).is_err());
    let mut bytes = vec![255u8];
    bytes.extend([0x05; 255]);
    assert_eq!(pk::unpack(&bytes).unwrap().len(), 255);
}

// ---- audit findings reachable through the public API ----

/// Capture bumps cl / col_version with `+ 1` on values a peer sent
/// (capture.rs mark_deleted, mark_alive, bump, move_row): at i64::MAX the
/// next local write reads out negative clocks that every peer refuses.
#[test]
fn local_writes_after_huge_remote_clocks_stay_replicable() {
    let max = i64::MAX;
    let scenarios: [(&str, [i64; 4], &str); 4] = [
        (
            "cl = i64::MAX, then DELETE",
            [max, 1, 1, 0],
            "DELETE FROM t WHERE id = 7",
        ),
        (
            "cv = i64::MAX, then UPDATE",
            [1, max, 1, 0],
            "UPDATE t SET a = 'mine' WHERE id = 7",
        ),
        (
            "cv = i64::MAX, then pk move",
            [1, max, 1, 0],
            "UPDATE t SET id = 8 WHERE id = 7",
        ),
        (
            "cl = i64::MAX - 1, then INSERT; DELETE",
            [max - 1, max - 1, 1, 0],
            "INSERT INTO t VALUES (7, 'r', 0, 0); DELETE FROM t WHERE id = 7",
        ),
    ];
    let mut failures = Vec::new();
    for (name, clock, sql) in scenarios {
        let mut r = receiver();
        let (cid, val) = match clock[0] % 2 {
            0 => ("-1", Value::Null),
            _ => ("a", Value::Text("v".into())),
        };
        let c = change("t", &[int(7)], cid, val, clock);
        if r.apply_changes(&[c]).is_err() {
            continue; // refusing the huge clock is a fix too
        }
        let mut tx = r.transaction().unwrap();
        let ran = tx.execute_batch(sql).is_ok();
        if ran && tx.commit().is_ok() {
            if let Err(e) = peer_accepts(&r) {
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The clock blob of t row 1 (pk X'010901') replaced by `blob`.
fn tamper_clock(r: &CrrConn, blob: &str) {
    r.connection()
        .execute_batch(&format!(
            "UPDATE t__crr_clock SET clock = X'{blob}' WHERE pk = X'010901'"
        ))
        .unwrap();
}

/// Disk: a clock blob holding u64::MAX counters (a tampered file, or plain
/// SQL on the bookkeeping tables) makes the next local write overflow in
/// capture.rs (`alive + 1`, `col_version + 1`): a debug-build panic.
#[test]
fn corrupt_clock_counters_do_not_panic_local_writes() {
    const MAX: &str = "ffffffffffffffffff01";
    let cases = [
        // cl MAX, sentinel (cv MAX, dbv 1, site 0, seq 0), no column clocks.
        (
            format!("{MAX}01{MAX}01000000"),
            "DELETE FROM t WHERE id = 1",
        ),
        // cl 1, no sentinel, slot a = (cv MAX, dbv 1, site 0, seq 0).
        (
            format!("01000101{MAX}010000"),
            "UPDATE t SET a = 'new' WHERE id = 1",
        ),
        (
            format!("01000101{MAX}010000"),
            "UPDATE t SET id = 50 WHERE id = 1",
        ),
    ];
    for (blob, sql) in cases {
        let mut r = receiver();
        tamper_clock(&r, &blob);
        let _ = no_panic(&format!("{sql} over clock {blob}"), || {
            let mut tx = r.transaction().unwrap();
            tx.execute_batch(sql).and_then(|()| tx.commit())
        });
    }
}

/// Disk: a clock entry naming a site ordinal the sites table lacks reaches
/// `Sites::id` (store.rs, `self.ids[ordinal]`) from the merge's tie-breaks
/// (merge.rs: equal-value column, equal-cl tombstone): index out of bounds.
#[test]
fn clock_naming_unknown_site_does_not_panic_merges() {
    // Row 1: cl 1, slot a = (cv 1, dbv 1, site 99, seq 0); a tie on a's value.
    let mut r = receiver();
    tamper_clock(&r, "0100010101016300");
    let a = change("t", &[int(1)], "a", Value::Text("z".into()), [1, 1, 1, 0]);
    let _ = no_panic("merging an equal value", || r.apply_changes(&[a]));
    // Row 1 deleted at cl 2 by site 99; an equal tombstone arrives.
    let mut r = receiver();
    exec(&mut r, "DELETE FROM t WHERE id = 1");
    tamper_clock(&r, "02010201630000");
    let d = change("t", &[int(1)], "-1", Value::Null, [2, 2, 1, 0]);
    let _ = no_panic("merging an equal tombstone", || r.apply_changes(&[d]));
}

fn t_id(r: &CrrConn) -> i64 {
    r.connection()
        .query_row("SELECT id FROM crr_tables WHERE name = 't'", [], |row| {
            row.get(0)
        })
        .unwrap()
}

/// User SQL: `crr_capture` is callable from any statement in a CrrTx
/// (capture.rs on_trigger). Too few arguments index `ctx.get_raw` out of
/// bounds (caught by rusqlite as UnwindingPanic); well-formed calls forge
/// clock entries for rows that do not exist, with pk types peers refuse.
#[test]
fn crr_capture_cannot_be_called_by_hand() {
    let mut r = receiver();
    let id = t_id(&r);
    for call in [
        format!("SELECT crr_capture({id}, 2)"),
        format!("SELECT crr_capture({id}, 0, 'forged')"),
        format!("SELECT crr_capture({id}, 1, 1)"),
    ] {
        let mut tx = r.transaction().unwrap();
        let result = tx.query(&call, [], |_| Ok(()));
        assert!(
            !matches!(
                result,
                Err(CrrError::Sqlite(rusqlite::Error::UnwindingPanic))
            ),
            "{call}: panicked inside the SQL function"
        );
        if result.is_ok() && tx.commit().is_ok() {
            assert_eq!(
                r.db_version(),
                MY_COUNTER as u64,
                "{call}: recorded a forged write"
            );
        }
    }
    peer_accepts(&r).unwrap();
}

/// User SQL: a TEXT pk holding invalid UTF-8 is packed, but `pk::unpack`
/// refuses it when changes are read (changes.rs read_values): every later
/// `changes_since` fails, replication of the whole database stops.
#[test]
fn invalid_utf8_text_pk_does_not_block_changes() {
    let mut r = receiver();
    let mut tx = r.transaction().unwrap();
    let ran = tx.execute("INSERT INTO s VALUES (CAST(X'FF80' AS TEXT), 1.0)", []);
    if ran.is_ok() && tx.commit().is_ok() {
        peer_accepts(&r).unwrap();
    }
}

/// User SQL: invalid UTF-8 in a TEXT column is read out lossily
/// (value.rs from_ref), so peers store U+FFFD and never converge.
#[test]
fn invalid_utf8_text_value_converges() {
    let mut r = receiver();
    let mut tx = r.transaction().unwrap();
    let ran = tx.execute("UPDATE t SET a = CAST(X'FF' AS TEXT) WHERE id = 1", []);
    if ran.is_ok() && tx.commit().is_ok() {
        let mut peer = replica(PEER);
        peer.apply_changes(&r.changes_since(0, None).unwrap())
            .unwrap();
        let hex = |c: &CrrConn| -> String {
            let sql = "SELECT hex(a) FROM t WHERE id = 1";
            c.connection().query_row(sql, [], |row| row.get(0)).unwrap()
        };
        assert_eq!(hex(&peer), hex(&r));
    }
}

/// Peer: non-minimal pk encodings are accepted (crr-model.md 9) but keyed
/// by their raw bytes (merge.rs groups and store.rs caches by `change.pk`):
/// one row gets two clocks, read out under two pks.
#[test]
fn non_minimal_pk_is_the_same_row() {
    let mut r = receiver();
    let mut c = change(
        "t",
        &[int(1)],
        "a",
        Value::Text("evil".into()),
        [1, 9, 1, 0],
    );
    c.pk = vec![0x01, 0x11, 0x00, 0x01]; // 1 on two bytes
    r.apply_changes(&[c]).unwrap();
    let changes = r.changes_since(0, None).unwrap();
    for ch in &changes {
        let canonical = pk::pack_values(&pk::unpack(&ch.pk).unwrap()).unwrap();
        assert_eq!(ch.pk, canonical, "non-canonical pk read out: {ch:?}");
    }
    let a_of_1: Vec<_> = changes
        .iter()
        .filter(|ch| {
            ch.table == "t" && ch.cid == "a" && ch.pk == pk::pack_values(&[int(1)]).unwrap()
        })
        .collect();
    assert_eq!(a_of_1.len(), 1, "{a_of_1:?}");
    peer_accepts(&r).unwrap();
}

/// Peer: SQLite stores NaN as NULL, but the merge compares the incoming NaN
/// (affinity.rs apply keeps it) with the stored NULL: re-applying wins again.
#[test]
fn nan_values_merge_idempotently() {
    let batch = [
        change(
            "s",
            &[Value::Text("k".into())],
            "v",
            Value::Real(f64::NAN),
            [1, 5, 1, 0],
        ),
        change("t", &[int(1)], "c", Value::Real(f64::NAN), [1, 5, 1, 1]),
    ];
    let mut r = receiver();
    r.apply_changes(&batch).unwrap();
    let again = r.apply_changes(&batch).unwrap();
    assert_eq!(
        again.won,
        Vec::<usize>::new(),
        "re-applying NaN changes won again"
    );
}

/// `changes_since(n)` casts n to i64 (changes.rs read: `filter.after as
/// i64`): above i64::MAX it becomes negative and returns every change.
#[test]
fn changes_since_beyond_i64_max_is_empty() {
    let r = receiver();
    for since in [u64::MAX, 1 << 63] {
        let got = r.changes_since(since, None).unwrap();
        assert!(
            got.is_empty(),
            "changes_since({since}) returned {} changes",
            got.len()
        );
    }
}
