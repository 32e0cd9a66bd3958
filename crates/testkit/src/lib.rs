//! The in-process cluster harness every multi-node test uses: N nodes on
//! 127.0.0.1 port 0 with their own temp dirs, joined through the first
//! node; waiting on conditions with a timeout; comparing table contents by
//! hash; nodes outside the cluster (another cluster name, an untrusted
//! certificate) that try to join it; mutual TLS with a generated CA.

mod fleet;
mod nodes;
pub mod tls;
mod written;

pub use fleet::{
    app_regions_rollup, expected_app_regions, FleetNode, FleetOptions, RegionSpec, TestFleet,
    GLOBAL_SCHEMA,
};
pub use nodes::{node_options, rows, SCHEMA, TABLES};
pub use written::Written;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use patina_membership::{alive, Member};
use patina_node::{DbKind, Node, NodeOptions, Statement, Value};
use patina_replicator::{ClusterOptions, ClusterRuntime, ReplicatorConfig};
use patina_subs::Subscriptions;
use patina_transport::{AsyncUdpSocket, FaultHandle, FaultySocket, TlsFiles};
use patina_wire::{ActorId, ClusterName};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use self::tls::Ca;

#[derive(Clone)]
pub struct Options {
    pub replicator: ReplicatorConfig,
    /// Wrap every node's UDP socket in a `FaultySocket` with this seed.
    pub faults_seed: Option<u64>,
    pub cluster: String,
    /// Mutual TLS: the cluster gets a CA of its own, each node a
    /// certificate it signs (written into the node's temp dir).
    pub tls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            replicator: ReplicatorConfig {
                sync_interval: Duration::from_millis(100),
                seed: 7,
                ..ReplicatorConfig::default()
            },
            faults_seed: None,
            cluster: "ams".into(),
            tls: false,
        }
    }
}

pub struct TestNode {
    pub node: Node,
    pub subs: Subscriptions,
    pub runtime: Option<ClusterRuntime>,
    pub faults: Option<FaultHandle>,
    pub dir: tempfile::TempDir,
}

impl TestNode {
    pub fn runtime(&self) -> &ClusterRuntime {
        self.runtime.as_ref().expect("node is running")
    }

    pub fn addr(&self) -> SocketAddr {
        self.runtime().addr()
    }
}

pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    pub options: Options,
    /// Where nodes join: the first node's address.
    seed_addr: Option<SocketAddr>,
    /// The cluster's CA when `options.tls`.
    pub ca: Option<Ca>,
}

/// How a node is launched: which cluster it thinks it is in, its TLS files.
struct Launch<'a> {
    index: usize,
    cluster: &'a str,
    tls: Option<TlsFiles>,
}

fn cluster_node_options(dir: &Path) -> NodeOptions {
    node_options(dir, SCHEMA, "")
}

impl TestCluster {
    pub async fn start(n: usize, options: Options) -> TestCluster {
        let ca = options.tls.then(|| Ca::new("patina test cluster CA"));
        let mut cluster = TestCluster {
            nodes: Vec::new(),
            options,
            seed_addr: None,
            ca,
        };
        for _ in 0..n {
            cluster.add_node().await;
        }
        cluster.wait_members(Duration::from_secs(30)).await;
        cluster.wait_caught_up(Duration::from_secs(30)).await;
        cluster
    }

    /// Waits until no running node is catching up (each joined through a
    /// peer and starts so: until then its lag samples are catch-up ones).
    pub async fn wait_caught_up(&self, timeout: Duration) {
        for (i, t) in self.nodes.iter().enumerate() {
            let Some(rt) = &t.runtime else { continue };
            let counters = rt.counters();
            let deadline = tokio::time::Instant::now() + timeout;
            while counters.catch_up().catching_up() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "node {i} still catching up after {timeout:?}: {:?}",
                    counters.catch_up()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Starts one more node (joining through the first); returns its index.
    pub async fn add_node(&mut self) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(cluster_node_options(dir.path())).unwrap();
        let subs = Subscriptions::open_for(&node).unwrap();
        let index = self.nodes.len();
        let (runtime, faults) =
            self.launch(&node, dir.path(), self.member_launch(dir.path(), index));
        self.seed_addr.get_or_insert(runtime.addr());
        self.nodes.push(TestNode {
            node,
            subs,
            runtime: Some(runtime),
            faults,
            dir,
        });
        index
    }

    /// How node `index` of the cluster itself is launched.
    fn member_launch(&self, dir: &Path, index: usize) -> Launch<'_> {
        Launch {
            index,
            cluster: &self.options.cluster,
            tls: self
                .ca
                .as_ref()
                .map(|ca| tls::node_tls(dir, "node", &[&self.options.cluster], ca, ca)),
        }
    }

