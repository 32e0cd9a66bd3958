//! Serving connections: accepting them, reading their datagrams and
//! accepting their streams, and handing what arrives to the consumer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::frames::{FrameReader, FrameWriter};
use crate::inbound::Inbound;
use crate::limits::{MAX_ACCEPTED_CONNECTIONS, MAX_CONNECTIONS_PER_IP};
use crate::peers::Peers;
use crate::sender::PeerSender;
use crate::shared::Shared;

/// Serves connections: reads their datagrams and accepts their streams.
#[derive(Debug, Clone)]
pub(crate) struct ConnCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) inbound: mpsc::Sender<Inbound>,
}

pub(crate) async fn accept_loop(endpoint: quinn::Endpoint, ctx: ConnCtx, peers: Arc<Peers>) {
    let slots = Arc::new(Slots::default());
    while let Some(incoming) = endpoint.accept().await {
        let from = incoming.remote_address();
        let Some(slot) = Slots::admit(&slots, from.ip()) else {
            ctx.shared.stats.connections_refused.inc();
            tracing::debug!(peer = %from, "incoming connection refused: too many open");
            incoming.refuse();
            continue;
        };
        let ctx = ctx.clone();
        let peers = Arc::clone(&peers);
        tokio::spawn(async move {
            // Held while the connection is served.
            let _slot = slot;
            match incoming.await {
                Ok(conn) => {
                    ctx.shared.stats.connections_accepted.inc();
                    let sender = ctx.shared.senders.admit(&conn, ctx.shared.verified_peers);
                    peers.offer_accepted(from, &conn);
                    serve_connection(conn, ctx, sender).await;
                }
                Err(e) => {
                    ctx.shared.stats.handshake_failures.inc();
                    tracing::debug!(peer = %from, error = %e, "incoming handshake failed");
                }
            }
        });
    }
}

/// Accepted connections open, in total and per IP address.
#[derive(Debug, Default)]
struct Slots {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One accepted connection's place in [`Slots`], given back on drop.
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Slots {
    fn admit(slots: &Arc<Slots>, ip: IpAddr) -> Option<Slot> {
        let mut open = slots.open.lock().unwrap_or_else(|e| e.into_inner());
        let of_ip = open.1.get(&ip).copied().unwrap_or(0);
        if open.0 >= MAX_ACCEPTED_CONNECTIONS || of_ip >= MAX_CONNECTIONS_PER_IP {
            return None;
        }
        open.0 += 1;
        *open.1.entry(ip).or_default() += 1;
        Some(Slot {
            slots: Arc::clone(slots),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

/// Reads one connection's datagrams and accepts its streams until it
/// closes. Stream tasks are bounded by the per-connection stream limits.
/// `sender` is the connection's entry in `Shared::senders`, which is
/// removed when the connection is done.
pub(crate) async fn serve_connection(
    conn: quinn::Connection,
    ctx: ConnCtx,
    sender: Arc<PeerSender>,
) {
    let from = conn.remote_address();
    loop {
        tokio::select! {
            datagram = conn.read_datagram() => match datagram {
                Ok(bytes) => ctx.on_datagram(from, bytes),
                Err(_) => break,
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    tokio::spawn(ctx.clone().serve_uni(from, recv, Arc::clone(&sender)));
                }
                Err(_) => break,
            },
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    tokio::spawn(ctx.clone().serve_bi(from, send, recv, Arc::clone(&sender)));
                }
                Err(_) => break,
            },
        }
    }
    ctx.shared.senders.forget(&conn, &sender);
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
                if self.shared.wrong_cluster_logged.due() {
                    tracing::warn!(
                        peer = %from,
                        their_cluster = %d.cluster,
                        "a node of cluster {:?} at {from} sends to this {:?} port: its bootstrap list \
                         names this node by mistake (another region's gossip port, or a \
                         global_gossip port given as gossip); dropped and counted \
                         (patina_transport_wrong_cluster_total), logged once a minute",
                        d.cluster.as_str(),
                        self.shared.cluster.as_str()
                    );
                } else {
                    tracing::debug!(peer = %from, cluster = %d.cluster, "datagram of another cluster dropped");
                }
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

    async fn serve_uni(self, from: SocketAddr, recv: quinn::RecvStream, sender: Arc<PeerSender>) {
        let mut reader = FrameReader::new(recv, from, self.shared.clone(), sender);
        // Errors are counted by the reader; the stream is then done.
        while let Ok(Some(envelope)) = reader.next().await {
            let bytes = reader.take_bytes();
            if self
                .inbound
                .send(Inbound::Frames {
                    from,
                    envelope,
                    bytes,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    }

    async fn serve_bi(
        self,
        from: SocketAddr,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        sender: Arc<PeerSender>,
    ) {
        let mut reader = FrameReader::new(recv, from, self.shared.clone(), sender);
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
