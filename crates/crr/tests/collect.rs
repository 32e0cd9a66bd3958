//! Tombstone collection (`CrrConn::collect_tombstones`) never changes what
//! replicas converge to: random inserts, updates, deletes and re-inserts on
//! three replicas, synced in rounds, with some replicas collecting up to
//! what all of them applied at random points, always hold the rows of a
//! plain model — including keys re-inserted on a replica that collected
//! their tombstone while another still holds it.

use std::collections::BTreeMap;

use patina_crr::{CrrConn, SiteId};
use proptest::prelude::*;

const SCHEMA: &str = "
CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a, b TEXT);
CREATE TABLE p(k INTEGER PRIMARY KEY NOT NULL);
";

const IDS: [SiteId; 3] = [SiteId([0x21; 16]), SiteId([0x42; 16]), SiteId([0x63; 16])];

#[derive(Debug, Clone)]
enum Op {
    /// INSERT OR REPLACE into `t` (a delete and an insert on an alive row).
    Upsert {
        key: i64,
        a: i64,
    },
    Update {
        key: i64,
        b: &'static str,
    },
    Delete {
        key: i64,
    },
    /// pk-only table `p`.
    Add {
        key: i64,
    },
    Remove {
        key: i64,
    },
    /// Replicas (bit mask) collect up to what every replica applied at the
    /// last full sync.
    Collect {
        mask: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0i64..6;
    prop_oneof![
        3 => (key.clone(), 0i64..4).prop_map(|(key, a)| Op::Upsert { key, a }),
        2 => (key.clone(), prop::sample::select(vec!["x", "y"])).prop_map(|(key, b)| Op::Update { key, b }),
        3 => key.clone().prop_map(|key| Op::Delete { key }),
        1 => key.clone().prop_map(|key| Op::Add { key }),
        1 => key.prop_map(|key| Op::Remove { key }),
        2 => (1u8..8).prop_map(|mask| Op::Collect { mask }),
    ]
}

fn replica(id: SiteId) -> CrrConn {
    let mut conn = CrrConn::open_in_memory_with_site_id(Some(id)).unwrap();
    conn.apply_schema(SCHEMA).unwrap();
    conn
}

fn exec(conn: &mut CrrConn, sql: &str, params: &[&dyn rusqlite::ToSql]) {
    let mut tx = conn.transaction().unwrap();
    tx.execute(sql, params).unwrap();
    tx.commit().unwrap();
}

/// Every replica merges every other's changes.
fn sync_all(sites: &mut [CrrConn]) {
    for to in 0..sites.len() {
        for from in 0..sites.len() {
            if from != to {
                let batch = sites[from]
                    .changes_since(0, Some(sites[to].site_id()))
                    .unwrap();
                sites[to].apply_changes(&batch).unwrap();
            }
        }
    }
}

fn contents(conn: &CrrConn) -> Vec<String> {
    let c = conn.connection();
    let mut out: Vec<String> = c
        .prepare("SELECT 't' || id || '=' || quote(a) || ',' || quote(b) FROM t ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    out.extend(
        c.prepare("SELECT 'p' || k FROM p ORDER BY k")
            .unwrap()
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap),
    );
    out
}

