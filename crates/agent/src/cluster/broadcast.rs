//! `BroadcastQueue`: the chunks to push to peers after a commit (local, or
//! a remote version applied here for the first time), bounded in sends and
//! bytes. When full it sheds the oldest sends: a peer that misses a chunk
//! gets its version through sync, while newer chunks are the ones peers
//! are least likely to hold yet.

use std::collections::VecDeque;
use std::sync::Arc;

use rand::Rng;
use wire::{change_bytes_max, ChangeChunk};

use super::planner::choose_peers;

/// Bytes a chunk costs in the queue besides its changes: the chunk header
/// and frame envelope, rounded up.
const CHUNK_OVERHEAD_BYTES: usize = 128;

/// How much a chunk weighs in the queue: an upper bound of its encoding
/// (the chunks are shared through `Arc`, so this bounds the frames that
/// will be written, not the memory held).
pub fn chunk_bytes(chunk: &ChangeChunk) -> usize {
    CHUNK_OVERHEAD_BYTES + chunk.changes.iter().map(change_bytes_max).sum::<usize>()
}

/// Limits of the broadcast queue.
#[derive(Debug, Clone)]
pub struct BroadcastConfig {
    /// Peers each chunk is pushed to; clusters of up to `fanout` other
    /// members get it from the origin in one hop. 3: with forwarding of
    /// new versions, a few hops reach hundreds of nodes, and sync repairs
    /// the rest.
    pub fanout: usize,
    /// A local commit goes straight to every peer when there are at most
    /// this many, and nobody forwards it. Random forwarding with fanout 3
    /// misses some node for ≈ 14 % of writes at 10 nodes (simulated, and
    /// seen in the cluster bench as a 200 ms sync-bound p99); one hop to
    /// everyone misses none and sends N−1 pushes instead of ≈ 3N. 15:
    /// a 16-node region pays 15 small streams per commit.
    pub direct_push_max_peers: usize,
    /// Bytes of pending sends (by [`chunk_bytes`]). 8 MiB: about two
    /// seconds of pushes on a 32 Mbit/s link; beyond that a peer is
    /// better served by sync.
    pub queued_bytes_max: usize,
    /// Pending sends, however small. 16,384.
    pub queued_sends_max: usize,
}

impl Default for BroadcastConfig {
    fn default() -> BroadcastConfig {
        BroadcastConfig {
            fanout: 3,
            direct_push_max_peers: 15,
            queued_bytes_max: 8 * 1024 * 1024,
            queued_sends_max: 16_384,
        }
    }
}

impl BroadcastConfig {
    /// Whether a version new to this node, just applied, is worth
    /// forwarding to `peers` (this node's live peers). Not when it came
    /// straight from its origin and the origin had at most
    /// `direct_push_max_peers` peers (this node's `peers` again: the
    /// origin among them, this node not): [`BroadcastQueue::on_commit`]
    /// then pushed it to every one of them, so every forward would be a
    /// duplicate. Should the origin's view of the members differ, sync
    /// delivers to whoever it missed.
    pub fn forwards(&self, from_origin: bool, peers: usize) -> bool {
        !(from_origin && peers <= self.direct_push_max_peers.max(self.fanout))
    }
}

#[derive(Debug)]
struct Send<P> {
    peer: P,
    chunk: Arc<ChangeChunk>,
    bytes: usize,
}

/// Pending (peer, chunk) sends in FIFO order, bounded by
/// [`BroadcastConfig`].
#[derive(Debug)]
pub struct BroadcastQueue<P> {
    config: BroadcastConfig,
    sends: VecDeque<Send<P>>,
    queued_bytes: usize,
    shed_total: u64,
    enqueued_total: u64,
}

impl<P: Clone + PartialEq> BroadcastQueue<P> {
    pub fn new(config: BroadcastConfig) -> BroadcastQueue<P> {
        BroadcastQueue {
            config,
            sends: VecDeque::new(),
            queued_bytes: 0,
            shed_total: 0,
            enqueued_total: 0,
        }
    }

