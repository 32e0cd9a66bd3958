//! A destructive schema change rolled out node by node, with real agents:
//! a drops a column, then a table, with `patina reload --allow-destructive`
//! while b still has both and keeps writing them along with everything
//! else. Everything both nodes know keeps replicating both ways; a counts
//! what it ignores, holds nothing for it, and its health says so; then b
//! drops them too.

mod support;

use std::path::Path;
use std::time::Duration;

use patina_testkit::eventually_blocking as eventually;
use serde_json::Value as Json;
use support::{setup, setup_peer, Agent};

const MACHINES: &str =
    "CREATE TABLE machines(id TEXT PRIMARY KEY NOT NULL, app TEXT, zone TEXT, n INTEGER);";
const MACHINES_NO_ZONE: &str =
    "CREATE TABLE machines(id TEXT PRIMARY KEY NOT NULL, app TEXT, n INTEGER);";
const SERVICES: &str = "CREATE TABLE services(app TEXT PRIMARY KEY NOT NULL, port INTEGER);";
/// The columns both nodes know throughout.
const SHARED: &str = "SELECT id, app, n FROM machines ORDER BY id";
const WAIT: Duration = Duration::from_secs(30);

fn write_schema(dir: &Path, machines: &str, services: bool) {
    std::fs::write(dir.join("schema/machines.sql"), machines).unwrap();
    let path = dir.join("schema/services.sql");
    if services {
        std::fs::write(path, SERVICES).unwrap();
    } else if path.exists() {
        std::fs::remove_file(path).unwrap();
    }
}

fn exec(agent: &Agent, sql: &str) {
    let (ok, _, err) = agent.cli(&["exec", sql]);
    assert!(ok, "{sql}: {err}");
}

