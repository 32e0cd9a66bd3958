//! The replicator reaches a node only through the `Replica` trait: here a
//! cluster of real nodes replicates through a member that is not a node at
//! all — an in-memory `Replica` that keeps the chunks it is given and serves
//! them back. It receives a real node's write by broadcast, and a node that
//! joins after the writer has gone gets that write from it by sync.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use patina_node::{Changeset, Node, RemoteOutcome};
use patina_proto::Bookkeeper;
use patina_replicator::{BoxFuture, ClusterOptions, ClusterRuntime, Replica, ReplicatorConfig};
use patina_testkit::{eventually, rows};
use patina_wire::{ActorId, ChangeChunk, ClusterName, DbKind, Need};
use tokio::sync::{broadcast, watch};

const SCHEMA: &str = "CREATE TABLE machines (id INTEGER PRIMARY KEY NOT NULL, state TEXT);";

/// Holds whole versions in memory; never commits anything of its own.
struct MemoryReplica {
    actor: ActorId,
    versions: Mutex<BTreeMap<(DbKind, ActorId, u64), ChangeChunk>>,
    bookkeeping: watch::Sender<Arc<Bookkeeper>>,
    commits: broadcast::Sender<Arc<Changeset>>,
    /// While true, merges wait: a writer that is behind.
    hold: watch::Sender<bool>,
}

impl MemoryReplica {
    fn new() -> Arc<MemoryReplica> {
        let actor = ActorId::random();
        Arc::new(MemoryReplica {
            actor,
            versions: Mutex::default(),
            bookkeeping: watch::Sender::new(Arc::new(Bookkeeper::new(actor))),
            commits: broadcast::Sender::new(16),
            hold: watch::Sender::new(false),
        })
    }

    fn holds(&self, db: DbKind, actor: ActorId) -> usize {
        let versions = self.versions.lock().unwrap();
        versions
            .keys()
            .filter(|k| k.0 == db && k.1 == actor)
            .count()
    }
}

/// `Arc<MemoryReplica>` is the replica, so the test keeps a handle on it.
struct Shared(Arc<MemoryReplica>);

impl Replica for Shared {
    fn actor_id(&self) -> ActorId {
        self.0.actor
    }

    fn apply_remote(
        &self,
        db: DbKind,
        chunks: Vec<Arc<ChangeChunk>>,
    ) -> BoxFuture<'_, Option<RemoteOutcome>> {
        Box::pin(async move {
            let mut hold = self.0.hold.subscribe();
            let _ = hold.wait_for(|held| !held).await;
            let mut outcome = RemoteOutcome::default();
            let mut versions = self.0.versions.lock().unwrap();
            let mut bookie = (**self.0.bookkeeping.borrow()).clone();
            for chunk in chunks {
                // Small transactions only: one chunk is the whole version.
                assert!(chunk.is_complete(), "the test writes one-chunk versions");
                let key = (db, chunk.actor, chunk.version);
                let fresh = !versions.contains_key(&key);
                if fresh {
                    bookie.record_applied(db, chunk.actor, chunk.version);
                    versions.insert(key, (*chunk).clone());
                    outcome.versions_applied += 1;
                } else {
                    outcome.duplicates += 1;
                }
                outcome.fresh.push(fresh);
            }
            self.0.bookkeeping.send_replace(Arc::new(bookie));
            Some(outcome)
        })
    }

    fn serve(
        &self,
        db: DbKind,
        need: Need,
    ) -> BoxFuture<'_, Option<(Vec<ChangeChunk>, Vec<Need>)>> {
        Box::pin(async move {
            let versions = self.0.versions.lock().unwrap();
            let served = match need {
                Need::Versions {
                    actor, versions: v, ..
                } => versions
                    .range((db, actor, v.start)..=(db, actor, v.end))
                    .map(|(_, c)| c.clone())
                    .collect(),
                Need::Seqs { actor, version, .. } => versions
                    .get(&(db, actor, version))
                    .cloned()
                    .into_iter()
                    .collect(),
            };
            Some((served, Vec::new()))
        })
    }

    fn bookkeeping(&self, _db: DbKind) -> watch::Receiver<Arc<Bookkeeper>> {
        self.0.bookkeeping.subscribe()
    }

    fn local_commits(&self) -> broadcast::Receiver<Arc<Changeset>> {
        self.0.commits.subscribe()
    }
}

fn options(dir: &std::path::Path, bootstrap: Option<SocketAddr>) -> ClusterOptions {
    ClusterOptions {
        cluster: ClusterName::new("ams").unwrap(),
        region: ClusterName::new("ams").unwrap(),
        global_member: false,
        swim: patina_replicator::SwimProfile::Lan,
        bind: "127.0.0.1:0".parse().unwrap(),
        external_addr: None,
        bootstrap: bootstrap.iter().map(|a| a.to_string()).collect(),
        tls: None,
        members_file: dir.join("members"),
        dbs: &[DbKind::Regional, DbKind::Global],
        replicator: ReplicatorConfig {
            sync_interval: Duration::from_millis(100),
            seed: 11,
            ..ReplicatorConfig::default()
        },
        socket: None,
    }
}

