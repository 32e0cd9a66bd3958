//! The API over real HTTP against a real node: transactions, queries,
//! health, table stats, members, regions, metrics. Transport rules (415,
//! 400, 422, 413, 401, h2c) are in `transport.rs`.

mod common;

use std::sync::Arc;

use common::{start, start_with, Options};
use patina_api::{ApiConfig, CatchUpReport, ClusterView, HealthReport, MemberInfo, RegionInfo};
use serde_json::{json, Value as Json};

fn is_secs(v: &Json) -> bool {
    v.as_f64().is_some_and(|t| t >= 0.0)
}

// ---- transactions -------------------------------------------------------

/// Many clients at once: the writer commits them in groups (one SQLite
/// transaction, each client in a savepoint). Every client still gets its
/// own outcome: a failing one is rolled back whole and alone, the others
/// commit whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_commit_or_fail_each_on_their_own() {
    let s = Arc::new(start().await);
    s.exec(json!([
        "INSERT INTO machines (id, app) VALUES ('seed', 'x')"
    ]))
    .await;
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..64 {
        let s = Arc::clone(&s);
        clients.spawn(async move {
            let id = format!("m{i:02}");
            // Every fifth writes its row, then collides with 'seed'.
            let second = if i % 5 == 0 {
                json!("INSERT INTO machines (id, app) VALUES ('seed', 'dup')")
            } else {
                json!([
                    "UPDATE machines SET state = ? WHERE id = ?",
                    [format!("s{i}"), id]
                ])
            };
            let body = json!([
                ["INSERT INTO machines (id, app) VALUES (?, 'web')", [id]],
                second
            ]);
            (i, s.post_json("/v1/transactions", &body).await)
        });
    }
    let mut committed = Vec::new();
    while let Some(done) = clients.join_next().await {
        let (i, answer) = done.unwrap();
        if i % 5 == 0 {
            assert_eq!(
                answer.status,
                500,
                "{i}: {}",
                String::from_utf8_lossy(&answer.body)
            );
            let body = answer.json();
            let error = body["results"][0]["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("statement 2 of 2") && error.contains("UNIQUE"),
                "{i}: {body}"
            );
            assert_eq!(body["version"], Json::Null);
        } else {
            assert_eq!(
                answer.status,
                200,
                "{i}: {}",
                String::from_utf8_lossy(&answer.body)
            );
            let body = answer.json();
            assert!(body["version"].as_u64().is_some_and(|v| v >= 2), "{body}");
            let affected: Vec<_> = body["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["rows_affected"].clone())
                .collect();
            assert_eq!(affected, vec![json!(1), json!(1)]);
            committed.push(i);
        }
    }
    committed.sort_unstable();
    let mut expected = vec![json!(["seed", null])];
    expected.extend(
        committed
            .iter()
            .map(|i| json!([format!("m{i:02}"), format!("s{i}")])),
    );
    assert_eq!(
        s.rows(json!(
            "SELECT id, state FROM machines ORDER BY id = 'seed' DESC, id"
        ))
        .await,
        expected,
        "exactly the committed clients' rows, each whole"
    );
    let stats = s.node.write_stats(patina_node::DbKind::Regional);
    assert_eq!(stats.transactions, committed.len() as u64 + 1);
    assert!(stats.commits <= stats.transactions);
    println!(
        "{} transactions in {} commits",
        stats.transactions, stats.commits
    );
}

