//! `patina-node`: one node's storage — its two CRR databases (`regional.db`,
//! `global.db`), the write path (one writer thread per database, group
//! commit), a pool of read connections, schema files, and the seams the
//! rest of the daemon plugs into: [`Node::apply_remote`] / [`Node::serve`] /
//! [`Node::bookkeeping`] for replication, [`Node::subscribe_changesets`] for
//! local commits, [`CommitObserver`] for every commit. [`Node::backup`]
//! copies both databases while the node runs; [`restore`] prepares a new
//! node's data dir from such a copy.
//!
//! It never opens a socket and knows nothing of HTTP, JSON, membership or
//! subscriptions; only its writer threads write the database files.

mod backup;
mod bookstore;
mod changeset;
mod chunks;
mod classify;
mod collect;
mod datadir;
mod digest;
mod error;
mod held;
mod node;
mod pages;
mod reader;
mod regions_table;
mod remote;
mod restore;
mod schema_files;
mod statement;
mod writer;

pub use backup::{
    ActorManifest, BackupError, BackupManifest, BackupReport, DbManifest, BACKUP_FORMAT,
    MANIFEST_FILE,
};
pub use changeset::{unix_ms, Changeset, CommitObserver, Omitted, Origin, RowChange};
pub use chunks::{chunk_changes, wire_changes};
pub use collect::{CollectReport, CollectRequest, CollectionState};
pub use datadir::{lock as lock_data_dir, LOCK_FILE};
pub use digest::{
    BucketKeys, ColumnClock, ColumnState, Digest, DigestError, DigestRequest, DIGEST_BUCKETS,
    DIGEST_FORMAT,
};
pub use error::{NodeError, QueryError, TxError};
pub use held::{HeldVersions, Hold};
pub use node::{DroppedSchema, Node, NodeOptions};
pub use pages::LARGE_CHANGES;
pub use patina_crr::digest::{KeyState, TableDigest};
pub use patina_crr::migrate::Drops;
pub use patina_crr::{SiteId, Value};
pub use patina_wire::DbKind;
pub use reader::{QueryStream, RowEvent};
pub use regions_table::{RegionRecord, REGIONS_TABLE, ROLLUP_ERROR_CHARS_MAX};
pub use remote::{
    RemoteOutcome, HELD_BYTES_MAX, HELD_VERSIONS_MAX, PARTIAL_BYTES_MAX, PARTIAL_VERSIONS_MAX,
};
pub use restore::{restore, RestoreError, Restored, RestoredDb};
pub use statement::{PackedParams, Params, Statement, StatementRef, Statements};
pub use writer::{StatementResult, TxOutcome, WriteStats};
