//! The simulated fleet: every node's real protocol values driven by one
//! scheduler over the simulated network, the workload and faults, and the
//! invariants checked as events run.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use foca::{OwnedNotification, Timer};
use patina_membership::{SwimId, SwimProfile, SwimTuning, WireCodec};
use patina_proto::{
    region_leader, rollup_diff, BroadcastConfig, ChunkFate, Forward, Hop, PullAction, PullSession,
    RollupSchedule, RollupTiming, ServeAction, ServeSession, SyncLimits, SUMMARY_SPANS_MAX,
};
use patina_wire::{
    chunk_changes, datagram_overhead, ActorId, ChangeChunk, ClusterName, DbKind, Envelope, Message,
    Need, NodeIdentity, Span, WireChange,
};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::config::{ScriptedKind, SimConfig};
use crate::geo;
use crate::model::{self, AppRegionRow, MachineRow, MachineWrite};
use crate::net::{Endpoint, Network, Traffic, TRAFFIC_KINDS};
use crate::node::{
    db_index, held_view, AskStage, Asked, Cluster, Presence, Round, Serving, SimFoca, SimNode,
    SwimEffects, SYNC_INTERVAL, SYNC_PEERS,
};
use crate::report::{self, percentile_ms, round3, Report, Samples, TrafficRates};
use crate::sched::{from_duration, secs, Micros, Scheduler, SimClock};

/// A merge job on a node's writer thread (one SQLite transaction) costs
/// this, plus [`MERGE_PER_CHANGE_US`] per change: the order of what
/// `benches/cluster` measures for remote applies on this machine.
const MERGE_JOB_US: u64 = 150;
const MERGE_PER_CHANGE_US: u64 = 3;
/// A healthy node declared down this soon after a fault touched it (or
/// its observer) is counted as a fault's doing, not a false down.
const FAULT_SHADOW: Micros = 60_000_000;
/// Faults start after the fleet settles and stop before the workload ends.
const FAULTS_FROM: Micros = 5_000_000;
const FAULT_EVERY: Micros = 4_000_000;
/// Every up node of a region must have dropped a crashed leader by then:
/// SWIM's LAN suspicion (2–3 s as tuned for a region's size; ≈ 5 s with
/// foca's own profile pinned at 16 members) plus a probe period and
/// dissemination, with room.
const LEADER_REPLACED_WITHIN: Micros = 20_000_000;
/// Announces to bootstrap / remembered members while foca knows nobody
/// (the agent's `ANNOUNCE_RETRY`).
const ANNOUNCE_RETRY: Micros = 1_000_000;
/// Quiescence is checked this often.
const CONVERGE_CHECK_EVERY: Micros = 500_000;
/// The relay's bound per direction (docs/regions.md).
pub const RELAY_QUEUE_MAX: usize = 4_096;

#[derive(Debug, Clone, Copy)]
enum Heal {
    Node(usize),
    Region(usize),
    Global,
    Link(usize, usize),
}

enum Event {
    SwimTimer {
        node: usize,
        cluster: Cluster,
        epoch: u32,
        incarnation: u32,
        /// Boxed, as the frame's message: events move through the heap,
        /// and most are small.
        timer: Box<Timer<SwimId>>,
    },
    Datagram {
        to: usize,
        epoch: u32,
        cluster: Cluster,
        data: Vec<u8>,
    },
    Push {
        from: usize,
        to: usize,
        epoch: u32,
        cluster: Cluster,
        chunk: Arc<ChangeChunk>,
    },
    Frame {
        from: usize,
        to: usize,
        epoch: u32,
        cluster: Cluster,
        conv: u64,
        to_server: bool,
        message: Box<Message>,
    },
    /// A sync stream's other end finished or reset it: the server refused
    /// it (too busy), or the puller ended it without a pull or gave up.
    Closed {
        to: usize,
        epoch: u32,
        cluster: Cluster,
        conv: u64,
        to_server: bool,
    },
    SyncTick {
        node: usize,
        cluster: Cluster,
        epoch: u32,
        token: u64,
    },
    PullDeadline {
        node: usize,
        cluster: Cluster,
        epoch: u32,
        conv: u64,
    },
    ServeDeadline {
        node: usize,
        cluster: Cluster,
        epoch: u32,
        conv: u64,
    },
    AnnounceRetry {
        node: usize,
        cluster: Cluster,
        epoch: u32,
    },
    Apply {
        node: usize,
        epoch: u32,
        cluster: Cluster,
        chunk: Arc<ChangeChunk>,
        forward: Option<Hop<usize>>,
    },
    RollupDue {
        node: usize,
        epoch: u32,
        token: u64,
    },
    Write {
        region: usize,
    },
    Fault,
    Restart {
        node: usize,
    },
    Heal(Heal),
    Join {
        region: usize,
    },
    LeaderCheck {
        region: usize,
        crashed: usize,
        epoch: u32,
    },
    Scripted(ScriptedKind),
    EndWorkload,
    ConvergeCheck,
    Sample,
}

impl Event {
    /// (kind, node) for the event log.
    fn tag(&self) -> (u8, u64) {
        match self {
            Event::SwimTimer { node, .. } => (0, *node as u64),
            Event::Datagram { to, .. } => (1, *to as u64),
            Event::Push { to, .. } => (2, *to as u64),
            Event::Frame { to, .. } => (3, *to as u64),
            Event::Closed { to, .. } => (4, *to as u64),
            Event::SyncTick { node, .. } => (5, *node as u64),
            Event::PullDeadline { node, .. } => (6, *node as u64),
            Event::ServeDeadline { node, .. } => (7, *node as u64),
            Event::AnnounceRetry { node, .. } => (8, *node as u64),
            Event::Apply { node, .. } => (9, *node as u64),
            Event::RollupDue { node, .. } => (10, *node as u64),
            Event::Write { region } => (11, *region as u64),
            Event::Fault => (12, 0),
            Event::Restart { node } => (13, *node as u64),
            Event::Heal(_) => (14, 0),
            Event::Join { region } => (15, *region as u64),
            Event::LeaderCheck { crashed, .. } => (16, *crashed as u64),
            Event::Scripted(_) => (20, 0),
            Event::EndWorkload => (17, 0),
            Event::ConvergeCheck => (18, 0),
            Event::Sample => (19, 0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Workload,
    Quiescing,
    Done,
}

/// A committed version as its origin cut it: what every node serving it
/// sends (the model keeps one copy for the fleet).
struct VersionRecord {
    chunks: Vec<Arc<ChangeChunk>>,
    /// Encoded `Message::Changes` bytes of each chunk.
    frame_bytes: Vec<usize>,
}

/// A regional write on its way to its region.
struct Delivery {
    at: Micros,
    /// When the last expected node got it so far.
    last: Option<Micros>,
    region: usize,
    /// Per position in the region: still expected.
    waiting: Vec<bool>,
    remaining: usize,
}

/// A change of one `app_regions` row on its way to every node.
struct RollupWait {
    at: Micros,
    last: Option<Micros>,
    present: bool,
    waiting: Vec<bool>,
    remaining: usize,
}

/// An invariant that did not hold.
#[derive(Debug, Clone)]
pub struct Violation {
    pub event: u64,
    pub at: Micros,
    pub invariant: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "event {} at {:.3} s: [{}] {}",
            self.event,
            self.at as f64 / 1e6,
            self.invariant,
            self.detail
        )
    }
}

/// Violations kept per invariant: the first ones name the bug.
const VIOLATIONS_PER_KIND_MAX: usize = 5;

pub struct World {
    cfg: SimConfig,
    clock: SimClock,
    sched: Scheduler<Event>,
    rng: SmallRng,
    net: Network,
    bcast: BroadcastConfig,
    limits: SyncLimits,
    nodes: Vec<SimNode>,
    region_nodes: Vec<Vec<usize>>,
    pos_in_region: Vec<usize>,
    actor_index: BTreeMap<ActorId, usize>,
    region_names: Vec<ClusterName>,
    global_name: ClusterName,
    /// Bytes an `Envelope` adds to its message, per cluster name.
    envelope_bytes: BTreeMap<ClusterName, usize>,
    versions: BTreeMap<(DbKind, ActorId), Vec<VersionRecord>>,
    /// What was written in each region, merged: the truth.
    truth: Vec<Vec<MachineRow>>,
    deliveries: BTreeMap<(ActorId, u64), Delivery>,
    rollup_waits: BTreeMap<(u16, u16), RollupWait>,
    fx: SwimEffects,
    phase: Phase,
    workload_end: Micros,
    stop_at: Micros,
    converged_at: Option<Micros>,
    next_conv: u64,
    events: u64,
    log_hash: u64,
    violations: Vec<Violation>,
    violations_by_kind: BTreeMap<&'static str, usize>,
    /// When a fault last touched each node.
    faulted_at: Vec<Option<Micros>>,
    /// (node, cluster, generation) of crashed incarnations → crash time.
    crashed: BTreeMap<(usize, Cluster, u64), Micros>,
    samples: Samples,
    /// `PATINA_SIM_TRACE=<node>`: print that node's SWIM notifications
    /// and every false down to stderr (debugging a seed).
    trace_node: Option<usize>,
    // Counters.
    regional_writes: u64,
    rollup_versions: u64,
    false_down: u64,
    fault_downs: u64,
    crashes: u64,
    sync_rounds: u64,
    sync_failures: u64,
    regional_incomplete: u64,
    rollup_superseded: u64,
}

fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

fn addr(node: usize, cluster: Cluster) -> SocketAddr {
    let n = node as u32;
    let ip = Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8);
    SocketAddr::new(ip.into(), 7000 + cluster as u16)
}

/// The node at a simulated address ([`addr`]).
fn node_at(addr: &SocketAddr) -> usize {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => {
            let [_, a, b, c] = ip.octets();
            (usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c)
        }
        std::net::IpAddr::V6(_) => usize::MAX,
    }
}

