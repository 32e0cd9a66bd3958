//! `patina devcluster --regions ams=3,ord=3,nrt=2`: a local multi-region
//! cluster in one command, made of processes of this very binary running
//! `patina agent`, so what a developer tries is what a fleet runs (two
//! clusters, relay, leaders, rollups), not an in-process imitation.
//!
//! Layout of the data folder (kept, so a restart with the same `--dir`
//! keeps every node's data):
//!
//! ```text
//! DIR/devcluster.toml            marks the folder as a devcluster's; its regions
//! DIR/schema/demo-schema.sql     regional tables (written when missing)
//! DIR/global-schema/demo-global-schema.sql
//! DIR/<region>-<n>/patina.toml   rewritten at each start (addresses change)
//! DIR/<region>-<n>/data/
//! DIR/<region>-<n>/agent.log     appended to
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::Instant;

use crate::config::check_region;

/// More would only make a laptop swap; failover and relay need 3.
pub const NODES_MAX: u32 = 16;
const MARKER: &str = "devcluster.toml";
const REGIONAL_SCHEMA: &str = include_str!("../config/demo-schema.sql");
const GLOBAL_SCHEMA: &str = include_str!("../config/demo-global-schema.sql");
const ROLLUP: &str = "[[rollup]]
name = \"app_regions\"
key = [\"app\"]
query = \"SELECT app, count(*) AS machines, sum(state = 'started') AS started FROM machines GROUP BY app\"
";
/// A debug agent on a busy two-core laptop can take seconds to open its
/// databases; several start at once.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// An agent stops within about 8 s whatever its clients do (agent_cmd.rs's
/// graces); past this it is stuck and gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const LOG_POLL: Duration = Duration::from_millis(25);

/// One region of `--regions` and its node count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionCount {
    pub region: String,
    pub nodes: u32,
}

/// `--regions`: at least one region, each named once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionCounts(pub Vec<RegionCount>);

impl fmt::Display for RegionCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| format!("{}={}", r.region, r.nodes))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Parses `ams=3,ord=3,nrt=2`.
pub fn parse_regions(text: &str) -> Result<RegionCounts, String> {
    let mut out: Vec<RegionCount> = Vec::new();
    for part in text.split(',').map(str::trim) {
        let Some((region, count)) = part.split_once('=') else {
            return Err(format!(
                "{part:?} is not REGION=N: give each region with its node count, e.g. ams=3,ord=3,nrt=2"
            ));
        };
        let region = region.trim();
        check_region(region)?;
        let nodes = count
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=NODES_MAX).contains(n))
            .ok_or_else(|| {
                format!("region {region}: {count:?} nodes: give a node count from 1 to {NODES_MAX}")
            })?;
        if out.iter().any(|r| r.region == region) {
            return Err(format!(
                "region {region} is given twice: name each region once with its node count"
            ));
        }
        out.push(RegionCount {
            region: region.to_owned(),
            nodes,
        });
    }
    Ok(RegionCounts(out))
}

/// One node to run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodePlan {
    name: String,
    region: String,
    /// 1-based within its region.
    index: u32,
    global: bool,
}

/// Every node, region by region. The first node of each region is a global
/// member (the relay needs one); a region of 3 or more gets a second, so
/// killing its leader shows another take over.
fn plan(regions: &RegionCounts) -> Vec<NodePlan> {
    let mut out = Vec::new();
    for r in &regions.0 {
        for index in 1..=r.nodes {
            out.push(NodePlan {
                name: format!("{}-{index}", r.region),
                region: r.region.clone(),
                index,
                global: index == 1 || (index == 2 && r.nodes >= 3),
            });
        }
    }
    out
}

/// Runs the cluster until SIGINT or SIGTERM (exit 0) or until an agent
/// exits on its own (an error naming it).
pub fn run(regions: RegionCounts, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = prepare_dir(dir, &regions)?;
    let exe = std::env::current_exe().context("cannot find this program's own path")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Current-thread on purpose: the agents' parent-death signal is tied to
    // the thread that spawned them, which must live as long as the cluster.
    runtime.block_on(run_cluster(exe, dir, plan(&regions), regions))
}

