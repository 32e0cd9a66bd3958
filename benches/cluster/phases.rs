//! The measured phases: replication latency, the burst, and the tx/s write
//! load (on a lone node and on node 0 of a cluster), with their results.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value as Json};

use crate::http::{count_prefix, http_client, insert, metric, query, CLUSTER};
use crate::nodes::{cores, pin, sum_metric, Cluster, CONVERGE_TIMEOUT};
use crate::support::{self, cpu_secs, round2, round3, setup, Agent};

/// Concurrent clients of the burst and the tx/s phases.
pub(crate) const CLIENTS: usize = 8;
/// How often the latency phase asks each other node for the row.
const LATENCY_POLL: Duration = Duration::from_millis(1);
/// How often the burst phase counts rows on each node.
const BURST_POLL: Duration = Duration::from_millis(5);
/// A write not visible everywhere within this is counted as missed.
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(10);

/// xorshift64*: enough to spread writes over nodes, and replayable.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

pub(crate) struct Latency {
    pub(crate) writes: usize,
    pub(crate) missed: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) ack_p50_ms: f64,
    /// Writes visible everywhere only after 50 ms: a push on loopback takes
    /// a few ms, so these were most likely delivered by sync (every 200 ms).
    pub(crate) over_50ms: u64,
    /// Pulls the nodes served during the phase (sync fetching what
    /// broadcast did not deliver).
    pub(crate) pulls_served: u64,
}

impl Latency {
    pub(crate) fn to_json(&self) -> Json {
        json!({
            "writes": self.writes,
            "missed": self.missed,
            "p50_ms": round3(self.p50_ms),
            "p99_ms": round3(self.p99_ms),
            "max_ms": round3(self.max_ms),
            "ack_p50_ms": round3(self.ack_p50_ms),
            "over_50ms": self.over_50ms,
            "pulls_served": self.pulls_served,
            "poll_interval_ms": LATENCY_POLL.as_secs_f64() * 1000.0,
        })
    }
}

/// One write at a time on a random node; after its ack, every other node
/// is asked every `LATENCY_POLL` whether it has the row. The latency of a
/// write is from the ack until the answer that showed the row on the last
/// node arrived (so it includes up to one poll interval plus one query).
pub(crate) async fn replication_latency(
    cluster: &Cluster,
    writes: usize,
    rng: &mut Rng,
) -> Latency {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut acks = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut missed = 0;
    let pulls0 = sum_metric(cluster, "patina_replication_pulls_served_total").await;
    for i in 0..writes {
        let writer = rng.below(cluster.len());
        let id = format!("lat-{i:05}");
        let sent = Instant::now();
        insert(&cluster.http, &cluster.agents[writer].addr, &id, rng.next())
            .await
            .unwrap_or_else(|e| panic!("write {id} on node {writer}: {e}"));
        let acked = Instant::now();
        acks.saturating_record((acked - sent).as_micros().max(1) as u64);
        let polls = cluster
            .agents
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != writer)
            .map(|(_, a)| visible_at(&cluster.http, &a.addr, &id, acked + VISIBLE_TIMEOUT));
        let seen = futures_util::future::join_all(polls).await;
        match seen.into_iter().collect::<Option<Vec<Instant>>>() {
            Some(times) => {
                let last = times.into_iter().max().unwrap_or(acked);
                hist.saturating_record((last - acked).as_micros().max(1) as u64);
            }
            None => missed += 1,
        }
    }
    let pulls_served = sum_metric(cluster, "patina_replication_pulls_served_total").await - pulls0;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Latency {
        over_50ms: hist.count_between(50_001, u64::MAX),
        pulls_served,
        writes,
        missed,
        p50_ms: ms(&hist, 0.5),
        p99_ms: ms(&hist, 0.99),
        max_ms: hist.max() as f64 / 1000.0,
        ack_p50_ms: ms(&acks, 0.5),
    }
}

