//! Write → subscription-event latency of a real `patina agent` holding
//! 1,000 open subscriptions, each streamed to this process over its own
//! HTTP/1.1 connection.
//!
//!   cargo bench --bench sub_latency
//!
//! What it does:
//! 1. Starts the release agent (temp data dir, 127.0.0.1 only) and loads
//!    `FILLER_ROWS` rows into `bench` through `POST /v1/transactions`.
//! 2. Opens `PATINA_BENCH_SUBS` (default 1,000) subscriptions with `POST
//!    /v1/subscriptions`, [`BROAD`] of them broad (count, GROUP BY,
//!    aggregates, top-N, a range filter) and the rest `SELECT id, a, b FROM
//!    bench WHERE id = ?` with distinct ids, half of which exist. At most
//!    `OPEN_CONCURRENCY` are being opened at once; every stream stays open
//!    and is read until the end.
//! 3. Records the agent's RSS and open file descriptors.
//! 4. Sends `PATINA_BENCH_WRITES` (default 200) single-row INSERT
//!    transactions, one at a time, one every `PATINA_BENCH_INTERVAL_MS`
//!    (default 10) at most. Each inserts the row of one id subscription
//!    whose row did not exist (so exactly that subscription and the count
//!    change). Per write: the time from just before the request is sent
//!    until the `insert` event reaches the targeted id stream, and until
//!    the count stream reports the new count; the next write waits for both
//!    (bounded by `EVENT_TIMEOUT`).
//!
//! `PATINA_BENCH_JSON=FILE` also writes the JSON summary;
//! `PATINA_BENCH_PERF=FILE` runs `perf record -g -p <agent>` over the write
//! phase into FILE.
//!
//! The client is one thread (a current-thread tokio runtime): the 1,000
//! readers, the opener and the writer share it, so it cannot take more than
//! one core; its CPU is printed per phase next to the agent's.

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value as Json};
use support::{cpu_secs, open_fds, proc_status_kib, round2, round3, setup, Agent, RssSampler};
use tokio::sync::{mpsc, oneshot, Semaphore};

const INSERT: &str = "INSERT INTO bench (id, a, b, c, d) VALUES (?, ?, ?, ?, ?)";
/// Rows in `bench` besides the subscribed ids, so that the broad
/// subscriptions' full re-runs scan a table of some size.
const FILLER_ROWS: usize = 10_000;
/// The broad subscriptions; the first is the count the writes are timed on.
const BROAD: &[&str] = &[
    "SELECT count(*) FROM bench",
    "SELECT a % 10 AS bucket, count(*) AS n FROM bench GROUP BY bucket",
    "SELECT min(a), max(a), sum(a) FROM bench",
    "SELECT id, a, b FROM bench ORDER BY a DESC LIMIT 10",
    "SELECT id, a FROM bench WHERE a >= 999000",
];
const ID_QUERY: &str = "SELECT id, a, b FROM bench WHERE id = ?";
const OPEN_CONCURRENCY: usize = 16;
/// How long one write may wait for its events before it counts as missed.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

fn env_num(name: &str, default: u64, range: std::ops::RangeInclusive<u64>) -> u64 {
    let v = std::env::var(name)
        .ok()
        .map(|s| s.parse().unwrap_or_else(|_| panic!("{name}: a number")))
        .unwrap_or(default);
    assert!(range.contains(&v), "{name}: {range:?}");
    v
}