/// Creates or checks the data folder and writes the schema files; returns
/// it absolute (the agents' configs must not depend on their cwd).
fn prepare_dir(dir: Option<PathBuf>, regions: &RegionCounts) -> anyhow::Result<PathBuf> {
    let dir = match dir {
        Some(dir) => {
            check_or_create(&dir, regions)?;
            dir
        }
        None => new_temp_dir()?,
    };
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    if dir.to_str().is_none() {
        bail!(
            "{} is not valid UTF-8, which the agents' TOML configs cannot name; give --dir a UTF-8 path",
            dir.display()
        );
    }
    fs::write(
        dir.join(MARKER),
        format!(
            "# This folder holds a `patina devcluster`; `patina devcluster --dir {} --regions {regions}` restarts it.\nregions = \"{regions}\"\n",
            dir.display()
        ),
    )
    .with_context(|| format!("cannot write {}", dir.join(MARKER).display()))?;
    // Kept when present: a developer may have added tables to try them
    // (additive changes load; anything else the agents refuse, naming it).
    for (sub, file, text) in [
        ("schema", "demo-schema.sql", REGIONAL_SCHEMA),
        ("global-schema", "demo-global-schema.sql", GLOBAL_SCHEMA),
    ] {
        let path = dir.join(sub).join(file);
        fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        if !path.exists() {
            fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(dir)
}

/// A given `--dir`: new, empty, or a previous devcluster of the same
/// regions (restarted with its data).
fn check_or_create(dir: &Path, regions: &RegionCounts) -> anyhow::Result<()> {
    if !dir.exists() {
        return fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()));
    }
    if !dir.is_dir() {
        bail!(
            "{} is not a folder: give --dir a folder (new, empty, or a previous devcluster's)",
            dir.display()
        );
    }
    let marker = dir.join(MARKER);
    if !marker.exists() {
        let empty = fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_none();
        if empty {
            return Ok(());
        }
        bail!(
            "{} is not empty and holds no devcluster (no {MARKER}): give a new or empty folder, or leave --dir out for a new temporary one",
            dir.display()
        );
    }
    let text =
        fs::read_to_string(&marker).with_context(|| format!("cannot read {}", marker.display()))?;
    let previous = text
        .lines()
        .find_map(|l| l.strip_prefix("regions = \"")?.strip_suffix('"'))
        .with_context(|| {
            format!(
                "{} names no regions; remove it to reuse the folder",
                marker.display()
            )
        })?;
    let previous = parse_regions(previous)
        .map_err(|e| anyhow::anyhow!("{}: {e}; remove it to reuse the folder", marker.display()))?;
    let set = |r: &RegionCounts| -> BTreeSet<(String, u32)> {
        r.0.iter().map(|r| (r.region.clone(), r.nodes)).collect()
    };
    if set(&previous) != set(regions) {
        bail!(
            "{} holds a devcluster of --regions {previous}, not {regions}: restart it with --regions {previous}, or give another --dir",
            dir.display()
        );
    }
    Ok(())
}

/// A new folder under the system's temp dir, kept after the cluster stops.
fn new_temp_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir();
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    for attempt in 0..100u32 {
        let dir = base.join(format!(
            "patina-devcluster-{stamp}-{}-{attempt}",
            std::process::id()
        ));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot create {}; give a folder with --dir", dir.display())
                })
            }
        }
    }
    bail!(
        "cannot find a free folder name under {}; give a folder with --dir",
        base.display()
    )
}

/// Who a started agent is and where it listens, read from its log.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Addrs {
    /// Its actor id, as `patina regions` and `patina members` name it.
    actor: String,
    api: SocketAddr,
    gossip: SocketAddr,
    global_gossip: Option<SocketAddr>,
}

struct Agent {
    plan: NodePlan,
    child: Child,
    pid: u32,
    log: PathBuf,
    /// The log's length at spawn: a reused folder's log holds the previous
    /// run's addresses before it.
    log_offset: u64,
    addrs: Option<Addrs>,
}

