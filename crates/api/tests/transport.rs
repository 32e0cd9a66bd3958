//! Transport rules over real HTTP: content type (415), JSON syntax (400),
//! shape (422), body limit (413), bearer auth (401), unknown routes (404,
//! 405), HTTP/1.1 and h2c on one listener, graceful shutdown.

mod common;

use common::{start, start_with, Options};
use patina_api::ApiConfig;
use serde_json::json;

const POST_ROUTES: [&str; 3] = ["/v1/transactions", "/v1/queries", "/v1/table_stats"];

#[tokio::test]
async fn a_body_without_json_content_type_is_415() {
    let s = start().await;
    for path in POST_ROUTES {
        let no_header = s.send(s.http.post(s.url(path)).body("[]")).await;
        assert_eq!(no_header.status, 415, "{path}");
        assert!(no_header.error().contains("application/json"));
        let text = s
            .send(
                s.http
                    .post(s.url(path))
                    .header("content-type", "text/plain")
                    .body("[]"),
            )
            .await;
        assert_eq!(text.status, 415, "{path}");
        assert!(text.error().contains("text/plain"));
    }
    let charset = s
        .send(
            s.http
                .post(s.url("/v1/queries"))
                .header("content-type", "application/json; charset=utf-8")
                .body("\"SELECT 1\""),
        )
        .await;
    assert_eq!(charset.status, 200);
}

