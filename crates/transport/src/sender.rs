//! [`PeerSender`]: the actor one connection's frames may claim as their
//! sender (`Envelope::from`), and the registry of live connections' ones.
//!
//! A certificate names a node, not an actor id (actor ids are made when a
//! node first starts, after its certificate was issued), so the binding is:
//! - a certificate with a `patina://actor/<hex>` URI pins that actor: every
//!   frame on its connections must claim it;
//! - otherwise the first frame on a connection binds the actor it claims to
//!   that connection, and a later frame claiming another is refused.
//!
//! So a member cannot interleave frames as several actors on one
//! connection, nor (with pinned certificates) speak as any actor but its
//! own. Without a pin it can still open a connection that claims another
//! member's actor from its first frame; docs/security.md says what that
//! does and does not let it do. Without TLS nothing is authenticated: the
//! binding then only keeps one connection consistent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use patina_wire::ActorId;
use rustls::pki_types::CertificateDer;

use crate::identity::CertIdentity;

/// Who one connection's peer is, as far as its certificate and its first
/// frame tell.
#[derive(Debug)]
pub(crate) struct PeerSender {
    /// The peer certificate's node name (mutual TLS only), for logs.
    pub(crate) node: Option<String>,
    bound: OnceLock<ActorId>,
    /// Bytes of this connection's frames being read or waiting for the
    /// consumer ([`crate::limits::CONNECTION_FRAME_BYTES_MAX`]): one peer
    /// cannot take the whole inbound budget.
    pub(crate) frame_bytes: Arc<tokio::sync::Semaphore>,
}

impl Default for PeerSender {
    fn default() -> PeerSender {
        PeerSender {
            node: None,
            bound: OnceLock::new(),
            frame_bytes: Arc::new(tokio::sync::Semaphore::new(
                crate::limits::CONNECTION_FRAME_BYTES_MAX,
            )),
        }
    }
}

impl PeerSender {
    /// Reads the peer's certificate, when `verified` (mutual TLS: the
    /// handshake checked it against our CA; a self-signed one says nothing).
    pub(crate) fn of(conn: &quinn::Connection, verified: bool) -> PeerSender {
        let sender = PeerSender::default();
        if !verified {
            return sender;
        }
        let Some(identity) = conn
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|chain| CertIdentity::from_der(chain.first()?).ok())
        else {
            return sender;
        };
        if let Some(actor) = identity.actor {
            let _ = sender.bound.set(actor);
        }
        PeerSender {
            node: identity.node,
            ..sender
        }
    }

    /// Accepts a frame claiming `from`, or returns the actor this
    /// connection speaks for.
    pub(crate) fn check(&self, from: ActorId) -> Result<(), ActorId> {
        let bound = *self.bound.get_or_init(|| from);
        if bound == from {
            Ok(())
        } else {
            Err(bound)
        }
    }
}

/// The [`PeerSender`] of each live connection, by `stable_id`, so that
/// streams we open on a connection check the same binding as those the peer
/// opens.
#[derive(Debug, Default)]
pub(crate) struct Senders(Mutex<HashMap<usize, Arc<PeerSender>>>);

impl Senders {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Arc<PeerSender>>> {
        // A poisoned lock only means a thread panicked between two plain
        // map operations; the map is still consistent.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a just-established connection; [`Senders::forget`] it
    /// when it is done.
    pub(crate) fn admit(&self, conn: &quinn::Connection, verified: bool) -> Arc<PeerSender> {
        let sender = Arc::new(PeerSender::of(conn, verified));
        self.map().insert(conn.stable_id(), Arc::clone(&sender));
        sender
    }

    /// The binding of `conn`; a fresh one when it is no longer registered
    /// (it closed: whatever is read from it next fails anyway).
    pub(crate) fn of(&self, conn: &quinn::Connection, verified: bool) -> Arc<PeerSender> {
        match self.map().get(&conn.stable_id()) {
            Some(sender) => Arc::clone(sender),
            None => Arc::new(PeerSender::of(conn, verified)),
        }
    }

    /// Unregisters `sender`, unless a newer connection reusing the closed
    /// one's id replaced it.
    pub(crate) fn forget(&self, conn: &quinn::Connection, sender: &Arc<PeerSender>) {
        let mut map = self.map();
        if map
            .get(&conn.stable_id())
            .is_some_and(|s| Arc::ptr_eq(s, sender))
        {
            map.remove(&conn.stable_id());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_claim_binds_the_connection() {
        let sender = PeerSender::default();
        let (a, b) = (ActorId::random(), ActorId::random());
        assert_eq!(sender.check(a), Ok(()));
        assert_eq!(sender.check(a), Ok(()));
        assert_eq!(sender.check(b), Err(a));
        assert_eq!(sender.check(a), Ok(()), "a refusal does not rebind");
    }
}
