//! Subscriptions through the node's API: snapshot + applied change events
//! always equal re-running the query (property test over random writes to
//! two tables, for a filter, a join and a GROUP BY), incremental routing,
//! errors, and restarts (including a store that fell behind).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use patina_node::{Node, NodeOptions, Statement, Value};
use patina_subs::{Attach, ChangeKind, SubError, SubItem, SubStream, Subscriptions};
use patina_testkit::rows;
use proptest::prelude::*;

const SCHEMA: &str = "
CREATE TABLE a (id INTEGER PRIMARY KEY NOT NULL, g TEXT, v INTEGER);
CREATE TABLE b (id INTEGER PRIMARY KEY NOT NULL, a_id INTEGER, w INTEGER);
CREATE TABLE other (id INTEGER PRIMARY KEY NOT NULL, x INTEGER);
";

const FILTER: &str = "SELECT id, g, v FROM a WHERE v > 3";
const JOIN: &str = "SELECT a.id, b.id, a.g, b.w FROM a JOIN b ON b.a_id = a.id WHERE b.w >= 0";
const GROUP: &str = "SELECT g, count(*), sum(v) FROM a GROUP BY g";
const COUNT_B: &str = "SELECT count(*), total(w) FROM b";
/// Routed by the values of changed rows (docs/subscriptions.md): an
/// equality on the key, on another column, an IN list, ranges.
const PINNED: &str = "SELECT id, g, v FROM a WHERE id = 2 AND v > 0";
const BY_GROUP: &str = "SELECT id, v FROM a WHERE g = 'y'";
const IN_LIST: &str = "SELECT id, g FROM a WHERE g IN ('x', 'z') AND v >= 0";
const BETWEEN: &str = "SELECT id, v, g FROM a WHERE v BETWEEN 1 AND 4 AND g <> 'z'";
const BELOW: &str = "SELECT id FROM a WHERE 2 > v";

fn options(dir: &Path) -> NodeOptions {
    patina_testkit::node_options(dir, SCHEMA, "")
}

/// A node with its subscriptions, as the daemon runs them.
struct Local {
    node: Node,
    subs: Subscriptions,
}

impl std::ops::Deref for Local {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl Local {
    fn open(dir: &Path) -> Local {
        let node = Node::open(options(dir)).unwrap();
        let subs = Subscriptions::open_for(&node).unwrap();
        Local { node, subs }
    }

    async fn subscribe(
        &self,
        statement: Statement,
        create: bool,
        attach: Attach,
    ) -> Result<SubStream, SubError> {
        self.subs.subscribe(statement, create, attach).await
    }

    async fn attach_subscription(&self, id: &str, attach: Attach) -> Result<SubStream, SubError> {
        self.subs.attach(id, attach).await
    }
}

/// A subscriber's view: the snapshot with the events applied.
struct Model {
    rows: BTreeMap<u64, Vec<Value>>,
    last: u64,
}

impl Model {
    fn from_snapshot(s: &SubStream) -> Model {
        Model {
            rows: s.rows.clone().expect("a snapshot").into_iter().collect(),
            last: s.change_id,
        }
    }

    fn apply(&mut self, item: SubItem) {
        let SubItem::Change(e) = item else {
            panic!("unexpected {item:?}")
        };
        assert_eq!(e.change_id, self.last + 1, "change ids are contiguous");
        self.last = e.change_id;
        match e.kind {
            ChangeKind::Insert => assert!(
                self.rows.insert(e.row_id, e.cells).is_none(),
                "insert of a known row"
            ),
            ChangeKind::Update => assert!(
                self.rows.insert(e.row_id, e.cells).is_some(),
                "update of an unknown row"
            ),
            ChangeKind::Delete => assert_eq!(
                self.rows.remove(&e.row_id),
                Some(e.cells),
                "delete carries the last values"
            ),
        }
    }