/// When the row `id` was first seen on the node at `addr` (the arrival of
/// the answer that had it), or `None` if not by `deadline`.
async fn visible_at(
    http: &reqwest::Client,
    addr: &str,
    id: &str,
    deadline: Instant,
) -> Option<Instant> {
    loop {
        let asked = Instant::now();
        let rows = query(http, addr, "SELECT 1 FROM bench WHERE id = ?", json!([id])).await;
        if !rows.is_empty() {
            return Some(Instant::now());
        }
        if asked > deadline {
            return None;
        }
        tokio::time::sleep_until((asked + LATENCY_POLL).into()).await;
    }
}

pub(crate) struct Burst {
    pub(crate) writes: usize,
    pub(crate) acked_ms: f64,
    pub(crate) converged_ms: f64,
    pub(crate) bytes_out: u64,
    pub(crate) changes_received: u64,
    pub(crate) bytes_per_change: f64,
    pub(crate) changes_per_row: f64,
    pub(crate) bytes_per_row_per_peer: f64,
    /// Chunk pushes during the burst, and how many arrived at a node that
    /// already had the version (forwards of forwards).
    pub(crate) chunks_pushed: u64,
    pub(crate) chunks_duplicate: u64,
}

impl Burst {
    pub(crate) fn to_json(&self) -> Json {
        json!({
            "writes": self.writes,
            "clients": CLIENTS,
            "all_acked_ms": round2(self.acked_ms),
            "visible_everywhere_ms": round2(self.converged_ms),
            "bytes_out": self.bytes_out,
            "changes_received": self.changes_received,
            "bytes_per_change": round2(self.bytes_per_change),
            "changes_per_row": round3(self.changes_per_row),
            "bytes_per_row_per_peer": round2(self.bytes_per_row_per_peer),
            "chunks_pushed": self.chunks_pushed,
            "chunks_duplicate": self.chunks_duplicate,
        })
    }
}

/// `writes` inserts from `CLIENTS` clients at once (client c on node
/// c mod N), each as fast as its acks come back; the time from the first
/// send until every node counts all of them, polled every `BURST_POLL`.
pub(crate) async fn burst(cluster: &Cluster, writes: usize) -> Burst {
    let bytes0 = sum_metric(cluster, "patina_transport_bytes_out_total").await;
    let changes0 = sum_metric(cluster, "patina_replication_changes_received_total").await;
    let pushed0 = sum_metric(cluster, "patina_replication_broadcast_chunks_sent_total").await;
    let dup0 = sum_metric(cluster, "patina_replication_chunks_duplicate_total").await;
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let addr = cluster.agents[c % cluster.len()].addr.clone();
        let http = http_client();
        let ids: Vec<usize> = (c..writes).step_by(CLIENTS).collect();
        clients.spawn(async move {
            for i in ids {
                let id = format!("burst-{i:05}");
                insert(&http, &addr, &id, i as u64 * 7919)
                    .await
                    .unwrap_or_else(|e| panic!("burst write {id}: {e}"));
            }
            Instant::now()
        });
    }
    let polls = cluster.agents.iter().map(|a| async move {
        let deadline = started + CONVERGE_TIMEOUT;
        loop {
            let asked = Instant::now();
            if count_prefix(&cluster.http, &a.addr, "burst-").await >= writes as u64 {
                return Instant::now();
            }
            assert!(
                asked < deadline,
                "node {} did not get the burst within {CONVERGE_TIMEOUT:?}",
                a.addr
            );
            tokio::time::sleep_until((asked + BURST_POLL).into()).await;
        }
    });
    let seen = futures_util::future::join_all(polls).await;
    let mut last_ack = started;
    while let Some(done) = clients.join_next().await {
        last_ack = last_ack.max(done.expect("a burst client panicked"));
    }
    let converged = seen.into_iter().max().unwrap_or(started);
    let bytes_out = sum_metric(cluster, "patina_transport_bytes_out_total").await - bytes0;
    let changes_received =
        sum_metric(cluster, "patina_replication_changes_received_total").await - changes0;
    let chunks_pushed =
        sum_metric(cluster, "patina_replication_broadcast_chunks_sent_total").await - pushed0;
    let chunks_duplicate =
        sum_metric(cluster, "patina_replication_chunks_duplicate_total").await - dup0;
    let peers = (cluster.len() - 1) as f64;
    Burst {
        chunks_pushed,
        chunks_duplicate,
        writes,
        acked_ms: (last_ack - started).as_secs_f64() * 1000.0,
        converged_ms: (converged - started).as_secs_f64() * 1000.0,
        bytes_out,
        changes_received,
        bytes_per_change: bytes_out as f64 / changes_received.max(1) as f64,
        changes_per_row: changes_received as f64 / (writes as f64 * peers),
        bytes_per_row_per_peer: bytes_out as f64 / (writes as f64 * peers),
    }
}

