//! The QUIC transport between real sockets on 127.0.0.1: delivery both
//! ways, isolation by cluster name, hostile input, mutual TLS, and delivery
//! through injected faults.

use std::future::ready;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use patina_testkit::eventually;
use patina_testkit::tls::{node_tls, Ca};
use patina_transport::{
    FaultySocket, Inbound, StatsSnapshot, TlsFiles, Transport, TransportConfig,
};
use patina_wire::{ActorId, ClusterName, Message};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn config(cluster: &str, tls: Option<TlsFiles>) -> TransportConfig {
    TransportConfig {
        bind: localhost(),
        external_addr: None,
        cluster: ClusterName::new(cluster).expect("valid cluster name"),
        actor: ActorId::random(),
        tls,
    }
}

fn start(cluster: &str) -> (Transport, mpsc::Receiver<Inbound>) {
    Transport::bind(config(cluster, None), None).expect("bind")
}

async fn next(rx: &mut mpsc::Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for inbound traffic")
        .expect("inbound channel closed")
}

/// `from` sends `to` a datagram, which must be the next thing `to` hears:
/// the marker after which an absence is asserted (`to` reads its one socket
/// in order, so anything sent to it earlier would have come first).
async fn hears_next(
    from: &Transport,
    to: &Transport,
    rx: &mut mpsc::Receiver<Inbound>,
    marker: &[u8],
) {
    from.send_datagram(to.local_addr(), marker)
        .await
        .expect("the marker's sender reaches its peer");
    match next(rx).await {
        Inbound::Datagram { payload, from, .. } => assert_eq!(
            &payload[..],
            marker,
            "the datagram from {from} came before the marker"
        ),
        other => panic!("expected the marker, got {other:?}"),
    }
}

fn stats(t: &Transport) -> StatsSnapshot {
    t.stats().snapshot()
}