    fn sorted(&self) -> Vec<String> {
        sorted(self.rows.values().cloned().collect())
    }
}

fn sorted(rows: Vec<Vec<Value>>) -> Vec<String> {
    let mut v: Vec<String> = rows.iter().map(|r| format!("{r:?}")).collect();
    v.sort();
    v
}

/// Applies events until the model equals a re-run of `sql` (the re-run is
/// taken after the last write, so the events must get there).
async fn converge(node: &Node, sql: &str, stream: &mut SubStream, model: &mut Model) {
    let want = sorted(rows(node, sql).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while model.sorted() != want {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(item)) => model.apply(item),
            Ok(None) => panic!("stream ended"),
            Err(_) => panic!(
                "{sql}: no convergence:\n model {:?}\n want  {want:?}",
                model.sorted()
            ),
        }
    }
}

async fn subscribe(node: &Local, sql: &str) -> SubStream {
    node.subscribe(Statement::new(sql), true, Attach::default())
        .await
        .unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    UpsertA(i64, &'static str, i64),
    SetV(i64, i64),
    DeleteA(i64),
    /// Changes a row's primary key.
    MoveA(i64, i64),
    UpsertB(i64, i64, i64),
    DeleteB(i64),
    Other(i64),
}

impl Op {
    fn statement(&self) -> Statement {
        use Value::{Integer as I, Text as T};
        match self.clone() {
            Op::UpsertA(id, g, v) => Statement::with_params(
                "INSERT INTO a (id, g, v) VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE SET g = excluded.g, v = excluded.v",
                vec![I(id), T(g.into()), I(v)],
            ),
            Op::SetV(id, v) => Statement::with_params("UPDATE a SET v = ? WHERE id = ?", vec![I(v), I(id)]),
            Op::DeleteA(id) => Statement::with_params("DELETE FROM a WHERE id = ?", vec![I(id)]),
            Op::MoveA(from, to) => Statement::with_params("UPDATE OR REPLACE a SET id = ? WHERE id = ?", vec![I(to), I(from)]),
            Op::UpsertB(id, a, w) => Statement::with_params(
                "INSERT INTO b (id, a_id, w) VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE SET a_id = excluded.a_id, w = excluded.w",
                vec![I(id), I(a), I(w)],
            ),
            Op::DeleteB(id) => Statement::with_params("DELETE FROM b WHERE id = ?", vec![I(id)]),
            Op::Other(id) => Statement::with_params("INSERT OR REPLACE INTO other VALUES (?, ?)", vec![I(id), I(id)]),
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0i64..6;
    let g = prop::sample::select(vec!["x", "y", "z"]);
    prop_oneof![
        3 => (id.clone(), g, -2i64..8).prop_map(|(i, g, v)| Op::UpsertA(i, g, v)),
        2 => (id.clone(), -2i64..8).prop_map(|(i, v)| Op::SetV(i, v)),
        1 => id.clone().prop_map(Op::DeleteA),
        1 => (id.clone(), id.clone()).prop_map(|(a, b)| Op::MoveA(a, b)),
        3 => (id.clone(), 0i64..6, -1i64..4).prop_map(|(i, a, w)| Op::UpsertB(i, a, w)),
        1 => id.clone().prop_map(Op::DeleteB),
        1 => id.prop_map(Op::Other),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn snapshot_plus_events_equals_rerunning(
        before in prop::collection::vec(op(), 0..8),
        txs in prop::collection::vec(prop::collection::vec(op(), 1..4), 1..24),
    ) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let node = Local::open(dir.path());
            for o in &before {
                node.transact(vec![o.statement()]).await.unwrap();
            }
            let mut subs = Vec::new();
            for sql in [FILTER, JOIN, GROUP, COUNT_B, PINNED, BY_GROUP, IN_LIST, BETWEEN, BELOW] {
                let s = subscribe(&node, sql).await;
                let m = Model::from_snapshot(&s);
                assert_eq!(m.sorted(), sorted(rows(&node, sql).await), "{sql}: snapshot");
                subs.push((sql, s, m));
            }
            for tx in &txs {
                node.transact(tx.iter().map(Op::statement).collect::<Vec<_>>()).await.unwrap();
            }
            for (sql, s, m) in &mut subs {
                converge(&node, sql, s, m).await;
                // A fresh attach sees the same rows under the same ids.
                let again = node.subscribe(Statement::new(*sql), true, Attach::default()).await.unwrap();
                assert_eq!(again.id, s.id, "same SQL, same subscription");
                while m.last < again.change_id {
                    m.apply(s.next().await.unwrap());
                }
                assert_eq!(again.change_id, m.last);
                assert_eq!(Model::from_snapshot(&again).rows, m.rows);
                assert_eq!(m.sorted(), sorted(rows(&node, sql).await), "{sql}: after all events");
            }
        });
    }
}

#[tokio::test]
async fn writes_to_unread_tables_cost_nothing_and_errors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Local::open(dir.path());
    let mut s = subscribe(&node, FILTER).await;
    node.transact(vec![
        Op::Other(1).statement(),
        Op::UpsertB(1, 1, 1).statement(),
    ])
    .await
    .unwrap();
    node.transact(vec![Op::UpsertA(1, "x", 5).statement()])
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .unwrap()
    {
        Some(SubItem::Change(e)) => {
            assert_eq!((e.kind, e.row_id, e.change_id), (ChangeKind::Insert, 1, 1));
            assert_eq!(
                e.cells,
                vec![
                    Value::Integer(1),
                    Value::Text("x".into()),
                    Value::Integer(5)
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    for bad in [
        "DELETE FROM a",
        "SELECT * FROM nope",
        "SELEC 1",
        "PRAGMA table_info(a)",
        "SELECT * FROM a__crr_clock",
    ] {
        let e = node
            .subscribe(Statement::new(bad), true, Attach::default())
            .await
            .err();
        assert!(matches!(e, Some(SubError::Invalid(_))), "{bad}: {e:?}");
    }
    let e = node
        .subscribe(
            Statement::new(JOIN),
            false,
            Attach {
                from: Some(0),
                skip_rows: false,
            },
        )
        .await
        .err();
    assert_eq!(e, Some(SubError::NoSuchSubscription));
    let e = node
        .attach_subscription("nope", Attach::default())
        .await
        .err();
    assert_eq!(e, Some(SubError::NotFound("nope".into())));
}

async fn next(s: &mut SubStream) -> (ChangeKind, Vec<Value>, u64) {
    match tokio::time::timeout(Duration::from_secs(5), s.next()).await {
        Ok(Some(SubItem::Change(e))) => (e.kind, e.cells, e.change_id),
        other => panic!("{other:?}"),
    }
}

/// Subscriptions pinned to a key by a parameter get the changes of their
/// key only, whatever else the commit changed.
#[tokio::test]
async fn pinned_subscriptions_see_their_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let node = Local::open(dir.path());
    let sql = "SELECT id, v FROM a WHERE id = ?";
    let mut subs = Vec::new();
    for id in 1..=3 {
        let st = Statement::with_params(sql, vec![Value::Integer(id)]);
        subs.push(node.subscribe(st, true, Attach::default()).await.unwrap());
    }
    node.transact(vec![
        Op::UpsertA(2, "x", 20).statement(),
        Op::UpsertA(4, "x", 40).statement(),
    ])
    .await
    .unwrap();
    node.transact(vec![Op::UpsertA(1, "x", 10).statement()])
        .await
        .unwrap();
    node.transact(vec![Op::SetV(2, 21).statement()])
        .await
        .unwrap();
    use Value::Integer as I;
    assert_eq!(
        next(&mut subs[0]).await,
        (ChangeKind::Insert, vec![I(1), I(10)], 1)
    );
    // A worker folds the commits it takes in one batch into one re-run:
    // under load the insert and the update arrive as one insert.
    match next(&mut subs[1]).await {
        (ChangeKind::Insert, cells, 1) if cells == [I(2), I(21)] => {}
        (ChangeKind::Insert, cells, 1) if cells == [I(2), I(20)] => assert_eq!(
            next(&mut subs[1]).await,
            (ChangeKind::Update, vec![I(2), I(21)], 2)
        ),
        other => panic!("key 2's first event: {other:?}"),
    }
    // Key 3 never changed: after one more commit that does change it, its
    // first event is that one.
    node.transact(vec![Op::UpsertA(3, "x", 30).statement()])
        .await
        .unwrap();
    assert_eq!(
        next(&mut subs[2]).await,
        (ChangeKind::Insert, vec![I(3), I(30)], 1)
    );
    // A text parameter against an INTEGER key is not pinned (SQLite
    // converts '1' to 1 for the comparison) and still sees its row.
    let st = Statement::with_params(sql, vec![Value::Text("1".into())]);
    let s = node.subscribe(st, true, Attach::default()).await.unwrap();
    assert_eq!(s.rows.as_deref().map(<[_]>::len), Some(1));
}

#[tokio::test]
async fn subscriptions_survive_restarts_and_stale_stores() {
    let dir = tempfile::tempdir().unwrap();
    let (id, last) = {
        let node = Local::open(dir.path());
        let mut s = subscribe(&node, JOIN).await;
        let mut m = Model::from_snapshot(&s);
        node.transact(vec![
            Op::UpsertA(1, "x", 1).statement(),
            Op::UpsertB(1, 1, 1).statement(),
        ])
        .await
        .unwrap();
        node.transact(vec![Op::UpsertB(2, 1, 2).statement()])
            .await
            .unwrap();
        converge(&node, JOIN, &mut s, &mut m).await;
        (s.id.clone(), m.last)
    };
    assert_eq!(last, 2);
    // The stores as they are now (the node closed them: no WAL left);
    // restored later to play stores that missed commits (a crash between a
    // commit and the subscription's write).
    let stores = dir.path().join("data/subs");
    let stale: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(&stores)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "db"))
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    assert!(!stale.is_empty());
    {
        let node = Local::open(dir.path());
        let mut s = node
            .attach_subscription(
                &id,
                Attach {
                    from: Some(1),
                    skip_rows: false,
                },
            )
            .await
            .unwrap();
        assert!(s.rows.is_none());
        let mut m = Model {
            rows: BTreeMap::new(),
            last: 1,
        };
        m.apply(s.next().await.unwrap());
        node.transact(vec![
            Op::DeleteB(1).statement(),
            Op::UpsertA(2, "y", 0).statement(),
            Op::UpsertB(3, 2, 0).statement(),
        ])
        .await
        .unwrap();
        let snap = node
            .subscribe(Statement::new(JOIN), true, Attach::default())
            .await
            .unwrap();
        assert_eq!(snap.id, id, "same SQL, same id after a restart");
        let mut full = Model::from_snapshot(&snap);
        let mut s2 = snap;
        converge(&node, JOIN, &mut s2, &mut full).await;
        assert!(full.last >= 4);
    }
    for (path, bytes) in &stale {
        std::fs::write(path, bytes).unwrap();
        for ext in ["db-wal", "db-shm"] {
            let _ = std::fs::remove_file(path.with_extension(ext));
        }
    }
    let node = Local::open(dir.path());
    let mut s = node
        .attach_subscription(&id, Attach::default())
        .await
        .unwrap();
    let mut m = Model::from_snapshot(&s);
    converge(&node, JOIN, &mut s, &mut m).await;
    assert!(m.last > 2, "the rebuild continues the stored ids");
    node.transact(vec![Op::UpsertB(4, 2, 3).statement()])
        .await
        .unwrap();
    converge(&node, JOIN, &mut s, &mut m).await;
    // Too old: an error event.
    let mut old = node
        .attach_subscription(
            &id,
            Attach {
                from: Some(0),
                skip_rows: false,
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(old.next().await, Some(SubItem::Change(_))),
        "from=0 is still retained"
    );
    let _ = &mut old;
}

/// A subscription of the old layout (`data/subs/<id>.db`, one file per
/// subscription) is moved into the workers' stores at start: same id, same
/// change ids, its retained events still resumable, the file removed.
#[tokio::test]
async fn subscriptions_of_the_old_layout_are_moved_in() {
    let dir = tempfile::tempdir().unwrap();
    drop(Local::open(dir.path()));
    let subs_dir = dir.path().join("data/subs");
    assert_eq!(
        std::fs::read_dir(&subs_dir).unwrap().count(),
        0,
        "no subscription, no store file"
    );
    let id = "0a1b2c3d-0000-4000-8000-000000000001";
    let old = dir.path().join(format!("data/subs/{id}.db"));
    {
        let conn = rusqlite::Connection::open(&old).unwrap();
        // The old schema and a subscription to FILTER whose row (1, 'x', 5)
        // was inserted (change 1) then deleted (change 2).
        conn.execute_batch(
            "CREATE TABLE meta (id TEXT NOT NULL, sql TEXT NOT NULL, params_kind INTEGER NOT NULL,
                 hash TEXT NOT NULL, next_row_id INTEGER NOT NULL, last_change_id INTEGER NOT NULL);
             CREATE TABLE params (idx INTEGER PRIMARY KEY, name TEXT, value ANY);
             CREATE TABLE rows (row_id INTEGER PRIMARY KEY, cells BLOB NOT NULL);
             CREATE TABLE events (change_id INTEGER PRIMARY KEY, kind INTEGER NOT NULL,
                 row_id INTEGER NOT NULL, cells BLOB NOT NULL);",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO meta VALUES (?1, ?2, 0, '0123456789abcdef', 2, 2)",
            [id, FILTER],
        )
        .unwrap();
        // codec: tag 1 = integer (8 bytes LE), tag 3 = text (u32 LE length).
        let mut cells = vec![1u8];
        cells.extend_from_slice(&1i64.to_le_bytes());
        cells.push(3);
        cells.extend_from_slice(&1u32.to_le_bytes());
        cells.push(b'x');
        cells.push(1);
        cells.extend_from_slice(&5i64.to_le_bytes());
        for (change, kind) in [(1, 0), (2, 2)] {
            conn.execute(
                "INSERT INTO events VALUES (?1, ?2, 1, ?3)",
                rusqlite::params![change, kind, cells],
            )
            .unwrap();
        }
    }
    let node = Local::open(dir.path());
    let from = |n| Attach {
        from: Some(n),
        skip_rows: false,
    };
    let mut s = node.attach_subscription(id, from(1)).await.unwrap();
    let SubItem::Change(e) = s.next().await.unwrap() else {
        panic!("a change")
    };
    assert_eq!((e.kind, e.row_id, e.change_id), (ChangeKind::Delete, 1, 2));
    assert_eq!(e.cells[1], Value::Text("x".into()));
    assert!(!old.exists(), "the old file is removed once moved");
    let same = subscribe(&node, FILTER).await;
    assert_eq!((same.id.as_str(), same.change_id), (id, 2));
    node.transact(vec![Op::UpsertA(7, "y", 9).statement()])
        .await
        .unwrap();
    let SubItem::Change(e) = s.next().await.unwrap() else {
        panic!("a change")
    };
    assert_eq!((e.kind, e.row_id, e.change_id), (ChangeKind::Insert, 2, 3));
    drop((s, same, node));
    // And it stays moved across a restart.
    let node = Local::open(dir.path());
    let s = node.attach_subscription(id, from(0)).await.unwrap();
    assert_eq!(s.change_id, 3);
}

/// A subscription without a stream for the idle expiry is removed (its
/// id unknown, its place free); one with a stream is kept, and `remove`
/// ends the streams of the one it removes.
#[tokio::test]
async fn idle_subscriptions_expire_and_removed_ones_end_their_streams() {
    let dir = tempfile::tempdir().unwrap();
    let node = Local::open(dir.path());
    node.subs.set_idle_expiry(Some(Duration::from_millis(100)));
    let mut kept = subscribe(&node, FILTER).await;
    let dropped = subscribe(&node, GROUP).await;
    let dropped_id = dropped.id.clone();
    drop(dropped);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while node.subs.len() > 1 {
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = node
        .attach_subscription(&dropped_id, Attach::default())
        .await;
    assert_eq!(e.err(), Some(SubError::NotFound(dropped_id)));
    node.transact(vec![Op::UpsertA(1, "x", 5).statement()])
        .await
        .unwrap();
    assert_eq!(next(&mut kept).await.2, 1, "the listened one serves on");

    node.subs.set_idle_expiry(None);
    node.subs.remove(&kept.id).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), kept.next()).await;
    assert_eq!(end.unwrap(), None, "its stream ends");
    assert!(node.subs.is_empty());
    assert_eq!(
        node.subs.remove(&kept.id).await.err(),
        Some(SubError::NotFound(kept.id.clone()))
    );
    // Gone from the store too: a restart does not bring it back.
    drop(node);
    let node = Local::open(dir.path());
    assert!(node.subs.is_empty());
}

