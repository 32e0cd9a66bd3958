//! `patina-transport`: the QUIC transport of one cluster on one node. It
//! knows frames and datagrams, never what they mean (no protocol decisions,
//! no databases). One cluster on one node: one [`quinn::Endpoint`],
//! connections cached per peer address, stream frames and datagrams in and
//! out, all tagged with the cluster name.
//!
//! Traffic in (see [`Inbound`]):
//! - datagrams (SWIM packets): decoded, checked, then offered to the
//!   inbound channel without waiting; dropped and counted when it is full;
//! - unidirectional streams (broadcast): each frame is delivered as
//!   [`Inbound::Frames`]; a full channel makes the stream's task wait, which
//!   QUIC flow control turns into back-pressure on the sender;
//! - bidirectional streams (sync): the first frame is delivered with the
//!   stream's [`FrameWriter`] and [`FrameReader`].
//!
//! Isolation: anything naming another cluster is dropped and counted
//! ([`TransportStats::wrong_cluster`]), as is anything malformed
//! ([`TransportStats::malformed`]); a stream carrying such a frame is
//! stopped. Nothing a peer sends can panic the transport.
//!
//! Trust: with mutual TLS a peer's certificate must chain to the CA and
//! name the cluster (`patina://cluster/<name>`, [`identity`]); a frame's
//! claimed sender must be the actor its connection speaks for (`sender.rs`).
//! [`CertAuthority`] issues such certificates.
//!
//! Datagrams reach the consumer as [`Inbound::Datagram`]; the node's
//! cluster runtime forwards them to membership, or uses
//! `patina_membership::route_datagrams` to do so.

mod certs;
mod config;
mod connection;
mod endpoint;
mod error;
mod faults;
mod frames;
mod identity;
mod inbound;
mod limits;
mod peers;
mod screen;
mod sender;
mod shared;
mod stats;
mod tls;

pub use certs::{valid_node_name, CertAuthority, CertError, IssuedCert, NodeCertRequest};
pub use config::TransportConfig;
pub use endpoint::Transport;
pub use error::TransportError;
pub use faults::{FaultHandle, FaultySocket, DELAYED_PACKETS_MAX};
pub use frames::{Frame, FrameBytes, FrameReader, FrameWriter, STREAM_REFUSED};
pub use identity::{
    cluster_uri, CertIdentity, ACTOR_URI_PREFIX, CLUSTER_URI_PREFIX, NODE_URI_PREFIX,
};
pub use inbound::Inbound;
pub use limits::{
    DIAL_TIMEOUT, FRAME_READ_TIMEOUT, IDLE_TIMEOUT, INBOUND_QUEUE_CAPACITY, KEEP_ALIVE,
    MAX_ACCEPTED_CONNECTIONS, MAX_BI_STREAMS_PER_PEER, MAX_CONNECTIONS_PER_IP,
    MAX_INCOMING_HANDSHAKES, MAX_UNI_STREAMS_PER_PEER, PEER_SLOTS_MAX,
};
/// The socket seam [`Transport::bind`] accepts (e.g. a [`FaultySocket`]).
pub use quinn::AsyncUdpSocket;
pub use stats::{StatsSnapshot, TransportStats};
pub use tls::{TlsFiles, ALPN};
