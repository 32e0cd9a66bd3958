//! Reads: a pool of read-only connections on `regional.db` with `global.db`
//! attached as `global`. WAL lets them read while the writers write.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use patina_crr::Value;
use rusqlite::functions::FunctionFlags;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::{NodeError, QueryError};
use crate::statement::Statement;
use crate::with_params;

/// Rows buffered between a query's thread and its HTTP stream: a slow
/// reader holds at most this many rows in memory, then the query waits.
const ROWS_BUFFERED_MAX: usize = 256;
/// A reader that takes no row for this long loses its query: it would
/// otherwise hold one of the few read connections for as long as it likes.
const SLOW_READER_TIMEOUT: Duration = Duration::from_secs(30);
/// SQLite VM steps between checks whether a running query must stop
/// (client gone, time limit, shutdown): frequent enough to stop within
/// a millisecond, rare enough to cost nothing measurable.
const INTERRUPT_CHECK_STEPS: i32 = 10_000;

/// Pragmas a query may run: they read the schema or the database's state
/// and change nothing, whatever their argument.
const READ_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "database_list",
    "collation_list",
    "function_list",
    "module_list",
    "pragma_list",
    "compile_options",
    "quick_check",
    "integrity_check",
];
/// Pragmas that read a setting without an argument and set it with one.
const SETTING_PRAGMAS: &[&str] = &[
    "data_version",
    "freelist_count",
    "page_count",
    "page_size",
    "schema_version",
    "user_version",
    "application_id",
    "encoding",
    "auto_vacuum",
];

/// One line of a query's result after its columns.
#[derive(Debug, Clone, PartialEq)]
pub enum RowEvent {
    Row(Vec<Value>),
    /// SQLite failed mid-way; no row follows.
    Error(String),
}

/// A query that prepared fine: its columns, then its rows as they come.
pub struct QueryStream {
    pub columns: Vec<String>,
    pub rows: mpsc::Receiver<RowEvent>,
}

pub(crate) struct ReadPool {
    /// Each idle connection with the schema generation its statement cache
    /// was prepared under. Connections are opened as concurrent reads need
    /// them (at most `permits`' size) and kept: an idle node holds one, not
    /// eight, each with both schemas parsed and pages cached (issue 16).
    idle: Mutex<Vec<(Connection, u64)>>,
    paths: (std::path::PathBuf, std::path::PathBuf),
    /// Raised by each schema reload: a connection from before flushes its
    /// cached statements, whose column lists (`SELECT *`) were the old
    /// schema's — SQLite re-prepares a stale statement when it runs, but
    /// its columns were read before that.
    schema_generation: std::sync::atomic::AtomicU64,
    permits: Arc<Semaphore>,
    /// Set when the node stops: running queries are interrupted.
    closing: Arc<AtomicBool>,
}

