//! The simulated network: per-path delay, loss, partitions and asymmetric
//! links, and the bytes each node sends by kind of traffic.
//!
//! - Inside a region, each pair of nodes has a fixed round trip in
//!   [`INTRA_RTT_MIN_MS`, `INTRA_RTT_MAX_MS`] (0.3–2 ms: one rack to
//!   across a metro), derived from the pair, with ±10 % jitter per packet.
//! - Between regions, the one-way delay of [`crate::geo`], ±5 % jitter.
//! - SWIM datagrams are lost with probability `loss`.
//! - Stream frames (broadcast pushes, sync) ride QUIC: a lost packet is
//!   retransmitted after a probe timeout, so loss delays a frame instead
//!   of dropping it. Each of a frame's packets (1,200 bytes) is lost with
//!   probability `loss`, again on each retry, and each loss costs
//!   [`pto_us`]: RFC 9002's PTO with rttvar = RTT/2 and quinn's 25 ms
//!   max_ack_delay. Frames of one stream arrive in order.
//! - A partition (a node, a region cut off from the others, the global
//!   cluster split in two halves, or one direction of a link) drops every
//!   datagram and frame across it; the QUIC connection would time out,
//!   which the protocol sees as its own deadlines passing.
//! - Every node's uplink serializes at [`LINK_BYTES_PER_US`] (1 Gbit/s).

use std::collections::BTreeSet;

use rand::rngs::SmallRng;
use rand::RngExt;

use crate::geo;
use crate::sched::Micros;

pub const INTRA_RTT_MIN_MS: f64 = 0.3;
pub const INTRA_RTT_MAX_MS: f64 = 2.0;
/// The payload of one QUIC packet on a 1,280-byte-MTU path.
pub const PACKET_PAYLOAD_BYTES: usize = 1_200;
/// IPv6 (40) + UDP (8) + QUIC short header (~10) + AEAD tag (16) + frame
/// header (~4) per packet.
pub const PACKET_OVERHEAD_BYTES: usize = 78;
/// quinn's default max_ack_delay, µs.
const MAX_ACK_DELAY_US: f64 = 25_000.0;
/// 1 Gbit/s.
const LINK_BYTES_PER_US: f64 = 125.0;

/// What a byte was sent for, for the bandwidth report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Traffic {
    /// SWIM datagrams.
    Membership = 0,
    /// Chunks pushed by broadcast (origin or forwarding).
    Broadcast = 1,
    /// Sync conversations: digests, summaries, pulls, pulled chunks.
    Sync = 2,
    /// Chunks a global member hands from one of its clusters to the other.
    Relay = 3,
}

pub const TRAFFIC_KINDS: [Traffic; 4] = [
    Traffic::Membership,
    Traffic::Broadcast,
    Traffic::Sync,
    Traffic::Relay,
];

impl Traffic {
    pub fn name(self) -> &'static str {
        match self {
            Traffic::Membership => "membership",
            Traffic::Broadcast => "broadcast",
            Traffic::Sync => "sync",
            Traffic::Relay => "relay",
        }
    }
}

/// Faults in force.
#[derive(Debug, Clone, Default)]
pub struct Partitions {
    /// Nodes cut off from everyone.
    pub nodes: BTreeSet<usize>,
    /// Regions cut off from every other region.
    pub regions: BTreeSet<usize>,
    /// The global cluster split: the regions of one side (traffic
    /// between regions of different sides is dropped).
    pub global_side: Option<BTreeSet<usize>>,
    /// Directed links (from, to) that drop everything.
    pub links: BTreeSet<(usize, usize)>,
}

impl Partitions {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.regions.is_empty()
            && self.global_side.is_none()
            && self.links.is_empty()
    }
}

pub struct Network {
    pub loss: f64,
    pub partitions: Partitions,
    /// Bytes sent, per node, per [`Traffic`] kind: on the wire (packet
    /// headers and retransmissions included).
    pub sent: Vec<[u64; 4]>,
    /// The same, as encoded frames and datagrams only (what the agent's
    /// `patina_transport_bytes_out_total` counts): for calibration.
    pub encoded: Vec<[u64; 4]>,
    /// Datagrams dropped by loss or partitions.
    pub datagrams_lost: u64,
}

/// Where a node is: its index and region.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub node: usize,
    pub region: usize,
}

impl Network {
    pub fn new(loss: f64) -> Network {
        Network {
            loss,
            partitions: Partitions::default(),
            sent: Vec::new(),
            encoded: Vec::new(),
            datagrams_lost: 0,
        }
    }

    pub fn count(&mut self, node: usize, kind: Traffic, wire: usize, encoded: usize) {
        if self.sent.len() <= node {
            self.sent.resize(node + 1, [0; 4]);
            self.encoded.resize(node + 1, [0; 4]);
        }
        self.sent[node][kind as usize] += wire as u64;
        self.encoded[node][kind as usize] += encoded as u64;
    }

    /// Whether anything from `a` reaches `b` now.
    pub fn reachable(&self, a: Endpoint, b: Endpoint) -> bool {
        let p = &self.partitions;
        if p.nodes.contains(&a.node) || p.nodes.contains(&b.node) {
            return false;
        }
        if p.links.contains(&(a.node, b.node)) {
            return false;
        }
        if a.region != b.region {
            if p.regions.contains(&a.region) || p.regions.contains(&b.region) {
                return false;
            }
            if let Some(side) = &p.global_side {
                if side.contains(&a.region) != side.contains(&b.region) {
                    return false;
                }
            }
        }
        true
    }

    /// The base one-way delay from `a` to `b`, µs (no jitter).
    pub fn base_one_way_us(a: Endpoint, b: Endpoint) -> f64 {
        if a.region == b.region {
            intra_rtt_ms(a.node, b.node) * 1_000.0 / 2.0
        } else {
            geo::one_way_ms(a.region, b.region) * 1_000.0
        }
    }

