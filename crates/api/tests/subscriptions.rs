//! Subscriptions and updates over real HTTP: snapshot then change events,
//! same SQL → same id, contiguous ids, `from=` resumes, too-old `from`,
//! slow subscribers, `skip_rows`, 404/400 cases, `/v1/updates/{table}`.

mod common;

use std::time::Duration;

use common::start;
use futures_util::StreamExt;
use serde_json::{json, Value as Json};

/// An open NDJSON stream.
struct Stream {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl Stream {
    async fn open(request: reqwest::RequestBuilder) -> Stream {
        let response = request.send().await.expect("request");
        Stream {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.bytes_stream().boxed(),
            buf: Vec::new(),
        }
    }

    /// The next line, or `None` at the end of the body; panics after 10 s.
    async fn next(&mut self) -> Option<Json> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).expect("a JSON line"));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("a line within 10 s");
            match chunk {
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                Some(Err(e)) => panic!("body: {e}"),
                None => return None,
            }
        }
    }

    fn header(&self, name: &str) -> String {
        self.headers[name].to_str().unwrap().to_owned()
    }
}

fn subscribe(s: &common::TestServer, path: &str, sql: Json) -> reqwest::RequestBuilder {
    s.http
        .post(s.url(path))
        .header("content-type", "application/json")
        .body(sql.to_string())
}

