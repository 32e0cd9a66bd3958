//! [`RegionRuntime`]: everything a node runs to take part in the fleet —
//! its regional cluster, the global cluster and the relay for a global
//! member, the leader it sees, and the rollup publisher.

use std::sync::Arc;

use patina_node::{DbKind, Node};
use patina_proto::RollupTiming;
use patina_replicator::{ClusterOptions, ClusterRuntime, RelayLink};
use patina_wire::ActorId;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::publisher::{self, RollupMetrics, RollupsStatus};
use crate::recorder;
use crate::rollup::{Rollup, RollupConfig, RollupError};

/// How a node takes part in the fleet.
pub struct RegionOptions {
    /// Its regional cluster (carrying both databases).
    pub regional: ClusterOptions,
    /// The global cluster (carrying `global.db` only), for a global member.
    pub global: Option<ClusterOptions>,
    /// The `[[rollup]]`s, published while this node leads its region.
    pub rollups: Vec<RollupConfig>,
    pub rollup_timing: RollupTiming,
}

#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error(transparent)]
    Rollup(#[from] RollupError),
    #[error("cannot open a reader to check the rollups: {0}")]
    Reader(rusqlite::Error),
    #[error("the {cluster} cluster did not start: {error}")]
    Cluster {
        cluster: &'static str,
        error: patina_transport::TransportError,
    },
    #[error("{0}")]
    Misconfigured(String),
}

/// A node's running presence in its region and, as a global member, in
/// the global cluster.
pub struct RegionRuntime {
    node: Node,
    regional: ClusterRuntime,
    global: Option<ClusterRuntime>,
    leader: watch::Receiver<Option<ActorId>>,
    rollups: watch::Receiver<RollupsStatus>,
    rollup_names: Vec<String>,
    rollup_metrics: Arc<RollupMetrics>,
    tasks: JoinSet<()>,
}

impl RegionRuntime {
    /// Checks the rollups against the node's schema, then joins the
    /// clusters. Must be called inside a tokio runtime.
    pub fn start(node: Node, options: RegionOptions) -> Result<RegionRuntime, RegionError> {
        let RegionOptions {
            regional,
            global,
            rollups,
            rollup_timing,
        } = options;
        if global.is_some() != node.is_global_member() {
            return Err(RegionError::Misconfigured(if node.is_global_member() {
                "node.global = true needs a [global_gossip] section".into()
            } else {
                "[global_gossip] is only for global members: set node.global = true, or remove the section".into()
            }));
        }
        if global.as_ref().is_some_and(|g| g.dbs != [DbKind::Global]) {
            return Err(RegionError::Misconfigured(
                "the global cluster carries global.db only".into(),
            ));
        }
        let rollups = {
            let mut conn = node.open_reader().map_err(RegionError::Reader)?;
            rollups
                .into_iter()
                .map(|r| Rollup::check(&mut conn, r))
                .collect::<Result<Vec<Rollup>, _>>()?
        };
        let (to_region, to_global) = match global {
            Some(_) => {
                let (a, b) = RelayLink::pair();
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        let regional =
            ClusterRuntime::start_relaying(node.clone(), regional, to_region).map_err(|error| {
                RegionError::Cluster {
                    cluster: "regional",
                    error,
                }
            })?;
        let global = match global {
            Some(options) => Some(
                ClusterRuntime::start_relaying(node.clone(), options, to_global).map_err(
                    |error| RegionError::Cluster {
                        cluster: "global",
                        error,
                    },
                )?,
            ),
            None => None,
        };
        let mut tasks = JoinSet::new();
        let (leader_tx, leader) = watch::channel(None);
        tasks.spawn(crate::leader::follow(
            node.actor_id(),
            node.is_global_member(),
            regional.members(),
            leader_tx,
        ));
        let (status_tx, status) = watch::channel(RollupsStatus::default());
        let rollup_names = rollups.iter().map(|r| r.config.name.clone()).collect();
        let rollup_metrics = Arc::new(RollupMetrics::default());
        if node.is_global_member() {
            if !rollups.is_empty() {
                tasks.spawn(publisher::run(
                    node.clone(),
                    Arc::from(rollups),
                    rollup_timing,
                    leader.clone(),
                    status_tx,
                    Arc::clone(&rollup_metrics),
                ));
            }
            tasks.spawn(recorder::run(
                node.clone(),
                recorder::RecorderInputs {
                    leader: leader.clone(),
                    members: regional.members(),
                    rollups: status.clone(),
                    global: global.as_ref().map(ClusterRuntime::counters),
                },
            ));
        }
        Ok(RegionRuntime {
            node,
            regional,
            global,
            leader,
            rollups: status,
            rollup_names,
            rollup_metrics,
            tasks,
        })
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn regional(&self) -> &ClusterRuntime {
        &self.regional
    }

    /// The global cluster, on a global member.
    pub fn global(&self) -> Option<&ClusterRuntime> {
        self.global.as_ref()
    }

    /// The region's leader as this node sees it.
    pub fn leader(&self) -> watch::Receiver<Option<ActorId>> {
        self.leader.clone()
    }

    /// What this node's rollup publisher has done (nothing unless it is a
    /// global member with rollups configured).
    pub fn rollups(&self) -> watch::Receiver<RollupsStatus> {
        self.rollups.clone()
    }

    /// The configured rollups' target tables.
    pub fn rollup_names(&self) -> &[String] {
        &self.rollup_names
    }

    /// Registers both clusters' metrics (labelled `cluster`) and the
    /// rollup publisher's (`rollup_*`).
    pub fn register(&self, registry: &mut Registry) {
        self.rollup_metrics.register(registry);
        self.regional.register(registry);
        if let Some(global) = &self.global {
            global.register(registry);
        }
    }

    /// Stops publishing, leaves the global cluster, then the region.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
        if let Some(global) = self.global {
            global.shutdown().await;
        }
        self.regional.shutdown().await;
    }
}
