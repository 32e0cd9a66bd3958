//! A cluster in one process: nodes with a `Bookkeeper`, a `SyncPlanner`
//! and a `BroadcastQueue` each, exchanging chunks, summaries and pulls over
//! a lossy in-memory network. Checks that broadcast plus sync converge and
//! that each node applies each version exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use patina_wire::{ActorId, ChangeChunk, DbKind, Need, Span};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::bookie::{Bookkeeper, ChunkFate, SUMMARY_SPANS_MAX};
use crate::broadcast::{BroadcastConfig, BroadcastQueue};
use crate::forward::Hop;
use crate::planner::{choose_peers, PlannerConfig, SyncPlanner};

const DB: DbKind = DbKind::Regional;
type Key = (ActorId, u64);

struct Node {
    index: usize,
    actor: ActorId,
    queue_config: BroadcastConfig,
    own_version: u64,
    book: Bookkeeper,
    planner: SyncPlanner<usize>,
    queue: BroadcastQueue<usize>,
    /// The "database": chunks held per version, applied or buffered.
    chunks: BTreeMap<Key, Vec<Arc<ChangeChunk>>>,
    applied_count: BTreeMap<Key, u32>,
}

impl Node {
    fn new(i: usize) -> Node {
        let actor = patina_wire::ActorId([i as u8 + 1; 16]);
        let queue_config = BroadcastConfig {
            fanout: 2,
            queued_sends_max: 64,
            ..BroadcastConfig::default()
        };
        Node {
            index: i,
            actor,
            queue_config: queue_config.clone(),
            own_version: 0,
            book: Bookkeeper::new(actor),
            planner: SyncPlanner::new(PlannerConfig {
                versions_per_need_max: 4,
                versions_per_round_max: 20,
                // Ten rounds: a pull lost without an error blocks its
                // versions (from every peer) until then.
                pull_timeout: Duration::from_secs(5),
                ..PlannerConfig::default()
            }),
            queue: BroadcastQueue::new(queue_config),
            chunks: BTreeMap::new(),
            applied_count: BTreeMap::new(),
        }
    }

    fn commit(&mut self, rng: &mut SmallRng, members: &[usize]) {
        self.own_version += 1;
        let last_seq = rng.random_range(0..5u64);
        let mut chunks = Vec::new();
        let mut start = 0;
        while start <= last_seq {
            let end = rng.random_range(start..=last_seq);
            chunks.push(Arc::new(ChangeChunk {
                db: DB,
                actor: self.actor,
                version: self.own_version,
                seqs: Span::new(start, end),
                last_seq,
                committed_ms: 0,
                changes: Vec::new(),
            }));
            start = end + 1;
        }
        self.chunks
            .insert((self.actor, self.own_version), chunks.clone());
        self.book.set_own_version(DB, self.own_version);
        let targets =
            self.queue_config
                .targets(&self.index, &Hop::Local, members, self.own_version, rng);
        self.queue.on_commit(chunks, &targets);
    }

    /// Returns whether the chunk completed a version new here.
    fn receive(&mut self, chunk: Arc<ChangeChunk>) -> bool {
        let key = (chunk.actor, chunk.version);
        match self.book.classify(&chunk) {
            ChunkFate::Duplicate => false,
            ChunkFate::Buffer => {
                let (actor, version) = key;
                self.book
                    .record_buffered(DB, actor, version, chunk.last_seq, chunk.seqs);
                self.chunks.entry(key).or_default().push(chunk);
                false
            }
            ChunkFate::Complete { .. } => {
                self.book.record_applied(DB, chunk.actor, chunk.version);
                self.chunks.entry(key).or_default().push(chunk);
                *self.applied_count.entry(key).or_default() += 1;
                true
            }
        }
    }

    /// The chunks this node answers `need` with.
    fn serve(&self, need: &Need) -> Vec<Arc<ChangeChunk>> {
        let (actor, span, seqs) = match need {
            Need::Versions {
                actor, versions, ..
            } => (*actor, *versions, None),
            Need::Seqs {
                actor,
                version,
                seqs,
                ..
            } => (*actor, Span::new(*version, *version), Some(seqs)),
        };
        let applied = self.book.applied(DB, actor);
        let wanted = |c: &&Arc<ChangeChunk>| {
            seqs.is_none_or(|seqs| {
                seqs.iter()
                    .any(|s| s.start <= c.seqs.end && c.seqs.start <= s.end)
            })
        };
        (span.start..=span.end)
            .filter(|v| applied.is_some_and(|a| a.contains(*v)))
            .flat_map(|v| self.chunks.get(&(actor, v)).into_iter().flatten())
            .filter(wanted)
            .cloned()
            .collect()
    }
}

struct Cluster {
    nodes: Vec<Node>,
    rng: SmallRng,
    loss: f64,
    now: Instant,
    /// Chunks delivered by broadcast and pulls (lost ones not counted).
    pushes: u64,
}