/// Subscriptions filtered on a column that is not the key are re-run only
/// for the rows their filter can hold, old or new values: a row moving
/// from one group to another re-runs the two groups' subscriptions (one
/// gets a delete, the other an insert) and none of the others.
#[tokio::test]
async fn routed_subscriptions_rerun_for_the_rows_they_can_hold_only() {
    let dir = tempfile::tempdir().unwrap();
    let node = Local::open(dir.path());
    let sql = "SELECT id, v FROM a WHERE g = ?";
    let mut subs = Vec::new();
    for g in 0..40 {
        let st = Statement::with_params(sql, vec![Value::Text(format!("g{g}"))]);
        subs.push(node.subscribe(st, true, Attach::default()).await.unwrap());
    }
    let mut range = subscribe(&node, "SELECT id, g FROM a WHERE v >= 100").await;
    let mut count = subscribe(&node, "SELECT count(*) FROM a").await;
    let before = node.subs.reruns();
    use Value::{Integer as I, Text as T};
    node.transact(vec![Op::UpsertA(1, "g7", 5).statement()])
        .await
        .unwrap();
    assert_eq!(
        next(&mut subs[7]).await,
        (ChangeKind::Insert, vec![I(1), I(5)], 1)
    );
    // A count has no key: a new count is an insert and a delete.
    assert_eq!(next(&mut count).await.1, vec![I(1)]);
    assert_eq!(next(&mut count).await.1, vec![I(0)]);
    // The g7 subscription and the count; not the 39 others, not the range.
    assert_eq!(node.subs.reruns() - before, 2);

    node.transact(vec![Statement::new(
        "UPDATE a SET g = 'g8', v = 100 WHERE id = 1",
    )])
    .await
    .unwrap();
    assert_eq!(
        next(&mut subs[7]).await,
        (ChangeKind::Delete, vec![I(1), I(5)], 2)
    );
    assert_eq!(
        next(&mut subs[8]).await,
        (ChangeKind::Insert, vec![I(1), I(100)], 1)
    );
    assert_eq!(
        next(&mut range).await,
        (ChangeKind::Insert, vec![I(1), T("g8".into())], 1)
    );

    node.transact(vec![Op::DeleteA(1).statement()])
        .await
        .unwrap();
    assert_eq!(
        next(&mut subs[8]).await,
        (ChangeKind::Delete, vec![I(1), I(100)], 2)
    );
    assert_eq!(next(&mut range).await.0, ChangeKind::Delete);
    assert_eq!(next(&mut count).await.1, vec![I(0)]);
    assert_eq!(next(&mut count).await.1, vec![I(1)]);
    // The move re-ran g7 (old values), g8 and the range (new values) and
    // the count (no event); the delete g8, the range and the count. The
    // count's two re-runs are one when its worker took both commits in
    // one batch. Never the 39 other g subscriptions.
    let reruns = node.subs.reruns() - before;
    assert!(
        (2 + 3 + 3..=2 + 4 + 3).contains(&reruns),
        "{reruns} re-runs"
    );
}

