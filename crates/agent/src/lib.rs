//! `agent`: one Patina node — its two CRR databases (`regional.db`,
//! `global.db`), the write path (one writer thread per database), a pool of
//! read connections, schema files, subscriptions — and its presence in a
//! cluster ([`ClusterRuntime`]): QUIC [`transport`], SWIM [`membership`],
//! and the [`replicator`] that moves changes, deciding with the sans-I/O
//! values of [`cluster`]. Committed changesets leave through
//! [`Node::subscribe_changesets`]; remote chunks enter through
//! [`Node::apply_remote`] on the same writer threads.

mod bookstore;
mod classify;
pub mod cluster;
mod datadir;
mod error;
pub mod membership;
mod node;
mod reader;
mod remote;
pub mod replicator;
mod runtime;
mod schema_files;
mod statement;
mod subs;
pub mod transport;
mod writer;

pub use crr::{SiteId, Value};
pub use error::{AgentError, QueryError, TxError};
pub use node::{Changeset, Db, Node, NodeOptions, RowChange};
pub use reader::{QueryStream, RowEvent};
pub use remote::{RemoteOutcome, PARTIAL_VERSIONS_MAX};
pub use runtime::{ClusterCounters, ClusterMetric, ClusterOptions, ClusterRuntime};
pub use statement::{Params, Statement};
pub use subs::{
    new_id as new_subscription_id, Attach, ChangeEvent, ChangeKind, SubError, SubItem, SubStream,
};
pub use writer::{StatementResult, TxOutcome, WriteStats};
