//! The seam through which the API learns cluster facts: who the members
//! are, which regions exist, and the numbers health reports.
//! [`RegionView`] answers for a node in a regional cluster (what
//! `patina agent` runs); [`LoneNode`] for a node that knows only itself
//! (tests of the API alone) — for such a node its answers are the true
//! ones, not placeholders.

use std::collections::BTreeMap;

use patina_node::{Node, SiteId};
use serde::{Serialize, Serializer};

/// Cluster facts, read on every request: implementations should answer
/// from state they keep current, without blocking.
pub trait ClusterView: Send + Sync + 'static {
    /// The numbers of `GET /v1/health`.
    fn health(&self) -> HealthReport;
    /// Every (member, cluster) pair this node knows, itself included.
    fn members(&self) -> Vec<MemberInfo>;
    /// Every region known from the global view.
    fn regions(&self) -> Vec<RegionInfo>;
}

/// `GET /v1/health`'s `response` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    /// Versions known to exist but not yet applied, over all actors.
    pub gaps: u64,
    /// Members of this node's regional cluster, itself included.
    pub members: u64,
    /// 99th percentile of replication lag, seconds; 0 with no samples.
    pub p99_lag: f64,
    /// Changesets received and not yet applied.
    pub queue_size: u64,
    pub region: String,
    pub global_member: bool,
    /// This region's leader, if any.
    #[serde(serialize_with = "opt_hex")]
    pub leader: Option<SiteId>,
    /// Seconds since the newest global change seen; null if none yet.
    pub global_lag: Option<f64>,
    /// Whether this node still lacks what its peers held when it joined;
    /// while true, health answers the failure status whatever the
    /// thresholds.
    pub catching_up: bool,
    pub catch_up: CatchUpReport,
    /// 99th percentile of the lag of versions written while this node was
    /// away or applied while it caught up, seconds; 0 with no samples.
    /// `p99_lag` is live lag only.
    pub catchup_p99_lag: f64,
    /// Remote versions part of which waits until this node's schema has
    /// their tables or columns (merged by the reload that adds them; they
    /// count as applied for `gaps` and catching up).
    pub parked_versions: u64,
    /// Remote versions part of which local constraints refused (retried
    /// at each reload).
    pub refused_versions: u64,
}

/// Where catching up stands (`HealthReport::catch_up`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CatchUpReport {
    /// `alone` (nobody to learn from), `waiting_for_peers`, `fetching`,
    /// `caught_up` or `no_peer_answered` (gave up waiting: serving what it
    /// holds).
    pub phase: &'static str,
    /// Versions its peers held when it joined that it does not hold yet.
    pub missing_versions: u64,
    /// Seconds spent catching up (so far, or in all once over).
    pub elapsed_secs: f64,
    /// Why the node is not ready yet; null once it is.
    pub reason: Option<String>,
}

impl CatchUpReport {
    /// A node that had nothing to catch up.
    pub fn alone() -> CatchUpReport {
        CatchUpReport {
            phase: "alone",
            missing_versions: 0,
            elapsed_secs: 0.0,
            reason: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
}

/// One entry of `GET /v1/members`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberInfo {
    #[serde(serialize_with = "hex")]
    pub actor_id: SiteId,
    /// Its gossip address, `"ip:port"`.
    pub addr: Option<String>,
    pub region: String,
    /// `<region>` or `global`.
    pub cluster: String,
    pub state: MemberState,
    /// Round-trip time, milliseconds; null when unmeasured.
    pub rtt_ms: Option<f64>,
}

/// One entry of `GET /v1/regions`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionInfo {
    pub region: String,
    #[serde(serialize_with = "opt_hex")]
    pub leader: Option<SiteId>,
    #[serde(serialize_with = "hex_list")]
    pub global_members: Vec<SiteId>,
    /// Unix time, seconds, of the region's last rollup.
    pub last_rollup: Option<f64>,
    /// Row count per rollup name.
    pub rollups: BTreeMap<String, u64>,
}

fn hex<S: Serializer>(id: &SiteId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_hex())
}

fn opt_hex<S: Serializer>(id: &Option<SiteId>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => hex(id, s),
        None => s.serialize_none(),
    }
}

fn hex_list<S: Serializer>(ids: &[SiteId], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ids.iter().map(SiteId::to_hex))
}

/// A node with no peers: one member (itself), nothing to fetch, no lag.
/// A global member is its region's leader (the live global member with
/// the smallest actor id is the only one).
pub struct LoneNode {
    node: Node,
}

impl LoneNode {
    pub fn new(node: Node) -> LoneNode {
        LoneNode { node }
    }

    fn leader(&self) -> Option<SiteId> {
        self.node.is_global_member().then(|| self.node.actor_id())
    }
}

impl ClusterView for LoneNode {
    fn health(&self) -> HealthReport {
        HealthReport {
            gaps: 0,
            members: 1,
            p99_lag: 0.0,
            queue_size: 0,
            region: self.node.region().to_owned(),
            global_member: self.node.is_global_member(),
            leader: self.leader(),
            global_lag: None,
            catching_up: false,
            catch_up: CatchUpReport::alone(),
            catchup_p99_lag: 0.0,
            parked_versions: held(&self.node, |h| h.waiting()),
            refused_versions: held(&self.node, |h| h.refused()),
        }
    }

