//! Regions under inter-region delay: how long a machine write takes to
//! reach every node of every region as a rollup row, what crosses regions
//! per write, and what being a global member costs.
//!
//!   cargo bench --bench regions
//!
//! Part 1, in process (`patina_testkit::TestFleet`: real nodes, real QUIC
//! on 127.0.0.1): three regions (ams 3 nodes, ord 3, nrt 2; one global
//! member each), the `app_regions` rollup, production sync timings (200
//! ms). Every global member's global socket delays each packet it sends by
//! 40 ms + 0–35 ms (the test socket wrapper: one-way inter-region delay of
//! 40–75 ms; regional traffic is not delayed).
//! - latency: `PATINA_BENCH_WRITES` (default 40) single-row machine
//!   inserts, each of a new app, round-robin over the regions, written on
//!   a plain node, one at a time; per write, the time from before the write
//!   until every one of the 8 nodes reads the new `app_regions` row;
//! - bytes: what the global transports send (frames and SWIM datagrams,
//!   all global members summed) during an idle window, during the latency
//!   phase, during a second idle window, and during a phase of writes that
//!   change no rollup (updates of a column the rollup does not read), each
//!   as bytes per second and, over the preceding idle rate, per write.
//!
//! Part 2, real agents (release binary, no delay): two regions of two
//! agents (a global member and a plain node each); the plain ams node
//! takes `PATINA_BENCH_RATE` (default 100) writes/s for 10 s, a third of
//! them changing a rollup. CPU seconds and RSS of each agent.
//!
//! `PATINA_BENCH_JSON=FILE` appends the JSON summary to FILE.

mod support;

use std::time::{Duration, Instant};

use patina_node::Value;
use patina_replicator::ReplicatorConfig;
use patina_testkit::{FleetOptions, RegionSpec, TestFleet};
use serde_json::json;
use support::{cpu_secs, env_or, proc_status_kib, round2, Agent};

const REGIONS: [&str; 3] = ["ams", "ord", "nrt"];

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at]
}

fn global_bytes_out(fleet: &TestFleet) -> u64 {
    fleet
        .nodes
        .iter()
        .filter_map(|n| n.runtime.as_ref()?.global())
        .map(|g| g.transport_stats().bytes_out)
        .sum()
}

async fn has_row(fleet: &TestFleet, i: usize, app: &str, region: &str) -> bool {
    let rows = fleet
        .rows(
            i,
            &format!(
                "SELECT machines FROM app_regions WHERE app = '{app}' AND region = '{region}'"
            ),
        )
        .await;
    rows.first().and_then(|r| r.first()) == Some(&Value::Integer(1))
}

struct Part1 {
    latencies_ms: Vec<f64>,
    idle_bps: f64,
    idle_after_bps: f64,
    rollup_bps: f64,
    rollup_bytes_per_write: f64,
    quiet_bps: f64,
    quiet_bytes_per_write: f64,
    quiet_writes: usize,
}

