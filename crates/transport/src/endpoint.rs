//! [`Transport`](crate::Transport): one cluster's QUIC endpoint, dialing peers and sending
//! datagrams and frames to them.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use patina_wire::{ActorId, ClusterName, Message};
use quinn::VarInt;
use tokio::sync::mpsc;

use crate::config::TransportConfig;
use crate::connection::{accept_loop, serve_connection, ConnCtx};
use crate::error::TransportError;
use crate::frames::{Frame, FrameReader, FrameWriter};
use crate::inbound::Inbound;
use crate::limits::{
    CLOSE_WAIT, DIAL_TIMEOUT, IDLE_TIMEOUT, INBOUND_QUEUE_CAPACITY, KEEP_ALIVE,
    MAX_BI_STREAMS_PER_PEER, MAX_INCOMING_HANDSHAKES, MAX_UNI_STREAMS_PER_PEER,
};
use crate::peers::{PeerSlot, Peers};
use crate::sender::Senders;
use crate::shared::Shared;
use crate::stats::TransportStats;
use crate::{screen, tls};

#[derive(Debug)]
struct Inner {
    endpoint: quinn::Endpoint,
    advertised: SocketAddr,
    ctx: ConnCtx,
    peers: Arc<Peers>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.endpoint
            .close(VarInt::from_u32(0), b"transport dropped");
    }
}

/// A cheap, clonable handle to one cluster's QUIC endpoint. The endpoint
/// closes when [`Transport::close`](crate::Transport::close) is called or the last handle drops.
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
    /// Binds the endpoint (on `socket` if given, e.g. a [`FaultySocket`](crate::FaultySocket),
    /// else on `cfg.bind`) and starts accepting connections. Must be called
    /// inside a tokio runtime. Inbound traffic arrives on the returned
    /// channel (capacity [`INBOUND_QUEUE_CAPACITY`]).
    pub fn bind(
        cfg: TransportConfig,
        socket: Option<Arc<dyn quinn::AsyncUdpSocket>>,
    ) -> Result<(Transport, mpsc::Receiver<Inbound>), TransportError> {
        let shared = Arc::new(Shared {
            cluster: cfg.cluster,
            actor: cfg.actor,
            stats: TransportStats::default(),
            verified_peers: cfg.tls.as_ref().is_some_and(|f| f.ca_file.is_some()),
            senders: Senders::default(),
            frame_bytes: Arc::new(tokio::sync::Semaphore::new(
                crate::limits::INBOUND_FRAME_BYTES_MAX,
            )),
            wrong_cluster_logged: crate::shared::WarnEvery::new(std::time::Duration::from_secs(60)),
        });
        let tls = tls::configs(
            cfg.tls.as_ref(),
            tls::Local {
                cluster: &shared.cluster,
                actor: shared.actor,
                certs_refused: shared.stats.certs_refused.clone(),
            },
        )?;
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

    /// QUIC's current round-trip estimate to `peer`, when a live connection
    /// to it is cached; `None` otherwise (never dialed, closed, or a dial in
    /// progress). Never dials.
    pub fn rtt(&self, peer: SocketAddr) -> Option<Duration> {
        let slot = self.inner.peers.map().get(&peer).cloned()?;
        let state = slot.state.try_lock().ok()?;
        let conn = state.conn.as_ref()?;
        conn.close_reason().is_none().then(|| conn.rtt())
    }

    /// Closes the connection cached for `peer`, if any, so the next send
    /// dials anew. For a peer known to have restarted at the same address:
    /// its old process's connection looks live here until the idle timeout
    /// (it never answers, and the new process cannot reset it), and every
    /// send and sync with that peer would go into it meanwhile. A dial in
    /// progress is left alone (it reaches the new process).
    pub fn forget(&self, peer: SocketAddr) {
        let Some(slot) = self.inner.peers.map().get(&peer).cloned() else {
            return;
        };
        let Ok(mut state) = slot.state.try_lock() else {
            return;
        };
        if let Some(conn) = state.conn.take() {
            conn.close(VarInt::from_u32(0), b"peer restarted");
        }
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
        shared.stats.datagram_bytes_out.inc_by(len);
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
    /// first frame as [`Inbound::Bi`](crate::Inbound::Bi).
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
        let sender = shared.senders.of(&conn, shared.verified_peers);
        Ok((
            FrameWriter::new(send, to, shared.clone()),
            FrameReader::new(recv, to, shared, sender),
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
                let shared = &self.inner.ctx.shared;
                let sender = shared.senders.admit(&conn, shared.verified_peers);
                tokio::spawn(serve_connection(
                    conn.clone(),
                    self.inner.ctx.clone(),
                    sender,
                ));
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
