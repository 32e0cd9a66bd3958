//! The errors `crr` returns. Each says what was wrong and, where it can,
//! what to do about it.

use std::fmt;

use crate::pk::PkError;

/// One broken CRR schema rule (crr-model.md 11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    pub table: String,
    /// The offending column, when the rule is about one.
    pub column: Option<String>,
    /// What the rule is, in words an operator can act on.
    pub rule: String,
    /// The change drops a table or column: refused unless the schema is
    /// applied with drops allowed ([`crate::migrate::Drops::Allowed`]),
    /// which deletes its data on this replica. Every other rule refuses
    /// in either mode.
    pub drops_data: bool,
}

impl fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(c) => write!(f, "table {:?}, column {:?}: {}", self.table, c, self.rule),
            None => write!(f, "table {:?}: {}", self.table, self.rule),
        }
    }
}

fn list(violations: &[SchemaViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, thiserror::Error)]
pub enum CrrError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),

    /// Nothing was changed: a schema is refused whole.
    #[error("schema refused: {}", list(.0))]
    Schema(Vec<SchemaViolation>),

    #[error("table {0:?} is not a CRR table (declare it in a schema file first)")]
    NotCrr(String),

    /// A change of a batch passed to `apply_changes` is malformed. Nothing of
    /// the batch was applied.
    #[error("change #{index} (table {table:?}, column {cid:?}): {reason}; nothing of this batch was applied")]
    BadChange {
        index: usize,
        table: String,
        cid: String,
        reason: String,
    },

    /// This database's constraints (a CHECK, NOT NULL, a value too big)
    /// refuse a row of a batch passed to `apply_changes`: a schema that
    /// differs from the writer's. Nothing of the batch was applied.
    #[error("change #{index} (table {table:?}): this database's constraints refuse the row: {reason}; nothing of this batch was applied")]
    RowRefused {
        index: usize,
        table: String,
        reason: String,
    },

    /// A statement of a CRR transaction failed; the transaction can only be
    /// rolled back (partial statement effects would escape capture).
    #[error("a statement of this transaction failed earlier; roll it back")]
    TransactionPoisoned,

    /// Only data statements run inside a CRR transaction: transaction
    /// control, DDL and PRAGMAs would change what capture recorded or sees.
    #[error("{0} is not allowed in a transaction: send SELECT/INSERT/UPDATE/DELETE statements only (schema changes go through schema files)")]
    StatementNotAllowed(String),

    /// A client statement writes one of Patina's own tables.
    #[error("{0:?} is Patina's own table: clients may read it (SELECT), only Patina writes it")]
    InternalTable(String),

    /// A statement starting with a word that begins no SQL statement: a
    /// typo, said as SQLite would say it rather than as a refusal.
    #[error("near {0:?}: syntax error (a statement in a transaction starts with SELECT, INSERT, UPDATE, DELETE, REPLACE or WITH)")]
    NotAStatement(String),

    /// A new site id that this database already knows (its own, or a
    /// peer's): two replicas would then write under one id.
    #[error("{0}")]
    SiteIdTaken(String),

    #[error("bad primary key: {0}")]
    Pk(#[from] PkError),

    #[error("{0}")]
    Corrupt(String),
}

impl CrrError {
    /// Whether this refuses a schema (in part) because it drops a table or
    /// column: applying it with drops allowed would get past that part.
    pub fn drops_data(&self) -> bool {
        matches!(self, CrrError::Schema(v) if v.iter().any(|v| v.drops_data))
    }
}

pub type Result<T, E = CrrError> = std::result::Result<T, E>;