impl World {
    pub fn new(cfg: SimConfig) -> Result<World, crate::config::ConfigError> {
        cfg.validate()?;
        let mut rng = SmallRng::seed_from_u64(cfg.seed);
        let region_names: Vec<ClusterName> = (0..cfg.regions)
            .map(|r| ClusterName::new(geo::region_name(r)).expect("city names are valid"))
            .collect();
        let global_name = ClusterName::new("global").expect("a valid name");
        let mut envelope_bytes = BTreeMap::new();
        for name in region_names.iter().chain([&global_name]) {
            let env = Envelope {
                cluster: name.clone(),
                from: ActorId([1; 16]),
                message: Message::InSync,
            };
            let frame = patina_wire::encode_frame(&env)
                .map(|f| f.len())
                .unwrap_or(0);
            let bare = patina_wire::encode_value(&Message::InSync)
                .map(|v| v.len())
                .unwrap_or(0);
            envelope_bytes.insert(name.clone(), frame.saturating_sub(bare));
        }
        let mut world = World {
            clock: SimClock::new(),
            sched: Scheduler::new(),
            net: Network::new(cfg.loss),
            bcast: BroadcastConfig {
                fanout: cfg.fanout,
                gossip_margin: cfg.gossip_margin,
                ..BroadcastConfig::default()
            },
            limits: SyncLimits::default(),
            nodes: Vec::new(),
            region_nodes: vec![Vec::new(); cfg.regions],
            pos_in_region: Vec::new(),
            actor_index: BTreeMap::new(),
            region_names,
            global_name,
            envelope_bytes,
            versions: BTreeMap::new(),
            truth: vec![vec![MachineRow::default(); cfg.machines_per_region as usize]; cfg.regions],
            deliveries: BTreeMap::new(),
            rollup_waits: BTreeMap::new(),
            fx: SwimEffects::default(),
            phase: Phase::Workload,
            workload_end: secs(cfg.seconds),
            stop_at: secs(cfg.seconds + cfg.quiesce_max_s),
            converged_at: None,
            next_conv: 0,
            events: 0,
            log_hash: 0xcbf2_9ce4_8422_2325,
            violations: Vec::new(),
            violations_by_kind: BTreeMap::new(),
            faulted_at: Vec::new(),
            crashed: BTreeMap::new(),
            samples: Samples::default(),
            trace_node: std::env::var("PATINA_SIM_TRACE")
                .ok()
                .and_then(|v| v.parse().ok()),
            regional_writes: 0,
            rollup_versions: 0,
            false_down: 0,
            fault_downs: 0,
            crashes: 0,
            sync_rounds: 0,
            sync_failures: 0,
            regional_incomplete: 0,
            rollup_superseded: 0,
            rng: SmallRng::seed_from_u64(rng.random()),
            cfg,
        };
        for i in 0..world.cfg.nodes {
            let region = world.cfg.region_of(i);
            let global = world.region_nodes[region].len() < world.cfg.global_per_region;
            world.add_node(region, global);
        }
        // Each node remembers every member of its clusters (its members
        // file), not only those added before it.
        for n in 0..world.nodes.len() {
            let region = world.nodes[n].region;
            let regional: Vec<SwimId> = world.region_nodes[region]
                .iter()
                .filter(|&&m| m != n)
                .map(|&m| SwimId(world.current_identity(m, Cluster::Regional)))
                .collect();
            let global: Vec<SwimId> = (0..world.nodes.len())
                .filter(|&m| m != n && world.nodes[m].global_member)
                .map(|m| SwimId(world.current_identity(m, Cluster::Global)))
                .collect();
            if let Some(p) = world.nodes[n].presence_mut(Cluster::Regional) {
                p.bootstrap = regional;
            }
            if let Some(p) = world.nodes[n].presence_mut(Cluster::Global) {
                p.bootstrap = global;
            }
        }
        // A fleet in its steady state: every node knows its clusters'
        // members (as from its members file) and starts at a random
        // moment of the first second.
        for n in 0..world.nodes.len() {
            let offset = world.rng.random_range(0..secs(1));
            for c in [Cluster::Regional, Cluster::Global] {
                let Some(p) = world.nodes[n].presence(c) else {
                    continue;
                };
                let members: Vec<foca::Member<SwimId>> = p
                    .bootstrap
                    .iter()
                    .cloned()
                    .map(foca::Member::alive)
                    .collect();
                let mut fx = std::mem::take(&mut world.fx);
                if let Some(p) = world.nodes[n].presence_mut(c) {
                    let _ = p.foca.apply_many(members.into_iter(), false, &mut fx);
                }
                world.after_swim(n, c, &mut fx, offset);
                world.fx = fx;
                world.schedule_tick(n, c, offset);
            }
            world.update_leader(n);
        }
        for r in 0..world.cfg.regions {
            if world.cfg.writes_per_region_s > 0.0 {
                let first = world.exp_delay(world.cfg.writes_per_region_s);
                world.sched.at(secs(1) + first, Event::Write { region: r });
            }
        }
        if world.cfg.faults && world.workload_end > FAULTS_FROM + FAULT_EVERY {
            world.sched.at(FAULTS_FROM, Event::Fault);
        }
        if world.cfg.keep_samples {
            world.sched.at(secs(1), Event::Sample);
        }
        for f in world.cfg.script.clone() {
            let at = (f.at_s * 1e6) as Micros;
            world.sched.at(at, Event::Scripted(f.kind));
        }
        world.sched.at(world.workload_end, Event::EndWorkload);
        Ok(world)
    }

    fn exp_delay(&mut self, rate: f64) -> Micros {
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        (-u.ln() / rate * 1e6) as Micros
    }

    fn new_actor(&mut self) -> ActorId {
        loop {
            let actor = ActorId(self.rng.random());
            if actor.0 != [0; 16] && !self.actor_index.contains_key(&actor) {
                return actor;
            }
        }
    }

    fn identity(&self, n: usize, c: Cluster, generation: u64) -> NodeIdentity {
        let node = &self.nodes[n];
        let region = self.region_names[node.region].clone();
        NodeIdentity {
            actor: node.actor,
            addr: addr(n, c),
            cluster: match c {
                Cluster::Regional => region.clone(),
                Cluster::Global => self.global_name.clone(),
            },
            region,
            global_member: node.global_member,
            generation,
        }
    }

    /// A fresh node's SWIM tuning in cluster `c`: the agent's adaptive
    /// one, or foca's own profile pinned at `--swim-cluster-size`.
    fn new_tuning(&self, c: Cluster) -> SwimTuning {
        let profile = match c {
            Cluster::Regional => SwimProfile::Lan,
            Cluster::Global => SwimProfile::Wan,
        };
        match self.cfg.swim_cluster_size {
            0 => SwimTuning::adaptive(profile),
            size => SwimTuning::fixed(profile, size),
        }
    }

    fn new_foca(&mut self, identity: NodeIdentity, config: foca::Config) -> SimFoca {
        let codec = WireCodec::new(identity.cluster.clone(), identity.actor);
        let rng = SmallRng::seed_from_u64(self.rng.random());
        foca::Foca::new(SwimId(identity), config, rng, codec)
    }

    /// As the agent does after every foca call: re-tunes foca when the
    /// cluster's size moved to another power of two.
    fn retune(&mut self, n: usize, c: Cluster) {
        if let Some(p) = self.nodes[n].presence_mut(c) {
            let members = p.foca.num_members() + 1;
            if let Some(config) = p.tuning.observe(members) {
                let _ = p.foca.set_config(config);
            }
        }
    }

    /// Adds a node (at the start, or joining later) with empty databases;
    /// its presences know the identities of the other members of its
    /// clusters as of now (its bootstrap).
    fn add_node(&mut self, region: usize, global: bool) -> usize {
        let n = self.nodes.len();
        let actor = self.new_actor();
        let apps = usize::from(self.cfg.apps);
        let placeholder = NodeIdentity {
            actor,
            addr: addr(n, Cluster::Regional),
            cluster: self.region_names[region].clone(),
            region: self.region_names[region].clone(),
            global_member: global,
            generation: 0,
        };
        self.nodes.push(SimNode {
            actor,
            region,
            global_member: global,
            identity: placeholder,
            up: true,
            left: false,
            epoch: 0,
            lamport: 0,
            own_version: [0; 2],
            books: [
                patina_proto::Bookkeeper::new(actor),
                patina_proto::Bookkeeper::new(actor),
            ],
            combined: patina_proto::Bookkeeper::new(actor),
            digests: [None, None],
            buffered: BTreeMap::new(),
            machines: vec![MachineRow::default(); self.cfg.machines_per_region as usize],
            app_regions: vec![AppRegionRow::default(); apps * self.cfg.regions],
            clusters: [None, None],
            remembered: [Vec::new(), Vec::new()],
            leader: None,
            rollup: global.then(|| RollupSchedule::new(RollupTiming::default())),
            rollup_token: 0,
            writer_free_at: 0,
        });
        self.actor_index.insert(actor, n);
        self.pos_in_region.push(self.region_nodes[region].len());
        self.region_nodes[region].push(n);
        self.faulted_at.push(None);
        self.nodes[n].identity = self.identity(n, Cluster::Regional, 0);
        // Everyone already in the clusters, as identities.
        let regional: Vec<SwimId> = self.region_nodes[region]
            .iter()
            .filter(|&&m| m != n && !self.nodes[m].left)
            .map(|&m| SwimId(self.current_identity(m, Cluster::Regional)))
            .collect();
        let id = self.identity(n, Cluster::Regional, 0);
        let tuning = self.new_tuning(Cluster::Regional);
        let foca = self.new_foca(id, tuning.config());
        let name = self.region_names[region].clone();
        self.nodes[n].clusters[0] = Some(Presence::new(
            Cluster::Regional,
            name,
            foca,
            tuning,
            regional,
            self.bcast.clone(),
        ));
        if global {
            let members: Vec<SwimId> = (0..n)
                .filter(|&m| self.nodes[m].global_member && !self.nodes[m].left)
                .map(|m| SwimId(self.current_identity(m, Cluster::Global)))
                .collect();
            let id = self.identity(n, Cluster::Global, 0);
            let tuning = self.new_tuning(Cluster::Global);
            let foca = self.new_foca(id, tuning.config());
            let name = self.global_name.clone();
            self.nodes[n].clusters[1] = Some(Presence::new(
                Cluster::Global,
                name,
                foca,
                tuning,
                members,
                self.bcast.clone(),
            ));
        }
        n
    }

    fn current_identity(&self, m: usize, c: Cluster) -> NodeIdentity {
        match self.nodes[m].presence(c) {
            Some(p) => p.foca.identity().0.clone(),
            None => self.identity(m, c, 0),
        }
    }

    fn endpoint(&self, n: usize) -> Endpoint {
        Endpoint {
            node: n,
            region: self.nodes[n].region,
        }
    }

    fn violate(&mut self, invariant: &'static str, detail: String) {
        let seen = self.violations_by_kind.entry(invariant).or_default();
        *seen += 1;
        if *seen > VIOLATIONS_PER_KIND_MAX {
            return;
        }
        self.violations.push(Violation {
            event: self.events,
            at: self.sched.now(),
            invariant,
            detail,
        });
    }

    fn now(&self) -> Micros {
        self.sched.now()
    }

    // ---- the loop ----