pub(crate) struct Load {
    pub(crate) secs: f64,
    pub(crate) txs: u64,
    pub(crate) errors: u64,
    pub(crate) tx_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) writer_cores: f64,
    /// CPU of all other agents together during the phase.
    pub(crate) others_cores: f64,
    /// Client transactions per SQLite commit on the writing node.
    pub(crate) group_size: f64,
    /// Broadcast sends the writing node shed, and pulls it served, during
    /// the phase: replicas falling behind cost the writer this.
    pub(crate) shed: u64,
    pub(crate) pulls_served: u64,
}

impl Load {
    /// CPU the writing node spent per committed transaction: unlike tx/s,
    /// it does not depend on how much CPU the other agents took.
    pub(crate) fn writer_us_per_tx(&self) -> f64 {
        self.writer_cores * self.secs * 1e6 / self.txs.max(1) as f64
    }

    pub(crate) fn to_json(&self) -> Json {
        json!({
            "clients": CLIENTS,
            "secs": round2(self.secs),
            "transactions": self.txs,
            "errors": self.errors,
            "tx_per_s": self.tx_per_s.round(),
            "p50_ms": round3(self.p50_ms),
            "p99_ms": round3(self.p99_ms),
            "writer_cpu_cores": round2(self.writer_cores),
            "writer_cpu_us_per_tx": round2(self.writer_us_per_tx()),
            "others_cpu_cores": round2(self.others_cores),
            "txs_per_commit": round2(self.group_size),
            "broadcast_shed": self.shed,
            "pulls_served": self.pulls_served,
        })
    }
}

/// The write load on node 0 (rows named `prefix-…`), then the time until
/// every node holds its rows: replication keeps up if that is short.
pub(crate) async fn write_load(cluster: &Cluster, prefix: &str, duration: Duration) -> (Load, f64) {
    const LOSSES: [&str; 3] = [
        "patina_replication_chunks_dropped_total",
        "patina_replication_forwards_dropped_total",
        "patina_replication_broadcast_shed_total",
    ];
    let mut losses0 = Vec::new();
    for name in LOSSES {
        losses0.push(sum_metric(cluster, name).await);
    }
    let others: Vec<u32> = cluster.agents[1..].iter().map(Agent::pid).collect();
    let load = load(
        &cluster.agents[0].addr,
        prefix,
        cluster.agents[0].pid(),
        &others,
        duration,
    )
    .await;
    let caught = Instant::now();
    let rows = format!("{prefix}-");
    for a in &cluster.agents {
        loop {
            if count_prefix(&cluster.http, &a.addr, &rows).await >= load.txs {
                break;
            }
            assert!(
                caught.elapsed() < CONVERGE_TIMEOUT,
                "node {} did not catch up with the write load within {CONVERGE_TIMEOUT:?}",
                a.addr
            );
            tokio::time::sleep(BURST_POLL).await;
        }
    }
    let caught_ms = caught.elapsed().as_secs_f64() * 1000.0;
    let mut losses = Vec::new();
    for (name, before) in LOSSES.iter().zip(losses0) {
        let lost = sum_metric(cluster, name).await - before;
        if lost > 0 {
            losses.push(format!(
                "{lost} {}",
                name.trim_start_matches("patina_replication_")
            ));
        }
    }
    if !losses.is_empty() {
        // Sync delivered these: replicas fell behind the write load.
        eprintln!(
            "  {prefix}: broadcast losses over the cluster: {}",
            losses.join(", ")
        );
    }
    (load, caught_ms)
}

