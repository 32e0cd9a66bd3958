//! Storage growth under churn (issue 12, deliverable 5): a region of three
//! release agents holding machine rows that are updated, deleted and
//! re-inserted at a steady rate; database bytes per live row and WAL size
//! over time, with and without tombstone collection.
//!
//!   cargo bench --bench soak
//!
//! One invocation is one run (one variant). Environment:
//! - `PATINA_SOAK_MACHINES` (default 1,000,000): machines loaded first, in
//!   transactions of `PATINA_SOAK_LOAD_BATCH` (default 1,000) rows, one
//!   loader per node;
//! - `PATINA_SOAK_SECS` (default 600): seconds of churn after the load;
//! - `PATINA_SOAK_RATE` (default 1,000): churn operations per second, each
//!   its own transaction, from `PATINA_SOAK_CLIENTS` (default 6) paced
//!   clients, client c writing to node c mod 3;
//! - `PATINA_SOAK_MIX`: `churn` (default) — per operation 50 % upsert of
//!   a live machine (state change; every fifth also a new image and
//!   instance), 25 % delete of a live machine, 15 % re-insert of a deleted
//!   id, 10 % insert of a brand-new id (deletes match re-inserts plus new
//!   ids, so the live count stays near the load's, while the set turns
//!   over and deleted ids that never come back pile up) — or `upserts`
//!   (every operation an upsert: the no-delete baseline);
//! - `PATINA_SOAK_RETENTION` (seconds, float): when set, the nodes' config
//!   gets `[db] tombstone_retention = X` (0 = never collect); unset, the
//!   key is not written at all;
//! - `PATINA_SOAK_SAMPLE` (default 10): seconds between samples;
//! - `PATINA_SOAK_LABEL`: the run's name in the CSV and the plot (default
//!   `no-delete`, `churn` (the key unset: a week's retention, nothing
//!   collected within a run), `churn-no-collection` (0) or
//!   `churn-retention-Xs`);
//! - `PATINA_SOAK_OUT` (default `target/soak`): where `LABEL.csv` and
//!   `LABEL.json` go; `PATINA_SOAK_PLOT` (default `docs/soak/soak.png`):
//!   the plot of every CSV in the out dir, redrawn after each run;
//!   `PATINA_SOAK_PLOT_ONLY=1` only redraws it;
//! - `PATINA_SOAK_FONT`: a TTF for the plot's text (default DejaVu Sans
//!   from Debian's fonts-dejavu-core); without one the plot is skipped;
//! - `PATINA_BENCH_JSON=FILE` appends the summary line to FILE.
//!
//! Every `PATINA_SOAK_SAMPLE` seconds, per node: `regional.db`'s size
//! (the file; its free pages are counted apart), the `-wal` file's size
//! and the WAL in use (frames since its last reset, from the `-shm`
//! header), each with the largest since the last sample (stat every 250
//! ms), live rows (`SELECT count(*) FROM machines`), clock rows (`… FROM
//! machines__crr_clock`; clock rows − live rows = tombstones), through
//! `/v1/queries`. After the load and at the end (once the nodes agree on
//! the live count), a page breakdown of `regional.db` by table and index
//! and how full their leaf pages are (`dbstat`, read-only connection).
//! Results of the runs made: docs/benchmarks.md, "Storage growth (soak)".

#[path = "support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "cluster/http.rs"]
mod http;
#[allow(dead_code)]
#[path = "cluster/nodes.rs"]
mod nodes;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodes::Cluster;
use serde_json::{json, Value as Json};
use support::{append_json_lines, env_or, round2};

const SCHEMA: &str = "CREATE TABLE machines (
    id TEXT PRIMARY KEY NOT NULL,
    app TEXT,
    region TEXT,
    state TEXT,
    image TEXT,
    instance_id TEXT,
    private_ip TEXT,
    cpus INTEGER,
    memory_mb INTEGER,
    created_at INTEGER,
    updated_at INTEGER
);
CREATE INDEX machines_app ON machines (app);
";
const COLUMNS: &str =
    "id, app, region, state, image, instance_id, private_ip, cpus, memory_mb, created_at, updated_at";
const STATES: [&str; 6] = [
    "created",
    "starting",
    "started",
    "stopping",
    "stopped",
    "replacing",
];
const NODES: usize = 3;
const MIB: f64 = 1024.0 * 1024.0;

