//! Bad input (crr-model.md 8, 9, 12): garbage changes from peers, garbage
//! SQL from users, corrupt bookkeeping on disk. Nothing may panic; a refused
//! batch or transaction changes nothing; whatever a replica accepts it can
//! hand on to a peer.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use patina_crr::{pk, Change, CrrConn, CrrError, SiteId, Value};
use proptest::prelude::*;

const SCHEMA: &str = "
CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INTEGER, c);
CREATE TABLE s(k TEXT PRIMARY KEY NOT NULL, v REAL) STRICT;
CREATE TABLE p(x INTEGER NOT NULL, y BLOB NOT NULL, PRIMARY KEY (x, y));";
const DUMPS: &str =
    "SELECT * FROM t ORDER BY id|SELECT * FROM s ORDER BY k|SELECT * FROM p ORDER BY x, y";
/// The receiver; larger than SOURCE so equal-value ties go both ways.
const ME: SiteId = SiteId([0xAA; 16]);
const SOURCE: SiteId = SiteId([0x55; 16]);
const PEER: SiteId = SiteId([0x77; 16]);
/// The fresh replica `peer_accepts` builds; no batch names it.
const CHECKER: SiteId = SiteId([0x3C; 16]);
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
    for sql in [
        "INSERT INTO t VALUES (1,'x',1,NULL),(2,'y',2,2.5);
         INSERT INTO s VALUES ('k',1.5); INSERT INTO p VALUES (1,X'01')",
        "UPDATE t SET a='z' WHERE id=1; DELETE FROM t WHERE id=2",
    ] {
        exec(&mut c, sql);
    }
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
        .split('|')
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
/// ends with the same tables; returns that peer.
fn peer_accepts(c: &CrrConn) -> Result<CrrConn, String> {
    let changes = c
        .changes_since(0, None)
        .map_err(|e| format!("changes_since: {e}"))?;
    if let Some(bad) = changes
        .iter()
        .find(|ch| ch.cl < 1 || ch.col_version < 0 || ch.db_version < 1 || ch.seq < 0)
    {
        return Err(format!("out-of-range clock read out: {bad:?}"));
    }
    let mut peer = replica(CHECKER);
    peer.apply_changes(&changes)
        .map_err(|e| format!("a fresh peer refuses what this replica reads out: {e}"))?;
    if dump(&peer) != dump(c) {
        return Err(format!("peer {:?} != origin {:?}", dump(&peer), dump(c)));
    }
    Ok(peer)
}

fn change(table: &str, pk: Value, cid: &str, val: Value, clock: [i64; 4]) -> Change {
    let [cl, col_version, db_version, seq] = clock;
    let pk = pk::pack_values(&[pk]).unwrap();
    let (table, cid, site_id) = (table.into(), cid.into(), SOURCE);
    Change {
        table,
        pk,
        cid,
        val,
        col_version,
        db_version,
        site_id,
        cl,
        seq,
    }
}