fn is_uuid(id: &str) -> bool {
    let parts: Vec<&str> = id.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && id.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

const SQL: &str = "SELECT id, app FROM machines WHERE app IS NOT NULL";

#[tokio::test]
async fn snapshot_then_changes_in_commit_order() {
    let s = start().await;
    s.exec(json!([[
        "INSERT INTO machines (id, app) VALUES (?, ?)",
        ["m1", "web"]
    ]]))
    .await;
    let mut sub = Stream::open(subscribe(&s, "/v1/subscriptions", json!(SQL))).await;
    assert_eq!(sub.status, 200);
    assert!(is_uuid(&sub.header("corro-query-id")));
    let hash = sub.header("corro-query-hash");
    assert!(
        hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "{hash}"
    );
    assert_eq!(sub.next().await, Some(json!({"columns": ["id", "app"]})));
    assert_eq!(sub.next().await, Some(json!({"row": [1, ["m1", "web"]]})));
    let eoq = sub.next().await.unwrap();
    assert_eq!(eoq["eoq"]["change_id"], 0);
    assert!(eoq["eoq"]["time"].as_f64().is_some());

    // Writes to other tables cost this subscription nothing.
    s.exec(json!(["INSERT INTO vals VALUES (1, 1)"])).await;
    s.exec(json!([[
        "INSERT INTO machines (id, app) VALUES (?, ?)",
        ["m2", "db"]
    ]]))
    .await;
    assert_eq!(
        sub.next().await,
        Some(json!({"change": ["insert", 2, ["m2", "db"], 1]}))
    );
    let t0 = std::time::Instant::now();
    s.exec(json!(["UPDATE machines SET app = 'api' WHERE id = 'm1'"]))
        .await;
    assert_eq!(
        sub.next().await,
        Some(json!({"change": ["update", 1, ["m1", "api"], 2]}))
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    s.exec(json!([
        "DELETE FROM machines WHERE id = 'm2'",
        "INSERT INTO machines (id) VALUES ('m3')"
    ]))
    .await;
    assert_eq!(
        sub.next().await,
        Some(json!({"change": ["delete", 2, ["m2", "db"], 3]}))
    );
    // m3 (app NULL) is outside the query: the next event is the marker
    // committed after it, with the next change id.
    s.exec(json!([[
        "INSERT INTO machines (id, app) VALUES (?, ?)",
        ["m4", "marker"]
    ]]))
    .await;
    let marker = sub.next().await.expect("the marker's event");
    assert_eq!(
        (
            &marker["change"][0],
            &marker["change"][2],
            &marker["change"][3]
        ),
        (&json!("insert"), &json!(["m4", "marker"]), &json!(4)),
        "{marker}"
    );
}

#[tokio::test]
async fn same_sql_same_id_resume_and_skip_rows() {
    let s = start().await;
    let mut a = Stream::open(subscribe(&s, "/v1/subscriptions", json!([SQL, []]))).await;
    let id = a.header("corro-query-id");
    for _ in 0..2 {
        a.next().await;
    }
    for i in 1..=3 {
        s.exec(json!([[
            "INSERT INTO machines (id, app) VALUES (?, 'web')",
            [format!("m{i}")]
        ]]))
        .await;
        assert_eq!(a.next().await.unwrap()["change"][3], i);
    }
    // The same SQL (in another statement form) is the same subscription.
    let mut b = Stream::open(subscribe(&s, "/v1/subscriptions", json!({"query": SQL}))).await;
    assert_eq!(b.header("corro-query-id"), id);
    assert_eq!(b.header("corro-query-hash"), a.header("corro-query-hash"));
    let lines: Vec<Json> = [
        b.next().await,
        b.next().await,
        b.next().await,
        b.next().await,
        b.next().await,
    ]
    .into_iter()
    .map(Option::unwrap)
    .collect();
    assert_eq!(lines[4]["eoq"]["change_id"], 3);
    // Resume by id: only the changes after from.
    let mut r = Stream::open(s.http.get(s.url(&format!("/v1/subscriptions/{id}?from=1")))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.next().await.unwrap()["change"][3], 2);
    assert_eq!(r.next().await.unwrap()["change"][3], 3);
    // POST with from= on the existing SQL resumes too.
    let mut p = Stream::open(subscribe(&s, "/v1/subscriptions?from=2", json!(SQL))).await;
    assert_eq!(
        p.next().await.unwrap()["change"],
        json!(["insert", 3, ["m3", "web"], 3])
    );
    // skip_rows: columns and eoq, no rows, then changes.
    let mut k = Stream::open(
        s.http
            .get(s.url(&format!("/v1/subscriptions/{id}?skip_rows=true"))),
    )
    .await;
    assert!(k.next().await.unwrap().get("columns").is_some());
    assert_eq!(k.next().await.unwrap()["eoq"]["change_id"], 3);
    s.exec(json!(["DELETE FROM machines WHERE id = 'm1'"]))
        .await;
    for stream in [&mut a, &mut r, &mut p, &mut k] {
        assert_eq!(
            stream.next().await,
            Some(json!({"change": ["delete", 1, ["m1", "web"], 4]}))
        );
    }
}

#[tokio::test]
async fn refusals() {
    let s = start().await;
    let r = s
        .get("/v1/subscriptions/00000000-0000-4000-8000-000000000000")
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.error(),
        "could not find subscription with id 00000000-0000-4000-8000-000000000000"
    );
    for bad in [
        json!("DELETE FROM machines"),
        json!("SELECT * FROM nope"),
        json!("SELEKT 1"),
    ] {
        let r = s.post_json("/v1/subscriptions", &bad).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(!r.error().is_empty());
    }
    let r = s
        .post_json("/v1/subscriptions?from=3", &json!("SELECT * FROM vals"))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("from="), "{}", r.error());
    let r = s.post_raw("/v1/updates/nope", "").await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("nope"));
    // A misspelled or repeated resume key is refused, not taken for a
    // fresh subscription.
    for (query, says) in [
        ("?form=3", "unknown query parameter form"),
        ("?from=1&from=2", "from is given twice"),
        (
            "?skip_rows=true&skip_rows=false",
            "skip_rows is given twice",
        ),
    ] {
        let r = s
            .post_json(
                &format!("/v1/subscriptions{query}"),
                &json!("SELECT * FROM vals"),
            )
            .await;
        assert_eq!(r.status, 400, "{query}");
        assert!(r.error().contains(says), "{query}: {}", r.error());
    }
    // A long id is quoted clipped.
    let long = "x".repeat(10_000);
    let r = s.get(&format!("/v1/subscriptions/{long}")).await;
    assert_eq!(r.status, 404);
    assert!(r.error().len() < 200, "{}", r.error());
}

