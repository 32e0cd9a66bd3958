//! [`ReplicatorStats`]: the counters every task of a replicator
//! increments, as `prometheus_client` metrics (shared atomics) that
//! [`ReplicatorStats::register`] exports as `patina_replication_*`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use patina_node::RemoteOutcome;
use patina_proto::{CatchUpStatus, LagWindow, SyncCount};
use patina_wire::ChangeChunk;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Counters of one replicator, readable at any time (`counter.get()`),
/// exported with [`ReplicatorStats::register`].
#[derive(Debug, Default)]
pub struct ReplicatorStats {
    pub chunks_received: Counter,
    /// Changes in chunks that were new to this node.
    pub changes_received: Counter,
    pub chunks_duplicate: Counter,
    pub chunks_dropped_queue_full: Counter,
    pub chunks_failed: Counter,
    /// Chunks of new incomplete transactions refused: too many buffered.
    pub chunks_refused_partials_full: Counter,
    /// Chunks not merged because this node's disk is full.
    pub chunks_refused_storage_full: Counter,
    pub versions_applied: Counter,
    pub versions_parked: Counter,
    pub versions_refused: Counter,
    /// Versions left missing: too many held already.
    pub versions_refused_held_full: Counter,
    pub broadcast_chunks_sent: Counter,
    pub broadcast_send_failures: Counter,
    pub sync_rounds: Counter,
    pub sync_failures: Counter,
    pub pulls_served: Counter,
    /// Sync requests answered `InSync`: the peer's digest matched.
    pub sync_in_sync: Counter,
    /// Served conversations ended by `serve_timeout`.
    pub serves_timed_out: Counter,
    /// Pulls cut at `serve_bytes_max`.
    pub serves_bytes_capped: Counter,
    /// Sync streams not served: `serving_max` busy.
    pub serves_refused_busy: Counter,
    /// Sync streams not served: `serving_per_peer_max` of that peer busy.
    pub serves_refused_peer_busy: Counter,
    pub wrong_database: Counter,
    /// Changes offered for a database this cluster does not carry (a
    /// regional change on the global cluster), by table: isolation at
    /// work, or a peer that breaks it.
    pub isolation_refused: IsolationRefusals,
    /// Fresh global changes this cluster merged and handed to the node's
    /// other cluster (a global member's relay), in chunks.
    pub relayed_out: Counter,
    /// Chunks the other cluster handed here to push to this one's peers.
    pub relayed_in: Counter,
    /// Relay chunks dropped because the other side's queue was full (sync
    /// carries them instead).
    pub relay_dropped: Counter,
    /// Broadcast sends shed by the broadcast queue.
    pub broadcast_shed: Counter,
    /// Chunks not handed to the broadcast task (its queue was full): a
    /// relay's forwards, gossip of versions new here.
    pub forwards_dropped: Counter,
    /// Tombstones this node collected (docs/crr.md, "Tombstone collection").
    pub tombstones_collected: Counter,
    /// Times this node found it missed tombstones peers collected (it is
    /// stale: re-seed it).
    pub stale_detected: Counter,
    /// Sync streams not served because this node is stale (what it holds
    /// may resurrect deleted rows at the asker).
    pub serves_refused_stale: Counter,
    /// Peers not pulled from because their summary shows them below this
    /// node's collection floors (stale, or bootstrapping): what they hold
    /// could bring back rows whose deletes were collected here.
    pub pulls_refused_stale: Counter,
    /// Chunks waiting in the apply queue.
    pub apply_queue_chunks: Gauge,
    /// 1 while this node catches up (see `patina_proto::CatchUp`), else 0.
    pub catching_up: Gauge,
    /// Versions its peers held when it joined that it does not hold yet.
    pub catch_up_missing_versions: Gauge,
    /// Commit-to-applied lag of live versions: broadcast, committed after
    /// this node started, applied after it caught up (their chunks carry
    /// the origin's commit time; versions fetched by sync do not).
    pub lag: LagStats,
    /// The same for the rest: versions written while this node was away,
    /// or applied while it caught up (they queued behind the backlog).
    pub catchup_lag: LagStats,
    /// Live lag of `global.db` versions only (a subset of `lag`): origin
    /// commit in any region → applied here, through every relay.
    pub global_lag: LagStats,
    /// The origin commit time (Unix ms) of the newest `global.db` version
    /// this node merged through this cluster or committed itself; 0: none
    /// yet. `/v1/health`'s `global_lag` is the time since.
    pub newest_global_commit_ms: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    table: String,
}

