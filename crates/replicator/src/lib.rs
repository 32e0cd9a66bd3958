//! `patina-replicator`: the tokio shell that moves one cluster's changes,
//! and [`ClusterRuntime`], a node's presence in a cluster (transport +
//! membership + replicator). It owns no protocol decisions — those are the
//! sans-I/O values of `patina-proto` — it moves bytes between the
//! [`Transport`], a [`Replica`] (the node's writers, which own the
//! bookkeeping) and the membership.
//!
//! It never opens a database or parses SQL: everything it knows of the
//! node goes through [`Replica`].
//!
//! Tasks: `dispatch` (inbound frames and datagrams), `apply` (batches chunks
//! into writer jobs), `local` (this node's commits into the broadcast
//! queue), `broadcast` (sends what the queue says), `sync` (periodic
//! anti-entropy rounds), and one task per served pull.

mod broadcast;
mod replica;
mod runtime;
mod sync;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use patina_node::RemoteOutcome;
use patina_wire::{ChangeChunk, DbKind, Message};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use patina_membership::{Member, MemberState};
use patina_transport::{Inbound, Transport};

pub use replica::{BoxFuture, Replica};
pub use runtime::{ClusterCounters, ClusterOptions, ClusterRuntime, LagStats};

/// Chunks received and waiting for a writer; when full, new chunks are
/// dropped and counted (sync fetches them again).
const APPLY_QUEUE_CHUNKS_MAX: usize = 4096;
/// Chunks merged in one writer job (one SQLite transaction) at most.
const APPLY_BATCH_CHUNKS_MAX: usize = 256;

#[derive(Debug, Clone)]
pub struct ReplicatorConfig {
    /// Push changes to peers as they commit. Off: sync alone replicates
    /// (a test and diagnosis mode).
    pub broadcast: bool,
    /// How often a node runs an anti-entropy round. 200 ms keeps a missed
    /// broadcast repaired well under a second on a LAN; each round costs
    /// one summary exchange with up to `sync_peers` peers.
    pub sync_interval: Duration,
    pub sync_peers: usize,
    pub broadcast_queue: patina_proto::BroadcastConfig,
    /// Seeds peer choice (tests pass a fixed seed to replay a run).
    pub seed: u64,
}

impl Default for ReplicatorConfig {
    fn default() -> Self {
        ReplicatorConfig {
            broadcast: true,
            sync_interval: Duration::from_millis(200),
            sync_peers: 3,
            broadcast_queue: patina_proto::BroadcastConfig::default(),
            seed: rand::random(),
        }
    }
}

/// Counters of one replicator, readable at any time.
#[derive(Debug, Default)]
pub struct ReplicatorStats {
    pub chunks_received: AtomicU64,
    /// Changes in chunks that were new to this node.
    pub changes_received: AtomicU64,
    pub chunks_duplicate: AtomicU64,
    pub chunks_dropped_queue_full: AtomicU64,
    pub chunks_failed: AtomicU64,
    /// Chunks of new incomplete transactions refused: too many buffered.
    pub chunks_refused_partials_full: AtomicU64,
    pub versions_applied: AtomicU64,
    pub versions_parked: AtomicU64,
    pub broadcast_chunks_sent: AtomicU64,
    pub broadcast_send_failures: AtomicU64,
    pub sync_rounds: AtomicU64,
    pub sync_failures: AtomicU64,
    pub pulls_served: AtomicU64,
    pub wrong_database: AtomicU64,
    /// Broadcast sends shed by the broadcast queue (a copy of its count).
    pub broadcast_shed: AtomicU64,
    /// Chunks not handed to the broadcast task (its queue was full): a
    /// relay's forwards, gossip of versions new here.
    pub forwards_dropped: AtomicU64,
    /// Gauge: chunks waiting in the apply queue.
    pub apply_queue_chunks: AtomicU64,
    /// Commit-to-applied lag of broadcast versions (their chunks carry the
    /// origin's commit time; versions fetched by sync do not).
    pub lag: runtime::LagStats,
}

impl ReplicatorStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Handle to a running replicator; dropping it does not stop it, call
/// [`Replicator::shutdown`].
pub struct Replicator {
    stats: Arc<ReplicatorStats>,
    tasks: JoinSet<()>,
}

/// What every task needs.
#[derive(Clone)]
struct Shared {
    node: Arc<dyn Replica>,
    transport: Transport,
    members: watch::Receiver<Vec<Member>>,
    stats: Arc<ReplicatorStats>,
    /// The databases this cluster carries: a region carries both, the
    /// global cluster only `global.db`.
    dbs: &'static [DbKind],
    /// Versions with chunks waiting in the apply queue (count of chunks):
    /// sync does not pull them again.
    queued: Arc<std::sync::Mutex<QueuedVersions>>,
}

type QueuedVersions =
    std::collections::HashMap<(patina_wire::DbKind, patina_wire::ActorId, u64), u32>;