/// Routed subscriptions see the changes merged from a peer, rows moving
/// out of their filter included.
#[tokio::test]
async fn routed_subscriptions_see_changes_merged_from_a_peer() {
    use patina_testkit::{Options, TestCluster};
    let cluster = TestCluster::start(2, Options::default()).await;
    let subs = &cluster.nodes[1].subs;
    let mut app = subs
        .subscribe(
            Statement::new("SELECT id, state FROM machines WHERE app = 'web'"),
            true,
            Attach::default(),
        )
        .await
        .unwrap();
    let mut busy = subs
        .subscribe(
            Statement::with_params(
                "SELECT id, app FROM machines WHERE n IN (?, ?) AND app > 'a'",
                vec![Value::Integer(3), Value::Integer(4)],
            ),
            true,
            Attach::default(),
        )
        .await
        .unwrap();
    cluster
        .exec(
            0,
            "INSERT INTO machines (id, app, state, n) VALUES (1, 'web', 'started', 3)",
        )
        .await;
    cluster
        .exec(
            0,
            "INSERT INTO machines (id, app, state, n) VALUES (2, 'db', 'started', 1)",
        )
        .await;
    use Value::{Integer as I, Text as T};
    // Waited for before the next write: versions merged together report
    // their net effect only.
    assert_eq!(
        merged(&mut app).await,
        (ChangeKind::Insert, vec![I(1), T("started".into())])
    );
    assert_eq!(
        merged(&mut busy).await,
        (ChangeKind::Insert, vec![I(1), T("web".into())])
    );
    cluster
        .exec(0, "UPDATE machines SET app = 'api' WHERE id = 1")
        .await;
    assert_eq!(
        merged(&mut app).await,
        (ChangeKind::Delete, vec![I(1), T("started".into())])
    );
    assert_eq!(
        merged(&mut busy).await,
        (ChangeKind::Update, vec![I(1), T("api".into())])
    );
}

