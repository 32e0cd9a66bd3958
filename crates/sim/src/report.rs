//! What a run measured: the JSON object the binary prints, and the raw
//! samples the plots are drawn from.

use serde::Serialize;

/// The p-th percentile (0–100) of `samples` (µs), in ms; nearest rank.
/// `None` without samples.
pub fn percentile_ms(samples: &[u64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    Some(round3(sorted[i] as f64 / 1_000.0))
}

pub fn round3(x: f64) -> f64 {
    (x * 1_000.0).round() / 1_000.0
}

/// Bytes per node per second, by kind of traffic.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TrafficRates {
    pub membership: f64,
    pub broadcast: f64,
    pub sync: f64,
    pub relay: f64,
    pub total: f64,
}

/// One run's figures. Everything but `wall_s`, `events_per_s` and
/// `peak_rss_mib` is a function of the arguments alone.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub nodes: usize,
    pub regions: usize,
    pub global_per_region: usize,
    pub seed: u64,
    pub seconds: u64,
    pub loss: f64,
    pub faults: bool,
    pub writes_per_region_s: f64,
    /// Events the scheduler ran.
    pub events: u64,
    /// FNV-1a of the event log (time, kind, node of every event).
    pub event_log_hash: String,
    /// Simulated seconds, workload and quiescence together.
    pub simulated_s: f64,
    /// Simulated time from the end of the workload until every node held
    /// exactly what was written; `null` if it never did.
    pub converged_after_ms: Option<f64>,
    pub regional_writes: u64,
    pub rollup_versions: u64,
    /// A regional write reaching every node of its region (that was up
    /// when it was written), per write.
    pub regional_delivery_p50_ms: Option<f64>,
    pub regional_delivery_p99_ms: Option<f64>,
    pub regional_delivery_max_ms: Option<f64>,
    /// Writes some node of their region had not received when the run ended.
    pub regional_incomplete: u64,
    /// A regional write reaching one node of its region, per (write, node).
    pub regional_node_p99_ms: Option<f64>,
    /// A change of a region's app set (a regional write) reaching the
    /// `app_regions` row of every node of every region, per change.
    pub rollup_p50_ms: Option<f64>,
    pub rollup_p99_ms: Option<f64>,
    pub rollup_max_ms: Option<f64>,
    /// Changes overtaken by a newer change of the same row before every
    /// node had them.
    pub rollup_superseded: u64,
    pub rollup_incomplete: u64,
    /// Average bytes sent per node per simulated second, all kinds.
    pub bytes_per_node_s: f64,
    pub bytes_per_plain_node_s: TrafficRates,
    pub bytes_per_global_member_s: TrafficRates,
    /// Over all nodes, counting encoded frames and datagrams only (no
    /// packet headers, no retransmissions): what the agent's transport
    /// counters measure, for calibration.
    pub encoded_bytes_per_node_s: TrafficRates,
    /// A healthy node (up, reachable, untouched by faults for 60 s)
    /// declared down by a peer.
    pub false_down: u64,
    pub false_down_per_node_hour: f64,
    /// Members declared down while a fault touched them (expected).
    pub fault_downs: u64,
    pub crashes: u64,
    /// A crashed node declared down by a peer of its region, per peer.
    pub crash_detect_p50_ms: Option<f64>,
    pub crash_detect_p99_ms: Option<f64>,
    pub crash_detect_max_ms: Option<f64>,
    pub broadcast_shed: u64,
    pub sync_rounds: u64,
    pub sync_failures: u64,
    pub datagrams_lost: u64,
    /// Every invariant that failed, first violating event first; empty
    /// when all held.
    pub violations: Vec<String>,
    pub wall_s: f64,
    pub events_per_s: f64,
    /// The process's peak resident set (Linux `VmHWM`), if readable.
    pub peak_rss_mib: Option<f64>,
}

impl Report {
    /// The report as JSON without the fields that depend on the machine
    /// (wall time, speed, memory): what two runs of one seed must share.
    pub fn deterministic_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(map) = v.as_object_mut() {
            for key in ["wall_s", "events_per_s", "peak_rss_mib"] {
                map.remove(key);
            }
        }
        v
    }
}

/// The raw samples behind the report (µs), kept when plots are wanted.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// Per regional write: until its whole region held it.
    pub regional_write: Vec<u64>,
    /// Per (regional write, node).
    pub regional_node: Vec<u64>,
    /// Per rollup change: until every node held it.
    pub rollup: Vec<u64>,
    /// Per (crash, peer) that declared it down.
    pub crash_detect: Vec<u64>,
    /// (simulated second, node count) of nodes whose regional data lags
    /// the truth of their region, sampled each second: how a partition
    /// looks while it lasts and after it heals.
    pub lagging_nodes: Vec<(f64, usize)>,
    /// (simulated second, node count) of nodes whose `app_regions` rows
    /// differ from what the regions' machines say, sampled each second.
    pub stale_rollup_nodes: Vec<(f64, usize)>,
}

/// The peak resident set of this process, MiB (Linux).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(round3(kib / 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<u64> = (1..=100).map(|i| i * 1_000).collect();
        assert_eq!(percentile_ms(&s, 50.0), Some(50.0));
        assert_eq!(percentile_ms(&s, 99.0), Some(99.0));
        assert_eq!(percentile_ms(&s, 100.0), Some(100.0));
        assert_eq!(percentile_ms(&[], 50.0), None);
    }
}
