//! The in-process cluster harness every multi-node test uses: N nodes on
//! 127.0.0.1 port 0 with their own temp dirs, joined through the first
//! node; waiting on conditions with a timeout; comparing table contents by
//! hash.

#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agent::membership::{alive, Member};
use agent::replicator::ReplicatorConfig;
use agent::transport::{AsyncUdpSocket, FaultHandle, FaultySocket};
use agent::{
    ClusterOptions, ClusterRuntime, Db, Node, NodeOptions, QueryStream, RowEvent, Statement, Value,
};
use wire::ClusterName;

pub const SCHEMA: &str = "
CREATE TABLE machines (id INTEGER PRIMARY KEY NOT NULL, app TEXT, state TEXT, n INTEGER);
CREATE TABLE apps (name TEXT PRIMARY KEY NOT NULL, owner TEXT);
";
pub const TABLES: &[&str] = &["machines", "apps"];

#[derive(Clone)]
pub struct Options {
    pub replicator: ReplicatorConfig,
    /// Wrap every node's UDP socket in a `FaultySocket` with this seed.
    pub faults_seed: Option<u64>,
    pub cluster: String,
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
        }
    }
}

pub struct TestNode {
    pub node: Node,
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
}

fn node_options(dir: &Path) -> NodeOptions {
    std::fs::create_dir_all(dir.join("schema")).unwrap();
    if !dir.join("schema/s.sql").exists() {
        std::fs::write(dir.join("schema/s.sql"), SCHEMA).unwrap();
    }
    NodeOptions {
        region: "ams".into(),
        global_member: false,
        data_dir: dir.join("data"),
        schema_paths: vec![dir.join("schema")],
        global_schema_paths: vec![],
    }
}

impl TestCluster {
    pub async fn start(n: usize, options: Options) -> TestCluster {
        let mut cluster = TestCluster {
            nodes: Vec::new(),
            options,
            seed_addr: None,
        };
        for _ in 0..n {
            cluster.add_node().await;
        }
        cluster.wait_members(Duration::from_secs(30)).await;
        cluster
    }

    /// Starts one more node (joining through the first); returns its index.
    pub async fn add_node(&mut self) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(node_options(dir.path())).unwrap();
        let index = self.nodes.len();
        let (runtime, faults) = self.launch(&node, dir.path(), index);
        self.seed_addr.get_or_insert(runtime.addr());
        self.nodes.push(TestNode {
            node,
            runtime: Some(runtime),
            faults,
            dir,
        });
        index
    }

    fn launch(
        &self,
        node: &Node,
        dir: &Path,
        index: usize,
    ) -> (ClusterRuntime, Option<FaultHandle>) {
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
                cluster: ClusterName::new(self.options.cluster.clone()).unwrap(),
                bind,
                external_addr: None,
                bootstrap: self.seed_addr.iter().map(|a| a.to_string()).collect(),
                tls: None,
                members_file: dir.join("data/members-ams"),
                dbs: &[Db::Regional, Db::Global],
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
        let dir = self.nodes[i].dir.path().to_path_buf();
        let node = Node::open(node_options(&dir)).unwrap();
        let (runtime, faults) = self.launch(&node, &dir, i);
        let t = &mut self.nodes[i];
        (t.node, t.runtime, t.faults) = (node, Some(runtime), faults);
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

    /// Waits until every running node holds identical tables; returns the
    /// row counts.
    pub async fn wait_converged(&self, timeout: Duration) -> Vec<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let hashes = self.hashes().await;
            if hashes.windows(2).all(|w| w[0] == w[1]) {
                return hashes[0].iter().map(|(_, n)| *n).collect();
            }
            if tokio::time::Instant::now() > deadline {
                let diff = self.first_difference().await;
                panic!("not converged after {timeout:?}: {hashes:?}\n{diff}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

pub async fn rows(node: &Node, sql: &str) -> Vec<Vec<Value>> {
    let QueryStream { mut rows, .. } = node.query(Statement::new(sql)).await.unwrap();
    let mut out = Vec::new();
    while let Some(event) = rows.recv().await {
        match event {
            RowEvent::Row(r) => out.push(r),
            RowEvent::Error(e) => panic!("query failed: {e}"),
        }
    }
    out
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
