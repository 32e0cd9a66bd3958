//! [`Inbound`](crate::Inbound): what the transport hands its consumer.

use std::net::SocketAddr;

use bytes::Bytes;
use patina_wire::Envelope;

use crate::frames::{FrameReader, FrameWriter};

/// What the transport received, in arrival order per stream.
#[derive(Debug)]
pub enum Inbound {
    /// A datagram of our cluster; `payload` is what the sender passed to
    /// [`Transport::send_datagram`](crate::Transport::send_datagram).
    Datagram { from: SocketAddr, payload: Bytes },
    /// One frame of a unidirectional stream.
    Frames {
        from: SocketAddr,
        envelope: Envelope,
    },
    /// A bidirectional stream opened by a peer, with its first frame.
    Bi {
        from: SocketAddr,
        first: Envelope,
        writer: FrameWriter,
        reader: FrameReader,
    },
}
