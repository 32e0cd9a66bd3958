//! `patina-replicator`: the tokio shell that moves one cluster's changes,
//! and [`ClusterRuntime`], a node's presence in a cluster (transport +
//! membership + replicator). It owns no protocol decisions — those are the
//! sans-I/O values of `patina-proto` — it moves bytes between the
//! [`Transport`](patina_transport::Transport), a [`Replica`] (the node's
//! writers, which own the bookkeeping) and the membership.
//!
//! It never opens a database or parses SQL: everything it knows of the
//! node goes through [`Replica`].
//!
//! Tasks: `dispatch` (inbound frames and datagrams, `replicator.rs`),
//! `apply` (batches chunks into writer jobs, `apply.rs`), `local` (this
//! node's commits into the broadcast queue), `broadcast` (sends what the
//! queue says), `sync` (periodic anti-entropy rounds), and one task per
//! served pull (the sync task also drives tombstone collection: `collect.rs`); on a global member, `relay_in` (the other cluster's fresh
//! global changes, pushed to this one: `relay.rs`). What they all share is `shared.rs`, `stats.rs` and
//! `config.rs`; this file only names the modules, so file imports form a
//! tree without cycles.

mod apply;
mod broadcast;
mod collect;
mod config;
mod relay;
mod replica;
mod replicator;
mod runtime;
mod shared;
mod stats;
mod sync;

pub use config::ReplicatorConfig;
pub use patina_membership::SwimProfile;
pub use patina_proto::{CatchUpPhase, CatchUpStatus};
pub use relay::RelayLink;
pub use replica::{BoxFuture, Replica};
pub use replicator::Replicator;
pub use runtime::{ClusterCounters, ClusterOptions, ClusterRuntime};
pub use stats::{LagStats, ReplicatorStats};
