//! Trust between real sockets on 127.0.0.1: a certificate admits its node
//! to the clusters it names and no other, and a frame's claimed sender must
//! be the actor its connection speaks for. The hostile peers are raw QUIC
//! clients that ignore Patina's rules (modified code), since a real
//! `Transport` refuses to start with a certificate for another cluster.

use std::future::ready;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use patina_testkit::eventually;
use patina_testkit::tls::{node_tls, Ca};
use patina_transport::{
    Inbound, NodeCertRequest, StatsSnapshot, TlsFiles, Transport, TransportConfig, ALPN,
};
use patina_wire::{ActorId, ClusterName, Envelope, Message};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn config(cluster: &str, actor: ActorId, tls: TlsFiles) -> TransportConfig {
    TransportConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        external_addr: None,
        cluster: ClusterName::new(cluster).expect("valid cluster name"),
        actor,
        tls: Some(tls),
    }
}

fn bind(cluster: &str, tls: TlsFiles) -> (Transport, mpsc::Receiver<Inbound>) {
    Transport::bind(config(cluster, ActorId::random(), tls), None).expect("bind")
}

fn stats(t: &Transport) -> StatsSnapshot {
    t.stats().snapshot()
}

async fn next(rx: &mut mpsc::Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for inbound traffic")
        .expect("inbound channel closed")
}

fn envelope(cluster: &str, from: ActorId, message: Message) -> Vec<u8> {
    patina_wire::encode_frame(&Envelope {
        cluster: ClusterName::new(cluster).unwrap(),
        from,
        message,
    })
    .expect("encode")
}

/// A server verifier that believes anyone: the rogue client skips the
/// checks a real node makes, to reach the server's.
#[derive(Debug)]
struct BelieveAnyone(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for BelieveAnyone {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A rogue peer: presents `tls`'s certificate to `to` whatever the
/// server's, then sends `frames` on one stream. Returns whether the frames
/// were all handed to QUIC (the server may still refuse the connection:
/// in TLS 1.3 the client's side of the handshake ends first).
async fn rogue_send(to: SocketAddr, tls: &TlsFiles, frames: &[Vec<u8>]) -> bool {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(&tls.cert_file)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).unwrap();
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(BelieveAnyone(provider)))
        .with_client_auth_cert(certs, key)
        .unwrap();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap(),
    ));
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    endpoint.set_default_client_config(client);
    let Ok(Ok(conn)) = tokio::time::timeout(WAIT, endpoint.connect(to, "patina").unwrap()).await
    else {
        return false;
    };
    let Ok(mut send) = conn.open_uni().await else {
        return false;
    };
    for frame in frames {
        if send.write_all(frame).await.is_err() {
            return false;
        }
    }
    let sent = send.finish().is_ok() && send.stopped().await.is_ok();
    // Keep the connection until the server has judged it.
    conn.close(0u32.into(), b"done");
    sent
}

fn pinned_tls(dir: &Path, name: &str, cluster: &str, actor: ActorId, ca: &Ca) -> TlsFiles {
    let cert = ca
        .authority()
        .issue(&NodeCertRequest {
            node: name.to_string(),
            clusters: vec![ClusterName::new(cluster).unwrap()],
            actor: Some(actor),
            days: 1,
        })
        .unwrap();
    let path = |suffix: &str| dir.join(format!("{name}.{suffix}"));
    std::fs::write(path("pem"), cert.cert_pem).unwrap();
    std::fs::write(path("key"), cert.key_pem).unwrap();
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    TlsFiles {
        cert_file: path("pem"),
        key_file: path("key"),
        ca_file: Some(path("ca.pem")),
    }
}

/// One CA serves two regions: a certificate for `ams` joins `ams`, and is
/// refused (and counted) by `ord` whichever side dials; a node configured
/// for `ord` with an `ams` certificate refuses to start.
#[tokio::test]
async fn a_certificate_for_ams_joins_ams_and_not_ord() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("patina test CA, every region");
    let (ams1, _ams1_rx) = bind("ams", node_tls(dir.path(), "ams1", &["ams"], &ca, &ca));
    let (ams2, mut ams2_rx) = bind("ams", node_tls(dir.path(), "ams2", &["ams"], &ca, &ca));
    let (ord1, mut ord1_rx) = bind("ord", node_tls(dir.path(), "ord1", &["ord"], &ca, &ca));

    ams1.send_frames(ams2.local_addr(), vec![Message::SummaryRequest])
        .await
        .expect("an ams certificate joins ams");
    assert!(matches!(next(&mut ams2_rx).await, Inbound::Frames { .. }));

    // ams1 dials ord1: ams1 refuses ord1's certificate (it names ord).
    let err = ams1
        .send_frames(ord1.local_addr(), vec![Message::SummaryRequest])
        .await
        .expect_err("ams1 must not reach an ord node");
    assert!(err.to_string().contains("cannot connect"), "{err}");
    assert_eq!(stats(&ams1).certs_refused, 1);
    // ord1 dials ams2: ord1 refuses ams2's certificate.
    assert!(ord1.send_datagram(ams2.local_addr(), b"hi").await.is_err());
    assert_eq!(stats(&ord1).certs_refused, 1);

    // A rogue ams node that claims to be in ord: ord1 refuses its
    // certificate in the handshake and counts it; no frame arrives.
    let rogue = node_tls(dir.path(), "rogue", &["ams"], &ca, &ca);
    let _ = rogue_send(
        ord1.local_addr(),
        &rogue,
        &[envelope("ord", ActorId::random(), Message::PullDone)],
    )
    .await;
    eventually("ord1 counts the refused ams certificate", WAIT, || {
        ready(stats(&ord1).certs_refused == 2)
    })
    .await;
    assert!(ord1_rx.try_recv().is_err(), "no frame of the rogue arrived");
    assert_eq!(stats(&ord1).frames_in, 0);

    // A real node will not even start that way, and says how to fix it.
    let err = Transport::bind(config("ord", ActorId::random(), rogue), None)
        .expect_err("an ams certificate cannot serve cluster ord");
    let text = err.to_string();
    assert!(text.contains("not for cluster \"ord\""), "{text}");
    assert!(text.contains("patina tls cert --cluster ord"), "{text}");
}

