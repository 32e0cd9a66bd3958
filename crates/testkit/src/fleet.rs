//! [`TestFleet`]: several regions in one process — each node a real
//! [`Node`] running a [`RegionRuntime`] on 127.0.0.1 port 0, global
//! members in a global cluster, every UDP socket a `FaultySocket` so tests
//! can cut or slow a node's regional or global traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use patina_node::{DbKind, Node, Statement, Value};
use patina_region::{RegionOptions, RegionRuntime, RollupConfig, RollupTiming};
use patina_replicator::{ClusterOptions, ReplicatorConfig, SwimProfile};
use patina_transport::{AsyncUdpSocket, FaultHandle, FaultySocket};
use patina_wire::ClusterName;

use crate::nodes::{node_options, rows, SCHEMA};

/// The global tables of a fleet: the `app_regions` rollup's target and a
/// table clients write directly.
pub const GLOBAL_SCHEMA: &str = "
CREATE TABLE app_regions (app TEXT NOT NULL, region TEXT NOT NULL, machines INTEGER, started INTEGER, PRIMARY KEY (app, region));
CREATE TABLE flags (name TEXT PRIMARY KEY NOT NULL, value TEXT);
";

/// "Which regions run app X": machines and started machines per app.
pub fn app_regions_rollup() -> RollupConfig {
    RollupConfig {
        name: "app_regions".into(),
        key: vec!["app".into()],
        query: "SELECT app, count(*) AS machines, sum(state = 'started') AS started FROM machines GROUP BY app".into(),
    }
}

/// What `app_regions` should hold for `region`, from a node of it: the
/// rollup's query on its `machines`, as `(app, region, machines, started)`
/// — without the group of a NULL app, which cannot be a key.
pub async fn expected_app_regions(node: &Node, region: &str) -> Vec<Vec<Value>> {
    rows(
        node,
        &format!(
            "SELECT app, '{region}', count(*), sum(state = 'started') FROM machines WHERE app IS NOT NULL GROUP BY app ORDER BY app"
        ),
    )
    .await
}

pub struct FleetNode {
    pub node: Node,
    pub runtime: Option<RegionRuntime>,
    pub region: String,
    pub global_member: bool,
    /// The regional socket's faults.
    pub regional_faults: FaultHandle,
    /// The global socket's faults (global members).
    pub global_faults: Option<FaultHandle>,
    pub dir: tempfile::TempDir,
}

impl FleetNode {
    pub fn runtime(&self) -> &RegionRuntime {
        self.runtime.as_ref().expect("node is running")
    }
}

#[derive(Clone)]
pub struct FleetOptions {
    pub replicator: ReplicatorConfig,
    pub rollups: Vec<RollupConfig>,
    pub rollup_timing: RollupTiming,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            replicator: ReplicatorConfig {
                sync_interval: Duration::from_millis(100),
                seed: 7,
                ..ReplicatorConfig::default()
            },
            rollups: vec![app_regions_rollup()],
            rollup_timing: RollupTiming::default(),
        }
    }
}

/// One region of a fleet to start: its name, nodes, and how many of them
/// (the first ones) are global members.
pub struct RegionSpec<'a> {
    pub name: &'a str,
    pub nodes: usize,
    pub global_members: usize,
}

pub struct TestFleet {
    pub nodes: Vec<FleetNode>,
    pub options: FleetOptions,
}