#[tokio::test]
async fn transactions_take_all_four_statement_forms() {
    let s = start().await;
    let body = s
        .exec(json!([
            "INSERT INTO machines (id, app) VALUES ('m1', 'web')",
            ["INSERT INTO machines (id, app) VALUES (?, ?)", ["m2", "web"]],
            ["INSERT INTO machines (id, app) VALUES (:id, :app)", {":id": "m3", ":app": "db"}],
            {"query": "INSERT INTO machines (id, app) VALUES (?, ?)", "params": ["m4", "db"]},
            {"query": "INSERT INTO machines (id, app) VALUES (:id, :app)", "named_params": {":id": "m5", ":app": "db"}},
            {"query": "UPDATE machines SET state = 'started'", "params": null, "named_params": null},
        ]))
        .await;
    let obj = body.as_object().unwrap();
    let mut keys: Vec<_> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["actor_id", "results", "time", "version"]);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    for r in &results[..5] {
        assert_eq!(r["rows_affected"], 1);
        assert!(is_secs(&r["time"]));
    }
    assert_eq!(results[5]["rows_affected"], 5);
    assert!(is_secs(&body["time"]));
    assert_eq!(body["version"], 1);
    let actor = body["actor_id"].as_str().unwrap();
    assert_eq!(actor, s.actor());
    assert_eq!(actor.len(), 32);
    assert!(actor
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));

    let rows = s
        .rows(json!("SELECT id, app, state FROM machines ORDER BY id"))
        .await;
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[2], json!(["m3", "db", "started"]));

    // Versions count per write; a write changing nothing books none.
    let second = s
        .exec(json!(["DELETE FROM machines WHERE id = 'm1'"]))
        .await;
    assert_eq!(second["version"], 2);
    let nothing = s
        .exec(json!(["DELETE FROM machines WHERE id = 'nope'"]))
        .await;
    assert_eq!(nothing["version"], Json::Null);
    assert_eq!(nothing["results"][0]["rows_affected"], 0);
}

#[tokio::test]
async fn named_parameters_take_every_sigil() {
    let s = start().await;
    s.exec(json!([
        ["INSERT INTO machines (id, app, state) VALUES (:id, @app, $state)",
         {":id": "m1", "@app": "web", "$state": "started"}],
        {"query": "INSERT INTO machines (id, app, state) VALUES ($id, :app, @state)",
         "named_params": {"$id": "m2", ":app": "db", "@state": "stopped"}},
    ]))
    .await;
    let rows = s
        .rows(
            json!(["SELECT id, app, state FROM machines WHERE app = @app OR id = $id ORDER BY id",
                     {"@app": "web", "$id": "m2"}]),
        )
        .await;
    assert_eq!(
        rows,
        vec![
            json!(["m1", "web", "started"]),
            json!(["m2", "db", "stopped"])
        ]
    );
}

#[tokio::test]
async fn parameters_map_to_sqlite_values_as_documented() {
    let s = start().await;
    let params = [
        json!(null),
        json!(true),
        json!(false),
        json!(-42),
        json!(1.5),
        json!("text"),
        json!([0, 1, 127, 255]),
        json!([]),
        json!([1, 256]),
        json!([1, "a"]),
        json!({"a": [1, 2], "b": null}),
    ];
    let statements: Vec<Json> = params
        .iter()
        .enumerate()
        .map(|(k, v)| json!(["INSERT INTO vals (k, v) VALUES (?, ?)", [k, v]]))
        .collect();
    s.exec(Json::Array(statements)).await;
    // An object's JSON text is kept exactly as sent.
    s.post_raw(
        "/v1/transactions",
        r#"[["INSERT INTO vals (k, v) VALUES (?, ?)", [100, {"z":1,  "a" : 2}]]]"#,
    )
    .await;
    let rows = s
        .rows(json!("SELECT k, typeof(v), v FROM vals ORDER BY k"))
        .await;
    let expected = [
        json!([0, "null", null]),
        json!([1, "integer", 1]),
        json!([2, "integer", 0]),
        json!([3, "integer", -42]),
        json!([4, "real", 1.5]),
        json!([5, "text", "text"]),
        json!([6, "blob", [0, 1, 127, 255]]),
        json!([7, "blob", []]),
        json!([8, "text", "[1,256]"]),
        json!([9, "text", "[1,\"a\"]"]),
        json!([10, "text", "{\"a\":[1,2],\"b\":null}"]),
        json!([100, "text", "{\"z\":1,  \"a\" : 2}"]),
    ];
    assert_eq!(rows, expected);
}

#[tokio::test]
async fn an_empty_transaction_is_400_with_corrosions_body() {
    let s = start().await;
    let answer = s.post_raw("/v1/transactions", "[]").await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        std::str::from_utf8(&answer.body).unwrap(),
        format!(
            r#"{{"results":[{{"error":"at least 1 statement is required"}}],"time":0.0,"version":null,"actor_id":"{}"}}"#,
            s.actor()
        )
    );
}

