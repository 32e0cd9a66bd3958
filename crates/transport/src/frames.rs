//! Length-prefixed [`patina_wire::Envelope`] frames on QUIC streams.

use std::net::SocketAddr;
use std::sync::Arc;

use patina_wire::{Envelope, Message, FRAME_HEADER_BYTES};
use quinn::VarInt;

use crate::error::TransportError;
use crate::limits::FRAME_READ_TIMEOUT;
use crate::sender::PeerSender;
use crate::shared::Shared;

/// Application error code sent (STOP_SENDING) when a stream carried a frame
/// we refuse: malformed, oversized, truncated, or of another cluster.
pub const STREAM_REFUSED: VarInt = VarInt::from_u32(1);

/// The most body bytes read from QUIC per call: a frame's buffer grows by
/// what actually arrived, so a peer announcing a 4 MiB frame and sending
/// nothing costs us nothing.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Reads frames from one stream, checking each: the header's length against
/// [`patina_wire::FRAME_BYTES_MAX`] before anything is buffered, the body's
/// encoding, the cluster name, and the claimed sender (the actor the
/// connection speaks for, `sender.rs`). A refused frame is counted in
/// [`super::TransportStats`], the stream is stopped, and every later call
/// returns [`TransportError::StreamRefused`].
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    from: SocketAddr,
    shared: Arc<Shared>,
    sender: Arc<PeerSender>,
    refused: bool,
    /// The inbound bytes the last frame holds, until the next frame or
    /// until [`take_bytes`](Self::take_bytes) hands them on with it.
    bytes: Option<FrameBytes>,
}

/// A frame's share of the inbound byte budgets (the node's and its
/// connection's), given back when dropped.
#[derive(Debug)]
pub struct FrameBytes {
    _node: tokio::sync::OwnedSemaphorePermit,
    _connection: tokio::sync::OwnedSemaphorePermit,
}

impl FrameReader {
    pub(crate) fn new(
        recv: quinn::RecvStream,
        from: SocketAddr,
        shared: Arc<Shared>,
        sender: Arc<PeerSender>,
    ) -> Self {
        FrameReader {
            recv,
            from,
            shared,
            sender,
            refused: false,
            bytes: None,
        }
    }

    /// The budget share of the frame [`next`](Self::next) returned last:
    /// whoever keeps the frame keeps it.
    pub(crate) fn take_bytes(&mut self) -> Option<FrameBytes> {
        self.bytes.take()
    }

    /// Waits until the node's and this connection's inbound budgets have
    /// room for `len` bytes.
    async fn reserve(&mut self, len: usize) -> Result<FrameBytes, TransportError> {
        let n = len as u32;
        let connection = Arc::clone(&self.sender.frame_bytes);
        let node = Arc::clone(&self.shared.frame_bytes);
        let closed = |_| TransportError::StreamRefused { addr: self.from };
        let (c, t) = match (
            Arc::clone(&connection).try_acquire_many_owned(n),
            Arc::clone(&node).try_acquire_many_owned(n),
        ) {
            (Ok(c), Ok(t)) => (c, t),
            (c, t) => {
                self.shared.stats.frames_waited_for_bytes.inc();
                let c = match c {
                    Ok(c) => c,
                    Err(_) => connection.acquire_many_owned(n).await.map_err(closed)?,
                };
                let t = match t {
                    Ok(t) => t,
                    Err(_) => node.acquire_many_owned(n).await.map_err(closed)?,
                };
                (c, t)
            }
        };
        Ok(FrameBytes {
            _node: t,
            _connection: c,
        })
    }

    /// The peer this stream comes from.
    pub fn peer(&self) -> SocketAddr {
        self.from
    }

