//! `GET /v1/digest` on two in-process nodes of one region (one of them a
//! global member, whose rollups and region row fill `global.db`): once they
//! converge they answer byte-identical JSON, whole and per bucket, in which
//! deleted keys (tombstones) have no part; a row
//! altered on one of them around capture changes that node's digest in the
//! key's bucket only, and replication does not undo it.

use std::sync::Arc;
use std::time::Duration;

use patina_api::{ApiConfig, ApiState, RegionView};
use patina_node::DbKind;
use patina_testkit::{eventually, FleetOptions, RegionSpec, TestFleet};
use rusqlite::functions::FunctionFlags;
use serde_json::Value as Json;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(30);

/// Serves node `i`'s API on 127.0.0.1:0; returns its base URL and the
/// sender that stops it.
async fn serve(fleet: &TestFleet, i: usize) -> (String, oneshot::Sender<()>) {
    let n = &fleet.nodes[i];
    let subs = patina_subs::Subscriptions::open_for(&n.node).unwrap();
    let state = ApiState::new(n.node.clone(), subs, ApiConfig::default())
        .with_cluster_view(Arc::new(RegionView::new(n.runtime())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(patina_api::serve(listener, state, async {
        let _ = stopped.await;
    }));
    (format!("http://{addr}"), stop)
}

async fn get(url: &str) -> (u16, String, bytes::Bytes) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    let actor = resp
        .headers()
        .get(patina_api::ACTOR_HEADER)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, actor, resp.bytes().await.unwrap())
}

fn json(body: &[u8]) -> Json {
    serde_json::from_slice(body).unwrap()
}

/// The bucket `id`'s key of `machines` falls in, as node `base` lists it.
async fn bucket_of_machine(base: &str, id: i64) -> usize {
    for bucket in 0..256 {
        let (_, _, body) = get(&format!("{base}/v1/digest?table=machines&bucket={bucket}")).await;
        let listed = json(&body);
        let keys = listed["databases"]["regional"]["machines"]["keys"]
            .as_array()
            .unwrap()
            .clone();
        if keys.iter().any(|k| k["pk"] == serde_json::json!([id])) {
            return bucket;
        }
    }
    panic!("machine {id} is in no bucket");
}

