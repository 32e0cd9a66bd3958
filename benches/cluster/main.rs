//! A regional cluster of real `patina agent`s on loopback: how fast a write
//! reaches every node, how long a burst takes to converge, what replication
//! costs the writing node (tx/s against a lone node), bytes on the wire per
//! change, and RSS per node. For 3 and 10 nodes.
//!
//!   cargo bench --bench cluster
//!
//! Environment: `PATINA_BENCH_NODES` (cluster sizes, default "3,10"),
//! `PATINA_BENCH_WRITES` (latency writes, default 200), `PATINA_BENCH_BURST`
//! (burst writes, default 1000), `PATINA_BENCH_SECS` (seconds of the tx/s
//! phases, default 5), `PATINA_BENCH_SEED` (replays the choice of nodes),
//! `PATINA_BENCH_JSON` (also append the JSON lines to this file).
//!
//! Every node is started from the release binary with its own temp data
//! dir; node 0 first, the others bootstrap to node 0's gossip address. The
//! client is one thread (a current-thread tokio runtime); all agents and
//! the client share the machine's cores, so replicas compete with the
//! writer for CPU here in a way they would not on separate hosts.
//! Every wait is bounded; the agents are killed on any panic.
//!
//! The tx/s phases run twice. Shared: every process may use every core,
//! so the replicas' work takes CPU from the writing node. Pinned (with 2
//! or more cores): the writing node and the load generator get core 0,
//! every other node the remaining cores (`taskset`), for the lone baseline
//! and the cluster alike — one host per role, as in production, so the
//! ratio shows what replicating costs the writing node itself.

#[path = "../support/mod.rs"]
mod support;

mod http;
mod nodes;
mod phases;

use std::fmt::Write as _;
use std::time::Duration;

use nodes::{cores, pin, pinning_possible, Cluster};
use phases::{
    burst, lone_node_load, replication_latency, write_load, Burst, Latency, Load, Rng, CLIENTS,
};
use serde_json::{json, Value as Json};
use support::{env_or, proc_status_kib, round2, round3, Agent};

struct Settings {
    writes: usize,
    burst: usize,
    load: Duration,
    seed: u64,
}

fn main() {
    let sizes: Vec<usize> = std::env::var("PATINA_BENCH_NODES")
        .unwrap_or_else(|_| "3,10".into())
        .split(',')
        .map(|s| s.trim().parse().expect("PATINA_BENCH_NODES: e.g. 3,10"))
        .collect();
    assert!(sizes.iter().all(|n| (2..=32).contains(n)), "2..=32 nodes");
    let settings = Settings {
        writes: env_or("PATINA_BENCH_WRITES", 200),
        burst: env_or("PATINA_BENCH_BURST", 1000),
        load: Duration::from_secs(env_or("PATINA_BENCH_SECS", 5)),
        seed: env_or("PATINA_BENCH_SEED", rand_seed()),
    };
    eprintln!("seed {} (PATINA_BENCH_SEED replays it)", settings.seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut lines = Vec::new();

    // The baseline first, with no other agent running: the cluster runs
    // below are compared with it.
    let lone = rt.block_on(lone_node_load(settings.load, false));
    eprintln!("lone node: {:.0} tx/s", lone.tx_per_s);
    lines.push(
        json!({"bench": "cluster", "nodes": 1, "scenario": "write_tx_per_s_lone",
        "result": lone.to_json()}),
    );
    let lone_pinned = pinning_possible().then(|| {
        let l = rt.block_on(lone_node_load(settings.load, true));
        eprintln!("lone node, pinned to core 0: {:.0} tx/s", l.tx_per_s);
        lines.push(
            json!({"bench": "cluster", "nodes": 1, "scenario": "write_tx_per_s_lone_pinned",
            "result": l.to_json()}),
        );
        l
    });

    let mut summaries = Vec::new();
    for &n in &sizes {
        let s = rt.block_on(run_cluster(
            n,
            &settings,
            &lone,
            lone_pinned.as_ref(),
            &mut lines,
        ));
        summaries.push(s);
    }

    for line in &lines {
        println!("{line}");
    }
    let mut text = String::new();
    for line in &lines {
        let _ = writeln!(text, "{line}");
    }
    support::append_json_lines(&text);
    println!();
    println!(
        "lone node, {CLIENTS} clients: {:.0} tx/s, CPU {:.2} cores ({:.0} µs per tx), {:.2} tx per commit",
        lone.tx_per_s,
        lone.writer_cores,
        lone.writer_us_per_tx(),
        lone.group_size
    );
    if let Some(l) = &lone_pinned {
        println!(
            "lone node pinned to core 0 with its clients: {:.0} tx/s, CPU {:.2} cores ({:.0} µs per tx), {:.2} tx per commit",
            l.tx_per_s,
            l.writer_cores,
            l.writer_us_per_tx(),
            l.group_size
        );
    }
    for s in &summaries {
        println!("{s}");
    }
}

fn rand_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.as_nanos() as u64 ^ u64::from(std::process::id())
}

