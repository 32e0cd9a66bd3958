//! [`Inbound`](crate::Inbound): what the transport hands its consumer.

use std::net::SocketAddr;

use bytes::Bytes;
use patina_wire::Envelope;

use crate::frames::{FrameBytes, FrameReader, FrameWriter};

/// What the transport received, in arrival order per stream.
#[derive(Debug)]
pub enum Inbound {
    /// A datagram of our cluster; `payload` is what the sender passed to
    /// [`Transport::send_datagram`](crate::Transport::send_datagram).
    Datagram { from: SocketAddr, payload: Bytes },
    /// One frame of a unidirectional stream. It holds its share of the
    /// inbound byte budget until the event is dropped.
    Frames {
        from: SocketAddr,
        envelope: Envelope,
        bytes: Option<FrameBytes>,
    },
    /// A bidirectional stream opened by a peer, with its first frame.
    Bi {
        from: SocketAddr,
        first: Envelope,
        writer: FrameWriter,
        reader: FrameReader,
    },
}
