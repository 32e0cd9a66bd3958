//! [`Replicator`]: starts a cluster's tasks and routes what the transport
//! delivers to them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use patina_membership::Member;
use patina_proto::{CatchUp, CatchUpStatus, Hop, QueuedVersions, ServeRefusal};
use patina_transport::{Inbound, Transport};
use patina_wire::{ChangeChunk, DbKind, Message};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::apply::{apply_loop, enqueue, Arrived, APPLY_QUEUE_CHUNKS_MAX};
use crate::broadcast::{self, Push, PUSH_QUEUE_MAX};
use crate::config::ReplicatorConfig;
use crate::relay::{self, RelayLink};
use crate::replica::Replica;
use crate::shared::Shared;
use crate::stats::ReplicatorStats;
use crate::sync;

/// Handle to a running replicator; dropping it does not stop it, call
/// [`Replicator::shutdown`].
pub struct Replicator {
    stats: Arc<ReplicatorStats>,
    catch_up: watch::Receiver<CatchUpStatus>,
    tasks: JoinSet<()>,
}

impl Replicator {
    /// Starts replicating the databases `dbs` of `node` through
    /// `transport`; with `relay`, a global member's link to its other
    /// cluster. SWIM datagrams from `inbound` go to `datagrams` (the
    /// membership's input). `learns_from_peers`: the node has a bootstrap
    /// list or remembered members, so it starts catching up
    /// ([`CatchUp`]).
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        node: Arc<dyn Replica>,
        transport: Transport,
        inbound: mpsc::Receiver<Inbound>,
        members: watch::Receiver<Vec<Member>>,
        datagrams: mpsc::Sender<(SocketAddr, Bytes)>,
        dbs: &'static [DbKind],
        config: ReplicatorConfig,
        learns_from_peers: bool,
        relay: Option<RelayLink>,
    ) -> Replicator {
        let stats = Arc::new(ReplicatorStats::default());
        // Before the API takes a write (the agent starts it after this).
        crate::collect::check_return(node.as_ref(), dbs, &config, learns_from_peers);
        let catch_up = CatchUp::new(
            learns_from_peers,
            dbs,
            std::time::Instant::now(),
            patina_node::unix_ms(),
            config.catch_up_wait,
        );
        let (catch_up_tx, catch_up_rx) = watch::channel(catch_up.status());
        let (hints_tx, hints_rx) = mpsc::channel(sync::HINTS_MAX);
        let (relay_out, relay_inbound) = match relay {
            Some(link) => (Some(link.out), Some(link.inbound)),
            None => (None, None),
        };
        let shared = Shared {
            node,
            transport,
            members,
            stats: Arc::clone(&stats),
            dbs,
            queued_bytes: Arc::default(),
            queued: Arc::new(std::sync::Mutex::new(QueuedVersions::new())),
            forward: config.broadcast_queue.forward_policy(config.broadcast),
            sync_limits: config.sync_limits.clone(),
            catch_up: catch_up_rx.clone(),
            relay_out,
            hints: hints_tx,
        };
        let (apply_tx, apply_rx) = mpsc::channel(APPLY_QUEUE_CHUNKS_MAX);
        let (push_tx, push_rx) = mpsc::channel(PUSH_QUEUE_MAX);
        let mut tasks = JoinSet::new();
        tasks.spawn(dispatch(
            shared.clone(),
            inbound,
            datagrams,
            apply_tx,
            push_tx.clone(),
        ));
        tasks.spawn(apply_loop(shared.clone(), apply_rx, push_tx.clone()));
        if config.broadcast {
            if let Some(inbound) = relay_inbound {
                tasks.spawn(relay::relay_in(shared.clone(), inbound, push_tx.clone()));
            }
            tasks.spawn(local_commits(shared.clone(), push_tx));
            tasks.spawn(broadcast::run(shared.clone(), push_rx, config.clone()));
        }
        tasks.spawn(sync::run(shared, config, catch_up, catch_up_tx, hints_rx));
        Replicator {
            stats,
            catch_up: catch_up_rx,
            tasks,
        }
    }

    pub fn stats(&self) -> Arc<ReplicatorStats> {
        Arc::clone(&self.stats)
    }

    /// Where catching up stands, updated by the sync task.
    pub fn catch_up(&self) -> watch::Receiver<CatchUpStatus> {
        self.catch_up.clone()
    }

    /// Stops every task (in-flight transfers are abandoned; what was not
    /// applied is fetched again by the next sync).
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
}

