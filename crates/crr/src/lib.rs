//! `patina-crr`: cr-sqlite's replication model, native on rusqlite. It must
//! never do I/O besides SQLite, and knows nothing of the network, HTTP or JSON.
//!
//! Tables made CRRs merge as CRDTs: per-column last-writer-wins with a causal
//! length per row for deletes, as cr-sqlite does it (`docs/crr.md`).
//! Local writes are ordinary SQL run inside a [`CrrTx`]; their changes are
//! read back with [`CrrConn::changes_since`] and merged elsewhere with
//! [`CrrConn::apply_changes`]. This crate does no I/O besides SQLite.
//!
//! ```
//! use patina_crr::CrrConn;
//!
//! let schema = "CREATE TABLE machines(id TEXT PRIMARY KEY NOT NULL, state TEXT);";
//! let (mut a, mut b) = (CrrConn::open_in_memory()?, CrrConn::open_in_memory()?);
//! a.apply_schema(schema)?;
//! b.apply_schema(schema)?;
//!
//! let mut tx = a.transaction()?;
//! tx.execute("INSERT INTO machines VALUES ('m1', 'started')", [])?;
//! assert_eq!(tx.commit()?, Some(1)); // a's first db_version
//!
//! // Ship a's changes to b (Patina does this over QUIC); merging is idempotent.
//! let changes = a.changes_since(0, Some(b.site_id()))?;
//! let report = b.apply_changes(&changes)?;
//! assert_eq!(report.won.len(), 1);
//! assert!(b.apply_changes(&changes)?.won.is_empty());
//!
//! let state: String = b
//!     .connection()
//!     .query_row("SELECT state FROM machines WHERE id = 'm1'", [], |r| r.get(0))?;
//! assert_eq!(state, "started");
//! # Ok::<(), patina_crr::CrrError>(())
//! ```

mod affinity;
mod authorizer;
mod capture;
mod changes;
mod clock;
mod collect;
mod conn;
pub mod digest;
mod drops;
mod error;
mod fasthash;
mod merge;
pub mod migrate;
pub mod pk;
pub mod schema;
mod schema_rules;
mod seed;
pub mod sql_text;
mod store;
mod value;
mod versions;

pub use changes::{Change, VersionSeqs};
pub use collect::Collected;
pub use conn::{Committed, CrrConn, CrrTx, CACHE_SIZE_PRAGMA};
pub use drops::Dropped;
pub use error::{CrrError, Result, SchemaViolation};
pub use merge::MergeReport;
pub use patina_value::{ParseSiteIdError, SiteId, Value};
pub use schema::SENTINEL;
pub use seed::Adopted;
pub use value::{merge_order, same_value};