struct Settings {
    machines: u64,
    secs: f64,
    rate: f64,
    clients: usize,
    load_batch: u64,
    mix: Mix,
    retention: Option<f64>,
    sample: f64,
    label: String,
    out: PathBuf,
    plot: PathBuf,
}

#[derive(Clone, Copy, PartialEq)]
enum Mix {
    Churn,
    Upserts,
}

impl Settings {
    fn from_env() -> Settings {
        let mix = match env_or::<String>("PATINA_SOAK_MIX", "churn".into()).as_str() {
            "churn" => Mix::Churn,
            "upserts" => Mix::Upserts,
            other => panic!("PATINA_SOAK_MIX: churn or upserts, not {other:?}"),
        };
        let retention = std::env::var("PATINA_SOAK_RETENTION")
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<f64>()
                    .unwrap_or_else(|_| panic!("PATINA_SOAK_RETENTION: seconds, not {v:?}"))
            });
        let default_label = match (mix, retention) {
            (Mix::Upserts, _) => "no-delete".to_owned(),
            (Mix::Churn, None) => "churn".to_owned(),
            (Mix::Churn, Some(0.0)) => "churn-no-collection".to_owned(),
            (Mix::Churn, Some(r)) => format!("churn-retention-{r}s"),
        };
        let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target dir")
            .to_path_buf();
        let settings = Settings {
            machines: env_or("PATINA_SOAK_MACHINES", 1_000_000),
            secs: env_or("PATINA_SOAK_SECS", 600.0),
            rate: env_or("PATINA_SOAK_RATE", 1000.0),
            clients: env_or("PATINA_SOAK_CLIENTS", 6),
            load_batch: env_or("PATINA_SOAK_LOAD_BATCH", 1000),
            mix,
            retention,
            sample: env_or("PATINA_SOAK_SAMPLE", 10.0),
            label: env_or("PATINA_SOAK_LABEL", default_label),
            out: env_or("PATINA_SOAK_OUT", target.join("soak")),
            plot: env_or(
                "PATINA_SOAK_PLOT",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/soak/soak.png"),
            ),
        };
        assert!(settings.clients >= 1 && settings.rate > 0.0 && settings.sample > 0.0);
        assert!(settings.machines >= settings.clients as u64);
        settings
    }
}

/// splitmix64: the bench's own seeded generator (one per client).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Machine `n`'s id: 14 hex digits, unique per `n` (an odd multiplier is a
/// bijection modulo 2^56), scattered over the key space like real ids.
fn machine_id(n: u64) -> String {
    format!(
        "{:014x}",
        n.wrapping_mul(0x9E37_79B9_7F4A_7C15) & ((1 << 56) - 1)
    )
}

