//! Two real `patina agent` processes of one region: they find each other
//! through the bootstrap list (`patina members` shows both alive), a write
//! on one is readable on the other, and `/metrics` counts the replication.

mod support;

use std::time::Duration;

use patina_testkit::eventually_blocking as eventually;

use serde_json::Value as Json;
use support::{runtime, setup, setup_peer, Agent};

fn alive_members(agent: &Agent) -> usize {
    let (ok, out, err) = agent.cli(&["members", "--json"]);
    assert!(ok, "{err}");
    out.lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter(|m| m["state"] == "alive" && m["cluster"] == "test")
        .count()
}

#[test]
fn two_agents_form_a_region_and_replicate() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Agent::start(&setup(da.path()));
    assert!(!a.gossip.is_empty(), "the agent logs its gossip address");
    let b = Agent::start(&setup_peer(db.path(), &[&a.gossip]));
    eventually(
        "both members alive on both",
        Duration::from_secs(30),
        || alive_members(&a) == 2 && alive_members(&b) == 2,
    );

    let (ok, _, err) = a.cli(&["exec", "INSERT INTO machines VALUES ('m1', 'web', 1)"]);
    assert!(ok, "{err}");
    eventually("the write on b", Duration::from_secs(30), || {
        let (ok, out, _) = b.cli(&["query", "--json", "SELECT id, app FROM machines"]);
        ok && out.contains("\"m1\"") && out.contains("\"web\"")
    });

    let rt = runtime();
    let metrics_of = |agent: &Agent| {
        rt.block_on(async {
            reqwest::get(format!("http://{}/metrics", agent.addr))
                .await?
                .text()
                .await
        })
        .unwrap()
    };
    let metrics = metrics_of(&a);
    for line in [
        r#"patina_writer_transactions_total{db="regional"} 1"#,
        r#"patina_writer_commits_total{db="regional"} 1"#,
        r#"patina_writer_transactions_total{db="global"} 0"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in:\n{metrics}");
    }
    let metrics = metrics_of(&b);
    assert!(
        metrics.contains(r#"patina_writer_transactions_total{db="regional"} 0"#),
        "merges are not client transactions:\n{metrics}"
    );
    let applied = metrics
        .lines()
        .find(|l| l.starts_with("patina_replication_versions_applied_total{cluster=\"test\"}"))
        .unwrap_or_else(|| panic!("no replication metric in:\n{metrics}"));
    let n: u64 = applied.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1, "{applied}");

    // The peer's round trip, from the QUIC connection that carried the
    // write; the node itself has none.
    let (ok, out, err) = a.cli(&["members", "--json"]);
    assert!(ok, "{err}");
    let members: Vec<Json> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let me = members.iter().find(|m| m["addr"] == a.gossip.as_str());
    let peer = members.iter().find(|m| m["addr"] == b.gossip.as_str());
    assert_eq!(me.map(|m| &m["rtt_ms"]), Some(&Json::Null), "{members:?}");
    let rtt = peer.and_then(|m| m["rtt_ms"].as_f64());
    assert!(rtt.is_some_and(|ms| ms > 0.0 && ms < 1000.0), "{members:?}");
}

/// `/v1/updates` on b opened as soon as b is up; its lines so far, read
/// on a background task.
struct Feed {
    lines: std::sync::Arc<std::sync::Mutex<Vec<Json>>>,
    _rt: tokio::runtime::Runtime,
}

impl Feed {
    fn open(agent: &Agent) -> Feed {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let url = format!("http://{}/v1/updates/machines", agent.addr);
        let response = rt
            .block_on(reqwest::Client::new().post(url).send())
            .unwrap();
        assert_eq!(response.status(), 200);
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        rt.spawn(async move {
            use futures_util::StreamExt;
            let mut body = response.bytes_stream();
            let mut buf = Vec::new();
            while let Some(Ok(bytes)) = body.next().await {
                buf.extend_from_slice(&bytes);
                while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    sink.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&line).unwrap());
                }
            }
        });
        Feed { lines, _rt: rt }
    }

    /// The ids notified so far.
    fn ids(&self) -> std::collections::BTreeSet<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l["notify"][1][0].as_str().map(str::to_owned))
            .collect()
    }
}

