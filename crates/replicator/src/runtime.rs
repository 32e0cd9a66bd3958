//! [`ClusterRuntime`]: a node's presence in one cluster — its QUIC
//! [`Transport`], its SWIM [`Membership`] and the [`Replicator`] that moves
//! changes — started and stopped together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use patina_wire::{ClusterName, NodeIdentity};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};

use patina_membership::{Member, Membership, SwimProfile, DATAGRAM_QUEUE_CAPACITY};
use patina_proto::CatchUpStatus;
use patina_transport::{StatsSnapshot, TlsFiles, Transport, TransportConfig, TransportError};
use patina_wire::DbKind;

use crate::config::ReplicatorConfig;
use crate::relay::RelayLink;
use crate::replica::Replica;
use crate::replicator::Replicator;
use crate::stats::{LagStats, ReplicatorStats};

/// How to join one cluster.
#[derive(Clone)]
pub struct ClusterOptions {
    /// The region's name, or `global`.
    pub cluster: ClusterName,
    /// The node's region (the same as `cluster` for its regional cluster).
    pub region: ClusterName,
    /// Whether the node is a global member (its identity says so).
    pub global_member: bool,
    /// foca's timings: `Lan` for a region, `Wan` for the global cluster.
    pub swim: SwimProfile,
    pub bind: SocketAddr,
    pub external_addr: Option<SocketAddr>,
    /// `HOST:PORT` of peers to join through.
    pub bootstrap: Vec<String>,
    pub tls: Option<TlsFiles>,
    /// Where the member list is kept between runs.
    pub members_file: PathBuf,
    /// The databases this cluster carries: a region both, `global` only
    /// the global one.
    pub dbs: &'static [DbKind],
    pub replicator: ReplicatorConfig,
    /// A socket to use instead of binding `bind` (tests: `FaultySocket`).
    pub socket: Option<Arc<dyn patina_transport::AsyncUdpSocket>>,
}

/// A node's running membership of one cluster.
pub struct ClusterRuntime {
    transport: Transport,
    membership: Membership,
    replicator: Replicator,
}

impl ClusterRuntime {
    /// Binds the transport, joins the cluster and starts replicating.
    /// Must be called inside a tokio runtime.
    pub fn start(
        node: impl Replica,
        options: ClusterOptions,
    ) -> Result<ClusterRuntime, TransportError> {
        Self::start_relaying(node, options, None)
    }

    /// [`start`](Self::start) for a global member's two clusters: `relay`
    /// links this one to the other ([`RelayLink::pair`]).
    pub fn start_relaying(
        node: impl Replica,
        options: ClusterOptions,
        relay: Option<RelayLink>,
    ) -> Result<ClusterRuntime, TransportError> {
        let node: Arc<dyn Replica> = Arc::new(node);
        let (transport, inbound) = Transport::bind(
            TransportConfig {
                bind: options.bind,
                external_addr: options.external_addr,
                cluster: options.cluster.clone(),
                actor: node.actor_id(),
                tls: options.tls.clone(),
            },
            options.socket.clone(),
        )?;
        let (datagrams_tx, datagrams_rx) = mpsc::channel(DATAGRAM_QUEUE_CAPACITY);
        let identity = NodeIdentity {
            actor: node.actor_id(),
            addr: transport.advertised_addr(),
            cluster: options.cluster.clone(),
            region: options.region.clone(),
            global_member: options.global_member,
            generation: 0,
        };
        let membership = Membership::spawn(
            transport.clone(),
            identity,
            options.bootstrap.clone(),
            options.members_file.clone(),
            datagrams_rx,
            options.swim,
        );
        // A node that knows peers learns from them: it reports itself
        // catching up until it holds what they advertise.
        let learns_from_peers = !options.bootstrap.is_empty() || membership.persisted_peers() > 0;
        let replicator = Replicator::spawn(
            node,
            transport.clone(),
            inbound,
            membership.members(),
            datagrams_tx,
            options.dbs,
            options.replicator.clone(),
            learns_from_peers,
            relay,
        );
        Ok(ClusterRuntime {
            transport,
            membership,
            replicator,
        })
    }

    /// The address peers dial.
    pub fn addr(&self) -> SocketAddr {
        self.transport.advertised_addr()
    }

