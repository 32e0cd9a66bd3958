//! `/v1/health` as a deploy gate, with real `patina agent` processes: a
//! node restarted from SIGKILL answers non-200 with a reason until it
//! holds every row its peer had, then 200; a node alone is 200 at once.

mod support;

use std::time::{Duration, Instant};

use patina_client::Statement;
use patina_testkit::eventually_blocking as eventually;
use serde_json::Value as Json;
use support::{runtime, setup, setup_peer, Agent};

const ROWS: u64 = 300;
const WAIT: Duration = Duration::from_secs(60);

/// `GET /v1/health`: (status, `response`).
fn health(rt: &tokio::runtime::Runtime, agent: &Agent) -> (u16, Json) {
    rt.block_on(async {
        let resp = reqwest::get(format!("http://{}/v1/health", agent.addr))
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Json = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        (status, body["response"].clone())
    })
}

fn row_count(rt: &tokio::runtime::Runtime, agent: &Agent) -> u64 {
    rt.block_on(async {
        let mut rows = agent
            .client()
            .query(&Statement::from("SELECT count(*) FROM machines"))
            .await
            .unwrap();
        let row = rows.next().await.unwrap().unwrap();
        row[0].as_u64().unwrap()
    })
}

/// Sends `signal` to the agent's process (SIGSTOP freezes it: the seam by
/// which a peer is made silent without losing its state).
fn signal(agent: &Agent, signal: libc::c_int) {
    let pid = agent.child.id() as libc::pid_t;
    // SAFETY: kill(2) on a child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

#[test]
fn a_restarted_node_is_unhealthy_until_it_holds_what_its_peer_had() {
    let rt = runtime();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Agent::start(&setup(da.path()));
    let b_config = setup_peer(db.path(), &[&a.gossip]);
    let b = Agent::start(&b_config);
    eventually("b caught up after joining", WAIT, || {
        health(&rt, &b).0 == 200
    });
    let (_, report) = health(&rt, &b);
    assert_eq!(report["catching_up"], false, "{report}");
    assert_eq!(report["catch_up"]["phase"], "caught_up", "{report}");
    b.kill9();

    // Written while b is down, one version each.
    rt.block_on(async {
        let client = a.client();
        for i in 0..ROWS {
            let sql = format!("INSERT INTO machines VALUES ('m{i}', 'web', {i})");
            client
                .transact(&[Statement::from(sql.as_str())])
                .await
                .unwrap();
        }
    });

    // a frozen: b, restarted, cannot learn what a holds, and says so.
    signal(&a, libc::SIGSTOP);
    let b = Agent::start(&b_config);
    let (status, report) = health(&rt, &b);
    assert_eq!(status, 503, "{report}");
    assert_eq!(report["catching_up"], true, "{report}");
    assert_eq!(report["catch_up"]["phase"], "waiting_for_peers", "{report}");
    let reason = report["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("catching up"), "{report}");
    let b_url = format!("http://{}/v1/health?gaps=1000&p99_lag=100", b.addr);
    let loose = rt.block_on(async { reqwest::get(&b_url).await.unwrap().status().as_u16() });
    assert_eq!(loose, 503, "loose thresholds do not open the gate");
    assert!(row_count(&rt, &b) < ROWS);
    // The CLI gate says the same, and waiting for it runs out.
    let (ok, _, err) = b.cli(&["health"]);
    assert!(
        !ok && err.contains("not healthy (HTTP 503): catching up"),
        "{err}"
    );
    let (ok, _, err) = b.cli(&["health", "--wait", "--timeout", "0.3"]);
    assert!(!ok && err.contains("after waiting 0.3s"), "{err}");
    signal(&a, libc::SIGCONT);

    // Health first, rows second: rows only grow, so a 200 followed by
    // fewer rows is a gate that opened too early.
    let deadline = Instant::now() + WAIT;
    let mut phases = Vec::new();
    loop {
        let (status, report) = health(&rt, &b);
        let rows = row_count(&rt, &b);
        let phase = report["catch_up"]["phase"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if phases.last() != Some(&phase) {
            phases.push(phase);
        }
        if status == 200 {
            assert_eq!(rows, ROWS, "health 200 while rows are missing: {report}");
            assert_eq!(report["catching_up"], false, "{report}");
            assert_eq!(report["catch_up"]["phase"], "caught_up", "{report}");
            assert_eq!(report["reason"], Json::Null, "{report}");
            break;
        }
        assert_eq!(status, 503, "{report}");
        assert_eq!(report["catching_up"], true, "{report}");
        let reason = report["reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with("catching up"), "{report}");
        assert!(Instant::now() < deadline, "still catching up: {report}");
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("phases seen: {phases:?}");
    assert_eq!(row_count(&rt, &b), ROWS);
    let (ok, out, err) = b.cli(&["health", "--wait", "--gaps", "0", "--json"]);
    assert!(ok, "{err}");
    let report: Json = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["gaps"], 0, "{out}");
}

#[test]
fn a_node_alone_is_healthy_at_once() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let a = Agent::start(&setup(dir.path()));
    let (status, report) = health(&rt, &a);
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["catching_up"], false, "{report}");
    assert_eq!(report["catch_up"]["phase"], "alone", "{report}");
    assert_eq!(report["parked_versions"], 0, "{report}");
    assert_eq!(report["reason"], Json::Null, "{report}");
    let (ok, out, err) = a.cli(&["health"]);
    assert!(ok && out.starts_with("healthy: region test"), "{out} {err}");
}

#[test]
fn waiting_for_a_node_that_does_not_answer_gives_up_at_the_timeout() {
    let out = std::process::Command::new(support::BIN)
        .args([
            "health",
            "--wait",
            "--timeout",
            "0.5",
            "--api",
            "127.0.0.1:9",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("127.0.0.1:9") && err.contains("after waiting 0.5s"),
        "{err}"
    );
}
