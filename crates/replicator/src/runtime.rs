//! [`ClusterRuntime`]: a node's presence in one cluster — its QUIC
//! [`Transport`], its SWIM [`Membership`] and the [`Replicator`] that moves
//! changes — started and stopped together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use patina_wire::{ClusterName, NodeIdentity};
use tokio::sync::{mpsc, watch};

use patina_membership::{Member, Membership, DATAGRAM_QUEUE_CAPACITY};
use patina_transport::{StatsSnapshot, TlsFiles, Transport, TransportConfig, TransportError};
use patina_wire::DbKind;

use crate::config::ReplicatorConfig;
use crate::replica::Replica;
use crate::replicator::Replicator;
use crate::stats::ReplicatorStats;

/// How to join one cluster.
#[derive(Clone)]
pub struct ClusterOptions {
    /// The region's name, or `global`.
    pub cluster: ClusterName,
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
            generation: 0,
        };
        let membership = Membership::spawn(
            transport.clone(),
            identity,
            options.bootstrap.clone(),
            options.members_file.clone(),
            datagrams_rx,
        );
        let replicator = Replicator::spawn(
            node,
            transport.clone(),
            inbound,
            membership.members(),
            datagrams_tx,
            options.dbs,
            options.replicator.clone(),
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
            transport: self.transport.clone(),
        }
    }

    /// Leaves the cluster (peers learn at once), stops replicating and
    /// closes the transport.
    pub async fn shutdown(self) {
        self.membership.leave().await;
        self.replicator.shutdown().await;
        self.transport.close().await;
    }
}

/// One counter or gauge of a cluster, for the metrics endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterMetric {
    /// Without the `patina_` prefix; counters end in `_total`.
    pub name: &'static str,
    pub help: &'static str,
    pub value: u64,
    pub gauge: bool,
}

/// Reads a cluster's replication and transport counters.
#[derive(Clone)]
pub struct ClusterCounters {
    cluster: ClusterName,
    replicator: Arc<ReplicatorStats>,
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

    /// The 99th percentile of the last minute's replication lag (origin
    /// commit → applied here) of broadcast versions, seconds; 0 without
    /// samples.
    pub fn p99_lag_secs(&self) -> f64 {
        self.p99_lag_ms().map_or(0.0, |ms| ms as f64 / 1000.0)
    }

    fn p99_lag_ms(&self) -> Option<u64> {
        self.replicator
            .lag
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .p99_ms(std::time::Instant::now())
    }

    /// Chunks received and waiting to be merged.
    pub fn apply_queue_chunks(&self) -> u64 {
        ReplicatorStats::get(&self.replicator.apply_queue_chunks)
    }

    pub fn read(&self) -> Vec<ClusterMetric> {
        let r = &self.replicator;
        let t = self.transport.stats().snapshot();
        let c = |name, help, value| ClusterMetric {
            name,
            help,
            value,
            gauge: false,
        };
        let g = ReplicatorStats::get;
        vec![
            c(
                "replication_chunks_received_total",
                "Change chunks received from peers (broadcast and sync).",
                g(&r.chunks_received),
            ),
            c(
                "replication_changes_received_total",
                "Changes in chunks that were new to this node.",
                g(&r.changes_received),
            ),
            c(
                "replication_chunks_duplicate_total",
                "Chunks for versions already held, dropped.",
                g(&r.chunks_duplicate),
            ),
            c(
                "replication_chunks_dropped_total",
                "Chunks dropped because the apply queue was full (sync fetches them again).",
                g(&r.chunks_dropped_queue_full),
            ),
            c(
                "replication_chunks_failed_total",
                "Chunks refused because merging them failed.",
                g(&r.chunks_failed),
            ),
            c(
                "replication_chunks_refused_partials_full_total",
                "Chunks of new incomplete transactions refused because too many are buffered (sync fetches them again).",
                g(&r.chunks_refused_partials_full),
            ),
            c(
                "replication_versions_applied_total",
                "Remote transactions applied whole.",
                g(&r.versions_applied),
            ),
            c(
                "replication_versions_parked_total",
                "Remote transactions parked until their schema arrives.",
                g(&r.versions_parked),
            ),
            c(
                "replication_broadcast_chunks_sent_total",
                "Chunks pushed to peers.",
                g(&r.broadcast_chunks_sent),
            ),
            c(
                "replication_broadcast_send_failures_total",
                "Chunk pushes that failed (sync repairs).",
                g(&r.broadcast_send_failures),
            ),
            c(
                "replication_broadcast_shed_total",
                "Queued pushes shed because the broadcast queue was full.",
                g(&r.broadcast_shed),
            ),
            c(
                "replication_forwards_dropped_total",
                "Versions not forwarded (relay or gossip) because the broadcast task's queue was full.",
                g(&r.forwards_dropped),
            ),
            c(
                "replication_sync_rounds_total",
                "Anti-entropy rounds started.",
                g(&r.sync_rounds),
            ),
            c(
                "replication_sync_failures_total",
                "Summary exchanges or pulls that failed.",
                g(&r.sync_failures),
            ),
            c(
                "replication_pulls_served_total",
                "Pulls served to peers.",
                g(&r.pulls_served),
            ),
            c(
                "replication_wrong_database_total",
                "Chunks for a database this cluster does not carry, dropped.",
                g(&r.wrong_database),
            ),
            ClusterMetric {
                name: "replication_apply_queue_chunks",
                help: "Chunks waiting to be merged.",
                value: g(&r.apply_queue_chunks),
                gauge: true,
            },
            ClusterMetric {
                name: "replication_lag_p99_ms",
                help: "99th percentile of the last minute's commit-to-applied lag of broadcast versions, ms.",
                value: self.p99_lag_ms().unwrap_or(0),
                gauge: true,
            },
            c(
                "transport_wrong_cluster_total",
                "Datagrams and frames naming another cluster, dropped.",
                t.wrong_cluster,
            ),
            c(
                "transport_malformed_total",
                "Datagrams and frames that failed to decode, dropped.",
                t.malformed,
            ),
            c(
                "transport_not_quic_total",
                "UDP datagrams at the gossip port that cannot be QUIC, dropped.",
                t.not_quic,
            ),
            c(
                "transport_datagrams_dropped_total",
                "Datagrams dropped because the inbound queue was full.",
                t.datagrams_dropped_full,
            ),
            c(
                "transport_frames_in_total",
                "Stream frames received.",
                t.frames_in,
            ),
            c(
                "transport_frames_out_total",
                "Stream frames sent.",
                t.frames_out,
            ),
            c(
                "transport_bytes_in_total",
                "Bytes of accepted frames and datagrams.",
                t.bytes_in,
            ),
            c(
                "transport_bytes_out_total",
                "Bytes of frames and datagrams sent.",
                t.bytes_out,
            ),
            c(
                "transport_handshake_failures_total",
                "QUIC handshakes that failed (refused certificates, unreachable peers).",
                t.handshake_failures,
            ),
            c(
                "transport_streams_refused_total",
                "Streams stopped because of a refused frame.",
                t.streams_refused,
            ),
        ]
    }
}