async fn run_cluster(
    exe: PathBuf,
    dir: PathBuf,
    plan: Vec<NodePlan>,
    regions: RegionCounts,
) -> anyhow::Result<()> {
    // Before the first agent: a Ctrl-C during the start still stops them.
    let mut signals = Signals::install()?;
    eprintln!(
        "starting {} agents of {} region(s) in {} …",
        plan.len(),
        regions.0.len(),
        dir.display()
    );
    let mut agents: Vec<Agent> = Vec::new();
    let started = tokio::select! {
        started = start_all(&exe, &dir, &plan, &mut agents) => Some(started),
        _ = signals.recv() => None,
    };
    match started {
        None => {
            eprintln!("stopping: interrupted while starting");
            stop_all(&mut agents).await;
            return Ok(());
        }
        Some(Err(e)) => {
            stop_all(&mut agents).await;
            return Err(e);
        }
        Some(Ok(())) => {}
    }
    // Started in waves; shown region by region.
    agents.sort_by_key(|a| plan.iter().position(|n| n.name == a.plan.name));
    print_table(&exe, &dir, &regions, &agents);

    let died = {
        let waits = agents.iter_mut().map(|a| Box::pin(a.child.wait()));
        tokio::select! {
            (status, i, _) = futures_util::future::select_all(waits) => Some((i, status)),
            _ = signals.recv() => None,
        }
    };
    match died {
        None => {
            eprintln!("stopping {} agents …", agents.len());
            stop_all(&mut agents).await;
            eprintln!("stopped; the data stays in {}", dir.display());
            Ok(())
        }
        Some((i, status)) => {
            let agent = &agents[i];
            let why = match status {
                Ok(status) => describe(status),
                Err(e) => format!("could not be waited for ({e})"),
            };
            eprintln!(
                "agent {} (pid {}) exited unexpectedly: {why}; its log ends:\n{}\nstopping the other agents …",
                agent.plan.name,
                agent.pid,
                log_tail(&agent.log)
            );
            let name = agent.plan.name.clone();
            stop_all(&mut agents).await;
            bail!(
                "agent {name} exited unexpectedly ({why}), so the devcluster stopped the others; \
                 the data and logs stay in {dir}; `patina devcluster --dir {dir} --regions {regions}` \
                 restarts it",
                dir = dir.display()
            )
        }
    }
}

struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Starts the nodes in the order their bootstrap addresses allow: the first
/// region's first node (everyone's global seed), then the other regions'
/// first nodes, then everyone else, each wave at once.
async fn start_all(
    exe: &Path,
    dir: &Path,
    plan: &[NodePlan],
    agents: &mut Vec<Agent>,
) -> anyhow::Result<()> {
    let (seed, rest) = plan.split_first().context("no nodes to start")?;
    let (firsts, others): (Vec<&NodePlan>, Vec<&NodePlan>) =
        rest.iter().partition(|n| n.index == 1);
    for wave in [vec![seed], firsts, others] {
        let begin = agents.len();
        for node in wave {
            let config = write_config(dir, node, agents)?;
            agents.push(spawn(exe, dir, node, &config)?);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        for agent in &mut agents[begin..] {
            let addrs = wait_ready(agent, deadline).await?;
            agent.addrs = Some(addrs);
        }
    }
    Ok(())
}

/// A TOML basic string.
fn toml_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_list(addrs: &[SocketAddr]) -> String {
    let items: Vec<String> = addrs.iter().map(|a| toml_str(&a.to_string())).collect();
    format!("[{}]", items.join(", "))
}

/// Writes the node's config: everything on 127.0.0.1 port 0 (the agent
/// logs what it bound), bootstrapped at the nodes already running.
fn write_config(dir: &Path, node: &NodePlan, running: &[Agent]) -> anyhow::Result<PathBuf> {
    let addrs_of = |pick: &dyn Fn(&Agent) -> bool| -> Option<Addrs> {
        running
            .iter()
            .find(|a| pick(a))
            .and_then(|a| a.addrs.clone())
    };
    // The region's first node, unless this is it.
    let bootstrap: Vec<SocketAddr> =
        addrs_of(&|a| a.plan.region == node.region && a.plan.index == 1)
            .map(|a| a.gossip)
            .into_iter()
            .collect();
    // The first global member of all (the first region's first node).
    let global_bootstrap: Vec<SocketAddr> = addrs_of(&|a| a.plan.global)
        .and_then(|a| a.global_gossip)
        .into_iter()
        .collect();
    let node_dir = dir.join(&node.name);
    fs::create_dir_all(&node_dir)
        .with_context(|| format!("cannot create {}", node_dir.display()))?;
    let path_str = |p: PathBuf| toml_str(&p.to_string_lossy());
    let mut text = format!(
        "# Written by `patina devcluster` at each start (the addresses change): edits are lost.
[node]
region = {region}
global = {global}
data_dir = {data}

[db]
schema_paths = [{schema}]
global_schema_paths = [{global_schema}]

# One machine, no certificates: dev clusters only.
[gossip]
addr = \"127.0.0.1:0\"
bootstrap = {bootstrap}
insecure = true

[api]
addr = \"127.0.0.1:0\"
",
        region = toml_str(&node.region),
        global = node.global,
        data = path_str(node_dir.join("data")),
        schema = path_str(dir.join("schema")),
        global_schema = path_str(dir.join("global-schema")),
        bootstrap = toml_list(&bootstrap),
    );
    if node.global {
        text.push_str(&format!(
            "\n[global_gossip]\naddr = \"127.0.0.1:0\"\nbootstrap = {}\ninsecure = true\n",
            toml_list(&global_bootstrap)
        ));
    }
    text.push('\n');
    text.push_str(ROLLUP);
    let path = node_dir.join("patina.toml");
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn spawn(exe: &Path, dir: &Path, node: &NodePlan, config: &Path) -> anyhow::Result<Agent> {
    let log_path = dir.join(&node.name).join("agent.log");
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let stdout = log
        .try_clone()
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut command = Command::new(exe);
    command
        .arg("agent")
        .arg("-c")
        .arg(config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(log)
        // Ctrl-C in the terminal reaches the whole foreground process
        // group; the agents are stopped by us instead, in order, so that
        // an agent stopping on its own is always news.
        .process_group(0)
        // Backstop for a panic or an early error return.
        .kill_on_drop(true)
        .env_remove("NOTIFY_SOCKET");
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info");
    }
    // The developer's own PATINA_* overrides would apply to every agent
    // alike (one api.addr for all of them).
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PATINA_") {
            command.env_remove(key);
        }
    }
    die_with_parent(&mut command);
    let offset = fs::metadata(&log_path).map_or(0, |m| m.len());
    let child = command.spawn().with_context(|| {
        format!(
            "cannot start {} agent -c {}",
            exe.display(),
            config.display()
        )
    })?;
    let pid = child.id().context("the agent exited at once")?;
    Ok(Agent {
        plan: node.clone(),
        child,
        pid,
        log: log_path,
        log_offset: offset,
        addrs: None,
    })
}

/// SIGTERM to the agent if the devcluster dies without stopping it (kill -9):
/// agents in their own process group would otherwise run on unseen.
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    // SAFETY: between fork and exec only async-signal-safe calls (prctl,
    // getppid) run, touching no memory of the parent.
    let parent = std::process::id();
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("the devcluster exited"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

/// Waits for the agent's "API listening" line (the regional and global
/// gossip lines come before it).
async fn wait_ready(agent: &mut Agent, deadline: Instant) -> anyhow::Result<Addrs> {
    let mut file = fs::File::open(&agent.log)
        .with_context(|| format!("cannot read {}", agent.log.display()))?;
    file.seek(SeekFrom::Start(agent.log_offset))?;
    let mut scan = LogScan::default();
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", agent.log.display()))?;
        if let Some(addrs) = scan.feed(&bytes) {
            if agent.plan.global && addrs.global_gossip.is_none() {
                bail!(
                    "agent {} is a global member but logged no \"global gossip listening\" line; see {}",
                    agent.plan.name,
                    agent.log.display()
                );
            }
            return Ok(addrs);
        }
        if let Some(status) = agent.child.try_wait()? {
            bail!(
                "agent {} exited while starting: {}; its log ends:\n{}",
                agent.plan.name,
                describe(status),
                log_tail(&agent.log)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "agent {} did not log \"API listening\" within {} s (a RUST_LOG that hides info lines hides it too); its log ends:\n{}",
                agent.plan.name,
                START_TIMEOUT.as_secs(),
                log_tail(&agent.log)
            );
        }
        tokio::time::sleep(LOG_POLL).await;
    }
}

