//! [`ReplicatorStats`]: the counters every task of a replicator bumps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use patina_node::RemoteOutcome;
use patina_proto::{LagWindow, SyncCount};
use patina_wire::ChangeChunk;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

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
    pub lag: LagStats,
}

impl ReplicatorStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Bumps the counter a sync session's `Count` action names.
pub(crate) fn count(stats: &ReplicatorStats, event: SyncCount) {
    let counter = match event {
        SyncCount::ChunkReceived => &stats.chunks_received,
        SyncCount::WrongDatabase => &stats.wrong_database,
        SyncCount::PullServed => &stats.pulls_served,
    };
    bump(counter, 1);
}

pub(crate) fn record(
    stats: &ReplicatorStats,
    chunks: &[Arc<ChangeChunk>],
    outcome: &RemoteOutcome,
) {
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

/// Replication lag of broadcast versions, kept two ways: a Prometheus
/// histogram (aggregatable across nodes and over any range) and the last
/// minute's samples, from which `/v1/health` reads its `p99_lag` (a deploy
/// gate that must fall back as soon as a slow spell is over, which a
/// cumulative histogram cannot do on its own).
#[derive(Debug)]
pub struct LagStats {
    window: Mutex<LagWindow>,
    pub(crate) histogram: Histogram,
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