/// A connection a peer opened to us also carries what we send back: two
/// nodes hold one connection, not one per direction.
#[tokio::test]
async fn an_accepted_connection_carries_replies() {
    let (a, mut a_rx) = start("ams");
    let (b, mut b_rx) = start("ams");
    a.send_frames(b.local_addr(), vec![Message::SummaryRequest])
        .await
        .expect("a sends");
    assert!(matches!(next(&mut b_rx).await, Inbound::Frames { .. }));
    b.send_frames(a.local_addr(), vec![Message::PullDone])
        .await
        .expect("b sends back");
    match next(&mut a_rx).await {
        Inbound::Frames { envelope, .. } => assert_eq!(envelope.message, Message::PullDone),
        other => panic!("expected frames, got {other:?}"),
    }
    b.send_datagram(a.local_addr(), b"and a datagram")
        .await
        .expect("b sends a datagram");
    assert!(matches!(next(&mut a_rx).await, Inbound::Datagram { .. }));
    let (sa, sb) = (stats(&a), stats(&b));
    assert_eq!((sa.connections_dialed, sa.connections_accepted), (1, 0));
    assert_eq!(
        (sb.connections_dialed, sb.connections_accepted),
        (0, 1),
        "b answered on the connection a opened"
    );
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn frames_and_datagrams_flow_both_ways() {
    let (a, mut a_rx) = start("ams");
    let (b, mut b_rx) = start("ams");

    a.send_frames(
        b.local_addr(),
        vec![Message::SummaryRequest, Message::PullDone],
    )
    .await
    .expect("a sends frames");
    for expected in [Message::SummaryRequest, Message::PullDone] {
        match next(&mut b_rx).await {
            Inbound::Frames { envelope, .. } => {
                assert_eq!(envelope.message, expected);
                assert_eq!(envelope.from, a.actor());
                assert_eq!(envelope.cluster.as_str(), "ams");
            }
            other => panic!("expected frames, got {other:?}"),
        }
    }

    b.send_datagram(a.local_addr(), b"ping from b")
        .await
        .expect("b sends a datagram");
    match next(&mut a_rx).await {
        Inbound::Datagram { payload, .. } => assert_eq!(&payload[..], b"ping from b"),
        other => panic!("expected a datagram, got {other:?}"),
    }
    a.send_datagram(b.local_addr(), b"pong from a")
        .await
        .expect("a sends a datagram");
    match next(&mut b_rx).await {
        Inbound::Datagram { payload, .. } => assert_eq!(&payload[..], b"pong from a"),
        other => panic!("expected a datagram, got {other:?}"),
    }

    // A request/response stream.
    let (mut writer, mut reader) = a.open_bi(b.local_addr()).await.expect("open_bi");
    writer.send(Message::SummaryRequest).await.expect("request");
    match next(&mut b_rx).await {
        Inbound::Bi {
            first,
            mut writer,
            reader: _,
            ..
        } => {
            assert_eq!(first.message, Message::SummaryRequest);
            writer.send(Message::PullDone).await.expect("response");
            writer.finish().expect("finish");
        }
        other => panic!("expected a bi stream, got {other:?}"),
    }
    let reply = tokio::time::timeout(WAIT, reader.next())
        .await
        .expect("reply in time")
        .expect("reply decodes")
        .expect("a reply frame");
    assert_eq!(reply.message, Message::PullDone);
    assert_eq!(reply.from, b.actor());

    // A datagram larger than the connection carries is refused locally.
    let err = a
        .send_datagram(b.local_addr(), &vec![0u8; 64 * 1024])
        .await
        .expect_err("oversized datagram");
    assert!(matches!(
        err,
        patina_transport::TransportError::DatagramTooLarge { .. }
    ));

    let sa = stats(&a);
    assert!(sa.frames_out >= 3 && sa.datagrams_out >= 1 && sa.datagrams_in >= 1);
    assert_eq!(sa.wrong_cluster + sa.malformed, 0);
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn another_clusters_traffic_is_dropped_and_counted() {
    let (ams, mut ams_rx) = start("ams");
    let (fra, _fra_rx) = start("fra");

    fra.send_datagram(ams.local_addr(), b"hello from fra")
        .await
        .expect("fra's datagram leaves");
    fra.send_frames(ams.local_addr(), vec![Message::SummaryRequest])
        .await
        .expect("fra's frame leaves");
    eventually("both refusals counted", WAIT, || {
        ready(stats(&ams).wrong_cluster >= 2)
    })
    .await;
    assert!(
        ams_rx.try_recv().is_err(),
        "nothing of fra reaches the consumer"
    );
    assert_eq!(stats(&ams).frames_in, 0);
    assert_eq!(stats(&ams).datagrams_in, 0);
}

#[tokio::test]
async fn garbage_udp_is_ignored_and_the_port_still_works() {
    let (a, mut a_rx) = start("ams");
    let (b, _b_rx) = start("ams");
    let junk = std::net::UdpSocket::bind(localhost()).expect("junk socket");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in [0usize, 1, 5, 20, 100, 1200, 1500] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                // xorshift: deterministic junk without another dependency.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        junk.send_to(&bytes, a.local_addr()).expect("send junk");
    }
    // QUIC-looking junk: long-header bit set, bogus version.
    let mut fake = vec![0xc0u8, 0xde, 0xad, 0xbe, 0xef];
    fake.resize(1200, 0x41);
    junk.send_to(&fake, a.local_addr()).expect("send fake");

    b.send_datagram(a.local_addr(), b"still alive")
        .await
        .expect("b reaches a");
    match next(&mut a_rx).await {
        Inbound::Datagram { payload, .. } => assert_eq!(&payload[..], b"still alive"),
        other => panic!("expected a datagram, got {other:?}"),
    }
}

#[tokio::test]
async fn truncated_and_oversized_frames_are_refused_and_counted() {
    let (a, _a_rx) = start("ams");
    let (b, mut b_rx) = start("ams");

    // Announces 100 bytes, sends 10, finishes.
    let (mut w, _r) = a.open_bi(b.local_addr()).await.expect("open_bi");
    let mut truncated = 100u32.to_le_bytes().to_vec();
    truncated.extend_from_slice(&[patina_wire::WIRE_VERSION; 10]);
    w.send_raw(&truncated).await.expect("write");
    w.finish().expect("finish");
    eventually("truncated frame counted", WAIT, || {
        ready(stats(&b).malformed >= 1)
    })
    .await;

    // Announces one byte more than a frame may hold.
    let (mut w, _r) = a.open_bi(b.local_addr()).await.expect("open_bi");
    let oversized = ((patina_wire::FRAME_BYTES_MAX + 1) as u32).to_le_bytes();
    w.send_raw(&oversized).await.expect("write");
    eventually("oversized frame counted", WAIT, || {
        ready(stats(&b).malformed >= 2)
    })
    .await;

    // A complete frame whose body is garbage, on a uni stream path too.
    let (mut w, _r) = a.open_bi(b.local_addr()).await.expect("open_bi");
    let mut garbage = 8u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[
        patina_wire::WIRE_VERSION,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
    ]);
    w.send_raw(&garbage).await.expect("write");
    eventually("garbage frame counted", WAIT, || {
        ready(stats(&b).malformed >= 3)
    })
    .await;

    assert!(stats(&b).streams_refused >= 3);
    assert!(b_rx.try_recv().is_err(), "no refused frame is delivered");

    // The connection survives: a good frame still gets through.
    a.send_frames(b.local_addr(), vec![Message::PullDone])
        .await
        .expect("good frame");
    match next(&mut b_rx).await {
        Inbound::Frames { envelope, .. } => assert_eq!(envelope.message, Message::PullDone),
        other => panic!("expected frames, got {other:?}"),
    }
}

