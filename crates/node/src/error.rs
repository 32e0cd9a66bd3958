//! Errors a node reports. Each says what was wrong and what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("actor id file {path} is corrupt ({reason}); restore it from a backup or remove the data dir to start as a new node")]
    ActorId { path: PathBuf, reason: String },
    #[error("schema path {path}: {source} (check db.schema_paths / db.global_schema_paths)")]
    SchemaPath {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{db} schema refused, nothing was changed: {source}")]
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
    #[error("the node is shutting down")]
    ShuttingDown,
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
