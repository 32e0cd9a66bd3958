//! Subscriptions through the real binary: `patina sub` (JSON and human
//! output) as a child process, `patina reload`, and a subscription that
//! survives `kill -9` of the agent with contiguous change ids.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use patina_client::{ChangeKind, Client, Statement, SubEvent, Subscription};
use serde_json::{json, Value as Json};
use support::{runtime, setup, setup_on, Agent, BIN};

const SQL: &str = "SELECT id, app FROM machines WHERE app IS NOT NULL";

/// `patina sub …` with its stdout read line by line on a thread.
struct SubProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl SubProcess {
    fn spawn(agent: &Agent, args: &[&str]) -> SubProcess {
        let mut child = Command::new(BIN)
            .arg("sub")
            .args(["--api", &agent.addr])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn patina sub");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        SubProcess { child, lines }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .expect("a line from patina sub within 20 s")
    }

    fn json(&self) -> Json {
        let line = self.line();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }
}

impl Drop for SubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn patina(agent: &Agent, args: &[&str]) -> (bool, String, String) {
    agent.cli(args)
}

fn exec(agent: &Agent, sql: &str) {
    let (ok, _, stderr) = patina(agent, &["exec", sql]);
    assert!(ok, "{sql}: {stderr}");
}

#[test]
fn sub_command_prints_the_api_lines_then_changes() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&setup(dir.path()));
    exec(&agent, "INSERT INTO machines VALUES ('m1', 'web', 1)");
    let sub = SubProcess::spawn(&agent, &["--json", SQL]);
    assert_eq!(sub.json(), json!({"columns": ["id", "app"]}));
    assert_eq!(sub.json(), json!({"row": [1, ["m1", "web"]]}));
    let eoq = sub.json();
    assert_eq!(eoq["eoq"]["change_id"], 0, "{eoq}");
    exec(&agent, "INSERT INTO machines VALUES ('m2', 'web', 2)");
    assert_eq!(
        sub.json(),
        json!({"change": ["insert", 2, ["m2", "web"], 1]})
    );
    exec(&agent, "UPDATE machines SET app = 'db' WHERE id = 'm1'");
    assert_eq!(
        sub.json(),
        json!({"change": ["update", 1, ["m1", "db"], 2]})
    );

    // Human output: a table, then one line per change.
    let human = SubProcess::spawn(&agent, &[SQL]);
    let mut table = Vec::new();
    loop {
        let line = human.line();
        if line.starts_with("-- at change #2") {
            break;
        }
        table.push(line);
    }
    assert_eq!(
        table,
        [
            "row_id | id | app",
            "-------+----+----",
            "1      | m1 | db",
            "2      | m2 | web",
            "(2 rows)"
        ]
    );
    exec(&agent, "DELETE FROM machines WHERE id = 'm2'");
    assert_eq!(human.line(), r#"delete 2 ["m2","web"] #3"#);
    assert_eq!(
        sub.json(),
        json!({"change": ["delete", 2, ["m2", "web"], 3]})
    );

    // Re-attach by id from a change id: only the later changes.
    let rt = runtime();
    let id = rt
        .block_on(agent.client().subscribe(&Statement::from(SQL)))
        .unwrap()
        .id()
        .to_owned();
    let again = SubProcess::spawn(&agent, &["--json", "--id", &id, "--from", "1"]);
    assert_eq!(again.json()["change"][3], 2);
    assert_eq!(again.json()["change"][3], 3);

    let (ok, _, stderr) = patina(&agent, &["sub", "SELECT * FROM nope"]);
    assert!(!ok && stderr.contains("nope"), "{stderr}");
}

#[test]
fn reload_command_applies_additive_changes_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&setup(dir.path()));
    let schema = dir.path().join("schema/machines.sql");
    std::fs::write(
        &schema,
        "CREATE TABLE machines(id TEXT PRIMARY KEY NOT NULL, app TEXT, n INTEGER, note TEXT);",
    )
    .unwrap();
    let (ok, stdout, stderr) = patina(&agent, &["reload"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "schema reloaded\n");
    exec(
        &agent,
        "INSERT INTO machines (id, note) VALUES ('m1', 'hi')",
    );

    std::fs::write(
        &schema,
        "CREATE TABLE machines(id TEXT PRIMARY KEY NOT NULL, app TEXT, note TEXT);",
    )
    .unwrap();
    let (ok, _, stderr) = patina(&agent, &["reload"]);
    assert!(!ok, "a removed column is refused");
    assert!(
        stderr.contains("machines") && stderr.contains("\"n\""),
        "names table and column: {stderr}"
    );
    exec(
        &agent,
        "INSERT INTO machines (id, n, note) VALUES ('m2', 2, 'x')",
    );
}

