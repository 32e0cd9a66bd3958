//! The buffer bounds of remote changes, driven past their limits (shrunk
//! for the test) by a peer's chunks, with an honest version applying after.

use std::sync::Arc;

use patina_crr::CrrConn;
use patina_wire::{ChangeChunk, DbKind};

use super::*;

const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, v TEXT);";
const SCHEMA_V2: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, v TEXT, w TEXT);";

/// A peer's database: its transactions come out as chunks.
struct Peer(CrrConn);

impl Peer {
    fn new(schema: &str) -> Peer {
        let mut conn = CrrConn::open_in_memory().unwrap();
        conn.apply_schema(schema).unwrap();
        Peer(conn)
    }

    /// One transaction of `sql` statements, as its chunks.
    fn write(&mut self, sql: &[String]) -> Vec<Arc<ChangeChunk>> {
        let mut tx = self.0.transaction().unwrap();
        for s in sql {
            tx.execute(s, []).unwrap();
        }
        let (version, changes) = tx.commit_changes().unwrap().unwrap();
        patina_wire::chunk_changes(
            DbKind::Regional,
            self.0.site_id(),
            version,
            0,
            chunks::wire_changes(&changes),
        )
        .into_iter()
        .map(Arc::new)
        .collect()
    }
}

fn replica(schema: &str, limits: BufferLimits) -> (CrrConn, Replica) {
    let mut conn = CrrConn::open_in_memory().unwrap();
    conn.apply_schema(schema).unwrap();
    let mut replica = Replica::open(&conn, DbKind::Regional).unwrap();
    replica.limits = limits;
    (conn, replica)
}

fn apply_all(
    conn: &mut CrrConn,
    replica: &mut Replica,
    chunks: &[Arc<ChangeChunk>],
) -> RemoteOutcome {
    apply(conn, replica, chunks, &|_| {})
}

fn big_insert(first: i64, rows: i64) -> Vec<String> {
    (first..first + rows)
        .map(|i| format!("INSERT INTO t VALUES ({i}, '{}')", "x".repeat(1000)))
        .collect()
}

#[test]
fn incomplete_transactions_are_bounded_in_bytes() {
    let limits = BufferLimits {
        partial_bytes: 300_000,
        ..BufferLimits::default()
    };
    let (mut conn, mut replica) = replica(SCHEMA, limits);
    let mut hostile = Peer::new(SCHEMA);
    // Each transaction ~200 KB in several chunks; only the first chunk of
    // each ever arrives.
    let mut refused = 0;
    for n in 0..5 {
        let chunks = hostile.write(&big_insert(n * 1000, 200));
        assert!(chunks.len() > 2);
        let outcome = apply_all(&mut conn, &mut replica, &chunks[..1]);
        refused += outcome.refused_partials_full;
    }
    assert!(refused > 0, "the starts of 5 big transactions all buffered");
    assert!(replica.buffered.partial_total <= limits.partial_bytes);
    // An honest peer's small transaction still applies.
    let mut honest = Peer::new(SCHEMA);
    let chunks = honest.write(&["INSERT INTO t VALUES (-1, 'ok')".to_owned()]);
    let outcome = apply_all(&mut conn, &mut replica, &chunks);
    assert_eq!(outcome.versions_applied, 1);
}

#[test]
fn held_versions_are_bounded_in_count_and_bytes() {
    for limits in [
        BufferLimits {
            held_versions: 3,
            ..BufferLimits::default()
        },
        BufferLimits {
            held_bytes: 3 * 40,
            ..BufferLimits::default()
        },
    ] {
        let (mut conn, mut replica) = replica(SCHEMA, limits);
        // A peer on a newer schema: every insert names `w`, which this
        // replica lacks.
        let mut newer = Peer::new(SCHEMA_V2);
        let mut chunks = Vec::new();
        for i in 0..6 {
            chunks.extend(newer.write(&[format!("INSERT INTO t VALUES ({i}, 'v', 'w')")]));
        }
        let outcome = apply_all(&mut conn, &mut replica, &chunks);
        assert!(outcome.refused_held_full > 0, "{limits:?}: {outcome:?}");
        assert!(replica.held.len() <= 3, "{limits:?}");
        assert!(replica.buffered.held_total <= limits.held_bytes);
        // What the schema has merged for every version, recorded or not.
        let rows: i64 = conn
            .connection()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 6);
        let recorded = (1..=6)
            .filter(|v| {
                replica
                    .bookie
                    .holds(DbKind::Regional, newer.0.site_id(), *v)
            })
            .count();
        assert_eq!(recorded, replica.held.len(), "the others stay missing");
        let mut honest = Peer::new(SCHEMA);
        let chunks = honest.write(&["INSERT INTO t VALUES (-1, 'ok')".to_owned()]);
        assert_eq!(
            apply_all(&mut conn, &mut replica, &chunks).versions_applied,
            1
        );
    }
}