/// The agent's start-up lines, read as they are appended.
#[derive(Default)]
struct LogScan {
    partial: Vec<u8>,
    actor: Option<String>,
    gossip: Option<SocketAddr>,
    global_gossip: Option<SocketAddr>,
}

impl LogScan {
    /// Feeds newly appended bytes; the addresses once "API listening" is seen.
    fn feed(&mut self, bytes: &[u8]) -> Option<Addrs> {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(actor) = field(&line, "node started", "actor") {
                self.actor = Some(actor.to_owned());
            } else if let Some(addr) = addr_field(&line, "global gossip listening") {
                self.global_gossip = Some(addr);
            } else if let Some(addr) = addr_field(&line, "gossip listening") {
                self.gossip = Some(addr);
            } else if let Some(api) = addr_field(&line, "API listening") {
                return Some(Addrs {
                    actor: self.actor.clone()?,
                    api,
                    gossip: self.gossip?,
                    global_gossip: self.global_gossip,
                });
            }
        }
        None
    }
}

/// Field `name` of a `… <message> … name=value …` log line.
fn field<'a>(line: &'a str, message: &str, name: &str) -> Option<&'a str> {
    let rest = line.split(message).nth(1)?;
    rest.split(&format!(" {name}="))
        .nth(1)?
        .split_whitespace()
        .next()
}

fn addr_field(line: &str, message: &str) -> Option<SocketAddr> {
    field(line, message, "addr")?.parse().ok()
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// The last lines of a log, indented, for an error message.
fn log_tail(path: &Path) -> String {
    let text = match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("    (cannot read {}: {e})", path.display()),
    };
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(8)..];
    let mut out: Vec<String> = tail.iter().map(|l| format!("    {l}")).collect();
    out.push(format!("    (whole log: {})", path.display()));
    out.join("\n")
}

