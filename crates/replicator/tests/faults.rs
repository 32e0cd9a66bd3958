//! The regional cluster under faults (in one process, 127.0.0.1, port 0):
//! lossy and slow links, partitions both ways and one way, garbage and
//! hostile frames at the gossip port, a node of another cluster and a node
//! with a certificate of another CA trying to join. Every test prints its
//! seed; replay with `PATINA_TEST_SEED=<seed>`.

use std::net::SocketAddr;
use std::time::Duration;

use patina_replicator::ReplicatorConfig;
use patina_testkit::tls::Ca;
use patina_testkit::{
    eventually, has_machine, random_writes, random_writes_on, test_seed, Options, TestCluster,
    TestNode, Written,
};
use patina_transport::{Inbound, Transport, TransportConfig};
use patina_wire::{ActorId, ClusterName, DbKind, Envelope, Message, Need, Span};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::mpsc;

/// Waits on conditions that take a few SWIM periods at most.
const WAIT: Duration = Duration::from_secs(30);
/// Convergence under faults.
const CONVERGE: Duration = Duration::from_secs(90);

fn options(seed: u64) -> Options {
    Options {
        replicator: ReplicatorConfig {
            sync_interval: Duration::from_millis(100),
            seed,
            ..ReplicatorConfig::default()
        },
        faults_seed: Some(seed),
        ..Options::default()
    }
}

async fn insert(cluster: &TestCluster, node: usize, id: i64, what: &str) {
    cluster
        .exec(
            node,
            &format!("INSERT INTO machines VALUES ({id}, '{what}', 'started', {node})"),
        )
        .await;
}

/// Waits until `observer` no longer sees any of `actors` alive.
async fn wait_not_alive(observer: &TestNode, actors: &[ActorId], what: &str) {
    eventually(what, WAIT, || {
        let alive = observer.alive_actors();
        let gone = actors.iter().all(|a| !alive.contains(a));
        async move { gone }
    })
    .await;
}

