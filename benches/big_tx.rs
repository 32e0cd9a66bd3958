//! Memory of one big transaction on a writer and its replica (issue 15,
//! deliverable 4: a 100,000-row transaction peaks under 100 MiB RSS on
//! both, and RSS returns near idle afterwards).
//!
//!   cargo bench --bench big_tx
//!
//! Environment: `PATINA_BENCH_ROWS` (rows per transaction, default
//! 100,000), `PATINA_BENCH_ROUNDS` (how many times both shapes run, default
//! 2: memory that is not given back shows as growth from round to round),
//! `PATINA_BENCH_SUB` (1, the default: each node has one open subscription,
//! `SELECT count(*) FROM bench`, read by this process, so the subscription
//! path is part of the measurement; 0: none), `PATINA_BENCH_JSON` (also
//! append the JSON lines to this file).
//!
//! Two release `patina agent`s of one region on 127.0.0.1 (temp data
//! dirs, API and gossip on port 0, the second bootstrapping to the first),
//! with the `bench` table of the other benches. Per round, two shapes, both
//! written on node 0 (the writer) and waited for on node 1 (the replica):
//! - `statements`: one `POST /v1/transactions` of N single-row INSERTs
//!   with parameters (Corrosion clients' form), the row shape of
//!   `http_load`;
//! - `insert_select`: one statement, `INSERT INTO bench … SELECT` from a
//!   recursive CTE counting to N, the same columns.
//!
//! Per shape and node: RSS before (VmRSS), peak (VmHWM — the kernel's own
//! high-water mark, reset through `/proc/PID/clear_refs` before the shape
//! starts, so nothing between samples is missed), and RSS once the node has
//! settled after the replica holds every row (both nodes' CPU time still
//! for 1 s; bounded). Idle is VmRSS once both nodes see each other alive
//! and have settled the same way.

#[path = "support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use support::{cpu_secs, env_or, proc_status_kib, round2, setup, setup_peer, Agent};

const INSERT: &str = "INSERT INTO bench (id, a, b, c, d) VALUES (?, ?, ?, ?, ?)";
const CLUSTER: &str = "bench";
/// Bound on forming the region, on replication of one shape, on settling.
const TIMEOUT: Duration = Duration::from_secs(300);

fn main() {
    let rows: u64 = env_or("PATINA_BENCH_ROWS", 100_000);
    let rounds: usize = env_or("PATINA_BENCH_ROUNDS", 2);
    let with_sub = env_or("PATINA_BENCH_SUB", 1u8) != 0;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lines = rt.block_on(run(rows, rounds, with_sub));
    let mut text = String::new();
    for line in &lines {
        let _ = writeln!(text, "{line}");
    }
    print!("{text}");
    support::append_json_lines(&text);
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("HTTP client")
}

fn mib(pid: u32, key: &str) -> f64 {
    proc_status_kib(pid, key).unwrap_or_else(|| panic!("no {key} for pid {pid}")) as f64 / 1024.0
}

/// Resets the process's VmHWM to its current RSS (clear_refs value 5).
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .unwrap_or_else(|e| panic!("reset VmHWM of {pid}: {e}"));
}