#[tokio::test]
async fn mutual_tls_admits_the_cas_nodes_and_refuses_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("patina test CA");
    let other_ca = Ca::new("some other CA");

    let tls_a = node_tls(dir.path(), "a", &["ams"], &ca, &ca);
    let tls_b = node_tls(dir.path(), "b", &["ams"], &ca, &ca);
    let (a, _a_rx) = Transport::bind(config("ams", Some(tls_a)), None).expect("bind a");
    let (b, mut b_rx) = Transport::bind(config("ams", Some(tls_b)), None).expect("bind b");
    a.send_frames(b.local_addr(), vec![Message::SummaryRequest])
        .await
        .expect("a and b share a CA");
    match next(&mut b_rx).await {
        Inbound::Frames { envelope, .. } => {
            assert_eq!(envelope.message, Message::SummaryRequest)
        }
        other => panic!("expected frames, got {other:?}"),
    }

    // An intruder whose cert another CA signed, though it trusts ours.
    let tls_x = node_tls(dir.path(), "x", &["ams"], &other_ca, &ca);
    let (x, _x_rx) = Transport::bind(config("ams", Some(tls_x)), None).expect("bind x");
    // In TLS 1.3 the client finishes its side of the handshake before the
    // server has judged the client's certificate, so the intruder's send
    // may look queued on its side; b refuses the connection.
    let _ = x
        .send_frames(b.local_addr(), vec![Message::SummaryRequest])
        .await;
    eventually("b counts the refused handshake", WAIT, || {
        ready(stats(&b).handshake_failures >= 1)
    })
    .await;

    // And a node of ours refuses to talk to the intruder's server.
    assert!(a.send_datagram(x.local_addr(), b"hi").await.is_err());

    // A node without TLS (self-signed) is refused too.
    let (plain, _p_rx) = start("ams");
    let _ = plain
        .send_frames(b.local_addr(), vec![Message::PullDone])
        .await;
    eventually("b counts the second refused handshake", WAIT, || {
        ready(stats(&b).handshake_failures >= 2)
    })
    .await;
    assert!(b_rx.try_recv().is_err(), "no intruder frame delivered");
    assert_eq!(stats(&b).frames_in, 1, "only a's frame was accepted");
}

const SEED: u64 = 0x5eed_0001;