fn main() {
    let subs = env_num("PATINA_BENCH_SUBS", 1000, (BROAD.len() as u64 + 2)..=5000) as usize;
    let id_subs = subs - BROAD.len();
    // Ids below `present` have a row before the writes; the writes insert
    // the rows of the ones above.
    let present = id_subs / 2;
    let writes = env_num("PATINA_BENCH_WRITES", 200, 1..=(id_subs - present) as u64) as usize;
    let interval = Duration::from_millis(env_num("PATINA_BENCH_INTERVAL_MS", 10, 0..=1000));

    let dir = tempfile::tempdir().expect("temp dir");
    let config = setup(dir.path());
    let mut agent = Agent::start(&config);
    let pid = agent.pid();
    eprintln!("agent pid {pid} on {}", agent.addr);
    let base = format!("http://{}", agent.addr);
    let sampler = RssSampler::start(pid);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let summary = rt.block_on(async {
        let http = reqwest::Client::builder()
            .http1_only()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client");
        load_rows(&http, &base, present).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_before = proc_status_kib(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0;
        let fds_before = open_fds(pid);

        // Open the subscriptions.
        let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
        let permits = Rc::new(Semaphore::new(OPEN_CONCURRENCY));
        let local = tokio::task::LocalSet::new();
        let (agent_cpu0, client_cpu0) = (cpu_secs(pid), cpu_secs(std::process::id()));
        let opened_at = Instant::now();
        let mut ready = Vec::with_capacity(subs);
        for s in 0..subs {
            let body = match BROAD.get(s) {
                Some(sql) => json!(sql),
                None => json!([ID_QUERY, [id_of(s - BROAD.len())]]),
            };
            let (ready_tx, ready_rx) = oneshot::channel();
            ready.push(ready_rx);
            let (http, url, tx, permits) = (
                http.clone(),
                format!("{base}/v1/subscriptions"),
                events_tx.clone(),
                permits.clone(),
            );
            local.spawn_local(async move {
                let permit = permits.acquire().await.expect("semaphore");
                read_stream(http, url, body.to_string(), s, tx, ready_tx, permit).await
            });
        }
        drop(events_tx);
        let (open_hist, snapshot_rows) = local
            .run_until(async {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
                let mut rows = 0u64;
                for (s, r) in ready.into_iter().enumerate() {
                    let r = r
                        .await
                        .unwrap_or_else(|_| panic!("subscription {s} ended before its eoq"));
                    let r = r.unwrap_or_else(|e| panic!("subscription {s}: {e}"));
                    hist.saturating_record(r.took.as_micros().max(1) as u64);
                    rows += r.rows;
                }
                (hist, rows)
            })
            .await;
        let open_secs = opened_at.elapsed().as_secs_f64();
        let open_agent_cores = (cpu_secs(pid) - agent_cpu0) / open_secs;
        let open_client_cores = (cpu_secs(std::process::id()) - client_cpu0) / open_secs;
        eprintln!(
            "{subs} subscriptions open in {open_secs:.2} s ({} snapshot rows)",
            snapshot_rows
        );

        // Settle, then the agent's footprint with every stream open.
        local.run_until(tokio::time::sleep(Duration::from_secs(1))).await;
        let rss_open = proc_status_kib(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0;
        // Where the resident memory is: heap (anon), mapped files, shared
        // memory (SQLite's WAL-index maps of the subscription stores).
        let rss_parts: Vec<(&str, f64)> = ["RssAnon", "RssFile", "RssShmem"]
            .iter()
            .map(|k| (*k, proc_status_kib(pid, k).unwrap_or(0) as f64 / 1024.0))
            .collect();
        let fds_open = open_fds(pid);
        let threads = proc_status_kib(pid, "Threads").unwrap_or(0);
        let sub_files = std::fs::read_dir(dir.path().join("data/subs"))
            .map(|d| d.count())
            .unwrap_or(0);

        let perf = std::env::var("PATINA_BENCH_PERF").ok().map(|out| {
            let child = Command::new("perf")
                .args(["record", "-g", "-o", &out, "-p", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn perf");
            std::thread::sleep(Duration::from_millis(500));
            child
        });

        // The writes.
        let w = local
            .run_until(write_phase(
                &http,
                &base,
                pid,
                &mut events,
                present,
                writes,
                interval,
            ))
            .await;

        if let Some(mut child) = perf {
            // SAFETY: SIGINT to the perf child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let _ = child.wait();
        }
        // Anything still queued (a reader that ended would report it here).
        let stray = (0..64).map_while(|_| events.try_recv().ok()).count();
        drop(local);
        json!({
            "subscriptions": subs,
            "id_subscriptions": id_subs,
            "broad_subscriptions": BROAD,
            "filler_rows": FILLER_ROWS,
            "open_secs": round2(open_secs),
            "open_per_sub_ms": { "p50": ms(&open_hist, 0.5), "p99": ms(&open_hist, 0.99), "max": round3(open_hist.max() as f64 / 1000.0) },
            "open_agent_cpu_cores": round2(open_agent_cores),
            "open_client_cpu_cores": round2(open_client_cores),
            "rss_before_subs_mib": round2(rss_before),
            "rss_with_subs_mib": round2(rss_open),
            "rss_with_subs_parts_mib": rss_parts
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::json!(round2(*v))))
                .collect::<serde_json::Map<_, _>>(),
            "fds_before_subs": fds_before,
            "fds_with_subs": fds_open,
            "agent_threads": threads,
            "sub_files": sub_files,
            "writes": w,
            "stray_events_after_writes": stray,
        })
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    let peak_rss = sampler.stop();
    agent.terminate();

    let mut summary = summary;
    summary["rss_peak_mib"] = json!(round2(peak_rss));
    let text = serde_json::to_string_pretty(&summary).unwrap();
    println!("{text}");
    if let Ok(path) = std::env::var("PATINA_BENCH_JSON") {
        std::fs::write(&path, format!("{text}\n")).expect("write PATINA_BENCH_JSON");
    }
    assert_eq!(
        summary["writes"]["missed"],
        json!(0),
        "some events never came"
    );
    assert_eq!(summary["writes"]["errors"], json!(0), "some writes failed");
}

fn id_of(n: usize) -> String {
    format!("s{n:05}")
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    round3(h.value_at_quantile(q) as f64 / 1000.0)
}

/// The filler rows and the rows of the first `present` subscribed ids, in
/// 500-row transactions.
async fn load_rows(http: &reqwest::Client, base: &str, present: usize) {
    let rows: Vec<(String, u64)> = (0..FILLER_ROWS)
        .map(|i| {
            let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (format!("f{i:06}"), x % 1_000_000)
        })
        .chain((0..present).map(|i| (id_of(i), 1_000_000 + i as u64)))
        .collect();
    for chunk in rows.chunks(500) {
        let body: Vec<Json> = chunk
            .iter()
            .map(|(id, a)| json!([INSERT, [id, a, format!("text-{a:08}"), 0.5, [1, 2, 3]]]))
            .collect();
        let resp = http
            .post(format!("{base}/v1/transactions"))
            .header("content-type", "application/json")
            .body(Json::from(body).to_string())
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("load rows");
        assert!(resp.status().is_success(), "load rows: {}", resp.status());
    }
}

struct Event {
    sub: usize,
    at: Instant,
    /// The `change` array; `Null` when the stream ended.
    change: Json,
}

struct Ready {
    took: Duration,
    rows: u64,
}

/// Subscribes, reads the snapshot up to `eoq` (then reports ready and gives
/// the permit back), then forwards every change line until the stream ends.
async fn read_stream(
    http: reqwest::Client,
    url: String,
    body: String,
    sub: usize,
    events: mpsc::UnboundedSender<Event>,
    ready: oneshot::Sender<Result<Ready, String>>,
    permit: tokio::sync::SemaphorePermit<'_>,
) {
    let started = Instant::now();
    let mut resp = match support::open_stream(&http, &url, body).await {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut ready = Some(ready);
    let mut permit = Some(permit);
    let mut rows = 0u64;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) | Err(_) => break,
        };
        let at = Instant::now();
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            // Cheap dispatch on the key before parsing.
            if line.starts_with(b"{\"change\"") {
                let v: Json = serde_json::from_slice(&line).expect("change line is JSON");
                let _ = events.send(Event {
                    sub,
                    at,
                    change: v["change"].clone(),
                });
            } else if line.starts_with(b"{\"row\"") {
                rows += 1;
            } else if line.starts_with(b"{\"eoq\"") {
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(Ready {
                        took: started.elapsed(),
                        rows,
                    }));
                }
                permit.take();
            } else if line.starts_with(b"{\"error\"") {
                let text = String::from_utf8_lossy(&line).into_owned();
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(text));
                } else {
                    eprintln!("subscription {sub}: {text}");
                }
            }
        }
    }
    let _ = events.send(Event {
        sub,
        at: Instant::now(),
        change: Json::Null,
    });
}