fn int(i: i64) -> Value {
    Value::Integer(i)
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

// ---- strategies ----

/// One of the `|`-separated items of `list`.
fn pick(list: &'static str) -> impl Strategy<Value = &'static str> + Clone {
    prop::sample::select(list.split('|').collect::<Vec<_>>())
}

fn arb_value() -> impl Strategy<Value = Value> {
    let special = [0.0, -0.0, 1.0, f64::INFINITY, f64::NEG_INFINITY, 1e300];
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        prop::sample::select(vec![0, 1, -1, 128, i64::MIN, i64::MAX]).prop_map(Value::Integer),
        // NaN has its own test below (SQLite stores it as NULL).
        any::<f64>().prop_map(|f| Value::Real(if f.is_nan() { 0.5 } else { f })),
        prop::sample::select(special.to_vec()).prop_map(Value::Real),
        "\\PC{0,6}".prop_map(Value::Text),
        pick("k|x|5|1.5|").prop_map(|s| Value::Text(s.into())),
        prop::collection::vec(any::<u8>(), 0..6).prop_map(Value::Blob),
    ]
}

/// A clock field: valid small values, the extremes, or anything.
fn arb_clock() -> impl Strategy<Value = i64> {
    let special = vec![i64::MIN, -1, 0, 1, 2, 3, 4, i64::MAX - 1, i64::MAX];
    prop_oneof![prop::sample::select(special), 1..10i64, any::<i64>()]
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
    /// Sets cl, col_version, db_version or seq (0..4).
    Clock(usize, i64),
    Site(SiteId),
    /// The receiver's own site id, db_version = its counter + offset.
    OwnSite(i64),
}

/// Changes that keep a change well-formed (mostly) ...
fn arb_benign() -> impl Strategy<Value = Mutation> {
    use Mutation::*;
    let sites = vec![SOURCE, PEER, SiteId([0; 16]), SiteId([0xff; 16])];
    let max = i64::MAX;
    prop_oneof![
        arb_value().prop_map(Val),
        prop_oneof![1..6i64, Just(max), Just(max - 1)].prop_map(|v| Clock(0, v)),
        (1..4usize, prop_oneof![1..6i64, Just(max)]).prop_map(|(f, v)| Clock(f, v)),
        prop::sample::select(sites).prop_map(Site),
        (-1..1i64).prop_map(OwnSite),
    ]
}

/// ... and changes that mostly do not.
fn arb_hostile() -> impl Strategy<Value = Mutation> {
    use Mutation::*;
    let bytes = |n| prop::collection::vec(any::<u8>(), n);
    prop_oneof![
        bytes(0..12).prop_map(Pk),
        (0..12usize).prop_map(Truncate),
        bytes(1..4).prop_map(Extend),
        prop::collection::vec(arb_value(), 0..4).prop_map(PkValues),
        pick("t|s|p|T|nope||crr_sites|t__crr_clock").prop_map(Table),
        pick("-1|a|b|c|v|id|k|x|y|A||-2").prop_map(Cid),
        (0..4usize, arb_clock()).prop_map(|(f, v)| Clock(f, v)),
        (1..4i64).prop_map(OwnSite),
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
        Mutation::Clock(f, v) => {
            *[&mut c.cl, &mut c.col_version, &mut c.db_version, &mut c.seq][f] = v
        }
        Mutation::Site(s) => c.site_id = s,
        Mutation::OwnSite(offset) => {
            c.site_id = ME;
            c.db_version = (MY_COUNTER + offset).max(1);
        }
    }
    c
}

/// A change of the source, as is (about a third), mutated benignly or
/// hostilely.
fn arb_change() -> impl Strategy<Value = Change> {
    let mutations = prop_oneof![
        3 => Just(Vec::new()),
        4 => prop::collection::vec(arb_benign(), 1..3),
        2 => prop::collection::vec(prop_oneof![arb_benign(), arb_hostile()], 1..4),
    ];
    let n = source_changes().len();
    (0..n, mutations).prop_map(|(i, ms)| ms.into_iter().fold(source_changes()[i].clone(), mutate))
}

/// A packed pk: random bytes, or a valid packing, possibly damaged.
fn arb_packed() -> impl Strategy<Value = Vec<u8>> {
    let packed =
        || prop::collection::vec(arb_value(), 0..4).prop_map(|v| pk::pack_values(&v).unwrap());
    let damaged = (packed(), any::<prop::sample::Index>(), any::<u8>());
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..24),
        packed(),
        damaged.prop_map(|(mut b, at, byte)| {
            let i = at.index(b.len());
            b[i] = byte;
            b
        }),
    ]
}