#[tokio::test]
async fn a_failing_statement_is_500_and_rolls_everything_back() {
    let s = start().await;
    let answer = s
        .post_json(
            "/v1/transactions",
            &json!([
                "INSERT INTO machines (id) VALUES ('m1')",
                "INSERT INTO nope (id) VALUES (1)",
            ]),
        )
        .await;
    assert_eq!(answer.status, 500);
    let body = answer.json();
    let error = body["results"][0]["error"].as_str().unwrap();
    assert!(error.starts_with("statement 2 of 2: "), "{error}");
    assert!(error.contains("no such table: nope"), "{error}");
    assert_eq!(body["results"].as_array().unwrap().len(), 1);
    assert!(is_secs(&body["time"]));
    assert_eq!(body["version"], Json::Null);
    assert_eq!(body["actor_id"], s.actor());
    assert!(s.rows(json!("SELECT * FROM machines")).await.is_empty());

    // A lone statement's error is SQLite's message alone.
    let answer = s
        .post_json(
            "/v1/transactions",
            &json!(["INSERT INTO machines (id) VALUES (NULL)"]),
        )
        .await;
    assert_eq!(answer.status, 500);
    let error = answer.json()["results"][0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!error.starts_with("statement "), "{error}");
}

#[tokio::test]
async fn writing_regional_and_global_tables_at_once_is_400_and_writes_nothing() {
    let s = start().await;
    let answer = s
        .post_json(
            "/v1/transactions",
            &json!([
                "INSERT INTO machines (id, app) VALUES ('m1', 'web')",
                "INSERT INTO app_regions (app, region, machines) VALUES ('web', 'ams', 1)",
            ]),
        )
        .await;
    assert_eq!(answer.status, 400);
    let body = answer.json();
    let error = body["results"][0]["error"].as_str().unwrap();
    assert!(error.contains("never both"), "{error}");
    assert_eq!(body["version"], Json::Null);
    assert_eq!(body["actor_id"], s.actor());
    assert!(s.rows(json!("SELECT * FROM machines")).await.is_empty());
    assert!(s.rows(json!("SELECT * FROM app_regions")).await.is_empty());
}

#[tokio::test]
async fn global_writes_book_versions_in_the_global_database() {
    let s = start().await;
    let regional = s
        .exec(json!(["INSERT INTO machines (id) VALUES ('m1')"]))
        .await;
    let global = s
        .exec(json!([
            "INSERT INTO app_regions (app, region, machines) VALUES ('web', 'ams', 1)"
        ]))
        .await;
    assert_eq!(regional["version"], 1);
    assert_eq!(
        global["version"], 1,
        "global.db has its own version sequence"
    );
    let rows = s
        .rows(json!(
            "SELECT m.id, g.app FROM machines m JOIN global.app_regions g"
        ))
        .await;
    assert_eq!(rows, vec![json!(["m1", "web"])]);
}

#[tokio::test]
async fn a_transaction_over_its_timeout_is_504_and_may_still_commit() {
    let s = start().await;
    // Counting to 3 million takes far longer than 20 ms, even optimized.
    let slow = "INSERT INTO machines (id, n) VALUES ('slow', (WITH RECURSIVE c(x) AS \
                (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT count(*) FROM c))";
    let answer = s
        .post_json("/v1/transactions?timeout=0.02", &json!([slow]))
        .await;
    assert_eq!(answer.status, 504);
    let body = answer.json();
    let error = body["results"][0]["error"].as_str().unwrap();
    assert!(error.contains("may still commit"), "{error}");
    assert_eq!(body["version"], Json::Null);
    assert_eq!(body["actor_id"], s.actor());
    // The writer runs transactions in order: once this one answers, the
    // timed-out one has committed (whole).
    s.exec(json!(["INSERT INTO machines (id) VALUES ('after')"]))
        .await;
    let rows = s
        .rows(json!("SELECT id, n FROM machines ORDER BY id"))
        .await;
    assert_eq!(rows, vec![json!(["after", null]), json!(["slow", 3000000])]);
    // A generous timeout changes nothing for a quick write.
    let answer = s
        .post_json(
            "/v1/transactions?timeout=30",
            &json!(["DELETE FROM machines"]),
        )
        .await;
    assert_eq!(answer.status, 200);
    for bad in ["0", "-1", "abc", "99999"] {
        let answer = s
            .post_json(
                &format!("/v1/transactions?timeout={bad}"),
                &json!(["SELECT 1"]),
            )
            .await;
        assert_eq!(answer.status, 400, "timeout={bad}");
        assert!(answer.error().contains("timeout"));
    }
}

