//! The HTTP side of the bench: the client, inserts, queries, row counts,
//! membership and `/metrics` counters of one node, each by its address.

use std::time::Duration;

use serde_json::{json, Value as Json};

const INSERT: &str = "INSERT INTO bench (id, a, b, c, d) VALUES (?, ?, ?, ?, ?)";
pub(crate) const CLUSTER: &str = "bench";

pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

pub(crate) async fn alive_members(http: &reqwest::Client, addr: &str) -> usize {
    let Ok(resp) = http.get(format!("http://{addr}/v1/members")).send().await else {
        return 0;
    };
    let Ok(text) = resp.text().await else {
        return 0;
    };
    let members: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
    members
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter(|m| m["cluster"] == CLUSTER && m["state"] == "alive")
                .count()
        })
        .unwrap_or(0)
}

/// `["INSERT ...", [id, a, b, c, d]]`: a 24-character text and a 16-byte
/// blob, the row shape of `http_load`.
fn insert_body(id: &str, x: u64) -> String {
    let blob: Vec<String> = (0..16u64)
        .map(|i| ((x >> (i * 4)) & 0xff).to_string())
        .collect();
    format!(
        "[[\"{INSERT}\",[\"{id}\",{a},\"text-{x:016x}-{b:02}\",{c:.3},[{blob}]]]]",
        a = x % 1_000_000,
        b = x % 100,
        c = (x % 100_000) as f64 / 7.0,
        blob = blob.join(","),
    )
}

/// One committed single-row insert; `Err` with what went wrong otherwise.
pub(crate) async fn insert(
    http: &reqwest::Client,
    addr: &str,
    id: &str,
    x: u64,
) -> Result<(), String> {
    let resp = http
        .post(format!("http://{addr}/v1/transactions"))
        .header("content-type", "application/json")
        .body(insert_body(id, x))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() || !body.contains("\"version\":") || body.contains("\"version\":null") {
        return Err(format!("HTTP {status}: {body}"));
    }
    Ok(())
}

/// Runs a read query; returns the cells of its rows as JSON arrays.
pub(crate) async fn query(
    http: &reqwest::Client,
    addr: &str,
    sql: &str,
    params: Json,
) -> Vec<Json> {
    let body = json!([sql, params]).to_string();
    let resp = http
        .post(format!("http://{addr}/v1/queries"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("query on {addr}: {e}"));
    let status = resp.status();
    let text = resp.text().await.expect("query body");
    assert!(
        status.is_success(),
        "query on {addr}: HTTP {status}: {text}"
    );
    let mut rows = Vec::new();
    for line in text.lines() {
        let line: Json = serde_json::from_str(line).expect("an NDJSON line");
        if let Some(row) = line.get("row") {
            rows.push(row[1].clone());
        } else if let Some(e) = line.get("error") {
            panic!("query on {addr} failed: {e}");
        }
    }
    rows
}

pub(crate) async fn count_prefix(http: &reqwest::Client, addr: &str, prefix: &str) -> u64 {
    let rows = query(
        http,
        addr,
        "SELECT count(*) FROM bench WHERE id GLOB ?",
        json!([format!("{prefix}*")]),
    )
    .await;
    rows.first().and_then(|r| r[0].as_u64()).unwrap_or(0)
}

/// One counter (`name{labels}`) from `addr`'s `/metrics`.
pub(crate) async fn metric(http: &reqwest::Client, addr: &str, key: &str) -> u64 {
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {key} in /metrics of {addr}"));
    value.trim().parse::<u64>().expect("a counter value")
}
