//! A global member's relay (docs/regions.md): the global changes one of
//! its clusters merged fresh are pushed to the peers of the other. Echo
//! cannot happen: a relayed chunk is already merged on this node, so when
//! it comes back from the other cluster's peers it is a duplicate, never
//! fresh, and only fresh merges are relayed.

use std::sync::Arc;

use patina_proto::Hop;
use patina_wire::{ChangeChunk, DbKind};
use tokio::sync::mpsc;

use crate::broadcast::Push;
use crate::shared::Shared;

/// Relay chunks waiting for the other cluster's broadcast task; when full,
/// chunks are dropped and counted (the other cluster's sync carries them).
const RELAY_QUEUE_CHUNKS_MAX: usize = 4096;

/// One side of the link between a node's regional and global clusters:
/// where this cluster's fresh global chunks go, and what arrives from the
/// other cluster for this one to push. Made in pairs ([`RelayLink::pair`]).
#[derive(Debug)]
pub struct RelayLink {
    pub(crate) out: mpsc::Sender<Arc<ChangeChunk>>,
    pub(crate) inbound: mpsc::Receiver<Arc<ChangeChunk>>,
}

impl RelayLink {
    /// The two ends: give one to each of the node's clusters.
    pub fn pair() -> (RelayLink, RelayLink) {
        let (a_tx, a_rx) = mpsc::channel(RELAY_QUEUE_CHUNKS_MAX);
        let (b_tx, b_rx) = mpsc::channel(RELAY_QUEUE_CHUNKS_MAX);
        (
            RelayLink {
                out: a_tx,
                inbound: b_rx,
            },
            RelayLink {
                out: b_tx,
                inbound: a_rx,
            },
        )
    }
}

/// Hands the fresh `global.db` chunks of a merge to the other cluster.
pub(crate) fn relay_fresh(shared: &Shared, chunks: &[Arc<ChangeChunk>], fresh: &[bool]) {
    let Some(out) = &shared.relay_out else {
        return;
    };
    for (chunk, _) in chunks
        .iter()
        .zip(fresh)
        .filter(|(c, f)| **f && c.db == DbKind::Global)
    {
        match out.try_send(Arc::clone(chunk)) {
            Ok(()) => shared.stats.relayed_out.inc(),
            Err(_) => shared.stats.relay_dropped.inc(),
        };
    }
}

/// Pushes what the other cluster relayed to this cluster's peers.
pub(crate) async fn relay_in(
    shared: Shared,
    mut inbound: mpsc::Receiver<Arc<ChangeChunk>>,
    push: mpsc::Sender<Push>,
) {
    while let Some(chunk) = inbound.recv().await {
        // Only global changes are ever handed over; anything else would be
        // a bug breaking isolation, refused here a second time.
        if chunk.db != DbKind::Global || !shared.carries(chunk.db) {
            shared.stats.wrong_database.inc();
            continue;
        }
        shared.stats.relayed_in.inc();
        let one = Push {
            chunks: vec![chunk],
            hop: Hop::Relayed,
        };
        if push.try_send(one).is_err() {
            shared.stats.forwards_dropped.inc();
        }
    }
}