#[tokio::test]
async fn malformed_json_is_400() {
    let s = start().await;
    for path in POST_ROUTES {
        for body in ["", "[", "{\"query\": }", "[\"SELECT 1\"] x", "\u{1}"] {
            let answer = s.post_raw(path, body).await;
            assert_eq!(answer.status, 400, "{path} {body:?}");
            assert!(answer.error().contains("JSON"), "{}", answer.error());
        }
    }
    // Syntax wins over shape, wherever the syntax error is.
    let answer = s.post_raw("/v1/transactions", r#"[1, "SELECT 1", ]"#).await;
    assert_eq!(answer.status, 400);
}

#[tokio::test]
async fn json_of_the_wrong_shape_is_422() {
    let s = start().await;
    let cases = [
        ("/v1/transactions", json!({"query": "SELECT 1"})),
        ("/v1/transactions", json!("SELECT 1")),
        ("/v1/transactions", json!([1])),
        (
            "/v1/transactions",
            json!([["INSERT INTO machines (id) VALUES (?)"]]),
        ),
        (
            "/v1/transactions",
            json!([["INSERT INTO machines (id) VALUES (?)", "m1"]]),
        ),
        ("/v1/transactions", json!([["SELECT ?", [1], "extra"]])),
        ("/v1/transactions", json!([{"params": [1]}])),
        ("/v1/transactions", json!([["SELECT :a", {"a": 1}]])),
        (
            "/v1/transactions",
            json!([{"query": "SELECT ?", "params": [1], "named_params": {":a": 1}}]),
        ),
        ("/v1/queries", json!(["SELECT 1", "SELECT 2"])),
        ("/v1/queries", json!(42)),
        ("/v1/queries", json!({"sql": "SELECT 1"})),
        ("/v1/table_stats", json!(["machines"])),
        ("/v1/table_stats", json!({"tables": [1]})),
    ];
    for (path, body) in cases {
        let answer = s.post_json(path, &body).await;
        assert_eq!(answer.status, 422, "{path} {body}");
        let error = answer.error();
        assert!(
            error.contains("wrong shape") && error.contains("Expected"),
            "{error}"
        );
    }
    let answer = s
        .post_json("/v1/transactions", &json!([["SELECT :a", {"a": 1}]]))
        .await;
    assert!(
        answer.error().contains(r#"":a""#),
        "names the fix: {}",
        answer.error()
    );
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_with_a_json_error() {
    let s = start_with(Options {
        config: ApiConfig {
            body_limit_bytes: 1024,
            ..ApiConfig::default()
        },
        ..Options::default()
    })
    .await;
    let big = json!([["INSERT INTO machines (id) VALUES (?)", ["x".repeat(4096)]]]).to_string();
    for path in POST_ROUTES {
        let answer = s.post_raw(path, big.clone()).await;
        assert_eq!(answer.status, 413, "{path}");
        assert!(answer.error().contains("1024 bytes"), "{}", answer.error());
    }
    // Without a content-length (chunked), the limit holds while reading.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = big
        .as_bytes()
        .chunks(512)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let answer = s
        .post_raw(
            "/v1/transactions",
            reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
        )
        .await;
    assert_eq!(answer.status, 413);
    assert!(answer.error().contains("limit"));
    // Just under the limit is fine.
    let small = json!(["INSERT INTO machines (id) VALUES ('m1')"]).to_string();
    assert_eq!(s.post_raw("/v1/transactions", small).await.status, 200);
}

#[tokio::test]
async fn with_a_bearer_token_every_route_requires_it() {
    let s = start_with(Options {
        config: ApiConfig {
            bearer_token: Some("s3cret".into()),
            ..ApiConfig::default()
        },
        ..Options::default()
    })
    .await;
    let gets = [
        "/v1/health",
        "/v1/members",
        "/v1/regions",
        "/metrics",
        "/v1/nope",
    ];
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cre"),
        Some("Basic s3cret"),
    ] {
        for path in gets {
            let mut req = s.http.get(s.url(path));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let answer = s.send(req).await;
            assert_eq!(answer.status, 401, "{path} {auth:?}");
            assert_eq!(answer.headers["www-authenticate"], "Bearer");
            assert!(answer.error().contains("Bearer"), "{}", answer.error());
        }
        for path in POST_ROUTES {
            let mut req = s
                .http
                .post(s.url(path))
                .header("content-type", "application/json")
                .body("\"SELECT 1\"");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            assert_eq!(s.send(req).await.status, 401, "{path} {auth:?}");
        }
    }
    for path in ["/v1/health", "/v1/members", "/v1/regions", "/metrics"] {
        let answer = s
            .send(
                s.http
                    .get(s.url(path))
                    .header("authorization", "Bearer s3cret"),
            )
            .await;
        assert_eq!(answer.status, 200, "{path}");
    }
    let answer = s
        .send(
            s.http
                .post(s.url("/v1/transactions"))
                .header("authorization", "Bearer s3cret")
                .header("content-type", "application/json")
                .body(json!(["INSERT INTO machines (id) VALUES ('m1')"]).to_string()),
        )
        .await;
    assert_eq!(answer.status, 200);
    let metrics = s
        .send(
            s.http
                .get(s.url("/metrics"))
                .header("authorization", "Bearer s3cret"),
        )
        .await;
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(
        text.contains(r#"patina_api_bad_requests_total{kind="auth"} 32"#),
        "{text}"
    );
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_in_json() {
    let s = start().await;
    let answer = s.get("/v1/nope").await;
    assert_eq!(answer.status, 404);
    assert!(answer.error().contains("/v1/nope"));
    let answer = s.get("/v1/transactions").await;
    assert_eq!(answer.status, 405);
    assert!(answer.error().contains("GET"));
    let answer = s.post_json("/v1/health", &json!({})).await;
    assert_eq!(answer.status, 405);
}

#[tokio::test]
async fn http1_and_h2c_share_the_listener() {
    let s = start().await;
    let h1 = s.get("/v1/health").await;
    assert_eq!(h1.version, reqwest::Version::HTTP_11);
    assert_eq!(h1.status, 200);

    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let answer = s.send(h2.get(s.url("/v1/health"))).await;
    assert_eq!(answer.version, reqwest::Version::HTTP_2);
    assert_eq!(answer.status, 200);
    let tx = s
        .send(
            h2.post(s.url("/v1/transactions"))
                .header("content-type", "application/json")
                .body(json!(["INSERT INTO machines (id) VALUES ('m1'), ('m2')"]).to_string()),
        )
        .await;
    assert_eq!(tx.version, reqwest::Version::HTTP_2);
    assert_eq!(tx.json()["version"], 1);
    let query = s
        .send(
            h2.post(s.url("/v1/queries"))
                .header("content-type", "application/json")
                .body(json!("SELECT id FROM machines ORDER BY id").to_string()),
        )
        .await;
    assert_eq!(query.version, reqwest::Version::HTTP_2);
    let lines = query.lines();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[2], json!({"row": [2, ["m2"]]}));
}

#[tokio::test]
async fn streamed_lines_arrive_before_the_query_ends() {
    let s = start().await;
    // The query's rows wait in a bounded buffer until read: the first line
    // must reach the client while the server still has rows to send.
    let sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000) SELECT x FROM c";
    let mut response = s
        .http
        .post(s.url("/v1/queries"))
        .header("content-type", "application/json")
        .body(json!(sql).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"{\"columns\":[\"x\"]}\n"), "{first:?}");
    // Dropping the response mid-stream ends the query; the server goes on.
    drop(response);
    assert_eq!(s.get("/v1/health").await.status, 200);
}

#[tokio::test]
async fn serve_returns_after_shutdown() {
    let s = start().await;
    assert_eq!(s.get("/v1/health").await.status, 200);
    s.stop().await.expect("serve ends cleanly");
}