#[tokio::test]
async fn frames_cross_a_lossy_link_and_partitions_block_until_healed() {
    println!("fault seed: {SEED:#x}");
    let (sock_a, faults_a) = FaultySocket::bind(localhost(), SEED).expect("faulty socket");
    let sock_a: Arc<dyn patina_transport::AsyncUdpSocket> = sock_a;
    let (a, _a_rx) = Transport::bind(config("ams", None), Some(sock_a)).expect("bind a");
    let (b, mut b_rx) = start("ams");

    // 30% of a's packets vanish, the rest wait 1-6 ms: QUIC retransmits.
    faults_a.set_loss(0.3);
    faults_a.set_delay(Duration::from_millis(1), Duration::from_millis(5));
    let batches = 20;
    for i in 0..batches {
        let messages = vec![Message::SummaryRequest; 1 + i % 3];
        tokio::time::timeout(WAIT, a.send_frames(b.local_addr(), messages))
            .await
            .expect("send in time")
            .expect("send despite loss");
    }
    let expected: usize = (0..batches).map(|i| 1 + i % 3).sum();
    for _ in 0..expected {
        assert!(matches!(next(&mut b_rx).await, Inbound::Frames { .. }));
    }
    assert!(faults_a.dropped() > 0, "the socket did drop packets");

    // One-way partition a -> b: nothing arrives.
    faults_a.set_loss(0.0);
    faults_a.set_delay(Duration::ZERO, Duration::ZERO);
    // A third node, not partitioned, to send b the marker.
    let (c, _c_rx) = start("ams");
    hears_next(&c, &b, &mut b_rx, b"c is connected").await;
    faults_a.partition_to(b.local_addr());
    let before = stats(&b).frames_in;
    a.send_frames(b.local_addr(), vec![Message::PullDone])
        .await
        .expect("queued locally");
    a.send_datagram(b.local_addr(), b"lost")
        .await
        .expect("queued locally");
    // Once a's datagram has gone to its socket (which drops it) and c's
    // marker, sent after that, has reached b, anything of a's that crossed
    // would have reached b before the marker: b reads its one socket in
    // order.
    a.flush_datagrams(WAIT).await;
    hears_next(&c, &b, &mut b_rx, b"marker").await;
    assert_eq!(stats(&b).frames_in, before);

    // Healed: QUIC's retransmission delivers the queued frame; the datagram
    // is not retransmitted, so the frame comes alone.
    faults_a.heal();
    match next(&mut b_rx).await {
        Inbound::Frames { envelope, .. } => assert_eq!(envelope.message, Message::PullDone),
        other => panic!("expected the queued frame, got {other:?}"),
    }
}

#[tokio::test]
async fn a_partition_from_a_peer_drops_what_it_sends() {
    println!("fault seed: {SEED:#x}");
    let (sock_b, faults_b) = FaultySocket::bind(localhost(), SEED).expect("faulty socket");
    let (b, mut b_rx) = Transport::bind(config("ams", None), Some(sock_b)).expect("bind b");
    let (a, _a_rx) = start("ams");
    a.send_frames(b.local_addr(), vec![Message::SummaryRequest])
        .await
        .expect("connected");
    assert!(matches!(next(&mut b_rx).await, Inbound::Frames { .. }));

    let (c, _c_rx) = start("ams");
    hears_next(&c, &b, &mut b_rx, b"c is connected").await;

    faults_b.partition_from(a.local_addr());
    a.send_datagram(b.local_addr(), b"unheard")
        .await
        .expect("queued locally");
    // a's datagram is in b's socket buffer once a has flushed it (loopback);
    // b reads that buffer in order, so when c's later marker reaches the
    // consumer, a's datagram has been read and dropped, or delivered first.
    a.flush_datagrams(WAIT).await;
    hears_next(&c, &b, &mut b_rx, b"marker").await;
    faults_b.heal();
    a.send_datagram(b.local_addr(), b"heard")
        .await
        .expect("queued locally");
    match next(&mut b_rx).await {
        Inbound::Datagram { payload, .. } => assert_eq!(&payload[..], b"heard"),
        other => panic!("expected a datagram, got {other:?}"),
    }
}

/// A peer that dies without a word (its CONNECTION_CLOSE lost, as after a
/// SIGKILL) and comes back on the same address: the cached connection to
/// its old process still looks live, and only `forget` (membership calls it
/// when it sees the new incarnation) makes the next send reach the new one.
#[tokio::test]
async fn forget_drops_the_connection_to_a_restarted_peers_old_process() {
    let (sock_b, faults_b) = FaultySocket::bind(localhost(), SEED).expect("faulty socket");
    let (b, mut b_rx) = Transport::bind(config("ams", None), Some(sock_b)).expect("bind b");
    let addr = b.local_addr();
    let (a, _a_rx) = start("ams");
    hears_next(&a, &b, &mut b_rx, b"first life").await;

    faults_b.set_loss(1.0);
    drop(b);
    drop(b_rx);
    // The old process's socket is released once its endpoint task ends.
    let mut rebound = None;
    eventually("the old process's port to be free", WAIT, || {
        if rebound.is_none() {
            let mut cfg = config("ams", None);
            cfg.bind = addr;
            rebound = Transport::bind(cfg, None).ok();
        }
        ready(rebound.is_some())
    })
    .await;
    let (b2, mut b2_rx) = rebound.expect("rebound");

    assert!(
        a.rtt(addr).is_some(),
        "the dead connection still looks live"
    );
    a.forget(addr);
    assert!(a.rtt(addr).is_none(), "forgotten");
    hears_next(&a, &b2, &mut b2_rx, b"second life").await;
}

