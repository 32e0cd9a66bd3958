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
    /// When traffic of another cluster was last logged at warn level.
    pub wrong_cluster_logged: WarnEvery,
}

/// Lets a warning through at most once per interval: traffic a peer keeps
/// sending (a misconfigured bootstrap list announces every second) must
/// be visible in the log without flooding it.
#[derive(Debug)]
pub(crate) struct WarnEvery {
    start: std::time::Instant,
    /// Seconds after `start` of the last warning, plus one (0: never).
    last: std::sync::atomic::AtomicU64,
    every: std::time::Duration,
}

impl WarnEvery {
    pub fn new(every: std::time::Duration) -> WarnEvery {
        WarnEvery {
            start: std::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
            every,
        }
    }

    /// Whether to warn now (and then not again for the interval).
    pub fn due(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.start.elapsed().as_secs() + 1;
        let last = self.last.load(Relaxed);
        (last == 0 || now >= last + self.every.as_secs())
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::WarnEvery;

    #[test]
    fn a_warning_goes_through_once_per_interval() {
        let w = WarnEvery::new(std::time::Duration::from_secs(60));
        assert!(w.due());
        assert!(!w.due());
        assert!(!w.due());
        let w = WarnEvery::new(std::time::Duration::ZERO);
        assert!(w.due() && w.due(), "no interval: every time");
    }
}
