//! Errors a node reports. Each says what was wrong and what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {path} is in use by another patina process (an agent, or `patina db`): two writers would give different changes the same versions; stop the other one first")]
    Locked { path: PathBuf },
    #[error("actor id file {path} is corrupt ({reason}); restore it from a backup or remove the data dir to start as a new node")]
    ActorId { path: PathBuf, reason: String },
    #[error("schema path {path}: {source} (check db.schema_paths / db.global_schema_paths)")]
    SchemaPath {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{db} schema refused, nothing was changed: {source}{}", drop_hint(.source))]
    Schema {
        db: &'static str,
        source: patina_crr::CrrError,
    },
    #[error("{db}: {source}")]
    Database {
        db: &'static str,
        source: patina_crr::CrrError,
    },
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// What to do when a schema is refused because it drops something.
fn drop_hint(source: &patina_crr::CrrError) -> &'static str {
    if source.drops_data() {
        ". A removal deletes that data on this node: to drop it, reload with \
         `patina reload --allow-destructive` (POST /v1/reload {\"allow_destructive\":true}), \
         or set db.allow_destructive_schema = true in the config file for the agent's next start or SIGHUP (read again at each); \
         otherwise put it back in the schema files"
    } else {
        ""
    }
}

/// Why a transaction was not committed. Nothing of it was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("at least 1 statement is required")]
    Empty,
    #[error("a transaction writes regional tables or global tables, never both (SQLite cannot commit two database files atomically): send them as two transactions")]
    MixedDatabases,
    /// Statement `index` (0-based) failed.
    #[error("{message}")]
    Statement { index: usize, message: String },
    /// SQLite found no room to write (SQLITE_FULL: the filesystem of the
    /// data dir is full). The transaction was rolled back whole.
    #[error("{db}.db: the disk holding the data dir is full, so nothing of this transaction was written; free space on that filesystem and retry (the node resumes writing by itself once there is room; reads and replication to peers go on meanwhile)")]
    StorageFull { db: &'static str },
    /// The database missed deletes whose tombstones peers collected: its
    /// rows may hold what the cluster deleted, so writes are refused until
    /// the node is re-seeded (`reason` says how).
    #[error("{db}.db refuses writes: {reason}")]
    Stale { db: &'static str, reason: String },
    /// The node is back after an absence longer than half the tombstone
    /// retention: writes wait until it has caught up with a peer (`reason`
    /// says so); another node can take them meanwhile.
    #[error("{db}.db refuses writes for now: {reason}")]
    Returning { db: &'static str, reason: String },
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// Whether SQLite failed for want of disk space (SQLITE_FULL: `write(2)`
/// answered ENOSPC or EDQUOT, or `max_page_count` was reached).
pub(crate) fn is_storage_full(e: &patina_crr::CrrError) -> bool {
    matches!(
        e,
        patina_crr::CrrError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
            if f.code == rusqlite::ErrorCode::DiskFull
    )
}

/// Why a query could not start (before any row was sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Prepare(String),
    #[error("only read-only statements are allowed here: use /v1/transactions to write")]
    NotReadOnly,
    /// A statement SQLite counts as read-only that a query may not run.
    #[error("a query is one SELECT (or a pragma that reads); refused: {0}")]
    NotAQuery(String),
    #[error("the node is shutting down")]
    ShuttingDown,
}