/// Machine `n`'s row at its `generation`-th write, as JSON parameters
/// in `COLUMNS` order: ≈ 160 bytes of values.
fn machine_row(n: u64, generation: u64, now: u64) -> Json {
    let app = n % 20_000;
    let deploy = generation / 5;
    let mix = n.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ deploy;
    let cpus = [1, 2, 4, 8][(n % 4) as usize];
    let memory_mb = [256, 512, 1024, 2048, 4096][(n % 5) as usize];
    json!([
        machine_id(n),
        format!("app-{app:05}"),
        "ams",
        STATES[((n + generation) % STATES.len() as u64) as usize],
        format!("registry.example.com/app-{app:05}:deployment-{:020X}", mix),
        format!("01J{:023X}", mix.wrapping_mul(31) as u128 * 65_537),
        format!(
            "fdaa:0:{:x}:a7b:{:x}:{:x}:{:x}:2",
            app,
            (mix >> 16) & 0xffff,
            (mix >> 32) & 0xffff,
            (mix >> 48) & 0xffff
        ),
        cpus,
        memory_mb,
        1_700_000_000 + n % 10_000_000,
        now,
    ])
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn insert_sql() -> String {
    format!("INSERT INTO machines ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
}

fn upsert_sql() -> String {
    format!(
        "{} ON CONFLICT (id) DO UPDATE SET state = excluded.state, image = excluded.image, \
         instance_id = excluded.instance_id, private_ip = excluded.private_ip, \
         updated_at = excluded.updated_at",
        insert_sql()
    )
}

/// Posts one transaction (`statements`: a JSON array of `[sql, params]`).
async fn transact(http: &reqwest::Client, addr: &str, statements: &Json) -> Result<(), String> {
    let resp = http
        .post(format!("http://{addr}/v1/transactions"))
        .header("content-type", "application/json")
        .body(statements.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() || !body.contains("\"version\":") {
        return Err(format!("HTTP {status}: {body}"));
    }
    Ok(())
}

async fn count(http: &reqwest::Client, addr: &str, table: &str) -> u64 {
    let rows = http::query(
        http,
        addr,
        &format!("SELECT count(*) FROM {table}"),
        json!([]),
    )
    .await;
    rows.first().and_then(|r| r[0].as_u64()).unwrap_or(0)
}

/// Loads machines `0..machines`, one loader per node (loader k writes the
/// batches k, k + 3, …), each transaction `batch` inserts.
async fn load(cluster: &Cluster, machines: u64, batch: u64) {
    let started = Instant::now();
    let batches = machines.div_ceil(batch);
    let now = unix_secs();
    let sql = insert_sql();
    let loaders = (0..NODES).map(|k| {
        let http = cluster.http.clone();
        let addr = cluster.agents[k].addr.clone();
        let sql = sql.clone();
        async move {
            let mut b = k as u64;
            while b < batches {
                let statements: Vec<Json> = (b * batch..((b + 1) * batch).min(machines))
                    .map(|n| json!([sql, machine_row(n, 0, now)]))
                    .collect();
                transact(&http, &addr, &Json::Array(statements))
                    .await
                    .unwrap_or_else(|e| panic!("load batch {b} on node {k}: {e}"));
                b += NODES as u64;
            }
        }
    });
    futures_util::future::join_all(loaders).await;
    eprintln!(
        "loaded {machines} machines in {:.1} s ({:.0} rows/s)",
        started.elapsed().as_secs_f64(),
        machines as f64 / started.elapsed().as_secs_f64()
    );
    wait_converged(cluster, Some(machines)).await;
    eprintln!(
        "every node holds them after {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Waits (bounded) until every node counts the same live rows (`want`
/// when given).
async fn wait_converged(cluster: &Cluster, want: Option<u64>) -> u64 {
    let started = Instant::now();
    let mut last_report = started;
    loop {
        let mut counts = Vec::new();
        for a in &cluster.agents {
            counts.push(count(&cluster.http, &a.addr, "machines").await);
        }
        let agreed = counts.windows(2).all(|w| w[0] == w[1]);
        if agreed && want.is_none_or(|w| counts[0] == w) {
            return counts[0];
        }
        // A million rows take minutes to reach the replicas on 2 shared cores.
        assert!(
            started.elapsed() < Duration::from_secs(1200),
            "nodes did not converge within 1200 s: {counts:?} (want {want:?})"
        );
        if last_report.elapsed() > Duration::from_secs(30) {
            eprintln!("waiting for the nodes to agree: live rows {counts:?}");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One client's view of its machines (ids `n` with `n % clients == c`):
/// which are live, which deleted, the next new id.
struct Model {
    live: Vec<u64>,
    deleted: Vec<u64>,
    next_new: u64,
    step: u64,
    generation: u64,
}

enum Op {
    Upsert(u64),
    Delete(u64),
    Reinsert(u64),
    Insert(u64),
}

impl Model {
    fn new(c: usize, clients: usize, machines: u64) -> Model {
        let live: Vec<u64> = (c as u64..machines).step_by(clients).collect();
        // The first new id of this client: the first n ≥ machines with
        // n % clients == c.
        let mut next_new = machines - machines % clients as u64 + c as u64;
        if next_new < machines {
            next_new += clients as u64;
        }
        Model {
            live,
            deleted: Vec::new(),
            next_new,
            step: clients as u64,
            generation: 0,
        }
    }

    fn next(&mut self, rng: &mut Rng, mix: Mix) -> Op {
        self.generation += 1;
        let roll = if mix == Mix::Upserts {
            0
        } else {
            rng.below(100)
        };
        match roll {
            0..50 => Op::Upsert(self.live[rng.below(self.live.len())]),
            50..75 if self.live.len() > 1 => {
                let i = rng.below(self.live.len());
                let n = self.live.swap_remove(i);
                self.deleted.push(n);
                Op::Delete(n)
            }
            75..90 if !self.deleted.is_empty() => {
                let i = rng.below(self.deleted.len());
                let n = self.deleted.swap_remove(i);
                self.live.push(n);
                Op::Reinsert(n)
            }
            _ => {
                let n = self.next_new;
                self.next_new += self.step;
                self.live.push(n);
                Op::Insert(n)
            }
        }
    }
}

/// What the churn clients did.
#[derive(Default)]
struct Done {
    ops: AtomicU64,
    upserts: AtomicU64,
    deletes: AtomicU64,
    reinserts: AtomicU64,
    inserts: AtomicU64,
    errors: AtomicU64,
    /// Operations started later than 1 s behind schedule (the schedule
    /// was reset: the cluster did not keep up).
    late: AtomicU64,
}

async fn churn_client(
    c: usize,
    settings: Arc<Settings>,
    http: reqwest::Client,
    addr: String,
    done: Arc<Done>,
    stop: Arc<AtomicBool>,
) {
    let mut model = Model::new(c, settings.clients, settings.machines);
    let mut rng = Rng(0x5eed_0000 + c as u64);
    let interval = Duration::from_secs_f64(settings.clients as f64 / settings.rate);
    let upsert = upsert_sql();
    let insert = insert_sql();
    let delete = "DELETE FROM machines WHERE id = ?";
    let mut next = tokio::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        next += interval;
        let now = tokio::time::Instant::now();
        if next + Duration::from_secs(1) < now {
            done.late.fetch_add(1, Ordering::Relaxed);
            next = now;
        }
        tokio::time::sleep_until(next).await;
        let op = model.next(&mut rng, settings.mix);
        let g = model.generation;
        let t = unix_secs();
        let (statement, counter) = match op {
            Op::Upsert(n) => (json!([upsert, machine_row(n, g, t)]), &done.upserts),
            Op::Delete(n) => (json!([delete, [machine_id(n)]]), &done.deletes),
            Op::Reinsert(n) => (json!([insert, machine_row(n, g, t)]), &done.reinserts),
            Op::Insert(n) => (json!([insert, machine_row(n, g, t)]), &done.inserts),
        };
        match transact(&http, &addr, &json!([statement])).await {
            Ok(()) => {
                counter.fetch_add(1, Ordering::Relaxed);
                done.ops.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if done.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("client {c}: {e}");
                }
            }
        }
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Bytes of the WAL in use: its frames since the last reset (`mxFrame` of
/// the wal-index header at the start of the `-shm` file, native byte
/// order, SQLite's wal.c) × (page + frame header) + the WAL header. The
/// `-wal` file itself never shrinks without `journal_size_limit`: after a
/// checkpoint SQLite writes it again from the start, so its size is the
/// largest the WAL ever was, and this is what it holds now. 0 if the
/// header cannot be read.
fn wal_in_use(shm: &Path) -> u64 {
    let mut header = [0u8; 24];
    let read = std::fs::File::open(shm).and_then(|mut f| {
        use std::io::Read as _;
        f.read_exact(&mut header)
    });
    if read.is_err() {
        return 0;
    }
    let page = u16::from_ne_bytes([header[14], header[15]]);
    // szPage holds 65536 as 1.
    let page = if page == 1 { 65_536 } else { u64::from(page) };
    let frames = u64::from(u32::from_ne_bytes([
        header[16], header[17], header[18], header[19],
    ]));
    if frames == 0 {
        0
    } else {
        32 + frames * (page + 24)
    }
}

/// Per node, the largest `-wal` file size and WAL in use seen since the
/// last sample (stat every 250 ms), and the largest over the whole run.
struct WalWatch {
    since_sample: Vec<AtomicU64>,
    overall: Vec<AtomicU64>,
    used_since_sample: Vec<AtomicU64>,
    used_overall: Vec<AtomicU64>,
}

impl WalWatch {
    fn new() -> WalWatch {
        let v = || (0..NODES).map(|_| AtomicU64::new(0)).collect();
        WalWatch {
            since_sample: v(),
            overall: v(),
            used_since_sample: v(),
            used_overall: v(),
        }
    }

    fn observe(&self, i: usize, bytes: u64, used: u64) {
        self.since_sample[i].fetch_max(bytes, Ordering::Relaxed);
        self.overall[i].fetch_max(bytes, Ordering::Relaxed);
        self.used_since_sample[i].fetch_max(used, Ordering::Relaxed);
        self.used_overall[i].fetch_max(used, Ordering::Relaxed);
    }
}

struct Sample {
    t: f64,
    node: usize,
    live: u64,
    clocks: u64,
    db_bytes: u64,
    free_bytes: u64,
    wal_bytes: u64,
    wal_max_bytes: u64,
    wal_used_bytes: u64,
    wal_used_max_bytes: u64,
    ops: u64,
}

impl Sample {
    fn per_live_row(&self) -> f64 {
        self.db_bytes as f64 / self.live.max(1) as f64
    }
}

const CSV_HEADER: &str = "variant,t_secs,node,live_rows,clock_rows,tombstones,db_bytes,free_bytes,wal_bytes,wal_max_bytes,bytes_per_live_row,ops,wal_used_bytes,wal_used_max_bytes";

fn csv_line(label: &str, s: &Sample) -> String {
    format!(
        "{label},{:.1},{},{},{},{},{},{},{},{},{:.1},{},{},{}",
        s.t,
        s.node,
        s.live,
        s.clocks,
        s.clocks.saturating_sub(s.live),
        s.db_bytes,
        s.free_bytes,
        s.wal_bytes,
        s.wal_max_bytes,
        s.per_live_row(),
        s.ops,
        s.wal_used_bytes,
        s.wal_used_max_bytes
    )
}

/// Free pages of `db` × its page size (read-only connection; 0 if it
/// cannot be read).
fn free_bytes(db: &Path) -> u64 {
    let read = || -> rusqlite::Result<u64> {
        let conn =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok((free * size) as u64)
    };
    read().unwrap_or(0)
}

/// How full the leaf pages of the largest tables and indexes of `db` are
/// (bytes used / page bytes, `dbstat`), largest first.
fn leaf_fill(db: &Path) -> Vec<(String, f64)> {
    let read = || -> rusqlite::Result<Vec<(String, f64)>> {
        let conn =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let mut stmt = conn.prepare(
            "SELECT name, 1.0 - sum(unused) * 1.0 / sum(pgsize) FROM dbstat \
             WHERE pagetype = 'leaf' GROUP BY name ORDER BY sum(pgsize) DESC LIMIT 6",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    };
    read().unwrap_or_else(|e| {
        eprintln!("dbstat on {}: {e}", db.display());
        Vec::new()
    })
}

/// Bytes per table and index of `db` (`dbstat`), largest first.
fn breakdown(db: &Path) -> Vec<(String, u64)> {
    let read = || -> rusqlite::Result<Vec<(String, u64)>> {
        let conn =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let mut stmt = conn.prepare(
            "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY sum(pgsize) DESC",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        rows.collect()
    };
    read().unwrap_or_else(|e| {
        eprintln!("dbstat on {}: {e}", db.display());
        Vec::new()
    })
}

async fn sample_node(cluster: &Cluster, i: usize, t: f64, watch: &WalWatch, ops: u64) -> Sample {
    let dir = cluster.data_dir(i);
    let db = dir.join("regional.db");
    let wal = dir.join("regional.db-wal");
    let addr = &cluster.agents[i].addr;
    let live = count(&cluster.http, addr, "machines").await;
    let clocks = count(&cluster.http, addr, "machines__crr_clock").await;
    let wal_bytes = file_len(&wal);
    let wal_used = wal_in_use(&dir.join("regional.db-shm"));
    watch.observe(i, wal_bytes, wal_used);
    Sample {
        t,
        node: i,
        live,
        clocks,
        db_bytes: file_len(&db),
        free_bytes: free_bytes(&db),
        wal_bytes,
        wal_max_bytes: watch.since_sample[i].swap(wal_bytes, Ordering::Relaxed),
        wal_used_bytes: wal_used,
        wal_used_max_bytes: watch.used_since_sample[i].swap(wal_used, Ordering::Relaxed),
        ops,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

async fn run(settings: Arc<Settings>) -> Json {
    let retention = settings.retention;
    let started = Instant::now();
    let cluster = Cluster::start_with(NODES, |dir, config| {
        std::fs::write(dir.join("schema/bench.sql"), SCHEMA).unwrap();
        if let Some(r) = retention {
            let text = std::fs::read_to_string(config).unwrap();
            let with = text.replacen("[db]\n", &format!("[db]\ntombstone_retention = {r:?}\n"), 1);
            assert_ne!(text, with, "support::setup's config has no [db] section");
            std::fs::write(config, with).unwrap();
        }
    })
    .await;
    load(&cluster, settings.machines, settings.load_batch).await;
    // Node 0's pages by table and index before the churn (what the churn
    // then adds is the difference with the end's).
    let loaded_breakdown = breakdown(&cluster.data_dir(0).join("regional.db"));
    let loaded_fill = leaf_fill(&cluster.data_dir(0).join("regional.db"));

    std::fs::create_dir_all(&settings.out).unwrap();
    let csv_path = settings.out.join(format!("{}.csv", settings.label));
    let mut csv = format!("{CSV_HEADER}\n");

    let watch = Arc::new(WalWatch::new());
    let stop = Arc::new(AtomicBool::new(false));
    let wal_paths: Vec<(PathBuf, PathBuf)> = (0..NODES)
        .map(|i| {
            let dir = cluster.data_dir(i);
            (dir.join("regional.db-wal"), dir.join("regional.db-shm"))
        })
        .collect();
    let stat_loop = {
        let watch = watch.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for (i, (wal, shm)) in wal_paths.iter().enumerate() {
                    watch.observe(i, file_len(wal), wal_in_use(shm));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let done = Arc::new(Done::default());
    let mut samples: Vec<Sample> = Vec::new();
    let take = async |t: f64, samples: &mut Vec<Sample>, csv: &mut String| {
        let ops = done.ops.load(Ordering::Relaxed);
        for i in 0..NODES {
            let s = sample_node(&cluster, i, t, &watch, ops).await;
            writeln!(csv, "{}", csv_line(&settings.label, &s)).unwrap();
            samples.push(s);
        }
        std::fs::write(&csv_path, &*csv).unwrap();
        let last = &samples[samples.len() - NODES..];
        eprintln!(
            "t={t:6.0}s ops={ops:8} live={:8} tombstones={:7} db={:7.1} MiB ({:6.1} B/live row, free {:5.1} MiB) wal file={:5.1} MiB (max {:5.1}) in use max {:5.1} MiB",
            last[0].live,
            last[0].clocks.saturating_sub(last[0].live),
            last[0].db_bytes as f64 / MIB,
            last[0].per_live_row(),
            last[0].free_bytes as f64 / MIB,
            last.iter().map(|s| s.wal_bytes).max().unwrap_or(0) as f64 / MIB,
            last.iter().map(|s| s.wal_max_bytes).max().unwrap_or(0) as f64 / MIB,
            last.iter().map(|s| s.wal_used_max_bytes).max().unwrap_or(0) as f64 / MIB,
        );
    };
    take(0.0, &mut samples, &mut csv).await;

    let churn_stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..settings.clients)
        .map(|c| {
            tokio::spawn(churn_client(
                c,
                settings.clone(),
                cluster.http.clone(),
                cluster.agents[c % NODES].addr.clone(),
                done.clone(),
                churn_stop.clone(),
            ))
        })
        .collect();
    let churn_started = Instant::now();
    let end = churn_started + Duration::from_secs_f64(settings.secs);
    let mut next_sample = churn_started;
    loop {
        next_sample += Duration::from_secs_f64(settings.sample);
        if next_sample > end {
            break;
        }
        tokio::time::sleep_until(next_sample.into()).await;
        take(
            churn_started.elapsed().as_secs_f64(),
            &mut samples,
            &mut csv,
        )
        .await;
    }
    tokio::time::sleep_until(end.into()).await;
    churn_stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let churn_secs = churn_started.elapsed().as_secs_f64();
    let live = wait_converged(&cluster, None).await;
    eprintln!("churn stopped; nodes agree on {live} live machines");
    take(churn_secs, &mut samples, &mut csv).await;
    stop.store(true, Ordering::Relaxed);
    stat_loop.await.unwrap();

    let end_fill = leaf_fill(&cluster.data_dir(0).join("regional.db"));
    let breakdowns: Vec<Vec<(String, u64)>> = (0..NODES)
        .map(|i| breakdown(&cluster.data_dir(i).join("regional.db")))
        .collect();
    let last = &samples[samples.len() - NODES..];
    let first = &samples[..NODES];
    let wal_max = watch
        .overall
        .iter()
        .map(|w| w.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let o = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let summary = json!({
        "bench": "soak",
        "variant": settings.label,
        "machines": settings.machines,
        "churn_secs": round2(churn_secs),
        "rate_asked": settings.rate,
        "rate_done": round2(o(&done.ops) as f64 / churn_secs),
        "mix": if settings.mix == Mix::Churn { "churn" } else { "upserts" },
        "tombstone_retention": settings.retention,
        "ops": {"upserts": o(&done.upserts), "deletes": o(&done.deletes),
                "reinserts": o(&done.reinserts), "inserts": o(&done.inserts),
                "errors": o(&done.errors), "late": o(&done.late)},
        "elapsed_secs": round2(started.elapsed().as_secs_f64()),
        "after_load": {
            "bytes_per_live_row": round2(median(first.iter().map(Sample::per_live_row).collect())),
            "db_mib": round2(median(first.iter().map(|s| s.db_bytes as f64 / MIB).collect())),
        },
        "end": {
            "live_rows": last[0].live,
            "tombstones": last.iter().map(|s| s.clocks.saturating_sub(s.live)).collect::<Vec<_>>(),
            "bytes_per_live_row": round2(median(last.iter().map(Sample::per_live_row).collect())),
            "db_mib": last.iter().map(|s| round2(s.db_bytes as f64 / MIB)).collect::<Vec<_>>(),
            "free_mib": last.iter().map(|s| round2(s.free_bytes as f64 / MIB)).collect::<Vec<_>>(),
        },
        "wal_max_mib": round2(wal_max as f64 / MIB),
        "wal_max_mib_per_node": watch.overall.iter().map(|w| round2(w.load(Ordering::Relaxed) as f64 / MIB)).collect::<Vec<_>>(),
        "wal_file_mib_after_load": first.iter().map(|s| round2(s.wal_bytes as f64 / MIB)).collect::<Vec<_>>(),
        "wal_in_use_max_mib_per_node": watch.used_overall.iter().map(|w| round2(w.load(Ordering::Relaxed) as f64 / MIB)).collect::<Vec<_>>(),
        "node0_mib_by_object_after_load": loaded_breakdown.iter().take(8).map(|(n, b)| json!([n, round2(*b as f64 / MIB)])).collect::<Vec<_>>(),
        "node0_leaf_fill_after_load": loaded_fill.iter().map(|(n, f)| json!([n, round2(*f)])).collect::<Vec<_>>(),
        "node0_leaf_fill_end": end_fill.iter().map(|(n, f)| json!([n, round2(*f)])).collect::<Vec<_>>(),
        "node0_mib_by_object": breakdowns[0].iter().map(|(n, b)| json!([n, round2(*b as f64 / MIB)])).collect::<Vec<_>>(),
        "nodes_mib_by_object": breakdowns.iter().map(|b| b.iter().take(8).map(|(n, b)| json!([n, round2(*b as f64 / MIB)])).collect::<Vec<_>>()).collect::<Vec<_>>(),
    });
    let mut cluster = cluster;
    cluster.assert_running();
    for a in &mut cluster.agents {
        a.terminate();
    }
    summary
}

/// Per variant: (t, median over nodes) of bytes per live row, and (t,
/// largest of any node in the sample interval) of the `-wal` file and of
/// the WAL in use (MiB; none from CSVs without that column).
/// One sample time of a CSV: t and, per node, bytes per live row, WAL
/// file and WAL in use.
type AtT = (f64, Vec<f64>, Vec<f64>, Vec<f64>);

struct Series {
    label: String,
    per_row: Vec<(f64, f64)>,
    wal_file: Vec<(f64, f64)>,
    wal_used: Vec<(f64, f64)>,
}

fn read_series(out: &Path) -> Vec<Series> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "csv"));
    files.sort();
    let mut series = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let mut lines = text.lines();
        // Columns by name: CSVs of an earlier version of the bench lack
        // the WAL-in-use columns.
        let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (Some(c_t), Some(c_row), Some(c_wal)) = (
            col("t_secs"),
            col("bytes_per_live_row"),
            col("wal_max_bytes"),
        ) else {
            eprintln!("{}: not a soak CSV, left out of the plot", f.display());
            continue;
        };
        let c_used = col("wal_used_max_bytes");
        // t → (bytes per live row, WAL file max, WAL in use max) of each node.
        let mut by_t: Vec<AtT> = Vec::new();
        let mut label = String::new();
        for line in lines {
            let cells: Vec<&str> = line.split(',').collect();
            if cells.len() < header.len() {
                continue;
            }
            label = cells[0].to_owned();
            let t: f64 = cells[c_t].parse().unwrap_or(0.0);
            let per_row: f64 = cells[c_row].parse().unwrap_or(0.0);
            let wal: f64 = cells[c_wal].parse::<f64>().unwrap_or(0.0) / MIB;
            let used: Option<f64> = c_used.and_then(|c| cells[c].parse::<f64>().ok());
            let used: Vec<f64> = used.map(|u| u / MIB).into_iter().collect();
            match by_t.last_mut() {
                Some(last) if last.0 == t => {
                    last.1.push(per_row);
                    last.2.push(wal);
                    last.3.extend(used);
                }
                _ => by_t.push((t, vec![per_row], vec![wal], used)),
            }
        }
        if by_t.is_empty() {
            continue;
        }
        let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
        series.push(Series {
            label,
            per_row: by_t.iter().map(|b| (b.0, median(b.1.clone()))).collect(),
            wal_file: by_t.iter().map(|b| (b.0, max(&b.2))).collect(),
            wal_used: by_t
                .iter()
                .filter(|b| !b.3.is_empty())
                .map(|b| (b.0, max(&b.3)))
                .collect(),
        });
    }
    series
}

/// Registers a TTF for the plot's text; false if there is none.
fn register_font() -> bool {
    let path = std::env::var("PATINA_SOAK_FONT")
        .unwrap_or_else(|_| "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into());
    let Ok(bytes) = std::fs::read(&path) else {
        eprintln!("no font at {path} (PATINA_SOAK_FONT): plot skipped");
        return false;
    };
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    match plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes) {
        Ok(()) => true,
        Err(_) => {
            eprintln!("{path} is not a font plotters can read: plot skipped");
            false
        }
    }
}

/// Two panels, one line per CSV in `out`: bytes per live row (node
/// median) and the largest WAL of any node, over the churn's seconds.
fn plot(out: &Path, png: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let series = read_series(out);
    if series.is_empty() {
        eprintln!("no CSV in {}: nothing to plot", out.display());
        return Ok(());
    }
    if !register_font() {
        return Ok(());
    }
    if let Some(dir) = png.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root = BitMapBackend::new(png, (1000, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(450);
    let t_max = series
        .iter()
        .flat_map(|s| s.per_row.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let row_max = series
        .iter()
        .flat_map(|s| s.per_row.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let wal_max = series
        .iter()
        .flat_map(|s| s.wal_file.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        .max(70.0);
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    let panels: [(&DrawingArea<_, _>, &str, &str, f64); 2] = [
        (
            &top,
            "regional.db bytes per live row (median of 3 nodes)",
            "bytes / live row",
            row_max * 1.15,
        ),
        (
            &bottom,
            "WAL of any node, largest per interval: file (thick), in use (thin)",
            "WAL MiB",
            wal_max * 1.1,
        ),
    ];
    for (k, (area, caption, y_desc, y_max)) in panels.into_iter().enumerate() {
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds of churn")
            .y_desc(y_desc)
            .label_style(("sans-serif", 14))
            .draw()?;
        for (j, s) in series.iter().enumerate() {
            let color = colors[j % colors.len()];
            let points = if k == 0 { &s.per_row } else { &s.wal_file };
            chart
                .draw_series(LineSeries::new(
                    points.iter().cloned(),
                    color.stroke_width(2),
                ))?
                .label(s.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            if k == 1 && !s.wal_used.is_empty() {
                chart.draw_series(LineSeries::new(
                    s.wal_used.iter().cloned(),
                    color.mix(0.7).stroke_width(1),
                ))?;
            }
        }
        if k == 1 {
            chart
                .draw_series(LineSeries::new(
                    [(0.0, 64.0), (t_max, 64.0)],
                    BLACK.mix(0.5).stroke_width(1),
                ))?
                .label("64 MiB target")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
    }
    root.present()?;
    eprintln!("plot: {}", png.display());
    Ok(())
}

fn main() {
    let settings = Arc::new(Settings::from_env());
    if env_or("PATINA_SOAK_PLOT_ONLY", 0) == 1 {
        plot(&settings.out, &settings.plot).expect("plot");
        return;
    }
    eprintln!(
        "soak {}: {} machines, {} s at {} ops/s, retention {:?}",
        settings.label, settings.machines, settings.secs, settings.rate, settings.retention
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let summary = rt.block_on(run(settings.clone()));
    println!("{summary}");
    append_json_lines(&format!("{summary}\n"));
    std::fs::write(
        settings.out.join(format!("{}.json", settings.label)),
        serde_json::to_string_pretty(&summary).unwrap(),
    )
    .unwrap();
    plot(&settings.out, &settings.plot).expect("plot");
}
