//! Subscriptions at edge scale (issue 14): a real `patina agent` holding
//! `PATINA_BENCH_SUBS` (default 1,000; up to 50,000) open subscriptions
//! `SELECT id, state FROM machines WHERE app = 'appN'`, one per app, each
//! streamed to this process; single-row inserts each matching one of them.
//!
//!   cargo bench --bench sub_scale
//!   PATINA_BENCH_SUBS=10000 cargo bench --bench sub_scale
//!   PATINA_BENCH_SUBS=10000 PATINA_BENCH_MIX=1 cargo bench --bench sub_scale
//!
//! What it does:
//! 1. Starts the release agent (`PATINA_BENCH_BIN` to run another build)
//!    and loads one machine per app (`n` = 10 × the app's number).
//! 2. Opens the subscriptions, [`OPEN_CONCURRENCY`] at a time. With
//!    `PATINA_BENCH_MIX=1`, 10 % are IN lists (`app IN ('appN', 'appN+1')`),
//!    10 % ranges (`n BETWEEN 10N AND 10N+5`) and 1 % broad aggregates
//!    (`SELECT state, count(*) FROM machines WHERE n >= K GROUP BY state`,
//!    a full re-run on every write); the rest the equality above.
//!    Streams are multiplexed over h2c, `PATINA_BENCH_STREAMS_PER_CONN`
//!    (default 100) per connection; 1 means HTTP/1.1, one connection each.
//! 3. Records the agent's RSS and open file descriptors.
//! 4. `PATINA_BENCH_WRITES` (default 200) inserts, one at a time, one every
//!    `PATINA_BENCH_INTERVAL_MS` (default 10) at most, each a new machine
//!    of one equality subscription's app; the latency from the write's
//!    acknowledgement (and from its send) to that subscription's insert.
//! 5. Write throughput with every subscription open: `PATINA_BENCH_LOAD_SECS`
//!    (default 5) of single-row inserts from 4 concurrent writers.
//!
//! `PATINA_BENCH_JSON=FILE` also writes the JSON summary. The client is one
//! thread; its CPU is printed next to the agent's.

mod support;

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value as Json};
use support::{cpu_secs, open_fds, proc_status_kib, round2, round3, setup, Agent, RssSampler};
use tokio::sync::{mpsc, oneshot, Semaphore};

const SCHEMA: &str =
    "CREATE TABLE machines (id TEXT PRIMARY KEY NOT NULL, app TEXT, state TEXT, n INTEGER);";
const INSERT: &str = "INSERT INTO machines (id, app, state, n) VALUES (?, ?, ?, ?)";
const OPEN_CONCURRENCY: usize = 32;
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Equality,
    InList,
    Range,
    Aggregate,
}

fn kind_of(s: usize, mix: bool) -> Kind {
    match (mix, s % 100) {
        (false, _) => Kind::Equality,
        (true, 0) => Kind::Aggregate,
        (true, 1..=10) => Kind::InList,
        (true, 11..=20) => Kind::Range,
        _ => Kind::Equality,
    }
}

fn statement(s: usize, kind: Kind) -> String {
    match kind {
        Kind::Equality => format!("SELECT id, state FROM machines WHERE app = 'app{s}'"),
        Kind::InList => format!(
            "SELECT id, state FROM machines WHERE app IN ('app{s}', 'app{}')",
            s + 1
        ),
        Kind::Range => format!(
            "SELECT id, state FROM machines WHERE n BETWEEN {} AND {}",
            s * 10,
            s * 10 + 5
        ),
        Kind::Aggregate => {
            format!("SELECT state, count(*) FROM machines WHERE n >= {s} GROUP BY state")
        }
    }
}