thread_local! {
    /// What the authorizer refused in the statement this thread prepared
    /// last: prepare runs on the calling thread, so the client's error can
    /// say what was refused instead of SQLite's "not authorized".
    static REFUSED: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

impl ReadPool {
    pub fn open(regional: &Path, global: &Path, size: usize) -> Result<ReadPool, NodeError> {
        // One at start: a database a reader cannot open stops the start.
        let first = open_pooled(regional, global).map_err(|e| NodeError::Database {
            db: "read connection",
            source: e.into(),
        })?;
        Ok(ReadPool {
            idle: Mutex::new(vec![(first, 0)]),
            paths: (regional.to_owned(), global.to_owned()),
            schema_generation: std::sync::atomic::AtomicU64::new(0),
            permits: Arc::new(Semaphore::new(size)),
            closing: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Set once the node stops: long reads outside the pool (digests)
    /// watch it too.
    pub fn closing(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.closing)
    }

    /// Interrupts every running query and refuses new ones.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.permits.close();
    }

    /// Runs `f` on a read connection on a blocking thread.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Connection) -> T + Send + 'static,
    ) -> Result<T, QueryError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| QueryError::ShuttingDown)?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut taken = pool.take()?;
            let out = f(&mut taken.0);
            {
                let (conn, generation) = taken;
                // A connection goes back only outside any transaction: one
                // left open would pin its snapshot for every later query
                // (and the WAL behind it). The authorizer refuses BEGIN;
                // this is the second line.
                if !conn.is_autocommit() {
                    tracing::warn!("a read connection came back inside a transaction; rolled back");
                    let _ = conn.execute_batch("ROLLBACK");
                }
                pool.give_back(conn, generation);
            }
            drop(permit);
            Ok(out)
        })
        .await
        .map_err(|_| QueryError::ShuttingDown)?
    }

    /// Prepares `st` (one read-only statement, else an error), then streams
    /// its rows. The query is interrupted, with an error event, when it
    /// runs longer than `limit`, when the stream's receiver goes away and
    /// when the node stops.
    pub async fn query(
        self: &Arc<Self>,
        st: Statement,
        limit: Duration,
    ) -> Result<QueryStream, QueryError> {
        let (prepared, columns) = oneshot::channel();
        let (rows_tx, rows) = mpsc::channel(ROWS_BUFFERED_MAX);
        let pool = Arc::clone(self);
        let closing = Arc::clone(&self.closing);
        tokio::spawn(async move {
            let _ = pool
                .run(move |conn| {
                    let stop = Stop {
                        deadline: Instant::now() + limit,
                        limit,
                        closing,
                        rows: rows_tx.clone(),
                    };
                    let watched = AssertUnwindSafe(stop.clone());
                    let watch = conn.progress_handler(
                        INTERRUPT_CHECK_STEPS,
                        Some(move || watched.0.reason().is_some()),
                    );
                    if let Err(e) = watch {
                        // Runs unwatched: the slow-reader timeout still ends it.
                        tracing::warn!(error = %e, "cannot watch a query for interruption");
                    }
                    stream_rows(conn, &st, &stop, prepared, rows_tx);
                    let _ = conn.progress_handler(0, None::<fn() -> bool>);
                })
                .await;
        });
        let columns = columns.await.map_err(|_| QueryError::ShuttingDown)??;
        Ok(QueryStream { columns, rows })
    }

    /// An idle connection, its cache current, and the generation it is
    /// current for (to stamp it with when it comes back).
    /// An idle connection, or a new one when all are busy (the permits
    /// bound how many exist).
    fn take(&self) -> Result<(Connection, u64), QueryError> {
        let now = self.schema_generation.load(Ordering::Acquire);
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let Some((conn, generation)) = idle else {
            let conn = open_pooled(&self.paths.0, &self.paths.1)
                .map_err(|e| QueryError::Prepare(format!("cannot open a read connection: {e}")))?;
            return Ok((conn, now));
        };
        if generation != now {
            conn.flush_prepared_statement_cache();
            // Preparing uses the connection's copy of the schema, which
            // SQLite refreshes only when a statement runs against a changed
            // one: run one on each database first, so that the next
            // `SELECT *` is prepared with the new columns.
            let refreshed = conn.execute_batch(
                "SELECT 1 FROM main.sqlite_schema LIMIT 1; SELECT 1 FROM global.sqlite_schema LIMIT 1;",
            );
            if let Err(e) = refreshed {
                tracing::warn!(error = %e, "refreshing a read connection's schema failed");
            }
        }
        Ok((conn, now))
    }

    /// The schema changed: statements cached before are flushed before
    /// their connection's next query.
    pub fn schema_changed(&self) {
        self.schema_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Back to the pool, stamped with the generation it was taken at: a
    /// reload while it ran flushes it before its next query.
    fn give_back(&self, conn: Connection, generation: u64) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((conn, generation));
    }
}

/// A read connection of the pool: [`open_reader`] plus the authorizer
/// that refuses anything but reads.
fn open_pooled(regional: &Path, global: &Path) -> rusqlite::Result<Connection> {
    let mut conn = open_reader(regional, global)?;
    only_reads(&mut conn)?;
    Ok(conn)
}

pub(crate) fn open_reader(regional: &Path, global: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        regional,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // No value a replicated row can hold is larger; a computed one
    // (`randomblob(1e9)`) would be held in memory whole — by a
    // subscription, for as long as it exists.
    conn.set_limit(
        rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH,
        patina_wire::ROW_BYTES_MAX as i32,
    )?;
    conn.execute("ATTACH DATABASE ?1 AS global", [global.to_string_lossy()])?;
    // Writes go through the writers; this connection refuses them. Capture
    // triggers name crr_capture: defined (failing) so that a write prepares
    // and is refused as not read-only rather than as an unknown function.
    conn.pragma_update(None, "query_only", true)?;
    conn.create_scalar_function("crr_capture", -1, FunctionFlags::SQLITE_UTF8, |_| {
        Err::<i64, _>(rusqlite::Error::UserFunctionError(
            "read connections do not write".into(),
        ))
    })?;
    conn.pragma_update(None, "cache_size", -8 * 1024)?;
    Ok(conn)
}