    fn members(&self) -> Vec<MemberInfo> {
        let me = |cluster: &str| MemberInfo {
            actor_id: self.node.actor_id(),
            addr: None,
            region: self.node.region().to_owned(),
            cluster: cluster.to_owned(),
            state: MemberState::Alive,
            rtt_ms: None,
        };
        let mut members = vec![me(self.node.region())];
        if self.node.is_global_member() {
            members.push(me("global"));
        }
        members
    }

    fn regions(&self) -> Vec<RegionInfo> {
        vec![RegionInfo {
            region: self.node.region().to_owned(),
            leader: self.leader(),
            global_members: self.leader().into_iter().collect(),
            last_rollup: None,
            rollups: BTreeMap::new(),
        }]
    }
}

/// A node in a regional cluster: members from SWIM, gaps from the
/// bookkeeping of both databases, queue from the replicator.
pub struct RegionView {
    node: Node,
    me: patina_wire::NodeIdentity,
    members: tokio::sync::watch::Receiver<Vec<patina_membership::Member>>,
    counters: patina_replicator::ClusterCounters,
}

impl RegionView {
    pub fn new(node: Node, runtime: &patina_replicator::ClusterRuntime) -> RegionView {
        RegionView {
            node,
            me: runtime.identity().clone(),
            members: runtime.members(),
            counters: runtime.counters(),
        }
    }

    fn leader(&self) -> Option<SiteId> {
        // Leader choice needs the global members' list (next issue); a
        // global member alone in its region view is the only candidate.
        self.node.is_global_member().then(|| self.node.actor_id())
    }
}

/// A count over both databases' held versions (`Node::held_versions`).
fn held(node: &Node, count: impl Fn(&patina_node::HeldVersions) -> u64) -> u64 {
    [patina_node::DbKind::Regional, patina_node::DbKind::Global]
        .iter()
        .map(|&db| count(&node.held_versions(db).borrow()))
        .fold(0, u64::saturating_add)
}

fn catch_up_report(s: &patina_replicator::CatchUpStatus, now: std::time::Instant) -> CatchUpReport {
    let until = s.ended.unwrap_or(now);
    CatchUpReport {
        phase: s.phase.as_str(),
        missing_versions: s.missing_versions,
        elapsed_secs: until.saturating_duration_since(s.started).as_secs_f64(),
        reason: s.reason(now),
    }
}

fn member_state(s: patina_membership::MemberState) -> MemberState {
    match s {
        patina_membership::MemberState::Alive => MemberState::Alive,
        patina_membership::MemberState::Suspect => MemberState::Suspect,
        patina_membership::MemberState::Down => MemberState::Down,
    }
}

impl ClusterView for RegionView {
    fn health(&self) -> HealthReport {
        let gaps = [patina_node::DbKind::Regional, patina_node::DbKind::Global]
            .iter()
            .map(|&db| self.node.bookkeeping(db).borrow().missing_versions())
            .sum();
        let alive = patina_membership::alive(&self.members.borrow()).count() as u64;
        let catch_up = self.counters.catch_up();
        HealthReport {
            gaps,
            members: alive + 1,
            p99_lag: self.counters.p99_lag_secs(),
            queue_size: self.counters.apply_queue_chunks(),
            region: self.node.region().to_owned(),
            global_member: self.node.is_global_member(),
            leader: self.leader(),
            global_lag: None,
            catching_up: catch_up.catching_up(),
            catch_up: catch_up_report(&catch_up, std::time::Instant::now()),
            catchup_p99_lag: self.counters.catchup_p99_lag_secs(),
            parked_versions: held(&self.node, |h| h.waiting()),
            refused_versions: held(&self.node, |h| h.refused()),
        }
    }

    fn members(&self) -> Vec<MemberInfo> {
        let info = |id: &patina_wire::NodeIdentity, state, rtt_ms| MemberInfo {
            actor_id: id.actor,
            addr: Some(id.addr.to_string()),
            region: id.cluster.as_str().to_owned(),
            cluster: id.cluster.as_str().to_owned(),
            state,
            rtt_ms,
        };
        // The node itself has no round trip to measure.
        let mut out = vec![info(&self.me, MemberState::Alive, None)];
        out.extend(self.members.borrow().iter().map(|m| {
            let rtt = self.counters.rtt(m.identity.addr);
            let rtt_ms = rtt.map(|d| d.as_secs_f64() * 1000.0);
            info(&m.identity, member_state(m.state), rtt_ms)
        }));
        out
    }

    fn regions(&self) -> Vec<RegionInfo> {
        vec![RegionInfo {
            region: self.node.region().to_owned(),
            leader: self.leader(),
            global_members: self.leader().into_iter().collect(),
            last_rollup: None,
            rollups: BTreeMap::new(),
        }]
    }
}
