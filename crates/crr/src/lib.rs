//! `crr`: cr-sqlite's replication model, native on rusqlite.
//!
//! Tables made CRRs merge as CRDTs: per-column last-writer-wins with a causal
//! length per row for deletes, exactly as `shared/docs/crr-model.md` specifies.
//! Local writes are ordinary SQL run inside a [`CrrTx`]; their changes are
//! read back with [`CrrConn::changes_since`] and merged elsewhere with
//! [`CrrConn::apply_changes`]. This crate does no I/O besides SQLite.

mod affinity;
mod authorizer;
mod capture;
mod changes;
mod clock;
mod conn;
mod error;
mod fasthash;
mod merge;
pub mod migrate;
pub mod pk;
pub mod schema;
mod schema_rules;
mod site;
mod store;
mod value;
mod versions;

pub use changes::{Change, SENTINEL};
pub use conn::{CrrConn, CrrTx, CACHE_SIZE_PRAGMA};
pub use error::{CrrError, Result, SchemaViolation};
pub use merge::MergeReport;
pub use site::{hex_decode, hex_encode, ParseSiteIdError, SiteId};
pub use value::{merge_order, same_value, Value};
