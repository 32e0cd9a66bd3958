//! Tombstone collection with real agents (`db.tombstone_retention` = 2 s):
//! random upserts, updates, deletes and re-inserts on three nodes always
//! converge to a model of what was written, while the nodes collect every
//! tombstone; a node away for less than the retention rejoins by syncing;
//! a node away across a collection is told it is stale when it returns —
//! it refuses writes, its health fails with the re-seed command, and the
//! rows it still holds reach nobody — and, re-seeded from a backup, it
//! converges; a fresh node joining after collections is not stale.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use patina_client::{ClientError, Statement};
use patina_testkit::eventually_blocking as eventually;
use serde_json::{json, Value as Json};
use support::{runtime, setup, setup_peer, Agent, BIN};

const WAIT: Duration = Duration::from_secs(90);
const KEYS: u64 = 30;

type Rows = BTreeMap<String, (String, i64)>;

fn with_retention(config: &Path) -> PathBuf {
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(
        config,
        text.replace("[db]\n", "[db]\ntombstone_retention = 2\n"),
    )
    .unwrap();
    config.to_owned()
}

fn tx(agent: &Agent, sql: &str, params: Json) -> Result<(), ClientError> {
    let params = params.as_array().cloned().unwrap_or_default();
    let statement = Statement::Positional(sql.to_owned(), params);
    runtime()
        .block_on(agent.client().transact(&[statement]))
        .map(|_| ())
}

fn rows(agent: &Agent) -> Option<Rows> {
    runtime().block_on(async {
        let statement = Statement::from("SELECT id, app, n FROM machines");
        let mut rows = agent.client().query(&statement).await.ok()?;
        let mut out = Rows::new();
        while let Some(row) = rows.next().await.ok()? {
            out.insert(
                row[0].as_str()?.to_owned(),
                (row[1].as_str()?.to_owned(), row[2].as_i64()?),
            );
        }
        Some(out)
    })
}

fn count(agent: &Agent, sql: &str) -> i64 {
    runtime().block_on(async {
        let mut rows = agent.client().query(&Statement::from(sql)).await.unwrap();
        let row = rows.next().await.unwrap().unwrap();
        row[0].as_i64().unwrap()
    })
}

/// Keys with a clock but no row: tombstones.
fn tombstones(agent: &Agent) -> i64 {
    count(agent, "SELECT count(*) FROM machines__crr_clock")
        - count(agent, "SELECT count(*) FROM machines")
}

fn health(agent: &Agent) -> (u16, Json) {
    runtime().block_on(agent.client().health_check("")).unwrap()
}

/// A small deterministic generator: the same workload every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// One round of random writes. Key `k` is written only by node `k % 3`,
/// so each key's writes are ordered and the model is exact.
fn round(agents: &[&Agent], model: &mut Rows, rng: &mut Lcg, ops: usize) {
    for _ in 0..ops {
        let key = rng.below(KEYS);
        let id = format!("m{key}");
        let agent = agents[key as usize % agents.len()];
        match rng.below(10) {
            0..=3 => {
                let app = format!("app{}", rng.below(4));
                let n = rng.below(100) as i64;
                tx(
                    agent,
                    "INSERT OR REPLACE INTO machines(id, app, n) VALUES (?, ?, ?)",
                    json!([id, app, n]),
                )
                .unwrap();
                model.insert(id, (app, n));
            }
            4..=5 => {
                tx(
                    agent,
                    "UPDATE machines SET n = n + 1 WHERE id = ?",
                    json!([id]),
                )
                .unwrap();
                if let Some(row) = model.get_mut(&id) {
                    row.1 += 1;
                }
            }
            _ => {
                tx(agent, "DELETE FROM machines WHERE id = ?", json!([id])).unwrap();
                model.remove(&id);
            }
        }
    }
}

fn converged(agents: &[&Agent], model: &Rows) {
    eventually("the nodes hold the model's rows", WAIT, || {
        agents.iter().all(|a| rows(a).as_ref() == Some(model))
    });
}

fn collected(agents: &[&Agent]) {
    eventually("every tombstone collected", WAIT, || {
        agents.iter().all(|a| tombstones(a) == 0)
    });
}