impl TestFleet {
    /// Starts every region's nodes; each joins its region through the
    /// region's first node, and global members join the global cluster
    /// through the first global member of the first region. Waits until
    /// every node sees its region and every global member the global
    /// cluster.
    pub async fn start(regions: &[RegionSpec<'_>], options: FleetOptions) -> TestFleet {
        let mut fleet = TestFleet {
            nodes: Vec::new(),
            options,
        };
        for spec in regions {
            for i in 0..spec.nodes {
                fleet.add_node(spec.name, i < spec.global_members).await;
            }
        }
        fleet.wait_members(Duration::from_secs(30)).await;
        fleet
    }

    /// Indices of the nodes of `region`.
    pub fn of_region(&self, region: &str) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].region == region)
            .collect()
    }

    fn seed(&self, region: Option<&str>) -> Option<SocketAddr> {
        self.nodes.iter().find_map(|n| {
            let rt = n.runtime.as_ref()?;
            match region {
                Some(r) if n.region == r => Some(rt.regional().addr()),
                None => rt.global().map(|g| g.addr()),
                _ => None,
            }
        })
    }

    /// Starts a node of `region`; returns its index.
    pub async fn add_node(&mut self, region: &str, global_member: bool) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let index = self.nodes.len();
        let (node, runtime, regional_faults, global_faults) =
            self.launch(dir.path(), region, global_member, index);
        self.nodes.push(FleetNode {
            node,
            runtime: Some(runtime),
            region: region.to_owned(),
            global_member,
            regional_faults,
            global_faults,
            dir,
        });
        index
    }

    fn launch(
        &self,
        dir: &std::path::Path,
        region: &str,
        global_member: bool,
        index: usize,
    ) -> (Node, RegionRuntime, FaultHandle, Option<FaultHandle>) {
        let mut opts = node_options(dir, SCHEMA, GLOBAL_SCHEMA);
        opts.region = region.to_owned();
        opts.global_member = global_member;
        let node = open_retrying(opts);
        let cluster =
            |name: &str, seed: Option<SocketAddr>, dbs: &'static [DbKind], swim, salt: u64| {
                let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
                let (socket, faults) = FaultySocket::bind(bind, index as u64 ^ salt).unwrap();
                let options = ClusterOptions {
                    cluster: ClusterName::new(name).unwrap(),
                    region: ClusterName::new(region).unwrap(),
                    global_member,
                    swim,
                    bind,
                    external_addr: None,
                    bootstrap: seed.iter().map(|a| a.to_string()).collect(),
                    tls: None,
                    members_file: dir.join(format!("data/members-{name}")),
                    dbs,
                    replicator: ReplicatorConfig {
                        seed: self.options.replicator.seed ^ index as u64 ^ salt,
                        ..self.options.replicator.clone()
                    },
                    socket: Some(socket as Arc<dyn AsyncUdpSocket>),
                };
                (options, faults)
            };
        let (regional, regional_faults) = cluster(
            region,
            self.seed(Some(region)),
            &[DbKind::Regional, DbKind::Global],
            SwimProfile::Lan,
            0,
        );
        let (global, global_faults) = if global_member {
            let (o, f) = cluster(
                "global",
                self.seed(None),
                &[DbKind::Global],
                // Loopback: LAN timings keep the tests quick; the agent
                // runs the WAN profile.
                SwimProfile::Lan,
                0x9e37,
            );
            (Some(o), Some(f))
        } else {
            (None, None)
        };
        let runtime = RegionRuntime::start(
            node.clone(),
            RegionOptions {
                regional,
                global,
                rollups: self.options.rollups.clone(),
                rollup_timing: self.options.rollup_timing.clone(),
            },
        )
        .unwrap();
        (node, runtime, regional_faults, global_faults)
    }

    /// Stops node `i` gracefully (it leaves its clusters).
    pub async fn stop(&mut self, i: usize) {
        if let Some(rt) = self.nodes[i].runtime.take() {
            rt.shutdown().await;
        }
    }

    /// Stops node `i` the way a crash does: no leave, its sockets go
    /// silent at once and peers find out by probing.
    pub async fn crash(&mut self, i: usize) {
        let n = &self.nodes[i];
        n.regional_faults.set_loss(1.0);
        if let Some(g) = &n.global_faults {
            g.set_loss(1.0);
        }
        if let Some(rt) = self.nodes[i].runtime.take() {
            // Whatever leave it tries is lost on the silent sockets.
            rt.shutdown().await;
        }
    }

    /// Reopens node `i`'s data dir and rejoins its clusters.
    pub async fn restart(&mut self, i: usize) {
        self.stop(i).await;
        // The old node lets go of its data dir's lock once its last handle
        // is gone: take it out, drop it, open again.
        let FleetNode {
            node,
            region,
            global_member,
            dir,
            ..
        } = self.nodes.remove(i);
        drop(node);
        let (node, runtime, regional_faults, global_faults) =
            self.launch(dir.path(), &region, global_member, i);
        self.nodes.insert(
            i,
            FleetNode {
                node,
                runtime: Some(runtime),
                region,
                global_member,
                regional_faults,
                global_faults,
                dir,
            },
        );
    }

    /// Cuts the global members of `region` off the global cluster, both
    /// ways (their regional traffic flows on).
    pub fn cut_from_global(&self, region: &str) {
        let others: Vec<SocketAddr> = self
            .nodes
            .iter()
            .filter(|n| n.region != region)
            .filter_map(|n| Some(n.runtime.as_ref()?.global()?.addr()))
            .collect();
        for n in self.nodes.iter().filter(|n| n.region == region) {
            if let Some(faults) = &n.global_faults {
                faults.set_loss(1.0);
                for &addr in &others {
                    faults.partition_from(addr);
                }
            }
        }
    }

    /// Undoes [`cut_from_global`](Self::cut_from_global).
    pub fn heal_global(&self, region: &str) {
        for n in self.nodes.iter().filter(|n| n.region == region) {
            if let Some(faults) = &n.global_faults {
                faults.set_loss(0.0);
                faults.heal();
            }
        }
    }

    /// Waits until every running node sees every running node of its region
    /// alive, and every running global member every running global member.
    pub async fn wait_members(&self, timeout: Duration) {
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(rt) = &n.runtime else { continue };
            let want_regional = self
                .nodes
                .iter()
                .filter(|m| m.region == n.region && m.runtime.is_some())
                .count()
                - 1;
            let want_global = self
                .nodes
                .iter()
                .filter(|m| m.global_member && m.runtime.is_some())
                .count()
                .saturating_sub(1);
            let mut regional = rt.regional().members();
            let ok = tokio::time::timeout(
                timeout,
                regional.wait_for(|m| patina_membership::alive(m).count() >= want_regional),
            )
            .await
            .is_ok();
            assert!(ok, "node {i} ({}) sees too few regional peers", n.region);
            if let Some(g) = rt.global() {
                let mut global = g.members();
                let ok = tokio::time::timeout(
                    timeout,
                    global.wait_for(|m| patina_membership::alive(m).count() >= want_global),
                )
                .await
                .is_ok();
                assert!(ok, "node {i} ({}) sees too few global peers", n.region);
            }
        }
    }

    pub async fn exec(&self, i: usize, sql: &str) {
        self.exec_params(i, sql, Vec::new()).await
    }

    pub async fn exec_params(&self, i: usize, sql: &str, params: Vec<Value>) {
        self.nodes[i]
            .node
            .transact(vec![Statement::with_params(sql, params)])
            .await
            .unwrap_or_else(|e| panic!("node {i}: {sql}: {e}"));
    }

    pub async fn rows(&self, i: usize, sql: &str) -> Vec<Vec<Value>> {
        rows(&self.nodes[i].node, sql).await
    }
}

/// Opens a node, waiting for a previous process of the same data dir to
/// let go of its lock.
fn open_retrying(opts: patina_node::NodeOptions) -> Node {
    let started = std::time::Instant::now();
    loop {
        match Node::open(opts.clone()) {
            Ok(node) => return node,
            Err(patina_node::NodeError::Locked { .. })
                if started.elapsed() < Duration::from_secs(30) =>
            {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("opening a node: {e}"),
        }
    }
}