    pub fn run(mut self) -> (Report, Samples) {
        let started = std::time::Instant::now();
        while self.phase != Phase::Done {
            let Some((at, event)) = self.sched.pop() else {
                break;
            };
            if at > self.stop_at && self.phase == Phase::Quiescing {
                self.give_up();
                break;
            }
            self.events += 1;
            let (kind, node) = event.tag();
            fnv(&mut self.log_hash, &at.to_le_bytes());
            fnv(&mut self.log_hash, &[kind]);
            fnv(&mut self.log_hash, &node.to_le_bytes());
            self.handle(event);
        }
        let wall = started.elapsed().as_secs_f64();
        self.finish(wall)
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::SwimTimer {
                node,
                cluster,
                epoch,
                incarnation,
                timer,
            } => {
                if !self.is_live(node, epoch) {
                    return;
                }
                let mut fx = std::mem::take(&mut self.fx);
                if let Some(p) = self.nodes[node].presence_mut(cluster) {
                    if p.foca_incarnation == incarnation {
                        let _ = p.foca.handle_timer(*timer, &mut fx);
                    }
                }
                self.after_swim(node, cluster, &mut fx, 0);
                self.fx = fx;
            }
            Event::Datagram {
                to,
                epoch,
                cluster,
                data,
            } => {
                if !self.is_live(to, epoch) {
                    return;
                }
                let mut fx = std::mem::take(&mut self.fx);
                if let Some(p) = self.nodes[to].presence_mut(cluster) {
                    let _ = p.foca.handle_data(&data, &mut fx);
                }
                self.after_swim(to, cluster, &mut fx, 0);
                self.fx = fx;
            }
            Event::Push {
                from,
                to,
                epoch,
                cluster,
                chunk,
            } => {
                if self.is_live(to, epoch) {
                    self.on_push(from, to, cluster, chunk);
                }
            }
            Event::Frame {
                from,
                to,
                epoch,
                cluster,
                conv,
                to_server,
                message,
            } => {
                if !self.is_live(to, epoch) {
                    return;
                }
                if let Message::Changes(chunk) = &*message {
                    self.check_isolation(to, cluster, chunk);
                }
                if to_server {
                    self.on_serve_frame(to, cluster, from, conv, *message);
                } else {
                    self.on_pull_frame(to, cluster, conv, PullInput::Frame(*message));
                }
            }
            Event::Closed {
                to,
                epoch,
                cluster,
                conv,
                to_server,
            } => {
                if !self.is_live(to, epoch) {
                    return;
                }
                if to_server {
                    let actions = self.nodes[to]
                        .presence_mut(cluster)
                        .and_then(|p| p.serving.get_mut(&conv))
                        .map(|s| s.session.on_closed())
                        .unwrap_or_default();
                    self.serve_actions(to, cluster, conv, actions);
                } else {
                    self.on_pull_frame(to, cluster, conv, PullInput::Closed);
                }
            }
            Event::SyncTick {
                node,
                cluster,
                epoch,
                token,
            } => {
                let current = self.nodes[node]
                    .presence(cluster)
                    .is_some_and(|p| p.tick_token == token);
                if self.is_live(node, epoch) && current {
                    self.start_round(node, cluster);
                }
            }
            Event::PullDeadline {
                node,
                cluster,
                epoch,
                conv,
            } => {
                if self.is_live(node, epoch) {
                    self.on_pull_frame(node, cluster, conv, PullInput::Deadline);
                }
            }
            Event::ServeDeadline {
                node,
                cluster,
                epoch,
                conv,
            } => {
                if !self.is_live(node, epoch) {
                    return;
                }
                if let Some(p) = self.nodes[node].presence_mut(cluster) {
                    if let Some(mut s) = p.serving.remove(&conv) {
                        let _ = s.session.on_timeout();
                    }
                }
            }
            Event::AnnounceRetry {
                node,
                cluster,
                epoch,
            } => {
                if self.is_live(node, epoch) {
                    self.announce_if_alone(node, cluster);
                }
            }
            Event::Apply {
                node,
                epoch,
                cluster,
                chunk,
                forward,
            } => {
                if self.is_live(node, epoch) {
                    self.apply(node, cluster, chunk, forward);
                }
            }
            Event::RollupDue { node, epoch, token } => {
                if self.is_live(node, epoch) && self.nodes[node].rollup_token == token {
                    self.rollup_due(node);
                }
            }
            Event::Write { region } => self.write(region),
            Event::Fault => self.fault(),
            Event::Restart { node } => self.restart(node),
            Event::Heal(h) => self.heal(h),
            Event::Join { region } => self.join(region),
            Event::LeaderCheck {
                region,
                crashed,
                epoch,
            } => self.leader_check(region, crashed, epoch),
            Event::Scripted(kind) => self.scripted(kind),
            Event::EndWorkload => self.end_workload(),
            Event::ConvergeCheck => self.converge_check(),
            Event::Sample => self.sample(),
        }
    }

    fn is_live(&self, n: usize, epoch: u32) -> bool {
        let node = &self.nodes[n];
        node.up && node.epoch == epoch
    }

    // ---- membership ----

    /// Acts on what foca asked for: sends, timers (`offset` later, for
    /// the staggered start), notifications, and the member list.
    fn after_swim(&mut self, n: usize, c: Cluster, fx: &mut SwimEffects, offset: Micros) {
        let epoch = self.nodes[n].epoch;
        let now = self.now();
        let incarnation = self.nodes[n].presence(c).map_or(0, |p| p.foca_incarnation);
        for (timer, after) in fx.timers.drain(..) {
            self.sched.at(
                now + offset + from_duration(after),
                Event::SwimTimer {
                    node: n,
                    cluster: c,
                    epoch,
                    incarnation,
                    timer: Box::new(timer),
                },
            );
        }
        let Some(name) = self.nodes[n].presence(c).map(|p| p.name.clone()) else {
            fx.sends.clear();
            fx.notes.clear();
            return;
        };
        let overhead = datagram_overhead(&name);
        let from = self.endpoint(n);
        for (dst, data) in std::mem::take(&mut fx.sends) {
            let to = node_at(&dst.0.addr);
            if to >= self.nodes.len() {
                continue;
            }
            let target = self.endpoint(to);
            let delay = self
                .net
                .datagram(from, target, data.len() + overhead, &mut self.rng);
            let dst_node = &self.nodes[to];
            if let (Some(d), true) = (delay, dst_node.up) {
                self.sched.after(
                    d,
                    Event::Datagram {
                        to,
                        epoch: dst_node.epoch,
                        cluster: c,
                        data,
                    },
                );
            }
        }
        let mut rejoined = None;
        if self.trace_node == Some(n) {
            for note in &fx.notes {
                eprintln!("{now} node {n} {c:?}: {note:?}");
            }
        }
        for note in std::mem::take(&mut fx.notes) {
            match note {
                OwnedNotification::MemberDown(id) => self.on_member_down(n, c, &id),
                OwnedNotification::Rejoin(id) => rejoined = Some(id),
                _ => {}
            }
        }
        if let Some(id) = rejoined {
            self.restart_foca(n, c, id);
        }
        self.retune(n, c);
        self.refresh_members(n, c);
    }

    /// As the agent does on `Rejoin`: a fresh foca as the renewed
    /// identity, announcing to every member the old one knew.
    fn restart_foca(&mut self, n: usize, c: Cluster, id: SwimId) {
        let Some(p) = self.nodes[n].presence(c) else {
            return;
        };
        let known: Vec<SwimId> = p
            .foca
            .iter_members()
            .map(|m| m.id().clone())
            .filter(|m| m.0.actor != id.0.actor)
            .collect();
        let config = p.tuning.config();
        let foca = self.new_foca(id.0, config);
        let mut fx = SwimEffects::default();
        if let Some(p) = self.nodes[n].presence_mut(c) {
            p.foca = foca;
            p.foca_incarnation += 1;
            for member in known {
                let _ = p.foca.announce(member, &mut fx);
            }
        }
        self.after_swim(n, c, &mut fx, 0);
    }

    fn on_member_down(&mut self, observer: usize, c: Cluster, id: &SwimId) {
        let Some(&subject) = self.actor_index.get(&id.0.actor) else {
            return;
        };
        let now = self.now();
        if let Some(&at) = self.crashed.get(&(subject, c, id.0.generation)) {
            if c == Cluster::Regional {
                self.samples.crash_detect.push(now - at);
            }
            return;
        }
        let s = &self.nodes[subject];
        if s.left || !s.up {
            return;
        }
        let current = s
            .presence(c)
            .is_some_and(|p| p.foca.identity().0.generation == id.0.generation);
        if !current {
            // An older incarnation (renewed after being declared down).
            return;
        }
        let recent =
            |n: usize| self.faulted_at[n].is_some_and(|t| now.saturating_sub(t) < FAULT_SHADOW);
        let reachable = self
            .net
            .reachable(self.endpoint(observer), self.endpoint(subject))
            && self
                .net
                .reachable(self.endpoint(subject), self.endpoint(observer));
        if recent(subject) || recent(observer) || !reachable {
            self.fault_downs += 1;
        } else {
            self.false_down += 1;
            if self.trace_node.is_some() {
                eprintln!(
                    "false down at {now}: observer {observer} (region {}) {c:?} subject {subject} (region {}, gen {}), faulted {:?} {:?}, up {}",
                    self.nodes[observer].region,
                    s.region,
                    id.0.generation,
                    self.faulted_at[observer],
                    self.faulted_at[subject],
                    s.up
                );
            }
        }
    }

    fn refresh_members(&mut self, n: usize, c: Cluster) {
        let me = self.nodes[n].actor;
        let Some(p) = self.nodes[n].presence(c) else {
            return;
        };
        let mut alive: Vec<usize> = p
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Alive && m.id().0.actor != me)
            .map(|m| node_at(&m.id().0.addr))
            .collect();
        alive.sort_unstable();
        alive.dedup();
        if alive == p.alive {
            return;
        }
        if let Some(p) = self.nodes[n].presence_mut(c) {
            p.alive = alive;
        }
        self.activity(n, c);
        if c == Cluster::Regional {
            self.update_leader(n);
        }
    }

    fn announce_if_alone(&mut self, n: usize, c: Cluster) {
        let epoch = self.nodes[n].epoch;
        let Some(p) = self.nodes[n].presence(c) else {
            return;
        };
        if p.foca.iter_members().next().is_some() {
            return;
        }
        let targets = p.bootstrap.clone();
        let mut fx = std::mem::take(&mut self.fx);
        if let Some(p) = self.nodes[n].presence_mut(c) {
            for t in targets {
                let _ = p.foca.announce(t, &mut fx);
            }
        }
        self.after_swim(n, c, &mut fx, 0);
        self.fx = fx;
        self.sched.after(
            ANNOUNCE_RETRY,
            Event::AnnounceRetry {
                node: n,
                cluster: c,
                epoch,
            },
        );
    }

    /// The region's leader as `n` sees it; a global member's rollup
    /// schedule follows its own leadership.
    fn update_leader(&mut self, n: usize) {
        let node = &self.nodes[n];
        let Some(p) = node.presence(Cluster::Regional) else {
            return;
        };
        let mut candidates: Vec<ActorId> = p
            .alive
            .iter()
            .filter(|&&m| self.nodes[m].global_member)
            .map(|&m| self.nodes[m].actor)
            .collect();
        if node.global_member {
            candidates.push(node.actor);
        }
        let leader = region_leader(candidates).and_then(|a| self.actor_index.get(&a).copied());
        let now = self.clock.instant(self.now());
        let node = &mut self.nodes[n];
        node.leader = leader;
        if let Some(schedule) = node.rollup.as_mut() {
            schedule.on_leadership(leader == Some(n), now);
        }
        self.schedule_rollup(n);
    }

    // ---- sync ----

    fn schedule_tick(&mut self, n: usize, c: Cluster, delay: Micros) {
        let at = self.now() + delay;
        let epoch = self.nodes[n].epoch;
        let Some(p) = self.nodes[n].presence_mut(c) else {
            return;
        };
        p.tick_token += 1;
        p.tick_at = at;
        let token = p.tick_token;
        self.sched.at(
            at,
            Event::SyncTick {
                node: n,
                cluster: c,
                epoch,
                token,
            },
        );
    }

    /// Something a round may have to spread or repair happened: rounds
    /// run at the fastest pace, the next one at most `SYNC_INTERVAL`
    /// after the last.
    fn activity(&mut self, n: usize, c: Cluster) {
        let now = self.now();
        let Some(p) = self.nodes[n].presence_mut(c) else {
            return;
        };
        p.pace.on_activity();
        if p.round.is_some() {
            return;
        }
        let soonest = (p.last_round_end + from_duration(SYNC_INTERVAL)).max(now);
        if soonest < p.tick_at {
            self.schedule_tick(n, c, soonest - now);
        }
    }

    fn start_round(&mut self, n: usize, c: Cluster) {
        let now = self.now();
        let instant = self.clock.instant(now);
        let Some(digest) = self.nodes[n].held_digest(c) else {
            return;
        };
        let limits = self.limits.clone();
        let p = self.nodes[n].presence_mut(c).expect("held_digest() saw it");
        if p.round.is_some() {
            return;
        }
        let peers = p.alive.clone();
        let mut chosen: Vec<usize> = p
            .hinted
            .drain(..)
            .filter(|h| peers.contains(h))
            .take(SYNC_PEERS)
            .collect();
        let others: Vec<usize> = peers
            .iter()
            .filter(|q| !chosen.contains(q))
            .copied()
            .collect();
        let room = SYNC_PEERS.saturating_sub(chosen.len());
        chosen.extend(patina_proto::choose_peers(&others, room, &mut self.rng));
        if chosen.is_empty() {
            let interval = from_duration(p.pace.interval());
            p.last_round_end = now;
            self.schedule_tick(n, c, interval);
            return;
        }
        self.sync_rounds += 1;
        let mut round = Round {
            asked: BTreeMap::new(),
            quiet: true,
        };
        let mut opening = Vec::new();
        for peer in chosen {
            let conv = self.next_conv;
            self.next_conv += 1;
            let mut session = PullSession::new(c.carried(), limits.clone(), instant);
            let actions = session.open_with_digest(digest);
            let deadline = session.deadline();
            round.asked.insert(
                conv,
                Asked {
                    peer,
                    session,
                    summary: None,
                    stage: AskStage::Asking,
                    last_arrival: 0,
                },
            );
            opening.push((conv, peer, actions, deadline));
        }
        let p = self.nodes[n].presence_mut(c).expect("checked above");
        p.round = Some(round);
        for (conv, peer, actions, deadline) in opening {
            self.schedule_pull_deadline(n, c, conv, deadline);
            for a in actions {
                if let PullAction::Send(m) = a {
                    self.send_pull_frame(n, c, conv, peer, m);
                }
            }
        }
    }

    fn schedule_pull_deadline(
        &mut self,
        n: usize,
        c: Cluster,
        conv: u64,
        deadline: Option<std::time::Instant>,
    ) {
        if let Some(at) = deadline {
            let epoch = self.nodes[n].epoch;
            self.sched.at(
                self.clock.micros(at),
                Event::PullDeadline {
                    node: n,
                    cluster: c,
                    epoch,
                    conv,
                },
            );
        }
    }

    fn frame_bytes(&self, cluster: &ClusterName, message: &Message) -> usize {
        let envelope = self.envelope_bytes.get(cluster).copied().unwrap_or(0);
        let body = match message {
            Message::Changes(chunk) => self.chunk_frame_bytes(chunk),
            other => patina_wire::encode_value(other)
                .map(|v| v.len())
                .unwrap_or(0),
        };
        envelope + body
    }

    fn chunk_frame_bytes(&self, chunk: &ChangeChunk) -> usize {
        self.versions
            .get(&(chunk.db, chunk.actor))
            .and_then(|vs| vs.get(chunk.version as usize - 1))
            .and_then(|v| {
                v.chunks
                    .iter()
                    .position(|c| c.seqs == chunk.seqs)
                    .map(|i| v.frame_bytes[i])
            })
            .unwrap_or(0)
    }

    /// Sends `message` on a stream, after `last_arrival` (frames of a
    /// stream arrive in order); returns the new last arrival, `None` when
    /// the frame was dropped.
    #[allow(clippy::too_many_arguments)]
    fn send_stream_frame(
        &mut self,
        from: usize,
        to: usize,
        c: Cluster,
        conv: u64,
        to_server: bool,
        message: Message,
        last_arrival: Micros,
    ) -> Option<Micros> {
        let name = self.nodes[from].presence(c)?.name.clone();
        let bytes = self.frame_bytes(&name, &message);
        let delay = self.net.frame(
            self.endpoint(from),
            self.endpoint(to),
            bytes,
            Traffic::Sync,
            &mut self.rng,
        )?;
        if let Message::Changes(chunk) = &message {
            if c == Cluster::Global && chunk.db == DbKind::Regional {
                self.violate(
                    "isolation",
                    format!(
                        "node {from} sent regional version {} of {} on the global cluster (sync)",
                        chunk.version, chunk.actor
                    ),
                );
            }
        }
        let arrival = (self.now() + delay).max(last_arrival);
        let dst = &self.nodes[to];
        if dst.up {
            self.sched.at(
                arrival,
                Event::Frame {
                    from,
                    to,
                    epoch: dst.epoch,
                    cluster: c,
                    conv,
                    to_server,
                    message: Box::new(message),
                },
            );
        }
        Some(arrival)
    }

    fn send_pull_frame(&mut self, n: usize, c: Cluster, conv: u64, peer: usize, m: Message) {
        let last = self.nodes[n]
            .presence(c)
            .and_then(|p| p.round.as_ref())
            .and_then(|r| r.asked.get(&conv))
            .map_or(0, |a| a.last_arrival);
        if let Some(arrival) = self.send_stream_frame(n, peer, c, conv, true, m, last) {
            if let Some(a) = self.nodes[n]
                .presence_mut(c)
                .and_then(|p| p.round.as_mut())
                .and_then(|r| r.asked.get_mut(&conv))
            {
                a.last_arrival = arrival;
            }
        }
    }

    /// The puller finished or reset stream `conv`: the server hears of it
    /// after the stream's last frame.
    fn close_to_server(&mut self, n: usize, c: Cluster, conv: u64, peer: usize) {
        let last = self.nodes[n]
            .presence(c)
            .and_then(|p| p.round.as_ref())
            .and_then(|r| r.asked.get(&conv))
            .map_or(0, |a| a.last_arrival);
        let (from, to) = (self.endpoint(n), self.endpoint(peer));
        if !self.net.reachable(from, to) {
            return;
        }
        let at = (self.now() + Network::base_one_way_us(from, to) as Micros).max(last);
        let dst = &self.nodes[peer];
        if dst.up {
            self.sched.at(
                at,
                Event::Closed {
                    to: peer,
                    epoch: dst.epoch,
                    cluster: c,
                    conv,
                    to_server: true,
                },
            );
        }
    }

    fn on_serve_frame(&mut self, n: usize, c: Cluster, from: usize, conv: u64, message: Message) {
        let now = self.now();
        let instant = self.clock.instant(now);
        let limits = self.limits.clone();
        let epoch = self.nodes[n].epoch;
        let Some(p) = self.nodes[n].presence_mut(c) else {
            return;
        };
        if !p.serving.contains_key(&conv) {
            if !matches!(message, Message::DigestRequest(_) | Message::SummaryRequest) {
                return;
            }
            let of_peer = p.serving.values().filter(|s| s.peer == from).count();
            if limits.admits(p.serving.len(), of_peer).is_err() {
                let dst = &self.nodes[from];
                let back = Network::base_one_way_us(self.endpoint(n), self.endpoint(from));
                if dst.up {
                    self.sched.after(
                        back as Micros,
                        Event::Closed {
                            to: from,
                            epoch: dst.epoch,
                            cluster: c,
                            conv,
                            to_server: false,
                        },
                    );
                }
                return;
            }
            let session = ServeSession::new(c.carried(), limits, instant);
            let deadline = self.clock.micros(session.deadline());
            p.serving.insert(
                conv,
                Serving {
                    peer: from,
                    session,
                    last_arrival: 0,
                },
            );
            self.sched.at(
                deadline,
                Event::ServeDeadline {
                    node: n,
                    cluster: c,
                    epoch,
                    conv,
                },
            );
        }
        let p = self.nodes[n].presence_mut(c).expect("checked above");
        let actions = p
            .serving
            .get_mut(&conv)
            .map(|s| s.session.on_frame(message))
            .unwrap_or_default();
        self.serve_actions(n, c, conv, actions);
    }

    fn serve_actions(&mut self, n: usize, c: Cluster, conv: u64, actions: Vec<ServeAction>) {
        for action in actions {
            let Some(peer) = self.nodes[n]
                .presence(c)
                .and_then(|p| p.serving.get(&conv))
                .map(|s| s.peer)
            else {
                return;
            };
            match action {
                ServeAction::SendSummary => {
                    let node = &self.nodes[n];
                    let summary = node
                        .presence(c)
                        .map(|p| {
                            held_view(&node.books, &node.combined, &p.queued, c)
                                .summary(SUMMARY_SPANS_MAX)
                        })
                        .unwrap_or_default();
                    self.serve_send(n, c, conv, peer, Message::Summary(summary));
                }
                ServeAction::CheckDigest(theirs) => {
                    let mine = self.nodes[n].held_digest(c);
                    let same = mine == Some(theirs);
                    if !same {
                        if let Some(p) = self.nodes[n].presence_mut(c) {
                            if !p.hinted.contains(&peer) {
                                p.hinted.push(peer);
                            }
                        }
                        self.activity(n, c);
                    }
                    let more = self.nodes[n]
                        .presence_mut(c)
                        .and_then(|p| p.serving.get_mut(&conv))
                        .map(|s| s.session.digest_checked(same))
                        .unwrap_or_default();
                    self.serve_actions(n, c, conv, more);
                }
                ServeAction::Serve(needs) => self.serve(n, c, conv, peer, &needs),
                ServeAction::Send(m) => self.serve_send(n, c, conv, peer, m),
                ServeAction::Count(_) => {}
                ServeAction::Finish | ServeAction::Fail(_) => {
                    if let Some(p) = self.nodes[n].presence_mut(c) {
                        p.serving.remove(&conv);
                    }
                }
            }
        }
    }

    fn serve_send(&mut self, n: usize, c: Cluster, conv: u64, peer: usize, m: Message) {
        let last = self.nodes[n]
            .presence(c)
            .and_then(|p| p.serving.get(&conv))
            .map_or(0, |s| s.last_arrival);
        if let Some(arrival) = self.send_stream_frame(n, peer, c, conv, false, m, last) {
            if let Some(s) = self.nodes[n]
                .presence_mut(c)
                .and_then(|p| p.serving.get_mut(&conv))
            {
                s.last_arrival = arrival;
            }
        }
    }

    /// The chunks answering `needs`, from what this node has merged.
    fn serve(&mut self, n: usize, c: Cluster, conv: u64, peer: usize, needs: &[Need]) {
        let mut out: Vec<Arc<ChangeChunk>> = Vec::new();
        for need in needs {
            let (db, actor, span, seqs) = match need {
                Need::Versions {
                    db,
                    actor,
                    versions,
                } => (*db, *actor, *versions, None),
                Need::Seqs {
                    db,
                    actor,
                    version,
                    seqs,
                } => (*db, *actor, Span::new(*version, *version), Some(seqs)),
            };
            let book = &self.nodes[n].books[db_index(db)];
            let Some(records) = self.versions.get(&(db, actor)) else {
                continue;
            };
            let end = span.end.min(records.len() as u64);
            for v in span.start.max(1)..=end {
                if !book.holds(db, actor, v) {
                    continue;
                }
                for chunk in &records[v as usize - 1].chunks {
                    let wanted = seqs.is_none_or(|seqs| {
                        seqs.iter()
                            .any(|s| s.start <= chunk.seqs.end && chunk.seqs.start <= s.end)
                    });
                    if wanted {
                        out.push(Arc::clone(chunk));
                    }
                }
            }
        }
        for chunk in out {
            let bytes = self.chunk_frame_bytes(&chunk);
            let keep_going = self.nodes[n]
                .presence_mut(c)
                .and_then(|p| p.serving.get_mut(&conv))
                .is_some_and(|s| s.session.spend(bytes));
            self.serve_send(n, c, conv, peer, Message::Changes((*chunk).clone()));
            if !keep_going {
                break;
            }
        }
    }

    fn on_pull_frame(&mut self, n: usize, c: Cluster, conv: u64, input: PullInput) {
        let now = self.now();
        let instant = self.clock.instant(now);
        let Some(asked) = self.nodes[n]
            .presence_mut(c)
            .and_then(|p| p.round.as_mut())
            .and_then(|r| r.asked.get_mut(&conv))
        else {
            return;
        };
        let actions = match input {
            PullInput::Frame(m) => asked.session.on_frame(m, instant),
            PullInput::Closed => asked.session.on_closed(),
            PullInput::Deadline => match asked.session.deadline() {
                Some(d) if d > instant => {
                    let d = Some(d);
                    self.schedule_pull_deadline(n, c, conv, d);
                    return;
                }
                _ => asked
                    .session
                    .on_timeout(instant)
                    .map(|f| vec![PullAction::Fail(f)])
                    .unwrap_or_default(),
            },
        };
        let peer = asked.peer;
        for action in actions {
            match action {
                PullAction::Send(m) => self.send_pull_frame(n, c, conv, peer, m),
                PullAction::Plan(summary) => {
                    self.set_stage(n, c, conv, AskStage::Answered, Some(summary));
                }
                PullAction::InSync => self.set_stage(n, c, conv, AskStage::InSync, None),
                PullAction::Apply(chunks) => {
                    for chunk in chunks {
                        self.enqueue_apply(n, c, Arc::new(chunk), None);
                    }
                    if let Some(a) = self.nodes[n]
                        .presence_mut(c)
                        .and_then(|p| p.round.as_mut())
                        .and_then(|r| r.asked.get_mut(&conv))
                    {
                        a.session.on_applied(instant);
                    }
                }
                PullAction::Refuse(chunk) => self.violate(
                    "isolation",
                    format!(
                        "node {n} was served regional version {} of {} on the global cluster",
                        chunk.version, chunk.actor
                    ),
                ),
                PullAction::Finish => self.set_stage(n, c, conv, AskStage::Done, None),
                PullAction::Fail(_) => {
                    self.sync_failures += 1;
                    self.set_stage(n, c, conv, AskStage::Failed, None);
                    self.close_to_server(n, c, conv, peer);
                }
                PullAction::Count(_) => {}
                // The modelled storage keeps no tombstones, so no simulated
                // server sends collection floors or is stale (docs/sim.md).
                PullAction::Collected(_) => {}
                PullAction::Declined(_) => self.set_stage(n, c, conv, AskStage::Failed, None),
            }
        }
        self.advance_round(n, c);
    }

    fn set_stage(
        &mut self,
        n: usize,
        c: Cluster,
        conv: u64,
        stage: AskStage,
        summary: Option<patina_wire::Summary>,
    ) {
        let Some(p) = self.nodes[n].presence_mut(c) else {
            return;
        };
        let Some(round) = p.round.as_mut() else {
            return;
        };
        let Some(a) = round.asked.get_mut(&conv) else {
            return;
        };
        let was_pulling = a.stage == AskStage::Pulling;
        a.stage = stage;
        if summary.is_some() {
            a.summary = summary;
        }
        if !matches!(stage, AskStage::InSync | AskStage::Done) {
            round.quiet = false;
        }
        match stage {
            AskStage::Done if was_pulling => p.planner.on_pull_done(&a.peer),
            AskStage::Failed if was_pulling => p.planner.on_pull_failed(&a.peer),
            _ => {}
        }
    }

    /// Plans once every asked peer answered (or failed); ends the round
    /// once every conversation has.
    fn advance_round(&mut self, n: usize, c: Cluster) {
        let now = self.now();
        let instant = self.clock.instant(now);
        let Some(round) = self.nodes[n].presence(c).and_then(|p| p.round.as_ref()) else {
            return;
        };
        let asking = round.asked.values().any(|a| a.stage == AskStage::Asking);
        let to_plan = round.asked.values().any(|a| a.stage == AskStage::Answered);
        if !asking && to_plan {
            let node = &mut self.nodes[n];
            let SimNode {
                books,
                combined,
                clusters,
                ..
            } = node;
            let Some(p) = clusters[c.index()].as_mut() else {
                return;
            };
            let round = p.round.as_mut().expect("checked above");
            let summaries: Vec<(usize, patina_wire::Summary)> = round
                .asked
                .values()
                .filter(|a| a.stage == AskStage::Answered)
                .filter_map(|a| a.summary.clone().map(|s| (a.peer, s)))
                .collect();
            for a in round.asked.values_mut() {
                a.summary = None;
            }
            let held = held_view(books, combined, &p.queued, c);
            let plan = p.planner.plan(instant, &held, &summaries);
            drop(held);
            let mut sends = Vec::new();
            let mut closes = Vec::new();
            for (&conv, a) in round.asked.iter_mut() {
                if a.stage != AskStage::Answered {
                    continue;
                }
                let needs = plan
                    .iter()
                    .find(|(q, _)| *q == a.peer)
                    .map(|(_, needs)| needs.clone())
                    .unwrap_or_default();
                let actions = a.session.pull(needs, instant);
                a.stage = AskStage::Done;
                for action in actions {
                    if let PullAction::Send(m) = action {
                        a.stage = AskStage::Pulling;
                        sends.push((conv, a.peer, m, a.session.deadline()));
                    }
                }
                if a.stage == AskStage::Done {
                    // Nothing to pull: the stream is finished, which ends
                    // the peer's side too.
                    closes.push((conv, a.peer));
                }
            }
            for (conv, peer) in closes {
                self.close_to_server(n, c, conv, peer);
            }
            for (conv, peer, m, deadline) in sends {
                self.schedule_pull_deadline(n, c, conv, deadline);
                self.send_pull_frame(n, c, conv, peer, m);
            }
        }
        let p = self.nodes[n].presence_mut(c).expect("checked above");
        let Some(round) = p.round.as_ref() else {
            return;
        };
        let over = round.asked.values().all(|a| {
            matches!(
                a.stage,
                AskStage::InSync | AskStage::Done | AskStage::Failed
            )
        });
        if over {
            let quiet = round.quiet;
            p.round = None;
            p.pace.on_round(quiet);
            p.last_round_end = now;
            let interval = from_duration(p.pace.interval());
            self.schedule_tick(n, c, interval);
        }
    }

    // ---- broadcast, merge, relay ----

    /// Pushes `chunks` from `n` on cluster `c` as `hop` says; counted as
    /// `kind`.
    fn broadcast(
        &mut self,
        n: usize,
        c: Cluster,
        chunks: Vec<Arc<ChangeChunk>>,
        hop: Hop<usize>,
        kind: Traffic,
    ) {
        let Some(first) = chunks.first() else {
            return;
        };
        if c == Cluster::Global && first.db == DbKind::Regional {
            return;
        }
        let mut actor = [0u8; 8];
        actor.copy_from_slice(&first.actor.0[..8]);
        let spread = u64::from_le_bytes(actor) ^ first.version;
        let Some(p) = self.nodes[n].clusters[c.index()].as_mut() else {
            return;
        };
        let targets = self
            .bcast
            .targets(&n, &hop, &p.alive, spread, &mut self.rng);
        p.queue.on_commit(chunks, &targets);
        let (len, bytes) = (p.queue.len(), p.queue.queued_bytes());
        let sends: Vec<(usize, Arc<ChangeChunk>)> = p.queue.by_ref().collect();
        if len > self.bcast.queued_sends_max || bytes > self.bcast.queued_bytes_max {
            self.violate(
                "queue-bound",
                format!("node {n}: broadcast queue holds {len} sends / {bytes} bytes"),
            );
        }
        if kind == Traffic::Relay && len > RELAY_QUEUE_MAX {
            self.violate(
                "queue-bound",
                format!("node {n}: relay queue holds {len} chunks"),
            );
        }
        for (to, chunk) in sends {
            self.push(n, to, c, chunk, kind);
        }
    }

    fn push(&mut self, from: usize, to: usize, c: Cluster, chunk: Arc<ChangeChunk>, kind: Traffic) {
        let name = match self.nodes[from].presence(c) {
            Some(p) => p.name.clone(),
            None => return,
        };
        let bytes =
            self.envelope_bytes.get(&name).copied().unwrap_or(0) + self.chunk_frame_bytes(&chunk);
        let Some(delay) = self.net.frame(
            self.endpoint(from),
            self.endpoint(to),
            bytes,
            kind,
            &mut self.rng,
        ) else {
            return;
        };
        let dst = &self.nodes[to];
        if dst.up {
            self.sched.after(
                delay,
                Event::Push {
                    from,
                    to,
                    epoch: dst.epoch,
                    cluster: c,
                    chunk,
                },
            );
        }
    }

    fn check_isolation(&mut self, to: usize, c: Cluster, chunk: &ChangeChunk) {
        if chunk.db != DbKind::Regional {
            return;
        }
        let origin = self
            .actor_index
            .get(&chunk.actor)
            .map(|&o| self.nodes[o].region);
        if c == Cluster::Global || origin != Some(self.nodes[to].region) {
            self.violate(
                "isolation",
                format!(
                    "regional version {} of node {:?} (region {:?}) reached node {to} of region {} on the {:?} cluster",
                    chunk.version,
                    self.actor_index.get(&chunk.actor),
                    origin.map(geo::region_name),
                    geo::region_name(self.nodes[to].region),
                    c
                ),
            );
        }
    }

    fn on_push(&mut self, from: usize, to: usize, c: Cluster, chunk: Arc<ChangeChunk>) {
        self.check_isolation(to, c, &chunk);
        let Some(p) = self.nodes[to].presence(c) else {
            return;
        };
        let from_origin = self.nodes[from].actor == chunk.actor;
        let decision = self
            .bcast
            .forward_policy(true)
            .on_arrival(from, from_origin, &p.alive);
        let after_merge = match decision {
            Forward::OnArrival(hop) => {
                self.broadcast(to, c, vec![Arc::clone(&chunk)], hop, Traffic::Broadcast);
                None
            }
            Forward::IfFresh(hop) => Some(hop),
            Forward::Never => None,
        };
        self.enqueue_apply(to, c, chunk, after_merge);
    }

    /// Queues a received chunk for the writer thread: it counts as held
    /// for sync at once (`QueuedVersions`) and merges when the writer gets
    /// to it.
    fn enqueue_apply(
        &mut self,
        n: usize,
        c: Cluster,
        chunk: Arc<ChangeChunk>,
        forward: Option<Hop<usize>>,
    ) {
        let now = self.now();
        let node = &mut self.nodes[n];
        let Some(p) = node.clusters[c.index()].as_mut() else {
            return;
        };
        p.queued.entered(&chunk);
        let cost = MERGE_JOB_US + MERGE_PER_CHANGE_US * chunk.changes.len() as u64;
        let at = node.writer_free_at.max(now) + cost;
        node.writer_free_at = at;
        let epoch = node.epoch;
        self.sched.at(
            at,
            Event::Apply {
                node: n,
                epoch,
                cluster: c,
                chunk,
                forward,
            },
        );
    }

    fn apply(
        &mut self,
        n: usize,
        c: Cluster,
        chunk: Arc<ChangeChunk>,
        forward: Option<Hop<usize>>,
    ) {
        if let Some(p) = self.nodes[n].presence_mut(c) {
            p.queued.left(&chunk);
        }
        let db = chunk.db;
        let di = db_index(db);
        let key = (db, chunk.actor, chunk.version);
        let fate = self.nodes[n].books[di].classify(&chunk);
        let fresh = match fate {
            ChunkFate::Duplicate => false,
            ChunkFate::Buffer => {
                let node = &mut self.nodes[n];
                node.book_buffered(db, chunk.actor, chunk.version, chunk.last_seq, chunk.seqs);
                node.buffered
                    .entry(key)
                    .or_default()
                    .push(Arc::clone(&chunk));
                true
            }
            ChunkFate::Complete { buffered } => {
                let mut all = if buffered {
                    self.nodes[n].buffered.remove(&key).unwrap_or_default()
                } else {
                    Vec::new()
                };
                all.push(Arc::clone(&chunk));
                self.nodes[n].book_applied(db, chunk.actor, chunk.version);
                self.merge_content(n, db, chunk.actor, &all);
                self.on_version_merged(n, db, chunk.actor, chunk.version);
                true
            }
        };
        if !fresh {
            return;
        }
        self.activity(n, Cluster::Regional);
        self.activity(n, Cluster::Global);
        if let Some(hop) = forward {
            self.broadcast(n, c, vec![Arc::clone(&chunk)], hop, Traffic::Broadcast);
        }
        // The relay: a global change new here crosses to the other cluster.
        if self.nodes[n].global_member && db == DbKind::Global {
            let other = match c {
                Cluster::Regional => Cluster::Global,
                Cluster::Global => Cluster::Regional,
            };
            self.broadcast(n, other, vec![chunk], Hop::Relayed, Traffic::Relay);
        }
    }

    /// The rows a complete version writes, merged into node `n`.
    fn merge_content(&mut self, n: usize, db: DbKind, actor: ActorId, chunks: &[Arc<ChangeChunk>]) {
        let writer = self.actor_index.get(&actor).copied().unwrap_or(0) as u32;
        let regions = self.cfg.regions;
        let changes: Vec<&WireChange> = chunks.iter().flat_map(|c| c.changes.iter()).collect();
        let owned: Vec<WireChange> = changes.into_iter().cloned().collect();
        match db {
            DbKind::Regional => {
                let node = &mut self.nodes[n];
                let mut touched = false;
                for (clock, w) in model::decode_machines(&owned) {
                    node.lamport = node.lamport.max(clock);
                    if let Some(row) = node.machines.get_mut(w.machine as usize) {
                        touched |= row.merge(clock, writer, &w);
                    }
                }
                if touched {
                    let now = self.clock.instant(self.now());
                    if let Some(s) = self.nodes[n].rollup.as_mut() {
                        s.on_source_change(now);
                    }
                    self.schedule_rollup(n);
                }
            }
            DbKind::Global => {
                let now = self.now();
                for (clock, app, region, present) in model::decode_app_regions(&owned) {
                    let node = &mut self.nodes[n];
                    node.lamport = node.lamport.max(clock);
                    let i = usize::from(app) * regions + usize::from(region);
                    let Some(row) = node.app_regions.get_mut(i) else {
                        continue;
                    };
                    if !row.merge(clock, writer, present) {
                        continue;
                    }
                    let held = row.present;
                    if let Some(w) = self.rollup_waits.get_mut(&(app, region)) {
                        if w.present == held && w.waiting.get(n).copied().unwrap_or(false) {
                            w.waiting[n] = false;
                            w.remaining -= 1;
                            w.last = Some(now);
                            if w.remaining == 0 {
                                let at = w.at;
                                self.samples.rollup.push(now - at);
                                self.rollup_waits.remove(&(app, region));
                            }
                        }
                    }
                }
            }
        }
    }

    fn on_version_merged(&mut self, n: usize, db: DbKind, actor: ActorId, version: u64) {
        if db != DbKind::Regional {
            return;
        }
        let now = self.now();
        let pos = self.pos_in_region[n];
        let Some(d) = self.deliveries.get_mut(&(actor, version)) else {
            return;
        };
        if d.region != self.nodes[n].region || !d.waiting.get(pos).copied().unwrap_or(false) {
            return;
        }
        d.waiting[pos] = false;
        d.remaining -= 1;
        d.last = Some(now);
        let at = d.at;
        // Kept whatever `keep_samples` says: the p99 over (write, node)
        // pairs needs them all (8 bytes each, ~12 MB at 5,000 nodes × 60 s).
        self.samples.regional_node.push(now - at);
        if d.remaining == 0 {
            self.samples.regional_write.push(now - at);
            self.deliveries.remove(&(actor, version));
        }
    }

    /// A transaction committed on node `n`: booked, merged locally and
    /// broadcast by every cluster that carries its database.
    fn commit(&mut self, n: usize, db: DbKind, changes: Vec<WireChange>) -> u64 {
        let now = self.now();
        let di = db_index(db);
        let actor = self.nodes[n].actor;
        self.nodes[n].own_version[di] += 1;
        let version = self.nodes[n].own_version[di];
        let chunks: Vec<Arc<ChangeChunk>> = chunk_changes(db, actor, version, 0, changes)
            .into_iter()
            .map(|mut c| {
                c.committed_ms = now / 1_000;
                Arc::new(c)
            })
            .collect();
        let frame_bytes = chunks
            .iter()
            .map(|c| {
                patina_wire::encode_value(&Message::Changes((**c).clone()))
                    .map(|v| v.len())
                    .unwrap_or(0)
            })
            .collect();
        let records = self.versions.entry((db, actor)).or_default();
        debug_assert_eq!(records.len() as u64 + 1, version);
        records.push(VersionRecord {
            chunks: chunks.clone(),
            frame_bytes,
        });
        self.nodes[n].book_own(db, version);
        self.merge_content(n, db, actor, &chunks);
        self.activity(n, Cluster::Regional);
        self.activity(n, Cluster::Global);
        self.broadcast(
            n,
            Cluster::Regional,
            chunks.clone(),
            Hop::Local,
            Traffic::Broadcast,
        );
        if db == DbKind::Global {
            self.broadcast(n, Cluster::Global, chunks, Hop::Local, Traffic::Broadcast);
        }
        version
    }

    // ---- rollups ----

    fn schedule_rollup(&mut self, n: usize) {
        let epoch = self.nodes[n].epoch;
        let Some(at) = self.nodes[n].rollup.as_ref().and_then(|s| s.next_run()) else {
            return;
        };
        let at = self.clock.micros(at);
        let node = &mut self.nodes[n];
        node.rollup_token += 1;
        let token = node.rollup_token;
        self.sched.at(
            at,
            Event::RollupDue {
                node: n,
                epoch,
                token,
            },
        );
    }

    /// The leader's evaluation: the region's live apps against the
    /// `app_regions` rows it holds for the region, the difference written
    /// as one `global.db` transaction.
    fn rollup_due(&mut self, n: usize) {
        let instant = self.clock.instant(self.now());
        let Some(schedule) = self.nodes[n].rollup.as_mut() else {
            return;
        };
        if !schedule.leading() {
            return;
        }
        if !schedule.due(instant) {
            self.schedule_rollup(n);
            return;
        }
        schedule.on_run(instant);
        let node = &self.nodes[n];
        let region = node.region;
        let regions = self.cfg.regions;
        let live = model::live_apps(&node.machines, usize::from(self.cfg.apps));
        let wanted: BTreeMap<u16, ()> = (0..self.cfg.apps)
            .filter(|&a| live[usize::from(a)])
            .map(|a| (a, ()))
            .collect();
        let current: BTreeMap<u16, ()> = (0..self.cfg.apps)
            .filter(|&a| node.app_regions[usize::from(a) * regions + region].present)
            .map(|a| (a, ()))
            .collect();
        let diff = rollup_diff(&current, &wanted);
        if !diff.is_empty() {
            let r = region as u16;
            let mut rows: Vec<(u16, u16, bool)> =
                diff.upserts.iter().map(|(a, _)| (*a, r, true)).collect();
            rows.extend(diff.deletes.iter().map(|a| (*a, r, false)));
            let node = &mut self.nodes[n];
            node.lamport += 1;
            let changes = model::app_region_changes(&rows, node.lamport);
            self.commit(n, DbKind::Global, changes);
            self.rollup_versions += 1;
        }
        if let Some(s) = self.nodes[n].rollup.as_mut() {
            s.on_succeeded();
        }
        self.schedule_rollup(n);
    }

    // ---- workload ----

    fn write(&mut self, region: usize) {
        if self.phase != Phase::Workload {
            return;
        }
        let next = self.exp_delay(self.cfg.writes_per_region_s);
        self.sched.after(next, Event::Write { region });
        let up: Vec<usize> = self.region_nodes[region]
            .iter()
            .copied()
            .filter(|&m| self.nodes[m].up)
            .collect();
        if up.is_empty() {
            return;
        }
        let n = up[self.rng.random_range(0..up.len())];
        let writes = self.pick_writes(n);
        if writes.is_empty() {
            return;
        }
        let node = &mut self.nodes[n];
        node.lamport += 1;
        let clock = node.lamport;
        let writer = n as u32;
        let apps = usize::from(self.cfg.apps);
        let before = model::live_apps(&self.truth[region], apps);
        for w in &writes {
            if let Some(row) = self.truth[region].get_mut(w.machine as usize) {
                row.merge(clock, writer, w);
            }
        }
        let after = model::live_apps(&self.truth[region], apps);
        let version = self.commit(n, DbKind::Regional, model::machine_changes(&writes, clock));
        self.regional_writes += 1;
        let now = self.now();
        let mut waiting = vec![false; self.region_nodes[region].len()];
        let mut remaining = 0;
        for (pos, &m) in self.region_nodes[region].iter().enumerate() {
            if m != n && self.nodes[m].up {
                waiting[pos] = true;
                remaining += 1;
            }
        }
        if remaining > 0 {
            self.deliveries.insert(
                (self.nodes[n].actor, version),
                Delivery {
                    at: now,
                    last: None,
                    region,
                    waiting,
                    remaining,
                },
            );
        }
        for app in 0..apps {
            if before[app] == after[app] {
                continue;
            }
            let key = (app as u16, region as u16);
            let present = after[app];
            let mut waiting = vec![false; self.nodes.len()];
            let mut remaining = 0;
            let regions = self.cfg.regions;
            for (m, node) in self.nodes.iter().enumerate() {
                if node.up && node.app_regions[app * regions + region].present != present {
                    waiting[m] = true;
                    remaining += 1;
                }
            }
            if self.rollup_waits.remove(&key).is_some() {
                self.rollup_superseded += 1;
            }
            if remaining > 0 {
                self.rollup_waits.insert(
                    key,
                    RollupWait {
                        at: now,
                        last: None,
                        present,
                        waiting,
                        remaining,
                    },
                );
            }
        }
    }

    /// What node `n` writes, from its own view of the region's machines:
    /// mostly state changes (which leave the rollup alone), machines
    /// created and destroyed (which may change the region's app set), and
    /// now and then a deploy of one app (a large, multi-chunk write).
    fn pick_writes(&mut self, n: usize) -> Vec<MachineWrite> {
        let machines = &self.nodes[n].machines;
        let live: Vec<u32> = (0..machines.len() as u32)
            .filter(|&m| machines[m as usize].live)
            .collect();
        let roll: f64 = self.rng.random();
        if live.is_empty() || roll < 0.2 {
            // Create (or re-create) a machine of a random app.
            let machine = self.rng.random_range(0..self.cfg.machines_per_region);
            let app = self.rng.random_range(0..self.cfg.apps);
            return vec![MachineWrite {
                machine,
                app,
                state: 0,
                live: true,
                image: false,
            }];
        }
        let pick = live[self.rng.random_range(0..live.len())];
        let row = machines[pick as usize];
        if roll < 0.4 {
            return vec![MachineWrite {
                machine: pick,
                app: 0,
                state: 0,
                live: false,
                image: false,
            }];
        }
        if roll < 0.42 {
            // A deploy: every live machine of the app gets a new image.
            return live
                .iter()
                .filter(|&&m| machines[m as usize].app == row.app)
                .map(|&m| {
                    let r = machines[m as usize];
                    MachineWrite {
                        machine: m,
                        app: r.app,
                        state: r.state + 1,
                        live: true,
                        image: true,
                    }
                })
                .collect();
        }
        vec![MachineWrite {
            machine: pick,
            app: row.app,
            state: row.state + 1,
            live: true,
            image: false,
        }]
    }

    // ---- faults ----

    fn touch(&mut self, n: usize) {
        let now = self.now();
        self.faulted_at[n] = Some(now);
    }

    fn up_nodes(&self, region: Option<usize>) -> Vec<usize> {
        let all: Box<dyn Iterator<Item = usize>> = match region {
            Some(r) => Box::new(self.region_nodes[r].iter().copied()),
            None => Box::new(0..self.nodes.len()),
        };
        all.filter(|&m| self.nodes[m].up).collect()
    }

    fn fault(&mut self) {
        if self.phase != Phase::Workload {
            return;
        }
        if self.now() + FAULT_EVERY < self.workload_end.saturating_sub(secs(5)) {
            self.sched.after(FAULT_EVERY, Event::Fault);
        }
        let regions = self.cfg.regions;
        let kind = self.rng.random_range(0..8u32);
        let before = (self.net.partitions.clone(), self.crashes);
        match kind {
            0 | 1 => {
                let up = self.up_nodes(None);
                if up.len() > 1 {
                    let n = up[self.rng.random_range(0..up.len())];
                    let back = self.rng.random_range(secs(2)..secs(12));
                    self.crash(n);
                    self.sched.after(back, Event::Restart { node: n });
                }
            }
            2 => {
                let r = self.rng.random_range(0..regions);
                let leader = self
                    .up_nodes(Some(r))
                    .into_iter()
                    .filter(|&m| self.nodes[m].global_member)
                    .min_by_key(|&m| self.nodes[m].actor);
                if let Some(n) = leader {
                    self.crash(n);
                    let epoch = self.nodes[n].epoch;
                    self.sched.after(
                        LEADER_REPLACED_WITHIN,
                        Event::LeaderCheck {
                            region: r,
                            crashed: n,
                            epoch,
                        },
                    );
                    self.sched
                        .after(LEADER_REPLACED_WITHIN + secs(5), Event::Restart { node: n });
                }
            }
            3 => {
                let up = self.up_nodes(None);
                let n = up[self.rng.random_range(0..up.len())];
                self.net.partitions.nodes.insert(n);
                self.touch(n);
                let d = self.rng.random_range(secs(3)..secs(15));
                self.sched.after(d, Event::Heal(Heal::Node(n)));
            }
            4 if regions > 1 => {
                let r = self.rng.random_range(0..regions);
                self.net.partitions.regions.insert(r);
                for m in self.region_nodes[r].clone() {
                    self.touch(m);
                }
                let d = self.rng.random_range(secs(5)..secs(15));
                self.sched.after(d, Event::Heal(Heal::Region(r)));
            }
            5 if regions > 1 => {
                let side = (0..regions).filter(|_| self.rng.random_bool(0.5)).collect();
                self.net.partitions.global_side = Some(side);
                let globals: Vec<usize> = (0..self.nodes.len())
                    .filter(|&m| self.nodes[m].global_member)
                    .collect();
                for m in globals {
                    self.touch(m);
                }
                let d = self.rng.random_range(secs(5)..secs(15));
                self.sched.after(d, Event::Heal(Heal::Global));
            }
            6 => {
                let r = self.rng.random_range(0..regions);
                let up = self.up_nodes(Some(r));
                if up.len() >= 2 {
                    let a = up[self.rng.random_range(0..up.len())];
                    let b = up[self.rng.random_range(0..up.len())];
                    if a != b {
                        self.net.partitions.links.insert((a, b));
                        self.touch(a);
                        self.touch(b);
                        let d = self.rng.random_range(secs(3)..secs(15));
                        self.sched.after(d, Event::Heal(Heal::Link(a, b)));
                    }
                }
            }
            _ => {
                // Churn: a plain node leaves for good, a new one joins its
                // region a little later.
                let r = self.rng.random_range(0..regions);
                let plain: Vec<usize> = self
                    .up_nodes(Some(r))
                    .into_iter()
                    .filter(|&m| !self.nodes[m].global_member)
                    .collect();
                if plain.len() > 1 {
                    let n = plain[self.rng.random_range(0..plain.len())];
                    self.leave(n);
                    let d = self.rng.random_range(secs(1)..secs(5));
                    self.sched.after(d, Event::Join { region: r });
                }
            }
        }
        if self.trace_node.is_some() {
            eprintln!(
                "fault {kind} at {}: partitions {:?} -> {:?}, crashes {} -> {}",
                self.now(),
                before.0,
                self.net.partitions,
                before.1,
                self.crashes
            );
        }
    }

    fn scripted(&mut self, kind: ScriptedKind) {
        if self.phase != Phase::Workload {
            return;
        }
        match kind {
            ScriptedKind::Crash { count } => {
                let regions = self.cfg.regions;
                for i in 0..count {
                    let plain: Vec<usize> = self
                        .up_nodes(Some(i % regions))
                        .into_iter()
                        .filter(|&m| !self.nodes[m].global_member)
                        .collect();
                    if plain.len() > 1 {
                        let n = plain[self.rng.random_range(0..plain.len())];
                        self.crash(n);
                    }
                }
            }
            ScriptedKind::PartitionRegion { region, for_s } => {
                let region = region % self.cfg.regions;
                self.net.partitions.regions.insert(region);
                for m in self.region_nodes[region].clone() {
                    self.touch(m);
                }
                self.sched
                    .after((for_s * 1e6) as Micros, Event::Heal(Heal::Region(region)));
            }
            ScriptedKind::PartitionGlobal { for_s } => {
                let side = (0..self.cfg.regions).filter(|r| r % 2 == 0).collect();
                self.net.partitions.global_side = Some(side);
                for m in 0..self.nodes.len() {
                    if self.nodes[m].global_member {
                        self.touch(m);
                    }
                }
                self.sched
                    .after((for_s * 1e6) as Micros, Event::Heal(Heal::Global));
            }
        }
    }

    /// A node that goes down is no longer waited for: what it gets after
    /// restarting is catch-up, not live delivery (as the agent's lag
    /// figures split them). A wait that only it held up ends at its last
    /// arrival.
    fn stop_waiting_for(&mut self, n: usize) {
        let pos = self.pos_in_region[n];
        let region = self.nodes[n].region;
        let mut done = Vec::new();
        for (key, d) in self.deliveries.iter_mut() {
            if d.region == region && d.waiting.get(pos).copied().unwrap_or(false) {
                d.waiting[pos] = false;
                d.remaining -= 1;
                if d.remaining == 0 {
                    done.push(*key);
                }
            }
        }
        for key in done {
            if let Some(d) = self.deliveries.remove(&key) {
                if let Some(last) = d.last {
                    self.samples.regional_write.push(last - d.at);
                }
            }
        }
        let mut done = Vec::new();
        for (key, w) in self.rollup_waits.iter_mut() {
            if w.waiting.get(n).copied().unwrap_or(false) {
                w.waiting[n] = false;
                w.remaining -= 1;
                if w.remaining == 0 {
                    done.push(*key);
                }
            }
        }
        for key in done {
            if let Some(w) = self.rollup_waits.remove(&key) {
                if let Some(last) = w.last {
                    self.samples.rollup.push(last - w.at);
                }
            }
        }
    }

    fn crash(&mut self, n: usize) {
        let now = self.now();
        self.stop_waiting_for(n);
        self.crashes += 1;
        self.touch(n);
        let node = &mut self.nodes[n];
        for c in [Cluster::Regional, Cluster::Global] {
            if let Some(p) = node.clusters[c.index()].take() {
                let generation = p.foca.identity().0.generation;
                node.remembered[c.index()] =
                    p.foca.iter_members().map(|m| m.id().clone()).collect();
                self.crashed.insert((n, c, generation), now);
            }
        }
        node.up = false;
        node.epoch += 1;
        node.leader = None;
        node.writer_free_at = now;
        if node.global_member {
            node.rollup = Some(RollupSchedule::new(RollupTiming::default()));
        }
    }

    fn restart(&mut self, n: usize) {
        let node = &self.nodes[n];
        if node.up || node.left {
            return;
        }
        let generation = self
            .crashed
            .keys()
            .filter(|(m, _, _)| *m == n)
            .map(|(_, _, g)| *g)
            .max()
            .unwrap_or(0)
            + 1;
        let node = &mut self.nodes[n];
        node.up = true;
        node.epoch += 1;
        let global = node.global_member;
        for c in [Cluster::Regional, Cluster::Global] {
            if c == Cluster::Global && !global {
                continue;
            }
            let id = self.identity(n, c, generation);
            let tuning = self.new_tuning(c);
            let foca = self.new_foca(id, tuning.config());
            let name = match c {
                Cluster::Regional => self.region_names[self.nodes[n].region].clone(),
                Cluster::Global => self.global_name.clone(),
            };
            let remembered = std::mem::take(&mut self.nodes[n].remembered[c.index()]);
            self.nodes[n].clusters[c.index()] = Some(Presence::new(
                c,
                name,
                foca,
                tuning,
                remembered,
                self.bcast.clone(),
            ));
            self.announce_if_alone(n, c);
            self.schedule_tick(n, c, 0);
        }
        self.update_leader(n);
    }

    fn leave(&mut self, n: usize) {
        self.touch(n);
        self.stop_waiting_for(n);
        for c in [Cluster::Regional, Cluster::Global] {
            let mut fx = std::mem::take(&mut self.fx);
            if let Some(p) = self.nodes[n].presence_mut(c) {
                let _ = p.foca.leave_cluster(&mut fx);
            }
            self.after_swim(n, c, &mut fx, 0);
            self.fx = fx;
        }
        let node = &mut self.nodes[n];
        node.up = false;
        node.left = true;
        node.epoch += 1;
        node.clusters = [None, None];
    }

    fn join(&mut self, region: usize) {
        if self.phase != Phase::Workload {
            return;
        }
        let n = self.add_node(region, false);
        // Its bootstrap list: three live nodes of the region.
        let up: Vec<usize> = self
            .up_nodes(Some(region))
            .into_iter()
            .filter(|&m| m != n)
            .collect();
        let picks = patina_proto::choose_peers(&up, 3, &mut self.rng);
        let ids: Vec<SwimId> = picks
            .iter()
            .map(|&m| SwimId(self.current_identity(m, Cluster::Regional)))
            .collect();
        if let Some(p) = self.nodes[n].presence_mut(Cluster::Regional) {
            p.bootstrap = ids;
        }
        self.touch(n);
        self.announce_if_alone(n, Cluster::Regional);
        self.schedule_tick(n, Cluster::Regional, 0);
        self.update_leader(n);
    }

    fn heal(&mut self, h: Heal) {
        let p = &mut self.net.partitions;
        match h {
            Heal::Node(n) => {
                p.nodes.remove(&n);
            }
            Heal::Region(r) => {
                p.regions.remove(&r);
            }
            Heal::Global => p.global_side = None,
            Heal::Link(a, b) => {
                p.links.remove(&(a, b));
            }
        }
    }

    fn leader_check(&mut self, region: usize, crashed: usize, epoch: u32) {
        if self.nodes[crashed].up || self.nodes[crashed].epoch != epoch {
            return;
        }
        for m in self.region_nodes[region].clone() {
            let node = &self.nodes[m];
            let cut_off = self.net.partitions.nodes.contains(&m);
            if node.up && !cut_off && node.leader == Some(crashed) {
                self.violate(
                    "leader-replaced",
                    format!(
                        "node {m} of {} still names crashed node {crashed} its leader {} s after the crash",
                        geo::region_name(region),
                        LEADER_REPLACED_WITHIN / 1_000_000
                    ),
                );
            }
        }
    }

    // ---- quiescence and the end ----

    fn end_workload(&mut self) {
        self.phase = Phase::Quiescing;
        self.net.partitions = Default::default();
        for n in 0..self.nodes.len() {
            if !self.nodes[n].up && !self.nodes[n].left {
                self.restart(n);
            }
        }
        self.sched.after(CONVERGE_CHECK_EVERY, Event::ConvergeCheck);
    }

    fn converge_check(&mut self) {
        if self.phase != Phase::Quiescing {
            return;
        }
        match self.divergence(1).first() {
            None => {
                self.converged_at = Some(self.now());
                self.phase = Phase::Done;
            }
            Some((kind, detail)) => {
                if let Some(t) = self.trace_node.filter(|&t| t < self.nodes.len()) {
                    let states: Vec<String> = self.nodes[t]
                        .clusters
                        .iter()
                        .flatten()
                        .flat_map(|p| {
                            p.foca
                                .iter_membership_state()
                                .filter(|m| m.state() != foca::State::Alive)
                                .map(|m| {
                                    format!(
                                        "{:?}: {} {:?}",
                                        p.cluster,
                                        node_at(&m.id().0.addr),
                                        m.state()
                                    )
                                })
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    eprintln!(
                        "not converged at {}: [{kind}] {detail}; node {t} sees not alive: {states:?}",
                        self.now()
                    );
                }
                self.sched.after(CONVERGE_CHECK_EVERY, Event::ConvergeCheck);
            }
        }
    }

    fn give_up(&mut self) {
        for (kind, detail) in self.divergence(VIOLATIONS_PER_KIND_MAX) {
            self.violate(kind, detail);
        }
        self.phase = Phase::Done;
    }

    /// Where the fleet differs from the truth, at most `max` findings:
    /// every live node of a region holds exactly the region's writes, no
    /// other region's, and every region's `app_regions` rows as its
    /// machines say.
    fn divergence(&self, max: usize) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let apps = usize::from(self.cfg.apps);
        let regions = self.cfg.regions;
        let wanted_apps: Vec<Vec<bool>> = self
            .truth
            .iter()
            .map(|t| model::live_apps(t, apps))
            .collect();
        for (n, node) in self.nodes.iter().enumerate() {
            if out.len() >= max {
                break;
            }
            if !node.up {
                continue;
            }
            let name = geo::region_name(node.region);
            for &m in &self.region_nodes[node.region] {
                let theirs = self.nodes[m].own_version[0];
                if theirs == 0 || m == n {
                    continue;
                }
                let held = node.books[0]
                    .applied(DbKind::Regional, self.nodes[m].actor)
                    .is_some_and(|a| a.contains_span(Span::new(1, theirs)));
                if !held {
                    out.push((
                        "region-holds-its-writes",
                        format!(
                            "node {n} of {name} lacks some of versions 1..={theirs} of node {m}"
                        ),
                    ));
                    break;
                }
            }
            for (db, actor) in node.books[0].actors() {
                let region = self.actor_index.get(&actor).map(|&o| self.nodes[o].region);
                if db == DbKind::Regional && region != Some(node.region) {
                    out.push((
                        "isolation",
                        format!("node {n} of {name} holds regional versions of {actor} (region {region:?})"),
                    ));
                }
            }
            if node.machines != self.truth[node.region] {
                let m = node
                    .machines
                    .iter()
                    .zip(&self.truth[node.region])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                out.push((
                    "region-holds-its-writes",
                    format!(
                        "node {n} of {name}: machine {m} is {:?}, written {:?}",
                        node.machines[m], self.truth[node.region][m]
                    ),
                ));
            }
            for (r, wanted) in wanted_apps.iter().enumerate() {
                for (a, &want) in wanted.iter().enumerate() {
                    if node.app_regions[a * regions + r].present != want {
                        out.push((
                            "app-regions",
                            format!(
                                "node {n} of {name}: app {a} in {} is {}, the region's machines say {}",
                                geo::region_name(r),
                                node.app_regions[a * regions + r].present,
                                want
                            ),
                        ));
                        break;
                    }
                }
            }
        }
        out.truncate(max);
        out
    }

    fn sample(&mut self) {
        if self.phase == Phase::Done {
            return;
        }
        let mut lagging = 0;
        for node in self.nodes.iter().filter(|n| n.up) {
            let behind = self.region_nodes[node.region].iter().any(|&m| {
                let v = self.nodes[m].own_version[0];
                v > 0
                    && m != self.actor_index[&node.actor]
                    && !node.books[0]
                        .applied(DbKind::Regional, self.nodes[m].actor)
                        .is_some_and(|a| a.contains_span(Span::new(1, v)))
            });
            if behind {
                lagging += 1;
            }
        }
        let apps = usize::from(self.cfg.apps);
        let regions = self.cfg.regions;
        let wanted: Vec<Vec<bool>> = self
            .truth
            .iter()
            .map(|t| model::live_apps(t, apps))
            .collect();
        let stale = self
            .nodes
            .iter()
            .filter(|n| n.up)
            .filter(|n| {
                wanted.iter().enumerate().any(|(r, w)| {
                    w.iter()
                        .enumerate()
                        .any(|(a, &want)| n.app_regions[a * regions + r].present != want)
                })
            })
            .count();
        let t = self.now() as f64 / 1e6;
        self.samples.lagging_nodes.push((t, lagging));
        self.samples.stale_rollup_nodes.push((t, stale));
        self.sched.after(secs(1), Event::Sample);
    }

    fn finish(mut self, wall: f64) -> (Report, Samples) {
        self.regional_incomplete = self.deliveries.len() as u64;
        let simulated = self.now();
        let sim_s = simulated as f64 / 1e6;
        let mut plain = [0u64; 4];
        let mut global = [0u64; 4];
        let (mut plain_n, mut global_n) = (0usize, 0usize);
        self.net.sent.resize(self.nodes.len(), [0; 4]);
        self.net.encoded.resize(self.nodes.len(), [0; 4]);
        let mut encoded = [0u64; 4];
        for per_node in &self.net.encoded {
            for (sum, b) in encoded.iter_mut().zip(per_node) {
                *sum += b;
            }
        }
        for (n, node) in self.nodes.iter().enumerate() {
            let into = if node.global_member {
                global_n += 1;
                &mut global
            } else {
                plain_n += 1;
                &mut plain
            };
            for (sum, sent) in into.iter_mut().zip(self.net.sent[n]) {
                *sum += sent;
            }
        }
        let rates = |sums: [u64; 4], count: usize| {
            let per = |b: u64| {
                if count == 0 || sim_s == 0.0 {
                    0.0
                } else {
                    round3(b as f64 / count as f64 / sim_s)
                }
            };
            let mut r = TrafficRates::default();
            for k in TRAFFIC_KINDS {
                let v = per(sums[k as usize]);
                match k {
                    Traffic::Membership => r.membership = v,
                    Traffic::Broadcast => r.broadcast = v,
                    Traffic::Sync => r.sync = v,
                    Traffic::Relay => r.relay = v,
                }
            }
            r.total = per(sums.iter().sum());
            r
        };
        let all: u64 = plain.iter().chain(global.iter()).sum();
        let node_hours = self.cfg.nodes as f64 * sim_s / 3600.0;
        let s = &self.samples;
        let violations = self.violations.iter().map(|v| v.to_string()).collect();
        let report = Report {
            nodes: self.cfg.nodes,
            regions: self.cfg.regions,
            global_per_region: self.cfg.global_per_region,
            seed: self.cfg.seed,
            seconds: self.cfg.seconds,
            loss: self.cfg.loss,
            faults: self.cfg.faults,
            writes_per_region_s: self.cfg.writes_per_region_s,
            events: self.events,
            event_log_hash: format!("{:016x}", self.log_hash),
            simulated_s: round3(sim_s),
            converged_after_ms: self
                .converged_at
                .map(|t| round3((t - self.workload_end) as f64 / 1e3)),
            regional_writes: self.regional_writes,
            rollup_versions: self.rollup_versions,
            regional_delivery_p50_ms: percentile_ms(&s.regional_write, 50.0),
            regional_delivery_p99_ms: percentile_ms(&s.regional_write, 99.0),
            regional_delivery_max_ms: percentile_ms(&s.regional_write, 100.0),
            regional_incomplete: self.regional_incomplete,
            regional_node_p99_ms: percentile_ms(&s.regional_node, 99.0),
            rollup_p50_ms: percentile_ms(&s.rollup, 50.0),
            rollup_p99_ms: percentile_ms(&s.rollup, 99.0),
            rollup_max_ms: percentile_ms(&s.rollup, 100.0),
            rollup_superseded: self.rollup_superseded,
            rollup_incomplete: self.rollup_waits.len() as u64,
            bytes_per_node_s: if self.nodes.is_empty() || sim_s == 0.0 {
                0.0
            } else {
                round3(all as f64 / self.nodes.len() as f64 / sim_s)
            },
            bytes_per_plain_node_s: rates(plain, plain_n),
            bytes_per_global_member_s: rates(global, global_n),
            encoded_bytes_per_node_s: rates(encoded, self.nodes.len()),
            false_down: self.false_down,
            false_down_per_node_hour: if node_hours > 0.0 {
                round3(self.false_down as f64 / node_hours)
            } else {
                0.0
            },
            fault_downs: self.fault_downs,
            crashes: self.crashes,
            crash_detect_p50_ms: percentile_ms(&s.crash_detect, 50.0),
            crash_detect_p99_ms: percentile_ms(&s.crash_detect, 99.0),
            crash_detect_max_ms: percentile_ms(&s.crash_detect, 100.0),
            broadcast_shed: self
                .nodes
                .iter()
                .flat_map(|n| n.clusters.iter().flatten())
                .map(|p| p.queue.shed_total())
                .sum(),
            sync_rounds: self.sync_rounds,
            sync_failures: self.sync_failures,
            datagrams_lost: self.net.datagrams_lost,
            violations,
            wall_s: round3(wall),
            events_per_s: if wall > 0.0 {
                (self.events as f64 / wall).round()
            } else {
                0.0
            },
            peak_rss_mib: report::peak_rss_mib(),
        };
        (report, std::mem::take(&mut self.samples))
    }
}

