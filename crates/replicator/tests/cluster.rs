//! Regional clusters in one process (127.0.0.1, port 0): random concurrent
//! writes on every node converge to identical tables; sync alone converges;
//! a restarted node fetches only what it missed; a late joiner gets
//! everything, including a 100k-row transaction.

use std::time::Duration;

use patina_node::Value;
use patina_replicator::ReplicatorConfig;
use patina_testkit::{random_writes, Options, TestCluster, Written};

const CONVERGE: Duration = Duration::from_secs(60);

async fn converges(nodes: usize, writes: usize, options: Options) {
    let seed = options.replicator.seed;
    let cluster = TestCluster::start(nodes, options).await;
    let written = random_writes(&cluster, writes, seed).await;
    let counts = cluster.wait_converged(&written, CONVERGE).await;
    println!("{nodes} nodes converged, seed {seed}, rows per table {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge() {
    converges(3, 150, Options::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_converge() {
    converges(5, 80, Options::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_converge() {
    converges(10, 40, Options::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_alone_converges() {
    let options = Options {
        replicator: ReplicatorConfig {
            broadcast: false,
            sync_interval: Duration::from_millis(50),
            seed: 11,
            ..ReplicatorConfig::default()
        },
        ..Options::default()
    };
    let seed = options.replicator.seed;
    let cluster = TestCluster::start(4, options).await;
    let written = random_writes(&cluster, 60, seed).await;
    cluster.wait_converged(&written, CONVERGE).await;
    for t in &cluster.nodes {
        let stats = t.runtime().stats();
        assert_eq!(stats.broadcast_chunks_sent.get(), 0);
        assert!(stats.versions_applied.get() > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_fetches_only_what_it_missed() {
    let mut cluster = TestCluster::start(3, Options::default()).await;
    let mut written = Written::new();
    for i in 0..50 {
        cluster
            .exec(
                i % 3,
                &format!("INSERT INTO machines VALUES ({i}, 'a', 's', {i})"),
            )
            .await;
        written.machine(i as i64, "a", "s", i as i64);
    }
    cluster.wait_converged(&written, CONVERGE).await;
    cluster.stop(2).await;
    // What node 2 misses while down: the changes of these commits.
    let mut commits = [
        cluster.nodes[0].node.subscribe_changesets(),
        cluster.nodes[1].node.subscribe_changesets(),
    ];
    for i in 100..200 {
        cluster
            .exec(
                i % 2,
                &format!("INSERT INTO machines VALUES ({i}, 'b', 's', {i})"),
            )
            .await;
        written.machine(i as i64, "b", "s", i as i64);
    }
    let mut missed = 0;
    for rx in &mut commits {
        while let Ok(cs) = rx.try_recv() {
            missed += cs.changes.len() as u64;
        }
    }
    assert!(missed >= 100 * 3, "{missed} changes");
    cluster.restart(2).await;
    cluster.wait_members(CONVERGE).await;
    let counts = cluster.wait_converged(&written, CONVERGE).await;
    assert_eq!(counts[0], 150);
    let received = cluster.nodes[2].runtime().stats().changes_received.get();
    assert_eq!(
        received, missed,
        "the restarted node received exactly what it missed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_receives_everything_including_a_100k_row_transaction() {
    let mut cluster = TestCluster::start(2, Options::default()).await;
    cluster
        .exec(
            0,
            "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 100000)
             INSERT INTO machines SELECT i, 'app' || (i % 13), 'started', i FROM k",
        )
        .await;
    cluster
        .exec(1, "INSERT INTO apps VALUES ('web', 'ops')")
        .await;
    let mut written = Written::new();
    for i in 1..=100_000i64 {
        written.machine(i, &format!("app{}", i % 13), "started", i);
    }
    written.row(
        "apps",
        vec![Value::Text("web".into()), Value::Text("ops".into())],
    );
    cluster.add_node().await;
    cluster.wait_members(CONVERGE).await;
    let counts = cluster
        .wait_converged(&written, Duration::from_secs(180))
        .await;
    assert_eq!(counts, vec![100_000, 1]);
}

/// Remote writes reach subscriptions as local ones do: a subscriber on
/// node 1 sees node 0's insert, update and delete as change events, and
/// its view equals re-running the query there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_see_remote_writes() {
    use patina_node::Statement;
    use patina_subs::{Attach, ChangeKind, SubItem};
    let cluster = TestCluster::start(2, Options::default()).await;
    let sql = "SELECT id, state FROM machines WHERE app = 'web'";
    let mut sub = cluster.nodes[1]
        .subs
        .subscribe(Statement::new(sql), true, Attach::default())
        .await
        .unwrap();
    assert_eq!(sub.rows.as_ref().map(Vec::len), Some(0));
    let (int, text) = (patina_node::Value::Integer, |s: &str| {
        patina_node::Value::Text(s.into())
    });
    // One write at a time, each awaited as its event: the engine may fold
    // commits that arrive together into one diff.
    let steps = [
        (
            "INSERT INTO machines VALUES (2, 'db', 'started', 0), (1, 'web', 'started', 0)",
            ChangeKind::Insert,
            "started",
        ),
        (
            "UPDATE machines SET state = 'stopped' WHERE id = 1",
            ChangeKind::Update,
            "stopped",
        ),
        (
            "DELETE FROM machines WHERE id = 1",
            ChangeKind::Delete,
            "stopped",
        ),
    ];
    for (write, kind, state) in steps {
        cluster.exec(0, write).await;
        let item = tokio::time::timeout(CONVERGE, sub.next())
            .await
            .expect("a change event within the timeout")
            .expect("the stream stays open");
        match item {
            SubItem::Change(event) => {
                assert_eq!(
                    (event.kind, event.cells),
                    (kind, vec![int(1), text(state)]),
                    "after {write}"
                );
            }
            SubItem::Error(e) => panic!("subscription failed: {e}"),
        }
    }
}