/// A peer that sends a frame's header and then trickles nothing holds its
/// stream only until the frame read timeout (keep-alives would keep it
/// open for good otherwise); counted, and the connection still works.
#[tokio::test]
async fn a_frame_that_never_completes_is_given_up_on() {
    let (a, _a_rx) = start("ams");
    let (b, mut b_rx) = start("ams");
    let (mut w, _r) = a.open_bi(b.local_addr()).await.expect("open_bi");
    let mut partial = 1000u32.to_le_bytes().to_vec();
    partial.extend_from_slice(&[patina_wire::WIRE_VERSION; 10]);
    w.send_raw(&partial).await.expect("write");
    let limit = patina_transport::FRAME_READ_TIMEOUT;
    eventually("the stalled frame given up on", limit + WAIT, || {
        ready(stats(&b).frames_timed_out == 1)
    })
    .await;
    hears_next(&a, &b, &mut b_rx, b"still here").await;
}

/// One host opening more connections than `MAX_CONNECTIONS_PER_IP` gets
/// the rest refused and counted; a peer connected before keeps talking.
#[tokio::test]
async fn connections_from_one_host_are_bounded() {
    use patina_transport::MAX_CONNECTIONS_PER_IP;
    let (node, mut node_rx) = start("ams");
    let (honest, _honest_rx) = start("ams");
    hears_next(&honest, &node, &mut node_rx, b"hello").await;
    let mut crowd = Vec::new();
    for _ in 0..MAX_CONNECTIONS_PER_IP + 5 {
        let (t, rx) = start("ams");
        // Each dials its own connection; some are refused.
        let _ = t.send_datagram(node.local_addr(), b"x").await;
        crowd.push((t, rx));
    }
    eventually("the connections past the bound refused", WAIT, || {
        ready(stats(&node).connections_refused >= 5)
    })
    .await;
    // The crowd's datagrams may come first: wait for the honest one.
    honest
        .send_datagram(node.local_addr(), b"still here")
        .await
        .expect("the honest peer reaches the node");
    loop {
        if let Inbound::Datagram { payload, .. } = next(&mut node_rx).await {
            if &payload[..] == b"still here" {
                break;
            }
        }
    }
}

/// Frames a consumer has not taken yet hold their bytes: one connection
/// can have at most 16 MiB of them, after which its streams wait (QUIC
/// pushes back on the peer), while another peer's frames still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_frames_are_bounded_in_bytes_per_connection() {
    use patina_wire::{ChangeChunk, DbKind, Span, WireChange};
    let (flood, _flood_rx) = start("ams");
    let (honest, _honest_rx) = start("ams");
    let (node, mut node_rx) = start("ams");
    let big = |version: u64| ChangeChunk {
        db: DbKind::Regional,
        actor: ActorId::random(),
        version,
        seqs: Span::new(0, 0),
        last_seq: 0,
        committed_ms: 0,
        changes: vec![WireChange {
            table: "t".into(),
            pk: vec![1],
            cid: "v".into(),
            val: patina_wire::Value::Blob(vec![7; 1 << 20]),
            col_version: 1,
            cl: 1,
            seq: 0,
        }],
    };
    let flood = Arc::new(flood);
    let to = node.local_addr();
    for v in 0..40 {
        let flood = Arc::clone(&flood);
        tokio::spawn(async move {
            let _ = flood.send_frames(to, vec![Message::Changes(big(v))]).await;
        });
    }
    // Nobody reads `node_rx` yet: the flood's frames keep their bytes.
    eventually("the flood waits for inbound bytes", WAIT, || {
        ready(stats(&node).frames_waited_for_bytes >= 1)
    })
    .await;
    assert!(
        stats(&node).frames_in <= 16,
        "{} frames of 1 MiB held from one connection",
        stats(&node).frames_in
    );
    honest
        .send_frames(to, vec![Message::PullDone])
        .await
        .expect("the honest peer's frame goes out");
    loop {
        if let Inbound::Frames { envelope, .. } = next(&mut node_rx).await {
            if matches!(envelope.message, Message::PullDone) {
                break;
            }
        }
    }
}