async fn run(rows: u64, rounds: usize, with_sub: bool) -> Vec<Json> {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut writer = Agent::start(&setup(dirs[0].path()));
    let mut replica = Agent::start(&setup_peer(dirs[1].path(), &[&writer.gossip]));
    let agents = [&writer, &replica];
    let http = http_client();
    let started = Instant::now();
    while alive_members(&http, &writer.addr).await < 2
        || alive_members(&http, &replica.addr).await < 2
    {
        assert!(
            started.elapsed() < TIMEOUT,
            "the two nodes never saw each other"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut subs = Vec::new();
    if with_sub {
        for a in agents {
            subs.push(tokio::spawn(read_subscription(
                http.clone(),
                a.addr.clone(),
            )));
        }
    }
    settle(&agents).await;
    let idle: Vec<f64> = agents.iter().map(|a| mib(a.pid(), "VmRSS")).collect();
    eprintln!(
        "idle: writer {:.1} MiB, replica {:.1} MiB",
        idle[0], idle[1]
    );
    let mut lines = vec![json!({"bench": "big_tx", "scenario": "idle", "rows": rows,
        "subscription": with_sub,
        "result": {"writer_rss_mib": round2(idle[0]), "replica_rss_mib": round2(idle[1])}})];
    let mut total = 0u64;
    for round in 0..rounds {
        for shape in ["statements", "insert_select"] {
            let prefix = format!("r{round}-{shape}-");
            let before: Vec<f64> = agents.iter().map(|a| mib(a.pid(), "VmRSS")).collect();
            for a in agents {
                reset_peak(a.pid());
            }
            let t0 = Instant::now();
            match shape {
                "statements" => post_statements(&http, &writer.addr, &prefix, rows).await,
                _ => post_insert_select(&http, &writer.addr, &prefix, rows).await,
            }
            let acked = t0.elapsed();
            total += rows;
            wait_rows(&http, &replica.addr, total).await;
            let replicated = t0.elapsed();
            let peak: Vec<f64> = agents.iter().map(|a| mib(a.pid(), "VmHWM")).collect();
            settle(&agents).await;
            let after: Vec<f64> = agents.iter().map(|a| mib(a.pid(), "VmRSS")).collect();
            let anon: Vec<f64> = agents.iter().map(|a| mib(a.pid(), "RssAnon")).collect();
            eprintln!(
                "round {round} {shape}: acked {:.1} s, replicated {:.1} s; writer {:.1} → peak {:.1} → {:.1} MiB (anon {:.1}); replica {:.1} → peak {:.1} → {:.1} MiB (anon {:.1})",
                acked.as_secs_f64(), replicated.as_secs_f64(),
                before[0], peak[0], after[0], anon[0], before[1], peak[1], after[1], anon[1]
            );
            lines.push(
                json!({"bench": "big_tx", "scenario": shape, "round": round, "rows": rows,
                "subscription": with_sub,
                "result": {
                    "acked_s": round2(acked.as_secs_f64()),
                    "replicated_s": round2(replicated.as_secs_f64()),
                    "writer": {"before_mib": round2(before[0]), "peak_mib": round2(peak[0]),
                        "after_mib": round2(after[0]), "after_anon_mib": round2(anon[0])},
                    "replica": {"before_mib": round2(before[1]), "peak_mib": round2(peak[1]),
                        "after_mib": round2(after[1]), "after_anon_mib": round2(anon[1])},
                }}),
            );
        }
    }
    for s in subs {
        s.abort();
    }
    for (name, a) in [("writer", &mut writer), ("replica", &mut replica)] {
        if let Some(status) = a.child.try_wait().unwrap() {
            panic!("the {name} exited during the bench: {status}");
        }
    }
    lines
}

/// Waits until neither node used more than 10 ms of CPU in the last second
/// (bounded): replication, checkpoints and subscription re-runs are done.
async fn settle(agents: &[&Agent]) {
    let started = Instant::now();
    let mut last: Vec<f64> = agents.iter().map(|a| cpu_secs(a.pid())).collect();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now: Vec<f64> = agents.iter().map(|a| cpu_secs(a.pid())).collect();
        let busy = now.iter().zip(&last).any(|(n, l)| n - l > 0.01);
        if !busy {
            return;
        }
        assert!(started.elapsed() < TIMEOUT, "the nodes never went quiet");
        last = now;
    }
}

async fn alive_members(http: &reqwest::Client, addr: &str) -> usize {
    let Ok(resp) = http.get(format!("http://{addr}/v1/members")).send().await else {
        return 0;
    };
    let text = resp.text().await.unwrap_or_default();
    let members: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
    members.as_array().map_or(0, |ms| {
        ms.iter()
            .filter(|m| m["cluster"] == CLUSTER && m["state"] == "alive")
            .count()
    })
}

async fn post(http: &reqwest::Client, addr: &str, body: String) {
    let resp = http
        .post(format!("http://{addr}/v1/transactions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /v1/transactions");
    let status = resp.status();
    let text = resp.text().await.expect("transaction answer");
    assert!(
        status.is_success() && text.contains("\"version\":") && !text.contains("\"version\":null"),
        "HTTP {status}: {}",
        &text[..text.len().min(500)]
    );
}

/// One transaction of `rows` parameterized single-row INSERTs.
async fn post_statements(http: &reqwest::Client, addr: &str, prefix: &str, rows: u64) {
    let mut body = String::with_capacity(rows as usize * 160);
    body.push('[');
    for x in 0..rows {
        if x > 0 {
            body.push(',');
        }
        let blob: Vec<String> = (0..16u64)
            .map(|i| ((x >> (i * 4)) & 0xff).to_string())
            .collect();
        let _ = write!(
            body,
            "[\"{INSERT}\",[\"{prefix}{x}\",{a},\"text-{x:016x}-{b:02}\",{c:.3},[{blob}]]]",
            a = x % 1_000_000,
            b = x % 100,
            c = (x % 100_000) as f64 / 7.0,
            blob = blob.join(","),
        );
    }
    body.push(']');
    post(http, addr, body).await;
}

/// One `INSERT … SELECT` of `rows` rows generated by a recursive CTE.
async fn post_insert_select(http: &reqwest::Client, addr: &str, prefix: &str, rows: u64) {
    let sql = format!(
        "WITH RECURSIVE n(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM n WHERE x < {last}) \
         INSERT INTO bench (id, a, b, c, d) \
         SELECT '{prefix}' || x, x % 1000000, printf('text-%016x-%02d', x, x % 100), \
         (x % 100000) / 7.0, randomblob(16) FROM n",
        last = rows - 1
    );
    post(http, addr, json!([sql]).to_string()).await;
}

async fn count(http: &reqwest::Client, addr: &str) -> u64 {
    let Ok(resp) = http
        .post(format!("http://{addr}/v1/queries"))
        .header("content-type", "application/json")
        .body(json!("SELECT count(*) FROM bench").to_string())
        .send()
        .await
    else {
        return 0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .find_map(|l| l.get("row").and_then(|r| r[1][0].as_u64()))
        .unwrap_or(0)
}

async fn wait_rows(http: &reqwest::Client, addr: &str, want: u64) {
    let started = Instant::now();
    loop {
        let n = count(http, addr).await;
        if n >= want {
            assert_eq!(n, want, "the replica holds more rows than were written");
            return;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "the replica holds {n} of {want} rows after {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Keeps a `SELECT count(*) FROM bench` subscription open and read, so
/// the node's subscription path runs on every commit as it would for a
/// real client.
async fn read_subscription(http: reqwest::Client, addr: String) {
    let Ok(mut resp) = http
        .post(format!("http://{addr}/v1/subscriptions"))
        .header("content-type", "application/json")
        .body(json!("SELECT count(*) FROM bench").to_string())
        .send()
        .await
    else {
        panic!("subscribing on {addr} failed");
    };
    assert!(
        resp.status().is_success(),
        "subscribe on {addr}: HTTP {}",
        resp.status()
    );
    while let Ok(Some(_)) = resp.chunk().await {}
}
