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
//! Datagrams reach the consumer as [`Inbound::Datagram`]; the node's
//! cluster runtime forwards them to membership, or uses
//! `patina_membership::route_datagrams` to do so.

mod faults;
mod frames;
mod screen;
mod stats;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use patina_wire::{ActorId, ClusterName, Envelope, Message};
use quinn::VarInt;
use tokio::sync::mpsc;

pub use faults::{FaultHandle, FaultySocket, DELAYED_PACKETS_MAX};
pub use frames::{Frame, FrameReader, FrameWriter, STREAM_REFUSED};
/// The socket seam [`Transport::bind`] accepts (e.g. a [`FaultySocket`]).
pub use quinn::AsyncUdpSocket;
pub use stats::{StatsSnapshot, TransportStats};
pub use tls::{TlsFiles, ALPN};

/// Capacity of the [`Inbound`] channel. When full, datagrams are dropped
/// (counted in [`TransportStats::datagrams_dropped_full`]; SWIM tolerates
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

/// How long [`Transport::close`] waits for peers to acknowledge the close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What a [`Transport`] needs: `[gossip]` (or `[global_gossip]`) plus the
/// node's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// UDP address to bind (ignored when a socket is handed to
    /// [`Transport::bind`]).
    pub bind: SocketAddr,
    /// What peers should dial, when not the bound address.
    pub external_addr: Option<SocketAddr>,
    pub cluster: ClusterName,
    pub actor: ActorId,
    /// `None`: self-signed certificate, peers not verified (dev only).
    pub tls: Option<TlsFiles>,
}

/// What the transport received, in arrival order per stream.
#[derive(Debug)]
pub enum Inbound {
    /// A datagram of our cluster; `payload` is what the sender passed to
    /// [`Transport::send_datagram`].
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
    #[error("stream from {addr} was stopped after a refused frame")]
    StreamRefused { addr: SocketAddr },
    #[error("cannot encode a message: {0}")]
    Encode(patina_wire::WireError),
}

/// What every connection and stream task needs.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cluster: ClusterName,
    pub actor: ActorId,
    pub stats: TransportStats,
}

/// Serves connections: reads their datagrams and accepts their streams.
#[derive(Debug, Clone)]
struct ConnCtx {
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Inbound>,
}

/// One peer address's connection, and the dial in progress if any: the
/// tokio mutex makes concurrent dials to one peer share one attempt.
#[derive(Debug, Default)]
struct PeerSlot {
    /// Dials completed (success or failure); a caller that waited on the
    /// lock while another dialed sees it changed and takes that result.
    dials: AtomicU64,
    state: tokio::sync::Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    conn: Option<quinn::Connection>,
    last_error: Option<String>,
    /// `datagram_send_buffer_space()` of the fresh connection, i.e. with
    /// nothing queued: [`Transport::flush_datagrams`] waits for it.
    empty_datagram_space: usize,
}

#[derive(Debug)]
struct Inner {
    endpoint: quinn::Endpoint,
    advertised: SocketAddr,
    ctx: ConnCtx,
    peers: Arc<Peers>,
}

/// The connection to use for each peer address: dialed by us, or accepted
/// from a peer whose address it is (one connection per pair serves both
/// directions).
#[derive(Debug, Default)]
struct Peers(Mutex<HashMap<SocketAddr, Arc<PeerSlot>>>);

impl Peers {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<PeerSlot>>> {
        // A poisoned lock only means another thread panicked mid-insert;
        // the map itself is still consistent.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn slot(&self, to: SocketAddr) -> Arc<PeerSlot> {
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
    fn offer_accepted(&self, from: SocketAddr, conn: &quinn::Connection) {
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

impl Drop for Inner {
    fn drop(&mut self) {
        self.endpoint
            .close(VarInt::from_u32(0), b"transport dropped");
    }
}

/// A cheap, clonable handle to one cluster's QUIC endpoint. The endpoint
/// closes when [`Transport::close`] is called or the last handle drops.
#[derive(Debug, Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

fn quic_transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // 10 s fits in a QUIC varint of milliseconds, so this cannot fail.
    t.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS_PER_PEER));
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_BI_STREAMS_PER_PEER));
    Arc::new(t)
}