fn tombstones(conn: &CrrConn) -> usize {
    let c = conn.connection();
    ["t", "p"]
        .iter()
        .map(|t| {
            let clocks: i64 = c
                .query_row(
                    &format!("SELECT count(*) FROM \"{t}__crr_clock\""),
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            let rows: i64 = c
                .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                .unwrap();
            (clocks - rows) as usize
        })
        .sum()
}

#[derive(Default)]
struct Model {
    t: BTreeMap<i64, (i64, Option<&'static str>)>,
    p: BTreeMap<i64, ()>,
}

impl Model {
    fn contents(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .t
            .iter()
            .map(|(k, (a, b))| {
                let b = b.map_or("NULL".to_string(), |b| format!("'{b}'"));
                format!("t{k}={a},{b}")
            })
            .collect();
        out.extend(self.p.keys().map(|k| format!("p{k}")));
        out
    }
}

/// Runs rounds of ops; in a round each key is written by one replica only
/// (so the outcome does not depend on concurrent writes' tie-breaks), then
/// all replicas sync. Returns the tombstones collected in all.
fn run(rounds: &[Vec<Op>], owner_shift: &[usize]) -> u64 {
    let mut sites: Vec<CrrConn> = IDS.iter().map(|&id| replica(id)).collect();
    let mut model = Model::default();
    let mut bounds: BTreeMap<SiteId, u64> = BTreeMap::new();
    let mut collected = 0;
    for (round, ops) in rounds.iter().enumerate() {
        let shift = owner_shift[round % owner_shift.len()];
        let owner = |key: i64| (key as usize + shift) % IDS.len();
        for op in ops {
            match *op {
                Op::Upsert { key, a } => {
                    exec(
                        &mut sites[owner(key)],
                        "INSERT OR REPLACE INTO t(id, a) VALUES (?1, ?2)",
                        &[&key, &a],
                    );
                    model.t.insert(key, (a, None));
                }
                Op::Update { key, b } => {
                    exec(
                        &mut sites[owner(key)],
                        "UPDATE t SET b = ?2 WHERE id = ?1",
                        &[&key, &b],
                    );
                    if let Some(row) = model.t.get_mut(&key) {
                        row.1 = Some(b);
                    }
                }
                Op::Delete { key } => {
                    exec(
                        &mut sites[owner(key)],
                        "DELETE FROM t WHERE id = ?1",
                        &[&key],
                    );
                    model.t.remove(&key);
                }
                Op::Add { key } => {
                    exec(
                        &mut sites[owner(key)],
                        "INSERT OR IGNORE INTO p VALUES (?1)",
                        &[&key],
                    );
                    model.p.insert(key, ());
                }
                Op::Remove { key } => {
                    exec(
                        &mut sites[owner(key)],
                        "DELETE FROM p WHERE k = ?1",
                        &[&key],
                    );
                    model.p.remove(&key);
                }
                Op::Collect { mask } => {
                    for (i, site) in sites.iter_mut().enumerate() {
                        if mask & (1 << i) != 0 {
                            let done = site.collect_tombstones(&bounds, u64::MAX).unwrap();
                            assert!(done.complete);
                            collected += done.rows;
                        }
                    }
                }
            }
        }
        sync_all(&mut sites);
        // Everyone holds everyone's versions now: the next collections may
        // go this far.
        bounds = sites
            .iter()
            .map(|s| (s.site_id(), s.db_version()))
            .collect();
        let want = model.contents();
        for (i, site) in sites.iter().enumerate() {
            assert_eq!(
                contents(site),
                want,
                "replica {i} after round {round}: {rounds:?}"
            );
        }
    }
    collected
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn collection_never_changes_what_replicas_converge_to(
        rounds in prop::collection::vec(prop::collection::vec(op(), 1..8), 1..10),
        owner_shift in prop::collection::vec(0usize..3, 1..4),
    ) {
        run(&rounds, &owner_shift);
    }
}

#[test]
fn a_key_reinserted_where_its_tombstone_was_collected_comes_alive_everywhere() {
    let mut sites: Vec<CrrConn> = IDS.iter().map(|&id| replica(id)).collect();
    exec(&mut sites[0], "INSERT INTO t(id, a) VALUES (1, 'x')", &[]);
    sync_all(&mut sites);
    exec(&mut sites[0], "DELETE FROM t WHERE id = 1", &[]);
    sync_all(&mut sites);
    assert_eq!(tombstones(&sites[1]), 1);
    let bounds: BTreeMap<SiteId, u64> = sites
        .iter()
        .map(|s| (s.site_id(), s.db_version()))
        .collect();
    // Only replica 0 collects; 1 and 2 still hold the tombstone (cl 2).
    let done = sites[0].collect_tombstones(&bounds, u64::MAX).unwrap();
    assert_eq!(done.rows, 1);
    // The delete was replica 0's second version; the insert removed nothing.
    assert_eq!(
        done.removed_through,
        BTreeMap::from([(sites[0].site_id(), 2)])
    );
    assert_eq!(tombstones(&sites[0]), 0);
    assert_eq!(sites[0].collected_cls(), vec![("t".to_string(), 2)]);
    // A second pass finds nothing new: what was scanned is not read again.
    assert_eq!(
        sites[0].collect_tombstones(&bounds, u64::MAX).unwrap().rows,
        0
    );
    exec(
        &mut sites[0],
        "INSERT INTO t(id, a) VALUES (1, 'again')",
        &[],
    );
    sync_all(&mut sites);
    for site in &sites {
        assert_eq!(contents(site), vec!["t1='again',NULL".to_string()]);
    }
    // A replica told of the collected causal length by a peer does the same.
    sites[2].raise_collected_cl("t", 2).unwrap();
    exec(&mut sites[1], "DELETE FROM t WHERE id = 1", &[]);
    sync_all(&mut sites);
    let bounds: BTreeMap<SiteId, u64> = sites
        .iter()
        .map(|s| (s.site_id(), s.db_version()))
        .collect();
    for site in sites.iter_mut() {
        site.collect_tombstones(&bounds, u64::MAX).unwrap();
        assert_eq!(tombstones(site), 0);
    }
    exec(
        &mut sites[2],
        "INSERT INTO t(id, a) VALUES (1, 'third')",
        &[],
    );
    sync_all(&mut sites);
    for site in &sites {
        assert_eq!(contents(site), vec!["t1='third',NULL".to_string()]);
    }
}

#[test]
fn collection_stops_at_its_row_budget_and_goes_on_next_time() {
    let mut a = replica(IDS[0]);
    for key in 0..50i64 {
        exec(&mut a, "INSERT INTO t(id, a) VALUES (?1, 1)", &[&key]);
        exec(&mut a, "DELETE FROM t WHERE id = ?1", &[&key]);
    }
    assert_eq!(tombstones(&a), 50);
    let bounds = BTreeMap::from([(a.site_id(), a.db_version())]);
    let first = a.collect_tombstones(&bounds, 10).unwrap();
    assert!(!first.complete);
    assert!(first.rows >= 10 && first.rows < 50, "{first:?}");
    let mut total = first.rows;
    while total < 50 {
        let next = a.collect_tombstones(&bounds, 10).unwrap();
        assert!(next.rows > 0);
        total += next.rows;
    }
    assert_eq!(tombstones(&a), 0);
    // The version index kept nothing of the collected rows.
    let indexed: i64 = a
        .connection()
        .query_row("SELECT count(*) FROM crr_versions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(indexed, 0);
}