async fn part1(writes: usize) -> Part1 {
    let options = FleetOptions {
        replicator: ReplicatorConfig {
            seed: 7,
            ..ReplicatorConfig::default()
        },
        ..FleetOptions::default()
    };
    let specs: Vec<RegionSpec> = vec![
        RegionSpec {
            name: "ams",
            nodes: 3,
            global_members: 1,
        },
        RegionSpec {
            name: "ord",
            nodes: 3,
            global_members: 1,
        },
        RegionSpec {
            name: "nrt",
            nodes: 2,
            global_members: 1,
        },
    ];
    let fleet = TestFleet::start(&specs, options).await;
    for n in &fleet.nodes {
        if let Some(f) = &n.global_faults {
            f.set_delay(Duration::from_millis(40), Duration::from_millis(35));
        }
    }
    // Let membership settle under the delay before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let window = Duration::from_secs(5);
    let before = global_bytes_out(&fleet);
    tokio::time::sleep(window).await;
    let idle_bps = (global_bytes_out(&fleet) - before) as f64 / window.as_secs_f64();

    let plain = |region: &str| *fleet.of_region(region).last().unwrap();
    let started = Instant::now();
    let before = global_bytes_out(&fleet);
    let mut latencies_ms = Vec::with_capacity(writes);
    for k in 0..writes {
        let region = REGIONS[k % REGIONS.len()];
        let app = format!("app{k}");
        let t0 = Instant::now();
        fleet
            .exec(
                plain(region),
                &format!("INSERT INTO machines VALUES ({k}, '{app}', 'started', 0)"),
            )
            .await;
        let deadline = t0 + Duration::from_secs(30);
        for i in 0..fleet.nodes.len() {
            while !has_row(&fleet, i, &app, region).await {
                assert!(
                    Instant::now() < deadline,
                    "write {k} did not reach node {i}"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        latencies_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let secs = started.elapsed().as_secs_f64();
    let bytes = (global_bytes_out(&fleet) - before) as f64;
    let rollup_bps = bytes / secs;
    let rollup_bytes_per_write = (bytes - idle_bps * secs).max(0.0) / writes as f64;

    // Idle again: summaries now name the actors the phase added, so the
    // quiet phase is measured against this rate.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = global_bytes_out(&fleet);
    tokio::time::sleep(window).await;
    let idle_after_bps = (global_bytes_out(&fleet) - before) as f64 / window.as_secs_f64();

    // Writes that change no rollup: `n` is not read by app_regions.
    let started = Instant::now();
    let before = global_bytes_out(&fleet);
    let mut quiet_writes = 0;
    while started.elapsed() < window {
        for region in REGIONS {
            let id = (quiet_writes % writes) as i64;
            fleet
                .exec_params(
                    plain(region),
                    "UPDATE machines SET n = n + 1 WHERE id = ?",
                    vec![Value::Integer(id)],
                )
                .await;
            quiet_writes += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The last writes' rollup evaluations (which find nothing to write)
    // are over within the debounce.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let secs = started.elapsed().as_secs_f64();
    let bytes = (global_bytes_out(&fleet) - before) as f64;
    let quiet_bps = bytes / secs;
    let quiet_bytes_per_write = (bytes - idle_after_bps * secs) / quiet_writes as f64;
    latencies_ms.sort_by(|a, b| a.total_cmp(b));
    Part1 {
        latencies_ms,
        idle_bps,
        idle_after_bps,
        rollup_bps,
        rollup_bytes_per_write,
        quiet_bps,
        quiet_bytes_per_write,
        quiet_writes,
    }
}

const AGENT_SCHEMA: &str =
    "CREATE TABLE machines (id INTEGER PRIMARY KEY NOT NULL, app TEXT, state TEXT, n INTEGER);";
const AGENT_GLOBAL: &str = "CREATE TABLE app_regions (app TEXT NOT NULL, region TEXT NOT NULL, machines INTEGER, started INTEGER, PRIMARY KEY (app, region));";
const AGENT_ROLLUP: &str = "[[rollup]]\nname = \"app_regions\"\nkey = [\"app\"]\nquery = \"SELECT app, count(*) AS machines, sum(state = 'started') AS started FROM machines GROUP BY app\"\n";

fn agent_config(
    dir: &std::path::Path,
    region: &str,
    global: bool,
    bootstrap: Option<&str>,
    global_bootstrap: Option<&str>,
) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("schema")).unwrap();
    std::fs::create_dir_all(dir.join("global")).unwrap();
    std::fs::write(dir.join("schema/m.sql"), AGENT_SCHEMA).unwrap();
    std::fs::write(dir.join("global/g.sql"), AGENT_GLOBAL).unwrap();
    let list = |b: Option<&str>| b.map(|b| format!("{b:?}")).unwrap_or_default();
    let mut text = format!(
        "[node]\nregion = {region:?}\nglobal = {global}\ndata_dir = {:?}\n[db]\nschema_paths = [{:?}]\nglobal_schema_paths = [{:?}]\n[api]\naddr = \"127.0.0.1:0\"\n[gossip]\naddr = \"127.0.0.1:0\"\ninsecure = true\nbootstrap = [{}]\n",
        dir.join("data"),
        dir.join("schema"),
        dir.join("global"),
        list(bootstrap),
    );
    if global {
        text.push_str(&format!(
            "[global_gossip]\naddr = \"127.0.0.1:0\"\ninsecure = true\nbootstrap = [{}]\n",
            list(global_bootstrap)
        ));
    }
    text.push_str(AGENT_ROLLUP);
    let path = dir.join("patina.toml");
    std::fs::write(&path, text).unwrap();
    path
}

struct AgentCost {
    role: &'static str,
    region: &'static str,
    cpu_secs: f64,
    rss_mib: f64,
}

async fn part2(rate: usize) -> Vec<AgentCost> {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let ams_g = Agent::start(&agent_config(dirs[0].path(), "ams", true, None, None));
    let ams_global = global_gossip_of(&ams_g);
    let ams_p = Agent::start(&agent_config(
        dirs[1].path(),
        "ams",
        false,
        Some(&ams_g.gossip),
        None,
    ));
    let ord_g = Agent::start(&agent_config(
        dirs[2].path(),
        "ord",
        true,
        None,
        Some(&ams_global),
    ));
    let ord_p = Agent::start(&agent_config(
        dirs[3].path(),
        "ord",
        false,
        Some(&ord_g.gossip),
        None,
    ));
    let agents = [
        (&ams_g, "global", "ams"),
        (&ams_p, "plain", "ams"),
        (&ord_g, "global", "ord"),
        (&ord_p, "plain", "ord"),
    ];
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu0: Vec<f64> = agents.iter().map(|(a, _, _)| cpu_secs(a.pid())).collect();
    let client = patina_client::Client::new(&ams_p.addr).unwrap();
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let started = Instant::now();
    let mut k = 0u64;
    while started.elapsed() < Duration::from_secs(10) {
        let sql = if k.is_multiple_of(3) {
            format!(
                "INSERT INTO machines VALUES ({k}, 'app{}', 'started', 0)",
                k % 50
            )
        } else {
            format!("UPDATE machines SET n = {k} WHERE id = {}", k - k % 3)
        };
        client
            .transact(&[patina_client::Statement::from(sql.as_str())])
            .await
            .unwrap();
        k += 1;
        let next = started + period * k as u32;
        tokio::time::sleep_until(next.into()).await;
    }
    agents
        .iter()
        .zip(cpu0)
        .map(|((a, role, region), c0)| AgentCost {
            role,
            region,
            cpu_secs: cpu_secs(a.pid()) - c0,
            rss_mib: proc_status_kib(a.pid(), "VmRSS").unwrap_or(0) as f64 / 1024.0,
        })
        .collect()
}

fn global_gossip_of(agent: &Agent) -> String {
    agent
        .global_gossip
        .clone()
        .expect("a global member logs its global gossip address")
}

fn main() {
    let writes = env_or("PATINA_BENCH_WRITES", 40);
    let rate = env_or("PATINA_BENCH_RATE", 100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let p1 = rt.block_on(part1(writes));
    let lat = &p1.latencies_ms;
    println!(
        "part 1: machine write -> app_regions row on all 8 nodes of 3 regions (one-way inter-region delay 40-75 ms), {writes} writes: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(lat, 0.5),
        percentile(lat, 0.99),
        lat.last().copied().unwrap_or(0.0)
    );
    println!(
        "part 1: global transports send {:.0} B/s idle; {:.0} B/s during rollup-changing writes ({:.0} B per write over idle); idle after them {:.0} B/s; {:.0} B/s during {} writes that change no rollup ({:.0} B per write over that idle rate)",
        p1.idle_bps, p1.rollup_bps, p1.rollup_bytes_per_write, p1.idle_after_bps, p1.quiet_bps, p1.quiet_writes, p1.quiet_bytes_per_write
    );
    let p2 = rt.block_on(part2(rate));
    for a in &p2 {
        println!(
            "part 2: {} {} agent: {:.2} CPU s over 10 s at {rate} writes/s in ams, RSS {:.1} MiB",
            a.region, a.role, a.cpu_secs, a.rss_mib
        );
    }
    let summary = json!({
        "bench": "regions",
        "writes": writes,
        "latency_ms": {"p50": round2(percentile(lat, 0.5)), "p99": round2(percentile(lat, 0.99)), "max": round2(lat.last().copied().unwrap_or(0.0))},
        "global_bytes_per_sec": {"idle": p1.idle_bps.round(), "idle_after": p1.idle_after_bps.round(), "rollup_writes": p1.rollup_bps.round(), "quiet_writes": p1.quiet_bps.round()},
        "global_bytes_per_write_over_idle": {"rollup": p1.rollup_bytes_per_write.round(), "quiet": p1.quiet_bytes_per_write.round()},
        "agents": p2.iter().map(|a| json!({"region": a.region, "role": a.role, "cpu_secs": round2(a.cpu_secs), "rss_mib": round2(a.rss_mib)})).collect::<Vec<_>>(),
    });
    println!("{summary}");
    support::append_json_lines(&format!("{summary}\n"));
}