fn cli(args: &[&str]) -> String {
    let out = std::process::Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "patina {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn collection_converges_and_a_node_away_across_it_must_be_reseeded() {
    let dirs: Vec<tempfile::TempDir> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Agent::start(&with_retention(&setup(dirs[0].path())));
    let peer = |i: usize| with_retention(&setup_peer(dirs[i].path(), &[&a.gossip]));
    let b_config = peer(1);
    let b = Agent::start(&b_config);
    let c_config = peer(2);
    let c = Agent::start(&c_config);
    let mut model = Rows::new();
    let mut rng = Lcg(0x7e57);

    // Random writes in rounds; every tombstone is collected in the end.
    for _ in 0..4 {
        round(&[&a, &b, &c], &mut model, &mut rng, 40);
    }
    converged(&[&a, &b, &c], &model);
    collected(&[&a, &b, &c]);
    for agent in [&a, &b, &c] {
        assert!(
            agent.metric("patina_replication_tombstones_collected_total") > 0,
            "each node collected its own tombstones"
        );
    }
    // Keys whose tombstones are gone come back, and go again.
    for _ in 0..2 {
        round(&[&a, &b, &c], &mut model, &mut rng, 40);
        converged(&[&a, &b, &c], &model);
    }

    // Away for less than the retention: c rejoins by syncing.
    c.kill9();
    let deleted: Vec<String> = model
        .keys()
        .filter(|k| owner(k) == 0)
        .take(3)
        .cloned()
        .collect();
    for id in &deleted {
        tx(&a, "DELETE FROM machines WHERE id = ?", json!([id])).unwrap();
        model.remove(id);
    }
    let c = Agent::start(&c_config);
    converged(&[&a, &b, &c], &model);
    assert_eq!(health(&c).1["stale"], false);
    // Away over half the retention: writes waited for its catch-up.
    eventually("c takes writes again", WAIT, || health(&c).0 == 200);
    assert_eq!(health(&c).1["returning"], false);
    tx(
        &c,
        "UPDATE machines SET app = app WHERE id = 'none'",
        json!([]),
    )
    .unwrap();
    collected(&[&a, &b, &c]);

    // Away across a collection: the deletes it missed are forgotten.
    c.kill9();
    let gone: Vec<String> = model
        .keys()
        .filter(|k| owner(k) == 0)
        .take(4)
        .cloned()
        .collect();
    assert!(!gone.is_empty());
    let before = a.metric("patina_replication_tombstones_collected_total");
    for id in &gone {
        tx(&a, "DELETE FROM machines WHERE id = ?", json!([id])).unwrap();
        model.remove(id);
    }
    // a and b collect once SWIM says c is down and the retention passed.
    eventually("a and b collected the deletes c missed", WAIT, || {
        tombstones(&a) == 0
            && tombstones(&b) == 0
            && a.metric("patina_replication_tombstones_collected_total")
                >= before + gone.len() as u64
    });
    let c = Agent::start(&c_config);
    // Its first write, before any sync, would bring a deleted row back to
    // a and b, which forgot the delete: refused from the start.
    match tx(
        &c,
        "UPDATE machines SET n = n + 100 WHERE id = ?",
        json!([gone[0]]),
    ) {
        Err(ClientError::Api { status, message }) => {
            assert_eq!(status, 503);
            assert!(message.contains("refuses writes"), "{message}");
        }
        other => panic!("a node back from across a collection took a write: {other:?}"),
    }
    eventually("c finds it is stale", WAIT, || {
        health(&c).1["stale"] == true
    });
    let (status, report) = health(&c);
    assert_eq!(status, 503);
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.contains("patina restore") && reason.contains("db.tombstone_retention"),
        "{reason}"
    );
    assert!(c.metric("patina_replication_stale_detected_total") >= 1);
    match tx(
        &c,
        "INSERT INTO machines(id, app, n) VALUES ('new', 'x', 1)",
        json!([]),
    ) {
        Err(ClientError::Api { status, message }) => {
            assert_eq!(status, 503);
            assert!(message.contains("Re-seed it"), "{message}");
        }
        other => panic!("a stale node took a write: {other:?}"),
    }
    // A deploy gate waiting on it fails at once: no wait makes it healthy.
    let out = std::process::Command::new(BIN)
        .args(["health", "--api", &c.addr, "--wait", "--timeout", "30"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("waiting cannot help") && err.contains("patina restore"),
        "{err}"
    );
    // A node restarting beside a stale one does not wait for it (it
    // declines to serve sync): its catch-up ends well within the 30 s a
    // silent peer is waited for.
    b.kill9();
    let b = Agent::start(&b_config);
    eventually("b is back beside stale c", Duration::from_secs(20), || {
        health(&b).0 == 200
    });
    assert!(c.metric("patina_replication_serves_refused_stale_total") >= 1);
    // What c still holds of the deleted rows reaches nobody.
    let held_by_c = rows(&c).unwrap();
    assert!(
        gone.iter().any(|id| held_by_c.contains_key(id)),
        "c kept rows the others deleted while it was away"
    );
    round(&[&a, &b], &mut model, &mut Lcg(0xb0b), 10);
    converged(&[&a, &b], &model);

    // Re-seeded from a backup of a, c converges and takes writes again.
    let backup = dirs[3].path().join("backup");
    cli(&["backup", "--api", &a.addr, "--to", backup.to_str().unwrap()]);
    c.kill9();
    let reseeded = dirs[3].path().join("data");
    cli(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        reseeded.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&c_config).unwrap();
    let text = text.replace(
        &format!("data_dir = {:?}", dirs[2].path().join("data")),
        &format!("data_dir = {reseeded:?}"),
    );
    assert!(text.contains(reseeded.to_str().unwrap()));
    std::fs::write(&c_config, text).unwrap();
    let c = Agent::start(&c_config);
    converged(&[&a, &b, &c], &model);
    eventually("re-seeded c is healthy", WAIT, || health(&c).0 == 200);
    tx(
        &c,
        "INSERT INTO machines(id, app, n) VALUES ('m100', 'app0', 1)",
        json!([]),
    )
    .unwrap();
    model.insert("m100".into(), ("app0".into(), 1));

    // A fresh node joining after collections catches up and is not stale.
    let d = Agent::start(&peer(4));
    converged(&[&a, &b, &c, &d], &model);
    assert_eq!(health(&d).1["stale"], false);
    tx(&d, "DELETE FROM machines WHERE id = 'm100'", json!([])).unwrap();
    model.remove("m100");
    converged(&[&a, &b, &c, &d], &model);
}

