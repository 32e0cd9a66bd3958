//! [`Shared`]: what every connection and stream task of one transport
//! needs, the socket screen included.

use patina_wire::{ActorId, ClusterName};

use crate::stats::TransportStats;

/// What every connection and stream task needs.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cluster: ClusterName,
    pub actor: ActorId,
    pub stats: TransportStats,
}