    /// Starts a node that is not part of `nodes` (not waited on, not
    /// compared) and bootstraps at the first node: of cluster `cluster`,
    /// and, when the cluster uses TLS, with a certificate signed by
    /// `signed_by` (trusting the cluster's CA). Stop it with
    /// `runtime.shutdown()`.
    pub fn outsider(&self, cluster: &str, signed_by: Option<&Ca>) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(cluster_node_options(dir.path())).unwrap();
        let subs = Subscriptions::open_for(&node).unwrap();
        let tls = self.ca.as_ref().map(|ca| {
            let signer = signed_by.unwrap_or(ca);
            tls::node_tls(dir.path(), "outsider", &[cluster], signer, ca)
        });
        let launch = Launch {
            index: 1000 + self.nodes.len(),
            cluster,
            tls,
        };
        let (runtime, faults) = self.launch(&node, dir.path(), launch);
        TestNode {
            node,
            subs,
            runtime: Some(runtime),
            faults,
            dir,
        }
    }

    fn launch(
        &self,
        node: &Node,
        dir: &Path,
        launch: Launch<'_>,
    ) -> (ClusterRuntime, Option<FaultHandle>) {
        let Launch {
            index,
            cluster,
            tls,
        } = launch;
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (socket, faults) = match self.options.faults_seed {
            Some(seed) => {
                let (s, h) = FaultySocket::bind(bind, seed ^ index as u64).unwrap();
                (Some(s as Arc<dyn AsyncUdpSocket>), Some(h))
            }
            None => (None, None),
        };
        let runtime = ClusterRuntime::start(
            node.clone(),
            ClusterOptions {
                cluster: ClusterName::new(cluster).unwrap(),
                region: ClusterName::new(cluster).unwrap(),
                global_member: false,
                swim: patina_replicator::SwimProfile::Lan,
                bind,
                external_addr: None,
                bootstrap: self.seed_addr.iter().map(|a| a.to_string()).collect(),
                tls,
                members_file: dir.join(format!("data/members-{cluster}")),
                dbs: &[DbKind::Regional, DbKind::Global],
                replicator: ReplicatorConfig {
                    seed: self.options.replicator.seed ^ index as u64,
                    ..self.options.replicator.clone()
                },
                socket,
            },
        )
        .unwrap();
        (runtime, faults)
    }

    /// Stops node `i` (leaves the cluster; its databases stay on disk).
    pub async fn stop(&mut self, i: usize) {
        if let Some(rt) = self.nodes[i].runtime.take() {
            rt.shutdown().await;
        }
    }

    /// Reopens node `i`'s data dir and rejoins.
    pub async fn restart(&mut self, i: usize) {
        self.stop(i).await;
        // The old node lets go of its data dir's lock once its last handle
        // is gone (tasks of the stopped runtime may still hold one a
        // moment): drop ours, then open again until the lock is free.
        let TestNode {
            node,
            subs,
            runtime,
            faults,
            dir: temp,
        } = self.nodes.remove(i);
        drop((node, subs, runtime, faults));
        let dir = temp.path().to_path_buf();
        let started = std::time::Instant::now();
        let node = loop {
            match Node::open(cluster_node_options(&dir)) {
                Ok(node) => break node,
                Err(patina_node::NodeError::Locked { .. })
                    if started.elapsed() < Duration::from_secs(30) =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("reopening node {i}: {e}"),
            }
        };
        let subs = Subscriptions::open_for(&node).unwrap();
        let (runtime, faults) = self.launch(&node, &dir, self.member_launch(&dir, i));
        self.nodes.insert(
            i,
            TestNode {
                node,
                subs,
                runtime: Some(runtime),
                faults,
                dir: temp,
            },
        );
    }

    fn running(&self) -> impl Iterator<Item = &TestNode> {
        self.nodes.iter().filter(|n| n.runtime.is_some())
    }

    /// Waits until every running node sees every other running node alive.
    pub async fn wait_members(&self, timeout: Duration) {
        let want = self.running().count() - 1;
        for (i, t) in self.nodes.iter().enumerate() {
            let Some(rt) = &t.runtime else { continue };
            let mut rx = rt.members();
            let ok = tokio::time::timeout(
                timeout,
                rx.wait_for(|m: &Vec<Member>| alive(m).count() >= want),
            )
            .await
            .is_ok();
            assert!(
                ok,
                "node {i} sees {} of {want} peers alive",
                alive(&rx.borrow()).count()
            );
        }
    }

    pub async fn exec(&self, i: usize, sql: &str) -> Option<u64> {
        self.nodes[i]
            .node
            .transact(vec![Statement::new(sql)])
            .await
            .unwrap_or_else(|e| panic!("node {i}: {sql}: {e}"))
            .version
    }

    /// A hash of `table`'s rows (ordered) on node `i`, and the row count.
    pub async fn table_hash(&self, i: usize, table: &str) -> (u64, usize) {
        let rows = rows(
            &self.nodes[i].node,
            &format!("SELECT * FROM {table} ORDER BY 1"),
        )
        .await;
        let mut h = DefaultHasher::new();
        for r in &rows {
            format!("{r:?}").hash(&mut h);
        }
        (h.finish(), rows.len())
    }

    async fn hashes(&self) -> Vec<Vec<(u64, usize)>> {
        let mut out = Vec::new();
        for (i, t) in self.nodes.iter().enumerate() {
            if t.runtime.is_none() {
                continue;
            }
            let mut per = Vec::new();
            for table in TABLES {
                per.push(self.table_hash(i, table).await);
            }
            out.push(per);
        }
        out
    }

    /// Waits until every running node holds identical tables and each of
    /// them matches `written` (so a write lost on every node fails too);
    /// returns the row counts.
    pub async fn wait_converged(&self, written: &Written, timeout: Duration) -> Vec<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let hashes = self.hashes().await;
            let mut mismatch = None;
            if hashes.windows(2).all(|w| w[0] == w[1]) {
                mismatch = self.model_mismatch(written).await;
                if mismatch.is_none() {
                    return hashes[0].iter().map(|(_, n)| *n).collect();
                }
            }
            if tokio::time::Instant::now() > deadline {
                let diff = match mismatch {
                    Some(m) => format!("the nodes agree, but not with what was written: {m}"),
                    None => self.first_difference().await,
                };
                panic!("not converged after {timeout:?}: {hashes:?}\n{diff}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How the first running node that differs from `written` differs.
    async fn model_mismatch(&self, written: &Written) -> Option<String> {
        for (i, t) in self.nodes.iter().enumerate() {
            if t.runtime.is_none() {
                continue;
            }
            for table in TABLES {
                let got = rows(&t.node, &format!("SELECT * FROM {table} ORDER BY 1")).await;
                if let Err(e) = written.check(table, &got) {
                    return Some(format!("node {i}: {table}: {e}"));
                }
            }
        }
        None
    }
}

impl TestCluster {
    /// The rows in which the first node that differs from node 0 differs.
    async fn first_difference(&self) -> String {
        for table in TABLES {
            let sql = format!("SELECT * FROM {table} ORDER BY 1");
            let base = rows(&self.nodes[0].node, &sql).await;
            for (i, t) in self.nodes.iter().enumerate().skip(1) {
                let other = rows(&t.node, &sql).await;
                if other != base {
                    let only_0: Vec<_> = base.iter().filter(|r| !other.contains(r)).collect();
                    let only_i: Vec<_> = other.iter().filter(|r| !base.contains(r)).collect();
                    return format!("{table}: node 0 only {only_0:?}; node {i} only {only_i:?}");
                }
            }
        }
        String::new()
    }
}

/// Waits until `cond` holds, polling, up to `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`eventually`] for code outside a tokio runtime (the tests that drive
/// the real binary): waits until `cond` holds, polling, up to `timeout`.
pub fn eventually_blocking(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A seed for a randomized test: `PATINA_TEST_SEED` if set (to replay a
/// failure), else a random one; printed either way.
pub fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var("PATINA_TEST_SEED") {
        Ok(s) => s.parse().expect("PATINA_TEST_SEED is a u64"),
        Err(_) => rand::random(),
    };
    println!("{test}: seed {seed} (replay with PATINA_TEST_SEED={seed})");
    seed
}

/// `writes` random statements per node of `nodes`, all at once. Two
/// thirds go to keys every node writes (inserts, updates, deletes,
/// upserts, re-inserts on rows `id < 40` of `machines` and `app0..app6` of
/// `apps`): concurrent conflicts, whose winner the model leaves open. The
/// rest go to keys only that node writes (`machines` ids `1000 + 100 * node
/// ..`, apps `node{i}-app*`), whose final rows the model computes. Returns
/// that model.
pub async fn random_writes_on(
    cluster: &TestCluster,
    nodes: &[usize],
    writes: usize,
    seed: u64,
) -> Written {
    let mut tasks = tokio::task::JoinSet::new();
    for &i in nodes {
        let node = cluster.nodes[i].node.clone();
        tasks.spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed ^ (i as u64) << 32);
            let mut written = Written::new();
            for w in 0..writes {
                let sql = random_statement(&mut rng, i, w, &mut written);
                node.transact(vec![Statement::new(&sql)])
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            written
        });
    }
    let mut written = Written::new();
    while let Some(r) = tasks.join_next().await {
        written.extend(r.unwrap());
    }
    written
}

