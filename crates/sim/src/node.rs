//! A simulated node: what the agent keeps per node (its two databases'
//! bookkeeping and rows, which survive a crash) and per cluster it is in
//! (foca, the sync planner and pace, the broadcast queue, the sync
//! conversations in progress; lost in a crash).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use foca::{Foca, NoCustomBroadcast, OwnedNotification, Timer};
use patina_membership::{SwimId, SwimTuning, WireCodec};
use patina_proto::{
    Bookkeeper, BroadcastConfig, BroadcastQueue, PlannerConfig, PullSession, QueuedVersions,
    RollupSchedule, ServeSession, SyncPace, SyncPlanner,
};
use patina_wire::{ActorId, ChangeChunk, ClusterName, DbKind, NodeIdentity, Summary};
use rand::rngs::SmallRng;

use crate::model::{AppRegionRow, MachineRow};
use crate::sched::Micros;

pub type SimFoca = Foca<SwimId, WireCodec, SmallRng, NoCustomBroadcast>;

/// The agent's sync pace: 200 ms, doubling up to 3.2 s while in sync.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(200);
pub const SYNC_INTERVAL_MAX: Duration = Duration::from_millis(3_200);
/// Peers asked per sync round.
pub const SYNC_PEERS: usize = 3;

/// Which of a node's clusters: its region's, or the global one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cluster {
    Regional = 0,
    Global = 1,
}