/// SQL literals, a few of them failing at run time.
fn arb_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => pick("NULL|0|1|2|-1|5|1.5|-0.0|1e308|'k'|'é'|'5'|X''|X'00FF'|9223372036854775807|\
                   -9223372036854775808|zeroblob(3)|(SELECT max(id) FROM t)|random()")
            .prop_map(str::to_owned),
        4 => "[a-z']{0,4}".prop_map(|s| format!("'{}'", s.replace('\'', "''"))),
        2 => any::<i64>().prop_map(|i| i.to_string()),
        1 => pick("abs(-9223372036854775808)|nosuchcol").prop_map(str::to_owned),
    ]
}

fn arb_statement() -> impl Strategy<Value = String> {
    let l = arb_literal;
    let or = pick("|OR IGNORE|OR REPLACE|OR FAIL|OR ABORT|OR ROLLBACK");
    let col = pick("a|b|c|id");
    let op = pick("=|<|>=|<>");
    let grammar = prop_oneof![
        (or.clone(), l(), l(), l(), l())
            .prop_map(|(o, i, a, b, c)| format!("INSERT {o} INTO t VALUES ({i}, {a}, {b}, {c})")),
        (l(), l()).prop_map(|(i, a)| format!(
            "INSERT INTO t(id, a) VALUES ({i}, {a}) ON CONFLICT(id) DO UPDATE SET b = excluded.a"
        )),
        (col, l(), op.clone(), l())
            .prop_map(|(c, v, o, i)| format!("UPDATE t SET {c} = {v} WHERE id {o} {i}")),
        (op, l()).prop_map(|(o, i)| format!("DELETE FROM t WHERE id {o} {i}")),
        (or.clone(), l(), l()).prop_map(|(o, k, v)| format!("INSERT {o} INTO s VALUES ({k}, {v})")),
        (l(), l()).prop_map(|(v, k)| format!("UPDATE s SET v = {v} WHERE k = {k}")),
        (l(), l()).prop_map(|(k2, k)| format!("UPDATE s SET k = {k2} WHERE k = {k}")),
        l().prop_map(|k| format!("DELETE FROM s WHERE k = {k}")),
        (or, l(), l()).prop_map(|(o, x, y)| format!("INSERT {o} INTO p VALUES ({x}, {y})")),
        (l(), l()).prop_map(|(x, y)| format!("UPDATE p SET x = {x} WHERE y = {y}")),
        l().prop_map(|x| format!("DELETE FROM p WHERE x = {x}")),
        Just("SELECT * FROM t, s, p".to_owned()),
        Just("REPLACE INTO t SELECT id + 100, a, b, c FROM t".to_owned()),
    ];
    // ";COMMIT" and friends have their own test (leading_semicolon_...).
    let refused = pick(
        "BEGIN|COMMIT|END|ROLLBACK|SAVEPOINT a|RELEASE a|VACUUM|PRAGMA recursive_triggers = 0|\
         DROP TABLE t|ALTER TABLE t ADD COLUMN z|CREATE TABLE z(a)|ATTACH ':memory:' AS x|\
         /* c */ COMMIT|-- x\nDROP TABLE s|SELECT 1; COMMIT|DELETE FROM t; ROLLBACK||  |;|/* open",
    );
    let token = pick(
        "INSERT|INTO|t|s|p|VALUES|(|)|,|1|'x'|SELECT|UPDATE|SET|a|=|WHERE|DELETE|FROM|OR|\
         REPLACE|*|;|--|/*|*/|NULL|X'00'|id|k|v|RETURNING|ON|CONFLICT|DO|NOTHING|WITH",
    );
    prop_oneof![
        24 => grammar,
        2 => refused.prop_map(str::to_owned),
        1 => "\\PC{0,24}",
        1 => prop::collection::vec(token, 0..10).prop_map(|t| t.join(" ")),
    ]
}

fn fast() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        failure_persistence: None,
        max_shrink_iters: 300,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(fast())]

    /// Garbage mixed into valid batches. Either the batch is refused and
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
        calls in prop::collection::vec((0..3u8, arb_statement()), 1..6)
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
                prop_assert!(!e.to_string().contains("unwinding panic"), "{:?}: {}", sql, e);
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

