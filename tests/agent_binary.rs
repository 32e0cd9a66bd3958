//! The real binary: `patina agent -c FILE` with a schema dir, driven over
//! HTTP and through `patina exec` / `patina query`, killed with SIGKILL and
//! restarted.

mod support;

use std::process::Command;
use std::time::Duration;

use patina_client::{Client, Statement};
use patina_testkit::{eventually, eventually_blocking};
use support::{runtime, setup, Agent, BIN};

async fn ids(client: &Client) -> Vec<String> {
    let mut rows = client
        .query(&Statement::from("SELECT id FROM machines ORDER BY id"))
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(row) = rows.next().await.unwrap() {
        out.push(row[0].as_str().unwrap().to_owned());
    }
    out
}

/// Every acknowledged insert survives SIGKILL; an insert in flight at the
/// kill may or may not (it was never acknowledged), nothing else appears.
#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let rt = runtime();
    let mut durable: Vec<String> = Vec::new();
    let mut in_doubt: Option<String> = None;
    for round in 0..4 {
        let agent = Agent::start(&config);
        let client = agent.client();
        let present = rt.block_on(ids(&client));
        let mut expected = durable.clone();
        if let Some(id) = in_doubt.take().filter(|id| present.contains(id)) {
            expected.push(id);
        }
        expected.sort();
        assert_eq!(
            present, expected,
            "round {round}: acknowledged writes are back, nothing else"
        );
        durable = present;
        if round == 3 {
            break;
        }
        // Write until 50 more are acknowledged, then kill -9 mid-stream.
        let writer = {
            let client = client.clone();
            rt.spawn(async move {
                let mut acked = Vec::new();
                for i in 0.. {
                    let id = format!("r{round}-{i:05}");
                    let st = Statement::Positional(
                        "INSERT INTO machines VALUES (?, 'web', ?)".into(),
                        vec![id.clone().into(), i.into()],
                    );
                    match client.transact(&[st]).await {
                        Ok(_) => acked.push(id),
                        Err(_) => return (acked, Some(id)),
                    }
                }
                (acked, None)
            })
        };
        // Polled inside the runtime: its async sleeps let the writer run.
        let target = durable.len() + 50;
        rt.block_on(eventually(
            "50 more writes landing",
            Duration::from_secs(30),
            || async { ids(&client).await.len() >= target },
        ));
        agent.kill9();
        let (acked, failed) = rt.block_on(writer).unwrap();
        assert!(
            acked.len() >= 49,
            "only {} writes acknowledged",
            acked.len()
        );
        durable.extend(acked);
        in_doubt = failed;
    }
}

#[test]
fn exec_and_query_commands_talk_to_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&setup(dir.path()));
    let run = |args: &[&str]| agent.cli(args);
    let (ok, stdout, stderr) = run(&[
        "exec",
        "INSERT INTO machines VALUES ('m1', 'web', 1)",
        "INSERT INTO machines VALUES ('m2', NULL, 2)",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("version 1"), "{stdout}");
    let (ok, stdout, _) = run(&["query", "SELECT id, app, n FROM machines ORDER BY id"]);
    assert!(ok);
    assert_eq!(
        stdout,
        "id | app  | n\n---+------+--\nm1 | web  | 1\nm2 | NULL | 2\n(2 rows)\n"
    );
    let (ok, stdout, _) = run(&[
        "query",
        "--json",
        "SELECT id, n FROM machines WHERE id = 'm1'",
    ]);
    assert!(ok);
    assert_eq!(stdout, "{\"id\":\"m1\",\"n\":1}\n");
    let (ok, _, stderr) = run(&["exec", "INSERT INTO nope VALUES (1)"]);
    assert!(!ok && stderr.contains("nope"), "{stderr}");
    let (ok, _, stderr) = run(&["query", "DELETE FROM machines"]);
    assert!(!ok && stderr.contains("read-only"), "{stderr}");
}

#[test]
fn sigterm_stops_the_agent_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&setup(dir.path()));
    // Runaway queries on more connections than the node reads with, and an
    // open subscription: none of them may hold the stop up.
    let clients = tokio::runtime::Runtime::new().unwrap();
    let runaway = "\"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c\"";
    let http = reqwest::Client::new();
    for (path, body) in std::iter::repeat_n(("/v1/queries", runaway), 10)
        .chain([("/v1/subscriptions", "\"SELECT id FROM machines\"")])
    {
        let request = http
            .post(format!("http://{}{path}", agent.addr))
            .header("content-type", "application/json")
            .body(body)
            .send();
        clients.spawn(async move {
            if let Ok(response) = request.await {
                let _ = response.bytes().await;
            }
        });
    }
    let started = || {
        let text = clients
            .block_on(async {
                reqwest::get(format!("http://{}/metrics", agent.addr))
                    .await?
                    .text()
                    .await
            })
            .unwrap();
        text.contains(r#"patina_api_queries_total{outcome="started"} 8"#)
    };
    eventually_blocking(
        "every read connection busy with a runaway",
        Duration::from_secs(10),
        started,
    );
    let pid = agent.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut status = None;
    eventually_blocking(
        "the agent to stop within 10 s of SIGTERM",
        Duration::from_secs(10),
        || {
            status = agent.child.try_wait().unwrap();
            status.is_some()
        },
    );
    let status = status.expect("exited");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn a_bad_config_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[node]\nregion = \"x\"\n[api]\nadrr = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["agent", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("api.adrr"), "{stderr}");
}

/// A second agent, or `patina db`, on a running agent's data dir is
/// refused: two writers would give different changes the same versions.
#[test]
fn a_data_dir_has_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let _agent = Agent::start(&config);
    let second = Command::new(BIN)
        .args(["agent", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(
        stderr.contains("in use by another patina process"),
        "{stderr}"
    );
    let db = dir.path().join("data/regional.db");
    let out = Command::new(BIN)
        .args(["db", "exec", "--db"])
        .arg(&db)
        .arg("INSERT INTO machines VALUES ('x', 'web', 1)")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("running node"), "{stderr}");
}