impl Cluster {
    pub fn carried(self) -> &'static [DbKind] {
        match self {
            Cluster::Regional => &[DbKind::Regional, DbKind::Global],
            Cluster::Global => &[DbKind::Global],
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

pub fn db_index(db: DbKind) -> usize {
    match db {
        DbKind::Regional => 0,
        DbKind::Global => 1,
    }
}

/// What foca asked for during one call.
#[derive(Default)]
pub struct SwimEffects {
    pub sends: Vec<(SwimId, Vec<u8>)>,
    pub timers: Vec<(Timer<SwimId>, Duration)>,
    pub notes: Vec<OwnedNotification<SwimId>>,
}

impl foca::Runtime<SwimId> for SwimEffects {
    fn notify(&mut self, notification: foca::Notification<'_, SwimId>) {
        self.notes.push(notification.to_owned());
    }

    fn send_to(&mut self, to: SwimId, data: &[u8]) {
        self.sends.push((to, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<SwimId>, after: Duration) {
        self.timers.push((event, after));
    }
}

/// Where one peer of a sync round stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AskStage {
    Asking,
    Answered,
    InSync,
    Pulling,
    Done,
    Failed,
}

pub struct Asked {
    pub peer: usize,
    pub session: PullSession,
    pub summary: Option<Summary>,
    pub stage: AskStage,
    /// When this node's last frame on the stream arrives at the peer:
    /// frames of a stream arrive in order.
    pub last_arrival: Micros,
}

/// A sync round in progress: a conversation per asked peer.
pub struct Round {
    pub asked: BTreeMap<u64, Asked>,
    pub quiet: bool,
}

pub struct Serving {
    pub peer: usize,
    pub session: ServeSession,
    pub last_arrival: Micros,
}

/// A node's presence in one cluster.
pub struct Presence {
    pub cluster: Cluster,
    pub name: ClusterName,
    pub foca: SimFoca,
    /// foca's settings for the cluster's size (the agent's `SwimTuning`).
    pub tuning: SwimTuning,
    /// Raised when foca is replaced (a rejoin): timers of the old foca
    /// are dropped, as the agent clears them.
    pub foca_incarnation: u32,
    /// Alive peers (node indices, ascending: the order of their gossip
    /// addresses, which the broadcast tree sorts by).
    pub alive: Vec<usize>,
    pub planner: SyncPlanner<usize>,
    pub pace: SyncPace,
    pub queue: BroadcastQueue<usize>,
    pub queued: QueuedVersions,
    pub round: Option<Round>,
    pub hinted: Vec<usize>,
    pub serving: BTreeMap<u64, Serving>,
    /// The sync tick in force (older ones are ignored) and when it fires.
    pub tick_token: u64,
    pub tick_at: Micros,
    pub last_round_end: Micros,
    /// Bootstrap peers and remembered members, announced to while foca
    /// knows nobody.
    pub bootstrap: Vec<SwimId>,
}

impl Presence {
    pub fn new(
        cluster: Cluster,
        name: ClusterName,
        foca: SimFoca,
        tuning: SwimTuning,
        bootstrap: Vec<SwimId>,
        broadcast: BroadcastConfig,
    ) -> Self {
        Presence {
            cluster,
            name,
            foca,
            tuning,
            foca_incarnation: 0,
            alive: Vec::new(),
            planner: SyncPlanner::new(PlannerConfig::default()),
            pace: SyncPace::new(SYNC_INTERVAL, SYNC_INTERVAL_MAX),
            queue: BroadcastQueue::new(broadcast),
            queued: QueuedVersions::new(),
            round: None,
            hinted: Vec::new(),
            serving: BTreeMap::new(),
            tick_token: 0,
            tick_at: 0,
            last_round_end: 0,
            bootstrap,
        }
    }
}

pub struct SimNode {
    pub actor: ActorId,
    pub region: usize,
    pub global_member: bool,
    pub identity: NodeIdentity,
    pub up: bool,
    /// Left the fleet for good (graceful leave).
    pub left: bool,
    /// Raised at each crash and restart: events meant for an earlier
    /// incarnation are dropped.
    pub epoch: u32,
    pub lamport: u64,
    /// Per database (`db_index`): versions this node committed.
    pub own_version: [u64; 2],
    /// Per database: what is merged, as the writer thread's bookkeeper.
    pub books: [Bookkeeper; 2],
    /// Both databases in one bookkeeper: what the regional cluster's
    /// replicator absorbs the two into (kept up to date alongside, so
    /// sync never clones a bookkeeper to ask its digest).
    pub combined: Bookkeeper,
    /// Digests of `combined` and `books[1]`, per cluster, while valid.
    pub digests: [Option<u64>; 2],
    /// Chunks of versions held in part (`patina_buffered_changes`).
    pub buffered: BTreeMap<(DbKind, ActorId, u64), Vec<Arc<ChangeChunk>>>,
    pub machines: Vec<MachineRow>,
    /// `app_regions`, indexed app × regions + region.
    pub app_regions: Vec<AppRegionRow>,
    pub clusters: [Option<Presence>; 2],
    /// Members remembered for a restart (the members file).
    pub remembered: [Vec<SwimId>; 2],
    /// The region's leader as this node sees it.
    pub leader: Option<usize>,
    pub rollup: Option<RollupSchedule>,
    pub rollup_token: u64,
    /// When this node's writer thread is free again.
    pub writer_free_at: Micros,
}

impl SimNode {
    pub fn presence(&self, c: Cluster) -> Option<&Presence> {
        self.clusters[c.index()].as_ref()
    }

    pub fn presence_mut(&mut self, c: Cluster) -> Option<&mut Presence> {
        self.clusters[c.index()].as_mut()
    }

    /// The digest of what cluster `c` advertises as held
    /// ([`held_view`]).
    pub fn held_digest(&mut self, c: Cluster) -> Option<u64> {
        let p = self.clusters[c.index()].as_ref()?;
        if !p.queued.is_empty() {
            return Some(held_view(&self.books, &self.combined, &p.queued, c).digest());
        }
        let slot = &mut self.digests[c.index()];
        let base = match c {
            Cluster::Regional => &self.combined,
            Cluster::Global => &self.books[1],
        };
        Some(*slot.get_or_insert_with(|| base.digest()))
    }

    /// Records a buffered chunk in the database's bookkeeper and the
    /// combined one.
    pub fn book_buffered(
        &mut self,
        db: DbKind,
        actor: ActorId,
        version: u64,
        last_seq: u64,
        seqs: patina_wire::Span,
    ) {
        self.books[db_index(db)].record_buffered(db, actor, version, last_seq, seqs);
        self.combined
            .record_buffered(db, actor, version, last_seq, seqs);
        self.digests = [None, None];
    }

    pub fn book_applied(&mut self, db: DbKind, actor: ActorId, version: u64) {
        self.books[db_index(db)].record_applied(db, actor, version);
        self.combined.record_applied(db, actor, version);
        self.digests = [None, None];
    }

    pub fn book_own(&mut self, db: DbKind, version: u64) {
        self.books[db_index(db)].set_own_version(db, version);
        self.combined.set_own_version(db, version);
        self.digests = [None, None];
    }
}

/// What cluster `c` advertises as held (the agent's `Shared::held`):
/// the merged versions of the databases it carries, plus the versions
/// waiting in its apply queue. Borrowed unless something is queued.
pub fn held_view<'a>(
    books: &'a [Bookkeeper; 2],
    combined: &'a Bookkeeper,
    queued: &QueuedVersions,
    c: Cluster,
) -> Cow<'a, Bookkeeper> {
    let base = match c {
        Cluster::Regional => combined,
        Cluster::Global => &books[1],
    };
    if queued.is_empty() {
        Cow::Borrowed(base)
    } else {
        let mut held = base.clone();
        queued.count_as_held(&mut held);
        Cow::Owned(held)
    }
}
