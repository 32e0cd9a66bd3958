//! [`TransportError`]: why a transport operation failed.

use std::net::SocketAddr;

/// Why a transport operation failed. A failed send changes nothing but
/// the counters; the caller may retry (a closed connection is re-dialed).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot bind UDP {addr}: {source}; is the port in use or the address not local?")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
    #[error("TLS file {path}: {why}; check [gossip.tls]")]
    TlsFile {
        path: std::path::PathBuf,
        why: String,
    },
    #[error("TLS setup failed: {0}; check [gossip.tls]")]
    Tls(String),
    #[error("cannot connect to {addr}: {why}; is the peer up, in the same cluster, and does it trust the same CA?")]
    Connect { addr: SocketAddr, why: String },
    #[error("peer {addr} does not accept datagrams; it is not a Patina node of this version")]
    DatagramsUnsupported { addr: SocketAddr },
    #[error("datagram payload of {size} bytes exceeds the {max} bytes the connection to {addr} carries; send less")]
    DatagramTooLarge {
        addr: SocketAddr,
        size: usize,
        max: usize,
    },
    #[error("sending a datagram to {addr} failed: {why}")]
    Datagram { addr: SocketAddr, why: String },
    #[error("stream with {addr} failed: {why}")]
    Stream { addr: SocketAddr, why: String },
    #[error("malformed frame from {addr}: {source}; the stream was stopped")]
    Malformed {
        addr: SocketAddr,
        source: patina_wire::WireError,
    },
    #[error("frame from {addr} is for cluster {cluster:?}, not ours; the stream was stopped. Check that peer's region and bootstrap list")]
    WrongCluster { addr: SocketAddr, cluster: String },
    #[error("frame from {addr} claims sender {claimed}, but that connection speaks for actor {bound}; the stream was stopped. A node sends as its own actor only: is that peer modified or misbehaving?")]
    WrongSender {
        addr: SocketAddr,
        claimed: patina_wire::ActorId,
        bound: patina_wire::ActorId,
    },
    #[error("stream from {addr} was stopped after a refused frame")]
    StreamRefused { addr: SocketAddr },
    #[error("cannot encode a message: {0}")]
    Encode(patina_wire::WireError),
}