#[allow(clippy::too_many_arguments)]
async fn write_phase(
    http: &reqwest::Client,
    base: &str,
    pid: u32,
    events: &mut mpsc::UnboundedReceiver<Event>,
    present: usize,
    writes: usize,
    interval: Duration,
) -> Json {
    let url = format!("{base}/v1/transactions");
    let count_before = FILLER_ROWS + present;
    let new_hist = || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
    let (mut to_id, mut to_count, mut ack) = (new_hist(), new_hist(), new_hist());
    let (mut missed, mut errors, mut unexpected, mut closed) = (0u64, 0u64, 0u64, 0u64);
    let mut other: HashMap<usize, u64> = HashMap::new();
    let (agent_cpu0, client_cpu0) = (cpu_secs(pid), cpu_secs(std::process::id()));
    let started = Instant::now();
    let start = tokio::time::Instant::now();
    for i in 0..writes {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let target = present + i; // index among the id subscriptions
        let sub = BROAD.len() + target;
        let body = json!([[
            INSERT,
            [id_of(target), i, format!("write-{i:06}"), 0.25, [4, 5, 6]]
        ]]);
        let body = body.to_string();
        let t0 = Instant::now();
        let resp = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
                ack.saturating_record(t0.elapsed().as_micros().max(1) as u64);
            }
            Ok(r) => {
                errors += 1;
                eprintln!("write {i}: HTTP {}", r.status());
                continue;
            }
            Err(e) => {
                errors += 1;
                eprintln!("write {i}: {e}");
                continue;
            }
        }
        let want_count = json!(count_before + i + 1);
        let (mut got_id, mut got_count) = (false, false);
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        while !(got_id && got_count) {
            let e = match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(e)) => e,
                Ok(None) | Err(_) => break,
            };
            let us = e.at.saturating_duration_since(t0).as_micros().max(1) as u64;
            if e.change.is_null() {
                closed += 1;
                eprintln!("subscription {} ended during the writes", e.sub);
            } else if e.sub == sub {
                assert_eq!(e.change[0], json!("insert"), "write {i}: {}", e.change);
                assert_eq!(e.change[2][0], json!(id_of(target)), "write {i}");
                to_id.saturating_record(us);
                got_id = true;
            } else if e.sub == 0 {
                // The count stream: every write changes it by one. Its one
                // row has no key, so a new count comes as the new row's
                // insert (plus a delete of the old row), or as an update.
                if e.change[0] != json!("delete") {
                    assert_eq!(e.change[2][0], want_count, "write {i}: {}", e.change);
                    to_count.saturating_record(us);
                    got_count = true;
                }
            } else if e.sub < BROAD.len() {
                *other.entry(e.sub).or_default() += 1;
            } else {
                unexpected += 1;
            }
        }
        if !(got_id && got_count) {
            missed += 1;
            eprintln!(
                "write {i}: id event {got_id}, count event {got_count} within {EVENT_TIMEOUT:?}"
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // Stragglers from the broad subscriptions (their events may trail).
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(e) = events.try_recv() {
        if e.change.is_null() {
            closed += 1;
        } else if (1..BROAD.len()).contains(&e.sub) {
            *other.entry(e.sub).or_default() += 1;
        } else {
            unexpected += 1;
        }
    }
    let agent_cores = (cpu_secs(pid) - agent_cpu0) / secs;
    let client_cores = (cpu_secs(std::process::id()) - client_cpu0) / secs;
    let summary = |h: &Histogram<u64>| {
        json!({
            "n": h.len(), "p50_ms": ms(h, 0.5), "p90_ms": ms(h, 0.9), "p99_ms": ms(h, 0.99),
            "max_ms": round3(h.max() as f64 / 1000.0),
        })
    };
    eprintln!(
        "write → id event: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; → count event p99 {:.2} ms; ack p50 {:.2} ms; agent {agent_cores:.2} cores, client {client_cores:.2} cores",
        ms(&to_id, 0.5), ms(&to_id, 0.99), to_id.max() as f64 / 1000.0, ms(&to_count, 0.99), ms(&ack, 0.5)
    );
    let mut other: Vec<_> = other.into_iter().collect();
    other.sort();
    json!({
        "writes": writes,
        "interval_ms": interval.as_millis() as u64,
        "secs": round2(secs),
        "errors": errors,
        "missed": missed,
        "write_to_id_event": summary(&to_id),
        "write_to_count_event": summary(&to_count),
        "write_ack": summary(&ack),
        "events_on_other_broad_subs": other.into_iter().map(|(s, n)| json!([BROAD[s], n])).collect::<Vec<_>>(),
        "unexpected_events": unexpected,
        "streams_closed": closed,
        "agent_cpu_cores": round2(agent_cores),
        "client_cpu_cores": round2(client_cores),
    })
}