#[tokio::test]
async fn too_old_from_and_slow_subscribers_get_an_error_event() {
    let s = start().await;
    let mut sub = Stream::open(subscribe(
        &s,
        "/v1/subscriptions",
        json!("SELECT k, v FROM vals"),
    ))
    .await;
    let id = sub.header("corro-query-id");
    sub.next().await;
    sub.next().await;
    // One commit of 10,050 rows: 10,050 events, more than a live
    // subscriber's buffer and more than is retained.
    s.exec(json!(["INSERT INTO vals (k, v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10050) SELECT x, 0 FROM c"])).await;
    let mut seen = 0;
    let error = loop {
        let line = sub.next().await.expect("an error line before the end");
        if let Some(e) = line.get("error") {
            break e.as_str().unwrap().to_owned();
        }
        seen += 1;
        assert_eq!(line["change"][3], seen);
    };
    assert!(error.contains("from="), "{error}");
    assert_eq!(sub.next().await, None, "disconnected after the error");
    let mut old = Stream::open(s.http.get(s.url(&format!("/v1/subscriptions/{id}?from=0")))).await;
    assert_eq!(old.status, 200);
    assert!(old.next().await.unwrap().get("error").is_some());
    let mut ok = Stream::open(
        s.http
            .get(s.url(&format!("/v1/subscriptions/{id}?from=50"))),
    )
    .await;
    assert_eq!(ok.next().await.unwrap()["change"][3], 51);
    // A change id this node never sent: an error line, not a silent wait
    // or a resume from elsewhere.
    let last: u64 = 10_050;
    let mut ahead = Stream::open(
        s.http
            .get(s.url(&format!("/v1/subscriptions/{id}?from={}", last + 5))),
    )
    .await;
    assert_eq!(ahead.status, 200);
    let line = ahead.next().await.unwrap();
    let error = line["error"].as_str().unwrap_or_default();
    assert!(error.contains("ahead of subscription"), "{line}");
    assert_eq!(ahead.next().await, None, "disconnected after the error");
}

#[tokio::test]
async fn updates_notify_every_changed_row() {
    let s = start().await;
    let mut u = Stream::open(s.http.post(s.url("/v1/updates/machines"))).await;
    assert_eq!(u.status, 200);
    assert!(is_uuid(&u.header("corro-query-id")));
    s.exec(json!(["INSERT INTO vals VALUES (1, 1)"])).await;
    s.exec(json!(["INSERT INTO machines (id) VALUES ('m1'), ('m2')"]))
        .await;
    assert_eq!(u.next().await, Some(json!({"notify": ["update", ["m1"]]})));
    assert_eq!(u.next().await, Some(json!({"notify": ["update", ["m2"]]})));
    s.exec(json!([
        "UPDATE machines SET app = 'x' WHERE id = 'm2'",
        "DELETE FROM machines WHERE id = 'm1'"
    ]))
    .await;
    let mut got = vec![u.next().await.unwrap(), u.next().await.unwrap()];
    got.sort_by_key(|l| l.to_string());
    assert_eq!(
        got,
        [
            json!({"notify": ["delete", ["m1"]]}),
            json!({"notify": ["update", ["m2"]]})
        ]
    );
    // Nothing more for those two commits: the next notification is the
    // marker's.
    s.exec(json!(["INSERT INTO machines (id) VALUES ('m9')"]))
        .await;
    assert_eq!(u.next().await, Some(json!({"notify": ["update", ["m9"]]})));
}

#[tokio::test]
async fn updates_notify_rows_merged_from_another_node() {
    use patina_node::DbKind;
    use std::sync::Arc;
    let (a, b) = (start().await, start().await);
    let mut u = Stream::open(b.http.post(b.url("/v1/updates/machines"))).await;
    for sql in [
        "INSERT INTO machines (id) VALUES ('m1')",
        "INSERT INTO machines (id) VALUES ('m2')",
        "DELETE FROM machines WHERE id = 'm1'",
    ] {
        a.exec(json!([sql])).await;
    }
    // What a sync round does: b asks for what a's summary offers and b
    // lacks, a serves it, b merges it.
    let offered = a.node.bookkeeping(DbKind::Regional).borrow().summary(4096);
    let needs = b
        .node
        .bookkeeping(DbKind::Regional)
        .borrow()
        .needs(&offered, 4096);
    let mut chunks = Vec::new();
    for need in needs {
        let (served, rest) = a.node.serve(DbKind::Regional, need).await.unwrap();
        assert!(rest.is_empty());
        chunks.extend(served.into_iter().map(Arc::new));
    }
    let outcome = b.node.apply_remote(DbKind::Regional, chunks).await.unwrap();
    assert_eq!(outcome.versions_applied, 3);
    // Served from the clocks: m1's insert was overwritten by its delete.
    assert_eq!(u.next().await, Some(json!({"notify": ["update", ["m2"]]})));
    assert_eq!(u.next().await, Some(json!({"notify": ["delete", ["m1"]]})));
}