/// Refusals by table, with a bounded number of distinct tables: table
/// names come from peers, and a label per name would let one grow the
/// registry without end.
#[derive(Debug, Default)]
pub struct IsolationRefusals {
    family: Family<TableLabel, Counter>,
    tables: Mutex<std::collections::HashSet<String>>,
}

/// Distinct table labels of [`IsolationRefusals`]; the rest count as
/// `_other`.
const REFUSED_TABLE_LABELS_MAX: usize = 64;

impl IsolationRefusals {
    pub fn add(&self, table: &str, changes: u64) {
        let label = {
            let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
            if tables.contains(table) || tables.len() < REFUSED_TABLE_LABELS_MAX {
                tables.insert(table.to_owned());
                table.to_owned()
            } else {
                "_other".to_owned()
            }
        };
        self.family
            .get_or_create(&TableLabel { table: label })
            .inc_by(changes);
    }

    /// Changes refused for `table` so far (tests, health).
    pub fn of(&self, table: &str) -> u64 {
        self.family
            .get_or_create(&TableLabel {
                table: table.to_owned(),
            })
            .get()
    }
}

/// Drops a chunk of a database this cluster does not carry, counting it.
pub(crate) fn refuse_not_carried(
    stats: &ReplicatorStats,
    from: std::net::SocketAddr,
    chunk: &ChangeChunk,
) {
    stats.wrong_database.inc();
    let mut by_table: std::collections::BTreeMap<&str, u64> = Default::default();
    for change in &chunk.changes {
        *by_table.entry(change.table.as_str()).or_default() += 1;
    }
    for (table, n) in &by_table {
        stats.isolation_refused.add(table, *n);
    }
    tracing::warn!(%from, db = chunk.db.name(), actor = %chunk.actor, version = chunk.version, tables = ?by_table.keys().collect::<Vec<_>>(), "refused changes of a database this cluster does not carry");
}