/// Installs the pool's authorizer: a query is one statement that reads.
/// `query_only` already refuses writes; this also refuses what SQLite
/// counts as read-only but changes the connection — transaction control
/// (a BEGIN would pin the pooled connection's snapshot for every later
/// query), ATTACH/DETACH, pragmas that set something.
fn only_reads(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        let refused = match ctx.action {
            AuthAction::Pragma {
                pragma_name,
                pragma_value,
            } => {
                let name = pragma_name.to_ascii_lowercase();
                let reads = READ_PRAGMAS.contains(&name.as_str())
                    || (pragma_value.is_none() && SETTING_PRAGMAS.contains(&name.as_str()));
                (!reads).then(|| {
                    format!("PRAGMA {pragma_name} (it sets something, or is not a known read)")
                })
            }
            AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
                Some("transaction control (each query runs alone, in its own snapshot)".to_owned())
            }
            AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
                Some("ATTACH/DETACH (the node's databases are attached already)".to_owned())
            }
            // Writes prepare, and the read-only check refuses them with
            // the message pointing at /v1/transactions.
            _ => None,
        };
        match refused {
            None => Authorization::Allow,
            Some(what) => {
                REFUSED.with(|r| *r.borrow_mut() = Some(what));
                Authorization::Deny
            }
        }
    }))
}

/// When a running query must stop, and why.
#[derive(Clone)]
struct Stop {
    deadline: Instant,
    limit: Duration,
    closing: Arc<AtomicBool>,
    rows: mpsc::Sender<RowEvent>,
}

impl Stop {
    fn reason(&self) -> Option<String> {
        if self.closing.load(Ordering::Relaxed) {
            Some("query interrupted: the node is shutting down".to_owned())
        } else if self.rows.is_closed() {
            Some("query interrupted: its client went away".to_owned())
        } else if Instant::now() >= self.deadline {
            Some(format!(
                "query interrupted after {} s (api.query_timeout): narrow it (WHERE, LIMIT) or raise the limit",
                self.limit.as_secs_f64()
            ))
        } else {
            None
        }
    }
}

fn stream_rows(
    conn: &Connection,
    st: &Statement,
    stop: &Stop,
    prepared: oneshot::Sender<Result<Vec<String>, QueryError>>,
    rows: mpsc::Sender<RowEvent>,
) {
    REFUSED.with(|r| r.borrow_mut().take());
    let mut stmt = match conn.prepare_cached(&st.sql) {
        Ok(stmt) => stmt,
        Err(e) => {
            let error = match (REFUSED.with(|r| r.borrow_mut().take()), e) {
                (Some(what), _) => QueryError::NotAQuery(what),
                (None, rusqlite::Error::MultipleStatement) => QueryError::NotAQuery(
                    "more than one statement: send one per request".to_owned(),
                ),
                (None, e) => QueryError::Prepare(e.to_string()),
            };
            let _ = prepared.send(Err(error));
            return;
        }
    };
    if !stmt.readonly() {
        // SQLite counts some pragmas that only report a setting as writes
        // (`PRAGMA journal_mode` may switch modes): say so, rather than
        // point at /v1/transactions, which refuses pragmas too.
        let pragma = st
            .sql
            .trim_start()
            .get(..6)
            .is_some_and(|w| w.eq_ignore_ascii_case("pragma"));
        let error = if pragma {
            QueryError::NotAQuery(
                "this PRAGMA can change the database (SQLite does not count it as a read)".into(),
            )
        } else {
            QueryError::NotReadOnly
        };
        let _ = prepared.send(Err(error));
        return;
    }
    let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    let width = columns.len();
    let mut query = match with_params!(st, |p| stmt.query(p)) {
        Ok(q) => q,
        Err(e) => {
            let _ = prepared.send(Err(QueryError::Prepare(e.to_string())));
            return;
        }
    };
    if prepared.send(Ok(columns)).is_err() {
        return;
    }
    // This runs on a blocking-pool thread, where waiting on the runtime is allowed.
    let runtime = tokio::runtime::Handle::current();
    loop {
        let event = match query.next() {
            Ok(None) => return,
            Ok(Some(row)) => (0..width)
                .map(|i| row.get::<_, Value>(i))
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_or_else(|e| RowEvent::Error(e.to_string()), RowEvent::Row),
            Err(e) => RowEvent::Error(stop.reason().unwrap_or_else(|| e.to_string())),
        };
        let last = matches!(event, RowEvent::Error(_));
        if !last && stop.deadline <= Instant::now() {
            let _ = rows.try_send(RowEvent::Error(stop.reason().unwrap_or_default()));
            return;
        }
        let wait = SLOW_READER_TIMEOUT.min(stop.deadline.saturating_duration_since(Instant::now()));
        match runtime.block_on(rows.send_timeout(event, wait)) {
            Ok(()) if !last => {}
            Ok(()) | Err(SendTimeoutError::Closed(_)) => return,
            Err(SendTimeoutError::Timeout(_)) => {
                tracing::warn!(sql = %st.sql, "a query's reader took no row for {SLOW_READER_TIMEOUT:?}; query stopped");
                return;
            }
        }
    }
}
