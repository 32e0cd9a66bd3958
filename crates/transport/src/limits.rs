//! The transport's bounds and timeouts, each sized for why it exists.

use std::time::Duration;

/// Capacity of the [`Inbound`](crate::Inbound) channel. When full, datagrams are dropped
/// (counted in [`TransportStats::datagrams_dropped_full`](crate::TransportStats::datagrams_dropped_full); SWIM tolerates
/// loss) and stream tasks wait (back-pressure on the sending peer).
pub const INBOUND_QUEUE_CAPACITY: usize = 1024;

/// How long a dial may take, handshake included, before it fails.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection with no traffic (keep-alives included) for this long is
/// closed; a later send dials again.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Keep-alive interval on live connections, well under [`IDLE_TIMEOUT`].
pub const KEEP_ALIVE: Duration = Duration::from_secs(3);

/// Per connection, the unidirectional (broadcast) streams a peer may have
/// open at once; more wait in the peer's `open_uni`. Bounds our per-peer
/// stream tasks and buffered frames (each at most
/// [`patina_wire::FRAME_BYTES_MAX`]).
pub const MAX_UNI_STREAMS_PER_PEER: u32 = 32;

/// Per connection, the bidirectional (sync) streams a peer may have open.
pub const MAX_BI_STREAMS_PER_PEER: u32 = 8;

/// Handshakes in progress at once; further connection attempts are
/// refused by quinn until some complete.
pub const MAX_INCOMING_HANDSHAKES: usize = 256;

/// Peer addresses remembered for connection reuse. Past this, entries
/// without a live connection are forgotten.
pub const PEER_SLOTS_MAX: usize = 4096;

/// How long [`Transport::close`](crate::Transport::close) waits for peers to acknowledge the close.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Connections peers opened to us, open at once, at most: each holds
/// stream tasks and buffers (bounded per connection above). Past it,
/// incoming connections are refused and counted; our own dials are not
/// limited (they go to members, at most [`PEER_SLOTS_MAX`]).
pub const MAX_ACCEPTED_CONNECTIONS: usize = 1024;

/// Accepted connections from one IP address at most: one host opening
/// connections from many ports cannot take every slot. Generous because
/// test clusters and dev setups run many nodes on one address.
pub const MAX_CONNECTIONS_PER_IP: usize = 64;

/// Once a frame's header has arrived, its body must within this long: a
/// peer trickling a 4 MiB frame a byte at a time (keep-alives keep the
/// connection up) would otherwise hold its buffer and stream task for good.
pub const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of inbound frames being read or waiting for the consumer, over
/// all connections: without it, 32 streams per connection each reading a
/// 4 MiB frame would let peers make a node hold gigabytes. A frame waits
/// for its bytes before its body is read (QUIC flow control then pushes
/// back on the peer).
pub const INBOUND_FRAME_BYTES_MAX: usize = 128 << 20;

/// The part of [`INBOUND_FRAME_BYTES_MAX`] one connection may hold, so one
/// peer cannot starve the others.
pub const CONNECTION_FRAME_BYTES_MAX: usize = 16 << 20;