impl ReplicatorStats {
    /// Registers every metric as `replication_<name>` (`_total` is added to
    /// counters by the encoder) in `registry`, which supplies the `patina`
    /// prefix and the `cluster` label. The registry holds handles to the
    /// same atomics: it reads the live values at each scrape.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("replication");
        // The registry ends every help text with a full stop of its own.
        // This one's `..` is what `/metrics` has always shown: kept as is.
        r.register(
            "lag_seconds",
            "Commit-to-applied lag of broadcast versions (origin's clock to this node's).",
            self.lag.histogram.clone(),
        );
        r.register(
            "catchup_lag_seconds",
            "Commit-to-applied lag of versions written while this node was away or applied while it caught up",
            self.catchup_lag.histogram.clone(),
        );
        let counters: [(&str, &str, &Counter); 31] = [
            (
                "tombstones_collected",
                "Tombstones (clocks of deleted rows) collected once every member applied the delete and it was older than db.tombstone_retention",
                &self.tombstones_collected,
            ),
            (
                "stale_detected",
                "Sync answers showing this node missed deletes whose tombstones peers collected (the node refuses writes; re-seed it from a backup of a healthy node)",
                &self.stale_detected,
            ),
            (
                "serves_refused_stale",
                "Sync streams not served because this node is stale",
                &self.serves_refused_stale,
            ),
            (
                "pulls_refused_stale",
                "Peers not pulled from because their summary is below this node's collection floors (they missed collected deletes)",
                &self.pulls_refused_stale,
            ),
            (
                "chunks_received",
                "Change chunks received from peers (broadcast and sync)",
                &self.chunks_received,
            ),
            (
                "changes_received",
                "Changes in chunks that were new to this node",
                &self.changes_received,
            ),
            (
                "chunks_duplicate",
                "Chunks for versions already held, dropped",
                &self.chunks_duplicate,
            ),
            (
                "chunks_dropped",
                "Chunks dropped because the apply queue was full, in chunks (4,096) or bytes (64 MiB) (sync fetches them again)",
                &self.chunks_dropped_queue_full,
            ),
            (
                "chunks_failed",
                "Chunks refused because merging them failed",
                &self.chunks_failed,
            ),
            (
                "chunks_refused_partials_full",
                "Chunks of incomplete transactions refused because 1,024 versions or 512 MiB are buffered already (sync fetches them again)",
                &self.chunks_refused_partials_full,
            ),
            (
                "chunks_refused_storage_full",
                "Chunks not merged because the disk holding the data dir is full (sync fetches them again once there is room)",
                &self.chunks_refused_storage_full,
            ),
            (
                "versions_applied",
                "Remote transactions applied whole",
                &self.versions_applied,
            ),
            (
                "versions_parked",
                "Remote transactions applied but for changes naming tables or columns this schema lacks (held until a reload adds them)",
                &self.versions_parked,
            ),
            (
                "versions_refused",
                "Remote transactions applied but for changes local constraints refused (held, retried at each schema reload)",
                &self.versions_refused,
            ),
            (
                "versions_refused_held_full",
                "Remote transactions left missing (fetched again later) because 100,000 versions or 512 MiB are held already",
                &self.versions_refused_held_full,
            ),
            (
                "broadcast_chunks_sent",
                "Chunks pushed to peers",
                &self.broadcast_chunks_sent,
            ),
            (
                "broadcast_send_failures",
                "Chunk pushes that failed (sync repairs)",
                &self.broadcast_send_failures,
            ),
            (
                "broadcast_shed",
                "Queued pushes shed because the broadcast queue was full",
                &self.broadcast_shed,
            ),
            (
                "forwards_dropped",
                "Versions not forwarded (relay or gossip) because the broadcast task's queue was full",
                &self.forwards_dropped,
            ),
            (
                "sync_rounds",
                "Anti-entropy rounds started",
                &self.sync_rounds,
            ),
            (
                "sync_failures",
                "Summary exchanges or pulls that failed",
                &self.sync_failures,
            ),
            (
                "pulls_served",
                "Pulls served to peers",
                &self.pulls_served,
            ),
            (
                "serves_timed_out",
                "Sync conversations served that ran past the serve timeout (30 s) and were ended",
                &self.serves_timed_out,
            ),
            (
                "serves_bytes_capped",
                "Pulls cut at the bytes one pull is served (64 MiB); the puller asks again",
                &self.serves_bytes_capped,
            ),
            (
                "serves_refused_busy",
                "Sync streams refused: every serving slot (32) busy",
                &self.serves_refused_busy,
            ),
            (
                "serves_refused_peer_busy",
                "Sync streams refused: that peer's serving slots (4) busy",
                &self.serves_refused_peer_busy,
            ),
            (
                "wrong_database",
                "Chunks for a database this cluster does not carry, dropped",
                &self.wrong_database,
            ),
            (
                "sync_in_sync",
                "Sync requests answered in sync: the asking peer's digest matched this node's, no summary sent",
                &self.sync_in_sync,
            ),
            (
                "relayed_out",
                "Chunks of global changes merged here and handed to this node's other cluster",
                &self.relayed_out,
            ),
            (
                "relayed_in",
                "Chunks of global changes from this node's other cluster pushed to this one",
                &self.relayed_in,
            ),
            (
                "relay_dropped",
                "Relay chunks dropped because the other cluster's queue was full (sync carries them)",
                &self.relay_dropped,
            ),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
        r.register(
            "isolation_refused_changes",
            "Changes refused because this cluster does not carry their database (regional changes offered on the global cluster), by table",
            self.isolation_refused.family.clone(),
        );
        r.register(
            "global_lag_seconds",
            "Commit-to-applied lag of global.db versions, from their origin in any region",
            self.global_lag.histogram.clone(),
        );
        r.register(
            "apply_queue_chunks",
            "Chunks waiting to be merged",
            self.apply_queue_chunks.clone(),
        );
        r.register(
            "catching_up",
            "1 while this node lacks what its peers held when it joined",
            self.catching_up.clone(),
        );
        r.register(
            "catch_up_missing_versions",
            "Versions its peers held when this node joined that it does not hold yet",
            self.catch_up_missing_versions.clone(),
        );
    }
}

/// Increments the counter a sync session's `Count` action names.
pub(crate) fn count(stats: &ReplicatorStats, event: SyncCount) {
    let counter = match event {
        SyncCount::ChunkReceived => &stats.chunks_received,
        SyncCount::PullServed => &stats.pulls_served,
        SyncCount::DigestMatched => &stats.sync_in_sync,
        SyncCount::ServeTimedOut => &stats.serves_timed_out,
        SyncCount::ServeBytesCapped => &stats.serves_bytes_capped,
    };
    counter.inc();
}

/// How merged chunks reached this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Pushed by broadcast as they committed.
    Broadcast,
    /// Pulled by anti-entropy sync: repair, never live.
    Sync,
}

