//! A schema change rolled out node by node, with real agents: a adds a
//! column and reloads, then keeps inserting rows that do and do not set it.
//! b, still on the old schema, serves every row at once (the columns it
//! knows) and holds the new column's values, counted; after b's own reload
//! it serves every value too, and writes of the new column flow back.

mod support;

use std::path::Path;
use std::time::Duration;

use patina_testkit::eventually_blocking as eventually;
use serde_json::Value as Json;
use support::{runtime, setup, setup_peer, Agent, SCHEMA};

const SCHEMA_V2: &str =
    "CREATE TABLE machines(id TEXT PRIMARY KEY NOT NULL, app TEXT, n INTEGER, zone TEXT);";

fn exec(agent: &Agent, sql: &str) {
    let (ok, _, err) = agent.cli(&["exec", sql]);
    assert!(ok, "{sql}: {err}");
}

/// The rows of `sql` as JSON lines.
fn query(agent: &Agent, sql: &str) -> Vec<Json> {
    let (ok, out, err) = agent.cli(&["query", "--json", sql]);
    assert!(ok, "{sql}: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn reload(agent: &Agent, dir: &Path) {
    std::fs::write(dir.join("schema/machines.sql"), SCHEMA_V2).unwrap();
    let (ok, out, err) = agent.cli(&["reload"]);
    assert!(ok && out == "schema reloaded\n", "{out} {err}");
}

#[test]
fn a_new_column_rolled_out_node_by_node_keeps_every_insert_flowing() {
    assert!(!SCHEMA.contains("zone"));
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Agent::start(&setup(da.path()));
    let b = Agent::start(&setup_peer(db.path(), &[&a.gossip]));
    exec(&a, "INSERT INTO machines VALUES ('m0', 'web', 0)");
    eventually("b holds a's first row", Duration::from_secs(30), || {
        query(&b, "SELECT id FROM machines").len() == 1
    });

    reload(&a, da.path());
    for i in 1..=20 {
        let sql = if i % 2 == 0 {
            format!("INSERT INTO machines VALUES ('m{i}', 'web', {i}, 'z{i}')")
        } else {
            format!("INSERT INTO machines (id, app, n) VALUES ('m{i}', 'web', {i})")
        };
        exec(&a, &sql);
    }
    exec(&a, "UPDATE machines SET zone = 'moved' WHERE id = 'm0'");
    let all = "SELECT id, app, n FROM machines ORDER BY id";
    eventually(
        "b serves every row with the columns it knows",
        Duration::from_secs(30),
        || query(&b, all) == query(&a, all),
    );
    let parked = "patina_replication_versions_parked_total";
    assert!(b.metric(parked) >= 21, "every version naming zone is held");
    assert_eq!(b.metric("patina_replication_versions_refused_total"), 0);

    // A version that set the new column is held on b: after= waits for
    // all of it and says why it cannot be had yet.
    let rt = runtime();
    let http = reqwest::Client::new();
    let written: Json = rt.block_on(async {
        http.post(format!("http://{}/v1/transactions", a.addr))
            .header("content-type", "application/json")
            .body(r#"["INSERT INTO machines VALUES ('held', 'web', 0, 'z')"]"#)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap()
    });
    let after = format!(
        "{}:{}",
        written["actor_id"].as_str().unwrap(),
        written["version"]
    );
    let ask = |timeout: &str| {
        rt.block_on(async {
            let r = http
                .post(format!(
                    "http://{}/v1/queries?after={after}&timeout={timeout}",
                    b.addr
                ))
                .header("content-type", "application/json")
                .body(r#""SELECT count(*) FROM machines""#)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    eventually(
        "b holds the row of that version",
        Duration::from_secs(30),
        || query(&b, "SELECT id FROM machines WHERE id = 'held'").len() == 1,
    );
    let (status, text) = ask("0.5");
    assert_eq!(status, 504, "{text}");
    assert!(text.contains("held"), "{text}");

    reload(&b, db.path());
    let (status, text) = ask("10");
    assert_eq!(status, 200, "{text}");
    let with_zone = "SELECT id, app, n, zone FROM machines ORDER BY id";
    eventually(
        "b serves every value after its reload",
        Duration::from_secs(30),
        || query(&b, with_zone) == query(&a, with_zone),
    );
    let zones = query(&b, "SELECT zone FROM machines WHERE id IN ('m0', 'm2')");
    assert_eq!(
        zones,
        vec![
            serde_json::json!({"zone": "moved"}),
            serde_json::json!({"zone": "z2"})
        ]
    );

    exec(&b, "UPDATE machines SET zone = 'from-b' WHERE id = 'm1'");
    eventually("b's zone write on a", Duration::from_secs(30), || {
        query(&a, "SELECT zone FROM machines WHERE id = 'm1'")
            == vec![serde_json::json!({"zone": "from-b"})]
    });
}