enum PullInput {
    Frame(Message),
    Closed,
    Deadline,
}

/// Runs one simulation.
pub fn simulate(cfg: SimConfig) -> Result<(Report, Samples), crate::config::ConfigError> {
    Ok(World::new(cfg)?.run())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> SimConfig {
        SimConfig {
            nodes: 24,
            regions: 3,
            global_per_region: 2,
            seconds: 8,
            loss: 0.01,
            seed,
            writes_per_region_s: 4.0,
            ..SimConfig::default()
        }
    }

    /// The quiescence check is not vacuous: a node holding a row its
    /// region never wrote, or missing a version, is found.
    #[test]
    fn divergence_finds_a_wrong_row_and_a_missing_version() {
        let mut world = World::new(small(5)).expect("valid config");
        assert!(world.divergence(10).is_empty());
        world.nodes[4].machines[3].live = true;
        let found = world.divergence(10);
        assert!(
            found
                .iter()
                .any(|(kind, d)| *kind == "region-holds-its-writes" && d.contains("node 4")),
            "{found:?}"
        );
        world.nodes[4].machines[3].live = false;
        let region = world.nodes[4].region;
        let writer = world.region_nodes[region]
            .iter()
            .copied()
            .find(|&m| m != 4)
            .expect("peers");
        world.nodes[writer].own_version[0] = 1;
        let found = world.divergence(10);
        assert!(
            found
                .iter()
                .any(|(_, d)| d.contains("lacks some of versions")),
            "{found:?}"
        );
    }

    /// The isolation check fires for a regional chunk reaching another
    /// region, or any regional chunk on the global cluster.
    #[test]
    fn isolation_check_catches_a_regional_chunk_out_of_its_region() {
        let mut world = World::new(small(6)).expect("valid config");
        let from = 0;
        let same = world.region_nodes[world.nodes[from].region][1];
        let other = world.region_nodes[(world.nodes[from].region + 1) % 3][0];
        let chunk = ChangeChunk {
            db: DbKind::Regional,
            actor: world.nodes[from].actor,
            version: 1,
            seqs: Span::new(0, 0),
            last_seq: 0,
            committed_ms: 0,
            changes: Vec::new(),
        };
        world.check_isolation(same, Cluster::Regional, &chunk);
        assert!(world.violations.is_empty());
        world.check_isolation(other, Cluster::Regional, &chunk);
        world.check_isolation(same, Cluster::Global, &chunk);
        assert_eq!(world.violations.len(), 2);
        assert!(world.violations.iter().all(|v| v.invariant == "isolation"));
    }

    #[test]
    fn a_small_fleet_converges_without_violations() {
        let (report, _) = simulate(small(3)).expect("valid config");
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert!(report.converged_after_ms.is_some());
        assert!(report.regional_writes > 50, "{}", report.regional_writes);
        assert!(report.rollup_versions > 0);
        assert!(report.regional_delivery_p99_ms.is_some());
    }
}
