//! Reads: a pool of read-only connections on `regional.db` with `global.db`
//! attached as `global`. WAL lets them read while the writers write.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use patina_crr::Value;
use rusqlite::functions::FunctionFlags;
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
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReadPool {
    pub fn open(regional: &Path, global: &Path, size: usize) -> Result<ReadPool, NodeError> {
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size {
            idle.push(
                open_reader(regional, global).map_err(|e| NodeError::Database {
                    db: "read connection",
                    source: e.into(),
                })?,
            );
        }
        Ok(ReadPool {
            idle: Mutex::new(idle),
            permits: Arc::new(Semaphore::new(size)),
        })
    }

    /// Runs `f` on a read connection on a blocking thread.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> T + Send + 'static,
    ) -> Result<T, QueryError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| QueryError::ShuttingDown)?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = pool.take();
            let out = conn.as_ref().map(f);
            if let Some(conn) = conn {
                pool.give_back(conn);
            }
            drop(permit);
            out.ok_or(QueryError::ShuttingDown)
        })
        .await
        .map_err(|_| QueryError::ShuttingDown)?
    }

    /// Prepares `st` (read-only, else an error), then streams its rows.
    pub async fn query(self: &Arc<Self>, st: Statement) -> Result<QueryStream, QueryError> {
        let (prepared, columns) = oneshot::channel();
        let (rows_tx, rows) = mpsc::channel(ROWS_BUFFERED_MAX);
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            let _ = pool
                .run(move |conn| stream_rows(conn, &st, prepared, rows_tx))
                .await;
        });
        let columns = columns.await.map_err(|_| QueryError::ShuttingDown)??;
        Ok(QueryStream { columns, rows })
    }

    fn take(&self) -> Option<Connection> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn give_back(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
    }
}

pub(crate) fn open_reader(regional: &Path, global: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        regional,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
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

fn stream_rows(
    conn: &Connection,
    st: &Statement,
    prepared: oneshot::Sender<Result<Vec<String>, QueryError>>,
    rows: mpsc::Sender<RowEvent>,
) {
    let mut stmt = match conn.prepare_cached(&st.sql) {
        Ok(stmt) => stmt,
        Err(e) => {
            let _ = prepared.send(Err(QueryError::Prepare(e.to_string())));
            return;
        }
    };
    if !stmt.readonly() {
        let _ = prepared.send(Err(QueryError::NotReadOnly));
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
            Err(e) => RowEvent::Error(e.to_string()),
        };
        let last = matches!(event, RowEvent::Error(_));
        match runtime.block_on(rows.send_timeout(event, SLOW_READER_TIMEOUT)) {
            Ok(()) if !last => {}
            Ok(()) | Err(SendTimeoutError::Closed(_)) => return,
            Err(SendTimeoutError::Timeout(_)) => {
                tracing::warn!(sql = %st.sql, "a query's reader took no row for {SLOW_READER_TIMEOUT:?}; query stopped");
                return;
            }
        }
    }
}
