//! The first look at each UDP datagram reaching a gossip port, before
//! quinn: what cannot be a QUIC packet for us is counted
//! ([`super::TransportStats::not_quic`]) and dropped. quinn drops such
//! packets silently, so without this garbage on the port would go
//! uncounted.
//!
//! Cannot be QUIC: an empty datagram, a long header naming a version other
//! than 1 (or 0, version negotiation), or the fixed bit (0x40) clear. The
//! last holds because our endpoints turn fixed-bit greasing (RFC 9287)
//! off, so no peer of ours ever clears it. A short-header packet for a
//! connection we do not know cannot be told apart here; quinn drops it.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use crate::shared::Shared;

const LONG_HEADER: u8 = 0x80;
const FIXED_BIT: u8 = 0x40;
const QUIC_V1: u32 = 1;

/// Whether `datagram` cannot be a QUIC packet for this endpoint.
pub(super) fn is_not_quic(datagram: &[u8]) -> bool {
    let Some(&first) = datagram.first() else {
        return true;
    };
    if first & LONG_HEADER != 0 {
        let Some(version) = datagram.get(1..5) else {
            return true;
        };
        let version = u32::from_be_bytes([version[0], version[1], version[2], version[3]]);
        if version == 0 {
            // Version negotiation: its other header bits are arbitrary.
            return false;
        }
        if version != QUIC_V1 {
            return true;
        }
    }
    first & FIXED_BIT == 0
}

/// Wraps the endpoint's socket; sends pass through untouched.
pub(super) struct ScreeningSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    shared: Arc<Shared>,
}

impl ScreeningSocket {
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, shared: Arc<Shared>) -> Self {
        ScreeningSocket { inner, shared }
    }
}

impl fmt::Debug for ScreeningSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScreeningSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for ScreeningSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let not_quic = &self.shared.stats.not_quic;
        // A receive may hold several datagrams of one sender (GRO),
        // `stride` bytes each; it is kept if any of them may be QUIC.
        poll_recv_kept(&*self.inner, cx, bufs, meta, |m, bytes| {
            if bytes.is_empty() {
                not_quic.inc();
                return false;
            }
            let mut any_quic = false;
            for datagram in bytes.chunks(m.stride.max(1)) {
                if is_not_quic(datagram) {
                    not_quic.inc();
                    tracing::debug!(from = %m.addr, len = datagram.len(), "not a QUIC packet; dropped");
                } else {
                    any_quic = true;
                }
            }
            any_quic
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Receives from `inner`, keeping only the entries `keep` accepts (given
/// each entry's meta and bytes); when it kept none, receives again, which
/// registers the waker if nothing else is ready.
pub(super) fn poll_recv_kept(
    inner: &dyn AsyncUdpSocket,
    cx: &mut Context<'_>,
    bufs: &mut [IoSliceMut<'_>],
    meta: &mut [RecvMeta],
    mut keep: impl FnMut(&RecvMeta, &[u8]) -> bool,
) -> Poll<io::Result<usize>> {
    loop {
        let n = ready!(inner.poll_recv(cx, bufs, meta))?;
        let mut kept = 0;
        for i in 0..n {
            let len = meta[i].len.min(bufs[i].len());
            if !keep(&meta[i], &bufs[i][..len]) {
                continue;
            }
            if kept != i {
                let (front, back) = bufs.split_at_mut(i);
                let len = len.min(front[kept].len());
                front[kept][..len].copy_from_slice(&back[0][..len]);
                meta[kept] = meta[i];
                meta[kept].len = len;
            }
            kept += 1;
        }
        if kept > 0 {
            return Poll::Ready(Ok(kept));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_cannot_be_quic() {
        assert!(is_not_quic(&[]));
        // Short header, fixed bit clear / set.
        assert!(is_not_quic(&[0x00, 1, 2, 3]));
        assert!(!is_not_quic(&[0x40, 1, 2, 3]));
        // Long header, version 1, fixed bit set / clear.
        assert!(!is_not_quic(&[0xc0, 0, 0, 0, 1, 9]));
        assert!(is_not_quic(&[0x80, 0, 0, 0, 1, 9]));
        // Long header, another version; truncated before the version.
        assert!(is_not_quic(&[0xc0, 0, 0, 0, 2, 9]));
        assert!(is_not_quic(&[0xc0, 0xff, 0, 0, 0x1d]));
        assert!(is_not_quic(&[0xc0, 0, 0]));
        // Version negotiation, whatever its other bits.
        assert!(!is_not_quic(&[0x80, 0, 0, 0, 0, 5]));
    }
}
