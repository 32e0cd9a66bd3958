//! [`Replica`]: what the replicator needs of a node. The daemon's node
//! ([`patina_node::Node`]) is one; tests may bring a fake.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use patina_node::{Changeset, Node, RemoteOutcome};
use patina_proto::Bookkeeper;
use patina_wire::{ActorId, ChangeChunk, DbKind, Need};
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
}
