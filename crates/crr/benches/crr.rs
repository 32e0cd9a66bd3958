//! crr benchmarks: capture overhead, bulk merge, steady-state merge,
//! tombstone collection, consistency digest.
//! Run: `cargo bench -p crr --bench crr`; numbers in docs/benchmarks.md.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use patina_crr::{Change, CrrConn};
use rusqlite::Connection;
use tempfile::TempDir;

const SCHEMA: &str =
    "CREATE TABLE bench(id TEXT PRIMARY KEY NOT NULL, a INTEGER, b TEXT, c REAL, d BLOB);";
const ROWS: usize = 100_000;

fn insert_rows(exec: &mut dyn FnMut(&str, &[&dyn rusqlite::ToSql]), start: usize, rows: usize) {
    for i in start..start + rows {
        let id = format!("machine-{i:08}");
        let b = format!("state-{}", i % 7);
        exec(
            "INSERT INTO bench (id, a, b, c, d) VALUES (?1, ?2, ?3, ?4, ?5)",
            &[
                &id,
                &(i as i64),
                &b,
                &(i as f64 * 0.5),
                &[1u8, 2, 3, 4].as_slice(),
            ],
        );
    }
}

fn plain_db(dir: &TempDir) -> Connection {
    let conn = Connection::open(dir.path().join("plain.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.pragma_update(None, "cache_size", patina_crr::CACHE_SIZE_PRAGMA)
        .unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    conn
}

fn crr_db(dir: &TempDir, name: &str) -> CrrConn {
    let mut conn = CrrConn::open(dir.path().join(name)).unwrap();
    conn.apply_schema(SCHEMA).unwrap();
    conn
}

fn crr_insert(conn: &mut CrrConn, start: usize, rows: usize) {
    let mut tx = conn.transaction().unwrap();
    insert_rows(
        &mut |sql, params| {
            tx.execute(sql, params).unwrap();
        },
        start,
        rows,
    );
    tx.commit().unwrap();
}

fn capture(c: &mut Criterion) {
    let mut g = c.benchmark_group("capture_100k_rows_one_tx");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("plain", |b| {
        b.iter_batched(
            || {
                let dir = TempDir::new().unwrap();
                let conn = plain_db(&dir);
                (dir, conn)
            },
            |(dir, mut conn)| {
                let tx = conn.transaction().unwrap();
                insert_rows(
                    &mut |sql, params| {
                        tx.prepare_cached(sql).unwrap().execute(params).unwrap();
                    },
                    0,
                    ROWS,
                );
                tx.commit().unwrap();
                (dir, conn)
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("crr", |b| {
        b.iter_batched(
            || {
                let dir = TempDir::new().unwrap();
                let conn = crr_db(&dir, "crr.db");
                (dir, conn)
            },
            |(dir, mut conn)| {
                crr_insert(&mut conn, 0, ROWS);
                (dir, conn)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn source_changes(rows: usize) -> Vec<Change> {
    let dir = TempDir::new().unwrap();
    let mut src = crr_db(&dir, "src.db");
    crr_insert(&mut src, 0, rows);
    src.changes_since(0, None).unwrap()
}

fn merge_bulk(c: &mut Criterion) {
    let mut g = c.benchmark_group("merge_400k_changes_into_empty");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(ROWS as u64 * 4));
    g.bench_function("apply", |b| {
        // Built here so a filtered-out bench costs nothing.
        let changes = source_changes(ROWS);
        assert_eq!(changes.len(), ROWS * 4);
        b.iter_batched(
            || {
                let dir = TempDir::new().unwrap();
                let conn = crr_db(&dir, "dst.db");
                (dir, conn)
            },
            |(dir, mut conn)| {
                conn.apply_changes(&changes).unwrap();
                (dir, conn)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn merge_steady(c: &mut Criterion) {
    const BIG: usize = 1_000_000;
    let mut g = c.benchmark_group("merge_steady_state_1m_rows");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(40_000));
    g.bench_function("40k_changes_2_cols_of_20k_rows", |b| {
        let dir = TempDir::new().unwrap();
        // A replica holding 1M rows, and a source that shares them.
        let mut dst = crr_db(&dir, "dst.db");
        crr_insert(&mut dst, 0, BIG);
        let base = dst.changes_since(0, None).unwrap();
        let mut src = crr_db(&dir, "src.db");
        for chunk in base.chunks(200_000) {
            src.apply_changes(chunk).unwrap();
        }
        drop(base);
        let mut round = 0i64;
        b.iter_batched(
            || {
                // 40k changes: two columns of every 50th row (20k rows, spread
                // over the whole table).
                round += 1;
                let since = src.db_version();
                let mut tx = src.transaction().unwrap();
                tx.execute(
                    "UPDATE bench SET a = a + ?1, b = 'round-' || ?1 WHERE rowid % 50 = 0",
                    [round],
                )
                .unwrap();
                tx.commit().unwrap();
                let changes = src.changes_of(src.site_id(), since + 1..=u64::MAX).unwrap();
                assert_eq!(changes.len(), 40_000);
                changes
            },
            |changes| dst.apply_changes(&changes).unwrap(),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// Collecting the tombstones of 20k deletes among 100k rows written in
/// 1,000-row transactions: every version is scanned (inserts included),
/// the tombstones removed. One pass of the replicator's budget (20,000
/// keys), and the whole backlog.
fn collect(c: &mut Criterion) {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("src.db");
    let site = {
        let mut conn = crr_db(&dir, "src.db");
        for batch in 0..100 {
            crr_insert(&mut conn, batch * 1000, 1000);
        }
        for batch in 0..20 {
            let mut tx = conn.transaction().unwrap();
            tx.execute(
                "DELETE FROM bench WHERE rowid % 5 = 0 AND rowid > ?1 AND rowid <= ?2",
                [batch * 5000, (batch + 1) * 5000],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        conn.connection()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        (conn.site_id(), conn.db_version())
    };
    let bounds = std::collections::BTreeMap::from([site]);
    let mut g = c.benchmark_group("collect_20k_tombstones_among_100k_rows");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    for (name, keys_max) in [("pass_of_20k_keys", 20_000), ("whole_backlog", u64::MAX)] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let copy = TempDir::new().unwrap();
                    std::fs::copy(&path, copy.path().join("c.db")).unwrap();
                    let conn = CrrConn::open(copy.path().join("c.db")).unwrap();
                    (copy, conn)
                },
                |(copy, mut conn)| {
                    let done = conn.collect_tombstones(&bounds, keys_max).unwrap();
                    assert!(done.examined > 0);
                    (copy, conn)
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// The digest of a 100k-row table (what `GET /v1/digest` computes per
/// table): every row and its clock read and hashed, on a read connection
/// as the API runs it.
fn digest(c: &mut Criterion) {
    let dir = TempDir::new().unwrap();
    {
        let mut conn = crr_db(&dir, "d.db");
        for batch in 0..100 {
            crr_insert(&mut conn, batch * 1000, 1000);
        }
    }
    let read = Connection::open(dir.path().join("d.db")).unwrap();
    let mut g = c.benchmark_group("digest_100k_rows");
    g.sample_size(10)
        .throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("table_digest", |b| {
        b.iter(|| {
            let d = patina_crr::digest::table_digest(&read, "main", "bench").unwrap();
            assert_eq!(d.rows, ROWS as u64);
        })
    });
    g.finish();
}

criterion_group!(benches, capture, merge_bulk, merge_steady, collect, digest);
criterion_main!(benches);