/// The next change of a stream fed by replication (slower than a local
/// commit: a generous bound).
async fn merged(s: &mut SubStream) -> (ChangeKind, Vec<Value>) {
    match tokio::time::timeout(Duration::from_secs(30), s.next()).await {
        Ok(Some(SubItem::Change(e))) => (e.kind, e.cells),
        other => panic!("{other:?}"),
    }
}

/// Subscriptions that differ only in a literal share one analysis per
/// worker; a schema change makes the next one analyze its shape afresh.
#[tokio::test]
async fn subscriptions_of_one_shape_share_its_analysis_until_the_schema_changes() {
    let dir = tempfile::tempdir().unwrap();
    let node = Local::open(dir.path());
    let before = node.subs.analyses();
    let mut subs = Vec::new();
    for g in 0..40 {
        subs.push(subscribe(&node, &format!("SELECT * FROM a WHERE g = 'g{g}'")).await);
    }
    // One per worker at most (4), not 40.
    let analyzed = node.subs.analyses() - before;
    assert!((1..=4).contains(&analyzed), "{analyzed} analyses");
    use Value::{Integer as I, Text as T};
    let reruns = node.subs.reruns();
    node.transact(vec![Op::UpsertA(1, "g7", 5).statement()])
        .await
        .unwrap();
    assert_eq!(
        next(&mut subs[7]).await,
        (ChangeKind::Insert, vec![I(1), T("g7".into()), I(5)], 1)
    );
    // Each keeps its own literal: only g7's re-ran.
    assert_eq!(node.subs.reruns() - reruns, 1);

    std::fs::write(
        dir.path().join("schema/regional.sql"),
        SCHEMA.replace("g TEXT, v INTEGER", "g TEXT, v INTEGER, zone TEXT"),
    )
    .unwrap();
    node.reload_schema().await.unwrap();
    let before = node.subs.analyses();
    let mut zoned = subscribe(&node, "SELECT * FROM a WHERE g = 'g40'").await;
    assert!(node.subs.analyses() > before, "the new schema is analyzed");
    assert_eq!(zoned.columns, ["id", "g", "v", "zone"]);
    node.transact(vec![Statement::new(
        "INSERT INTO a (id, g, v, zone) VALUES (2, 'g40', 1, 'z1')",
    )])
    .await
    .unwrap();
    assert_eq!(
        next(&mut zoned).await,
        (
            ChangeKind::Insert,
            vec![I(2), T("g40".into()), I(1), T("z1".into())],
            1
        )
    );
    // The `SELECT *` subscriptions made before the reload announced three
    // columns: the next commit ends them with a line saying to subscribe
    // again, and subscribing again gives the four.
    node.transact(vec![Statement::new(
        "INSERT INTO a (id, g, v) VALUES (3, 'g8', 1)",
    )])
    .await
    .unwrap();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), subs[8].next()).await {
            Ok(Some(SubItem::Error(e))) => break e,
            Ok(Some(SubItem::Change(_))) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert!(
        ended.contains("subscribe to the statement again"),
        "{ended}"
    );
    let again = subscribe(&node, "SELECT * FROM a WHERE g = 'g8'").await;
    assert_eq!(again.columns, ["id", "g", "v", "zone"]);
    assert_eq!(again.rows.as_deref().map(<[_]>::len), Some(1));
}