    pub fn identity(&self) -> &NodeIdentity {
        self.membership.identity()
    }

    /// Every known member but this node, with its state.
    pub fn members(&self) -> watch::Receiver<Vec<Member>> {
        self.membership.members()
    }

    pub fn stats(&self) -> Arc<ReplicatorStats> {
        self.replicator.stats()
    }

    pub fn transport_stats(&self) -> StatsSnapshot {
        self.transport.stats().snapshot()
    }

    /// A handle for reading this cluster's counters at any time (metrics).
    pub fn counters(&self) -> ClusterCounters {
        ClusterCounters {
            cluster: self.membership.identity().cluster.clone(),
            replicator: self.replicator.stats(),
            catch_up: self.replicator.catch_up(),
            transport: self.transport.clone(),
        }
    }

    /// Registers this cluster's metrics (`replication_*`, `transport_*`)
    /// in `registry`, which is expected to carry the `patina` prefix; they
    /// get the label `cluster` here. The registry keeps handles to the
    /// live counters: register once, before serving `/metrics`.
    pub fn register(&self, registry: &mut Registry) {
        let cluster = self.membership.identity().cluster.as_str().to_owned();
        let registry = registry.sub_registry_with_label(("cluster".into(), cluster.into()));
        self.replicator.stats().register(registry);
        self.transport.stats().register(registry);
    }

    /// Leaves the cluster (peers learn at once), stops replicating and
    /// closes the transport.
    pub async fn shutdown(self) {
        self.membership.leave().await;
        self.replicator.shutdown().await;
        self.transport.close().await;
    }
}

/// Reads a cluster's figures that `/v1/health` reports.
#[derive(Clone)]
pub struct ClusterCounters {
    cluster: ClusterName,
    replicator: Arc<ReplicatorStats>,
    catch_up: watch::Receiver<CatchUpStatus>,
    transport: Transport,
}

impl std::fmt::Debug for ClusterCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterCounters({})", self.cluster)
    }
}

impl ClusterCounters {
    pub fn cluster(&self) -> &str {
        self.cluster.as_str()
    }

    /// QUIC's round-trip estimate to the member at `addr`, if this node
    /// holds a live connection to it (members it has not exchanged anything
    /// with have none).
    pub fn rtt(&self, addr: std::net::SocketAddr) -> Option<std::time::Duration> {
        self.transport.rtt(addr)
    }

    /// The 99th percentile of the last minute's live replication lag
    /// (origin commit → applied here, of versions pushed by broadcast
    /// after this node started and caught up), seconds; 0 without samples.
    pub fn p99_lag_secs(&self) -> f64 {
        p99_secs(&self.replicator.lag)
    }

    /// The same for `global.db` versions alone (through any relay).
    pub fn global_p99_lag_secs(&self) -> Option<f64> {
        self.replicator
            .global_lag
            .p99_ms(std::time::Instant::now())
            .map(|ms| ms as f64 / 1000.0)
    }

    /// The origin commit time (Unix ms) of the newest global version
    /// merged through this cluster or committed here; `None` before any.
    pub fn newest_global_commit_ms(&self) -> Option<u64> {
        let ms = self
            .replicator
            .newest_global_commit_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        (ms > 0).then_some(ms)
    }

    /// Changes refused because this cluster does not carry their
    /// database, for `table`.
    pub fn isolation_refused(&self, table: &str) -> u64 {
        self.replicator.isolation_refused.of(table)
    }

    /// The same for catch-up: versions written while this node was away or
    /// applied while it caught up.
    pub fn catchup_p99_lag_secs(&self) -> f64 {
        p99_secs(&self.replicator.catchup_lag)
    }

    /// Whether this node still lacks what its peers held when it joined.
    pub fn catch_up(&self) -> CatchUpStatus {
        *self.catch_up.borrow()
    }

    /// Chunks received and waiting to be merged.
    pub fn apply_queue_chunks(&self) -> u64 {
        // A gauge is signed; the queue's length never is.
        u64::try_from(self.replicator.apply_queue_chunks.get()).unwrap_or(0)
    }
}

fn p99_secs(lag: &LagStats) -> f64 {
    lag.p99_ms(std::time::Instant::now())
        .map_or(0.0, |ms| ms as f64 / 1000.0)
}
