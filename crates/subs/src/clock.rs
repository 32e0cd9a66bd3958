//! Time limits for a worker's queries. SQLite's progress handler
//! interrupts a query that runs past its deadline, so one runaway
//! subscription (`WITH RECURSIVE` without end, a cross join of big
//! tables) cannot hold its worker — and every subscription on it — for
//! good. The limit is `api.query_timeout`, shared by all workers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// VM steps between deadline checks (as the node's read pool).
const CHECK_STEPS: i32 = 10_000;
const NO_DEADLINE: u64 = u64::MAX;

/// The limit every worker applies, in milliseconds.
#[derive(Debug)]
pub(crate) struct QueryLimit(AtomicU64);

impl QueryLimit {
    pub fn new(limit: Duration) -> QueryLimit {
        QueryLimit(AtomicU64::new(limit.as_millis() as u64))
    }

    pub fn set(&self, limit: Duration) {
        self.0.store(limit.as_millis() as u64, Ordering::Relaxed);
    }

    fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

/// One worker's deadline for the query it runs.
pub(crate) struct QueryClock {
    base: Instant,
    /// Microseconds since `base`; [`NO_DEADLINE`] between queries.
    deadline_us: AtomicU64,
    limit: Arc<QueryLimit>,
}

impl QueryClock {
    pub fn new(limit: Arc<QueryLimit>) -> Arc<QueryClock> {
        Arc::new(QueryClock {
            base: Instant::now(),
            deadline_us: AtomicU64::new(NO_DEADLINE),
            limit,
        })
    }

    /// Has `conn`'s queries interrupted past this clock's deadline.
    pub fn watch(self: &Arc<Self>, conn: &mut Connection) {
        let watched = Arc::clone(self);
        if let Err(e) = conn.progress_handler(CHECK_STEPS, Some(move || watched.expired())) {
            tracing::warn!(error = %e, "subscription queries run without a time limit");
        }
    }

    /// Runs `f` (which queries) under the limit.
    pub fn limited<T>(&self, f: impl FnOnce() -> T) -> T {
        let deadline = self.base.elapsed() + self.limit.get();
        self.deadline_us
            .store(deadline.as_micros() as u64, Ordering::Relaxed);
        let out = f();
        self.deadline_us.store(NO_DEADLINE, Ordering::Relaxed);
        out
    }

    fn expired(&self) -> bool {
        let deadline = self.deadline_us.load(Ordering::Relaxed);
        deadline != NO_DEADLINE && self.base.elapsed().as_micros() as u64 >= deadline
    }
}