// ---- audit findings reachable through the public API (see the report) ----

/// Capture bumps cl / col_version with `+ 1` on values a peer sent
/// (capture.rs mark_deleted, mark_alive, bump, move_row): past i64::MAX the
/// next local write reads out negative clocks that every peer refuses.
#[test]
fn local_writes_after_huge_remote_clocks_stay_replicable() {
    let max = i64::MAX;
    let reinsert = "INSERT INTO t VALUES (7,'r',0,0); DELETE FROM t WHERE id=7";
    let scenarios = [
        ("cl MAX; DELETE", [max, 1, 1, 0], "DELETE FROM t WHERE id=7"),
        (
            "cv MAX; UPDATE",
            [1, max, 1, 0],
            "UPDATE t SET a='m' WHERE id=7",
        ),
        (
            "cv MAX; pk move",
            [1, max, 1, 0],
            "UPDATE t SET id=8 WHERE id=7",
        ),
        (
            "cl MAX-1; INSERT, DELETE",
            [max - 1, max - 1, 1, 0],
            reinsert,
        ),
    ];
    let mut failures = Vec::new();
    for (name, clock, sql) in scenarios {
        let mut r = receiver();
        let (cid, val) = match clock[0] % 2 {
            0 => ("-1", Value::Null),
            _ => ("a", text("v")),
        };
        let c = change("t", int(7), cid, val, clock);
        if r.apply_changes(&[c]).is_err() {
            continue; // refusing the huge clock is a fix too
        }
        let mut tx = r.transaction().unwrap();
        if tx.execute_batch(sql).is_ok() && tx.commit().is_ok() {
            if let Err(e) = peer_accepts(&r) {
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The clock blob of t row 1 (pk X'010901') replaced by `blob`, as a
/// tampered file would hold it (or plain SQL: CrrTx lets it through too).
fn tamper_clock(r: &CrrConn, blob: &str) {
    let sql = format!("UPDATE t__crr_clock SET clock = X'{blob}' WHERE pk = X'010901'");
    r.connection().execute_batch(&sql).unwrap();
}

fn panics(f: impl FnOnce()) -> bool {
    catch_unwind(AssertUnwindSafe(f)).is_err()
}

/// Disk: u64::MAX counters in a clock blob overflow the next local write
/// in capture.rs (`alive + 1`, `col_version + 1`): a debug-build panic,
/// a wrap to 0 in release.
#[test]
fn corrupt_clock_counters_do_not_panic_local_writes() {
    // varint u64::MAX. Blobs: cl MAX + sentinel (cv MAX, dbv 1, site 0,
    // seq 0), no column clocks; cl 1, no sentinel, slot a = (cv MAX, 1, 0, 0).
    const MAX: &str = "ffffffffffffffffff01";
    let cl_max = format!("{MAX}01{MAX}01000000");
    let cv_max = format!("01000101{MAX}010000");
    let cases = [
        (&cl_max, "DELETE FROM t WHERE id = 1"),
        (&cv_max, "UPDATE t SET a = 'new' WHERE id = 1"),
        (&cv_max, "UPDATE t SET id = 50 WHERE id = 1"),
    ];
    let mut failures = Vec::new();
    for (blob, sql) in cases {
        let mut r = receiver();
        tamper_clock(&r, blob);
        if panics(|| {
            let mut tx = r.transaction().unwrap();
            let _ = tx.execute_batch(sql).and_then(|()| tx.commit());
        }) {
            failures.push(format!("{sql} over clock {blob}"));
        }
    }
    assert!(failures.is_empty(), "panicked: {failures:#?}");
}

/// Disk: a clock entry naming a site ordinal that crr_sites lacks reaches
/// `Sites::id` (store.rs `self.ids[ordinal]`) from the merge's tie-breaks
/// (merge.rs decide, equal-cl tombstone; column_wins, equal values).
#[test]
fn clock_naming_unknown_site_does_not_panic_merges() {
    // Row 1: cl 1, slot a = (cv 1, dbv 1, site 99, seq 0); a tie on a's value.
    let mut r = receiver();
    tamper_clock(&r, "0100010101016300");
    let a = change("t", int(1), "a", text("z"), [1, 1, 1, 0]);
    let column = panics(|| drop(r.apply_changes(&[a])));
    // Row 1 deleted at cl 2 by site 99; an equal tombstone arrives.
    let mut r = receiver();
    exec(&mut r, "DELETE FROM t WHERE id = 1");
    tamper_clock(&r, "02010201630000");
    let d = change("t", int(1), "-1", Value::Null, [2, 2, 1, 0]);
    let tombstone = panics(|| drop(r.apply_changes(&[d])));
    assert!(
        !column && !tombstone,
        "panicked: column {column}, tombstone {tombstone}"
    );
}

/// User SQL: a leading `;` hides a statement from check_statement
/// (conn.rs first_keyword sees ""), and SQLite skips it: COMMIT, ROLLBACK,
/// PRAGMA and DDL run inside a CrrTx. After ";COMMIT" the writes and their
/// clocks persist while commit() returns Err and the counter is reused.
#[test]
fn leading_semicolon_cannot_smuggle_statements() {
    let mut r = receiver();
    let mut ran = Vec::new();
    let smuggled = ";COMMIT|; ROLLBACK|;;BEGIN| ;PRAGMA recursive_triggers = 0|;DROP TABLE p";
    for sql in smuggled.split('|') {
        for how in 0..2 {
            let mut tx = r.transaction().unwrap();
            let result = match how {
                0 => tx.execute(sql, []).map(drop),
                _ => tx.query(sql, [], |_| Ok(())).map(drop),
            };
            if result.is_ok() {
                ran.push(format!("{sql:?} via {}", ["execute", "query"][how]));
            }
        }
    }
    assert!(ran.is_empty(), "ran inside a CrrTx: {ran:#?}");
}

/// User SQL: `crr_capture` is callable from any statement in a CrrTx
/// (capture.rs on_trigger). Too few arguments index `ctx.get_raw` out of
/// bounds (a panic rusqlite turns into UnwindingPanic); well-formed calls
/// forge inserts/deletes of rows that do not exist, or do and stay.
#[test]
fn crr_capture_cannot_be_called_by_hand() {
    let mut r = receiver();
    let sql = "SELECT id FROM crr_tables WHERE name = 't'";
    let id: i64 = r.connection().query_row(sql, [], |row| row.get(0)).unwrap();
    let mut failures = Vec::new();
    for args in ["2", "0, 'forged'", "1, 1"] {
        let call = format!("SELECT crr_capture({id}, {args})");
        let mut tx = r.transaction().unwrap();
        match tx.query(&call, [], |_| Ok(())) {
            Err(e) if e.to_string().contains("unwinding panic") => {
                failures.push(format!("{call}: panicked inside the SQL function"));
            }
            Ok(_) if matches!(tx.commit(), Ok(Some(_))) => {
                failures.push(format!("{call}: recorded a forged write"));
            }
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// User SQL: invalid UTF-8 text. As a pk it is packed as is, but
/// `pk::unpack` refuses it when changes are read (changes.rs read_values):
/// `changes_since` fails from then on. As a value it is read out lossily
/// (value.rs from_ref): peers store U+FFFD, the origin keeps the bytes.
#[test]
fn invalid_utf8_text_replicates() {
    fn hexes(c: &CrrConn) -> Vec<String> {
        let sql = "SELECT hex(a) FROM t UNION ALL SELECT hex(k) FROM s";
        let mut stmt = c.connection().prepare(sql).unwrap();
        let rows = stmt.query_map([], |x| x.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    }
    let mut failures = Vec::new();
    for sql in [
        "INSERT INTO s VALUES (CAST(X'FF80' AS TEXT), 1.0)",
        "UPDATE t SET a = CAST(X'FF' AS TEXT) WHERE id = 1",
    ] {
        let mut r = receiver();
        let mut tx = r.transaction().unwrap();
        if tx.execute(sql, []).is_ok() && tx.commit().is_ok() {
            match peer_accepts(&r) {
                Err(e) => failures.push(format!("{sql}: {e}")),
                Ok(peer) if hexes(&peer) != hexes(&r) => {
                    failures.push(format!("{sql}: bytes differ"))
                }
                Ok(_) => {}
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Peer: non-minimal pk encodings are accepted (crr-model.md 9) but keyed
/// by their raw bytes (merge.rs groups, store.rs caches and stores by
/// `change.pk`): one row gets two clocks, read out under two pks.
#[test]
fn non_minimal_pk_is_the_same_row() {
    let mut r = receiver();
    let mut c = change("t", int(1), "a", text("evil"), [1, 9, 1, 0]);
    c.pk = vec![0x01, 0x11, 0x00, 0x01]; // 1, on two bytes
    r.apply_changes(&[c]).unwrap();
    let changes = r.changes_since(0, None).unwrap();
    let is_1a = |ch: &&Change| ch.cid == "a" && pk::unpack(&ch.pk).unwrap() == [int(1)];
    let row1_a: Vec<_> = changes.iter().filter(is_1a).collect();
    assert_eq!(row1_a.len(), 1, "one cell, several clocks: {row1_a:?}");
}

/// Peer: SQLite stores NaN as NULL, but the merge compares the incoming NaN
/// (affinity.rs apply keeps it for REAL and untyped columns) with the stored
/// NULL: re-applying the same batch wins again, every time.
#[test]
fn nan_values_merge_idempotently() {
    let nan = Value::Real(f64::NAN);
    let batch = [
        change("s", text("k"), "v", nan.clone(), [1, 5, 1, 0]),
        change("t", int(1), "c", nan, [1, 5, 1, 1]),
    ];
    let mut r = receiver();
    r.apply_changes(&batch).unwrap();
    let again = r.apply_changes(&batch).unwrap().won;
    assert_eq!(
        again,
        Vec::<usize>::new(),
        "re-applying NaN changes won again"
    );
}

/// Regression (was conn.rs/changes.rs `after as i64`): above i64::MAX the
/// bound turned negative and `changes_since` returned every change.
#[test]
fn changes_since_beyond_i64_max_is_empty() {
    let r = receiver();
    for since in [u64::MAX, 1 << 63] {
        let n = r.changes_since(since, None).unwrap().len();
        assert_eq!(n, 0, "changes_since({since}) returned {n} changes");
    }
}

/// The caller's bookkeeping and the merge share one transaction: when the
/// bookkeeping write fails, the merged changes are rolled back too, and
/// when it succeeds both are there.
#[test]
fn apply_changes_with_commits_or_rolls_back_with_the_caller_s_writes() {
    let mut c = receiver();
    c.connection()
        .execute_batch("CREATE TABLE book(n INTEGER NOT NULL)")
        .unwrap();
    let before = snapshot(&c);
    let err = c.apply_changes_with(source_changes(), |conn| {
        conn.execute("INSERT INTO book VALUES (NULL)", [])
    });
    assert!(err.is_err(), "the NOT NULL violation fails the whole apply");
    assert!(snapshot(&c) == before, "nothing of the merge stayed");
    let (report, n) = c
        .apply_changes_with(source_changes(), |conn| {
            conn.execute("INSERT INTO book VALUES (1)", [])
        })
        .unwrap();
    assert_eq!(n, 1);
    assert!(!report.won.is_empty());
    let booked: i64 = c
        .connection()
        .query_row("SELECT count(*) FROM book", [], |r| r.get(0))
        .unwrap();
    assert_eq!(booked, 1);
    assert!(c.knows_column("t", "a") && c.knows_column("t", "-1"));
    assert!(!c.knows_column("t", "nope") && !c.knows_column("nope", "a"));
}
