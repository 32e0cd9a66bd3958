//! [`ClusterRuntime`]: a node's presence in one cluster — its QUIC
//! [`Transport`], its SWIM [`Membership`] and the [`Replicator`] that moves
//! changes — started and stopped together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use wire::{ClusterName, NodeIdentity};

use crate::membership::{Member, Membership, DATAGRAM_QUEUE_CAPACITY};
use crate::node::{Db, Node};
use crate::replicator::{Replicator, ReplicatorConfig, ReplicatorStats};
use crate::transport::{StatsSnapshot, TlsFiles, Transport, TransportConfig, TransportError};

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
    pub dbs: &'static [Db],
    pub replicator: ReplicatorConfig,
    /// A socket to use instead of binding `bind` (tests: `FaultySocket`).
    pub socket: Option<Arc<dyn crate::transport::AsyncUdpSocket>>,
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
    pub fn start(node: Node, options: ClusterOptions) -> Result<ClusterRuntime, TransportError> {
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

    /// Leaves the cluster (peers learn at once), stops replicating and
    /// closes the transport.
    pub async fn shutdown(self) {
        self.membership.leave().await;
        self.replicator.shutdown().await;
        self.transport.close().await;
    }
}