// ---- queries --------------------------------------------------------------

#[tokio::test]
async fn queries_stream_columns_rows_and_eoq() {
    let s = start().await;
    s.exec(json!([[
        "INSERT INTO machines (id, app, n, r, data) VALUES (?, ?, ?, ?, ?)",
        ["m1", null, 7, 0.25, [104, 105]]
    ]]))
    .await;
    let answer = s
        .post_json(
            "/v1/queries",
            &json!("SELECT id, app, n, r, data FROM machines"),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["content-type"], "application/x-ndjson");
    let lines = answer.lines();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[0],
        json!({"columns": ["id", "app", "n", "r", "data"]})
    );
    assert_eq!(
        lines[1],
        json!({"row": [1, ["m1", null, 7, 0.25, [104, 105]]]})
    );
    let eoq = lines[2]["eoq"].as_object().unwrap();
    assert_eq!(eoq.len(), 1);
    assert!(is_secs(&eoq["time"]));

    // Every statement form works for queries too.
    for st in [
        json!(["SELECT id FROM machines WHERE n = ?", [7]]),
        json!(["SELECT id FROM machines WHERE n = :n", {":n": 7}]),
        json!({"query": "SELECT id FROM machines WHERE n = ?", "params": [7]}),
        json!({"query": "SELECT id FROM machines WHERE n = $n", "named_params": {"$n": 7}}),
    ] {
        assert_eq!(s.rows(st).await, vec![json!(["m1"])]);
    }
    // No rows: columns then eoq.
    let lines = s
        .post_json("/v1/queries", &json!("SELECT id FROM machines WHERE 0"))
        .await
        .lines();
    assert_eq!(lines.len(), 2);
}

#[tokio::test]
async fn ten_thousand_rows_stream_in_order_with_ids() {
    let s = start().await;
    s.exec(json!([
        "INSERT INTO vals (k, v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000) SELECT x, 'v' || x FROM c"
    ]))
    .await;
    let answer = s
        .post_json("/v1/queries", &json!("SELECT k, v FROM vals ORDER BY k"))
        .await;
    assert_eq!(answer.status, 200);
    let lines = answer.lines();
    assert_eq!(lines.len(), 10_002);
    assert_eq!(lines[0], json!({"columns": ["k", "v"]}));
    for (i, line) in lines[1..=10_000].iter().enumerate() {
        let n = i + 1;
        assert_eq!(line, &json!({"row": [n, [n, format!("v{n}")]]}));
    }
    assert!(lines[10_001].get("eoq").is_some());
}

#[tokio::test]
async fn writes_through_queries_are_400() {
    let s = start().await;
    let answer = s
        .post_json(
            "/v1/queries",
            &json!("INSERT INTO machines (id) VALUES ('m1')"),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert!(answer.error().contains("read-only"));
    assert!(s.rows(json!("SELECT * FROM machines")).await.is_empty());
}

#[tokio::test]
async fn prepare_errors_are_400_before_any_line() {
    let s = start().await;
    for sql in ["SELECT * FROM nope", "SELEKT 1", "SELECT ?"] {
        let st = if sql.contains('?') {
            json!([sql, [1, 2]])
        } else {
            json!(sql)
        };
        let answer = s.post_json("/v1/queries", &st).await;
        assert_eq!(answer.status, 400, "{sql}");
        assert!(!answer.error().is_empty());
    }
}

#[tokio::test]
async fn errors_while_iterating_end_the_stream_with_an_error_line() {
    let s = start().await;
    // abs() of the smallest integer overflows: at the third row.
    let sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5) \
               SELECT CASE WHEN x < 3 THEN x ELSE abs(-9223372036854775807 - 1) END FROM c";
    let answer = s.post_json("/v1/queries", &json!(sql)).await;
    assert_eq!(answer.status, 200);
    let lines = answer.lines();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[1], json!({"row": [1, [1]]}));
    assert_eq!(lines[2], json!({"row": [2, [2]]}));
    let error = lines[3]["error"].as_str().unwrap();
    assert!(error.contains("overflow"), "{error}");
}

