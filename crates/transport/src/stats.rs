//! The transport's counters: `prometheus_client` counters (shared atomics)
//! that the transport increments where things happen, and that
//! [`TransportStats::register`] exports as `patina_transport_*`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// Counters, monotonically increasing. Read with [`TransportStats::snapshot`],
/// exported with [`TransportStats::register`].
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Datagrams and frames naming another cluster, dropped.
    pub wrong_cluster: Counter,
    /// Datagrams and frames that failed to decode (bad version, truncated,
    /// oversized, garbage), dropped; their streams stopped.
    pub malformed: Counter,
    /// Datagrams dropped because the inbound channel was full.
    pub datagrams_dropped_full: Counter,
    pub datagrams_in: Counter,
    pub datagrams_out: Counter,
    pub frames_in: Counter,
    pub frames_out: Counter,
    /// Bytes of accepted frames and datagrams (headers and tags included).
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// The datagrams' share of `bytes_out` (membership; the rest is
    /// replication's stream frames).
    pub datagram_bytes_out: Counter,
    /// Handshakes that failed or timed out, either direction (refused
    /// certificates, unreachable peers, wrong ALPN).
    pub handshake_failures: Counter,
    pub connections_dialed: Counter,
    pub connections_accepted: Counter,
    /// Streams we stopped because of a refused frame.
    pub streams_refused: Counter,
    /// UDP datagrams that cannot be QUIC packets for us, dropped before
    /// quinn (`screen.rs`).
    pub not_quic: Counter,
    /// Peer certificates our CA signed that do not name this cluster
    /// (`patina://cluster/<name>`): their handshakes failed.
    pub certs_refused: Counter,
    /// Frames whose claimed sender (`Envelope::from`) is not the actor
    /// their connection speaks for; their streams were stopped.
    pub senders_refused: Counter,
    /// Incoming connections refused: `MAX_ACCEPTED_CONNECTIONS` in total or
    /// `MAX_CONNECTIONS_PER_IP` from that host are open already.
    pub connections_refused: Counter,
    /// Streams stopped because a frame took longer than
    /// `FRAME_READ_TIMEOUT` to arrive once its header had.
    pub frames_timed_out: Counter,
    /// Frames that waited for room in the inbound byte budgets.
    pub frames_waited_for_bytes: Counter,
}

/// A copy of [`TransportStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub wrong_cluster: u64,
    pub malformed: u64,
    pub datagrams_dropped_full: u64,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub datagram_bytes_out: u64,
    pub handshake_failures: u64,
    pub connections_dialed: u64,
    pub connections_accepted: u64,
    pub streams_refused: u64,
    pub not_quic: u64,
    pub certs_refused: u64,
    pub senders_refused: u64,
    pub connections_refused: u64,
    pub frames_timed_out: u64,
    pub frames_waited_for_bytes: u64,
}

impl TransportStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            wrong_cluster: self.wrong_cluster.get(),
            malformed: self.malformed.get(),
            datagrams_dropped_full: self.datagrams_dropped_full.get(),
            datagrams_in: self.datagrams_in.get(),
            datagrams_out: self.datagrams_out.get(),
            frames_in: self.frames_in.get(),
            frames_out: self.frames_out.get(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            datagram_bytes_out: self.datagram_bytes_out.get(),
            handshake_failures: self.handshake_failures.get(),
            not_quic: self.not_quic.get(),
            connections_dialed: self.connections_dialed.get(),
            connections_accepted: self.connections_accepted.get(),
            streams_refused: self.streams_refused.get(),
            certs_refused: self.certs_refused.get(),
            senders_refused: self.senders_refused.get(),
            connections_refused: self.connections_refused.get(),
            frames_timed_out: self.frames_timed_out.get(),
            frames_waited_for_bytes: self.frames_waited_for_bytes.get(),
        }
    }

    /// Registers every counter as `transport_<name>` (`_total` is added by
    /// the encoder) in `registry`, which supplies the `patina` prefix and
    /// the `cluster` label. The registry holds handles to the same atomics:
    /// it reads the live values at each scrape.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("transport");
        let counters: [(&str, &str, &Counter); 20] = [
            (
                "wrong_cluster",
                "Datagrams and frames naming another cluster, dropped.",
                &self.wrong_cluster,
            ),
            (
                "malformed",
                "Datagrams and frames that failed to decode, dropped.",
                &self.malformed,
            ),
            (
                "not_quic",
                "UDP datagrams at the gossip port that cannot be QUIC, dropped.",
                &self.not_quic,
            ),
            (
                "datagrams_dropped",
                "Datagrams dropped because the inbound queue was full.",
                &self.datagrams_dropped_full,
            ),
            (
                "datagrams_in",
                "Datagrams received and handed to membership.",
                &self.datagrams_in,
            ),
            ("datagrams_out", "Datagrams sent.", &self.datagrams_out),
            ("frames_in", "Stream frames received.", &self.frames_in),
            ("frames_out", "Stream frames sent.", &self.frames_out),
            (
                "bytes_in",
                "Bytes of accepted frames and datagrams.",
                &self.bytes_in,
            ),
            (
                "bytes_out",
                "Bytes of frames and datagrams sent.",
                &self.bytes_out,
            ),
            (
                "datagram_bytes_out",
                "Bytes of datagrams (membership) sent, part of bytes_out.",
                &self.datagram_bytes_out,
            ),
            (
                "handshake_failures",
                "QUIC handshakes that failed (refused certificates, unreachable peers).",
                &self.handshake_failures,
            ),
            (
                "connections_dialed",
                "QUIC connections this node opened to peers.",
                &self.connections_dialed,
            ),
            (
                "connections_accepted",
                "QUIC connections peers opened to this node.",
                &self.connections_accepted,
            ),
            (
                "streams_refused",
                "Streams stopped because of a refused frame.",
                &self.streams_refused,
            ),
            (
                "certs_refused",
                "Peer certificates signed by our CA refused for not naming this cluster.",
                &self.certs_refused,
            ),
            (
                "senders_refused",
                "Frames refused for claiming another sender than their connection's actor.",
                &self.senders_refused,
            ),
            (
                "connections_refused",
                "Incoming connections refused: 1,024 open in total or 64 from that host.",
                &self.connections_refused,
            ),
            (
                "frames_timed_out",
                "Streams stopped because a frame was still incomplete 30 s after its header.",
                &self.frames_timed_out,
            ),
            (
                "frames_waited_for_bytes",
                "Frames that waited for room in the inbound byte budgets (128 MiB per node, 16 MiB per connection).",
                &self.frames_waited_for_bytes,
            ),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_counters_are_the_live_ones() {
        let stats = TransportStats::default();
        let mut registry = Registry::with_prefix("patina");
        stats.register(registry.sub_registry_with_label(("cluster".into(), "eu".into())));
        stats.connections_dialed.inc();
        stats.datagrams_out.inc_by(3);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("patina_transport_connections_dialed_total{cluster=\"eu\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("patina_transport_datagrams_out_total{cluster=\"eu\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("patina_transport_datagrams_dropped_total{cluster=\"eu\"} 0\n"));
    }
}
