//! A replica seeded from a copy of another one's database
//! (`CrrConn::adopt_as_new_site`) holds what a fresh replica that merged
//! all of the old one's changes holds — rows, column clocks naming the same
//! sites and versions, causal lengths — serves the old site's versions as
//! the old site did, writes under its new id from db_version 1, and
//! converges with the old site and its peers as writes go on everywhere.

use std::collections::BTreeMap;
use std::path::Path;

use patina_crr::{Change, CrrConn, CrrError, SiteId, Value};
use proptest::prelude::*;

const SCHEMA: &str = "
CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a, b TEXT);
CREATE TABLE p(k TEXT PRIMARY KEY NOT NULL, v INTEGER);
";

const OLD: SiteId = SiteId([0x40; 16]);
const PEERS: [SiteId; 2] = [SiteId([0x20; 16]), SiteId([0x60; 16])];
/// A fresh replica that merges everything: the reference.
const FRESH: SiteId = SiteId([0x7f; 16]);

#[derive(Debug, Clone)]
enum Op {
    Insert {
        t: bool,
        key: i64,
        a: Value,
    },
    Update {
        t: bool,
        key: i64,
        a: Value,
    },
    Delete {
        t: bool,
        key: i64,
    },
    Replace {
        key: i64,
        a: Value,
    },
    /// `to` merges everything `from` has, in batches of `batch`.
    Sync {
        from: usize,
        to: usize,
        batch: usize,
    },
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        (-2i64..3).prop_map(Value::Integer),
        prop::sample::select(vec!["", "x", "Y"]).prop_map(|s| Value::Text(s.into())),
    ]
}

/// Writes on one of `sites` replicas, and syncs between them.
fn op(sites: usize) -> impl Strategy<Value = (usize, Op)> {
    let write = prop_oneof![
        3 => (any::<bool>(), 1i64..5, value()).prop_map(|(t, key, a)| Op::Insert { t, key, a }),
        3 => (any::<bool>(), 1i64..5, value()).prop_map(|(t, key, a)| Op::Update { t, key, a }),
        2 => (any::<bool>(), 1i64..5).prop_map(|(t, key)| Op::Delete { t, key }),
        1 => (1i64..5, value()).prop_map(|(key, a)| Op::Replace { key, a }),
        3 => (0..sites, 0..sites, 1usize..6).prop_map(|(from, to, batch)| Op::Sync { from, to, batch }),
    ];
    (0..sites, write)
}

fn replica(id: SiteId) -> CrrConn {
    let mut c = CrrConn::open_in_memory_with_site_id(Some(id)).unwrap();
    c.apply_schema(SCHEMA).unwrap();
    c
}

/// Runs one local write; returns the changes it committed (an SQL error,
/// e.g. a duplicate key, rolls it back: none).
fn write(conn: &mut CrrConn, op: &Op) -> Vec<Change> {
    let (sql, params): (&str, Vec<Value>) = match op {
        Op::Insert { t: true, key, a } => (
            "INSERT INTO t(id, a, b) VALUES (?1, ?2, 'b')",
            vec![Value::Integer(*key), a.clone()],
        ),
        Op::Insert { t: false, key, a } => (
            "INSERT INTO p(k, v) VALUES (?1, ?2)",
            vec![Value::Text(format!("k{key}")), a.clone()],
        ),
        Op::Update { t: true, key, a } => (
            "UPDATE t SET a = ?2 WHERE id = ?1",
            vec![Value::Integer(*key), a.clone()],
        ),
        Op::Update { t: false, key, a } => (
            "UPDATE p SET v = ?2 WHERE k = ?1",
            vec![Value::Text(format!("k{key}")), a.clone()],
        ),
        Op::Delete { t: true, key } => ("DELETE FROM t WHERE id = ?1", vec![Value::Integer(*key)]),
        Op::Delete { t: false, key } => (
            "DELETE FROM p WHERE k = ?1",
            vec![Value::Text(format!("k{key}"))],
        ),
        Op::Replace { key, a } => (
            "INSERT OR REPLACE INTO t(id, a) VALUES (?1, ?2)",
            vec![Value::Integer(*key), a.clone()],
        ),
        Op::Sync { .. } => unreachable!("not a write"),
    };
    let mut tx = conn.transaction().unwrap();
    if tx
        .execute(sql, rusqlite::params_from_iter(params.iter()))
        .is_err()
    {
        tx.rollback();
        return Vec::new();
    }
    tx.commit_changes().unwrap().map_or(Vec::new(), |(_, c)| c)
}

