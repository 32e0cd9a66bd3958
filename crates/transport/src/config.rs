//! [`TransportConfig`]: what binding a transport takes.

use std::net::SocketAddr;

use patina_wire::{ActorId, ClusterName};

use crate::tls::TlsFiles;

/// What a [`Transport`](crate::Transport) needs: `[gossip]` (or `[global_gossip]`) plus the
/// node's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// UDP address to bind (ignored when a socket is handed to
    /// [`Transport::bind`](crate::Transport::bind)).
    pub bind: SocketAddr,
    /// What peers should dial, when not the bound address.
    pub external_addr: Option<SocketAddr>,
    pub cluster: ClusterName,
    pub actor: ActorId,
    /// `None`: insecure — a self-signed certificate, no peer verified,
    /// nothing authenticated (dev clusters and tests; the agent allows it
    /// only with `gossip.insecure = true`).
    pub tls: Option<TlsFiles>,
}