fn query(agent: &Agent, sql: &str) -> Vec<Json> {
    let (ok, out, err) = agent.cli(&["query", "--json", sql]);
    assert!(ok, "{sql}: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn destructive_reload(agent: &Agent) -> String {
    let (ok, out, err) = agent.cli(&["reload", "--allow-destructive"]);
    assert!(ok, "{out} {err}");
    out
}

fn health(agent: &Agent) -> Json {
    let text = agent.get("/v1/health");
    serde_json::from_str::<Json>(&text).unwrap()["response"].clone()
}

const DROPPED: &str = "patina_writer_remote_changes_dropped_total{db=\"regional\"}";
const PARKED: &str = "patina_replication_versions_parked_total";

/// Waits until both nodes hold the same rows of `sql`, then returns them.
fn converged(a: &Agent, b: &Agent, what: &str, sql: &str) -> Vec<Json> {
    eventually(what, WAIT, || query(a, sql) == query(b, sql));
    query(a, sql)
}

/// Health, as a deploy gate reads it: nothing missing, nothing held.
fn assert_honest(agent: &Agent, dropped: u64) {
    eventually("gaps close", WAIT, || health(agent)["gaps"] == 0);
    let h = health(agent);
    assert_eq!(h["parked_versions"], 0, "{h}");
    assert_eq!(h["refused_versions"], 0, "{h}");
    assert_eq!(h["dropped_changes"], dropped, "{h}");
    assert_eq!(agent.metric(DROPPED), dropped);
    assert_eq!(agent.metric(PARKED), 0, "nothing was ever held");
}

#[test]
fn a_column_and_a_table_dropped_node_by_node_keep_everything_else_flowing() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a_config = setup(da.path());
    write_schema(da.path(), MACHINES, true);
    let a = Agent::start(&a_config);
    let b_config = setup_peer(db.path(), &[&a.gossip]);
    write_schema(db.path(), MACHINES, true);
    let b = Agent::start(&b_config);
    exec(
        &a,
        "INSERT INTO machines VALUES ('m1', 'web', 'z1', 1), ('m2', 'db', 'z2', 2)",
    );
    exec(&b, "INSERT INTO services VALUES ('web', 80)");
    let all = "SELECT id, app, zone, n FROM machines ORDER BY id";
    assert_eq!(converged(&a, &b, "the first rows", all).len(), 2);
    converged(&a, &b, "the first service", "SELECT * FROM services");

    // a drops column zone: refused without the flag, nothing changed.
    write_schema(da.path(), MACHINES_NO_ZONE, true);
    let (ok, _, err) = a.cli(&["reload"]);
    assert!(!ok, "a removal needs the flag");
    for word in ["zone", "--allow-destructive", "nothing was changed"] {
        assert!(err.contains(word), "{word:?} missing: {err}");
    }
    assert_eq!(
        query(&a, "SELECT zone FROM machines WHERE id = 'm1'").len(),
        1
    );
    assert_eq!(
        destructive_reload(&a),
        "schema reloaded\ndropped column machines.zone (regional.db)\n"
    );

    // b keeps writing zone with other columns, and zone alone; a writes
    // what it has. Zone changes reaching a: 3 rows inserted + 2 updates.
    exec(
        &b,
        "INSERT INTO machines VALUES ('b1', 'api', 'z9', 10), ('b2', 'api', 'z9', 11)",
    );
    exec(&b, "INSERT INTO machines VALUES ('b3', 'cache', 'z8', 12)");
    exec(
        &b,
        "UPDATE machines SET zone = 'moved', n = 100 WHERE id = 'm1'",
    );
    exec(&b, "UPDATE machines SET zone = 'alone' WHERE id = 'm2'");
    exec(&a, "INSERT INTO machines VALUES ('a1', 'web', 5)");
    exec(&a, "UPDATE machines SET app = 'db2' WHERE id = 'm2'");
    let shared = converged(&a, &b, "the shared columns, both ways", SHARED);
    assert_eq!(shared.len(), 6);
    assert!(shared.contains(&serde_json::json!({"id": "m1", "app": "web", "n": 100})));
    assert!(shared.contains(&serde_json::json!({"id": "m2", "app": "db2", "n": 2})));
    eventually("a counts b's zone changes", WAIT, || a.metric(DROPPED) >= 5);
    assert_honest(&a, 5);
    assert_honest(&b, 0);
    // b still holds its zones; a's row has none (a never wrote one).
    assert_eq!(
        query(
            &b,
            "SELECT id, zone FROM machines WHERE id IN ('a1', 'm2') ORDER BY id"
        ),
        [
            serde_json::json!({"id": "a1", "zone": null}),
            serde_json::json!({"id": "m2", "zone": "alone"})
        ]
    );

    // `patina check` sees a schema difference, not rows to re-seed.
    let (ok, out, err) = a.cli(&["check", "--peer", &b.addr, "--attempts", "1"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("regional.machines (its columns differ)") && !err.contains("Re-seed"),
        "{out}\n{err}"
    );

    // Separately, a drops table services; b writes it, alone and in a
    // transaction with machines.
    write_schema(da.path(), MACHINES_NO_ZONE, false);
    assert_eq!(
        destructive_reload(&a),
        "schema reloaded\ndropped table services (regional.db)\n"
    );
    exec(&b, "INSERT INTO services VALUES ('api', 8080)");
    exec(&b, "UPDATE services SET port = 81 WHERE app = 'web'");
    let (ok, _, err) = b.cli(&[
        "exec",
        "INSERT INTO services VALUES ('cache', 6379)",
        "INSERT INTO machines (id, app, n) VALUES ('b4', 'cache', 13)",
    ]);
    assert!(ok, "{err}");
    exec(&a, "INSERT INTO machines VALUES ('a2', 'web', 6)");
    assert_eq!(
        converged(&a, &b, "machines after the table drop", SHARED).len(),
        8
    );
    // Three of port, and b4's zone (an insert names every column).
    eventually("a counts b's service changes", WAIT, || {
        a.metric(DROPPED) >= 9
    });
    assert_honest(&a, 9);
    let (ok, _, err) = a.cli(&["query", "SELECT * FROM services"]);
    assert!(!ok && err.contains("services"), "{err}");

    // b drops them too, by SIGHUP once its config file allows it (each
    // SIGHUP reads that key again; the refusal without it is the CLI's
    // above).
    write_schema(db.path(), MACHINES_NO_ZONE, false);
    let text = std::fs::read_to_string(&b_config).unwrap();
    assert!(text.contains("[db]\n"), "{text}");
    std::fs::write(
        &b_config,
        text.replace("[db]\n", "[db]\nallow_destructive_schema = true\n"),
    )
    .unwrap();
    let pid = b.child.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    eventually("b dropped services on SIGHUP", WAIT, || {
        let (ok, _, err) = b.cli(&["query", "SELECT * FROM services"]);
        !ok && err.contains("services")
    });
    let (ok, _, err) = b.cli(&["query", "SELECT zone FROM machines"]);
    assert!(!ok && err.contains("zone"), "{err}");
    exec(&b, "UPDATE machines SET n = 200 WHERE id = 'a1'");
    exec(&a, "UPDATE machines SET app = 'edge' WHERE id = 'b1'");
    let shared = converged(&a, &b, "the shared columns after both dropped", SHARED);
    assert!(shared.contains(&serde_json::json!({"id": "a1", "app": "web", "n": 200})));
    assert!(shared.contains(&serde_json::json!({"id": "b1", "app": "edge", "n": 10})));
    let star = "SELECT * FROM machines ORDER BY id";
    assert_eq!(query(&a, star), query(&b, star), "same columns, same rows");
    assert_honest(&a, 9);
    assert_honest(&b, 0);
}