fn main() {
    let subs = support::env_or("PATINA_BENCH_SUBS", 1000usize);
    assert!(
        (10..=50_000).contains(&subs),
        "PATINA_BENCH_SUBS: 10..=50000"
    );
    let mix = support::env_or("PATINA_BENCH_MIX", 0u8) == 1;
    let writes = support::env_or("PATINA_BENCH_WRITES", 200usize);
    let interval = Duration::from_millis(support::env_or("PATINA_BENCH_INTERVAL_MS", 10u64));
    let per_conn = support::env_or("PATINA_BENCH_STREAMS_PER_CONN", 100usize).max(1);
    let load_secs = support::env_or("PATINA_BENCH_LOAD_SECS", 5u64);

    let dir = tempfile::tempdir().expect("temp dir");
    let config = setup(dir.path());
    std::fs::write(dir.path().join("schema/bench.sql"), SCHEMA).unwrap();
    // PATINA_BENCH_SUBS_MAX sets api.subscriptions_max (default: the
    // node's own, 10,000), so that 50,000 can be held.
    if let Ok(max) = std::env::var("PATINA_BENCH_SUBS_MAX") {
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.replacen("[api]\n", &format!("[api]\nsubscriptions_max = {max}\n"), 1);
        std::fs::write(&config, text).unwrap();
    }
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
        let client = || {
            let b = reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(10));
            let b = if per_conn > 1 {
                b.http2_prior_knowledge()
            } else {
                b.http1_only()
            };
            b.build().expect("HTTP client")
        };
        let http = client();
        load_rows(&http, &base, subs).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_before = proc_status_kib(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0;
        let fds_before = open_fds(pid);

        let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
        let permits = Rc::new(Semaphore::new(OPEN_CONCURRENCY));
        let local = tokio::task::LocalSet::new();
        let agent_cpu0 = cpu_secs(pid);
        let opened_at = Instant::now();
        let mut ready = Vec::with_capacity(subs);
        let clients: Vec<reqwest::Client> =
            (0..subs.div_ceil(per_conn)).map(|_| client()).collect();
        for s in 0..subs {
            let body = json!(statement(s, kind_of(s, mix))).to_string();
            let (ready_tx, ready_rx) = oneshot::channel();
            ready.push(ready_rx);
            let (http, url, tx, permits) = (
                clients[s / per_conn].clone(),
                format!("{base}/v1/subscriptions"),
                events_tx.clone(),
                permits.clone(),
            );
            local.spawn_local(async move {
                let permit = permits.acquire().await.expect("semaphore");
                read_stream(http, url, body, s, tx, ready_tx, permit).await
            });
        }
        drop(events_tx);
        // Past the node's cap (10,000) creations are refused with 503: the
        // node must keep serving the ones it holds.
        let opened: Vec<bool> = local
            .run_until(async {
                let mut opened = Vec::with_capacity(subs);
                for (s, r) in ready.into_iter().enumerate() {
                    let r = r
                        .await
                        .unwrap_or_else(|_| panic!("subscription {s} ended before its eoq"));
                    match r {
                        Ok(()) => opened.push(true),
                        Err(e) if e.starts_with("HTTP 503") => opened.push(false),
                        Err(e) => panic!("subscription {s}: {e}"),
                    }
                }
                opened
            })
            .await;
        let refused = opened.iter().filter(|o| !**o).count();
        if refused > 0 {
            eprintln!("{refused} subscriptions refused (the node's cap)");
        }
        let open_secs = opened_at.elapsed().as_secs_f64();
        let open_agent_cores = (cpu_secs(pid) - agent_cpu0) / open_secs;
        eprintln!("{subs} subscriptions open in {open_secs:.1} s");
        local
            .run_until(tokio::time::sleep(Duration::from_secs(2)))
            .await;
        let rss_open = proc_status_kib(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0;
        let fds_open = open_fds(pid);

        let w = local
            .run_until(write_phase(
                &http,
                &base,
                &mut events,
                &opened,
                mix,
                writes,
                interval,
            ))
            .await;
        let load = local
            .run_until(load_phase(&http, &base, &mut events, pid, load_secs))
            .await;
        let rss_after = proc_status_kib(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0;
        drop(local);
        json!({
            "subscriptions": subs,
            "mix": mix,
            "streams_per_connection": per_conn,
            "refused": refused,
            "open_secs": round2(open_secs),
            "open_agent_cpu_cores": round2(open_agent_cores),
            "rss_before_subs_mib": round2(rss_before),
            "rss_with_subs_mib": round2(rss_open),
            "rss_per_sub_kib": round2((rss_open - rss_before) * 1024.0 / (subs - refused).max(1) as f64),
            "rss_after_writes_mib": round2(rss_after),
            "fds_before_subs": fds_before,
            "fds_with_subs": fds_open,
            "writes": w,
            "load": load,
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
}

/// The app subscription `s` matches: `app{s}`; the machine ids of the
/// initial rows are `init-{s}`.
async fn load_rows(http: &reqwest::Client, base: &str, apps: usize) {
    let rows: Vec<Json> = (0..apps)
        .map(|s| {
            json!([
                INSERT,
                [format!("init-{s}"), format!("app{s}"), "started", s * 10]
            ])
        })
        .collect();
    for chunk in rows.chunks(1000) {
        let resp = http
            .post(format!("{base}/v1/transactions"))
            .header("content-type", "application/json")
            .body(Json::from(chunk.to_vec()).to_string())
            .timeout(Duration::from_secs(60))
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

/// Subscribes, reads the snapshot up to `eoq` (then reports ready and gives
/// the permit back), then forwards every change line until the stream ends.
async fn read_stream(
    http: reqwest::Client,
    url: String,
    body: String,
    sub: usize,
    events: mpsc::UnboundedSender<Event>,
    ready: oneshot::Sender<Result<(), String>>,
    permit: tokio::sync::SemaphorePermit<'_>,
) {
    let mut resp = match support::open_stream(&http, &url, body).await {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut ready = Some(ready);
    let mut permit = Some(permit);
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
            if line.starts_with(b"{\"change\"") {
                let v: Json = serde_json::from_slice(&line).expect("change line is JSON");
                let _ = events.send(Event {
                    sub,
                    at,
                    change: v["change"].clone(),
                });
            } else if line.starts_with(b"{\"eoq\"") {
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
                permit.take();
            } else if line.starts_with(b"{\"error\"") {
                let text = String::from_utf8_lossy(&line).into_owned();
                match ready.take() {
                    Some(r) => {
                        let _ = r.send(Err(text));
                    }
                    None => eprintln!("subscription {sub}: {text}"),
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

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    round3(h.value_at_quantile(q) as f64 / 1000.0)
}

fn summary(h: &Histogram<u64>) -> Json {
    json!({
        "n": h.len(), "p50_ms": ms(h, 0.5), "p90_ms": ms(h, 0.9), "p99_ms": ms(h, 0.99),
        "max_ms": round3(h.max() as f64 / 1000.0),
    })
}

async fn write_phase(
    http: &reqwest::Client,
    base: &str,
    events: &mut mpsc::UnboundedReceiver<Event>,
    opened: &[bool],
    mix: bool,
    writes: usize,
    interval: Duration,
) -> Json {
    let url = format!("{base}/v1/transactions");
    let targets: Vec<usize> = (0..opened.len())
        .filter(|&s| opened[s] && kind_of(s, mix) == Kind::Equality)
        .collect();
    let new_hist = || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
    let (mut from_ack, mut from_send, mut ack) = (new_hist(), new_hist(), new_hist());
    let (mut missed, mut closed) = (0u64, 0u64);
    let mut others: HashMap<&'static str, u64> = HashMap::new();
    let start = tokio::time::Instant::now();
    for i in 0..writes {
        tokio::time::sleep_until(start + interval * i as u32).await;
        // Spread over the apps (a stride coprime with most counts).
        let target = targets[(i * 7919) % targets.len()];
        let body = json!([[
            INSERT,
            [
                format!("w-{i}"),
                format!("app{target}"),
                "started",
                target * 10 + 1
            ]
        ]]);
        let t0 = Instant::now();
        let resp = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("write");
        assert!(resp.status().is_success(), "write {i}: {}", resp.status());
        let _ = resp.bytes().await;
        let acked = Instant::now();
        ack.saturating_record((acked - t0).as_micros().max(1) as u64);
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        let mut got = false;
        while !got {
            let e = match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(e)) => e,
                Ok(None) | Err(_) => break,
            };
            if e.change.is_null() {
                closed += 1;
            } else if e.sub == target {
                assert_eq!(e.change[0], json!("insert"), "write {i}: {}", e.change);
                from_send.saturating_record(e.at.saturating_duration_since(t0).as_micros().max(1) as u64);
                from_ack.saturating_record(
                    e.at.saturating_duration_since(acked).as_micros().max(1) as u64,
                );
                got = true;
            } else {
                *others.entry(kind_name(kind_of(e.sub, mix))).or_default() += 1;
            }
        }
        if !got {
            missed += 1;
            eprintln!("write {i}: no event within {EVENT_TIMEOUT:?}");
        }
    }
    eprintln!(
        "write → event from ack: p50 {:.2} ms, p99 {:.2} ms (from send p99 {:.2} ms); ack p50 {:.2} ms",
        ms(&from_ack, 0.5),
        ms(&from_ack, 0.99),
        ms(&from_send, 0.99),
        ms(&ack, 0.5)
    );
    json!({
        "writes": writes,
        "interval_ms": interval.as_millis() as u64,
        "missed": missed,
        "event_from_ack": summary(&from_ack),
        "event_from_send": summary(&from_send),
        "ack": summary(&ack),
        "events_on_other_subscriptions": others,
        "streams_closed": closed,
    })
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Equality => "equality",
        Kind::InList => "in_list",
        Kind::Range => "range",
        Kind::Aggregate => "aggregate",
    }
}

/// Writes as fast as 4 writers can for `secs`, the subscriptions open (and
/// their events read and dropped).
async fn load_phase(
    http: &reqwest::Client,
    base: &str,
    events: &mut mpsc::UnboundedReceiver<Event>,
    pid: u32,
    secs: u64,
) -> Json {
    let url = format!("{base}/v1/transactions");
    let agent_cpu0 = cpu_secs(pid);
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    let done = std::cell::Cell::new(0u64);
    let writer = |w: usize| {
        let (http, url, done) = (http.clone(), url.clone(), &done);
        async move {
            let mut i = 0usize;
            while Instant::now() < end {
                let body = json!([[
                    INSERT,
                    [
                        format!("l-{w}-{i}"),
                        format!("load{}", i % 97),
                        "started",
                        -1
                    ]
                ]]);
                let resp = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .expect("load write");
                assert!(resp.status().is_success());
                let _ = resp.bytes().await;
                done.set(done.get() + 1);
                i += 1;
            }
        }
    };
    let drain = async {
        while Instant::now() < end {
            if tokio::time::timeout(Duration::from_millis(50), events.recv())
                .await
                .is_ok_and(|e| e.is_none())
            {
                break;
            }
        }
    };
    tokio::join!(writer(0), writer(1), writer(2), writer(3), drain);
    let secs = started.elapsed().as_secs_f64();
    let per_sec = done.get() as f64 / secs;
    eprintln!("write throughput with the subscriptions open: {per_sec:.0} tx/s");
    json!({
        "writers": 4,
        "secs": round2(secs),
        "transactions_per_sec": round2(per_sec),
        "agent_cpu_cores": round2((cpu_secs(pid) - agent_cpu0) / secs),
    })
}