    /// Queues `chunks` (one version's, in seq order) for the members other
    /// than `exclude` (the peer they came from): all of them when they are
    /// at most `fanout`, or when this is a local commit (`exclude` is
    /// `None`) and they are at most `direct_push_max_peers`; else `fanout`
    /// chosen with `rng`. All chunks go to
    /// the same peers so each can complete the version. Sheds the oldest
    /// sends to stay within bounds; a send larger than `queued_bytes_max`
    /// alone is shed at once.
    pub fn on_commit<R: Rng + ?Sized>(
        &mut self,
        chunks: Vec<Arc<ChangeChunk>>,
        exclude: Option<&P>,
        members: &[P],
        rng: &mut R,
    ) {
        let candidates: Vec<P> = members
            .iter()
            .filter(|m| exclude != Some(*m))
            .cloned()
            .collect();
        let direct = exclude.is_none() && candidates.len() <= self.config.direct_push_max_peers;
        let targets = if direct || candidates.len() <= self.config.fanout {
            candidates
        } else {
            choose_peers(&candidates, self.config.fanout, rng)
        };
        for chunk in chunks {
            let bytes = chunk_bytes(&chunk);
            for peer in &targets {
                self.push(peer.clone(), Arc::clone(&chunk), bytes);
            }
        }
    }

    fn push(&mut self, peer: P, chunk: Arc<ChangeChunk>, bytes: usize) {
        self.enqueued_total += 1;
        if bytes > self.config.queued_bytes_max {
            self.shed_total += 1;
            return;
        }
        self.queued_bytes += bytes;
        self.sends.push_back(Send { peer, chunk, bytes });
        while self.queued_bytes > self.config.queued_bytes_max
            || self.sends.len() > self.config.queued_sends_max
        {
            self.shed_oldest();
        }
    }

    fn shed_oldest(&mut self) {
        if let Some(send) = self.sends.pop_front() {
            self.queued_bytes -= send.bytes;
            self.shed_total += 1;
        }
    }

    /// Pending sends.
    pub fn len(&self) -> usize {
        self.sends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Sends dropped to stay within bounds, since creation.
    pub fn shed_total(&self) -> u64 {
        self.shed_total
    }

    /// Sends queued (including those shed), since creation.
    pub fn enqueued_total(&self) -> u64 {
        self.enqueued_total
    }
}

/// Popping sends: `next` is the oldest pending send. An iterator so that
/// the I/O shell can drain with `for` or `take(n)`; it ends when the queue
/// is empty, and yields again after the next `on_commit`.
impl<P: Clone + PartialEq> Iterator for BroadcastQueue<P> {
    type Item = (P, Arc<ChangeChunk>);