#[tokio::test]
async fn delete_removes_a_subscription_and_ends_its_streams() {
    let s = start().await;
    let mut sub = Stream::open(subscribe(
        &s,
        "/v1/subscriptions",
        json!("SELECT k, v FROM vals"),
    ))
    .await;
    let id = sub.header("corro-query-id");
    sub.next().await;
    sub.next().await;
    s.exec(json!(["INSERT INTO vals VALUES (1, 'a')"])).await;
    assert_eq!(sub.next().await.unwrap()["change"][3], 1);

    let url = s.url(&format!("/v1/subscriptions/{id}"));
    let r = s.send(s.http.delete(&url)).await;
    assert_eq!(r.status, 204);
    assert_eq!(sub.next().await, None, "the attached stream ends");
    let r = s.get(&format!("/v1/subscriptions/{id}")).await;
    assert_eq!(r.status, 404);
    let r = s.send(s.http.delete(&url)).await;
    assert_eq!(r.status, 404);
    assert!(r.error().contains(&id), "{}", r.error());

    // The same statement again: a new subscription, change ids from 1.
    let mut again = Stream::open(subscribe(
        &s,
        "/v1/subscriptions",
        json!("SELECT k, v FROM vals"),
    ))
    .await;
    assert_ne!(again.header("corro-query-id"), id);
    assert!(again.next().await.unwrap().get("columns").is_some());
    assert!(again.next().await.unwrap().get("row").is_some());
    assert_eq!(again.next().await.unwrap()["eoq"]["change_id"], 0);
    s.exec(json!(["INSERT INTO vals VALUES (2, 'b')"])).await;
    assert_eq!(again.next().await.unwrap()["change"][3], 1);
}

#[tokio::test]
async fn the_cap_holds_under_concurrent_creations_and_deleting_frees_room() {
    let s = common::start_with(common::Options {
        config: patina_api::ApiConfig {
            subscriptions_max: 5,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    // 32 distinct statements at once: exactly 5 get in.
    let mut creations = tokio::task::JoinSet::new();
    for n in 0..32 {
        let request = subscribe(
            &s,
            "/v1/subscriptions",
            json!(format!("SELECT id, app FROM machines WHERE app = 'app{n}'")),
        );
        creations.spawn(async move { Stream::open(request).await });
    }
    let mut held = Vec::new();
    let mut refused = 0;
    while let Some(stream) = creations.join_next().await {
        let stream = stream.unwrap();
        match stream.status {
            200 => held.push(stream),
            503 => refused += 1,
            other => panic!("status {other}"),
        }
    }
    assert_eq!((held.len(), refused), (5, 27));
    let over = s
        .send(subscribe(
            &s,
            "/v1/subscriptions",
            json!("SELECT id FROM machines WHERE app = 'one more'"),
        ))
        .await;
    assert_eq!(over.status, 503);
    assert!(
        over.error().contains("maximum number of subscriptions, 5")
            && over.error().contains("DELETE /v1/subscriptions"),
        "{}",
        over.error()
    );
    // An invalid statement is told it is invalid, full node or not.
    let invalid = s
        .send(subscribe(
            &s,
            "/v1/subscriptions",
            json!("SELECT nope FROM machines"),
        ))
        .await;
    assert_eq!(invalid.status, 400);
    assert!(invalid.error().contains("nope"), "{}", invalid.error());
    // An existing statement is still served at the cap.
    let id = held[0].header("corro-query-id");
    let again = Stream::open(s.http.get(s.url(&format!("/v1/subscriptions/{id}")))).await;
    assert_eq!(again.status, 200);
    drop(again);
    // Deleting one makes room for one.
    let r = s
        .send(s.http.delete(s.url(&format!("/v1/subscriptions/{id}"))))
        .await;
    assert_eq!(r.status, 204);
    let next = Stream::open(subscribe(
        &s,
        "/v1/subscriptions",
        json!("SELECT id FROM machines WHERE app = 'one more'"),
    ))
    .await;
    assert_eq!(next.status, 200);
}

#[tokio::test]
async fn a_subscription_without_end_is_refused_not_kept_growing() {
    let s = start().await;
    let endless = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r";
    let r = s
        .send(subscribe(&s, "/v1/subscriptions", json!(endless)))
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.error().contains("more than 1000000 rows"),
        "{}",
        r.error()
    );
    // The worker is free again.
    let mut ok = Stream::open(subscribe(
        &s,
        "/v1/subscriptions",
        json!("SELECT k FROM vals"),
    ))
    .await;
    assert_eq!(ok.status, 200);
    assert!(ok.next().await.unwrap().get("columns").is_some());
}
