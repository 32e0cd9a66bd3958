//! Starting the real `patina agent` and learning its API address: shared by
//! the tests (`tests/support`) and the benches (`benches/support`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Spawns `bin agent -c config` and waits (at most 30 s) for its
/// "API listening addr=…" log line. The stderr reader keeps draining the
/// pipe for the agent's lifetime.
pub fn spawn_agent(bin: &str, config: &Path) -> (Child, String) {
    let (child, addrs) = spawn_agent_with_addrs(bin, config);
    (child, addrs.api)
}

/// Where a started agent listens.
#[derive(Debug, Clone)]
pub struct AgentAddrs {
    pub api: String,
    /// The regional cluster's gossip address (what peers bootstrap to).
    pub gossip: String,
    /// The global cluster's gossip address, on a global member.
    pub global_gossip: Option<String>,
    /// The agent's log lines up to "API listening" (its start-up warnings).
    pub startup_log: Vec<String>,
}

/// `PATINA_TEST_AGENT_LOG=1` (or a `RUST_LOG` filter such as
/// `info,patina_membership=debug`) copies the agents' logs, at that level,
/// into the test's output.
fn log_filter() -> Option<String> {
    match std::env::var("PATINA_TEST_AGENT_LOG").ok()?.as_str() {
        "" | "0" => None,
        "1" => Some("info".into()),
        filter => Some(filter.into()),
    }
}

fn addr_after(line: &str, marker: &str) -> Option<String> {
    let rest = line.split(marker).nth(1)?;
    let addr = rest.split("addr=").nth(1)?.split_whitespace().next()?;
    Some(addr.to_owned())
}

/// Like [`spawn_agent`], also reading the "gossip listening addr=…" line.
pub fn spawn_agent_with_addrs(bin: &str, config: &Path) -> (Child, AgentAddrs) {
    spawn_agent_command(Command::new(bin), config)
}

/// Like [`spawn_agent_with_addrs`] with the command that runs the binary
/// given (`ip netns exec NS patina`: the arguments `agent -c CONFIG` are
/// appended). The command must exec the agent, so that the child is the
/// agent itself and a kill reaches it.
pub fn spawn_agent_command(mut command: Command, config: &Path) -> (Child, AgentAddrs) {
    let mut child = command
        .args(["agent", "-c"])
        .arg(config)
        .env("RUST_LOG", log_filter().unwrap_or("info".into()))
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn patina agent");
    let stderr = child.stderr.take().expect("piped stderr");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut gossip = String::new();
        let mut global_gossip = None;
        let mut startup_log = Vec::new();
        let echo = log_filter().is_some();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if echo {
                eprintln!("[agent {pid}] {line}");
            }
            if startup_log.len() < 1000 {
                startup_log.push(line.clone());
            }
            if let Some(addr) = addr_after(&line, "global gossip listening") {
                global_gossip = Some(addr);
            } else if let Some(addr) = addr_after(&line, "gossip listening") {
                gossip = addr;
            } else if let Some(api) = addr_after(&line, "API listening") {
                let _ = tx.send(Ok(AgentAddrs {
                    api,
                    gossip: gossip.clone(),
                    global_gossip: global_gossip.clone(),
                    startup_log: std::mem::take(&mut startup_log),
                }));
            } else if line.contains("ERROR") || line.starts_with("error:") {
                let _ = tx.send(Err(line));
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(addrs)) => (child, addrs),
        Ok(Err(line)) => {
            let _ = child.kill();
            panic!("agent failed to start: {line}")
        }
        Err(_) => {
            let _ = child.kill();
            panic!("agent did not report its API address within 30 s")
        }
    }
}