impl Cluster {
    fn others(&self, i: usize) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&j| j != i).collect()
    }

    fn lost(&mut self) -> bool {
        self.rng.random_bool(self.loss)
    }

    fn deliver(&mut self, from: usize, to: usize, chunk: Arc<ChangeChunk>) {
        if self.lost() {
            return;
        }
        self.pushes += 1;
        if self.nodes[to].receive(Arc::clone(&chunk)) {
            // A version new here goes on as the broadcast plan says.
            let members = self.others(to);
            let chunks = self.nodes[to].chunks[&(chunk.actor, chunk.version)].clone();
            let from_origin = self.nodes[from].actor == chunk.actor;
            let node = &mut self.nodes[to];
            let hop = Hop::Received { from, from_origin };
            let targets =
                node.queue_config
                    .targets(&to, &hop, &members, chunk.version, &mut self.rng);
            node.queue.on_commit(chunks, &targets);
        }
    }

    fn flush_broadcasts(&mut self) {
        for _ in 0..1000 {
            let mut any = false;
            for i in 0..self.nodes.len() {
                while let Some((to, chunk)) = self.nodes[i].queue.next() {
                    any = true;
                    self.deliver(i, to, chunk);
                }
            }
            if !any {
                return;
            }
        }
    }

    fn sync_round(&mut self) {
        self.now += Duration::from_millis(500);
        for i in 0..self.nodes.len() {
            let peers = choose_peers(&self.others(i), 3, &mut self.rng);
            let mut summaries = Vec::new();
            for p in peers {
                if !self.lost() {
                    summaries.push((p, self.nodes[p].book.summary(SUMMARY_SPANS_MAX)));
                }
            }
            let node = &mut self.nodes[i];
            let pulls = node.planner.plan(self.now, &node.book, &summaries);
            for (peer, needs) in pulls {
                self.pull(i, peer, &needs);
            }
        }
    }

    fn pull(&mut self, i: usize, peer: usize, needs: &[Need]) {
        if self.lost() {
            // No answer at all: the requester learns it when the stream
            // fails or the pull times out; alternate between the two.
            if self.rng.random_bool(0.5) {
                self.nodes[i].planner.on_pull_failed(&peer);
            }
            return;
        }
        let chunks: Vec<_> = needs
            .iter()
            .flat_map(|n| self.nodes[peer].serve(n))
            .collect();
        for chunk in chunks {
            self.deliver(peer, i, chunk);
        }
        self.nodes[i].planner.on_pull_done(&peer);
    }

    fn converged(&self) -> bool {
        let all: Vec<(ActorId, u64)> = self
            .nodes
            .iter()
            .map(|n| (n.actor, n.own_version))
            .collect();
        self.nodes.iter().all(|n| {
            all.iter().all(|&(actor, max)| {
                max == 0
                    || n.book
                        .applied(DB, actor)
                        .is_some_and(|a| a.contains_span(Span::new(1, max)))
            })
        })
    }
}

fn run(seed: u64, nodes: usize, loss: f64) {
    let mut cluster = Cluster {
        nodes: (0..nodes).map(Node::new).collect(),
        rng: SmallRng::seed_from_u64(seed),
        loss,
        now: Instant::now(),
        pushes: 0,
    };
    for _ in 0..30 {
        for _ in 0..3 {
            let i = cluster.rng.random_range(0..nodes);
            let members = cluster.others(i);
            let node = &mut cluster.nodes[i];
            node.commit(&mut cluster.rng, &members);
        }
        cluster.flush_broadcasts();
        if cluster.rng.random_bool(0.3) {
            cluster.sync_round();
        }
    }
    let mut rounds = 0;
    while !cluster.converged() {
        rounds += 1;
        assert!(
            rounds <= 300,
            "seed {seed}: no convergence after 300 sync rounds"
        );
        cluster.sync_round();
        cluster.flush_broadcasts();
    }
    for node in &cluster.nodes {
        assert!(
            node.applied_count.values().all(|&n| n == 1),
            "seed {seed}: a version applied twice"
        );
        assert!(
            node.book.partials().next().is_none(),
            "seed {seed}: partials left"
        );
    }
}

#[test]
fn lossless_cluster_converges() {
    for seed in 0..5 {
        run(seed, 5, 0.0);
    }
}

#[test]
fn lossy_cluster_converges_through_sync() {
    for seed in 0..20 {
        run(seed, 7, 0.3);
    }
}

/// In a lossless tree-sized cluster, broadcast alone delivers every
/// version to every node, each chunk exactly once per node.
#[test]
fn tree_broadcast_alone_delivers_everything_once() {
    for (seed, nodes) in [(1, 6), (2, 10), (3, 16)] {
        let mut cluster = Cluster {
            nodes: (0..nodes).map(Node::new).collect(),
            rng: SmallRng::seed_from_u64(seed),
            loss: 0.0,
            now: Instant::now(),
            pushes: 0,
        };
        let mut chunks = 0u64;
        for _ in 0..40 {
            let i = cluster.rng.random_range(0..nodes);
            let members = cluster.others(i);
            cluster.nodes[i].commit(&mut cluster.rng, &members);
            let key = (cluster.nodes[i].actor, cluster.nodes[i].own_version);
            chunks += cluster.nodes[i].chunks[&key].len() as u64;
            cluster.flush_broadcasts();
        }
        assert!(
            cluster.converged(),
            "seed {seed}: {nodes} nodes without sync"
        );
        assert_eq!(
            cluster.pushes,
            chunks * (nodes as u64 - 1),
            "seed {seed}: {nodes} nodes: no duplicate pushes"
        );
    }
}
