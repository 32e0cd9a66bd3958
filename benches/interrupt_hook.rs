//! What the read pool's interrupt hook costs a query: SQLite's progress
//! handler, called every 10,000 VM steps, checking whether the query must
//! stop (client gone, `api.query_timeout`, shutdown). Alternates rounds
//! with and without the hook on one connection, for the query shapes users
//! run: a point lookup by key, a filter on a non-key column, and an
//! aggregate over the whole table. Prints the median time per query of
//! each side and their ratio.
//!
//!   cargo bench --bench interrupt_hook      # PATINA_BENCH_ROUNDS (default 15)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

const ROWS: i64 = 100_000;
/// The pool's check interval (crates/node/src/reader.rs).
const CHECK_STEPS: i32 = 10_000;

fn main() {
    let rounds: usize = std::env::var("PATINA_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let mut conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(
        "CREATE TABLE bench(id INTEGER PRIMARY KEY NOT NULL, app TEXT, state TEXT, n INTEGER);",
    )
    .unwrap();
    conn.execute_batch("BEGIN").unwrap();
    {
        let mut insert = conn
            .prepare("INSERT INTO bench VALUES (?1, 'app' || (?1 % 100), 'started', ?1)")
            .unwrap();
        for id in 0..ROWS {
            insert.execute([id]).unwrap();
        }
    }
    conn.execute_batch("COMMIT").unwrap();
    let shapes: [(&str, &str, usize); 3] = [
        (
            "point lookup by key",
            "SELECT * FROM bench WHERE id = ?1",
            20_000,
        ),
        (
            "filter on a non-key column",
            "SELECT id, state FROM bench WHERE app = 'app' || (?1 % 100)",
            20,
        ),
        (
            "aggregate over the table",
            "SELECT count(*), sum(n) FROM bench WHERE ?1 >= 0",
            20,
        ),
    ];
    println!("| query | without the hook | with the hook | ratio |");
    println!("|---|---|---|---|");
    for (name, sql, per_round) in shapes {
        let mut without = Vec::new();
        let mut with = Vec::new();
        for _ in 0..rounds {
            for hooked in [false, true] {
                let stop = Arc::new(AtomicBool::new(false));
                if hooked {
                    let watched = Arc::clone(&stop);
                    let started = Instant::now();
                    let limit = Duration::from_secs(30);
                    // What the pool's handler does: a flag and a clock.
                    conn.progress_handler(
                        CHECK_STEPS,
                        Some(move || watched.load(Ordering::Relaxed) || started.elapsed() > limit),
                    )
                    .unwrap();
                } else {
                    conn.progress_handler(0, None::<fn() -> bool>).unwrap();
                }
                let mut stmt = conn.prepare_cached(sql).unwrap();
                let t = Instant::now();
                for i in 0..per_round {
                    let mut rows = stmt.query([i as i64]).unwrap();
                    while rows.next().unwrap().is_some() {}
                }
                let per_query = t.elapsed() / per_round as u32;
                if hooked {
                    with.push(per_query);
                } else {
                    without.push(per_query);
                }
            }
        }
        let (a, b) = (median(&mut without), median(&mut with));
        println!(
            "| {name} | {a:?} | {b:?} | {:.3} |",
            b.as_secs_f64() / a.as_secs_f64()
        );
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}
