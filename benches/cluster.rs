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

mod support;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value as Json};
use support::{cpu_secs, proc_status_kib, round2, round3, setup, setup_peer, Agent};

const INSERT: &str = "INSERT INTO bench (id, a, b, c, d) VALUES (?, ?, ?, ?, ?)";
const CLUSTER: &str = "bench";
/// Concurrent clients of the burst and the tx/s phases.
const CLIENTS: usize = 8;
/// How often the latency phase asks each other node for the row.
const LATENCY_POLL: Duration = Duration::from_millis(1);
/// How often the burst phase counts rows on each node.
const BURST_POLL: Duration = Duration::from_millis(5);
/// A write not visible everywhere within this is counted as missed.
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on forming a cluster and on any catch-up after a phase.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}: cannot parse {v:?}")),
        Err(_) => default,
    }
}

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
    if let Ok(path) = std::env::var("PATINA_BENCH_JSON") {
        let mut text = String::new();
        for line in &lines {
            let _ = writeln!(text, "{line}");
        }
        let mut old = std::fs::read_to_string(&path).unwrap_or_default();
        old.push_str(&text);
        std::fs::write(&path, old).expect("write PATINA_BENCH_JSON");
    }
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

/// xorshift64*: enough to spread writes over nodes, and replayable.
struct Rng(u64);

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