    /// The next frame, or `None` when the peer finished the stream at a
    /// frame boundary.
    pub async fn next(&mut self) -> Result<Option<Envelope>, TransportError> {
        if self.refused {
            return Err(TransportError::StreamRefused { addr: self.from });
        }
        let mut header = [0u8; FRAME_HEADER_BYTES];
        let mut got = 0;
        while got < FRAME_HEADER_BYTES {
            match self.recv.read(&mut header[got..]).await {
                Ok(Some(n)) => got += n,
                Ok(None) if got == 0 => return Ok(None),
                Ok(None) => return Err(self.refuse(patina_wire::WireError::Truncated)),
                Err(e) => return Err(self.stream_error(e)),
            }
        }
        let len = patina_wire::frame_body_len(header).map_err(|e| self.refuse(e))?;
        // The last frame's share goes back before this one waits for its own.
        self.bytes = None;
        let bytes = self.reserve(FRAME_HEADER_BYTES + len).await?;
        // Grows with what arrives, never past `len` (checked above).
        let mut body = Vec::with_capacity(len.min(READ_CHUNK_BYTES));
        let deadline = tokio::time::Instant::now() + FRAME_READ_TIMEOUT;
        while body.len() < len {
            let want = (len - body.len()).min(READ_CHUNK_BYTES);
            let read = tokio::time::timeout_at(deadline, self.recv.read_chunk(want, true));
            match read.await {
                Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk.bytes),
                Ok(Ok(None)) => return Err(self.refuse(patina_wire::WireError::Truncated)),
                Ok(Err(e)) => return Err(self.stream_error(e)),
                Err(_) => {
                    self.shared.stats.frames_timed_out.inc();
                    self.stop();
                    tracing::debug!(peer = %self.from, len, "a frame still incomplete {FRAME_READ_TIMEOUT:?} after its header; stream stopped");
                    return Err(TransportError::StreamRefused { addr: self.from });
                }
            }
        }
        let envelope = patina_wire::decode_frame_body(&body).map_err(|e| self.refuse(e))?;
        if envelope.cluster != self.shared.cluster {
            self.shared.stats.wrong_cluster.inc();
            self.stop();
            tracing::debug!(peer = %self.from, cluster = %envelope.cluster, "frame of another cluster dropped");
            return Err(TransportError::WrongCluster {
                addr: self.from,
                cluster: envelope.cluster.to_string(),
            });
        }
        if let Err(bound) = self.sender.check(envelope.from) {
            self.shared.stats.senders_refused.inc();
            self.stop();
            tracing::warn!(
                peer = %self.from,
                node = self.sender.node.as_deref().unwrap_or("<unauthenticated>"),
                claimed = %envelope.from,
                connection_actor = %bound,
                "refused a frame claiming another sender than its connection's actor; stream stopped"
            );
            return Err(TransportError::WrongSender {
                addr: self.from,
                claimed: envelope.from,
                bound,
            });
        }
        self.bytes = Some(bytes);
        self.shared.stats.frames_in.inc();
        self.shared
            .stats
            .bytes_in
            .inc_by((FRAME_HEADER_BYTES + len) as u64);
        Ok(Some(envelope))
    }

    fn stop(&mut self) {
        self.refused = true;
        self.shared.stats.streams_refused.inc();
        // Fails only if the stream is already gone, which is what we want.
        let _ = self.recv.stop(STREAM_REFUSED);
    }

    fn refuse(&mut self, why: patina_wire::WireError) -> TransportError {
        self.shared.stats.malformed.inc();
        self.stop();
        tracing::debug!(peer = %self.from, error = %why, "malformed frame; stream stopped");
        TransportError::Malformed {
            addr: self.from,
            source: why,
        }
    }

    fn stream_error(&self, e: quinn::ReadError) -> TransportError {
        TransportError::Stream {
            addr: self.from,
            why: e.to_string(),
        }
    }
}

/// Writes frames on one stream, each an [`Envelope`] naming our cluster and
/// actor.
#[derive(Debug)]
pub struct FrameWriter {
    send: quinn::SendStream,
    to: SocketAddr,
    shared: Arc<Shared>,
}

impl FrameWriter {
    pub(crate) fn new(send: quinn::SendStream, to: SocketAddr, shared: Arc<Shared>) -> Self {
        FrameWriter { send, to, shared }
    }

    /// The peer this stream goes to.
    pub fn peer(&self) -> SocketAddr {
        self.to
    }

    /// Sends one message; waits while the peer's flow control window is
    /// full (back-pressure from a slow reader).
    pub async fn send(&mut self, message: Message) -> Result<(), TransportError> {
        let frame = Frame::encode(&self.shared, message)?;
        self.send_frame(&frame).await
    }

    /// Sends a frame encoded earlier (once for every peer it goes to).
    pub async fn send_frame(&mut self, frame: &Frame) -> Result<(), TransportError> {
        // Bytes are shared, not copied: one encoding serves every stream.
        self.send
            .write_chunk(frame.0.clone())
            .await
            .map_err(|e| TransportError::Stream {
                addr: self.to,
                why: e.to_string(),
            })?;
        self.shared.stats.frames_out.inc();
        self.shared.stats.bytes_out.inc_by(frame.0.len() as u64);
        Ok(())
    }

    /// Sends raw bytes, bypassing the encoder: for tests that play a broken
    /// or hostile peer.
    #[doc(hidden)]
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        self.send
            .write_all(bytes)
            .await
            .map_err(|e| TransportError::Stream {
                addr: self.to,
                why: e.to_string(),
            })
    }

    /// Ends the stream: the peer's reader sees `None` after the last frame.
    pub fn finish(mut self) -> Result<(), TransportError> {
        self.send.finish().map_err(|e| TransportError::Stream {
            addr: self.to,
            why: e.to_string(),
        })
    }

    /// Ends the stream and waits until the peer has read everything (or
    /// stopped the stream). Bounded by the connection's idle timeout.
    pub async fn finish_and_wait(mut self) -> Result<(), TransportError> {
        let to = self.to;
        let err = |e: &dyn std::fmt::Display| TransportError::Stream {
            addr: to,
            why: e.to_string(),
        };
        self.send.finish().map_err(|e| err(&e))?;
        match self.send.stopped().await {
            Ok(None) => Ok(()),
            Ok(Some(code)) => Err(err(&format!("peer stopped the stream (code {code})"))),
            Err(e) => Err(err(&e)),
        }
    }
}

/// One message in its envelope (this node's cluster and actor), encoded:
/// what a broadcast sends to several peers, encoded once.
#[derive(Debug, Clone)]
pub struct Frame(bytes::Bytes);

impl Frame {
    pub(crate) fn encode(shared: &Shared, message: Message) -> Result<Frame, TransportError> {
        let envelope = Envelope {
            cluster: shared.cluster.clone(),
            from: shared.actor,
            message,
        };
        let bytes = patina_wire::encode_frame(&envelope).map_err(TransportError::Encode)?;
        Ok(Frame(bytes.into()))
    }
}
