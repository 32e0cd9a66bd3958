//! `Client::subscribe` / `attach` against a real node and API server,
//! reached through a TCP proxy the tests can cut (the fault seam): resumed
//! streams hand out contiguous change ids, without duplicates.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use patina_client::{ChangeKind, Client, ClientError, Statement, SubEvent, Subscription};
use serde_json::Value as Json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const SCHEMA: &str = "CREATE TABLE machines (id TEXT PRIMARY KEY NOT NULL, app TEXT);
CREATE TABLE vals (k INTEGER PRIMARY KEY NOT NULL, v);";

struct Server {
    addr: String,
    _node: patina_node::Node,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let regional = dir.path().join("regional.sql");
    let global = dir.path().join("global.sql");
    std::fs::write(&regional, SCHEMA).unwrap();
    std::fs::write(&global, "").unwrap();
    let node = patina_node::Node::open(patina_node::NodeOptions {
        region: "ams".into(),
        global_member: false,
        data_dir: dir.path().join("data"),
        schema_paths: vec![regional],
        global_schema_paths: vec![global],
        schema_drops: patina_node::Drops::Refused,
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let subs = patina_subs::Subscriptions::open_for(&node).unwrap();
    let state = patina_api::ApiState::new(node.clone(), subs, patina_api::ApiConfig::default());
    tokio::spawn(patina_api::serve(listener, state, std::future::pending()));
    Server {
        addr,
        _node: node,
        _dir: dir,
    }
}

/// Forwards connections to `target`; `cut` closes every open one.
struct Proxy {
    addr: String,
    open: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let open = Arc::new(Mutex::new(Vec::new()));
        let handles = open.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                handles.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy {
            addr,
            open,
            accept: accept.abort_handle(),
        }
    }

    /// Stops listening (new connections are refused) and cuts the open ones.
    fn stop(&self) {
        self.accept.abort();
        self.cut();
    }

    fn cut(&self) {
        for h in self.open.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

async fn exec(c: &Client, sql: &str) {
    c.transact(&[Statement::from(sql)]).await.unwrap();
}

async fn next(sub: &mut Subscription) -> SubEvent {
    tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("an event within 20 s")
        .unwrap()
        .expect("the stream goes on")
}

/// Reads the snapshot: (columns, rows by row id, eoq change id).
async fn snapshot(sub: &mut Subscription) -> (Vec<String>, Vec<(u64, Vec<Json>)>, u64) {
    let SubEvent::Columns(columns) = next(sub).await else {
        panic!("columns first")
    };
    let mut rows = Vec::new();
    loop {
        match next(sub).await {
            SubEvent::Row { row_id, cells } => rows.push((row_id, cells)),
            SubEvent::EndOfQuery { change_id } => return (columns, rows, change_id),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Applies a change to a result kept by row id.
fn apply(rows: &mut Vec<(u64, Vec<Json>)>, event: &SubEvent) -> u64 {
    let SubEvent::Change {
        kind,
        row_id,
        cells,
        change_id,
    } = event
    else {
        panic!("a change, got {event:?}")
    };
    rows.retain(|(id, _)| id != row_id);
    if *kind != ChangeKind::Delete {
        rows.push((*row_id, cells.clone()));
    }
    *change_id
}

async fn query(c: &Client, sql: &str) -> Vec<Vec<Json>> {
    let mut rows = c.query(&Statement::from(sql)).await.unwrap();
    let mut out = Vec::new();
    while let Some(r) = rows.next().await.unwrap() {
        out.push(r);
    }
    out.sort_by_key(|r| r.iter().map(Json::to_string).collect::<Vec<_>>());
    out
}

fn sorted(rows: &[(u64, Vec<Json>)]) -> Vec<Vec<Json>> {
    let mut out: Vec<Vec<Json>> = rows.iter().map(|(_, c)| c.clone()).collect();
    out.sort_by_key(|r| r.iter().map(Json::to_string).collect::<Vec<_>>());
    out
}

const SQL: &str = "SELECT id, app FROM machines WHERE app IS NOT NULL";

#[tokio::test]
async fn cut_connections_resume_with_contiguous_ids() {
    let server = start().await;
    let proxy = Proxy::start(server.addr.clone()).await;
    let direct = Client::new(&server.addr).unwrap();
    exec(&direct, "INSERT INTO machines VALUES ('m0', 'web')").await;
    let c = Client::new(&proxy.addr).unwrap();
    let mut sub = c.subscribe(&Statement::from(SQL)).await.unwrap();
    assert_eq!(sub.id().len(), 36, "{}", sub.id());
    assert_eq!(sub.hash().len(), 16, "{}", sub.hash());
    let (columns, mut rows, mut last) = snapshot(&mut sub).await;
    assert_eq!(columns, ["id", "app"]);
    assert_eq!(rows.len(), 1);
    assert_eq!(last, 0);
    for round in 0..3 {
        for i in 0..3 {
            let sql = format!("INSERT INTO machines VALUES ('r{round}-{i}', 'web')");
            exec(&direct, &sql).await;
        }
        let sql = format!("UPDATE machines SET app = 'db{round}' WHERE id = 'm0'");
        exec(&direct, &sql).await;
        // Read two of the four, cut, write more while disconnected.
        for _ in 0..2 {
            let id = apply(&mut rows, &next(&mut sub).await);
            assert_eq!(id, last + 1, "round {round}");
            last = id;
        }
        proxy.cut();
        exec(
            &direct,
            &format!("DELETE FROM machines WHERE id = 'r{round}-0'"),
        )
        .await;
        for _ in 0..3 {
            let id = apply(&mut rows, &next(&mut sub).await);
            assert_eq!(id, last + 1, "round {round}");
            last = id;
        }
        assert_eq!(sub.last_change_id(), Some(last));
    }
    assert_eq!(sorted(&rows), query(&direct, SQL).await);
}

#[tokio::test]
async fn a_slow_subscriber_is_resumed_and_a_too_old_from_is_an_error() {
    let server = start().await;
    let c = Client::new(&server.addr).unwrap();
    let mut sub = c
        .subscribe(&Statement::from("SELECT k, v FROM vals"))
        .await
        .unwrap();
    let (_, rows, last) = snapshot(&mut sub).await;
    assert!(rows.is_empty());
    assert_eq!(last, 0);
    // Commits of 3,000 and 8,000 events: each more than a live
    // subscriber's buffer (1,024; the server disconnects it with an error
    // line), together more than is retained (10,000).
    let mut expected = 0;
    for (from, to) in [(1, 3_000), (3_001, 11_000)] {
        exec(&c, &format!("INSERT INTO vals (k, v) WITH RECURSIVE c(x) AS (SELECT {from} UNION ALL SELECT x + 1 FROM c WHERE x < {to}) SELECT x, 0 FROM c")).await;
        while expected < to {
            expected += 1;
            match next(&mut sub).await {
                SubEvent::Change {
                    change_id,
                    kind: ChangeKind::Insert,
                    ..
                } => assert_eq!(change_id, expected),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let mut old = c.attach(sub.id(), Some(0)).await.unwrap();
    match old.next().await {
        Err(ClientError::Subscription { message, .. }) => {
            assert!(message.contains("older than"), "{message}")
        }
        other => panic!("expected a too-old error, got {other:?}"),
    }
    assert!(old.next().await.unwrap().is_none(), "not retried");
    // Re-attach by id without from: a fresh snapshot of everything.
    let mut again = c.attach(sub.id(), None).await.unwrap();
    let (_, rows, last) = snapshot(&mut again).await;
    assert_eq!((rows.len(), last), (11_000, 11_000));
}

#[tokio::test]
async fn refusals_are_api_errors() {
    let server = start().await;
    let c = Client::new(&server.addr).unwrap();
    match c
        .attach("00000000-0000-0000-0000-000000000000", Some(1))
        .await
    {
        Err(ClientError::Api { status: 404, .. }) => {}
        Err(e) => panic!("expected 404, got {e}"),
        Ok(_) => panic!("expected 404"),
    }
    match c.subscribe(&Statement::from("SELECT * FROM nope")).await {
        Err(ClientError::Api {
            status: 400,
            message,
        }) => assert!(message.contains("nope")),
        Err(e) => panic!("expected 400, got {e}"),
        Ok(_) => panic!("expected 400"),
    }
}

#[tokio::test]
async fn a_vanished_server_is_given_up_on_after_bounded_retries() {
    let server = start().await;
    let proxy = Proxy::start(server.addr.clone()).await;
    let c = Client::new(&proxy.addr).unwrap();
    let mut sub = c
        .subscribe(&Statement::from(SQL))
        .await
        .unwrap()
        .with_reconnect(patina_client::Reconnect {
            attempts: 3,
            delay_first: Duration::from_millis(10),
            delay_max: Duration::from_millis(20),
        });
    snapshot(&mut sub).await;
    proxy.stop();
    match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
        Ok(Err(ClientError::Reconnect {
            attempts: 3, last, ..
        })) => {
            assert!(last.is_transient(), "{last}")
        }
        other => panic!("expected to give up, got {other:?}"),
    }
    assert!(sub.next().await.unwrap().is_none(), "ended");
}