/// The nodes of one region and the temp dirs holding their data.
struct Cluster {
    agents: Vec<Agent>,
    http: reqwest::Client,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Node 0, then the others (started in parallel) bootstrapping to it;
    /// returns once every node sees `n` alive members.
    async fn start(n: usize) -> Cluster {
        let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let first = Agent::start(&setup(dirs[0].path()));
        assert!(!first.gossip.is_empty(), "node 0 logs its gossip address");
        let boot = first.gossip.clone();
        let rest: Vec<Agent> = std::thread::scope(|s| {
            let handles: Vec<_> = dirs[1..]
                .iter()
                .map(|d| {
                    let boot = boot.clone();
                    s.spawn(move || Agent::start(&setup_peer(d.path(), &[&boot])))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut agents = vec![first];
        agents.extend(rest);
        let cluster = Cluster {
            agents,
            http: http_client(),
            _dirs: dirs,
        };
        let started = Instant::now();
        loop {
            let mut complete = true;
            for a in &cluster.agents {
                complete &= alive_members(&cluster.http, &a.addr).await == n;
            }
            if complete {
                break;
            }
            assert!(
                started.elapsed() < CONVERGE_TIMEOUT,
                "{n} nodes did not all see each other alive within {CONVERGE_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "{n} nodes formed a region in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        cluster
    }

    fn len(&self) -> usize {
        self.agents.len()
    }

    /// Panics if an agent exited (crashed) during the runs.
    fn assert_running(&mut self) {
        for (i, a) in self.agents.iter_mut().enumerate() {
            if let Some(status) = a.child.try_wait().unwrap() {
                panic!("node {i} exited during the bench: {status}");
            }
        }
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

async fn alive_members(http: &reqwest::Client, addr: &str) -> usize {
    let Ok(resp) = http.get(format!("http://{addr}/v1/members")).send().await else {
        return 0;
    };
    let Ok(text) = resp.text().await else {
        return 0;
    };
    let members: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
    members
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter(|m| m["cluster"] == CLUSTER && m["state"] == "alive")
                .count()
        })
        .unwrap_or(0)
}

/// `["INSERT ...", [id, a, b, c, d]]`: a 24-character text and a 16-byte
/// blob, the row shape of `http_load`.
fn insert_body(id: &str, x: u64) -> String {
    let blob: Vec<String> = (0..16u64)
        .map(|i| ((x >> (i * 4)) & 0xff).to_string())
        .collect();
    format!(
        "[[\"{INSERT}\",[\"{id}\",{a},\"text-{x:016x}-{b:02}\",{c:.3},[{blob}]]]]",
        a = x % 1_000_000,
        b = x % 100,
        c = (x % 100_000) as f64 / 7.0,
        blob = blob.join(","),
    )
}

/// One committed single-row insert; `Err` with what went wrong otherwise.
async fn insert(http: &reqwest::Client, addr: &str, id: &str, x: u64) -> Result<(), String> {
    let resp = http
        .post(format!("http://{addr}/v1/transactions"))
        .header("content-type", "application/json")
        .body(insert_body(id, x))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() || !body.contains("\"version\":") || body.contains("\"version\":null") {
        return Err(format!("HTTP {status}: {body}"));
    }
    Ok(())
}

/// Runs a read query; returns the cells of its rows as JSON arrays.
async fn query(http: &reqwest::Client, addr: &str, sql: &str, params: Json) -> Vec<Json> {
    let body = json!([sql, params]).to_string();
    let resp = http
        .post(format!("http://{addr}/v1/queries"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("query on {addr}: {e}"));
    let status = resp.status();
    let text = resp.text().await.expect("query body");
    assert!(
        status.is_success(),
        "query on {addr}: HTTP {status}: {text}"
    );
    let mut rows = Vec::new();
    for line in text.lines() {
        let line: Json = serde_json::from_str(line).expect("an NDJSON line");
        if let Some(row) = line.get("row") {
            rows.push(row[1].clone());
        } else if let Some(e) = line.get("error") {
            panic!("query on {addr} failed: {e}");
        }
    }
    rows
}

async fn count_prefix(http: &reqwest::Client, addr: &str, prefix: &str) -> u64 {
    let rows = query(
        http,
        addr,
        "SELECT count(*) FROM bench WHERE id GLOB ?",
        json!([format!("{prefix}*")]),
    )
    .await;
    rows.first().and_then(|r| r[0].as_u64()).unwrap_or(0)
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

/// The write load on node 0 (rows named `prefix-…`), then the time until
/// every node holds its rows: replication keeps up if that is short.
async fn write_load(cluster: &Cluster, prefix: &str, duration: Duration) -> (Load, f64) {
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

/// Cores online (not the ones this process may use: it pins itself).
fn cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

fn pinning_possible() -> bool {
    cores() >= 2
        && std::process::Command::new("taskset")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Restricts every thread of `pid` (and threads it starts later) to `cpus`.
fn pin(pid: u32, cpus: &str) {
    let out = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .expect("run taskset");
    assert!(
        out.status.success(),
        "taskset -c {cpus} {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn median(sorted: &[f64]) -> f64 {
    let m = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[m]
    } else {
        (sorted[m - 1] + sorted[m]) / 2.0
    }
}

struct Latency {
    writes: usize,
    missed: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    ack_p50_ms: f64,
    /// Writes visible everywhere only after 50 ms: a push on loopback takes
    /// a few ms, so these were most likely delivered by sync (every 200 ms).
    over_50ms: u64,
    /// Pulls the nodes served during the phase (sync fetching what
    /// broadcast did not deliver).
    pulls_served: u64,
}

impl Latency {
    fn to_json(&self) -> Json {
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
async fn replication_latency(cluster: &Cluster, writes: usize, rng: &mut Rng) -> Latency {
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

struct Burst {
    writes: usize,
    acked_ms: f64,
    converged_ms: f64,
    bytes_out: u64,
    changes_received: u64,
    bytes_per_change: f64,
    changes_per_row: f64,
    bytes_per_row_per_peer: f64,
    /// Chunk pushes during the burst, and how many arrived at a node that
    /// already had the version (forwards of forwards).
    chunks_pushed: u64,
    chunks_duplicate: u64,
}

impl Burst {
    fn to_json(&self) -> Json {
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

/// Sums a counter of the region's cluster over every node's `/metrics`.
async fn sum_metric(cluster: &Cluster, name: &str) -> u64 {
    let key = format!("{name}{{cluster=\"{CLUSTER}\"}}");
    let mut sum = 0;
    for a in &cluster.agents {
        sum += metric(&cluster.http, &a.addr, &key).await;
    }
    sum
}

/// One counter (`name{labels}`) from `addr`'s `/metrics`.
async fn metric(http: &reqwest::Client, addr: &str, key: &str) -> u64 {
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {key} in /metrics of {addr}"));
    value.trim().parse::<u64>().expect("a counter value")
}

/// `writes` inserts from `CLIENTS` clients at once (client c on node
/// c mod N), each as fast as its acks come back; the time from the first
/// send until every node counts all of them, polled every `BURST_POLL`.
async fn burst(cluster: &Cluster, writes: usize) -> Burst {
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

struct Load {
    secs: f64,
    txs: u64,
    errors: u64,
    tx_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    writer_cores: f64,
    /// CPU of all other agents together during the phase.
    others_cores: f64,
    /// Client transactions per SQLite commit on the writing node.
    group_size: f64,
    /// Broadcast sends the writing node shed, and pulls it served, during
    /// the phase: replicas falling behind cost the writer this.
    shed: u64,
    pulls_served: u64,
}

impl Load {
    /// CPU the writing node spent per committed transaction: unlike tx/s,
    /// it does not depend on how much CPU the other agents took.
    fn writer_us_per_tx(&self) -> f64 {
        self.writer_cores * self.secs * 1e6 / self.txs.max(1) as f64
    }

    fn to_json(&self) -> Json {
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

/// A lone node (no peers, nothing else running): the baseline of the
/// write load, after a 1 s warm-up like `http_load`'s.
async fn lone_node_load(duration: Duration, pinned: bool) -> Load {
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