/// `to` merges everything `from` holds but `to`'s own changes (as peers
/// pull), in batches.
fn sync(sites: &mut [CrrConn], from: usize, to: usize, batch: usize) {
    if from == to {
        return;
    }
    let changes = sites[from]
        .changes_since(0, Some(sites[to].site_id()))
        .unwrap();
    for chunk in changes.chunks(batch.max(1)) {
        sites[to].apply_changes(chunk).unwrap();
    }
}

fn contents(conn: &CrrConn) -> Vec<String> {
    let mut out = Vec::new();
    for sql in [
        "SELECT quote(id) || ' ' || quote(a) || ' ' || quote(b) FROM t ORDER BY id",
        "SELECT quote(k) || ' ' || quote(v) FROM p ORDER BY k",
    ] {
        let mut stmt = conn.connection().prepare(sql).unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    out
}

/// Causal length per (table, packed pk).
type Cls = BTreeMap<(String, Vec<u8>), i64>;

/// Column clocks exactly (site ids and db_versions included); sentinels by
/// causal length only, as crr-model.md 7.2 defines convergence.
fn clocks(conn: &CrrConn) -> (Vec<String>, Cls) {
    let changes = conn.changes_since(0, None).unwrap();
    let mut cols: Vec<String> = changes
        .iter()
        .filter(|c| !c.is_sentinel())
        .map(|c| format!("{c:?}"))
        .collect();
    cols.sort();
    let cls = changes
        .iter()
        .map(|c| ((c.table.clone(), c.pk.clone()), c.cl))
        .collect();
    (cols, cls)
}

/// Every current change, sentinels included, in a stable order.
fn all_changes(conn: &CrrConn) -> Vec<String> {
    let mut out: Vec<String> = conn
        .changes_since(0, None)
        .unwrap()
        .iter()
        .map(|c| format!("{c:?}"))
        .collect();
    out.sort();
    out
}

/// A copy of `conn`'s database in file `path`, taken as a backup would
/// (SQLite's online backup), opened as a CRR database.
fn copy_of(conn: &CrrConn, path: &Path) -> CrrConn {
    {
        let mut dst = rusqlite::Connection::open(path).unwrap();
        let backup = rusqlite::backup::Backup::new(conn.connection(), &mut dst).unwrap();
        backup.step(-1).unwrap();
    }
    CrrConn::open(path).unwrap()
}

fn run(before: &[(usize, Op)], after: &[(usize, Op)], new_id: SiteId) {
    // 0 = the old site, 1 and 2 its peers.
    let mut sites: Vec<CrrConn> = [OLD, PEERS[0], PEERS[1]].map(replica).into();
    for (site, op) in before {
        match op {
            Op::Sync { from, to, batch } => sync(&mut sites, *from, *to, *batch),
            w => {
                write(&mut sites[*site], w);
            }
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let mut seeded = copy_of(&sites[0], &dir.path().join("copy.db"));
    let old_version = sites[0].db_version();
    let adopted = seeded.adopt_as_new_site(new_id).unwrap();
    assert_eq!(
        (adopted.old_site, adopted.old_db_version, adopted.new_site),
        (OLD, old_version, new_id)
    );
    assert_eq!((seeded.site_id(), seeded.db_version()), (new_id, 0));
    let versions: BTreeMap<SiteId, u64> = seeded.site_versions().into_iter().collect();
    assert_eq!(versions.get(&OLD), Some(&old_version), "{versions:?}");

    // What a fresh replica that merged all of the old site's changes holds.
    let mut fresh = replica(FRESH);
    fresh
        .apply_changes(&sites[0].changes_since(0, None).unwrap())
        .unwrap();
    assert_eq!(contents(&seeded), contents(&fresh));
    assert_eq!(clocks(&seeded), clocks(&fresh));
    // And the old site's own view, sentinels' clocks included: nothing but
    // the ordinals changed.
    assert_eq!(all_changes(&seeded), all_changes(&sites[0]));
    // The old site's versions are served as the old site serves them.
    if old_version > 0 {
        assert_eq!(
            seeded.changes_of(OLD, 1..=old_version).unwrap(),
            sites[0].changes_of(OLD, 1..=old_version).unwrap()
        );
        assert_eq!(
            seeded.version_rows(OLD, 1..=old_version).unwrap(),
            sites[0].version_rows(OLD, 1..=old_version).unwrap()
        );
    }
    assert!(seeded
        .changes_of(new_id, 1..=u64::MAX >> 2)
        .unwrap()
        .is_empty());

    // Writes go on everywhere; the seeded replica is site 3.
    sites.push(seeded);
    let mut own_versions = 0;
    for (site, op) in after {
        match op {
            Op::Sync { from, to, batch } => sync(&mut sites, *from, *to, *batch),
            w => {
                let changes = write(&mut sites[*site], w);
                if *site == 3 && !changes.is_empty() {
                    own_versions += 1;
                    for c in &changes {
                        assert_eq!(c.site_id, new_id, "a new local write names the new site");
                        assert_eq!(c.db_version, own_versions, "the new site counts from 1");
                    }
                }
            }
        }
    }
    assert_eq!(sites[3].db_version() as i64, own_versions);
    sites.push(fresh);
    for _round in 0..2 {
        for to in 0..sites.len() {
            for from in 0..sites.len() {
                sync(&mut sites, from, to, 4);
            }
        }
    }
    let expected = (contents(&sites[4]), clocks(&sites[4]));
    for (i, site) in sites.iter().enumerate().take(4) {
        assert_eq!(contents(site), expected.0, "rows of replica {i}");
        assert_eq!(clocks(site), expected.1, "clocks of replica {i}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// The new id below, between and above the others: ties between
    /// equal clocks are broken by site id.
    #[test]
    fn a_seeded_replica_is_a_replica_that_merged_everything(
        before in prop::collection::vec(op(3), 0..30),
        after in prop::collection::vec(op(4), 0..30),
        new_id in prop::sample::select(vec![SiteId([0x01; 16]), SiteId([0x50; 16]), SiteId([0xfe; 16])]),
    ) {
        run(&before, &after, new_id);
    }
}

#[test]
fn a_known_site_id_is_refused_and_nothing_changes() {
    let mut old = replica(OLD);
    let mut peer = replica(PEERS[0]);
    write(
        &mut peer,
        &Op::Insert {
            t: true,
            key: 1,
            a: Value::Integer(1),
        },
    );
    old.apply_changes(&peer.changes_since(0, None).unwrap())
        .unwrap();
    write(
        &mut old,
        &Op::Update {
            t: true,
            key: 1,
            a: Value::Integer(2),
        },
    );
    let before = (all_changes(&old), old.site_versions());
    for taken in [OLD, PEERS[0]] {
        let err = old.adopt_as_new_site(taken).unwrap_err();
        assert!(matches!(err, CrrError::SiteIdTaken(_)), "{err}");
        assert!(err.to_string().contains(&taken.to_hex()), "{err}");
    }
    assert_eq!((all_changes(&old), old.site_versions()), before);
}

#[test]
fn a_seeded_replica_can_be_seeded_again() {
    let mut old = replica(OLD);
    write(
        &mut old,
        &Op::Insert {
            t: true,
            key: 1,
            a: Value::Integer(1),
        },
    );
    let first = SiteId([0x01; 16]);
    let second = SiteId([0x02; 16]);
    old.adopt_as_new_site(first).unwrap();
    write(
        &mut old,
        &Op::Update {
            t: true,
            key: 1,
            a: Value::Integer(2),
        },
    );
    let adopted = old.adopt_as_new_site(second).unwrap();
    assert_eq!((adopted.old_site, adopted.old_db_version), (first, 1));
    assert_eq!(adopted.clocks_rewritten, 1);
    let versions: BTreeMap<SiteId, u64> = old.site_versions().into_iter().collect();
    assert_eq!(
        versions,
        BTreeMap::from([(OLD, 1), (first, 1), (second, 0)])
    );
    let sites: BTreeMap<String, SiteId> = old
        .changes_since(0, None)
        .unwrap()
        .into_iter()
        .map(|c| (c.cid, c.site_id))
        .collect();
    // `b` stays the old site's insert, `a` is the first seeded replica's
    // update.
    assert_eq!(
        sites,
        BTreeMap::from([("a".to_owned(), first), ("b".to_owned(), OLD)])
    );
}