struct Summary {
    nodes: usize,
    latency: Latency,
    burst: Burst,
    load: Load,
    ratio: f64,
    catch_up_ms: f64,
    /// The pinned phase and its ratio to the pinned lone node.
    pinned: Option<(Load, f64)>,
    rss_median_mib: f64,
    rss_max_mib: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.latency;
        let b = &self.burst;
        writeln!(f, "{} nodes:", self.nodes)?;
        writeln!(
            f,
            "  replication latency (ack → visible on all {} others), {} writes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, missed {}; {} over 50 ms, {} pulls served",
            self.nodes - 1, l.writes, l.p50_ms, l.p99_ms, l.max_ms, l.missed, l.over_50ms, l.pulls_served
        )?;
        writeln!(
            f,
            "  burst of {} writes from {CLIENTS} clients: all acked after {:.0} ms, visible everywhere after {:.0} ms",
            b.writes, b.acked_ms, b.converged_ms
        )?;
        writeln!(
            f,
            "  bytes out during the burst: {:.0} B per change received ({:.1} changes per row, {:.0} B per row per peer); {} chunks pushed for {} needed, {} of them duplicates",
            b.bytes_per_change, b.changes_per_row, b.bytes_per_row_per_peer,
            b.chunks_pushed, b.writes * (self.nodes - 1), b.chunks_duplicate
        )?;
        writeln!(
            f,
            "  write load on node 0, {CLIENTS} clients: {:.0} tx/s = {:.2} × lone node; caught up {:.0} ms after the last ack; CPU: node 0 {:.2} cores ({:.0} µs per tx), others {:.2} cores; {:.2} tx per commit",
            self.load.tx_per_s, self.ratio, self.catch_up_ms, self.load.writer_cores,
            self.load.writer_us_per_tx(), self.load.others_cores, self.load.group_size
        )?;
        if let Some((p, ratio)) = &self.pinned {
            writeln!(
                f,
                "  pinned (node 0 and clients on core 0, the others on the rest): {:.0} tx/s = {ratio:.2} × lone node pinned alike; node 0 {:.0} µs per tx; {:.2} tx per commit; node 0 shed {} sends, served {} pulls",
                p.tx_per_s, p.writer_us_per_tx(), p.group_size, p.shed, p.pulls_served
            )?;
        }
        write!(
            f,
            "  RSS per node after the runs: median {:.1} MiB, max {:.1} MiB",
            self.rss_median_mib, self.rss_max_mib
        )
    }
}

async fn run_cluster(
    n: usize,
    s: &Settings,
    lone: &Load,
    lone_pinned: Option<&Load>,
    lines: &mut Vec<Json>,
) -> Summary {
    let mut cluster = Cluster::start(n).await;
    let mut rng = Rng(s.seed ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let line = |scenario: &str, result: Json| json!({"bench": "cluster", "nodes": n, "scenario": scenario, "result": result});

    let latency = replication_latency(&cluster, s.writes, &mut rng).await;
    eprintln!(
        "{n} nodes: latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latency.p50_ms, latency.p99_ms, latency.max_ms
    );
    lines.push(line("replication_latency", latency.to_json()));

    let burst = burst(&cluster, s.burst).await;
    eprintln!(
        "{n} nodes: burst converged after {:.0} ms, {:.0} B/change",
        burst.converged_ms, burst.bytes_per_change
    );
    lines.push(line("burst", burst.to_json()));

    let (load, catch_up_ms) = write_load(&cluster, "load", s.load).await;
    let ratio = load.tx_per_s / lone.tx_per_s;
    eprintln!(
        "{n} nodes: {:.0} tx/s on node 0 ({ratio:.2} × lone), caught up in {catch_up_ms:.0} ms",
        load.tx_per_s
    );
    let mut load_json = load.to_json();
    load_json["ratio_to_lone"] = json!(round3(ratio));
    load_json["catch_up_ms"] = json!(round2(catch_up_ms));
    lines.push(line("write_tx_per_s", load_json));

    // RSS before the pinned phase adds its rows: comparable across runs.
    let mut rss: Vec<f64> = cluster
        .agents
        .iter()
        .map(|a| proc_status_kib(a.pid(), "VmRSS").expect("VmRSS") as f64 / 1024.0)
        .collect();
    rss.sort_by(f64::total_cmp);
    let rss_median_mib = median(&rss);
    let rss_max_mib = rss[rss.len() - 1];
    lines.push(line(
        "rss",
        json!({"median_mib": round2(rss_median_mib), "max_mib": round2(rss_max_mib),
            "per_node_mib": rss.iter().map(|r| round2(*r)).collect::<Vec<_>>()}),
    ));
    let pinned = match lone_pinned {
        None => None,
        Some(lone_pinned) => {
            let rest = format!("1-{}", cores() - 1);
            pin(cluster.agents[0].pid(), "0");
            pin(std::process::id(), "0");
            for a in &cluster.agents[1..] {
                pin(a.pid(), &rest);
            }
            let (p, catch_up_ms) = write_load(&cluster, "pinned", s.load).await;
            let all = format!("0-{}", cores() - 1);
            for pid in cluster
                .agents
                .iter()
                .map(Agent::pid)
                .chain([std::process::id()])
            {
                pin(pid, &all);
            }
            let ratio = p.tx_per_s / lone_pinned.tx_per_s;
            eprintln!(
                "{n} nodes, pinned: {:.0} tx/s on node 0 ({ratio:.2} × lone pinned), caught up in {catch_up_ms:.0} ms",
                p.tx_per_s
            );
            let mut json = p.to_json();
            json["ratio_to_lone"] = json!(round3(ratio));
            json["catch_up_ms"] = json!(round2(catch_up_ms));
            lines.push(line("write_tx_per_s_pinned", json));
            Some((p, ratio))
        }
    };

    cluster.assert_running();
    assert_eq!(latency.missed, 0, "some writes never became visible");
    Summary {
        nodes: n,
        latency,
        burst,
        load,
        ratio,
        catch_up_ms,
        pinned,
        rss_median_mib,
        rss_max_mib,
    }
}

fn median(sorted: &[f64]) -> f64 {
    let m = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[m]
    } else {
        (sorted[m - 1] + sorted[m]) / 2.0
    }
}
