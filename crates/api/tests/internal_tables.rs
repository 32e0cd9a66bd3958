//! Patina's own tables (replication bookkeeping `patina_*`, clocks and sites
//! `crr_*` / `*__crr_*`) can be read through the API but never written, and
//! no user table may take their names: a forged bookkeeping row would make
//! a node drop a peer's versions as duplicates, silently and for good.

mod common;

use common::{start, REGIONAL_SCHEMA};
use serde_json::json;

const FORGERIES: &[&str] = &[
    "DELETE FROM patina_applied",
    "INSERT OR REPLACE INTO patina_applied (actor, spans) VALUES (x'00', x'01')",
    "UPDATE patina_parked SET version = 1",
    "DELETE FROM patina_partials",
    "DELETE FROM patina_buffered_changes",
    "DELETE FROM crr_sites",
    "DELETE FROM \"vals__crr_clock\"",
];

#[tokio::test]
async fn writes_to_internal_tables_are_refused_and_change_nothing() {
    let s = start().await;
    s.exec(json!(["INSERT INTO vals (k, v) VALUES (1, 1)"]))
        .await;
    // Reads of Patina's tables stay allowed (operators inspect them).
    let applied = json!("SELECT (SELECT count(*) FROM patina_applied), (SELECT count(*) FROM crr_sites), (SELECT count(*) FROM vals__crr_clock)");
    let before = s.rows(applied.clone()).await;
    assert_eq!(before.len(), 1);
    assert_eq!(before[0][2], json!(1), "the row's clock: {before:?}");

    for sql in FORGERIES {
        let r = s.post_json("/v1/transactions", &json!([sql])).await;
        assert_ne!(r.status, 200, "{sql} was accepted");
        let error = r.json()["results"][0]["error"].to_string();
        assert!(
            error.contains("Patina's own table") && error.contains("only Patina writes it"),
            "{sql}: the error names the rule: {error}"
        );
        // Behind another statement, and in a group with a valid one.
        let r = s
            .post_json(
                "/v1/transactions",
                &json!(["INSERT INTO vals (k, v) VALUES (2, 2)", sql]),
            )
            .await;
        assert_ne!(r.status, 200, "{sql} was accepted as a second statement");
    }

    assert_eq!(s.rows(applied).await, before, "bookkeeping is untouched");
    assert_eq!(
        s.rows(json!("SELECT k FROM vals ORDER BY k")).await,
        vec![json!([1])],
        "refused transactions wrote nothing"
    );
    // The node still books its own writes.
    let r = s
        .post_json(
            "/v1/transactions",
            &json!(["INSERT INTO vals (k, v) VALUES (3, 3)"]),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], json!(2));
}

#[tokio::test]
async fn user_tables_cannot_take_reserved_names() {
    let s = start().await;
    for name in ["patina_notes", "Patina_Applied", "crr_notes"] {
        let schema =
            format!("{REGIONAL_SCHEMA}\nCREATE TABLE {name} (id INTEGER PRIMARY KEY NOT NULL);");
        std::fs::write(s.regional_schema_path(), schema).unwrap();
        let r = s.post_raw("/v1/reload", "").await;
        assert_eq!(
            r.status,
            400,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let error = r.error();
        assert!(
            error.contains(name) && error.contains("reserved"),
            "{name}: names the table and the rule: {error}"
        );
    }
}