#[tokio::test]
async fn after_waits_for_the_version_to_be_applied() {
    let s = start().await;
    let first = s
        .exec(json!(["INSERT INTO machines (id) VALUES ('m1')"]))
        .await;
    let actor = s.actor();
    let v1 = first["version"].as_u64().unwrap();

    // Already applied: answers at once.
    let path = format!("/v1/queries?after={actor}:{v1}");
    let answer = s.post_json(&path, &json!("SELECT id FROM machines")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.lines().len(), 3);

    // Not yet applied: the query waits for the write, then sees it.
    let path = format!(
        "/v1/queries?timeout=60&after={actor}:{v1}&after={actor}:{}",
        v1 + 1
    );
    let waiting = {
        let (http, url) = (s.http.clone(), s.url(&path));
        tokio::spawn(async move {
            let r = http
                .post(url)
                .header("content-type", "application/json")
                .body(json!("SELECT id FROM machines ORDER BY id").to_string())
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let second = s
        .exec(json!(["INSERT INTO machines (id) VALUES ('m2')"]))
        .await;
    assert_eq!(second["version"].as_u64(), Some(v1 + 1));
    let (status, text) = waiting.await.unwrap();
    assert_eq!(status, 200);
    assert!(text.contains(r#"{"row":[2,["m2"]]}"#), "{text}");
}

#[tokio::test]
async fn after_a_version_never_applied_is_504() {
    let s = start().await;
    let actor = s.actor();
    let other = "0123456789abcdef0123456789abcdef";
    for after in [format!("{actor}:1"), format!("{other}:5")] {
        let path = format!("/v1/queries?timeout=0.05&after={after}");
        let answer = s.post_json(&path, &json!("SELECT 1")).await;
        assert_eq!(answer.status, 504, "{after}");
        assert!(answer.error().contains("has not applied"));
    }
}

#[tokio::test]
async fn after_names_the_database_a_version_belongs_to() {
    let s = start().await;
    let actor = s.actor();
    let global = s
        .exec(json!([
            "INSERT INTO app_regions (app, region, machines) VALUES ('web', 'ams', 1)"
        ]))
        .await;
    assert_eq!(global["version"].as_u64(), Some(1));
    // global.db's version 1 exists; regional.db has none yet.
    let path = format!("/v1/queries?timeout=0.05&after=global:{actor}:1");
    assert_eq!(s.post_json(&path, &json!("SELECT 1")).await.status, 200);
    let path = format!("/v1/queries?timeout=0.05&after={actor}:1");
    let answer = s.post_json(&path, &json!("SELECT 1")).await;
    assert_eq!(answer.status, 504);
    assert!(answer.error().contains("regional"), "{}", answer.error());
}

#[tokio::test]
async fn malformed_after_or_timeout_is_400() {
    let s = start().await;
    let actor = s.actor();
    for query in [
        "after=nothex:1".to_string(),
        format!("after={actor}"),
        format!("after={actor}:0"),
        format!("after={actor}:x"),
        "timeout=never".to_string(),
        "timeout=0".to_string(),
    ] {
        let answer = s
            .post_json(&format!("/v1/queries?{query}"), &json!("SELECT 1"))
            .await;
        assert_eq!(answer.status, 400, "{query}");
        let error = answer.error();
        assert!(
            error.contains("after=") || error.contains("timeout="),
            "{error}"
        );
    }
}

// ---- health, members, regions, table stats --------------------------------

#[tokio::test]
async fn health_of_a_lone_node() {
    let s = start().await;
    let answer = s.get("/v1/health").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json(),
        json!({"response": {"gaps": 0, "members": 1, "p99_lag": 0.0, "queue_size": 0,
                            "region": "ams", "global_member": false, "leader": null,
                            "global_lag": null, "global_p99_lag": null, "catching_up": false,
                            "catch_up": {"phase": "alone", "missing_versions": 0,
                                         "elapsed_secs": 0.0, "reason": null},
                            "catchup_p99_lag": 0.0, "parked_versions": 0,
                            "refused_versions": 0, "dropped_changes": 0, "stale": false,
                            "returning": false,
                            "reason": null}})
    );
    let answer = s
        .get("/v1/health?gaps=0&p99_lag=0&max_queue=0&failure_status=500")
        .await;
    assert_eq!(
        answer.status, 200,
        "a lone node is healthy at the strictest thresholds"
    );
    let long = "9".repeat(60_000);
    for bad in [
        "gaps=-1",
        "p99_lag=x",
        "max_queue=1.5",
        "failure_status=42",
        "gaps=0&gaps=100",
        "gapz=0",
        &format!("gaps={long}"),
    ] {
        let answer = s.get(&format!("/v1/health?{bad}")).await;
        assert_eq!(answer.status, 400, "{bad}");
        let error = answer.error();
        assert!(!error.is_empty() && error.len() < 300, "{error}");
    }
}

/// A cluster view with numbers over thresholds.
struct Lagging;

impl ClusterView for Lagging {
    fn health(&self) -> HealthReport {
        HealthReport {
            gaps: 5,
            members: 3,
            p99_lag: 2.5,
            queue_size: 100,
            region: "ams".into(),
            global_member: false,
            leader: None,
            global_lag: Some(1.0),
            global_p99_lag: Some(0.2),
            catching_up: false,
            catch_up: CatchUpReport {
                phase: "caught_up",
                missing_versions: 0,
                elapsed_secs: 0.5,
                reason: None,
            },
            // Far over any threshold given below: not what `p99_lag=` checks.
            catchup_p99_lag: 60.0,
            parked_versions: 0,
            refused_versions: 0,
            dropped_changes: 0,
        }
    }
    fn members(&self) -> Vec<MemberInfo> {
        Vec::new()
    }
    fn regions(&self) -> Vec<RegionInfo> {
        Vec::new()
    }
}

#[tokio::test]
async fn health_over_a_threshold_answers_the_failure_status() {
    let s = start_with(Options {
        cluster: Some(Arc::new(Lagging)),
        ..Options::default()
    })
    .await;
    assert_eq!(
        s.get("/v1/health").await.status,
        200,
        "no thresholds, no failure"
    );
    for (query, status) in [
        ("gaps=4", 503),
        ("gaps=5", 200),
        ("p99_lag=2", 503),
        ("p99_lag=2.5", 200),
        ("max_queue=99", 503),
        ("max_queue=100&gaps=5&p99_lag=3", 200),
        ("gaps=0&failure_status=429", 429),
    ] {
        let answer = s.get(&format!("/v1/health?{query}")).await;
        assert_eq!(answer.status, status, "{query}");
        assert_eq!(answer.json()["response"]["members"], 3);
        assert_eq!(answer.json()["response"]["global_lag"], 1.0);
        let reason = &answer.json()["response"]["reason"];
        if status == 200 {
            assert_eq!(reason, &Json::Null, "{query}");
        } else {
            assert!(
                reason.as_str().is_some_and(|r| r.contains(" > ")),
                "{query}: {reason}"
            );
        }
    }
}

/// A node catching up after a restart.
struct CatchingUp;

impl ClusterView for CatchingUp {
    fn health(&self) -> HealthReport {
        HealthReport {
            catching_up: true,
            catch_up: CatchUpReport {
                phase: "fetching",
                missing_versions: 478,
                elapsed_secs: 0.7,
                reason: Some("catching up: 478 versions …".into()),
            },
            ..Lagging.health()
        }
    }
    fn members(&self) -> Vec<MemberInfo> {
        Vec::new()
    }
    fn regions(&self) -> Vec<RegionInfo> {
        Vec::new()
    }
}

#[tokio::test]
async fn a_node_catching_up_fails_the_check_whatever_the_thresholds() {
    let s = start_with(Options {
        cluster: Some(Arc::new(CatchingUp)),
        ..Options::default()
    })
    .await;
    for (query, status) in [
        ("", 503),
        ("gaps=100&p99_lag=10&max_queue=1000", 503),
        ("failure_status=429", 429),
    ] {
        let answer = s.get(&format!("/v1/health?{query}")).await;
        assert_eq!(answer.status, status, "{query}");
        let response = &answer.json()["response"];
        assert_eq!(response["catching_up"], true);
        assert_eq!(response["catch_up"]["missing_versions"], 478);
        assert_eq!(response["catch_up"]["phase"], "fetching");
        let reason = response["reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with("catching up: 478 versions"), "{reason}");
    }
}

#[tokio::test]
async fn members_and_regions_of_a_regional_node() {
    let s = start().await;
    let members = s.get("/v1/members").await;
    assert_eq!(members.status, 200);
    assert_eq!(
        members.json(),
        json!([{"actor_id": s.actor(), "addr": null, "region": "ams", "cluster": "ams",
                "global_member": false, "state": "alive", "rtt_ms": null}])
    );
    let regions = s.get("/v1/regions").await;
    assert_eq!(regions.status, 200);
    assert_eq!(
        regions.json(),
        json!([{"region": "ams", "leader": null, "global_members": [], "last_rollup": null,
                "rollups": {}, "global_p99_lag": null, "updated": null, "rollup_error": null}])
    );
}

#[tokio::test]
async fn a_lone_global_member_is_in_both_clusters_and_leads_its_region() {
    let s = start_with(Options {
        global_member: true,
        ..Options::default()
    })
    .await;
    let me = s.actor();
    let members = s.get("/v1/members").await.json();
    let clusters: Vec<_> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["actor_id"].as_str().unwrap(),
                m["cluster"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(clusters, [(me.as_str(), "ams"), (me.as_str(), "global")]);
    let regions = s.get("/v1/regions").await.json();
    assert_eq!(regions[0]["leader"], me);
    assert_eq!(regions[0]["global_members"], json!([me]));
    let health = s.get("/v1/health").await.json();
    assert_eq!(health["response"]["global_member"], true);
    assert_eq!(health["response"]["leader"], me);
}

#[tokio::test]
async fn table_stats_count_rows_and_name_unknown_tables() {
    let s = start().await;
    s.exec(json!([
        "INSERT INTO machines (id) VALUES ('m1'), ('m2'), ('m3')",
    ]))
    .await;
    s.exec(json!([
        "INSERT INTO app_regions (app, region) VALUES ('web', 'ams')"
    ]))
    .await;
    let answer = s
        .post_json(
            "/v1/table_stats",
            &json!({"tables": ["machines", "app_regions", "nope"]}),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json(),
        json!({"total_row_count": 4, "invalid_tables": ["nope"]})
    );
    let answer = s
        .post_json("/v1/table_stats", &json!({"tables": "machines"}))
        .await;
    assert_eq!(answer.status, 422);
    assert!(answer.error().contains(r#"{"tables""#));
}

// ---- metrics ----------------------------------------------------------------

#[tokio::test]
async fn metrics_count_requests_transactions_queries_rows_and_bad_requests() {
    let s = start_with(Options {
        config: ApiConfig {
            body_limit_bytes: 256,
            ..ApiConfig::default()
        },
        ..Options::default()
    })
    .await;
    s.exec(json!(["INSERT INTO machines (id) VALUES ('m1'), ('m2')"]))
        .await;
    s.post_json("/v1/transactions", &json!(["INSERT INTO nope VALUES (1)"]))
        .await;
    s.rows(json!("SELECT id FROM machines")).await;
    s.post_raw("/v1/transactions", "[").await; // json
    s.post_raw("/v1/transactions", "{}").await; // shape
    s.send(s.http.post(s.url("/v1/queries")).body("\"SELECT 1\""))
        .await; // content type
    s.post_raw("/v1/transactions", "x".repeat(1000)).await; // body size
    s.get("/v1/nope").await;

    let answer = s.get("/metrics").await;
    assert_eq!(answer.status, 200);
    let text = String::from_utf8(answer.body.to_vec()).unwrap();
    for expected in [
        r#"patina_http_requests_total{route="/v1/transactions",method="POST",status="200"} 1"#,
        r#"patina_http_requests_total{route="/v1/transactions",method="POST",status="500"} 1"#,
        r#"patina_http_requests_total{route="/v1/queries",method="POST",status="200"} 1"#,
        r#"patina_http_requests_total{route="unmatched",method="GET",status="404"} 1"#,
        r#"patina_http_request_duration_seconds_count{route="/v1/transactions"} 5"#,
        r#"patina_http_request_duration_seconds_bucket{le="+Inf",route="/v1/queries"} 2"#,
        "patina_api_transactions_committed_total 1",
        r#"patina_api_transactions_failed_total{reason="statement"} 1"#,
        r#"patina_api_queries_total{outcome="started"} 1"#,
        "patina_api_query_rows_streamed_total 2",
        r#"patina_api_bad_requests_total{kind="json"} 1"#,
        r#"patina_api_bad_requests_total{kind="shape"} 1"#,
        r#"patina_api_bad_requests_total{kind="content_type"} 1"#,
        r#"patina_api_bad_requests_total{kind="body_size"} 1"#,
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
}
