//! The apply queue: chunks peers pushed, waiting for a writer, merged in
//! batches by [`apply_loop`]; and where each goes on to the broadcast plan
//! ([`ForwardPolicy`](patina_proto::ForwardPolicy)).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use patina_proto::{chunk_bytes, Forward};
use patina_wire::ChangeChunk;
use tokio::sync::mpsc;

use crate::broadcast::Push;
use crate::relay::relay_fresh;
use crate::shared::Shared;
use crate::stats::{record, refuse_not_carried, Delivery};

/// Chunks received and waiting for a writer; when full, new chunks are
/// dropped and counted (sync fetches them again).
pub(crate) const APPLY_QUEUE_CHUNKS_MAX: usize = 4096;
/// Bytes of the chunks waiting for a writer, as [`chunk_bytes`] estimates
/// them (a bound, not an average): honest chunks are ≈ 64 KiB, but a
/// peer's may be a whole 4 MiB frame, and 4,096 of those would be 16 GiB.
/// Past it, new chunks are dropped and counted like a full queue.
pub(crate) const APPLY_QUEUE_BYTES_MAX: usize = 64 << 20;
/// Chunks merged in one writer job (one SQLite transaction) at most.
const APPLY_BATCH_CHUNKS_MAX: usize = 256;

/// A chunk that arrived, and what becomes of it once merged.
pub(crate) struct Arrived {
    chunk: Arc<ChangeChunk>,
    forward: Forward<SocketAddr>,
}

/// Queues a pushed chunk for the writer, handing it to the broadcast plan
/// at once when the forward policy says so.
pub(crate) fn enqueue(
    shared: &Shared,
    apply: &mpsc::Sender<Arrived>,
    push: &mpsc::Sender<Push>,
    from: SocketAddr,
    chunk: ChangeChunk,
) {
    shared.stats.chunks_received.inc();
    if !shared.carries(chunk.db) {
        refuse_not_carried(&shared.stats, from, &chunk);
        return;
    }
    let chunk = Arc::new(chunk);
    let forward = shared
        .forward
        .on_arrival(from, shared.is_origin(from, &chunk), &shared.peers());
    if let Forward::OnArrival(hop) = forward {
        let now = Push {
            chunks: vec![Arc::clone(&chunk)],
            hop,
        };
        if push.try_send(now).is_err() {
            // Sync delivers it to whoever this relay would have served.
            shared.stats.forwards_dropped.inc();
        }
    }
    // Only this task adds to the bytes (the apply loop takes away): the
    // check and the add cannot race another add.
    let bytes = chunk_bytes(&chunk);
    if shared.queued_bytes.load(Ordering::Relaxed) + bytes > APPLY_QUEUE_BYTES_MAX {
        shared.stats.chunks_dropped_queue_full.inc();
        return;
    }
    shared.queued().entered(&chunk);
    match apply.try_send(Arrived { chunk, forward }) {
        Ok(()) => {
            shared.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
            shared.stats.apply_queue_chunks.inc();
        }
        Err(full) => {
            shared.stats.chunks_dropped_queue_full.inc();
            shared.queued().left(&full.into_inner().chunk);
        }
    }
}

/// Drains arrived chunks into writer jobs: one SQLite transaction per
/// batch and database, as many chunks as are waiting (up to a bound).
pub(crate) async fn apply_loop(
    shared: Shared,
    mut arrived: mpsc::Receiver<Arrived>,
    push: mpsc::Sender<Push>,
) {
    let mut batch = Vec::with_capacity(APPLY_BATCH_CHUNKS_MAX);
    while arrived.recv_many(&mut batch, APPLY_BATCH_CHUNKS_MAX).await > 0 {
        for &db in shared.dbs {
            let (forwards, chunks): (Vec<Forward<SocketAddr>>, Vec<Arc<ChangeChunk>>) = batch
                .extract_if(.., |a| a.chunk.db == db)
                .map(|a| (a.forward, a.chunk))
                .unzip();
            if chunks.is_empty() {
                continue;
            }
            let applied = shared.node.apply_remote(db, chunks.clone()).await;
            {
                let mut queued = shared.queued();
                for chunk in &chunks {
                    queued.left(chunk);
                }
            }
            // Queued until merged: the health gate's `queue_size`.
            shared.stats.apply_queue_chunks.dec_by(chunks.len() as i64);
            let bytes: usize = chunks.iter().map(|c| chunk_bytes(c)).sum();
            shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            let Some(outcome) = applied else {
                return;
            };
            let catch_up = *shared.catch_up.borrow();
            record(
                &shared.stats,
                &chunks,
                &outcome,
                Delivery::Broadcast,
                &catch_up,
            );
            relay_fresh(&shared, &chunks, &outcome.fresh);
            for ((chunk, forward), fresh) in chunks.into_iter().zip(forwards).zip(&outcome.fresh) {
                let Some(hop) = forward.on_applied(*fresh) else {
                    continue;
                };
                let later = Push {
                    chunks: vec![chunk],
                    hop,
                };
                if push.try_send(later).is_err() {
                    shared.stats.forwards_dropped.inc();
                }
            }
        }
        batch.clear();
    }
}