fn open_node(dir: &std::path::Path) -> Node {
    Node::open(patina_testkit::node_options(dir, SCHEMA, "")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_replica_relays_a_write_between_real_nodes() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let memory = MemoryReplica::new();
    let fake =
        ClusterRuntime::start(Shared(Arc::clone(&memory)), options(dirs[0].path(), None)).unwrap();

    let writer = open_node(dirs[1].path());
    let writer_rt =
        ClusterRuntime::start(writer.clone(), options(dirs[1].path(), Some(fake.addr()))).unwrap();
    let outcome = writer
        .transact(vec![patina_node::Statement::new(
            "INSERT INTO machines VALUES (1, 'started')",
        )])
        .await
        .unwrap();
    assert_eq!(outcome.version, Some(1));
    let actor = writer.actor_id();
    eventually(
        "the fake replica holds the write",
        Duration::from_secs(10),
        || {
            let memory = Arc::clone(&memory);
            async move { memory.holds(DbKind::Regional, actor) == 1 }
        },
    )
    .await;
    writer_rt.shutdown().await;
    drop(writer);

    // A node that never met the writer gets its row from the fake by sync.
    let late = open_node(dirs[2].path());
    let late_rt =
        ClusterRuntime::start(late.clone(), options(dirs[2].path(), Some(fake.addr()))).unwrap();
    eventually(
        "the late node has the writer's row",
        Duration::from_secs(20),
        || {
            let late = late.clone();
            async move {
                rows(&late, "SELECT id, state FROM machines").await
                    == vec![vec![
                        patina_node::Value::Integer(1),
                        patina_node::Value::Text("started".into()),
                    ]]
            }
        },
    )
    .await;
    assert!(late.has_applied(DbKind::Regional, actor, 1));
    late_rt.shutdown().await;
    fake.shutdown().await;
}

/// Chunks waiting for a writer that is behind show in the apply queue gauge
/// (`/v1/health`'s `queue_size`), and leave it once merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_waiting_for_the_writer_show_in_the_queue_gauge() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let memory = MemoryReplica::new();
    memory.hold.send_replace(true);
    let fake =
        ClusterRuntime::start(Shared(Arc::clone(&memory)), options(dirs[0].path(), None)).unwrap();
    let writer = open_node(dirs[1].path());
    let writer_rt =
        ClusterRuntime::start(writer.clone(), options(dirs[1].path(), Some(fake.addr()))).unwrap();
    eventually("the two see each other", Duration::from_secs(10), || {
        let seen = fake.members().borrow().len() + writer_rt.members().borrow().len();
        async move { seen == 2 }
    })
    .await;
    for id in 1..=3 {
        writer
            .transact(vec![patina_node::Statement::new(format!(
                "INSERT INTO machines VALUES ({id}, 'started')"
            ))])
            .await
            .unwrap();
    }
    let counters = fake.counters();
    eventually(
        "the pushed chunks wait in the queue",
        Duration::from_secs(10),
        || {
            let queued = counters.apply_queue_chunks();
            async move { queued >= 1 }
        },
    )
    .await;
    assert_eq!(memory.holds(DbKind::Regional, writer.actor_id()), 0);

    memory.hold.send_replace(false);
    let actor = writer.actor_id();
    eventually("every version merged", Duration::from_secs(10), || {
        let merged = memory.holds(DbKind::Regional, actor);
        async move { merged == 3 }
    })
    .await;
    eventually("the queue drained", Duration::from_secs(10), || {
        let queued = counters.apply_queue_chunks();
        async move { queued == 0 }
    })
    .await;
    writer_rt.shutdown().await;
    fake.shutdown().await;
}

/// A peer pushing huge chunks fills the apply queue's byte budget, not the
/// node's memory: past 64 MiB they are dropped and counted, and once the
/// writer catches up an honest write still replicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apply_queue_is_bounded_in_bytes() {
    use patina_transport::{Transport, TransportConfig};
    use patina_wire::{Message, WireChange};
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let memory = MemoryReplica::new();
    memory.hold.send_replace(true);
    let fake =
        ClusterRuntime::start(Shared(Arc::clone(&memory)), options(dirs[0].path(), None)).unwrap();
    let (hostile, _rx) = Transport::bind(
        TransportConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            external_addr: None,
            cluster: ClusterName::new("ams").unwrap(),
            actor: ActorId::random(),
            tls: None,
        },
        None,
    )
    .unwrap();
    // 40 one-chunk versions of ~3 MiB each: 120 MiB if all were queued.
    let actor = ActorId::random();
    let big = |version: u64| ChangeChunk {
        db: DbKind::Regional,
        actor,
        version,
        seqs: patina_wire::Span::new(0, 0),
        last_seq: 0,
        committed_ms: 0,
        changes: vec![WireChange {
            table: "machines".into(),
            pk: vec![1],
            cid: "state".into(),
            val: patina_node::Value::Text("x".repeat(3 << 20)),
            col_version: 1,
            cl: 1,
            seq: 0,
        }],
    };
    let stats = fake.stats();
    for version in 1..=40 {
        hostile
            .send_frames(fake.addr(), vec![Message::Changes(big(version))])
            .await
            .unwrap();
    }
    eventually(
        "big chunks past the budget dropped",
        Duration::from_secs(20),
        || {
            let dropped = stats.chunks_dropped_queue_full.get();
            async move { dropped >= 15 }
        },
    )
    .await;
    let queued = fake.counters().apply_queue_chunks();
    assert!(
        queued <= 22,
        "{queued} chunks of ~3 MiB queued: over 64 MiB"
    );

    memory.hold.send_replace(false);
    let writer = open_node(dirs[1].path());
    let writer_rt =
        ClusterRuntime::start(writer.clone(), options(dirs[1].path(), Some(fake.addr()))).unwrap();
    writer
        .transact(vec![patina_node::Statement::new(
            "INSERT INTO machines VALUES (7, 'started')",
        )])
        .await
        .unwrap();
    let honest = writer.actor_id();
    eventually("the honest write merged", Duration::from_secs(20), || {
        let merged = memory.holds(DbKind::Regional, honest);
        async move { merged == 1 }
    })
    .await;
    writer_rt.shutdown().await;
    fake.shutdown().await;
}