impl Transport {
    /// Binds the endpoint (on `socket` if given, e.g. a [`FaultySocket`],
    /// else on `cfg.bind`) and starts accepting connections. Must be called
    /// inside a tokio runtime. Inbound traffic arrives on the returned
    /// channel (capacity [`INBOUND_QUEUE_CAPACITY`]).
    pub fn bind(
        cfg: TransportConfig,
        socket: Option<Arc<dyn quinn::AsyncUdpSocket>>,
    ) -> Result<(Transport, mpsc::Receiver<Inbound>), TransportError> {
        let tls = tls::configs(cfg.tls.as_ref())?;
        let transport_config = quic_transport_config();
        let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.server)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server
            .transport_config(transport_config.clone())
            .max_incoming(MAX_INCOMING_HANDSHAKES);
        let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.client)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport_config);

        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let mut endpoint_config = quinn::EndpointConfig::default();
        // Peers then always set the fixed bit, which lets `screen.rs` tell
        // garbage from QUIC.
        endpoint_config.grease_quic_bit(false);
        let shared = Arc::new(Shared {
            cluster: cfg.cluster,
            actor: cfg.actor,
            stats: TransportStats::default(),
        });
        let socket = match socket {
            Some(socket) => socket,
            None => {
                let udp =
                    std::net::UdpSocket::bind(cfg.bind).map_err(|source| TransportError::Bind {
                        addr: cfg.bind,
                        source,
                    })?;
                runtime
                    .wrap_udp_socket(udp)
                    .map_err(TransportError::Endpoint)?
            }
        };
        let socket = Arc::new(screen::ScreeningSocket::new(socket, Arc::clone(&shared)));
        let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server),
            socket,
            runtime,
        )
        .map_err(TransportError::Endpoint)?;
        endpoint.set_default_client_config(client);
        let local = endpoint.local_addr().map_err(TransportError::Endpoint)?;
        let advertised = cfg.external_addr.unwrap_or(local);
        if advertised.ip().is_unspecified() {
            tracing::warn!(%advertised, "bound to an unspecified address without external_addr: peers cannot dial what this node advertises");
        }

        let (tx, rx) = mpsc::channel(INBOUND_QUEUE_CAPACITY);
        let ctx = ConnCtx {
            shared,
            inbound: tx,
        };
        let peers = Arc::new(Peers::default());
        tokio::spawn(accept_loop(
            endpoint.clone(),
            ctx.clone(),
            Arc::clone(&peers),
        ));
        let inner = Inner {
            endpoint,
            advertised,
            ctx,
            peers,
        };
        Ok((
            Transport {
                inner: Arc::new(inner),
            },
            rx,
        ))
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        // The socket was bound at construction; its address does not change
        // (we never rebind), so the error branch is unreachable in practice.
        self.inner
            .endpoint
            .local_addr()
            .unwrap_or(self.inner.advertised)
    }

    /// The address peers should dial: `external_addr`, else the bound one.
    pub fn advertised_addr(&self) -> SocketAddr {
        self.inner.advertised
    }

    pub fn cluster(&self) -> &ClusterName {
        &self.inner.ctx.shared.cluster
    }

    pub fn actor(&self) -> ActorId {
        self.inner.ctx.shared.actor
    }

    pub fn stats(&self) -> &TransportStats {
        &self.inner.ctx.shared.stats
    }

    /// Sends `payload` as one QUIC datagram tagged with our cluster.
    /// Unreliable: it may be lost, and is dropped by quinn if its send
    /// buffer is full. Fails if the payload does not fit the connection's
    /// current maximum datagram size.
    pub async fn send_datagram(
        &self,
        to: SocketAddr,
        payload: &[u8],
    ) -> Result<(), TransportError> {
        let conn = self.connection(to).await?;
        let shared = &self.inner.ctx.shared;
        let max = conn
            .max_datagram_size()
            .ok_or(TransportError::DatagramsUnsupported { addr: to })?;
        let overhead = patina_wire::datagram_overhead(&shared.cluster);
        if payload.len() + overhead > max {
            return Err(TransportError::DatagramTooLarge {
                addr: to,
                size: payload.len(),
                max: max.saturating_sub(overhead),
            });
        }
        let bytes = patina_wire::encode_datagram(&shared.cluster, payload);
        let len = bytes.len() as u64;
        conn.send_datagram(Bytes::from(bytes))
            .map_err(|e| TransportError::Datagram {
                addr: to,
                why: e.to_string(),
            })?;
        shared.stats.datagrams_out.inc();
        shared.stats.bytes_out.inc_by(len);
        Ok(())
    }

    /// Sends `messages` in order on one new unidirectional stream, then
    /// finishes it. Returns once the frames are queued on the stream (QUIC
    /// then delivers them reliably while the connection lives).
    pub async fn send_frames(
        &self,
        to: SocketAddr,
        messages: Vec<Message>,
    ) -> Result<(), TransportError> {
        let frames = messages
            .into_iter()
            .map(|m| self.encode(m))
            .collect::<Result<Vec<_>, _>>()?;
        self.send_encoded(to, &frames).await
    }

    /// Encodes `message` in this node's envelope, for
    /// [`send_encoded`](Self::send_encoded).
    pub fn encode(&self, message: Message) -> Result<Frame, TransportError> {
        Frame::encode(&self.inner.ctx.shared, message)
    }

    /// [`send_frames`](Self::send_frames) for frames already encoded.
    pub async fn send_encoded(
        &self,
        to: SocketAddr,
        frames: &[Frame],
    ) -> Result<(), TransportError> {
        let conn = self.connection(to).await?;
        let send = conn.open_uni().await.map_err(|e| TransportError::Stream {
            addr: to,
            why: e.to_string(),
        })?;
        let mut writer = FrameWriter::new(send, to, self.inner.ctx.shared.clone());
        for frame in frames {
            writer.send_frame(frame).await?;
        }
        writer.finish()
    }

    /// Opens a request/response stream to `to`. The peer receives our
    /// first frame as [`Inbound::Bi`].
    pub async fn open_bi(
        &self,
        to: SocketAddr,
    ) -> Result<(FrameWriter, FrameReader), TransportError> {
        let conn = self.connection(to).await?;
        let (send, recv) = conn.open_bi().await.map_err(|e| TransportError::Stream {
            addr: to,
            why: e.to_string(),
        })?;
        let shared = self.inner.ctx.shared.clone();
        Ok((
            FrameWriter::new(send, to, shared.clone()),
            FrameReader::new(recv, to, shared),
        ))
    }

    /// Closes every connection and the endpoint, waiting up to 2 s for
    /// peers to hear of it. Later sends fail.
    pub async fn close(&self) {
        self.inner
            .endpoint
            .close(VarInt::from_u32(0), b"node shutting down");
        let _ = tokio::time::timeout(CLOSE_WAIT, self.inner.endpoint.wait_idle()).await;
    }

    /// Waits until every cached connection has handed its queued datagrams
    /// to the socket, or `timeout` passes. For a node about to close after
    /// a last word (SWIM's leave): closing discards queued datagrams.
    pub async fn flush_datagrams(&self, timeout: Duration) {
        const POLL: Duration = Duration::from_millis(5);
        let slots: Vec<Arc<PeerSlot>> = { self.inner.peers.map().values().cloned().collect() };
        let deadline = tokio::time::Instant::now() + timeout;
        for slot in slots {
            let (conn, empty) = {
                let state = slot.state.lock().await;
                match &state.conn {
                    Some(c) if c.close_reason().is_none() => {
                        (c.clone(), state.empty_datagram_space)
                    }
                    _ => continue,
                }
            };
            while conn.datagram_send_buffer_space() < empty && conn.close_reason().is_none() {
                if tokio::time::Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// The live connection to `to`, dialing if there is none. Concurrent
    /// callers for one peer share one dial and its outcome.
    async fn connection(&self, to: SocketAddr) -> Result<quinn::Connection, TransportError> {
        let slot = self.slot(to);
        let seen = slot.dials.load(Relaxed);
        let mut state = slot.state.lock().await;
        if let Some(conn) = &state.conn {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        if slot.dials.load(Relaxed) != seen {
            if let Some(why) = &state.last_error {
                return Err(TransportError::Connect {
                    addr: to,
                    why: why.clone(),
                });
            }
        }
        let result = self.dial(to).await;
        slot.dials.fetch_add(1, Relaxed);
        match &result {
            Ok(conn) => {
                state.conn = Some(conn.clone());
                state.last_error = None;
                state.empty_datagram_space = conn.datagram_send_buffer_space();
            }
            Err(e) => {
                state.conn = None;
                state.last_error = Some(e.to_string());
            }
        }
        result
    }

    fn slot(&self, to: SocketAddr) -> Arc<PeerSlot> {
        self.inner.peers.slot(to)
    }

    async fn dial(&self, to: SocketAddr) -> Result<quinn::Connection, TransportError> {
        let stats = &self.inner.ctx.shared.stats;
        let connecting = self
            .inner
            .endpoint
            .connect(to, tls::SERVER_NAME)
            .map_err(|e| TransportError::Connect {
                addr: to,
                why: e.to_string(),
            })?;
        let why = match tokio::time::timeout(DIAL_TIMEOUT, connecting).await {
            Ok(Ok(conn)) => {
                stats.connections_dialed.inc();
                tokio::spawn(serve_connection(conn.clone(), self.inner.ctx.clone()));
                return Ok(conn);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no handshake within {} s", DIAL_TIMEOUT.as_secs()),
        };
        stats.handshake_failures.inc();
        tracing::debug!(peer = %to, %why, "dial failed");
        Err(TransportError::Connect { addr: to, why })
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, ctx: ConnCtx, peers: Arc<Peers>) {
    while let Some(incoming) = endpoint.accept().await {
        let ctx = ctx.clone();
        let peers = Arc::clone(&peers);
        tokio::spawn(async move {
            let from = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    ctx.shared.stats.connections_accepted.inc();
                    peers.offer_accepted(from, &conn);
                    serve_connection(conn, ctx).await;
                }
                Err(e) => {
                    ctx.shared.stats.handshake_failures.inc();
                    tracing::debug!(peer = %from, error = %e, "incoming handshake failed");
                }
            }
        });
    }
}

/// Reads one connection's datagrams and accepts its streams until it
/// closes. Stream tasks are bounded by the per-connection stream limits.
async fn serve_connection(conn: quinn::Connection, ctx: ConnCtx) {
    let from = conn.remote_address();
    loop {
        tokio::select! {
            datagram = conn.read_datagram() => match datagram {
                Ok(bytes) => ctx.on_datagram(from, bytes),
                Err(_) => break,
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    tokio::spawn(ctx.clone().serve_uni(from, recv));
                }
                Err(_) => break,
            },
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    tokio::spawn(ctx.clone().serve_bi(from, send, recv));
                }
                Err(_) => break,
            },
        }
    }
}

