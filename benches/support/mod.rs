//! What the HTTP benches share: a temp-dir config, the release `patina
//! agent` as a child process, and /proc readers for the agent's RSS, CPU
//! and open file descriptors. Each bench uses a subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../../tests/support/spawn.rs"]
mod spawn;

pub const BIN: &str = env!("CARGO_BIN_EXE_patina");
pub const SCHEMA: &str =
    "CREATE TABLE bench(id TEXT PRIMARY KEY NOT NULL, a INTEGER, b TEXT, c REAL, d BLOB);";
/// Kernel clock ticks per second for /proc/<pid>/stat (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// Writes the schema and a config (data in `dir/data`, API and gossip on
/// 127.0.0.1, OS-chosen ports); returns the config's path.
pub fn setup(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("schema")).unwrap();
    std::fs::write(dir.join("schema/bench.sql"), SCHEMA).unwrap();
    let config = dir.join("patina.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nregion = \"bench\"\ndata_dir = {:?}\n[db]\nschema_paths = [{:?}]\n\
             [api]\naddr = \"127.0.0.1:0\"\n[gossip]\naddr = \"127.0.0.1:0\"\ninsecure = true\n",
            dir.join("data"),
            dir.join("schema")
        ),
    )
    .unwrap();
    config
}

/// As [`setup`], for a node that joins the region through `bootstrap`
/// (gossip addresses of nodes already running).
pub fn setup_peer(dir: &Path, bootstrap: &[&str]) -> PathBuf {
    let config = setup(dir);
    let list: Vec<String> = bootstrap.iter().map(|b| format!("{b:?}")).collect();
    let text = std::fs::read_to_string(&config).unwrap();
    let with_bootstrap = text.replace(
        "[gossip]\naddr = \"127.0.0.1:0\"\ninsecure = true\n",
        &format!(
            "[gossip]\naddr = \"127.0.0.1:0\"\ninsecure = true\nbootstrap = [{}]\n",
            list.join(", ")
        ),
    );
    assert_ne!(
        text, with_bootstrap,
        "setup's [gossip] section changed shape"
    );
    std::fs::write(&config, with_bootstrap).unwrap();
    config
}

pub struct Agent {
    pub child: Child,
    pub addr: String,
    /// Its regional gossip address (what peers bootstrap to).
    pub gossip: String,
    /// Its global gossip address, on a global member.
    pub global_gossip: Option<String>,
    stopped: bool,
}

impl Agent {
    /// Starts the agent and waits (bounded) for its "API listening" line.
    /// `PATINA_BENCH_BIN` runs another build (e.g. main's, for a before /
    /// after comparison) instead of this tree's.
    pub fn start(config: &Path) -> Agent {
        let bin = std::env::var("PATINA_BENCH_BIN")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| BIN.to_owned());
        let (child, addrs) = spawn::spawn_agent_with_addrs(&bin, config);
        assert!(
            addrs.api.starts_with("127.0.0.1:"),
            "agent listens on {:?}, not on 127.0.0.1",
            addrs.api
        );
        Agent {
            child,
            addr: addrs.api,
            gossip: addrs.gossip,
            global_gossip: addrs.global_gossip,
            stopped: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait up to 30 s for a clean exit (SIGKILL after that).
    pub fn terminate(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait().expect("wait for the agent") {
                Some(status) => {
                    assert!(status.success(), "agent exited with {status} after SIGTERM");
                    break;
                }
                None if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!("agent did not stop within 30 s of SIGTERM");
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        self.stopped = true;
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A field of /proc/<pid>/status in KiB (VmRSS, VmHWM).
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Open file descriptors of a process (entries of /proc/<pid>/fd).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// utime + stime of a process, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let ticks = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(14) + ticks(15)) as f64 / USER_HZ
}

/// Polls VmRSS every 50 ms until stopped; returns the largest seen (MiB).
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<f64>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut max = 0u64;
            while !flag.load(Ordering::Relaxed) {
                max = max.max(proc_status_kib(pid, "VmRSS").unwrap_or(0));
                std::thread::sleep(Duration::from_millis(50));
            }
            max as f64 / 1024.0
        });
        RssSampler { stop, handle }
    }

    pub fn stop(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// One load client's HTTP/1.1 connection, kept alive between requests.
pub fn load_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// `name` from the environment, parsed; `default` when unset. A value that
/// does not parse stops the bench naming it.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}: cannot parse {v:?}")),
        Err(_) => default,
    }
}

/// Appends `text` (JSON lines) to the file `PATINA_BENCH_JSON` names, if
/// it is set.
pub fn append_json_lines(text: &str) {
    if let Ok(path) = std::env::var("PATINA_BENCH_JSON") {
        let mut old = std::fs::read_to_string(&path).unwrap_or_default();
        old.push_str(text);
        std::fs::write(&path, old).expect("write PATINA_BENCH_JSON");
    }
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// POSTs a subscription (`body`, JSON) to `url`: its streaming response,
/// or why not (`HTTP 503: …`, a connection error).
pub async fn open_stream(
    http: &reqwest::Client,
    url: &str,
    body: String,
) -> Result<reqwest::Response, String> {
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    Err(format!("HTTP {status}: {text}"))
}