/// A node frozen (SIGSTOP) while its peers collect a delete it missed, and
/// resumed with a write already waiting for it: it never restarted, so
/// only its silence tells it was away. The write must not reach the peers
/// (they forgot the delete, and would merge the row back); the node finds
/// it is stale, and, stale and still running, does not hold the others'
/// collection back.
#[test]
fn a_node_frozen_across_a_collection_takes_no_write_and_holds_nothing_back() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Agent::start(&with_retention(&setup(dirs[0].path())));
    let b = Agent::start(&with_retention(&setup_peer(dirs[1].path(), &[&a.gossip])));
    let c = Agent::start(&with_retention(&setup_peer(dirs[2].path(), &[&a.gossip])));
    let mut model = Rows::new();
    for i in 0..4 {
        let id = format!("m{i}");
        tx(
            &a,
            "INSERT INTO machines(id, app, n) VALUES (?, 'web', 1)",
            json!([id]),
        )
        .unwrap();
        model.insert(id, ("web".into(), 1));
    }
    converged(&[&a, &b, &c], &model);
    eventually("c is healthy", WAIT, || health(&c).0 == 200);
    let signal = |which: &str| {
        let pid = c.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args([which, &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    };

    signal("-STOP");
    let frozen = std::time::Instant::now();
    // Its socket's receive buffer filled with garbage, so the delete's
    // broadcast is dropped rather than read when it resumes (a's QUIC may
    // still retransmit it later: then c simply has it).
    let flood = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..4000 {
        let _ = flood.send_to(&[0u8; 1200], &c.gossip);
    }
    delete_until_collected(&a, &[&a, &b], "m0", &mut model);
    // The scenario is a freeze longer than c's allowed silence (half the
    // retention, at least 5 quiet sync rounds of 3.2 s: 16 s); nothing on
    // a frozen process can be waited on instead.
    let freeze = Duration::from_secs(17);
    if let Some(rest) = freeze.checked_sub(frozen.elapsed()) {
        std::thread::sleep(rest);
    }
    // The write is sent while c is frozen, and read as soon as it resumes.
    let addr = c.addr.clone();
    let write = std::thread::spawn(move || {
        let client = patina_client::Client::new(&addr).unwrap();
        let statement = Statement::Positional(
            "UPDATE machines SET n = n + 100 WHERE id = 'm0'".into(),
            vec![],
        );
        runtime()
            .block_on(client.transact(&[statement]))
            .map(|_| ())
    });
    signal("-CONT");
    match write.join().unwrap() {
        Err(ClientError::Api { status, message }) => {
            assert_eq!(status, 503, "{message}");
            assert!(
                message.contains("no peer has answered") || message.contains("Re-seed it"),
                "{message}"
            );
        }
        other => panic!("a node back from a freeze took a write: {other:?}"),
    }
    // Either the delete's packets were lost and c finds it is stale, or
    // they reached it late and it converges: never is m0 back on a or b.
    eventually("c finds it is stale, or catches up", WAIT, || {
        let (status, report) = health(&c);
        report["stale"] == true || (status == 200 && rows(&c).as_ref() == Some(&model))
    });
    converged(&[&a, &b], &model);
    if health(&c).1["stale"] != true {
        eprintln!("c got the delete after all: not stale, the rest does not apply");
        return;
    }
    assert!(rows(&c).unwrap().contains_key("m0"));

    // Stale and running, c declines to serve: a and b collect without it.
    delete_until_collected(&b, &[&a, &b], "m1", &mut model);
    converged(&[&a, &b], &model);
}

/// Deletes `id` on `writer` and waits until every one of `collectors`
/// has collected a tombstone since and holds none.
fn delete_until_collected(writer: &Agent, collectors: &[&Agent], id: &str, model: &mut Rows) {
    const COLLECTED: &str = "patina_replication_tombstones_collected_total";
    let before: Vec<u64> = collectors.iter().map(|a| a.metric(COLLECTED)).collect();
    tx(writer, "DELETE FROM machines WHERE id = ?", json!([id])).unwrap();
    model.remove(id);
    eventually(&format!("{id}'s tombstone collected"), WAIT, || {
        collectors
            .iter()
            .zip(&before)
            .all(|(a, &n)| tombstones(a) == 0 && a.metric(COLLECTED) > n)
    });
}

/// The node that writes key `id` in [`round`].
fn owner(id: &str) -> u64 {
    id.trim_start_matches('m').parse::<u64>().unwrap() % 3
}