impl ConnCtx {
    fn on_datagram(&self, from: SocketAddr, bytes: Bytes) {
        let stats = &self.shared.stats;
        let payload_len = match patina_wire::decode_datagram(&bytes) {
            Err(e) => {
                stats.malformed.inc();
                tracing::debug!(peer = %from, error = %e, "malformed datagram dropped");
                return;
            }
            Ok(d) if d.cluster != self.shared.cluster => {
                stats.wrong_cluster.inc();
                tracing::debug!(peer = %from, cluster = %d.cluster, "datagram of another cluster dropped");
                return;
            }
            Ok(d) => d.payload.len(),
        };
        let total = bytes.len();
        // The payload is the datagram's tail: slice it without copying.
        let payload = bytes.slice(total - payload_len..);
        match self.inbound.try_send(Inbound::Datagram { from, payload }) {
            Ok(()) => {
                stats.datagrams_in.inc();
                stats.bytes_in.inc_by(total as u64);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                stats.datagrams_dropped_full.inc();
            }
            // Nobody listens any more: the node is shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    async fn serve_uni(self, from: SocketAddr, recv: quinn::RecvStream) {
        let mut reader = FrameReader::new(recv, from, self.shared.clone());
        // Errors are counted by the reader; the stream is then done.
        while let Ok(Some(envelope)) = reader.next().await {
            if self
                .inbound
                .send(Inbound::Frames { from, envelope })
                .await
                .is_err()
            {
                return;
            }
        }
    }

    async fn serve_bi(self, from: SocketAddr, send: quinn::SendStream, recv: quinn::RecvStream) {
        let mut reader = FrameReader::new(recv, from, self.shared.clone());
        let Ok(Some(first)) = reader.next().await else {
            return;
        };
        let writer = FrameWriter::new(send, from, self.shared.clone());
        let _ = self
            .inbound
            .send(Inbound::Bi {
                from,
                first,
                writer,
                reader,
            })
            .await;
    }
}
