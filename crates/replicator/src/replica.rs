//! [`Replica`]: what the replicator needs of a node. The daemon's node
//! ([`patina_node::Node`]) is one; tests may bring a fake.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use patina_node::{Changeset, CollectReport, CollectRequest, CollectionState, Node, RemoteOutcome};
use patina_proto::Bookkeeper;
use patina_wire::{ActorId, ChangeChunk, CollectedFloors, DbKind, Need};
use tokio::sync::{broadcast, watch};

/// A boxed future, so that [`Replica`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The databases the replicator feeds and reads. Every method answers
/// `None` once the node is shutting down; the replicator then stops.
pub trait Replica: Send + Sync + 'static {
    /// The actor whose versions this node's own commits are.
    fn actor_id(&self) -> ActorId;

    /// Merges chunks peers sent into `db` (buffering incomplete versions,
    /// parking ones whose tables are unknown) and says which were new.
    fn apply_remote(
        &self,
        db: DbKind,
        chunks: Vec<Arc<ChangeChunk>>,
    ) -> BoxFuture<'_, Option<RemoteOutcome>>;

    /// Reads (part of) what a peer asked for from `db`: the chunks, and
    /// what is left of the need for other calls, in order.
    fn serve(&self, db: DbKind, need: Need)
        -> BoxFuture<'_, Option<(Vec<ChangeChunk>, Vec<Need>)>>;

    /// `db`'s bookkeeping, updated after every commit and merge.
    fn bookkeeping(&self, db: DbKind) -> watch::Receiver<Arc<Bookkeeper>>;

    /// This node's own commits, as they commit.
    fn local_commits(&self) -> broadcast::Receiver<Arc<Changeset>>;

    /// What the node knows of `db`'s tombstone collection; `None`: it does
    /// not collect (the replicator then never does either).
    fn collection(&self, _db: DbKind) -> Option<CollectionState> {
        None
    }

    /// One tombstone collection pass on `db`; `None` if the node cannot.
    fn collect_tombstones(
        &self,
        _db: DbKind,
        _request: CollectRequest,
    ) -> BoxFuture<'_, Option<CollectReport>> {
        Box::pin(async { None })
    }

    /// Learns what a peer collected.
    fn adopt_collected(&self, _floors: CollectedFloors) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// `db` missed collected tombstones: refuse its writes with `reason`.
    fn mark_stale(&self, _db: DbKind, _reason: String) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// The node's first catch-up ended.
    fn mark_joined(&self, _db: DbKind) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// `db` is back after a long absence: refuse its writes with `reason`
    /// until [`Replica::mark_returned`].
    fn mark_returning(&self, _db: DbKind, _reason: String) {}

    /// `db` caught up with a peer since it returned: writes go again.
    fn mark_returned(&self, _db: DbKind) {}

    /// A peer answered a sync of `db` at `at_ms` (see `Node::note_contact`).
    fn note_contact(&self, _db: DbKind, _at_ms: u64, _limit_ms: u64) {}
}

impl Replica for Node {
    fn actor_id(&self) -> ActorId {
        Node::actor_id(self)
    }

    fn apply_remote(
        &self,
        db: DbKind,
        chunks: Vec<Arc<ChangeChunk>>,
    ) -> BoxFuture<'_, Option<RemoteOutcome>> {
        Box::pin(async move { Node::apply_remote(self, db, chunks).await.ok() })
    }

    fn serve(
        &self,
        db: DbKind,
        need: Need,
    ) -> BoxFuture<'_, Option<(Vec<ChangeChunk>, Vec<Need>)>> {
        Box::pin(async move {
            match Node::serve(self, db, need).await {
                Ok(served) => Some(served),
                Err(e) => {
                    tracing::warn!(db = db.name(), error = %e, "serving a peer's pull failed");
                    None
                }
            }
        })
    }

    fn bookkeeping(&self, db: DbKind) -> watch::Receiver<Arc<Bookkeeper>> {
        Node::bookkeeping(self, db)
    }

    fn local_commits(&self) -> broadcast::Receiver<Arc<Changeset>> {
        Node::subscribe_changesets(self)
    }

    fn collection(&self, db: DbKind) -> Option<CollectionState> {
        Some(Node::collection(self, db))
    }

    fn collect_tombstones(
        &self,
        db: DbKind,
        request: CollectRequest,
    ) -> BoxFuture<'_, Option<CollectReport>> {
        Box::pin(async move {
            match Node::collect_tombstones(self, db, request).await {
                Ok(report) => Some(report),
                Err(e) => {
                    tracing::warn!(db = db.name(), error = %e, "collecting tombstones failed");
                    None
                }
            }
        })
    }

    fn adopt_collected(&self, floors: CollectedFloors) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let db = floors.db;
            if let Err(e) = Node::adopt_collected(self, floors).await {
                tracing::warn!(db = db.name(), error = %e, "recording a peer's collection floors failed");
            }
        })
    }

    fn mark_stale(&self, db: DbKind, reason: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = Node::mark_stale(self, db, reason).await {
                tracing::warn!(db = db.name(), error = %e, "recording that the node is stale failed");
            }
        })
    }

    fn mark_joined(&self, db: DbKind) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = Node::mark_joined(self, db).await {
                tracing::warn!(db = db.name(), error = %e, "recording the end of bootstrapping failed");
            }
        })
    }

    fn mark_returning(&self, db: DbKind, reason: String) {
        Node::mark_returning(self, db, reason)
    }

    fn mark_returned(&self, db: DbKind) {
        Node::mark_returned(self, db)
    }

    fn note_contact(&self, db: DbKind, at_ms: u64, limit_ms: u64) {
        Node::note_contact(self, db, at_ms, limit_ms)
    }
}
