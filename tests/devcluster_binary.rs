//! `patina devcluster` through the real binary: it starts agents of two
//! regions, the `app_regions` rollup crosses regions while machines stay
//! home, the edge_router example follows the routing as it changes, a
//! restart on the same folder keeps the data, and SIGINT / SIGTERM stop it
//! with exit 0 and no agent left running.

mod support;

#[path = "../examples/edge_router/routing.rs"]
mod routing;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use patina_client::{Client, Statement};
use serde_json::Value as Json;
use support::{runtime, BIN};

/// A row of the devcluster's node table.
#[derive(Debug, Clone)]
struct Node {
    name: String,
    pid: u32,
    api: String,
}

struct Devcluster {
    child: Child,
    dir: std::path::PathBuf,
    nodes: Vec<Node>,
}

impl Devcluster {
    /// Runs `patina devcluster --regions REGIONS --dir DIR` and waits for
    /// its node table.
    fn start(regions: &str, dir: &Path) -> Devcluster {
        let mut child = Command::new(BIN)
            .args(["devcluster", "--regions", regions, "--dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[devcluster] {line}");
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut nodes = Vec::new();
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => {
                    let _ = child.kill();
                    panic!("no node table from the devcluster ({e:?}); its output: {seen:#?}")
                }
            };
            if line.starts_with("Ctrl-C stops") {
                break;
            }
            // node, region, global, pid, actor, api, query command
            let cells: Vec<&str> = line.split_whitespace().collect();
            if cells.len() >= 6 && cells[5].parse::<SocketAddr>().is_ok() {
                nodes.push(Node {
                    name: cells[0].to_owned(),
                    pid: cells[3].parse().unwrap(),
                    api: cells[5].to_owned(),
                });
            }
            seen.push(line);
        }
        Devcluster {
            child,
            dir: dir.canonicalize().unwrap(),
            nodes,
        }
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in {:?}", self.nodes))
    }

    fn client(&self, name: &str) -> Client {
        Client::new(&self.node(name).api).unwrap()
    }

    /// Sends `signal`, waits for the devcluster to exit, and checks that
    /// none of its agents outlived it.
    fn stop(mut self, signal: libc::c_int) -> ExitStatus {
        // The check below would pass vacuously if it could not see them.
        for node in &self.nodes {
            assert!(is_agent_of(node.pid, &self.dir), "{node:?} is not running");
        }
        // SAFETY: a plain syscall to our own unreaped child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the devcluster did not stop");
            std::thread::sleep(Duration::from_millis(20));
        };
        for node in &self.nodes {
            assert!(
                !is_agent_of(node.pid, &self.dir),
                "agent {} (pid {}) outlived the devcluster",
                node.name,
                node.pid
            );
        }
        status
    }
}

