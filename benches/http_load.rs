//! HTTP load benchmark of a real `patina agent`: single-row and 100-row
//! INSERT transactions through `POST /v1/transactions`, over keep-alive
//! HTTP/1.1 connections from 1, 8 and 32 concurrent clients; the agent's
//! RSS idle and at peak; database bytes per row after the runs.
//!
//!   cargo bench --bench http_load
//!
//! Environment: `PATINA_BENCH_SECS` (seconds per measured phase, default 10),
//! `PATINA_BENCH_JSON` (also write the JSON summary to this file).
//!
//! The client runs on one thread (a current-thread tokio runtime), so on a
//! small machine it never takes more than one core away from the agent; the
//! table shows how much CPU each side used per phase, so a client-bound run
//! is visible. Every request loop stops by itself at its phase's deadline;
//! the agent binds 127.0.0.1 only and is stopped with SIGTERM at the end
//! (killed if it does not stop within 30 s, and on any panic).

mod support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value as Json};
use support::{cpu_secs, proc_status_kib, round2, round3, setup, Agent, RssSampler};

const INSERT: &str = "INSERT INTO bench (id, a, b, c, d) VALUES (?, ?, ?, ?, ?)";
/// Rows per transaction of the batch phase.
const BATCH_ROWS: usize = 100;

fn main() {
    let secs: u64 = std::env::var("PATINA_BENCH_SECS")
        .ok()
        .map(|s| {
            s.parse()
                .expect("PATINA_BENCH_SECS: a whole number of seconds")
        })
        .unwrap_or(10);
    assert!((1..=3600).contains(&secs), "PATINA_BENCH_SECS: 1..=3600");
    let duration = Duration::from_secs(secs);

    let dir = tempfile::tempdir().expect("temp dir");
    let config = setup(dir.path());
    let mut agent = Agent::start(&config);
    let pid = agent.child.id();
    eprintln!("agent pid {pid} on {}", agent.addr);

    // Idle: give the agent a moment to settle after it started listening.
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss = proc_status_kib(pid, "VmRSS").expect("VmRSS") as f64 / 1024.0;
    let sampler = RssSampler::start(pid);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("http://{}/v1/transactions", agent.addr);
    let mut phases = Vec::new();
    let mut run = 0usize;
    let mut phase = |name: &str, clients: usize, rows: usize, d: Duration| {
        run += 1;
        let r = rt.block_on(load(&url, pid, run, clients, rows, d));
        eprintln!(
            "{name}: {:.0} tx/s, {:.0} rows/s, p50 {:.2} ms, p99 {:.2} ms",
            r.tx_per_s, r.rows_per_s, r.p50_ms, r.p99_ms
        );
        r.named(name)
    };
    // Warm-up (not reported): connections, statement caches, page cache.
    let warm_up = phase("warm-up", 8, 1, Duration::from_secs(1));
    phases.push(phase("insert_1_row/1_client", 1, 1, duration));
    phases.push(phase("insert_1_row/8_clients", 8, 1, duration));
    phases.push(phase("insert_1_row/32_clients", 32, 1, duration));
    phases.push(phase("insert_100_rows/8_clients", 8, BATCH_ROWS, duration));

    let peak_sampled = sampler.stop();
    let hwm = proc_status_kib(pid, "VmHWM").expect("VmHWM") as f64 / 1024.0;
    let peak_rss = hwm.max(peak_sampled);
    let committed_rows: u64 = phases.iter().map(|p| p.rows).sum::<u64>() + warm_up.rows;

    agent.terminate();
    let db = dir.path().join("data/regional.db");
    let (rows_in_db, db_bytes) = db_size_after_checkpoint(&db);
    let bytes_per_row = db_bytes as f64 / rows_in_db.max(1) as f64;

    print_table(
        &phases,
        idle_rss,
        peak_rss,
        rows_in_db,
        db_bytes,
        bytes_per_row,
    );
    let summary = json!({
        "bench": "http_load",
        "secs_per_phase": secs,
        "phases": phases.iter().map(Phase::to_json).collect::<Vec<_>>(),
        "rss_idle_mib": round2(idle_rss),
        "rss_peak_mib": round2(peak_rss),
        "rows_in_db": rows_in_db,
        "rows_acknowledged": committed_rows,
        "db_bytes": db_bytes,
        "bytes_per_row": round2(bytes_per_row),
    });
    let text = serde_json::to_string_pretty(&summary).unwrap();
    println!("{text}");
    if let Ok(path) = std::env::var("PATINA_BENCH_JSON") {
        std::fs::write(&path, format!("{text}\n")).expect("write PATINA_BENCH_JSON");
    }
    assert!(
        phases.iter().all(|p| p.errors == 0),
        "some requests failed (see the table)"
    );
    assert!(
        rows_in_db >= committed_rows,
        "{committed_rows} rows were acknowledged but the database holds {rows_in_db}"
    );
}

struct Phase {
    name: String,
    clients: usize,
    rows_per_tx: usize,
    secs: f64,
    txs: u64,
    rows: u64,
    errors: u64,
    tx_per_s: f64,
    rows_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// CPU used during the phase, in cores (1.0 = one core busy).
    agent_cores: f64,
    client_cores: f64,
}

impl Phase {
    fn named(mut self, name: &str) -> Phase {
        self.name = name.to_owned();
        self
    }

    fn to_json(&self) -> Json {
        json!({
            "name": self.name,
            "clients": self.clients,
            "rows_per_tx": self.rows_per_tx,
            "secs": round2(self.secs),
            "transactions": self.txs,
            "rows": self.rows,
            "errors": self.errors,
            "tx_per_s": self.tx_per_s.round(),
            "rows_per_s": self.rows_per_s.round(),
            "p50_ms": round3(self.p50_ms),
            "p99_ms": round3(self.p99_ms),
            "p999_ms": round3(self.p999_ms),
            "max_ms": round3(self.max_ms),
            "agent_cpu_cores": round2(self.agent_cores),
            "client_cpu_cores": round2(self.client_cores),
        })
    }
}