/// A global member's certificate names its region and `global`: it joins
/// the global cluster; a region-only certificate from the same CA does not.
#[tokio::test]
async fn a_global_certificate_joins_global_and_a_regional_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("patina test CA, every region");
    let (g_ams, _g_ams_rx) = bind(
        "global",
        node_tls(dir.path(), "g-ams", &["ams", "global"], &ca, &ca),
    );
    let (g_ord, mut g_ord_rx) = bind(
        "global",
        node_tls(dir.path(), "g-ord", &["ord", "global"], &ca, &ca),
    );
    g_ams
        .send_frames(g_ord.local_addr(), vec![Message::SummaryRequest])
        .await
        .expect("global members of two regions meet");
    assert!(matches!(next(&mut g_ord_rx).await, Inbound::Frames { .. }));
    // The same certificate also serves the member's region.
    let (_ams, _ams_rx) = bind(
        "ams",
        node_tls(dir.path(), "g-ams2", &["ams", "global"], &ca, &ca),
    );

    let regional = node_tls(dir.path(), "web1", &["ams"], &ca, &ca);
    let _ = rogue_send(
        g_ord.local_addr(),
        &regional,
        &[envelope("global", ActorId::random(), Message::PullDone)],
    )
    .await;
    eventually(
        "g_ord counts the refused regional certificate",
        WAIT,
        || ready(stats(&g_ord).certs_refused == 1),
    )
    .await;
    assert!(g_ord_rx.try_recv().is_err(), "no frame of web1 arrived");
    assert!(Transport::bind(config("global", ActorId::random(), regional), None).is_err());
}

/// The first frame on a connection binds its sender; a later frame on that
/// connection claiming another actor is refused and counted, while the
/// connection's own actor keeps getting through.
#[tokio::test]
async fn a_connection_speaks_for_one_actor() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("patina test CA");
    let (a, _a_rx) = bind("ams", node_tls(dir.path(), "a", &["ams"], &ca, &ca));
    let (b, mut b_rx) = bind("ams", node_tls(dir.path(), "b", &["ams"], &ca, &ca));
    a.send_frames(b.local_addr(), vec![Message::SummaryRequest])
        .await
        .expect("a reaches b");
    match next(&mut b_rx).await {
        Inbound::Frames { envelope, .. } => assert_eq!(envelope.from, a.actor()),
        other => panic!("expected frames, got {other:?}"),
    }

    // a's connection now carries a frame claiming someone else.
    let (mut w, _r) = a.open_bi(b.local_addr()).await.expect("stream");
    let forged = envelope("ams", ActorId::random(), Message::SummaryRequest);
    w.send_raw(&forged).await.expect("written");
    eventually("b refuses the forged sender", WAIT, || {
        ready(stats(&b).senders_refused == 1)
    })
    .await;
    assert_eq!(stats(&b).streams_refused, 1);

    a.send_frames(b.local_addr(), vec![Message::PullDone])
        .await
        .expect("a still reaches b");
    match next(&mut b_rx).await {
        Inbound::Frames { envelope, .. } => {
            assert_eq!(envelope.message, Message::PullDone);
            assert_eq!(envelope.from, a.actor());
        }
        other => panic!("the forged frame must not arrive; got {other:?}"),
    }
}

/// A certificate pinning an actor (`patina tls cert --actor`) speaks for
/// that actor only, from its first frame on; a node whose actor is not the
/// pinned one refuses to start.
#[tokio::test]
async fn a_pinned_certificate_speaks_for_its_actor_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("patina test CA");
    let (b, mut b_rx) = bind("ams", node_tls(dir.path(), "b", &["ams"], &ca, &ca));
    let actor = ActorId::random();
    let pinned = pinned_tls(dir.path(), "p", "ams", actor, &ca);

    let other = ActorId::random();
    let _ = rogue_send(
        b.local_addr(),
        &pinned,
        &[envelope("ams", other, Message::SummaryRequest)],
    )
    .await;
    eventually("b refuses the first frame's forged sender", WAIT, || {
        ready(stats(&b).senders_refused == 1)
    })
    .await;
    assert!(b_rx.try_recv().is_err(), "no forged frame arrived");

    let err = Transport::bind(config("ams", other, pinned.clone()), None)
        .expect_err("a node whose actor is not the pinned one");
    assert!(err.to_string().contains("pins actor"), "{err}");

    let (p, _p_rx) = Transport::bind(config("ams", actor, pinned), None).expect("bind p");
    p.send_frames(b.local_addr(), vec![Message::PullDone])
        .await
        .expect("p reaches b");
    match next(&mut b_rx).await {
        Inbound::Frames { envelope, .. } => assert_eq!(envelope.from, actor),
        other => panic!("expected p's frame, got {other:?}"),
    }
}