/// [`random_writes_on`] every node.
pub async fn random_writes(cluster: &TestCluster, writes: usize, seed: u64) -> Written {
    let all: Vec<usize> = (0..cluster.nodes.len()).collect();
    random_writes_on(cluster, &all, writes, seed).await
}

/// One statement of node `i`'s `w`th write, recorded in `written` as SQLite
/// executes it (keys of node `i` alone) or as contested (shared keys).
fn random_statement(rng: &mut SmallRng, i: usize, w: usize, written: &mut Written) -> String {
    let owned = rng.random_range(0..3) == 0;
    let r = rng.random_range(0..40);
    let id = if owned {
        1000 + 100 * i as i64 + r % 10
    } else {
        r
    };
    let app = if owned {
        format!("node{i}-app{}", r % 7)
    } else {
        format!("app{}", r % 7)
    };
    let (machine, app_key) = (Value::Integer(id), Value::Text(app.clone()));
    let (int, text) = (Value::Integer, |s: String| Value::Text(s));
    let w = w as i64;
    let (sql, table) = match rng.random_range(0..6) {
        0 | 1 => {
            if owned {
                let row = match written.get("machines", &machine) {
                    Some(old) => vec![
                        machine.clone(),
                        old[1].clone(),
                        text("restarted".into()),
                        int(w),
                    ],
                    None => vec![
                        machine.clone(),
                        text(format!("app{}", id % 5)),
                        text("started".into()),
                        int(w),
                    ],
                };
                written.row("machines", row);
            }
            let sql = format!(
                "INSERT INTO machines VALUES ({id}, 'app{}', 'started', {w}) \
                 ON CONFLICT(id) DO UPDATE SET n = excluded.n, state = 'restarted'",
                id % 5
            );
            (sql, "machines")
        }
        2 => {
            if let (true, Some(old)) = (owned, written.get("machines", &machine)) {
                let Value::Integer(n) = old[3] else {
                    panic!("n of {old:?}")
                };
                let row = vec![
                    machine.clone(),
                    old[1].clone(),
                    text(format!("stopped-{i}")),
                    int(n + 1),
                ];
                written.row("machines", row);
            }
            let sql =
                format!("UPDATE machines SET state = 'stopped-{i}', n = n + 1 WHERE id = {id}");
            (sql, "machines")
        }
        3 => {
            if owned {
                written.deleted("machines", &machine);
            }
            (format!("DELETE FROM machines WHERE id = {id}"), "machines")
        }
        4 => {
            if owned {
                let row = vec![app_key.clone(), text(format!("owner-{i}-{w}"))];
                written.row("apps", row);
            }
            let sql = format!("INSERT OR REPLACE INTO apps VALUES ('{app}', 'owner-{i}-{w}')");
            (sql, "apps")
        }
        _ => {
            if owned {
                written.deleted("apps", &app_key);
            }
            (format!("DELETE FROM apps WHERE name = '{app}'"), "apps")
        }
    };
    if !owned {
        let k = if table == "machines" {
            machine
        } else {
            app_key
        };
        written.contested(table, &k);
    }
    sql
}

