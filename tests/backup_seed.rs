//! Seeding a node from a backup, with real agents: a region of two nodes
//! holding many rows, a backup taken (`patina backup`) while both keep
//! writing, a new node prepared from it (`patina restore`) that joins and
//! converges while fetching only the versions written after the snapshot —
//! counted by its replication metrics — and that never speaks as the
//! backed-up node's actor.
//!
//! `PATINA_SEED_ROWS` overrides the table size; the 1M-row run is
//! `cargo test --release --test backup_seed -- --ignored`.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use patina_client::Statement;
use patina_testkit::eventually_blocking as eventually;
use serde_json::{json, Value as Json};
use support::{runtime, setup, setup_peer, Agent, BIN};

/// Rows per load transaction: the load is rows / this many versions.
const LOAD_ROWS_PER_TX: u64 = 1000;
/// Writes each node makes after the backup returned.
const WRITES_AFTER_BACKUP: usize = 150;

fn rows_from_env(default: u64) -> u64 {
    std::env::var("PATINA_SEED_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn a_node_seeded_from_a_backup_taken_during_writes_fetches_only_what_is_newer() {
    seed_and_converge(rows_from_env(100_000));
}

#[test]
#[ignore = "1M rows: minutes in a debug build; run with --release --ignored"]
fn a_node_seeded_from_a_backup_of_a_million_rows_fetches_only_what_is_newer() {
    seed_and_converge(1_000_000);
}

fn exec_cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A value of a `patina_replication_*_total{cluster="test"}` counter.
fn counter(agent: &Agent, name: &str) -> u64 {
    agent.metric(&format!(
        "patina_replication_{name}_total{{cluster=\"test\"}} "
    ))
}

/// One query's rows as JSON arrays. (A client of its own: a client's
/// pooled connections live on the runtime that made them.)
fn rows(agent: &Agent, sql: &str) -> Vec<Json> {
    let client = agent.client();
    runtime().block_on(async {
        let mut out = Vec::new();
        let mut rows = client.query(&Statement::from(sql)).await.unwrap();
        while let Some(row) = rows.next().await.unwrap() {
            out.push(Json::Array(row));
        }
        out
    })
}

/// A cheap fingerprint of the table, to poll on.
fn fingerprint(agent: &Agent) -> Option<Json> {
    let sql = "SELECT count(*), total(n), total(length(id)) FROM machines";
    runtime().block_on(async {
        let mut r = agent.client().query(&Statement::from(sql)).await.ok()?;
        r.next().await.ok()?.map(Json::Array)
    })
}

/// Writes one version at a time on `agent` until `stop`, then
/// `WRITES_AFTER_BACKUP` more: updates of loaded rows and inserts of new
/// ones; counts them in `written`. Returns the versions taken.
fn writer(
    agent: &Agent,
    name: &'static str,
    rows: u64,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Vec<u64>> {
    let client = agent.client();
    std::thread::spawn(move || {
        let rt = runtime();
        let mut versions = Vec::new();
        let mut after = 0;
        for i in 0u64.. {
            if stop.load(Ordering::Acquire) {
                after += 1;
                if after > WRITES_AFTER_BACKUP {
                    break;
                }
            }
            // Values differ between the writers: an update to the value the
            // other node just wrote would change nothing and take no version.
            let statement = if i % 2 == 0 {
                let n = -(i as i64) - 1 - if name == "a" { 0 } else { 1 << 40 };
                Statement::Positional(
                    "UPDATE machines SET n = ?2 WHERE id = ?1".into(),
                    vec![json!(format!("m{}", (i * 7919) % rows)), json!(n)],
                )
            } else {
                Statement::Positional(
                    "INSERT INTO machines VALUES (?1, ?2, ?3)".into(),
                    vec![json!(format!("{name}{i}")), json!(name), json!(i)],
                )
            };
            let out = rt.block_on(client.transact(&[statement])).unwrap();
            let Some(v) = out.version else {
                panic!("{name} write {i} changed nothing: {out:?}")
            };
            versions.push(v);
            written.fetch_add(1, Ordering::Release);
        }
        versions
    })
}

fn seed_and_converge(rows_total: u64) {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Agent::start(&setup(dirs[0].path()));
    let b = Agent::start(&setup_peer(dirs[1].path(), &[&a.gossip]));
    let rt = runtime();
    let a_client = a.client();

    let load = Instant::now();
    let mut start = 0;
    while start < rows_total {
        let end = (start + LOAD_ROWS_PER_TX).min(rows_total) - 1;
        let insert = Statement::Positional(
            "WITH RECURSIVE s(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM s WHERE i < ?2) \
             INSERT INTO machines SELECT 'm' || i, 'load', i FROM s"
                .into(),
            vec![json!(start), json!(end)],
        );
        rt.block_on(a_client.transact(&[insert])).unwrap();
        start = end + 1;
    }
    eprintln!(
        "loaded {rows_total} rows on a in {:.1} s",
        load.elapsed().as_secs_f64()
    );
    eventually("b holds the loaded rows", Duration::from_secs(300), || {
        fingerprint(&b).is_some() && fingerprint(&b) == fingerprint(&a)
    });

    // Both nodes write while the backup is taken, and on after it.
    let stop = Arc::new(AtomicBool::new(false));
    let written = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let writers = [
        writer(
            &a,
            "a",
            rows_total,
            Arc::clone(&stop),
            Arc::clone(&written[0]),
        ),
        writer(
            &b,
            "b",
            rows_total,
            Arc::clone(&stop),
            Arc::clone(&written[1]),
        ),
    ];
    eventually(
        "both writers are under way",
        Duration::from_secs(60),
        || written.iter().all(|w| w.load(Ordering::Acquire) >= 20),
    );
    let backup_dir = dirs[2].path().join("backup");
    let before_backup: u64 = written.iter().map(|w| w.load(Ordering::Acquire)).sum();
    let (ok, out, err) = exec_cli(&[
        "backup",
        "--api",
        &a.addr,
        "--to",
        backup_dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    stop.store(true, Ordering::Release);
    let during_backup = written
        .iter()
        .map(|w| w.load(Ordering::Acquire))
        .sum::<u64>()
        - before_backup;
    let [a_versions, b_versions] = writers.map(|w| w.join().unwrap());
    let answer: Json = serde_json::from_str(out.trim()).unwrap();
    let manifest = &answer["manifest"];
    let a_actor = manifest["actor_id"].as_str().unwrap().to_owned();
    let regional = manifest["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["db"] == "regional")
        .unwrap();
    let a_snapshot = regional["own_version"].as_u64().unwrap();
    let a_last = *a_versions.last().unwrap();
    let b_entry = regional["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["actor"] != a_actor.as_str())
        .unwrap_or_else(|| panic!("a's backup knows b's versions: {regional}"));
    let b_snapshot_applied = b_entry["applied_versions"].as_u64().unwrap();
    let b_last = *b_versions.last().unwrap();
    assert!(
        a_snapshot < a_last && b_snapshot_applied < b_last,
        "the backup was taken among the writes: a {a_snapshot} of {a_last}, b {b_snapshot_applied} of {b_last}"
    );

    // The new node, prepared offline from the backup.
    let c_dir = dirs[3].path();
    let c_config = setup_peer(c_dir, &[&a.gossip]);
    let restore_started = Instant::now();
    let (ok, out, err) = exec_cli(&[
        "restore",
        "--from",
        backup_dir.to_str().unwrap(),
        "--data-dir",
        c_dir.join("data").to_str().unwrap(),
    ]);
    let restore_wall = restore_started.elapsed();
    assert!(ok, "{err}");
    let c_actor = out
        .lines()
        .find_map(|l| l.strip_prefix("new actor id: "))
        .unwrap_or_else(|| panic!("no new actor id in:\n{out}"))
        .trim()
        .to_owned();
    assert_ne!(c_actor, a_actor);
    let c = Agent::start(&c_config);
    eventually("c converged with a and b", Duration::from_secs(300), || {
        let fa = fingerprint(&a);
        fa.is_some() && fingerprint(&c) == fa && fingerprint(&b) == fa
    });
    let select = "SELECT id, app, n FROM machines ORDER BY id";
    let all = rows(&a, select);
    // Every other write of each writer inserts a row.
    let inserted = (a_versions.len() / 2 + b_versions.len() / 2) as u64;
    assert_eq!(all.len() as u64, rows_total + inserted);
    assert_eq!(rows(&c, select), all, "c holds what a holds");

    // Only what was written after the snapshot was fetched: every version
    // of a past it, every version of b that a had not applied.
    let expected = (a_last - a_snapshot) + (b_last - b_snapshot_applied);
    eventually(
        "c applied the versions after the snapshot",
        Duration::from_secs(60),
        || counter(&c, "versions_applied") >= expected,
    );
    let pulled = counter(&c, "versions_applied");
    let changes = counter(&c, "changes_received");
    let total_versions = a_last + b_last;
    // b was seeded the usual way: by replication, from nothing.
    let b_changes = counter(&b, "changes_received");
    eprintln!(
        "rows {rows_total}: regional.db {:.1} MiB, backup {:.2} s (agent), restore {:.2} s ({}); c applied {pulled} versions \
         ({changes} changes) of {total_versions} written, {expected} after the snapshot; \
         b, synced from nothing, received {b_changes} changes; {during_backup} writes committed \
         while `patina backup` ran",
        regional["bytes"].as_f64().unwrap() / (1024.0 * 1024.0),
        answer["time"].as_f64().unwrap(),
        restore_wall.as_secs_f64(),
        out.lines().next().unwrap_or(""),
    );
    assert_eq!(
        pulled, expected,
        "c fetched exactly the versions written after the snapshot"
    );
    // An update is one change, an insert two: nothing of the loaded table.
    assert!(
        changes <= 2 * expected && changes < rows_total / 10 && changes * 10 < b_changes,
        "{changes} changes for {expected} versions (b: {b_changes})"
    );

    // c speaks as its own actor, never as a's.
    let (ok, out, err) = a.cli(&["members", "--json"]);
    assert!(ok, "{err}");
    let members: Vec<Json> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actor_of = |gossip: &str| {
        members
            .iter()
            .find(|m| m["addr"] == gossip)
            .map(|m| m["actor_id"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        actor_of(&c.gossip).as_deref(),
        Some(c_actor.as_str()),
        "{members:?}"
    );
    assert_eq!(
        members
            .iter()
            .filter(|m| m["actor_id"] == a_actor.as_str())
            .count(),
        1,
        "a's actor id is a's alone: {members:?}"
    );
    let site0 = rows(
        &c,
        "SELECT lower(hex(site_id)) FROM crr_sites WHERE ordinal = 0",
    );
    assert_eq!(site0, vec![json!([c_actor])]);
    let out = rt
        .block_on(c.client().transact(&[Statement::from(
            "INSERT INTO machines VALUES ('c1', 'c', 0)",
        )]))
        .unwrap();
    assert_eq!(
        (out.actor_id.as_str(), out.version),
        (c_actor.as_str(), Some(1))
    );
}

#[test]
fn restore_refuses_what_is_not_a_finished_backup_and_used_data_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup");
    std::fs::create_dir(&backup).unwrap();
    let data = dir.path().join("data");
    let restore = |from: &std::path::Path, to: &std::path::Path| {
        exec_cli(&[
            "restore",
            "--from",
            from.to_str().unwrap(),
            "--data-dir",
            to.to_str().unwrap(),
        ])
    };
    let (ok, _, err) = restore(&backup, &data);
    assert!(!ok);
    assert!(
        err.contains("holds no manifest.json") && err.contains("did not finish"),
        "{err}"
    );

    std::fs::write(backup.join("manifest.json"), "{\"format\": 1}").unwrap();
    let (ok, _, err) = restore(&backup, &data);
    assert!(!ok);
    assert!(err.contains("is not a backup manifest"), "{err}");

    // A used data dir is refused before the backup is even read.
    let a = Agent::start(&setup(dir.path()));
    let (ok, out, err) = exec_cli(&[
        "backup",
        "--api",
        &a.addr,
        "--to",
        dir.path().join("real").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("backup of actor "), "{out}");
    let (ok, _, err) = restore(&dir.path().join("real"), &data);
    assert!(!ok);
    assert!(
        err.contains("is not empty") && err.contains("NEW node"),
        "{err}"
    );
    assert!(!data.join("regional.db.restoring").exists());
}
