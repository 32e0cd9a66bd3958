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
    /// The rollups' target tables (`GET /v1/regions` counts their rows
    /// per region, which also names regions no membership shows).
    fn rollup_names(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether [`regions`](Self::regions) names other regions' live
    /// global members first-hand (a global member sees the global
    /// cluster); otherwise `global.patina_regions` says who they were.
    fn regions_first_hand(&self) -> bool {
        false
    }
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
    /// Seconds since the origin commit of the newest global change this
    /// node has seen since it started (merged from its clusters or written
    /// here); null until the first after a start (commit times are not
    /// stored). Grows while nothing global is written, too: a gate on it wants
    /// regular global writes (rollups of busy tables are such writes).
    pub global_lag: Option<f64>,
    /// 99th percentile of the last minute's live lag of global changes
    /// (origin commit in any region → merged here), seconds; null without
    /// samples.
    pub global_p99_lag: Option<f64>,
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
    /// Remote changes ignored since the node started because they name a
    /// table or column a destructive schema change dropped here (their
    /// versions count as applied: nothing waits for them).
    pub dropped_changes: u64,
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
    /// A member of the global cluster (a candidate for its region's leader).
    pub global_member: bool,
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
    /// Unix time, seconds, of the region's last rollup publication (an
    /// evaluation that wrote rows, or its leader's reconcile on taking
    /// over).
    pub last_rollup: Option<f64>,
    /// Row count per rollup name.
    pub rollups: BTreeMap<String, u64>,
    /// The p99 lag, seconds, of global changes reaching the region's
    /// leader, as of `updated`.
    pub global_p99_lag: Option<f64>,
    /// Unix time, seconds, the region's leader last wrote its row of
    /// `global.patina_regions`; null when none has reached this node.
    pub updated: Option<f64>,
    /// Why the region leader's last rollup evaluation failed; null while
    /// they succeed.
    pub rollup_error: Option<String>,
    /// This node leads the region: the rollup figures above are its own,
    /// fresher than its row in `global.patina_regions`.
    #[serde(skip)]
    pub led_here: bool,
}

impl RegionInfo {
    pub fn empty(region: &str) -> RegionInfo {
        RegionInfo {
            region: region.to_owned(),
            leader: None,
            global_members: Vec::new(),
            last_rollup: None,
            rollups: BTreeMap::new(),
            global_p99_lag: None,
            updated: None,
            rollup_error: None,
            led_here: false,
        }
    }

    /// Fills in what `record` (the region's row of `patina_regions`) says
    /// and this node did not learn first-hand. `first_hand`: the node's
    /// own membership names this region's global members (its own
    /// region, or any region on a global member): a record's leader is
    /// only as of its writing.
    pub fn complete_from(&mut self, record: &patina_node::RegionRecord, first_hand: bool) {
        if !first_hand {
            self.leader = record.leader;
            self.global_members = record.global_members.clone();
        }
        let secs = |ms: u64| ms as f64 / 1000.0;
        let recorded = record.last_rollup_ms.map(secs);
        if self.led_here {
            // Its own publication, unless it has none yet this term.
            self.last_rollup = match (self.last_rollup, recorded) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        } else {
            self.last_rollup = recorded;
            self.global_p99_lag = record.global_p99_lag_ms.map(|ms| ms / 1000.0);
            self.rollup_error = record.rollup_error.clone();
        }
        self.updated = Some(secs(record.updated_ms));
    }
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
            global_p99_lag: None,
            catching_up: false,
            catch_up: CatchUpReport::alone(),
            catchup_p99_lag: 0.0,
            parked_versions: held(&self.node, |h| h.waiting()),
            refused_versions: held(&self.node, |h| h.refused()),
            dropped_changes: dropped_changes(&self.node),
        }
    }

    fn members(&self) -> Vec<MemberInfo> {
        let me = |cluster: &str| MemberInfo {
            actor_id: self.node.actor_id(),
            addr: None,
            region: self.node.region().to_owned(),
            cluster: cluster.to_owned(),
            global_member: self.node.is_global_member(),
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
            leader: self.leader(),
            global_members: self.leader().into_iter().collect(),
            ..RegionInfo::empty(self.node.region())
        }]
    }
}

/// A node in the fleet (what `patina agent` runs): members of its regional
/// cluster and, for a global member, of the global cluster, from SWIM;
/// the leader the region's membership names; gaps from the bookkeeping of
/// both databases; lag and queue from the replicators.
pub struct RegionView {
    node: Node,
    regional: ClusterSide,
    global: Option<ClusterSide>,
    leader: tokio::sync::watch::Receiver<Option<SiteId>>,
    rollups: tokio::sync::watch::Receiver<patina_region::RollupsStatus>,
    rollup_names: Vec<String>,
}

/// What the view reads of one cluster.
struct ClusterSide {
    me: patina_wire::NodeIdentity,
    members: tokio::sync::watch::Receiver<Vec<patina_membership::Member>>,
    counters: patina_replicator::ClusterCounters,
}

impl ClusterSide {
    fn of(runtime: &patina_replicator::ClusterRuntime) -> ClusterSide {
        ClusterSide {
            me: runtime.identity().clone(),
            members: runtime.members(),
            counters: runtime.counters(),
        }
    }