impl Shared {
    fn queued(&self) -> std::sync::MutexGuard<'_, QueuedVersions> {
        // Counts only: a panic elsewhere cannot leave them unusable.
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn uncount_queued(&self, key: &(patina_wire::DbKind, patina_wire::ActorId, u64)) {
        let mut queued = self.queued();
        if let Some(n) = queued.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                queued.remove(key);
            }
        }
    }

    /// Live peers' addresses.
    fn peers(&self) -> Vec<SocketAddr> {
        self.members
            .borrow()
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| m.identity.addr)
            .collect()
    }

    /// Whether the peer at `from` is the actor whose version `chunk` is.
    fn is_origin(&self, from: SocketAddr, chunk: &ChangeChunk) -> bool {
        self.members
            .borrow()
            .iter()
            .any(|m| m.identity.addr == from && m.identity.actor == chunk.actor)
    }

    fn carries(&self, db: DbKind) -> Option<DbKind> {
        self.dbs.contains(&db).then_some(db)
    }
}

impl Replicator {
    /// Starts replicating the databases `dbs` of `node` through
    /// `transport`. SWIM datagrams from `inbound` go to `datagrams` (the
    /// membership's input).
    pub fn spawn(
        node: Arc<dyn Replica>,
        transport: Transport,
        inbound: mpsc::Receiver<Inbound>,
        members: watch::Receiver<Vec<Member>>,
        datagrams: mpsc::Sender<(SocketAddr, Bytes)>,
        dbs: &'static [DbKind],
        config: ReplicatorConfig,
    ) -> Replicator {
        let stats = Arc::new(ReplicatorStats::default());
        let shared = Shared {
            node,
            transport,
            members,
            stats: Arc::clone(&stats),
            dbs,
            queued: Arc::default(),
        };
        let (apply_tx, apply_rx) = mpsc::channel(APPLY_QUEUE_CHUNKS_MAX);
        let (push_tx, push_rx) = mpsc::channel(broadcast::PUSH_QUEUE_MAX);
        let mut tasks = JoinSet::new();
        tasks.spawn(dispatch(
            shared.clone(),
            inbound,
            datagrams,
            apply_tx,
            config.broadcast.then(|| push_tx.clone()),
        ));
        tasks.spawn(apply_loop(
            shared.clone(),
            apply_rx,
            push_tx.clone(),
            config.broadcast,
        ));
        if config.broadcast {
            tasks.spawn(local_commits(shared.clone(), push_tx));
            tasks.spawn(broadcast::run(shared.clone(), push_rx, config.clone()));
        }
        tasks.spawn(sync::run(shared, config));
        Replicator { stats, tasks }
    }

    pub fn stats(&self) -> Arc<ReplicatorStats> {
        Arc::clone(&self.stats)
    }

    /// Stops every task (in-flight transfers are abandoned; what was not
    /// applied is fetched again by the next sync).
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
}

/// A chunk that arrived, and from whom (not to send it back).
struct Arrived {
    from: SocketAddr,
    chunk: Arc<ChangeChunk>,
}

async fn dispatch(
    shared: Shared,
    mut inbound: mpsc::Receiver<Inbound>,
    datagrams: mpsc::Sender<(SocketAddr, Bytes)>,
    apply: mpsc::Sender<Arrived>,
    push: Option<mpsc::Sender<broadcast::Push>>,
) {
    let mut serving = JoinSet::new();
    while let Some(event) = inbound.recv().await {
        match event {
            Inbound::Datagram { from, payload } => {
                // Membership keeps up or loses packets; SWIM tolerates loss.
                let _ = datagrams.try_send((from, payload));
            }
            Inbound::Frames { from, envelope } => match envelope.message {
                Message::Changes(chunk) => enqueue(&shared, &apply, push.as_ref(), from, chunk),
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
                while serving.try_join_next().is_some() {}
                if serving.len() >= sync::SERVING_PULLS_MAX {
                    tracing::debug!(%from, "too many pulls being served; refusing one");
                    continue;
                }
                serving.spawn(sync::serve(shared.clone(), from, first, writer, reader));
            }
        }
    }
}

