//! `POST /v1/reload`: an additive schema change applies; a non-additive one
//! is refused with 400 naming the table, and the running schema still works.

mod common;

use common::{start, REGIONAL_SCHEMA};
use serde_json::json;

#[tokio::test]
async fn an_added_column_is_usable_after_reload() {
    let s = start().await;
    let added = REGIONAL_SCHEMA.replace("v);", "v, note TEXT);");
    assert_ne!(added, REGIONAL_SCHEMA);
    std::fs::write(s.regional_schema_path(), added).unwrap();
    let r = s.post_raw("/v1/reload", "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({"reloaded": true}));
    s.exec(json!(["INSERT INTO vals (k, v, note) VALUES (1, 2, 'hi')"]))
        .await;
    assert_eq!(
        s.rows(json!("SELECT note FROM vals")).await,
        vec![json!(["hi"])]
    );
    // `{}` works as a body too, and reloading the same files is a no-op.
    let r = s.post_json("/v1/reload", &json!({})).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_non_additive_change_is_refused_and_nothing_changes() {
    let s = start().await;
    // Dropping column `v` of `vals` is not additive.
    let dropped = REGIONAL_SCHEMA.replace(
        "(k INTEGER PRIMARY KEY NOT NULL, v)",
        "(k INTEGER PRIMARY KEY NOT NULL)",
    );
    assert_ne!(dropped, REGIONAL_SCHEMA);
    std::fs::write(s.regional_schema_path(), dropped).unwrap();
    let r = s.post_raw("/v1/reload", "").await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let error = r.error();
    assert!(error.contains("vals"), "names the table: {error}");
    assert!(error.contains("nothing was changed"), "{error}");
    assert!(
        error.contains("column was removed"),
        "names the rule: {error}"
    );
    s.exec(json!(["INSERT INTO vals (k, v) VALUES (1, 2)"]))
        .await;
    assert_eq!(
        s.rows(json!("SELECT k, v FROM vals")).await,
        vec![json!([1, 2])]
    );
}

#[tokio::test]
async fn bad_bodies_are_refused() {
    let s = start().await;
    assert_eq!(s.post_raw("/v1/reload", "[1]").await.status, 400);
    assert_eq!(s.post_raw("/v1/reload", "{").await.status, 400);
    // A misspelled flag must not reload without it.
    for body in [
        json!({"allow_destructiv": true}),
        json!({"allow_destructive": "true"}),
        json!({"allow_destructive": true, "also": 1}),
    ] {
        let r = s.post_json("/v1/reload", &body).await;
        assert_eq!(r.status, 400, "{body}");
        assert!(r.error().contains("allow_destructive"), "{}", r.error());
    }
    // A repeated key is refused, whatever its last value.
    let r = s
        .post_raw(
            "/v1/reload",
            r#"{"allow_destructive":false,"allow_destructive":true}"#,
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("appears twice"), "{}", r.error());
    assert_eq!(s.get("/v1/reload").await.status, 405);
    // An oversized body gets the API's JSON 413, not a plain-text one.
    let r = s.post_raw("/v1/reload", " ".repeat(3 << 20)).await;
    assert_eq!(r.status, 413);
    assert!(r.error().contains("4096 bytes"), "{}", r.error());
}

#[tokio::test]
async fn a_removed_table_is_refused_like_a_removed_column() {
    let s = start().await;
    s.exec(json!(["INSERT INTO vals (k, v) VALUES (1, 2)"]))
        .await;
    let without_vals: String = REGIONAL_SCHEMA
        .split(';')
        .filter(|stmt| !stmt.contains("vals"))
        .collect::<Vec<_>>()
        .join(";");
    assert_ne!(without_vals, REGIONAL_SCHEMA);
    std::fs::write(s.regional_schema_path(), without_vals).unwrap();
    let r = s.post_raw("/v1/reload", "").await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let error = r.error();
    assert!(
        error.contains("vals") && error.contains("table was removed"),
        "{error}"
    );
    assert_eq!(
        s.rows(json!("SELECT k, v FROM vals")).await,
        vec![json!([1, 2])]
    );
}

/// A CHECK over two replicated columns could be broken by a merge of two
/// valid concurrent writes, wedging replication on every node: refused.
#[tokio::test]
async fn a_check_over_two_columns_is_refused() {
    let s = start().await;
    let schema = format!(
        "{REGIONAL_SCHEMA}\nCREATE TABLE ranges (id INTEGER PRIMARY KEY NOT NULL, lo INT, hi INT, CHECK (lo < hi));"
    );
    std::fs::write(s.regional_schema_path(), schema).unwrap();
    let r = s.post_raw("/v1/reload", "").await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let error = r.error();
    assert!(
        error.contains("ranges") && error.contains("lo and hi"),
        "names the table and the columns: {error}"
    );
}

/// Every read connection answers `SELECT *` with the new column list right
/// after a reload: statements cached before it are not reused.
#[tokio::test]
async fn select_star_sees_an_added_column_on_every_read_connection() {
    let s = start().await;
    s.exec(json!(["INSERT INTO vals (k, v) VALUES (1, 2)"]))
        .await;
    let columns = |r: common::Answer| r.lines()[0]["columns"].clone();
    let star = json!("SELECT * FROM vals");
    // Warm every pooled connection's statement cache, concurrently.
    let warm: Vec<_> = (0..16).map(|_| s.post_json("/v1/queries", &star)).collect();
    for r in futures_util::future::join_all(warm).await {
        assert_eq!(columns(r), json!(["k", "v"]));
    }
    let added = REGIONAL_SCHEMA.replace("v);", "v, note TEXT);");
    std::fs::write(s.regional_schema_path(), added).unwrap();
    assert_eq!(s.post_raw("/v1/reload", "").await.status, 200);
    let after: Vec<_> = (0..16).map(|_| s.post_json("/v1/queries", &star)).collect();
    for r in futures_util::future::join_all(after).await {
        assert_eq!(columns(r), json!(["k", "v", "note"]));
    }
}

/// A removal is refused with the way to allow it; with
/// `allow_destructive` the column and the table go, and the answer says so.
#[tokio::test]
async fn a_removal_applies_only_with_allow_destructive() {
    let s = start().await;
    s.exec(json!([
        "INSERT INTO machines (id, app, state) VALUES ('m1', 'web', 'up')",
        "INSERT INTO vals (k, v) VALUES (1, 2)"
    ]))
    .await;
    let without = REGIONAL_SCHEMA
        .replace("    state TEXT,\n", "")
        .replace("CREATE TABLE vals (k INTEGER PRIMARY KEY NOT NULL, v);", "");
    assert!(!without.contains("state") && !without.contains("vals"));
    std::fs::write(s.regional_schema_path(), &without).unwrap();
    for body in [json!({}), json!({"allow_destructive": false})] {
        let r = s.post_json("/v1/reload", &body).await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
        let error = r.error();
        for word in ["state", "vals", "allow_destructive", "nothing was changed"] {
            assert!(error.contains(word), "{word:?} missing: {error}");
        }
    }
    assert_eq!(
        s.rows(json!("SELECT state FROM machines")).await,
        vec![json!(["up"])]
    );

    let r = s
        .post_json("/v1/reload", &json!({"allow_destructive": true}))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        json!({"reloaded": true, "dropped": [
            {"db": "regional", "table": "vals", "column": null},
            {"db": "regional", "table": "machines", "column": "state"}
        ]})
    );
    assert_eq!(
        s.rows(json!("SELECT * FROM machines")).await,
        vec![json!(["m1", "web", null, null, null])]
    );
    let gone = s
        .post_json("/v1/queries", &json!("SELECT * FROM vals"))
        .await;
    assert_eq!(gone.status, 400, "{}", String::from_utf8_lossy(&gone.body));
    // Nothing left to drop: the same reload again is a plain one.
    let r = s
        .post_json("/v1/reload", &json!({"allow_destructive": true}))
        .await;
    assert_eq!(r.json(), json!({"reloaded": true}));
}
