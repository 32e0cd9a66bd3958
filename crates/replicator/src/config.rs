//! [`ReplicatorConfig`]: how one cluster's changes are moved.

use std::time::Duration;

use patina_proto::{BroadcastConfig, SyncLimits, CATCH_UP_WAIT};

#[derive(Debug, Clone)]
pub struct ReplicatorConfig {
    /// Push changes to peers as they commit. Off: sync alone replicates
    /// (a test and diagnosis mode).
    pub broadcast: bool,
    /// How often a node runs an anti-entropy round. 200 ms keeps a missed
    /// broadcast repaired well under a second on a LAN; each round costs
    /// one summary exchange with up to `sync_peers` peers.
    pub sync_interval: Duration,
    /// While rounds find every peer in sync, the interval doubles up to
    /// this (`patina_proto::SyncPace`); the first commit, merge, digest
    /// difference or membership change brings it back to `sync_interval`.
    /// 3.2 s: an idle region's rounds cost a sixteenth of what they would,
    /// and anything that changes is spread at the fast pace at once.
    pub sync_interval_max: Duration,
    pub sync_peers: usize,
    /// Timeouts and bounds of each sync conversation.
    pub sync_limits: SyncLimits,
    pub broadcast_queue: BroadcastConfig,
    /// How long a node with peers to learn from waits for a first summary
    /// before it stops reporting itself catching up (`CATCH_UP_WAIT`).
    pub catch_up_wait: Duration,
    /// Seeds peer choice (tests pass a fixed seed to replay a run).
    pub seed: u64,
    /// `db.tombstone_retention`: a delete's tombstone is collected once
    /// every member applied it and this node did longer than this ago.
    /// `None`: never collected.
    pub tombstone_retention: Option<Duration>,
}

impl ReplicatorConfig {
    /// How often a checkpoint of what this node holds is kept, and a
    /// collection pass runs: an eighth of the retention (a tombstone is
    /// collected between 1 and 1.125 retentions after this node applied
    /// its delete), between 250 ms (tests) and 5 minutes.
    pub fn collection_interval(&self) -> Option<Duration> {
        let retention = self.tombstone_retention?;
        Some((retention / 8).clamp(Duration::from_millis(250), Duration::from_secs(300)))
    }
}

impl Default for ReplicatorConfig {
    fn default() -> Self {
        ReplicatorConfig {
            broadcast: true,
            sync_interval: Duration::from_millis(200),
            sync_interval_max: Duration::from_millis(3200),
            sync_peers: 3,
            sync_limits: SyncLimits::default(),
            broadcast_queue: BroadcastConfig::default(),
            catch_up_wait: CATCH_UP_WAIT,
            seed: rand::random(),
            tombstone_retention: None,
        }
    }
}