/// Queues a pushed chunk for the writer. One that came straight from its
/// origin is also handed to the broadcast plan at once — a relay of the
/// tree forwards before it has applied, so leaves do not wait for the
/// relay's commit; the origin pushes each chunk once, so it is new here.
fn enqueue(
    shared: &Shared,
    apply: &mpsc::Sender<Arrived>,
    push: Option<&mpsc::Sender<broadcast::Push>>,
    from: SocketAddr,
    chunk: ChangeChunk,
) {
    bump(&shared.stats.chunks_received, 1);
    if shared.carries(chunk.db).is_none() {
        bump(&shared.stats.wrong_database, 1);
        return;
    }
    let chunk = Arc::new(chunk);
    if let Some(push) = push {
        if shared.is_origin(from, &chunk) {
            let forward = broadcast::Push {
                chunks: vec![Arc::clone(&chunk)],
                received: Some((from, true)),
            };
            if push.try_send(forward).is_err() {
                // Sync delivers it to whoever this relay would have served.
                bump(&shared.stats.forwards_dropped, 1);
            }
        }
    }
    // Counted before the send, so the apply loop's uncount never comes
    // first and leaves a stale entry that would hide the version from sync.
    let key = (chunk.db, chunk.actor, chunk.version);
    *shared.queued().entry(key).or_default() += 1;
    if apply.try_send(Arrived { from, chunk }).is_err() {
        bump(&shared.stats.chunks_dropped_queue_full, 1);
        shared.uncount_queued(&key);
    }
}

/// Drains arrived chunks into writer jobs: one SQLite transaction per
/// batch and database, as many chunks as are waiting (up to a bound).
/// Versions new here go to the broadcast task when `forward`.
async fn apply_loop(
    shared: Shared,
    mut arrived: mpsc::Receiver<Arrived>,
    push: mpsc::Sender<broadcast::Push>,
    forward: bool,
) {
    let mut batch = Vec::with_capacity(APPLY_BATCH_CHUNKS_MAX);
    while arrived.recv_many(&mut batch, APPLY_BATCH_CHUNKS_MAX).await > 0 {
        for &db in shared.dbs {
            let (from, chunks): (Vec<SocketAddr>, Vec<Arc<ChangeChunk>>) = batch
                .extract_if(.., |a| a.chunk.db == db)
                .map(|a| (a.from, a.chunk))
                .unzip();
            if chunks.is_empty() {
                continue;
            }
            let applied = shared.node.apply_remote(db, chunks.clone()).await;
            for c in &chunks {
                shared.uncount_queued(&(c.db, c.actor, c.version));
            }
            let Some(outcome) = applied else {
                return;
            };
            record(&shared.stats, &chunks, &outcome);
            if forward {
                for ((chunk, from), fresh) in chunks.into_iter().zip(from).zip(&outcome.fresh) {
                    // Chunks from their origin went on at arrival.
                    if *fresh && !shared.is_origin(from, &chunk) {
                        // The broadcast plan decides whether it goes on
                        // (`BroadcastConfig::targets`); gossip only.
                        let forward = broadcast::Push {
                            chunks: vec![chunk],
                            received: Some((from, false)),
                        };
                        if push.try_send(forward).is_err() {
                            bump(&shared.stats.forwards_dropped, 1);
                        }
                    }
                }
            }
        }
        batch.clear();
    }
}

fn record(stats: &ReplicatorStats, chunks: &[Arc<ChangeChunk>], outcome: &RemoteOutcome) {
    record_lag(stats, chunks, &outcome.fresh);
    let fresh_changes: usize = chunks
        .iter()
        .zip(&outcome.fresh)
        .filter(|(_, f)| **f)
        .map(|(c, _)| c.changes.len())
        .sum();
    bump(&stats.changes_received, fresh_changes as u64);
    bump(&stats.chunks_duplicate, outcome.duplicates as u64);
    bump(&stats.chunks_failed, outcome.failed as u64);
    bump(
        &stats.chunks_refused_partials_full,
        outcome.refused_partials_full as u64,
    );
    bump(&stats.versions_applied, outcome.versions_applied as u64);
    bump(&stats.versions_parked, outcome.versions_parked as u64);
}

/// Samples the lag of fresh chunks that carry their commit time. Hosts'
/// clocks differ a little; a chunk "from the future" counts as no lag.
fn record_lag(stats: &ReplicatorStats, chunks: &[Arc<ChangeChunk>], fresh: &[bool]) {
    let now_ms = patina_node::unix_ms();
    let now = std::time::Instant::now();
    let samples = chunks
        .iter()
        .zip(fresh)
        .filter(|(c, f)| **f && c.committed_ms > 0)
        .map(|(chunk, _)| now_ms.saturating_sub(chunk.committed_ms));
    stats.lag.record(now, samples);
}

/// This node's commits, chunked, into the broadcast queue. A lagging
/// listener misses commits (the changeset seam is bounded); sync sends them.
async fn local_commits(shared: Shared, push: mpsc::Sender<broadcast::Push>) {
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
        if !shared.dbs.contains(&cs.db) {
            continue;
        }
        let chunks = patina_wire::chunk_changes(
            cs.db,
            cs.actor,
            cs.version,
            0,
            patina_node::wire_changes(&cs.changes),
        );
        let push_one = broadcast::Push {
            chunks: chunks
                .into_iter()
                .map(|c| {
                    Arc::new(ChangeChunk {
                        committed_ms: cs.committed_ms,
                        ..c
                    })
                })
                .collect(),
            received: None,
        };
        if push.send(push_one).await.is_err() {
            return;
        }
    }
}
