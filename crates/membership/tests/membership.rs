//! SWIM membership over real QUIC transports on 127.0.0.1: joining by
//! bootstrap, leaving, rejoining after a restart from the persisted member
//! list, and isolation between clusters.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use patina_membership::{alive, Member, MemberState, Membership};
use patina_testkit::eventually;
use patina_transport::{Transport, TransportConfig};
use patina_wire::{ActorId, ClusterName, NodeIdentity};

const WAIT: Duration = Duration::from_secs(15);

struct Node {
    transport: Transport,
    membership: Membership,
}

impl Node {
    fn addr(&self) -> SocketAddr {
        self.transport.advertised_addr()
    }

    fn actor(&self) -> ActorId {
        self.membership.identity().actor
    }

    async fn stop(self) {
        self.membership.leave().await;
        self.transport.close().await;
    }
}

fn members_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("members-{name}"))
}

fn start(cluster: &str, actor: ActorId, bootstrap: &[SocketAddr], file: PathBuf) -> Node {
    let cluster = ClusterName::new(cluster).expect("cluster name");
    let cfg = TransportConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        external_addr: None,
        cluster: cluster.clone(),
        actor,
        tls: None,
    };
    let (transport, inbound) = Transport::bind(cfg, None).expect("bind");
    let (datagrams, _rest) = patina_membership::route_datagrams(inbound);
    let identity = NodeIdentity {
        actor,
        addr: transport.advertised_addr(),
        region: cluster.clone(),
        cluster,
        global_member: false,
        generation: 0,
    };
    let bootstrap = bootstrap.iter().map(|a| a.to_string()).collect();
    let membership = Membership::spawn(
        transport.clone(),
        identity,
        bootstrap,
        file,
        datagrams,
        patina_membership::SwimProfile::Lan,
    );
    Node {
        transport,
        membership,
    }
}

/// Waits until `node`'s member list satisfies `cond`.
async fn until(node: &Node, what: &str, cond: impl Fn(&[Member]) -> bool) {
    let mut rx = node.membership.members();
    let waited = tokio::time::timeout(WAIT, rx.wait_for(|m| cond(m)))
        .await
        .map(|r| r.map(|_| ()));
    match waited {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("membership task ended while waiting for {what}"),
        Err(_) => panic!(
            "timed out waiting for {what}; members: {:?}",
            *node.membership.members().borrow()
        ),
    }
}

fn alive_actors(members: &[Member]) -> Vec<ActorId> {
    let mut actors: Vec<ActorId> = alive(members).map(|m| m.actor).collect();
    actors.sort();
    actors
}

async fn three_nodes(dir: &Path) -> [Node; 3] {
    let n1 = start("ams", ActorId::random(), &[], members_file(dir, "1"));
    let n2 = start(
        "ams",
        ActorId::random(),
        &[n1.addr()],
        members_file(dir, "2"),
    );
    let n3 = start(
        "ams",
        ActorId::random(),
        &[n1.addr()],
        members_file(dir, "3"),
    );
    let nodes = [n1, n2, n3];
    for (i, node) in nodes.iter().enumerate() {
        let mut others: Vec<ActorId> = nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.actor())
            .collect();
        others.sort();
        until(node, "2 alive peers", |m| alive_actors(m) == others).await;
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_join_and_a_leaver_is_seen_gone_quickly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [n1, n2, n3] = three_nodes(dir.path()).await;

    let gone = n3.actor();
    let left_at = tokio::time::Instant::now();
    n3.stop().await;
    for node in [&n1, &n2] {
        until(node, "the leaver marked down", |m| {
            m.iter()
                .all(|m| m.identity.actor != gone || m.state == MemberState::Down)
        })
        .await;
    }
    // Leaving is announced, not detected by failed probes (which take
    // several probe periods plus the suspicion timeout).
    assert!(
        left_at.elapsed() < Duration::from_secs(3),
        "leave took {:?}",
        left_at.elapsed()
    );
    n1.stop().await;
    n2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_rejoins_from_its_members_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [n1, n2, n3] = three_nodes(dir.path()).await;
    let actor = n2.actor();
    let old_generation = n2.membership.identity().generation;
    n2.stop().await;
    until(&n1, "n2 down", |m| {
        m.iter()
            .all(|m| m.identity.actor != actor || m.state == MemberState::Down)
    })
    .await;

    // Same actor and members file, new port, no bootstrap list.
    let n2 = start("ams", actor, &[], members_file(dir.path(), "2"));
    let generation = n2.membership.identity().generation;
    assert!(generation > old_generation, "generation bumped at start");
    let new_addr = n2.addr();
    for node in [&n1, &n3] {
        until(node, "n2's new incarnation alive", |m| {
            m.iter().any(|m| {
                m.identity.actor == actor
                    && m.identity.generation == generation
                    && m.identity.addr == new_addr
                    && m.state == MemberState::Alive
            }) && m.iter().filter(|m| m.identity.actor == actor).count() == 1
        })
        .await;
    }
    until(&n2, "2 alive peers after restart", |m| {
        alive(m).count() == 2
    })
    .await;
    for n in [n1, n2, n3] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_never_appears() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a1 = start(
        "ams",
        ActorId::random(),
        &[],
        members_file(dir.path(), "a1"),
    );
    let a2 = start(
        "ams",
        ActorId::random(),
        &[a1.addr()],
        members_file(dir.path(), "a2"),
    );
    let intruder = start(
        "fra",
        ActorId::random(),
        &[a1.addr(), a2.addr()],
        members_file(dir.path(), "f"),
    );
    until(&a1, "a2 alive", |m| alive(m).count() == 1).await;
    until(&a2, "a1 alive", |m| alive(m).count() == 1).await;
    // The intruder's announces reach a1's transport and are dropped there.
    eventually("intruder traffic counted", WAIT, || {
        std::future::ready(a1.transport.stats().snapshot().wrong_cluster > 0)
    })
    .await;
    let fra = intruder.actor();
    for node in [&a1, &a2] {
        let members = node.membership.members().borrow().clone();
        assert!(members.iter().all(|m| m.identity.actor != fra));
    }
    assert!(intruder.membership.members().borrow().is_empty());
    for n in [a1, a2, intruder] {
        n.stop().await;
    }
}