pub(crate) fn record(
    stats: &ReplicatorStats,
    chunks: &[Arc<ChangeChunk>],
    outcome: &RemoteOutcome,
    delivery: Delivery,
    catch_up: &CatchUpStatus,
) {
    record_lag(stats, chunks, &outcome.fresh, delivery, catch_up);
    let fresh_changes: usize = chunks
        .iter()
        .zip(&outcome.fresh)
        .filter(|(_, f)| **f)
        .map(|(c, _)| c.changes.len())
        .sum();
    stats.changes_received.inc_by(fresh_changes as u64);
    stats.chunks_duplicate.inc_by(outcome.duplicates as u64);
    stats.chunks_failed.inc_by(outcome.failed as u64);
    stats
        .chunks_refused_partials_full
        .inc_by(outcome.refused_partials_full as u64);
    stats
        .chunks_refused_storage_full
        .inc_by(outcome.storage_full as u64);
    stats
        .versions_applied
        .inc_by(outcome.versions_applied as u64);
    stats.versions_parked.inc_by(outcome.versions_parked as u64);
    stats
        .versions_refused
        .inc_by(outcome.versions_refused as u64);
    stats
        .versions_refused_held_full
        .inc_by(outcome.refused_held_full as u64);
}

/// Samples the lag of fresh chunks that carry their commit time, as live
/// lag or catch-up lag (`CatchUpStatus::is_live`; sync is never live).
/// Hosts' clocks differ a little; a chunk "from the future" counts as no
/// lag.
fn record_lag(
    stats: &ReplicatorStats,
    chunks: &[Arc<ChangeChunk>],
    fresh: &[bool],
    delivery: Delivery,
    catch_up: &CatchUpStatus,
) {
    let now_ms = patina_node::unix_ms();
    let now = std::time::Instant::now();
    let (mut live, mut catchup) = (Vec::new(), Vec::new());
    for (chunk, _) in chunks
        .iter()
        .zip(fresh)
        .filter(|(c, f)| **f && c.committed_ms > 0)
    {
        let lag_ms = now_ms.saturating_sub(chunk.committed_ms);
        if delivery == Delivery::Broadcast && catch_up.is_live(chunk.committed_ms) {
            live.push(lag_ms);
        } else {
            catchup.push(lag_ms);
        }
    }
    let global: Vec<u64> = chunks
        .iter()
        .zip(fresh)
        .filter(|(c, f)| **f && c.committed_ms > 0 && c.db == patina_wire::DbKind::Global)
        .filter(|(c, _)| delivery == Delivery::Broadcast && catch_up.is_live(c.committed_ms))
        .map(|(c, _)| now_ms.saturating_sub(c.committed_ms))
        .collect();
    stats.global_lag.record(now, global);
    let newest = chunks
        .iter()
        .zip(fresh)
        .filter(|(c, f)| **f && c.db == patina_wire::DbKind::Global)
        .map(|(c, _)| c.committed_ms)
        .max()
        .unwrap_or(0);
    stats
        .newest_global_commit_ms
        .fetch_max(newest, std::sync::atomic::Ordering::Relaxed);
    stats.lag.record(now, live);
    stats.catchup_lag.record(now, catchup);
}

/// Replication lag of one kind of versions (live or catch-up), kept two ways: a Prometheus
/// histogram (aggregatable across nodes and over any range) and the last
/// minute's samples, from which `/v1/health` reads its `p99_lag` (a deploy
/// gate that must fall back as soon as a slow spell is over, which a
/// cumulative histogram cannot do on its own).
#[derive(Debug)]
pub struct LagStats {
    window: Mutex<LagWindow>,
    histogram: Histogram,
}

impl Default for LagStats {
    fn default() -> Self {
        LagStats {
            window: Mutex::new(LagWindow::default()),
            // 1 ms, 2 ms, … ~65 s.
            histogram: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
        }
    }
}

impl LagStats {
    /// Adds lag samples (ms) taken at `now`.
    pub fn record(&self, now: Instant, lags_ms: impl IntoIterator<Item = u64>) {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        for ms in lags_ms {
            window.record(now, ms);
            self.histogram.observe(ms as f64 / 1000.0);
        }
    }

    /// The 99th percentile of the last minute's samples, ms.
    pub fn p99_ms(&self, now: Instant) -> Option<u64> {
        self.window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .p99_ms(now)
    }
}