/// A lone node (no peers, nothing else running): the baseline of the
/// write load, after a 1 s warm-up like `http_load`'s.
pub(crate) async fn lone_node_load(duration: Duration, pinned: bool) -> Load {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&setup(dir.path()));
    if pinned {
        pin(agent.pid(), "0");
        pin(std::process::id(), "0");
    }
    let _ = load(
        &agent.addr,
        "warm",
        agent.pid(),
        &[],
        Duration::from_secs(1),
    )
    .await;
    let load = load(&agent.addr, "load", agent.pid(), &[], duration).await;
    if pinned {
        pin(std::process::id(), &format!("0-{}", cores() - 1));
    }
    load
}

/// `CLIENTS` clients, each on its own keep-alive connection, send
/// single-row inserts to `addr` back to back for `duration`.
async fn load(addr: &str, prefix: &str, pid: u32, others: &[u32], duration: Duration) -> Load {
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_secs(*p)).sum::<f64>();
    let http = http_client();
    let writes = |key: &'static str| {
        let http = http.clone();
        async move {
            metric(
                &http,
                addr,
                &format!("patina_writer_{key}_total{{db=\"regional\"}}"),
            )
            .await
        }
    };
    let (txs0, commits0) = (writes("transactions").await, writes("commits").await);
    let replication = |name: &'static str| {
        let http = http.clone();
        async move {
            metric(
                &http,
                addr,
                &format!("patina_replication_{name}_total{{cluster=\"{CLUSTER}\"}}"),
            )
            .await
        }
    };
    let (shed0, served0) = (
        replication("broadcast_shed").await,
        replication("pulls_served").await,
    );
    let (writer0, others0) = (cpu_secs(pid), cpu(others));
    let started = Instant::now();
    let deadline = started + duration;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let addr = addr.to_owned();
        let prefix = prefix.to_owned();
        clients.spawn(async move {
            let http = support::load_client();
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut errors = 0u64;
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let id = format!("{prefix}-{c}-{seq:07}");
                seq += 1;
                let t0 = Instant::now();
                match insert(&http, &addr, &id, seq.wrapping_mul(0x9E37_79B9)).await {
                    Ok(()) => hist.saturating_record(t0.elapsed().as_micros().max(1) as u64),
                    Err(e) => {
                        if errors == 0 {
                            eprintln!("client {c}: {e}");
                        }
                        errors += 1;
                        // A failing agent must not turn this into a busy loop.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (hist, errors)
        });
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut errors = 0;
    while let Some(done) = clients.join_next().await {
        let (h, e) = done.expect("a load client panicked");
        hist.add(&h).unwrap();
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(errors, 0, "writes failed under load");
    let (writer_cores, others_cores) = (
        (cpu_secs(pid) - writer0) / secs,
        (cpu(others) - others0) / secs,
    );
    let group_size = (writes("transactions").await - txs0) as f64
        / (writes("commits").await - commits0).max(1) as f64;
    let shed = replication("broadcast_shed").await - shed0;
    let pulls_served = replication("pulls_served").await - served0;
    Load {
        secs,
        txs: hist.len(),
        errors,
        tx_per_s: hist.len() as f64 / secs,
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        writer_cores,
        others_cores,
        group_size,
        shed,
        pulls_served,
    }
}