fn actor(t: &TestNode) -> ActorId {
    t.node.actor_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_slow_links_converge() {
    let seed = test_seed("lossy_slow_links_converge");
    let cluster = TestCluster::start(3, options(seed)).await;
    for i in 0..cluster.nodes.len() {
        let faults = cluster.faults(i);
        faults.set_loss(0.2);
        faults.set_delay(Duration::from_millis(5), Duration::from_millis(15));
    }
    let started = tokio::time::Instant::now();
    let written = random_writes(&cluster, 60, seed).await;
    let counts = cluster.wait_converged(&written, CONVERGE).await;
    let dropped: u64 = (0..cluster.nodes.len())
        .map(|i| cluster.faults(i).dropped())
        .sum();
    assert!(
        dropped > 0,
        "the sockets dropped nothing: no faults injected"
    );
    println!(
        "converged in {:?} through 20% loss ({dropped} packets dropped), rows {counts:?}",
        started.elapsed()
    );
}

/// Cuts node `lone` off from every other node, both ways, on both sides.
fn isolate(cluster: &TestCluster, lone: usize) {
    for other in (0..cluster.nodes.len()).filter(|&o| o != lone) {
        let (lone_addr, other_addr) = (cluster.nodes[lone].addr(), cluster.nodes[other].addr());
        cluster.faults(lone).partition_to(other_addr);
        cluster.faults(lone).partition_from(other_addr);
        cluster.faults(other).partition_to(lone_addr);
        cluster.faults(other).partition_from(lone_addr);
    }
}

fn heal(cluster: &TestCluster) {
    for i in 0..cluster.nodes.len() {
        cluster.faults(i).heal();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_misses_the_other_sides_writes_until_healed() {
    let seed = test_seed("a_partitioned_node_misses_the_other_sides_writes_until_healed");
    let cluster = TestCluster::start(3, options(seed)).await;
    let mut written = Written::new();
    insert(&cluster, 0, 100, "before").await;
    cluster.wait_machine_everywhere(100, WAIT).await;

    let lone = 2;
    isolate(&cluster, lone);
    insert(&cluster, 0, 200, "majority").await;
    insert(&cluster, lone, 300, "minority").await;
    written
        .machine(100, "before", "started", 0)
        .machine(200, "majority", "started", 0)
        .machine(300, "minority", "started", lone as i64);
    written.extend(random_writes_on(&cluster, &[0, 1, lone], 20, seed).await);
    let majority = [actor(&cluster.nodes[0]), actor(&cluster.nodes[1])];
    eventually("machine 200 on node 1", WAIT, || {
        has_machine(&cluster.nodes[1].node, 200)
    })
    .await;
    // Both sides notice the partition: by then every broadcast and several
    // sync attempts across it have had their chance.
    for i in [0, 1] {
        let what = format!("node {i} no longer sees node {lone} alive");
        wait_not_alive(&cluster.nodes[i], &[actor(&cluster.nodes[lone])], &what).await;
    }
    wait_not_alive(
        &cluster.nodes[lone],
        &majority,
        "the lone node sees nobody alive",
    )
    .await;
    cluster.wait_sync_rounds(&[0, 1], 2, WAIT).await;
    assert!(
        !has_machine(&cluster.nodes[lone].node, 200).await,
        "a write of the majority crossed the partition"
    );
    for i in [0, 1] {
        assert!(
            !has_machine(&cluster.nodes[i].node, 300).await,
            "the lone node's write reached node {i} across the partition"
        );
    }
    assert!(has_machine(&cluster.nodes[lone].node, 300).await);

    heal(&cluster);
    let healed = tokio::time::Instant::now();
    cluster.wait_members(WAIT).await;
    let counts = cluster.wait_converged(&written, CONVERGE).await;
    assert!(has_machine(&cluster.nodes[lone].node, 200).await);
    assert!(has_machine(&cluster.nodes[0].node, 300).await);
    println!(
        "rejoined and converged {:?} after healing, rows {counts:?}",
        healed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_partition_converges_after_heal() {
    let seed = test_seed("a_one_way_partition_converges_after_heal");
    let cluster = TestCluster::start(3, options(seed)).await;
    let deaf = 2;
    // The deaf node sends to the others but hears nothing from them.
    for other in [0, 1] {
        let addr = cluster.nodes[other].addr();
        cluster.faults(deaf).partition_from(addr);
    }
    insert(&cluster, 0, 200, "majority").await;
    insert(&cluster, deaf, 300, "deaf").await;
    let mut written = Written::new();
    written
        .machine(200, "majority", "started", 0)
        .machine(300, "deaf", "started", deaf as i64);
    written.extend(random_writes_on(&cluster, &[0, 1, deaf], 20, seed).await);
    eventually("machine 200 on node 1", WAIT, || {
        has_machine(&cluster.nodes[1].node, 200)
    })
    .await;
    let majority = [actor(&cluster.nodes[0]), actor(&cluster.nodes[1])];
    wait_not_alive(
        &cluster.nodes[deaf],
        &majority,
        "the deaf node sees nobody alive",
    )
    .await;
    assert!(
        !has_machine(&cluster.nodes[deaf].node, 200).await,
        "the deaf node received a write through its partition"
    );

    heal(&cluster);
    cluster.wait_members(WAIT).await;
    let counts = cluster.wait_converged(&written, CONVERGE).await;
    assert!(has_machine(&cluster.nodes[deaf].node, 200).await);
    assert!(has_machine(&cluster.nodes[0].node, 300).await);
    println!("converged after healing a one-way partition, rows {counts:?}");
}

/// A bare transport of `cluster`, to play a broken or hostile peer.
fn raw_peer(cluster: &str) -> (Transport, mpsc::Receiver<Inbound>) {
    Transport::bind(
        TransportConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            external_addr: None,
            cluster: ClusterName::new(cluster).expect("cluster name"),
            actor: ActorId::random(),
            tls: None,
        },
        None,
    )
    .expect("bind a raw peer")
}

fn random_bytes(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.random::<u8>()).collect()
}

/// Random UDP datagrams, some dressed as QUIC long-header packets so they
/// get past the first byte of quinn's parser.
/// Datagrams that cannot be QUIC (short header, fixed bit clear), small
/// enough that loopback drops none of them; returns how many.
fn send_not_quic(to: SocketAddr, rng: &mut SmallRng) -> u64 {
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").expect("junk socket");
    let n = 100;
    for _ in 0..n {
        let len = rng.random_range(1..100);
        let mut bytes = random_bytes(rng, len);
        bytes[0] &= 0x3f;
        junk.send_to(&bytes, to).expect("send junk");
    }
    n
}

fn send_udp_garbage(to: SocketAddr, rng: &mut SmallRng) {
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").expect("junk socket");
    for i in 0..300 {
        let len = rng.random_range(0..1500);
        let mut bytes = random_bytes(rng, len);
        if i % 3 == 0 && bytes.len() >= 5 {
            bytes[0] = 0xc0 | (bytes[0] & 0x0f);
            bytes[1..5].copy_from_slice(&1u32.to_be_bytes());
        }
        junk.send_to(&bytes, to).expect("send junk");
    }
}

/// Frames the node must refuse, each on its own sync stream; returns how
/// many (each counts as one malformed frame).
async fn send_bad_frames(raw: &Transport, to: SocketAddr, rng: &mut SmallRng) -> u64 {
    let mut frames: Vec<Vec<u8>> = Vec::new();
    // Truncated: announces 100 bytes, sends 10.
    let mut truncated = 100u32.to_le_bytes().to_vec();
    truncated.extend_from_slice(&[patina_wire::WIRE_VERSION; 10]);
    frames.push(truncated);
    // Oversized: one byte more than a frame may hold.
    frames.push(
        ((patina_wire::FRAME_BYTES_MAX + 1) as u32)
            .to_le_bytes()
            .to_vec(),
    );
    frames.push(u32::MAX.to_le_bytes().to_vec());
    // A truncated header.
    frames.push(vec![7, 0]);
    // Random bodies behind a correct length, with and without the version.
    for i in 0..20 {
        let len = rng.random_range(1..2000);
        let mut body = random_bytes(rng, len);
        if i % 2 == 0 {
            body[0] = patina_wire::WIRE_VERSION;
        }
        let mut frame = (len as u32).to_le_bytes().to_vec();
        frame.extend(body);
        frames.push(frame);
    }
    // A real frame cut short in its body.
    let good = patina_wire::encode_frame(&Envelope {
        cluster: raw.cluster().clone(),
        from: raw.actor(),
        message: Message::SummaryRequest,
    })
    .expect("encode");
    let mut cut = good.clone();
    cut.truncate(good.len() - 1);
    frames.push(cut);
    let count = frames.len() as u64;
    for frame in frames {
        let (mut writer, _reader) = raw.open_bi(to).await.expect("open a stream");
        writer.send_raw(&frame).await.expect("write");
        let _ = writer.finish();
    }
    count
}

/// Opens a sync stream, reads the summary, pulls `needs` and reads until
/// `PullDone`; returns how many chunks came.
async fn pull(raw: &Transport, to: SocketAddr, needs: Vec<Need>) -> Result<usize, String> {
    let (mut writer, mut reader) = raw.open_bi(to).await.map_err(|e| e.to_string())?;
    writer
        .send(Message::SummaryRequest)
        .await
        .map_err(|e| e.to_string())?;
    writer
        .send(Message::Pull(needs))
        .await
        .map_err(|e| e.to_string())?;
    let mut chunks = 0;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), reader.next())
            .await
            .map_err(|_| "no frame within 10 s".to_string())?
            .map_err(|e| e.to_string())?
            .ok_or("stream ended before PullDone")?;
        match frame.message {
            Message::Summary(_) => {}
            Message::Changes(_) => chunks += 1,
            Message::PullDone => return Ok(chunks),
            other => return Err(format!("unexpected {other:?}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_at_the_gossip_port_is_counted_and_the_cluster_keeps_working() {
    let seed = test_seed("garbage_at_the_gossip_port_is_counted_and_the_cluster_keeps_working");
    let mut rng = SmallRng::seed_from_u64(seed);
    let cluster = TestCluster::start(3, Options::default()).await;
    insert(&cluster, 0, 100, "before").await;
    cluster.wait_machine_everywhere(100, WAIT).await;
    let target = cluster.nodes[0].addr();
    let before = cluster.nodes[0].runtime().transport_stats();

    let not_quic = send_not_quic(target, &mut rng);
    send_udp_garbage(target, &mut rng);
    let (raw, _raw_rx) = raw_peer("ams");
    let bad = send_bad_frames(&raw, target, &mut rng).await;
    // Garbage SWIM payloads in well-formed datagrams.
    for _ in 0..50 {
        let len = rng.random_range(0..900);
        let _ = raw
            .send_datagram(target, &random_bytes(&mut rng, len))
            .await;
    }
    // Well-formed but out of place: a sync stream opened with a pull.
    let (mut writer, _reader) = raw.open_bi(target).await.expect("open a stream");
    writer.send(Message::PullDone).await.expect("send");
    let stats = || cluster.nodes[0].runtime().transport_stats();
    eventually("every bad frame counted", WAIT, || {
        let s = stats();
        let done = s.malformed >= before.malformed + bad;
        async move { done }
    })
    .await;
    eventually("every datagram that cannot be QUIC counted", WAIT, || {
        let done = stats().not_quic >= before.not_quic + not_quic;
        async move { done }
    })
    .await;
    let after = stats();
    assert!(after.streams_refused >= before.streams_refused + bad);

    // The cluster still replicates, both ways from the garbaged node.
    insert(&cluster, 0, 500, "after garbage").await;
    cluster.wait_machine_everywhere(500, WAIT).await;
    insert(&cluster, 1, 501, "after garbage").await;
    cluster.wait_machine_everywhere(501, WAIT).await;
    cluster.wait_members(WAIT).await;
    println!(
        "node 0 counted {} malformed frames/datagrams, {} refused streams, {} datagrams that were not QUIC",
        after.malformed - before.malformed,
        after.streams_refused - before.streams_refused,
        after.not_quic - before.not_quic
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pulls_are_answered_in_bounded_time() {
    let seed = test_seed("hostile_pulls_are_answered_in_bounded_time");
    let cluster = TestCluster::start(2, Options::default()).await;
    for id in 0..5 {
        insert(&cluster, 0, id, "held").await;
    }
    cluster.wait_machine_everywhere(4, WAIT).await;
    let target = cluster.nodes[0].addr();
    let owner = actor(&cluster.nodes[0]);
    let (raw, _raw_rx) = raw_peer("ams");
    let span = |start, end| Span { start, end };
    // Well-formed but enormous: answered, and in bounded time.
    let huge = [
        // Every version there could be, of an actor the node holds.
        Need::Versions {
            db: DbKind::Regional,
            actor: owner,
            versions: span(1, u64::MAX),
        },
        Need::Seqs {
            db: DbKind::Regional,
            actor: owner,
            version: 1,
            seqs: vec![span(0, u64::MAX)],
        },
    ];
    for need in huge {
        let what = format!("{need:?}");
        let chunks = pull(&raw, target, vec![need])
            .await
            .unwrap_or_else(|e| panic!("pull {what}: {e}"));
        println!("pull {what}: {chunks} chunks");
    }
    // Inverted spans (which `Span::new` refuses) do not even decode: the
    // node refuses the frame and stops the stream, counted as malformed.
    let inverted = [
        Need::Versions {
            db: DbKind::Regional,
            actor: owner,
            versions: span(9, 2),
        },
        Need::Seqs {
            db: DbKind::Regional,
            actor: owner,
            version: 1,
            seqs: vec![span(5, 2)],
        },
    ];
    for need in inverted {
        let before = cluster.nodes[0].runtime().transport_stats().malformed;
        let what = format!("{need:?}");
        assert!(
            pull(&raw, target, vec![need]).await.is_err(),
            "pull {what} was answered"
        );
        let after = cluster.nodes[0].runtime().transport_stats().malformed;
        assert!(after > before, "pull {what} was not counted as malformed");
    }
    // The node is still whole: it replicates, and serves a normal pull.
    insert(&cluster, 0, 600, "after hostile pulls").await;
    cluster.wait_machine_everywhere(600, WAIT).await;
    let chunks = pull(
        &raw,
        target,
        vec![Need::Versions {
            db: DbKind::Regional,
            actor: owner,
            versions: span(1, 6),
        }],
    )
    .await
    .expect("a normal pull");
    assert_eq!(chunks, 6, "versions 1..=6 of node 0, one chunk each");
    let _ = seed;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_never_joins() {
    let seed = test_seed("a_node_of_another_cluster_never_joins");
    let cluster = TestCluster::start(2, options(seed)).await;
    let outsider = cluster.outsider("fra", None);
    let stats = || cluster.nodes[0].runtime().transport_stats();
    // The outsider announces to node 0 at start and every second after.
    eventually("node 0 drops two announces of fra", WAIT, || {
        let done = stats().wrong_cluster >= 2;
        async move { done }
    })
    .await;
    outsider
        .node
        .transact(vec![patina_node::Statement::new(
            "INSERT INTO machines VALUES (3000, 'fra', 'started', 0)",
        )])
        .await
        .expect("the outsider writes");
    insert(&cluster, 1, 4000, "ams").await;
    cluster.wait_machine_everywhere(4000, WAIT).await;
    cluster.wait_sync_rounds(&[0, 1], 3, WAIT).await;
    let wrong = stats().wrong_cluster;
    eventually("node 0 drops another announce of fra", WAIT, || {
        let done = stats().wrong_cluster > wrong;
        async move { done }
    })
    .await;

    let stranger = actor(&outsider);
    for (i, t) in cluster.nodes.iter().enumerate() {
        assert!(
            !t.known_actors().contains(&stranger),
            "node {i} knows the node of another cluster"
        );
        assert!(
            !has_machine(&t.node, 3000).await,
            "fra's write reached node {i}"
        );
    }
    assert!(
        outsider.known_actors().is_empty(),
        "the outsider knows members"
    );
    assert!(
        !has_machine(&outsider.node, 4000).await,
        "the cluster's write reached the outsider"
    );
    println!(
        "node 0 dropped {} datagrams/frames of another cluster",
        stats().wrong_cluster
    );
    outsider.runtime.expect("running").shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_cluster_converges_and_refuses_another_cas_node() {
    let seed = test_seed("mutual_tls_cluster_converges_and_refuses_another_cas_node");
    let cluster = TestCluster::start(
        3,
        Options {
            tls: true,
            ..options(seed)
        },
    )
    .await;
    let written = random_writes(&cluster, 30, seed).await;
    cluster.wait_converged(&written, CONVERGE).await;

    let other_ca = Ca::new("some other CA");
    let before = cluster.nodes[0].runtime().transport_stats();
    let outsider = cluster.outsider("ams", Some(&other_ca));
    let stats = || cluster.nodes[0].runtime().transport_stats();
    eventually("node 0 refuses two handshakes", WAIT, || {
        let done = stats().handshake_failures >= before.handshake_failures + 2;
        async move { done }
    })
    .await;
    outsider
        .node
        .transact(vec![patina_node::Statement::new(
            "INSERT INTO machines VALUES (3000, 'intruder', 'started', 0)",
        )])
        .await
        .expect("the outsider writes");
    insert(&cluster, 1, 4000, "member").await;
    cluster.wait_machine_everywhere(4000, WAIT).await;
    cluster.wait_sync_rounds(&[0, 1, 2], 3, WAIT).await;

    let intruder = actor(&outsider);
    for (i, t) in cluster.nodes.iter().enumerate() {
        assert!(
            !t.known_actors().contains(&intruder),
            "node {i} knows the intruder"
        );
        assert!(
            !has_machine(&t.node, 3000).await,
            "the intruder's write reached node {i}"
        );
    }
    assert!(outsider.alive_actors().is_empty(), "the intruder has peers");
    assert!(!has_machine(&outsider.node, 4000).await);
    let after = stats();
    println!(
        "node 0 refused {} handshakes",
        after.handshake_failures - before.handshake_failures
    );
    outsider.runtime.expect("running").shutdown().await;
}

/// `p99_lag` (health) measures commit → applied: with 60 ms added to every
/// packet node 0 sends, node 1 reports at least that for node 0's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_lag_is_measured_from_the_origin_commit() {
    let seed = test_seed("replication_lag_is_measured_from_the_origin_commit");
    let cluster = TestCluster::start(2, options(seed)).await;
    let lag = |i: usize| cluster.nodes[i].runtime().counters().p99_lag_secs();
    insert(&cluster, 0, 1, "fast").await;
    cluster.wait_machine_everywhere(1, WAIT).await;
    assert!(lag(1) < 0.06, "loopback lag {} s", lag(1));
    cluster
        .faults(0)
        .set_delay(Duration::from_millis(60), Duration::ZERO);
    for id in 2..12 {
        insert(&cluster, 0, id, "delayed").await;
    }
    cluster.wait_machine_everywhere(11, WAIT).await;
    assert!(
        lag(1) >= 0.06,
        "p99 lag {} s with a 60 ms link; catch-up {:?}, catch-up lag {}",
        lag(1),
        cluster.nodes[1].runtime().counters().catch_up(),
        cluster.nodes[1].runtime().counters().catchup_p99_lag_secs()
    );
    assert_eq!(lag(0), 0.0, "node 0 received no broadcast version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sync_streams_cannot_starve_anti_entropy() {
    let seed = test_seed("idle_sync_streams_cannot_starve_anti_entropy");
    let mut options = options(seed);
    options.replicator.sync_limits.serve_timeout = Duration::from_secs(2);
    let cluster = TestCluster::start(2, options).await;
    cluster.wait_members(WAIT).await;
    let target = cluster.nodes[0].addr();
    let stats = cluster.nodes[0].runtime().stats();
    // A peer opens every sync stream its connection allows, asks for the
    // summary, reads it, and then says nothing more.
    let (raw, _raw_rx) = raw_peer("ams");
    let mut held = Vec::new();
    for _ in 0..8 {
        let (mut writer, reader) = raw.open_bi(target).await.expect("open a sync stream");
        writer
            .send(Message::SummaryRequest)
            .await
            .expect("ask for the summary");
        held.push((writer, reader));
    }
    eventually("the peer's streams past its share refused", WAIT, || {
        let refused = stats.serves_refused_peer_busy.get() >= 4;
        async move { refused }
    })
    .await;
    // The honest peer's rounds keep being served meanwhile: a round whose
    // summary request went unserved would count as a failure.
    let honest = cluster.nodes[1].runtime().stats();
    let failures = honest.sync_failures.get();
    cluster.wait_sync_rounds(&[1], 5, WAIT).await;
    assert_eq!(
        honest.sync_failures.get(),
        failures,
        "node 1's rounds failed"
    );
    // …and the quiet streams end at the serve deadline.
    eventually("the idle streams ended", WAIT, || {
        let ended = stats.serves_timed_out.get() >= 4;
        async move { ended }
    })
    .await;
    drop(held);
}
