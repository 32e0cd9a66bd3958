//! The real binary in tests: start `patina agent` on a config in a temp
//! dir, wait for its "API listening" line, SIGKILL it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Child;

use patina_client::Client;

#[path = "netlab.rs"]
pub mod netlab;
#[path = "spawn.rs"]
mod spawn;

pub const BIN: &str = env!("CARGO_BIN_EXE_patina");
pub const SCHEMA: &str =
    "CREATE TABLE machines(id TEXT PRIMARY KEY NOT NULL, app TEXT, n INTEGER);";

pub struct Agent {
    pub child: Child,
    pub addr: String,
    /// Its regional gossip address.
    pub gossip: String,
    /// Its global gossip address, on a global member.
    pub global_gossip: Option<String>,
    /// Its log up to "API listening".
    pub startup_log: Vec<String>,
}

impl Agent {
    /// Starts the agent and waits (bounded) for its "API listening" log line.
    pub fn start(config: &Path) -> Agent {
        let (child, addrs) = spawn::spawn_agent_with_addrs(BIN, config);
        Agent {
            child,
            addr: addrs.api,
            gossip: addrs.gossip,
            global_gossip: addrs.global_gossip,
            startup_log: addrs.startup_log,
        }
    }

    /// Starts the agent inside network namespace `netns` (`ip netns exec`,
    /// which execs the binary: the child is the agent) and waits for its
    /// "API listening" line.
    pub fn start_in(netns: &str, config: &Path) -> Agent {
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", netns, BIN]);
        let (child, addrs) = spawn::spawn_agent_command(command, config);
        Agent {
            child,
            addr: addrs.api,
            gossip: addrs.gossip,
            global_gossip: addrs.global_gossip,
            startup_log: addrs.startup_log,
        }
    }

    /// Runs `patina ARGS --api <this agent>`: (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new(BIN)
            .args(args)
            .args(["--api", &self.addr])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn client(&self) -> Client {
        Client::new(&self.addr).unwrap()
    }

    /// `GET path` on the agent's API: the body.
    pub fn get(&self, path: &str) -> String {
        runtime()
            .block_on(async {
                reqwest::get(format!("http://{}{path}", self.addr))
                    .await?
                    .text()
                    .await
            })
            .unwrap()
    }

    /// The value of the first `/metrics` sample line starting with
    /// `prefix` (a name, with labels if given).
    pub fn metric(&self, prefix: &str) -> u64 {
        let text = self.get("/metrics");
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
            .map(|n| n as u64)
            .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn setup(dir: &Path) -> PathBuf {
    setup_on(dir, "127.0.0.1:0")
}

/// As [`setup`], for a node of region `test` that joins through
/// `bootstrap` (gossip addresses).
pub fn setup_peer(dir: &Path, bootstrap: &[&str]) -> PathBuf {
    let config = setup(dir);
    let list: Vec<String> = bootstrap.iter().map(|b| format!("{b:?}")).collect();
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        "[gossip]\naddr = \"127.0.0.1:0\"\ninsecure = true\n",
        &format!(
            "[gossip]\naddr = \"127.0.0.1:0\"\ninsecure = true\nbootstrap = [{}]\n",
            list.join(", ")
        ),
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// As [`setup`] for a node of region `test` with its API on `api`, its
/// gossip bound on `gossip`, joining through `bootstrap`.
pub fn setup_node(dir: &Path, api: &str, gossip: &str, bootstrap: &[String]) -> PathBuf {
    let config = setup_on(dir, api);
    let list: Vec<String> = bootstrap.iter().map(|b| format!("{b:?}")).collect();
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        "[gossip]\naddr = \"127.0.0.1:0\"\ninsecure = true\n",
        &format!(
            "[gossip]\naddr = {gossip:?}\ninsecure = true\nbootstrap = [{}]\n",
            list.join(", ")
        ),
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// The agents of these tests share one host and carry no certificates, so
/// their gossip runs with `insecure = true` (tests/tls_binary.rs runs them
/// with mutual TLS).
///
/// As [`setup`], with the API on `api_addr`: a test restarting an agent
/// whose clients must find it again rewrites the config with the address
/// the first start bound (port 0 first: no guessed free port).
pub fn setup_on(dir: &Path, api_addr: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("schema")).unwrap();
    std::fs::write(dir.join("schema/machines.sql"), SCHEMA).unwrap();
    let config = dir.join("patina.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nregion = \"test\"\ndata_dir = {:?}\n[db]\nschema_paths = [{:?}]\n[api]\naddr = {:?}\n[gossip]\naddr = \"127.0.0.1:0\"\ninsecure = true\n",
            dir.join("data"),
            dir.join("schema"),
            api_addr,
        ),
    )
    .unwrap();
    config
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The ids of the `machines` rows `client`'s node holds, or `None` when it
/// does not answer.
pub async fn machine_ids(client: &Client) -> Option<std::collections::BTreeSet<String>> {
    let mut rows = client
        .query(&patina_client::Statement::from("SELECT id FROM machines"))
        .await
        .ok()?;
    let mut out = std::collections::BTreeSet::new();
    while let Some(row) = rows.next().await.ok()? {
        out.insert(row[0].as_str()?.to_owned());
    }
    Some(out)
}
