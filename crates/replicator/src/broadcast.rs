//! The broadcast task: owns the [`BroadcastQueue`], takes chunks to push,
//! and sends what the queue hands out, a bounded number of sends at once.
//! When peers are slow the queue fills and sheds its oldest sends (counted
//! by the queue); sync re-fetches what was shed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use patina_wire::{ChangeChunk, Message};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, Semaphore};

use patina_proto::{BroadcastQueue, Hop};
use patina_transport::Frame;

use crate::config::ReplicatorConfig;
use crate::shared::Shared;

/// Pushes waiting for the broadcast task. Local commits wait when it is
/// full; forwarded chunks are dropped (sync covers them).
pub(crate) const PUSH_QUEUE_MAX: usize = 1024;
/// Batches of sends in flight at once (each batch: one stream per peer).
const SEND_BATCHES_IN_FLIGHT_MAX: usize = 16;
/// Sends taken from the queue per batch.
const SENDS_PER_BATCH_MAX: usize = 64;

/// One version's chunks (or one chunk of it) for the broadcast plan.
pub(crate) struct Push {
    pub chunks: Vec<Arc<ChangeChunk>>,
    pub hop: Hop<SocketAddr>,
}

pub(crate) async fn run(
    shared: Shared,
    mut pushes: mpsc::Receiver<Push>,
    config: ReplicatorConfig,
) {
    let mut queue: BroadcastQueue<SocketAddr> = BroadcastQueue::new(config.broadcast_queue.clone());
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let in_flight = Arc::new(Semaphore::new(SEND_BATCHES_IN_FLIGHT_MAX));
    // Peers see this node under its advertised address: the broadcast
    // tree orders members by it.
    let me = shared.transport.advertised_addr();
    loop {
        tokio::select! {
            biased;
            push = pushes.recv() => {
                let Some(push) = push else { return };
                let Some(first) = push.chunks.first() else { continue };
                let targets = config.broadcast_queue.targets(&me, &push.hop, &shared.peers(), spread(first), &mut rng);
                let shed_before = queue.shed_total();
                queue.on_commit(push.chunks, &targets);
                shared.stats.broadcast_shed.inc_by(queue.shed_total() - shed_before);
            }
            permit = Arc::clone(&in_flight).acquire_owned(), if !queue.is_empty() => {
                let Ok(permit) = permit else { return };
                let batch = take_batch(&shared, &mut queue);
                let shared = shared.clone();
                tokio::spawn(async move {
                    send_batch(&shared, batch).await;
                    drop(permit);
                });
            }
        }
    }
}

/// Rotates relay duty of the broadcast tree by version and actor.
fn spread(chunk: &ChangeChunk) -> u64 {
    let mut actor = [0u8; 8];
    actor.copy_from_slice(&chunk.actor.0[..8]);
    u64::from_le_bytes(actor) ^ chunk.version
}

/// The next sends, by peer. A chunk going to several peers is encoded
/// once; its frame's bytes are shared by every stream it goes out on.
fn take_batch(
    shared: &Shared,
    queue: &mut BroadcastQueue<SocketAddr>,
) -> HashMap<SocketAddr, Vec<Frame>> {
    let mut by_peer: HashMap<SocketAddr, Vec<Frame>> = HashMap::new();
    let mut encoded: HashMap<*const ChangeChunk, Frame> = HashMap::new();
    for _ in 0..SENDS_PER_BATCH_MAX {
        let Some((peer, chunk)) = queue.next() else {
            break;
        };
        let frame = match encoded.get(&Arc::as_ptr(&chunk)) {
            Some(frame) => frame.clone(),
            None => match shared.transport.encode(Message::Changes((*chunk).clone())) {
                Ok(frame) => {
                    encoded.insert(Arc::as_ptr(&chunk), frame.clone());
                    frame
                }
                Err(e) => {
                    // Chunks are bounded far below a frame's limit: this
                    // is a bug, not input. Sync still repairs the peer.
                    tracing::error!(actor = %chunk.actor, version = chunk.version, error = %e, "encoding a chunk failed");
                    shared.stats.broadcast_send_failures.inc();
                    continue;
                }
            },
        };
        by_peer.entry(peer).or_default().push(frame);
    }
    by_peer
}

async fn send_batch(shared: &Shared, batch: HashMap<SocketAddr, Vec<Frame>>) {
    let mut sends = tokio::task::JoinSet::new();
    for (peer, frames) in batch {
        let shared = shared.clone();
        sends.spawn(async move {
            let n = frames.len() as u64;
            match shared.transport.send_encoded(peer, &frames).await {
                Ok(()) => {
                    shared.stats.broadcast_chunks_sent.inc_by(n);
                }
                Err(e) => {
                    shared.stats.broadcast_send_failures.inc_by(n);
                    tracing::debug!(%peer, error = %e, "broadcast send failed; sync will repair");
                }
            }
        });
    }
    while sends.join_next().await.is_some() {}
}