    fn infos(&self) -> Vec<MemberInfo> {
        let info = |id: &patina_wire::NodeIdentity, state, rtt_ms| MemberInfo {
            actor_id: id.actor,
            addr: Some(id.addr.to_string()),
            region: id.region.as_str().to_owned(),
            cluster: id.cluster.as_str().to_owned(),
            global_member: id.global_member,
            state,
            rtt_ms,
        };
        // The node itself has no round trip to measure.
        let mut out = vec![info(&self.me, MemberState::Alive, None)];
        out.extend(self.members.borrow().iter().map(|m| {
            let rtt = self.counters.rtt(m.identity.addr);
            // Microseconds are all a round trip measures.
            let rtt_ms = rtt.map(|d| (d.as_secs_f64() * 1e6).round() / 1000.0);
            info(&m.identity, member_state(m.state), rtt_ms)
        }));
        out
    }
}

impl RegionView {
    pub fn new(runtime: &patina_region::RegionRuntime) -> RegionView {
        RegionView {
            node: runtime.node().clone(),
            regional: ClusterSide::of(runtime.regional()),
            global: runtime.global().map(ClusterSide::of),
            leader: runtime.leader(),
            rollups: runtime.rollups(),
            rollup_names: runtime.rollup_names().to_vec(),
        }
    }

    fn leader(&self) -> Option<SiteId> {
        *self.leader.borrow()
    }
}

/// A count over both databases' held versions (`Node::held_versions`).
fn held(node: &Node, count: impl Fn(&patina_node::HeldVersions) -> u64) -> u64 {
    [patina_node::DbKind::Regional, patina_node::DbKind::Global]
        .iter()
        .map(|&db| count(&node.held_versions(db).borrow()))
        .fold(0, u64::saturating_add)
}

fn dropped_changes(node: &Node) -> u64 {
    [patina_node::DbKind::Regional, patina_node::DbKind::Global]
        .iter()
        .map(|&db| node.write_stats(db).remote_changes_dropped)
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
        let alive = patina_membership::alive(&self.regional.members.borrow()).count() as u64;
        let regional = &self.regional.counters;
        // A global member catching up on either cluster is not ready.
        let catch_up = self
            .global
            .iter()
            .map(|g| g.counters.catch_up())
            .filter(|c| c.catching_up())
            .chain([regional.catch_up()])
            .next()
            .unwrap_or_else(|| regional.catch_up());
        let clusters = || {
            [Some(regional)]
                .into_iter()
                .chain([self.global.as_ref().map(|g| &g.counters)])
                .flatten()
        };
        let global_p99_lag = clusters()
            .filter_map(|c| c.global_p99_lag_secs())
            .reduce(f64::max);
        let global_lag = clusters()
            .filter_map(|c| c.newest_global_commit_ms())
            .max()
            .map(|ms| patina_node::unix_ms().saturating_sub(ms) as f64 / 1000.0);
        HealthReport {
            gaps,
            members: alive + 1,
            p99_lag: regional.p99_lag_secs(),
            queue_size: regional.apply_queue_chunks()
                + self
                    .global
                    .as_ref()
                    .map_or(0, |g| g.counters.apply_queue_chunks()),
            region: self.node.region().to_owned(),
            global_member: self.node.is_global_member(),
            leader: self.leader(),
            global_lag,
            global_p99_lag,
            catching_up: catch_up.catching_up(),
            catch_up: catch_up_report(&catch_up, std::time::Instant::now()),
            catchup_p99_lag: regional.catchup_p99_lag_secs(),
            parked_versions: held(&self.node, |h| h.waiting()),
            refused_versions: held(&self.node, |h| h.refused()),
            dropped_changes: dropped_changes(&self.node),
        }
    }

    fn members(&self) -> Vec<MemberInfo> {
        let mut out = self.regional.infos();
        if let Some(g) = &self.global {
            out.extend(g.infos());
        }
        out
    }

    fn regions(&self) -> Vec<RegionInfo> {
        let mut regions: BTreeMap<String, RegionInfo> = BTreeMap::new();
        let empty = RegionInfo::empty;
        // Other regions' global members, as the global cluster sees them.
        if let Some(g) = &self.global {
            let live = g
                .infos()
                .into_iter()
                .filter(|m| m.state == MemberState::Alive);
            for m in live {
                let r = regions
                    .entry(m.region.clone())
                    .or_insert_with(|| empty(&m.region));
                r.global_members.push(m.actor_id);
            }
            for r in regions.values_mut() {
                r.global_members.sort();
                r.leader = patina_region::region_leader(r.global_members.iter().copied());
            }
        }
        // This region as its own membership sees it (authoritative here).
        let mine = self.node.region().to_owned();
        let r = regions.entry(mine.clone()).or_insert_with(|| empty(&mine));
        r.global_members = self
            .regional
            .infos()
            .into_iter()
            .filter(|m| m.global_member && m.state == MemberState::Alive)
            .map(|m| m.actor_id)
            .collect();
        r.global_members.sort();
        r.leader = self.leader();
        // The leader's own figures are fresher than its row.
        if r.leader == Some(self.node.actor_id()) {
            let status = self.rollups.borrow();
            r.led_here = true;
            r.last_rollup = status.last_published_ms.map(|ms| ms as f64 / 1000.0);
            r.rollup_error = status.last_error.clone();
            r.global_p99_lag = self
                .global
                .as_ref()
                .and_then(|g| g.counters.global_p99_lag_secs());
        }
        regions.into_values().collect()
    }

    fn rollup_names(&self) -> Vec<String> {
        self.rollup_names.clone()
    }

    fn regions_first_hand(&self) -> bool {
        self.global.is_some()
    }
}