fn ids(agent: &Agent) -> std::collections::BTreeSet<String> {
    let (ok, out, err) = agent.cli(&["query", "--json", "SELECT id FROM machines"]);
    assert!(ok, "{err}");
    out.lines()
        .map(|l| {
            serde_json::from_str::<Json>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn the_update_feed_reports_replicated_changes_live_and_after_a_restart() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Agent::start(&setup(da.path()));
    let b = Agent::start(&setup_peer(db.path(), &[&a.gossip]));
    let feed = Feed::open(&b);
    let (ok, _, err) = a.cli(&["exec", "INSERT INTO machines VALUES ('live', 'web', 1)"]);
    assert!(ok, "{err}");
    eventually(
        "b's feed reports a's write",
        Duration::from_secs(30),
        || feed.ids().contains("live"),
    );

    // b misses writes while it is down and catches up by sync.
    drop(feed);
    b.kill9();
    for i in 0..200 {
        let (ok, _, err) = a.cli(&[
            "exec",
            &format!("INSERT INTO machines VALUES ('m{i}', 'web', {i})"),
        ]);
        assert!(ok, "{err}");
    }
    let b = Agent::start(&setup_peer(db.path(), &[&a.gossip]));
    let feed = Feed::open(&b);
    // Rows b held when the feed opened may have merged before it; every
    // other row must be reported.
    let held_at_open = ids(&b);
    let (ok, _, err) = a.cli(&["exec", "INSERT INTO machines VALUES ('after', 'web', 2)"]);
    assert!(ok, "{err}");
    let all = ids(&a);
    eventually("b holds every row", Duration::from_secs(30), || {
        ids(&b) == all
    });
    let expected: Vec<String> = all.difference(&held_at_open).cloned().collect();
    assert!(expected.contains(&"after".to_owned()));
    eventually(
        "b's feed reports every row merged after it opened",
        Duration::from_secs(30),
        || {
            let notified = feed.ids();
            expected.iter().all(|id| notified.contains(id))
        },
    );
    eprintln!(
        "{} of 200 rows written while b was down were merged after its feed opened",
        expected.len() - 1
    );
}

/// Opens `SELECT count(*) FROM machines` on `agent` and collects the
/// stream's lines (snapshot, then change events) as they arrive.
fn count_subscription(
    rt: &tokio::runtime::Runtime,
    agent: &Agent,
) -> std::sync::Arc<std::sync::Mutex<String>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let into = std::sync::Arc::clone(&seen);
    let url = format!("http://{}/v1/subscriptions", agent.addr);
    let mut resp = rt
        .block_on(
            reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .body("\"SELECT count(*) FROM machines\"")
                .send(),
        )
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    rt.spawn(async move {
        while let Ok(Some(bytes)) = resp.chunk().await {
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&bytes));
        }
    });
    seen
}

/// A transaction too large to be handed around whole (more changes than
/// `patina_node::LARGE_CHANGES`): the writer leaves it to sync, which
/// serves it in pages; the replica buffers the pages and merges them in
/// batches. Every row arrives, and subscriptions on both nodes see it.
#[test]
fn a_large_transaction_replicates_and_subscriptions_see_it() {
    const ROWS: u64 = 20_000; // 2 columns each: 40,000 changes, 5 pages
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Agent::start(&setup(da.path()));
    let b = Agent::start(&setup_peer(db.path(), &[&a.gossip]));
    eventually(
        "both members alive on both",
        Duration::from_secs(30),
        || alive_members(&a) == 2 && alive_members(&b) == 2,
    );
    // Worker threads read the streams while this thread polls the nodes.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let subs = [count_subscription(&rt, &a), count_subscription(&rt, &b)];
    let sql = format!(
        "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < {ROWS}) \
         INSERT INTO machines SELECT 'm' || i, 'app' || (i % 7), i FROM k"
    );
    let (ok, _, err) = a.cli(&["exec", &sql]);
    assert!(ok, "{err}");
    let digest = |agent: &Agent| {
        let (ok, out, err) = agent.cli(&[
            "query",
            "--json",
            "SELECT count(*), sum(n), count(DISTINCT app) FROM machines",
        ]);
        assert!(ok, "{err}");
        out
    };
    let want = digest(&a);
    assert!(want.contains(&ROWS.to_string()), "{want}");
    eventually("every row on b", Duration::from_secs(60), || {
        digest(&b) == want
    });
    for (name, seen) in ["a", "b"].iter().zip(&subs) {
        eventually(
            &format!("the subscription on {name} sees the new count"),
            Duration::from_secs(30),
            || {
                let text = seen.lock().unwrap();
                text.lines()
                    .any(|l| l.contains("\"change\"") && l.contains(&ROWS.to_string()))
            },
        );
    }
}