    fn next(&mut self) -> Option<(P, Arc<ChangeChunk>)> {
        let send = self.sends.pop_front()?;
        self.queued_bytes -= send.bytes;
        Some((send.peer, send.chunk))
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use wire::{DbKind, Span, WireChange};

    use super::*;

    fn chunk(version: u64, payload_bytes: usize) -> Arc<ChangeChunk> {
        let change = WireChange {
            table: "t".into(),
            pk: vec![0; payload_bytes],
            cid: "c".into(),
            val: crr::Value::Null,
            col_version: 1,
            cl: 1,
            seq: 0,
        };
        Arc::new(ChangeChunk {
            db: DbKind::Regional,
            actor: crr::SiteId([1; 16]),
            version,
            seqs: Span::new(0, 0),
            last_seq: 0,
            committed_ms: 0,
            changes: vec![change],
        })
    }

    fn drain(queue: &mut BroadcastQueue<u32>) -> Vec<(u32, u64)> {
        std::iter::from_fn(|| queue.next())
            .map(|(p, c)| (p, c.version))
            .collect()
    }

    #[test]
    fn a_version_is_not_forwarded_where_its_origin_reached_everyone() {
        let config = BroadcastConfig::default();
        // 3 nodes, received from the origin: the origin pushed to both.
        assert!(!config.forwards(true, 2));
        assert!(!config.forwards(true, config.fanout));
        // Up to `direct_push_max_peers` peers the origin reached them all.
        assert!(!config.forwards(true, config.direct_push_max_peers));
        // Larger: the origin reached only `fanout` of them.
        assert!(config.forwards(true, config.direct_push_max_peers + 1));
        // Relayed (or pulled by sync from someone else): the origin may
        // not have reached everyone.
        assert!(config.forwards(false, 2));
    }

    #[test]
    fn small_clusters_get_every_chunk_in_order() {
        let mut queue = BroadcastQueue::new(BroadcastConfig::default());
        let mut rng = SmallRng::seed_from_u64(1);
        queue.on_commit(vec![chunk(1, 10), chunk(2, 10)], None, &[7, 8, 9], &mut rng);
        assert_eq!(queue.len(), 6);
        let sent = drain(&mut queue);
        assert_eq!(sent, vec![(7, 1), (8, 1), (9, 1), (7, 2), (8, 2), (9, 2)]);
        assert_eq!(queue.queued_bytes(), 0);
    }

    #[test]
    fn a_local_commit_goes_to_every_peer_up_to_the_direct_push_limit() {
        let config = BroadcastConfig::default();
        let mut rng = SmallRng::seed_from_u64(3);
        let mut queue = BroadcastQueue::new(config.clone());
        let ten: Vec<u32> = (0..10).collect();
        queue.on_commit(vec![chunk(1, 10)], None, &ten, &mut rng);
        assert_eq!(queue.len(), 10, "one hop to all of a 11-node region");
        let mut queue = BroadcastQueue::new(config.clone());
        let many: Vec<u32> = (0..config.direct_push_max_peers as u32 + 1).collect();
        queue.on_commit(vec![chunk(1, 10)], None, &many, &mut rng);
        assert_eq!(queue.len(), config.fanout, "beyond the limit: gossip");
        // A forward (it came from a peer) always uses the fanout.
        let mut queue = BroadcastQueue::new(config.clone());
        queue.on_commit(vec![chunk(1, 10)], Some(&0), &ten, &mut rng);
        assert_eq!(queue.len(), config.fanout);
    }

    #[test]
    fn large_clusters_get_fanout_peers_never_the_sender() {
        let mut queue = BroadcastQueue::new(BroadcastConfig::default());
        let mut rng = SmallRng::seed_from_u64(2);
        let members: Vec<u32> = (0..20).collect();
        for _ in 0..50 {
            queue.on_commit(
                vec![chunk(1, 10), chunk(2, 10)],
                Some(&5),
                &members,
                &mut rng,
            );
            let sent = drain(&mut queue);
            assert_eq!(sent.len(), 6);
            let first: Vec<u32> = sent.iter().filter(|s| s.1 == 1).map(|s| s.0).collect();
            let second: Vec<u32> = sent.iter().filter(|s| s.1 == 2).map(|s| s.0).collect();
            assert_eq!(first, second, "a version's chunks go to the same peers");
            assert!(!first.contains(&5));
        }
        // Four members besides the sender: more than fanout, so three.
        queue.on_commit(vec![chunk(1, 10)], Some(&0), &[0, 1, 2, 3, 4], &mut rng);
        assert_eq!(queue.len(), 3);
        // Exactly fanout besides the sender: all of them.
        let mut queue = BroadcastQueue::new(BroadcastConfig::default());
        queue.on_commit(vec![chunk(1, 10)], Some(&0), &[0, 1, 2, 3], &mut rng);
        assert_eq!(drain(&mut queue), vec![(1, 1), (2, 1), (3, 1)]);
    }

    #[test]
    fn full_queue_sheds_the_oldest_sends() {
        let config = BroadcastConfig {
            queued_sends_max: 4,
            ..BroadcastConfig::default()
        };
        let mut queue = BroadcastQueue::new(config);
        let mut rng = SmallRng::seed_from_u64(3);
        for v in 1..=3 {
            queue.on_commit(vec![chunk(v, 10)], None, &[1, 2], &mut rng);
        }
        assert_eq!(queue.shed_total(), 2);
        assert_eq!(queue.enqueued_total(), 6);
        assert_eq!(drain(&mut queue), vec![(1, 2), (2, 2), (1, 3), (2, 3)]);
    }

    #[test]
    fn bytes_bound_sheds_the_oldest_and_refuses_giants() {
        let per_send = chunk_bytes(&chunk(1, 1000));
        let config = BroadcastConfig {
            queued_bytes_max: per_send * 3,
            ..BroadcastConfig::default()
        };
        let mut queue = BroadcastQueue::new(config);
        let mut rng = SmallRng::seed_from_u64(4);
        for v in 1..=5 {
            queue.on_commit(vec![chunk(v, 1000)], None, &[1], &mut rng);
        }
        assert_eq!(queue.shed_total(), 2);
        assert_eq!(queue.queued_bytes(), per_send * 3);
        queue.on_commit(vec![chunk(9, per_send * 4)], None, &[1], &mut rng);
        assert_eq!(queue.shed_total(), 3);
        assert_eq!(drain(&mut queue), vec![(1, 3), (1, 4), (1, 5)]);
    }
}
