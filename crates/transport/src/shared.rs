//! [`Shared`]: what every connection and stream task of one transport
//! needs, the socket screen included.

use patina_wire::{ActorId, ClusterName};

use crate::sender::Senders;
use crate::stats::TransportStats;

/// What every connection and stream task needs.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cluster: ClusterName,
    pub actor: ActorId,
    pub stats: TransportStats,
    /// Whether peers' certificates are verified (mutual TLS), i.e. whether
    /// what they say means anything.
    pub verified_peers: bool,
    /// The sender each live connection's frames may claim.
    pub senders: Senders,
    /// Bytes of inbound frames in flight ([`crate::limits::INBOUND_FRAME_BYTES_MAX`]).
    pub frame_bytes: std::sync::Arc<tokio::sync::Semaphore>,
}
