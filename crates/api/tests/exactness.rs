//! Numbers the API reports and stores are exact: a statement's
//! `rows_affected` is its own, and an integer SQLite cannot hold is refused
//! rather than stored as a REAL that lost digits.

mod common;

use common::start;
use serde_json::json;

#[tokio::test]
async fn rows_affected_of_a_statement_that_writes_nothing_is_0() {
    let s = start().await;
    let r = s
        .post_json(
            "/v1/transactions",
            &json!([
                "INSERT INTO vals (k, v) VALUES (1, 1), (2, 2), (3, 3)",
                "SELECT 1",
                "UPDATE vals SET v = 0 WHERE k < 3",
                "SELECT count(*) FROM vals",
                "DELETE FROM vals WHERE k > 100"
            ]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let affected: Vec<_> = r.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["rows_affected"].clone())
        .collect();
    assert_eq!(
        affected,
        vec![json!(3), json!(0), json!(2), json!(0), json!(0)]
    );
}

#[tokio::test]
async fn integers_outside_i64_are_refused_naming_the_value() {
    let s = start().await;
    let big = "99999999999999999999999";
    let bodies = [
        format!(r#"[["INSERT INTO vals (k, v) VALUES (1, ?)", [{big}]]]"#),
        format!(
            r#"[{{"query": "INSERT INTO vals (k, v) VALUES (1, :v)", "named_params": {{":v": {big}}}}}]"#
        ),
        r#"[["INSERT INTO vals (k, v) VALUES (?, 1)", [18446744073709551615]]]"#.to_owned(),
    ];
    for body in bodies {
        let r = s.post_raw("/v1/transactions", body.clone()).await;
        assert_eq!(
            r.status,
            400,
            "{body}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert!(text.contains("outside SQLite's range"), "{body}: {text}");
    }
    let r = s
        .post_raw("/v1/queries", format!(r#"["SELECT ?", [{big}]]"#))
        .await;
    assert_eq!(r.status, 400);
    assert!(s.rows(json!("SELECT count(*) FROM vals")).await == vec![json!([0])]);
    // The edges of the range, and a number with an exponent, still go in.
    s.exec(json!([[
        "INSERT INTO vals (k, v) VALUES (?, ?), (?, ?)",
        [9223372036854775807i64, -9223372036854775808i64, 2, 1e23]
    ]]))
    .await;
    assert_eq!(
        s.rows(json!("SELECT typeof(v) FROM vals ORDER BY k")).await,
        vec![json!(["real"]), json!(["integer"])]
    );
}

/// JSON has no infinities: a REAL ±inf is written `1e999` / `-1e999` (the
/// encoding of `patina db`'s JSON lines), never `null`, and `1e999` as a
/// parameter stores +inf.
#[tokio::test]
async fn infinities_round_trip_as_1e999() {
    let s = start().await;
    let r = s
        .post_raw(
            "/v1/transactions",
            r#"["INSERT INTO vals (k, v) VALUES (1, 9e999), (2, -9e999)",
                ["INSERT INTO vals (k, v) VALUES (?, ?)", [3, 1e999]],
                {"query": "INSERT INTO vals (k, v) VALUES (:k, :v)", "named_params": {":k": 4, ":v": -1e999}}]"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = s
        .post_raw(
            "/v1/queries",
            r#""SELECT k, v, typeof(v), v = 9e999, v = -9e999 FROM vals ORDER BY k""#,
        )
        .await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body).to_string();
    for row in [
        r#"{"row":[1,[1,1e999,"real",1,0]]}"#,
        r#"{"row":[2,[2,-1e999,"real",0,1]]}"#,
        r#"{"row":[3,[3,1e999,"real",1,0]]}"#,
        r#"{"row":[4,[4,-1e999,"real",0,1]]}"#,
    ] {
        assert!(text.lines().any(|l| l == row), "{row} not in:\n{text}");
    }
    assert!(!text.contains("null"), "{text}");
}

/// A value too big to travel in one replication frame is refused when
/// written (it used to be accepted and then never replicated).
#[tokio::test]
async fn a_row_too_big_to_replicate_is_refused() {
    let s = start().await;
    let too_big = "x".repeat(patina_wire::ROW_BYTES_MAX + 1);
    let r = s
        .post_json(
            "/v1/transactions",
            &json!([["INSERT INTO vals (k, v) VALUES (1, ?)", [too_big]]]),
        )
        .await;
    // A failing statement answers 500 (api.md), with the reason.
    let body = r.json();
    assert_eq!(r.status, 500, "{body}");
    let error = body["results"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("is at most"), "{body}");
    let fits = "x".repeat(1 << 20);
    s.exec(json!([["INSERT INTO vals (k, v) VALUES (2, ?)", [fits]]]))
        .await;
}
