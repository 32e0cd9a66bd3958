//! Reads that cannot pin or hang a node: `/v1/queries` runs one statement
//! that reads, refuses what would change its pooled connection (BEGIN,
//! ATTACH, pragmas that set), and every query stops when it runs past
//! `api.query_timeout` or its client goes away.

mod common;

use std::time::{Duration, Instant};

use common::{start, start_with, Options};
use patina_api::ApiConfig;
use serde_json::json;

const RUNAWAY: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";

#[tokio::test]
async fn statements_that_would_change_a_pooled_connection_are_refused() {
    let server = start().await;
    for (sql, word) in [
        ("BEGIN", "transaction control"),
        ("BEGIN IMMEDIATE", "transaction control"),
        ("SAVEPOINT s", "transaction control"),
        ("COMMIT", "transaction control"),
        ("ATTACH DATABASE ':memory:' AS other", "ATTACH"),
        ("DETACH DATABASE global", "ATTACH"),
        ("PRAGMA writable_schema = 1", "PRAGMA"),
        ("PRAGMA query_only = 0", "PRAGMA"),
        ("PRAGMA user_version = 7", "PRAGMA"),
        ("PRAGMA journal_mode", "not a known read"),
        ("SELECT 1; SELECT 2", "one"),
        ("DELETE FROM machines", "read-only"),
    ] {
        let answer = server.post_json("/v1/queries", &json!(sql)).await;
        assert_eq!(answer.status, 400, "{sql}: {:?}", answer.body);
        let error = answer.error();
        assert!(error.contains(word), "{sql}: {error}");
    }
    // Reads of the schema and of settings stay allowed.
    for sql in [
        "PRAGMA table_info(machines)",
        "SELECT name FROM pragma_table_info('machines')",
        "PRAGMA user_version",
        "PRAGMA global.table_list",
    ] {
        let answer = server.post_json("/v1/queries", &json!(sql)).await;
        assert_eq!(answer.status, 200, "{sql}: {:?}", answer.body);
    }
}

#[tokio::test]
async fn refused_transaction_control_never_pins_a_snapshot() {
    let server = start().await;
    let count = || async {
        server
            .rows(json!("SELECT count(*) AS n FROM machines"))
            .await[0][0]
            .as_i64()
            .unwrap()
    };
    assert_eq!(count().await, 0);
    // More attempts than the pool has connections: had one stuck, some
    // later count would read the old snapshot.
    for _ in 0..20 {
        let answer = server.post_json("/v1/queries", &json!("BEGIN")).await;
        assert_eq!(answer.status, 400);
        count().await;
    }
    for i in 1..=3 {
        server
            .exec(json!([format!(
                "INSERT INTO machines (id) VALUES ('m{i}')"
            )]))
            .await;
        for _ in 0..10 {
            assert_eq!(count().await, i);
        }
    }
}

#[tokio::test]
async fn a_query_past_the_time_limit_ends_with_an_error_event() {
    let server = start_with(Options {
        config: ApiConfig {
            query_timeout: Duration::from_millis(300),
            ..ApiConfig::default()
        },
        ..Options::default()
    })
    .await;
    let started = Instant::now();
    let answer = server.post_json("/v1/queries", &json!(RUNAWAY)).await;
    assert_eq!(answer.status, 200);
    let lines = answer.lines();
    let error = lines
        .iter()
        .find_map(|l| l["error"].as_str())
        .unwrap_or_else(|| panic!("no error event in {lines:?}"));
    assert!(error.contains("api.query_timeout"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_query_whose_client_went_away_frees_its_connection() {
    // A limit no test waits out: only the disconnect can end these.
    let server = start_with(Options {
        config: ApiConfig {
            query_timeout: Duration::from_secs(600),
            ..ApiConfig::default()
        },
        ..Options::default()
    })
    .await;
    // Twice as many runaways as the node has read connections, each
    // dropped once its response has started.
    for _ in 0..16 {
        let request = server
            .http
            .post(server.url("/v1/queries"))
            .header("content-type", "application/json")
            .body(json!(RUNAWAY).to_string())
            .timeout(Duration::from_millis(500))
            .send();
        let _ = request.await;
    }
    let started = Instant::now();
    let rows = server.rows(json!("SELECT 1 AS one")).await;
    assert_eq!(rows, vec![json!([1])]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a free connection only after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_runaway_subscription_is_interrupted_and_its_worker_serves_on() {
    let server = start_with(Options {
        config: ApiConfig {
            query_timeout: Duration::from_millis(300),
            ..ApiConfig::default()
        },
        ..Options::default()
    })
    .await;
    // More runaways than there are subscription workers: had one stuck,
    // some later subscription would wait behind it for good.
    // Subscriptions read replicated tables only: the runaway is a cross
    // join of 200 rows five times over (3.2e11 rows).
    let inserts: Vec<String> = (0..200)
        .map(|i| format!("INSERT INTO machines (id) VALUES ('m{i}')"))
        .collect();
    server.exec(json!(inserts)).await;
    for i in 0..6 {
        let sql = format!(
            "SELECT m.id, (SELECT count(*) + {i} FROM machines a, machines b, machines c, \
             machines d, machines e) AS n FROM machines m WHERE m.id = 'm1'"
        );
        let answer = server.post_json("/v1/subscriptions", &json!(sql)).await;
        assert_eq!(answer.status, 400, "{:?}", answer.body);
        assert!(
            answer.error().contains("api.query_timeout"),
            "{}",
            answer.error()
        );
    }
    let started = Instant::now();
    let answer = server
        .http
        .post(server.url("/v1/subscriptions"))
        .header("content-type", "application/json")
        .body(json!("SELECT id FROM machines").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(10));
}