    fn one_way_us(a: Endpoint, b: Endpoint, rng: &mut SmallRng) -> f64 {
        let base = Self::base_one_way_us(a, b);
        let jitter = if a.region == b.region { 0.10 } else { 0.05 };
        base * (1.0 + rng.random_range(-jitter..=jitter))
    }

    /// A datagram of `bytes` (payload and datagram header) from `a` to `b`:
    /// its delay, or `None` when it is lost. Counted as sent either way.
    pub fn datagram(
        &mut self,
        a: Endpoint,
        b: Endpoint,
        bytes: usize,
        rng: &mut SmallRng,
    ) -> Option<Micros> {
        self.count(
            a.node,
            Traffic::Membership,
            bytes + PACKET_OVERHEAD_BYTES,
            bytes,
        );
        let lost = self.loss > 0.0 && rng.random_bool(self.loss);
        if lost || !self.reachable(a, b) {
            self.datagrams_lost += 1;
            return None;
        }
        Some(Self::one_way_us(a, b, rng).round() as Micros)
    }

    /// A stream frame of `bytes` from `a` to `b`: its delay (retransmissions
    /// and serialization included), or `None` when a partition drops it.
    pub fn frame(
        &mut self,
        a: Endpoint,
        b: Endpoint,
        bytes: usize,
        kind: Traffic,
        rng: &mut SmallRng,
    ) -> Option<Micros> {
        let packets = bytes.div_ceil(PACKET_PAYLOAD_BYTES).max(1);
        let mut wire = bytes + packets * PACKET_OVERHEAD_BYTES;
        if !self.reachable(a, b) {
            self.count(a.node, kind, wire, bytes);
            return None;
        }
        let one_way = Self::one_way_us(a, b, rng);
        let mut delay = one_way + bytes as f64 / LINK_BYTES_PER_US;
        if self.loss > 0.0 {
            let pto = pto_us(one_way * 2.0);
            let mut extra_rounds = 0u32;
            for _ in 0..packets {
                let mut tries = 0u32;
                // Bounded: past 20 losses in a row QUIC has given up long
                // before (and at any sane `loss` this never happens).
                while tries < 20 && rng.random_bool(self.loss) {
                    tries += 1;
                    wire += PACKET_PAYLOAD_BYTES.min(bytes) + PACKET_OVERHEAD_BYTES;
                }
                extra_rounds = extra_rounds.max(tries);
            }
            // Lost packets of one frame are retransmitted together, each
            // retry after a doubled PTO (RFC 9002 backoff).
            for i in 0..extra_rounds {
                delay += pto * f64::from(1u32 << i.min(6));
            }
        }
        self.count(a.node, kind, wire, bytes);
        Some(delay.round() as Micros)
    }
}

/// The probe timeout for a path of round trip `rtt_us`: RFC 9002's
/// smoothed_rtt + 4·rttvar + max_ack_delay, rttvar taken as RTT/2.
pub fn pto_us(rtt_us: f64) -> f64 {
    rtt_us + 4.0 * (rtt_us / 2.0) + MAX_ACK_DELAY_US
}

/// The fixed round trip between two nodes of a region, ms: a hash of the
/// pair mapped onto [`INTRA_RTT_MIN_MS`, `INTRA_RTT_MAX_MS`].
pub fn intra_rtt_ms(a: usize, b: usize) -> f64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let mut h = (lo as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (hi as u64);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    let unit = (h >> 11) as f64 / (1u64 << 53) as f64;
    INTRA_RTT_MIN_MS + unit * (INTRA_RTT_MAX_MS - INTRA_RTT_MIN_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn at(node: usize, region: usize) -> Endpoint {
        Endpoint { node, region }
    }

    #[test]
    fn intra_region_rtt_stays_in_range_and_is_symmetric() {
        for a in 0..50 {
            for b in 0..50 {
                let r = intra_rtt_ms(a, b);
                assert!((INTRA_RTT_MIN_MS..=INTRA_RTT_MAX_MS).contains(&r));
                assert_eq!(r, intra_rtt_ms(b, a));
            }
        }
    }

    #[test]
    fn partitions_cut_what_they_say() {
        let mut net = Network::new(0.0);
        let (a, b, c) = (at(1, 0), at(2, 0), at(3, 1));
        assert!(net.reachable(a, c));
        net.partitions.regions.insert(1);
        assert!(!net.reachable(a, c) && net.reachable(a, b));
        net.partitions.regions.clear();
        net.partitions.global_side = Some([0].into_iter().collect());
        assert!(!net.reachable(c, a) && net.reachable(a, b));
        net.partitions.global_side = None;
        net.partitions.links.insert((1, 2));
        assert!(!net.reachable(a, b) && net.reachable(b, a));
        net.partitions.nodes.insert(3);
        assert!(!net.reachable(c, a) && !net.reachable(a, c));
    }

    #[test]
    fn loss_delays_frames_and_drops_datagrams() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut net = Network::new(0.5);
        let (a, b) = (at(0, 0), at(1, 0));
        let base = Network::base_one_way_us(a, b);
        let mut delayed = 0;
        let mut lost = 0;
        for _ in 0..200 {
            let d = net.frame(a, b, 100, Traffic::Sync, &mut rng);
            let d = d.expect("a frame is never lost without a partition");
            if d as f64 > base * 2.0 {
                delayed += 1;
            }
            if net.datagram(a, b, 100, &mut rng).is_none() {
                lost += 1;
            }
        }
        assert!(delayed > 50, "{delayed} frames retransmitted");
        assert!((50..150).contains(&lost), "{lost} datagrams lost");
    }
}