struct WorkerResult {
    hist: Histogram<u64>,
    txs: u64,
    errors: u64,
    first_error: Option<String>,
}

/// `clients` workers, each with its own keep-alive HTTP/1.1 connection, send
/// transactions of `rows` INSERTs back to back until `duration` is over.
async fn load(
    url: &str,
    agent_pid: u32,
    run: usize,
    clients: usize,
    rows: usize,
    duration: Duration,
) -> Phase {
    let agent_cpu0 = cpu_secs(agent_pid);
    let client_cpu0 = cpu_secs(std::process::id());
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for w in 0..clients {
        let url = url.to_owned();
        workers.push(tokio::spawn(async move {
            worker(url, run, w, rows, deadline).await
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let (mut txs, mut errors, mut first_error) = (0, 0, None);
    for w in workers {
        let r = w.await.expect("worker panicked");
        hist.add(&r.hist).unwrap();
        txs += r.txs;
        errors += r.errors;
        first_error = first_error.or(r.first_error);
    }
    let secs = started.elapsed().as_secs_f64();
    let agent_cores = (cpu_secs(agent_pid) - agent_cpu0) / secs;
    let client_cores = (cpu_secs(std::process::id()) - client_cpu0) / secs;
    if let Some(e) = first_error {
        eprintln!("run {run}: {errors} failed requests; the first: {e}");
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Phase {
        name: String::new(),
        clients,
        rows_per_tx: rows,
        secs,
        txs,
        rows: txs * rows as u64,
        errors,
        tx_per_s: txs as f64 / secs,
        rows_per_s: (txs * rows as u64) as f64 / secs,
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: hist.max() as f64 / 1000.0,
        agent_cores,
        client_cores,
    }
}

async fn worker(url: String, run: usize, w: usize, rows: usize, deadline: Instant) -> WorkerResult {
    let http = support::load_client();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let (mut txs, mut errors, mut first_error) = (0u64, 0u64, None);
    let mut seq = 0u64;
    while Instant::now() < deadline {
        let mut body = String::with_capacity(rows * 160);
        body.push('[');
        for r in 0..rows {
            if r > 0 {
                body.push(',');
            }
            row_statement(&mut body, run, w, seq);
            seq += 1;
        }
        body.push(']');
        let t0 = Instant::now();
        let answer = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        let ok = match answer {
            Ok(resp) => {
                let status = resp.status();
                match resp.bytes().await {
                    Ok(_) if status.is_success() => true,
                    Ok(b) => {
                        first_error.get_or_insert_with(|| {
                            format!("HTTP {status}: {}", String::from_utf8_lossy(&b))
                        });
                        false
                    }
                    Err(e) => {
                        first_error.get_or_insert_with(|| e.to_string());
                        false
                    }
                }
            }
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
                false
            }
        };
        let us = t0.elapsed().as_micros().max(1) as u64;
        if ok {
            hist.saturating_record(us);
            txs += 1;
        } else {
            errors += 1;
            // A failing agent must not turn this into a busy loop.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    WorkerResult {
        hist,
        txs,
        errors,
        first_error,
    }
}

/// `["INSERT ...", [id, a, b, c, d]]` with a unique id per (run, worker, seq),
/// a 24-character text and a 16-byte blob.
fn row_statement(out: &mut String, run: usize, w: usize, seq: u64) {
    let x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((run as u64) << 56) ^ ((w as u64) << 48);
    let _ = write!(
        out,
        "[\"{INSERT}\",[\"r{run}-w{w}-{seq:08}\",{a},\"text-{x:016x}-{b:02}\",{c:.3},[",
        a = x % 1_000_000,
        b = seq % 100,
        c = (x % 100_000) as f64 / 7.0,
    );
    for i in 0..16u64 {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}", (x >> (i * 4)) & 0xff);
    }
    out.push_str("]]]");
}

/// After the agent stopped: checkpoint the WAL into regional.db through a
/// plain connection, then count the bench rows and the bytes on disk.
fn db_size_after_checkpoint(db: &Path) -> (u64, u64) {
    let conn = rusqlite::Connection::open(db).expect("open regional.db");
    let (busy, _, _): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("checkpoint");
    assert_eq!(busy, 0, "the WAL checkpoint was blocked");
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM bench", [], |r| r.get(0))
        .expect("count rows");
    drop(conn);
    let len = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    (rows as u64, len(db.to_path_buf()) + len(wal))
}

fn print_table(
    phases: &[Phase],
    idle_rss: f64,
    peak_rss: f64,
    rows_in_db: u64,
    db_bytes: u64,
    bytes_per_row: f64,
) {
    println!(
        "\n{:<28} {:>7} {:>9} {:>10} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7}",
        "phase",
        "clients",
        "tx/s",
        "rows/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "agent",
        "client"
    );
    for p in phases {
        println!(
            "{:<28} {:>7} {:>9.0} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7} {:>6.2}c {:>6.2}c",
            p.name,
            p.clients,
            p.tx_per_s,
            p.rows_per_s,
            p.p50_ms,
            p.p99_ms,
            p.p999_ms,
            p.errors,
            p.agent_cores,
            p.client_cores
        );
    }
    println!(
        "\nagent RSS: idle {idle_rss:.1} MiB, peak {peak_rss:.1} MiB\n\
         regional.db after checkpoint: {db_bytes} bytes / {rows_in_db} rows = {bytes_per_row:.1} bytes/row\n"
    );
}
