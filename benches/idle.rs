//! What an idle region costs: N release agents of one region with nothing
//! to replicate, measured over T seconds after a warm-up.
//!
//!   cargo bench --bench idle
//!
//! Environment: `PATINA_BENCH_NODES` (cluster sizes, default "3,10"),
//! `PATINA_BENCH_SECS` (measured seconds, default 30),
//! `PATINA_BENCH_WARMUP` (seconds after the region formed, default 8),
//! `PATINA_BENCH_JSON` (also append the JSON lines to this file).
//!
//! Per cluster size: CPU per node-second (utime + stime of every agent,
//! /proc), bytes sent per node-second by the transport — membership (SWIM
//! datagrams) and replication (stream frames) apart; QUIC's own packets
//! (acks, keep-alives, handshakes) are not counted — sync rounds per
//! node-second, and each agent's RSS at the end (median and max).
//!
//! Then what the slower idle pace costs when something must be repaired:
//! an in-process region of `PATINA_BENCH_REPAIR_NODES` (default 10) nodes
//! with broadcast switched off (every write is a "lost broadcast" that
//! sync alone must repair), idle long enough for rounds to back off, then
//! one write; the time until every node holds it, `PATINA_BENCH_REPAIRS`
//! (default 10) times, with the idle back-off (`sync_interval_max` 3.2 s)
//! and without it (rounds every 200 ms, as before the back-off existed).

#[path = "support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "cluster/http.rs"]
mod http;
#[allow(dead_code)]
#[path = "cluster/nodes.rs"]
mod nodes;

use std::time::{Duration, Instant};

use http::{metric, CLUSTER};
use nodes::Cluster;
use serde_json::json;
use support::{append_json_lines, cpu_secs, env_or, proc_status_kib, round2, round3};

/// Per agent: bytes sent, datagram bytes sent, sync rounds.
async fn counters(cluster: &Cluster) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    for a in &cluster.agents {
        let get = |name: &str| format!("{name}{{cluster=\"{CLUSTER}\"}}");
        out.push((
            metric(
                &cluster.http,
                &a.addr,
                &get("patina_transport_bytes_out_total"),
            )
            .await,
            metric(
                &cluster.http,
                &a.addr,
                &get("patina_transport_datagram_bytes_out_total"),
            )
            .await,
            metric(
                &cluster.http,
                &a.addr,
                &get("patina_replication_sync_rounds_total"),
            )
            .await,
        ));
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Per write: ms from before the write until every node holds it.
async fn repair_times(nodes: usize, writes: usize, interval_max: Duration) -> Vec<f64> {
    use patina_replicator::ReplicatorConfig;
    let options = patina_testkit::Options {
        replicator: ReplicatorConfig {
            broadcast: false,
            sync_interval_max: interval_max,
            seed: 11,
            ..ReplicatorConfig::default()
        },
        ..patina_testkit::Options::default()
    };
    let cluster = patina_testkit::TestCluster::start(nodes, options).await;
    let mut times = Vec::with_capacity(writes);
    for k in 0..writes {
        // Idle: long enough for the rounds to back off to the maximum.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let t0 = Instant::now();
        let writer = k % nodes;
        cluster
            .exec(writer, &format!("INSERT INTO apps VALUES ('a{k}', 'o')"))
            .await;
        for i in 0..nodes {
            loop {
                let rows = patina_testkit::rows(
                    &cluster.nodes[i].node,
                    &format!("SELECT 1 FROM apps WHERE name = 'a{k}'"),
                )
                .await;
                if !rows.is_empty() {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "write {k} never reached node {i}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    times
}

fn main() {
    let sizes: Vec<usize> = env_or::<String>("PATINA_BENCH_NODES", "3,10".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("PATINA_BENCH_NODES: sizes, e.g. 3,10")
        })
        .collect();
    let secs: f64 = env_or("PATINA_BENCH_SECS", 30.0);
    let warmup: f64 = env_or("PATINA_BENCH_WARMUP", 8.0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let repair_nodes: usize = env_or("PATINA_BENCH_REPAIR_NODES", 10);
    let repairs: usize = env_or("PATINA_BENCH_REPAIRS", 10);
    if repairs > 0 {
        let mt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        for (label, max) in [
            ("paced", Duration::from_millis(3200)),
            ("fixed_200ms", Duration::from_millis(200)),
        ] {
            let t = mt.block_on(repair_times(repair_nodes, repairs, max));
            let summary = json!({
                "bench": "idle_repair",
                "nodes": repair_nodes,
                "pace": label,
                "writes": repairs,
                "ms_until_every_node": {"p50": round2(t[t.len() / 2]), "max": round2(t[t.len() - 1])},
            });
            println!("{summary}");
            append_json_lines(&format!("{summary}\n"));
        }
    }
    for n in sizes {
        let summary = rt.block_on(async {
            let mut cluster = Cluster::start(n).await;
            tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
            let pids: Vec<u32> = cluster.agents.iter().map(|a| a.pid()).collect();
            let cpu0: Vec<f64> = pids.iter().map(|&p| cpu_secs(p)).collect();
            let c0 = counters(&cluster).await;
            let started = Instant::now();
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            let elapsed = started.elapsed().as_secs_f64();
            let cpu1: Vec<f64> = pids.iter().map(|&p| cpu_secs(p)).collect();
            let c1 = counters(&cluster).await;
            cluster.assert_running();
            let node_secs = elapsed * n as f64;
            let cpu: f64 = cpu1.iter().zip(&cpu0).map(|(a, b)| a - b).sum();
            let delta = |f: fn(&(u64, u64, u64)) -> u64| -> f64 {
                c1.iter().zip(&c0).map(|(a, b)| (f(a) - f(b)) as f64).sum()
            };
            let bytes = delta(|c| c.0);
            let datagram_bytes = delta(|c| c.1);
            let rounds = delta(|c| c.2);
            let rss: Vec<f64> = pids
                .iter()
                .map(|&p| proc_status_kib(p, "VmRSS").unwrap_or(0) as f64 / 1024.0)
                .collect();
            json!({
                "bench": "idle",
                "nodes": n,
                "secs": round2(elapsed),
                "cpu_ms_per_node_sec": round3(cpu * 1000.0 / node_secs),
                "bytes_per_node_sec": {
                    "membership": (datagram_bytes / node_secs).round(),
                    "replication": ((bytes - datagram_bytes) / node_secs).round(),
                },
                "sync_rounds_per_node_sec": round3(rounds / node_secs),
                "rss_mib": {"median": round2(median(rss.clone())), "max": round2(rss.iter().cloned().fold(0.0, f64::max))},
            })
        });
        println!("{summary}");
        append_json_lines(&format!("{summary}\n"));
    }
}