/// Whether `node` has a row of `machines` with this id.
pub async fn has_machine(node: &Node, id: i64) -> bool {
    !rows(node, &format!("SELECT id FROM machines WHERE id = {id}"))
        .await
        .is_empty()
}

impl TestCluster {
    /// Waits until every running node has machine `id`.
    pub async fn wait_machine_everywhere(&self, id: i64, timeout: Duration) {
        for (i, t) in self.nodes.iter().enumerate() {
            if t.runtime.is_none() {
                continue;
            }
            let what = format!("machine {id} on node {i}");
            eventually(&what, timeout, || has_machine(&t.node, id)).await;
        }
    }

    /// Waits until each of `nodes` has completed `rounds` more sync rounds
    /// than now: the bounded wait before asserting that something did not
    /// arrive.
    pub async fn wait_sync_rounds(&self, nodes: &[usize], rounds: u64, timeout: Duration) {
        for &i in nodes {
            let stats = self.nodes[i].runtime().stats();
            let target = stats.sync_rounds.get() + rounds;
            let what = format!("{rounds} sync rounds on node {i}");
            eventually(&what, timeout, || {
                let done = stats.sync_rounds.get() >= target;
                async move { done }
            })
            .await;
        }
    }

    /// The fault handle of node `i` (the cluster needs `faults_seed`).
    pub fn faults(&self, i: usize) -> &FaultHandle {
        self.nodes[i]
            .faults
            .as_ref()
            .expect("start the cluster with Options::faults_seed")
    }
}

impl TestNode {
    /// The actors this node currently sees alive.
    pub fn alive_actors(&self) -> Vec<ActorId> {
        alive(&self.runtime().members().borrow())
            .map(|m| m.actor)
            .collect()
    }

    /// Every actor this node knows of, in any state.
    pub fn known_actors(&self) -> Vec<ActorId> {
        self.runtime()
            .members()
            .borrow()
            .iter()
            .map(|m| m.identity.actor)
            .collect()
    }
}