/// SIGTERM to every agent still running, then waits; one still running
/// after [`STOP_TIMEOUT`] gets SIGKILL.
async fn stop_all(agents: &mut [Agent]) {
    let mut running = Vec::new();
    for agent in agents.iter_mut() {
        if matches!(agent.child.try_wait(), Ok(None)) {
            // SAFETY: plain syscall. The pid is still our unreaped child
            // (try_wait just said it runs), so it names no other process.
            // SIGCONT: an agent paused with SIGSTOP (to try leader
            // failover) would handle its SIGTERM only once resumed.
            unsafe {
                libc::kill(agent.pid as libc::pid_t, libc::SIGTERM);
                libc::kill(agent.pid as libc::pid_t, libc::SIGCONT);
            }
            running.push(agent);
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for agent in running {
        match tokio::time::timeout_at(deadline, agent.child.wait()).await {
            Ok(Ok(status)) if !status.success() => eprintln!(
                "agent {} stopped with {} (see {})",
                agent.plan.name,
                describe(status),
                agent.log.display()
            ),
            Ok(_) => {}
            Err(_) => {
                eprintln!(
                    "agent {} did not stop within {} s of SIGTERM; killing it",
                    agent.plan.name,
                    STOP_TIMEOUT.as_secs()
                );
                let _ = agent.child.kill().await;
            }
        }
    }
}

fn print_table(exe: &Path, dir: &Path, regions: &RegionCounts, agents: &[Agent]) {
    let header = [
        "node", "region", "global", "pid", "actor", "api", "query it",
    ];
    let rows: Vec<[String; 7]> = agents
        .iter()
        .map(|a| {
            let api = a
                .addrs
                .as_ref()
                .map_or(String::new(), |x| x.api.to_string());
            // Enough to tell which node `patina regions` names leader.
            let actor: String = a
                .addrs
                .as_ref()
                .map_or(String::new(), |x| x.actor.chars().take(8).collect());
            [
                a.plan.name.clone(),
                a.plan.region.clone(),
                if a.plan.global { "yes" } else { "no" }.to_owned(),
                a.pid.to_string(),
                format!("{actor}…"),
                api.clone(),
                format!("patina query --api {api} \"SELECT * FROM machines\""),
            ]
        })
        .collect();
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |cells: &[&str]| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    println!(
        "patina devcluster: {} nodes of {} region(s) running; data in {}",
        agents.len(),
        regions.0.len(),
        dir.display()
    );
    println!();
    println!("{}", line(&header));
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        println!("{}", line(&cells));
    }
    let api_of = |a: Option<&Agent>| {
        a.and_then(|a| a.addrs.as_ref())
            .map_or(String::new(), |x| x.api.to_string())
    };
    let first = agents.first();
    // Another region's node, to show the rollup crossing; with one region,
    // another node of it.
    let elsewhere = agents
        .iter()
        .find(|a| first.is_some_and(|f| a.plan.region != f.plan.region))
        .or(agents.last());
    let (first, elsewhere) = (api_of(first), api_of(elsewhere));
    println!();
    println!("Try (`patina` is {}):", exe.display());
    println!(
        "  patina exec --api {first} \"INSERT INTO machines (id, app, state) VALUES ('m1', 'web', 'started')\""
    );
    println!("  patina query --api {elsewhere} \"SELECT * FROM app_regions\"");
    println!("  patina regions --api {elsewhere}");
    println!(
        "Logs: {}/<node>/agent.log. Restart with the same data: patina devcluster --dir {} --regions {regions}",
        dir.display(),
        dir.display()
    );
    println!("Ctrl-C stops every agent.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_parse_and_say_what_is_wrong() {
        let r = parse_regions("ams=3,ord=3,nrt=2").unwrap();
        assert_eq!(r.to_string(), "ams=3,ord=3,nrt=2");
        assert_eq!(
            r.0[2],
            RegionCount {
                region: "nrt".into(),
                nodes: 2
            }
        );
        for (bad, why) in [
            ("ams", "is not REGION=N"),
            ("ams=0", "from 1 to 16"),
            ("ams=17", "from 1 to 16"),
            ("ams=x", "from 1 to 16"),
            ("AMS=1", "invalid region"),
            ("global=1", "the global cluster's name"),
            ("ams=1,ams=2", "given twice"),
            ("", "is not REGION=N"),
        ] {
            let err = parse_regions(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn first_node_of_each_region_and_a_second_of_big_ones_are_global() {
        let nodes = plan(&parse_regions("ams=3,ord=2,nrt=1").unwrap());
        let globals: Vec<&str> = nodes
            .iter()
            .filter(|n| n.global)
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(globals, ["ams-1", "ams-2", "ord-1", "nrt-1"]);
        assert_eq!(nodes.len(), 6);
    }

    #[test]
    fn the_log_gives_the_addresses() {
        let mut scan = LogScan::default();
        let log = "2025-01-01T00:00:00Z  INFO patina::agent_cmd: node started actor=515efebd12bc4bdca3827a19ef6d9bc2 region=\"ams\" data_dir=/tmp/x\n\
                   2025-01-01T00:00:00Z  INFO patina::agent_cmd: gossip listening addr=127.0.0.1:4001 cluster=ams\n\
                   2025-01-01T00:00:00Z  INFO patina::agent_cmd: global gossip listening addr=127.0.0.1:4002 cluster=global\n\
                   2025-01-01T00:00:00Z  INFO patina::agent_cmd: API listening addr=127.0.0.1:";
        assert_eq!(
            scan.feed(log.as_bytes()),
            None,
            "a partial line is not read"
        );
        let addrs = scan.feed(b"4003\n").unwrap();
        assert_eq!(addrs.api, "127.0.0.1:4003".parse().unwrap());
        assert_eq!(addrs.actor, "515efebd12bc4bdca3827a19ef6d9bc2");
        assert_eq!(addrs.gossip, "127.0.0.1:4001".parse().unwrap());
        assert_eq!(addrs.global_gossip, Some("127.0.0.1:4002".parse().unwrap()));
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(toml_str("a\nb"), r#""a\u000Ab""#);
    }
}