impl Drop for Devcluster {
    fn drop(&mut self) {
        // A failed test: SIGKILL, and the agents follow by their
        // parent-death signal.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `pid` is still an agent run on a config under `dir` (a pid
/// reused by another process is not; a zombie's command line is empty).
fn is_agent_of(pid: u32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy())
}

async fn rows(client: &Client, sql: &str) -> Vec<Vec<Json>> {
    let mut stream = client.query(&Statement::from(sql)).await.unwrap();
    let mut out = Vec::new();
    while let Some(row) = stream.next().await.unwrap() {
        out.push(row);
    }
    out
}

async fn wait_rows(client: &Client, sql: &str, want: &[Vec<Json>]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = rows(client, sql).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sql}: {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the edge router printed: its two views print independently, so a
/// line is looked for among all lines so far.
struct Printed {
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Printed {
    /// Waits (bounded) until the edge router has printed `want`.
    async fn wait(&mut self, want: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.seen.iter().any(|l| l == want) {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => self.seen.push(line),
                Ok(None) => panic!("the edge router stopped; it printed {:#?}", self.seen),
                Err(_) => panic!(
                    "the edge router never printed {want:?}; it printed {:#?}",
                    self.seen
                ),
            }
        }
    }
}

const APP_REGIONS: &str =
    "SELECT app, region, machines, started FROM app_regions ORDER BY app, region";

#[test]
fn devcluster_rollups_cross_regions_and_the_edge_router_follows() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Devcluster::start("ams=2,ord=1", dir.path());
    let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["ams-1", "ams-2", "ord-1"]);
    runtime().block_on(async {
        // An edge proxy on a plain ams node, following app web.
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let mut printed = Printed {
            lines,
            seen: Vec::new(),
        };
        let edge = cluster.client("ams-2");
        let router = tokio::spawn(async move {
            let out = move |line: String| {
                let _ = tx.send(line);
            };
            routing::follow(&edge, "web", &out).await
        });
        printed.wait("app web: regions now none").await;
        printed.wait("local machines of web: none").await;

        let ams = cluster.client("ams-1");
        ams.transact(&[Statement::from(
            "INSERT INTO machines (id, app, state) VALUES ('m1', 'web', 'started'), ('m2', 'web', 'stopped'), ('m3', 'api', 'started')",
        )])
        .await
        .unwrap();
        // The rollup reached ord; the machines did not.
        let ord = cluster.client("ord-1");
        wait_rows(
            &ord,
            APP_REGIONS,
            &[
                vec!["api".into(), "ams".into(), 1.into(), 1.into()],
                vec!["web".into(), "ams".into(), 2.into(), 1.into()],
            ],
        )
        .await;
        assert_eq!(
            rows(&ord, "SELECT count(*) FROM machines").await,
            [vec![Json::from(0)]]
        );
        printed.wait("app web: regions now ams(1 started)").await;
        printed
            .wait("local machines of web: m1 started, m2 stopped")
            .await;

        // ord starts a web machine: the ams edge router now routes there too.
        ord.transact(&[Statement::from(
            "INSERT INTO machines (id, app, state) VALUES ('o1', 'web', 'started')",
        )])
        .await
        .unwrap();
        printed
            .wait(
            "app web: regions now ams(1 started), ord(1 started)",
        )
        .await;
        router.abort();
    });
    let status = cluster.stop(libc::SIGINT);
    assert!(status.success(), "SIGINT: {status:?}");

    // The same folder again: the data is still there.
    let cluster = Devcluster::start("ams=2,ord=1", dir.path());
    runtime().block_on(async {
        let ord = cluster.client("ord-1");
        assert_eq!(
            rows(&ord, APP_REGIONS).await,
            [
                vec![Json::from("api"), "ams".into(), 1.into(), 1.into()],
                vec![Json::from("web"), "ams".into(), 2.into(), 1.into()],
                vec![Json::from("web"), "ord".into(), 1.into(), 1.into()],
            ]
        );
        assert_eq!(
            rows(
                &cluster.client("ams-2"),
                "SELECT id FROM machines ORDER BY id"
            )
            .await,
            [vec![Json::from("m1")], vec!["m2".into()], vec!["m3".into()]]
        );
    });
    let status = cluster.stop(libc::SIGTERM);
    assert!(status.success(), "SIGTERM: {status:?}");
}

#[test]
fn bad_arguments_and_foreign_folders_are_refused_naming_the_problem() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("devcluster")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--regions", "ams=3,global=1"]);
    assert!(err.contains("global cluster's name"), "{err}");
    let err = run(&["--regions", "ams=17"]);
    assert!(err.contains("from 1 to 16"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let err = run(&["--regions", "ams=1", "--dir", dir.path().to_str().unwrap()]);
    assert!(err.contains("not empty and holds no devcluster"), "{err}");
    let previous = tempfile::tempdir().unwrap();
    std::fs::write(
        previous.path().join("devcluster.toml"),
        "regions = \"ams=2,ord=1\"\n",
    )
    .unwrap();
    let err = run(&[
        "--regions",
        "ams=3",
        "--dir",
        previous.path().to_str().unwrap(),
    ]);
    assert!(
        err.contains("holds a devcluster of --regions ams=2,ord=1"),
        "{err}"
    );
}
