//! [`Peers`]: the connection cached for each peer address, shared by
//! dialing and accepting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use crate::limits::PEER_SLOTS_MAX;

/// One peer address's connection, and the dial in progress if any: the
/// tokio mutex makes concurrent dials to one peer share one attempt.
#[derive(Debug, Default)]
pub(crate) struct PeerSlot {
    /// Dials completed (success or failure); a caller that waited on the
    /// lock while another dialed sees it changed and takes that result.
    pub(crate) dials: AtomicU64,
    pub(crate) state: tokio::sync::Mutex<SlotState>,
}

#[derive(Debug, Default)]
pub(crate) struct SlotState {
    pub(crate) conn: Option<quinn::Connection>,
    pub(crate) last_error: Option<String>,
    /// `datagram_send_buffer_space()` of the fresh connection, i.e. with
    /// nothing queued: [`Transport::flush_datagrams`](crate::Transport::flush_datagrams) waits for it.
    pub(crate) empty_datagram_space: usize,
}

/// The connection to use for each peer address: dialed by us, or accepted
/// from a peer whose address it is (one connection per pair serves both
/// directions).
#[derive(Debug, Default)]
pub(crate) struct Peers(Mutex<HashMap<SocketAddr, Arc<PeerSlot>>>);

impl Peers {
    pub(crate) fn map(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<PeerSlot>>> {
        // A poisoned lock only means another thread panicked mid-insert;
        // the map itself is still consistent.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn slot(&self, to: SocketAddr) -> Arc<PeerSlot> {
        let mut peers = self.map();
        if peers.len() >= PEER_SLOTS_MAX && !peers.contains_key(&to) {
            peers.retain(|_, slot| match slot.state.try_lock() {
                Ok(state) => state
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.close_reason().is_none()),
                Err(_) => true, // a dial in progress
            });
        }
        peers.entry(to).or_default().clone()
    }

    /// Uses `conn`, accepted from `from`, for sending to `from` too, unless
    /// a live connection is cached or a dial to it is under way.
    pub(crate) fn offer_accepted(&self, from: SocketAddr, conn: &quinn::Connection) {
        let slot = self.slot(from);
        let Ok(mut state) = slot.state.try_lock() else {
            return;
        };
        if state
            .conn
            .as_ref()
            .is_some_and(|c| c.close_reason().is_none())
        {
            return;
        }
        state.conn = Some(conn.clone());
        state.last_error = None;
        state.empty_datagram_space = conn.datagram_send_buffer_space();
    }
}