async fn dispatch(
    shared: Shared,
    mut inbound: mpsc::Receiver<Inbound>,
    datagrams: mpsc::Sender<(SocketAddr, Bytes)>,
    apply: mpsc::Sender<Arrived>,
    push: mpsc::Sender<Push>,
) {
    // Per peer address, so one peer cannot take every slot.
    let mut serving: JoinSet<SocketAddr> = JoinSet::new();
    let mut serving_of: HashMap<SocketAddr, usize> = HashMap::new();
    while let Some(event) = inbound.recv().await {
        match event {
            Inbound::Datagram { from, payload } => {
                // Membership keeps up or loses packets; SWIM tolerates loss.
                let _ = datagrams.try_send((from, payload));
            }
            Inbound::Frames { from, envelope, .. } => match envelope.message {
                Message::Changes(chunk) => enqueue(&shared, &apply, &push, from, chunk),
                other => {
                    tracing::debug!(%from, message = ?std::mem::discriminant(&other), "unexpected message on a broadcast stream")
                }
            },
            Inbound::Bi {
                from,
                first,
                writer,
                reader,
            } => {
                while let Some(done) = serving.try_join_next() {
                    if let Ok(peer) = done {
                        if let Some(n) = serving_of.get_mut(&peer) {
                            *n -= 1;
                            if *n == 0 {
                                serving_of.remove(&peer);
                            }
                        }
                    }
                }
                let of_peer = serving_of.get(&from).copied().unwrap_or(0);
                match shared.sync_limits.admits(serving.len(), of_peer) {
                    Ok(()) => {}
                    Err(ServeRefusal::Busy) => {
                        shared.stats.serves_refused_busy.inc();
                        tracing::debug!(%from, "every serving slot busy; a sync stream refused");
                        continue;
                    }
                    Err(ServeRefusal::PeerBusy) => {
                        shared.stats.serves_refused_peer_busy.inc();
                        tracing::debug!(%from, "this peer's serving slots busy; a sync stream refused");
                        continue;
                    }
                }
                *serving_of.entry(from).or_default() += 1;
                let shared = shared.clone();
                serving.spawn(async move {
                    sync::serve(shared, from, first, writer, reader).await;
                    from
                });
            }
        }
    }
}

/// This node's commits, chunked, into the broadcast queue. A lagging
/// listener misses commits (the changeset seam is bounded); sync sends them.
async fn local_commits(shared: Shared, push: mpsc::Sender<Push>) {
    let mut commits = shared.node.local_commits();
    loop {
        let cs = match commits.recv().await {
            Ok(cs) => cs,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(
                    missed = n,
                    "broadcast lagged behind local commits; sync will send them"
                );
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        if !shared.carries(cs.db) {
            continue;
        }
        if cs.db == DbKind::Global {
            shared
                .stats
                .newest_global_commit_ms
                .fetch_max(cs.committed_ms, std::sync::atomic::Ordering::Relaxed);
        }
        if cs.omitted.is_some() {
            // Too large to hold (patina_node::LARGE_CHANGES): peers pull it
            // at their next sync round (every 200 ms by default), which
            // reads and sends it a page at a time; pushed here, it would
            // have to be read whole or overflow the broadcast queue.
            tracing::debug!(version = cs.version, "large local commit: left to sync");
            continue;
        }
        let chunks = patina_wire::chunk_changes(
            cs.db,
            cs.actor,
            cs.version,
            0,
            patina_node::wire_changes(&cs.changes),
        );
        let push_one = Push {
            chunks: chunks
                .into_iter()
                .map(|c| {
                    Arc::new(ChangeChunk {
                        committed_ms: cs.committed_ms,
                        ..c
                    })
                })
                .collect(),
            hop: Hop::Local,
        };
        if push.send(push_one).await.is_err() {
            return;
        }
    }
}
