//! [`Shared`]: what every task of a replicator needs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use patina_membership::{Member, MemberState};
use patina_proto::{Bookkeeper, CatchUpStatus, ForwardPolicy, QueuedVersions, SyncLimits};
use patina_transport::Transport;
use patina_wire::{ChangeChunk, DbKind};
use tokio::sync::watch;

use crate::replica::Replica;
use crate::stats::ReplicatorStats;

#[derive(Clone)]
pub(crate) struct Shared {
    pub node: Arc<dyn Replica>,
    pub transport: Transport,
    pub members: watch::Receiver<Vec<Member>>,
    pub stats: Arc<ReplicatorStats>,
    /// The databases this cluster carries: a region carries both, the
    /// global cluster only `global.db`.
    pub dbs: &'static [DbKind],
    /// Versions with chunks waiting in the apply queue: sync does not pull
    /// them again.
    pub queued: Arc<Mutex<QueuedVersions>>,
    /// Bytes of the chunks in the apply queue ([`crate::apply`] bounds them).
    pub queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
    pub forward: ForwardPolicy,
    pub sync_limits: SyncLimits,
    /// Where catching up stands (the sync task owns the `CatchUp`): lag
    /// samples are live or catch-up by it.
    pub catch_up: watch::Receiver<CatchUpStatus>,
    /// A global member's relay to its other cluster ([`crate::relay`]).
    pub relay_out: Option<tokio::sync::mpsc::Sender<Arc<ChangeChunk>>>,
    /// Peers whose sync request showed a digest different from this
    /// node's: the sync task asks them first, at once.
    pub hints: tokio::sync::mpsc::Sender<SocketAddr>,
}

impl Shared {
    pub fn queued(&self) -> MutexGuard<'_, QueuedVersions> {
        // Counts only: a panic elsewhere cannot leave them unusable.
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live peers' addresses.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.members
            .borrow()
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| m.identity.addr)
            .collect()
    }

    /// The members that are not down (alive or suspect): who "every
    /// current member" means for tombstone collection.
    pub fn members_not_down(&self) -> Vec<SocketAddr> {
        self.members
            .borrow()
            .iter()
            .filter(|m| m.state != MemberState::Down)
            .map(|m| m.identity.addr)
            .collect()
    }

    /// Whether the peer at `from` is the actor whose version `chunk` is.
    pub fn is_origin(&self, from: SocketAddr, chunk: &ChangeChunk) -> bool {
        self.members
            .borrow()
            .iter()
            .any(|m| m.identity.addr == from && m.identity.actor == chunk.actor)
    }

    pub fn carries(&self, db: DbKind) -> bool {
        self.dbs.contains(&db)
    }

    /// What this node holds of the databases this cluster carries, versions
    /// waiting in the apply queue counted as held
    /// ([`QueuedVersions::count_as_held`]): what summaries and sync plans
    /// are made from.
    pub fn held(&self) -> Bookkeeper {
        let mut all = self.merged();
        self.queued().count_as_held(&mut all);
        all
    }

    /// What this node has merged of the databases this cluster carries
    /// (readable here): what catching up is measured against.
    pub fn merged(&self) -> Bookkeeper {
        let mut dbs = self.dbs.iter();
        let first = dbs.next().copied().unwrap_or(DbKind::Regional);
        let mut all = (**self.node.bookkeeping(first).borrow()).clone();
        for &db in dbs {
            all.absorb(&self.node.bookkeeping(db).borrow());
        }
        all
    }
}