async fn next(sub: &mut Subscription) -> SubEvent {
    tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("an event within 30 s")
        .unwrap()
        .expect("the stream goes on")
}

/// The result as a map row id → cells, kept up to date by events.
#[derive(Default)]
struct Mirror {
    rows: std::collections::BTreeMap<u64, Vec<Json>>,
    last: u64,
}

impl Mirror {
    async fn snapshot(sub: &mut Subscription) -> Mirror {
        let mut m = Mirror::default();
        assert!(matches!(next(sub).await, SubEvent::Columns(_)));
        loop {
            match next(sub).await {
                SubEvent::Row { row_id, cells } => {
                    m.rows.insert(row_id, cells);
                }
                SubEvent::EndOfQuery { change_id } => {
                    m.last = change_id;
                    return m;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    async fn follow(&mut self, sub: &mut Subscription, n: usize) {
        for _ in 0..n {
            let SubEvent::Change {
                kind,
                row_id,
                cells,
                change_id,
            } = next(sub).await
            else {
                panic!("a change")
            };
            assert_eq!(change_id, self.last + 1, "contiguous change ids");
            self.last = change_id;
            match kind {
                ChangeKind::Delete => assert!(self.rows.remove(&row_id).is_some()),
                _ => {
                    self.rows.insert(row_id, cells);
                }
            }
        }
    }

    fn sorted(&self) -> Vec<Json> {
        let mut v: Vec<Json> = self.rows.values().map(|c| Json::Array(c.clone())).collect();
        v.sort_by_key(Json::to_string);
        v
    }
}

async fn query(c: &Client) -> Vec<Json> {
    let mut rows = c.query(&Statement::from(SQL)).await.unwrap();
    let mut out = Vec::new();
    while let Some(r) = rows.next().await.unwrap() {
        out.push(Json::Array(r));
    }
    out.sort_by_key(Json::to_string);
    out
}

async fn write(c: &Client, round: u32) {
    for i in 0..5 {
        let st = Statement::Positional(
            "INSERT INTO machines VALUES (?, 'web', ?)".into(),
            vec![format!("r{round}-{i}").into(), i.into()],
        );
        c.transact(&[st]).await.unwrap();
    }
    let st = Statement::Positional(
        "DELETE FROM machines WHERE id = ?".into(),
        vec![format!("r{round}-0").into()],
    );
    c.transact(&[st]).await.unwrap();
}

/// kill -9 with a subscriber attached: after the restart the resumable
/// client re-attaches by itself, a fresh `from=last` attach sees the same
/// changes, ids stay contiguous and the mirrored result equals the query.
#[test]
fn subscriptions_survive_kill_9_with_contiguous_ids() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let rt = runtime();
    rt.block_on(async {
        let agent = Agent::start(&config);
        // The restart listens where the first start did, so that the
        // subscriber re-attaches by itself: the port the kernel gave the
        // first start (port 0), not one guessed free beforehand.
        let config = setup_on(dir.path(), &agent.addr);
        let c = agent.client();
        write(&c, 0).await;
        let mut sub = c.subscribe(&Statement::from(SQL)).await.unwrap();
        let mut mirror = Mirror::snapshot(&mut sub).await;
        assert_eq!(mirror.rows.len(), 4);
        write(&c, 1).await;
        mirror.follow(&mut sub, 6).await;
        let before_kill = mirror.last;

        agent.kill9();
        let agent = Agent::start(&config);
        let c = agent.client();
        write(&c, 2).await;
        mirror.follow(&mut sub, 6).await;
        write(&c, 3).await;
        mirror.follow(&mut sub, 6).await;
        assert_eq!(mirror.sorted(), query(&c).await);

        // A separate re-attach from the last id seen before the kill.
        let mut late = c.attach(sub.id(), Some(before_kill)).await.unwrap();
        let mut replay = Mirror {
            last: before_kill,
            ..Mirror::default()
        };
        replay.follow(&mut late, 12).await;
        assert_eq!(replay.last, mirror.last);

        // And a fresh snapshot agrees with the mirror, at the same id.
        let mut fresh = c.attach(sub.id(), None).await.unwrap();
        let snap = Mirror::snapshot(&mut fresh).await;
        assert_eq!((snap.last, snap.sorted()), (mirror.last, mirror.sorted()));
        assert_eq!(snap.rows, mirror.rows, "row ids are stable too");
    });
}