/// The ids of `machines` that node `base`'s bucket listings hold, bucket
/// by bucket.
async fn listed_machines(base: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    for bucket in 0..256 {
        let (_, _, body) = get(&format!("{base}/v1/digest?table=machines&bucket={bucket}")).await;
        let listed = json(&body);
        for key in listed["databases"]["regional"]["machines"]["keys"]
            .as_array()
            .unwrap()
        {
            ids.push(key["pk"][0].as_i64().unwrap());
        }
    }
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converged_nodes_answer_identical_digests_until_one_is_altered() {
    let spec = RegionSpec {
        name: "ams",
        nodes: 2,
        global_members: 1,
    };
    let fleet = TestFleet::start(&[spec], FleetOptions::default()).await;
    let (a, _stop_a) = serve(&fleet, 0).await;
    let (b, _stop_b) = serve(&fleet, 1).await;
    for i in 1..=40 {
        let app = if i % 3 == 0 { "db" } else { "web" };
        let on = (i % 2) as usize;
        fleet
            .exec(
                on,
                &format!("INSERT INTO machines VALUES ({i}, '{app}', 'started', {i})"),
            )
            .await;
    }
    // The update and the delete below must find every row on their node.
    for i in 0..2 {
        let node = fleet.nodes[i].node.clone();
        eventually("every insert on both nodes", WAIT, || {
            let node = node.clone();
            async move {
                let n = patina_testkit::rows(&node, "SELECT count(*) FROM machines").await;
                n == vec![vec![patina_node::Value::Integer(40)]]
            }
        })
        .await;
    }
    fleet
        .exec(1, "UPDATE machines SET state = 'stopped' WHERE id < 10")
        .await;
    fleet.exec(0, "DELETE FROM machines WHERE id > 35").await;

    eventually("byte-identical digests", WAIT, || {
        let (a, b) = (a.clone(), b.clone());
        async move {
            let (sa, _, da) = get(&format!("{a}/v1/digest")).await;
            let (sb, _, db) = get(&format!("{b}/v1/digest")).await;
            let converged = sa == 200 && sb == 200 && da == db;
            converged && {
                let d = json(&da);
                let m = &d["databases"]["regional"]["machines"];
                m["rows"] == 35
                    && m.get("tombstones").is_none()
                    && d["databases"]["global"]["app_regions"]["rows"] == 2
                    && d["databases"]["global"]["patina_regions"]["rows"] == 1
            }
        }
    })
    .await;
    let (_, actor_a, whole) = get(&format!("{a}/v1/digest")).await;
    let (_, actor_b, _) = get(&format!("{b}/v1/digest")).await;
    assert_eq!(actor_a, fleet.nodes[0].node.actor_id().to_hex());
    assert_eq!(actor_b, fleet.nodes[1].node.actor_id().to_hex());
    let whole = json(&whole);
    assert_eq!(whole["format"], "patina-digest-2/siphash-2-4/256");
    assert_eq!(
        whole["databases"]["regional"]["machines"]["buckets"]
            .as_array()
            .unwrap()
            .len(),
        256
    );

    // The deleted machines' tombstones are neither counted nor listed.
    assert_eq!(listed_machines(&a).await, (1..=35).collect::<Vec<i64>>());

    let bucket = bucket_of_machine(&a, 5).await;
    let one = format!("/v1/digest?table=machines&bucket={bucket}");
    let (_, _, listed_a) = get(&format!("{a}{one}")).await;
    let (_, _, listed_b) = get(&format!("{b}{one}")).await;
    assert_eq!(listed_a, listed_b, "a bucket's listing is identical too");
    let listed = json(&listed_a);
    let bucket_json = &listed["databases"]["regional"]["machines"];
    assert_eq!(
        bucket_json["hash"],
        whole["databases"]["regional"]["machines"]["buckets"][bucket]
    );
    assert_eq!(listed["databases"]["global"], serde_json::json!({}));
    let five = bucket_json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["pk"] == serde_json::json!([5]))
        .unwrap();
    assert_eq!(five["in_table"], true);
    assert_eq!(five["cl"], 1);
    assert_eq!(five["columns"]["state"]["value"], "stopped");
    let clock = &five["columns"]["state"]["clock"];
    assert_eq!(clock["col_version"], 2);
    assert_eq!(clock["site_id"], actor_b.as_str(), "b stopped it");

    // Around capture on b: a plain connection with a do-nothing crr_capture.
    let bookkeeping = |i: usize| {
        format!(
            "{:?}",
            fleet.nodes[i].node.bookkeeping(DbKind::Regional).borrow()
        )
    };
    let before = (bookkeeping(0), bookkeeping(1));
    let path = fleet.nodes[1].dir.path().join("data/regional.db");
    let side = rusqlite::Connection::open(path).unwrap();
    side.busy_timeout(Duration::from_secs(5)).unwrap();
    side.create_scalar_function("crr_capture", -1, FunctionFlags::SQLITE_UTF8, |_| {
        Ok(rusqlite::types::Null)
    })
    .unwrap();
    side.execute("UPDATE machines SET n = 500 WHERE id = 5", [])
        .unwrap();
    drop(side);

    // Replication cannot see it: sync rounds later, the bookkeeping is as
    // it was and the digests still differ, in that bucket only.
    for n in &fleet.nodes {
        let stats = n.runtime().regional().stats();
        let target = stats.sync_rounds.get() + 3;
        eventually("3 sync rounds", WAIT, || {
            let done = stats.sync_rounds.get() >= target;
            async move { done }
        })
        .await;
    }
    assert_eq!((bookkeeping(0), bookkeeping(1)), before);
    let (_, _, da) = get(&format!("{a}/v1/digest")).await;
    let (_, _, db) = get(&format!("{b}/v1/digest")).await;
    let (da, db) = (json(&da), json(&db));
    assert_eq!(da["databases"]["global"], db["databases"]["global"]);
    let buckets = |d: &Json| {
        d["databases"]["regional"]["machines"]["buckets"]
            .as_array()
            .unwrap()
            .clone()
    };
    let (ba, bb) = (buckets(&da), buckets(&db));
    let differing: Vec<usize> = (0..256).filter(|&i| ba[i] != bb[i]).collect();
    assert_eq!(differing, vec![bucket]);
    let (_, _, listed_b) = get(&format!("{b}{one}")).await;
    let listed_b = json(&listed_b);
    let keys_b = listed_b["databases"]["regional"]["machines"]["keys"]
        .as_array()
        .unwrap();
    let keys_a = bucket_json["keys"].as_array().unwrap();
    let changed: Vec<&Json> = keys_b
        .iter()
        .filter(|k| !keys_a.contains(k))
        .map(|k| &k["pk"])
        .collect();
    assert_eq!(changed, vec![&serde_json::json!([5])]);
}
