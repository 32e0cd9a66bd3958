//! `GET /v1/digest` and `patina check` on two real agents of one region:
//! converged, they answer byte-identical digests and the check passes; a
//! row altered on one of them around capture (what replication's version
//! bookkeeping cannot see) fails the check, which names the bucket, the key,
//! what each node holds and how to repair; once repaired it passes again.

mod support;

use std::time::Duration;

use patina_crr::digest::bucket_of;
use patina_crr::{pk, Value};
use patina_testkit::eventually_blocking as eventually;
use rusqlite::functions::FunctionFlags;
use serde_json::Value as Json;
use support::{runtime, setup, setup_peer, Agent, BIN};

const WAIT: Duration = Duration::from_secs(60);

fn alive_members(agent: &Agent) -> usize {
    let (ok, out, err) = agent.cli(&["members", "--json"]);
    assert!(ok, "{err}");
    out.lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter(|m| m["state"] == "alive" && m["cluster"] == "test")
        .count()
}

/// `GET /v1/digest[?query]`: status, the `patina-actor-id` header, body.
fn digest(agent: &Agent, query: &str) -> (u16, String, Vec<u8>) {
    runtime().block_on(async {
        let url = format!("http://{}/v1/digest{query}", agent.addr);
        let resp = reqwest::get(url).await.unwrap();
        let status = resp.status().as_u16();
        let actor = resp
            .headers()
            .get("patina-actor-id")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, actor, resp.bytes().await.unwrap().to_vec())
    })
}

/// `patina check --api A [--peer P]… ARGS`: (exit code, stdout, stderr).
fn check(api: &Agent, peers: &[&Agent], args: &[&str]) -> (i32, String, String) {
    let mut command = std::process::Command::new(BIN);
    command.args(["check", "--api", &api.addr]).args(args);
    for p in peers {
        command.args(["--peer", &p.addr]);
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A stand-in for a node of another release: an HTTP server on 127.0.0.1
/// answering every request with `body` as a digest of node `actor`.
/// Returns its address; it serves until the test process ends.
fn fake_digest_server(actor: &str, body: Vec<u8>) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\npatina-actor-id: {actor}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    addr
}

fn exec(agent: &Agent, sql: &str) {
    let (ok, _, err) = agent.cli(&["exec", sql]);
    assert!(ok, "{sql}: {err}");
}

fn gaps(agent: &Agent) -> u64 {
    let health = runtime().block_on(agent.client().health()).unwrap();
    health["gaps"].as_u64().unwrap()
}

#[test]
fn check_finds_a_row_changed_around_capture() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Agent::start(&setup(da.path()));
    let b = Agent::start(&setup_peer(db.path(), &[&a.gossip]));
    eventually("both members alive on both", WAIT, || {
        alive_members(&a) == 2 && alive_members(&b) == 2
    });
    exec(
        &a,
        "INSERT INTO machines VALUES ('m1', 'web', 1), ('m2', 'web', 2), ('m3', 'db', 3)",
    );
    exec(&b, "INSERT INTO machines VALUES ('m4', 'db', 4)");
    eventually("m2 on b", WAIT, || {
        let (ok, out, _) = b.cli(&["query", "--json", "SELECT id FROM machines WHERE id = 'm2'"]);
        ok && out.contains("m2")
    });
    exec(&b, "UPDATE machines SET n = 20 WHERE id = 'm2'");
    exec(&a, "DELETE FROM machines WHERE id = 'm3'");

    eventually("identical digests", WAIT, || {
        let (sa, _, body_a) = digest(&a, "");
        let (sb, _, body_b) = digest(&b, "");
        sa == 200 && sb == 200 && body_a == body_b && {
            let json: Json = serde_json::from_slice(&body_a).unwrap();
            json["databases"]["regional"]["machines"]["rows"] == 3
        }
    });
    let (_, actor_a, body) = digest(&a, "");
    let (_, actor_b, _) = digest(&b, "");
    assert_ne!(actor_a, actor_b, "the header names who answered");
    let text = String::from_utf8(body).unwrap();
    assert!(
        !text.contains(&actor_a) && !text.contains(&actor_b),
        "no node-specific field in the body"
    );

    // Without the other member's API the check cannot pass.
    let (code, out, err) = check(&a, &[], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!("member {actor_b} (region test")) && out.contains("--peer"),
        "{out}"
    );
    let (code, out, err) = check(&a, &[&b], &["--attempts", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("all 2 nodes agree"), "{out}");
    let format: Json = serde_json::from_slice(&digest(&a, "").2).unwrap();
    assert_eq!(format["format"], "patina-digest-2/siphash-2-4/256");

    // b's rows, digested by an older release: not compared, whatever the
    // hashes say.
    let mut old: Json = serde_json::from_slice(&digest(&b, "").2).unwrap();
    old["format"] = "patina-digest-1/siphash-2-4/256".into();
    let fake = fake_digest_server(&actor_b, serde_json::to_vec(&old).unwrap());
    let mut command = std::process::Command::new(BIN);
    command.args([
        "check",
        "--api",
        &a.addr,
        "--peer",
        &fake,
        "--attempts",
        "1",
    ]);
    let out = command.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("different formats")
            && stderr.contains(&format!(
                "patina-digest-1/siphash-2-4/256 (256 buckets) on {fake} ({})",
                &actor_b[..8]
            ))
            && stderr.contains("patina-digest-2/siphash-2-4/256 (256 buckets) on"),
        "{stderr}"
    );

    // A peer that takes the connection and never answers (a frozen
    // process) fails the check after --timeout, named, instead of hanging.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let (code, stdout, stderr) = check(
        &a,
        &[&b],
        &["--peer", &silent_addr, "--attempts", "1", "--timeout", "1"],
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains(&silent_addr),
        "{stdout}{stderr}"
    );
    drop(silent);

    // Around capture on b: a plain connection with a do-nothing crr_capture.
    let side = rusqlite::Connection::open(db.path().join("data/regional.db")).unwrap();
    side.busy_timeout(Duration::from_secs(5)).unwrap();
    side.create_scalar_function("crr_capture", -1, FunctionFlags::SQLITE_UTF8, |_| {
        Ok(rusqlite::types::Null)
    })
    .unwrap();
    side.execute("UPDATE machines SET app = 'tampered' WHERE id = 'm2'", [])
        .unwrap();
    drop(side);

    let bucket = bucket_of(&pk::pack_values(&[Value::Text("m2".into())]).unwrap());
    let (_, _, tampered) = digest(&b, "");
    let (_, _, healthy) = digest(&a, "");
    assert_ne!(tampered, healthy);
    let buckets = |body: &[u8]| {
        let json: Json = serde_json::from_slice(body).unwrap();
        json["databases"]["regional"]["machines"]["buckets"]
            .as_array()
            .unwrap()
            .clone()
    };
    let (ta, tb) = (buckets(&healthy), buckets(&tampered));
    let differing: Vec<usize> = (0..ta.len()).filter(|&i| ta[i] != tb[i]).collect();
    assert_eq!(differing, vec![bucket]);

    // The bookkeeping saw nothing: no gap, and sync does not repair it
    // (the check's three digests, a second apart, still differ).
    assert_eq!((gaps(&a), gaps(&b)), (0, 0));
    let (code, out, err) = check(&a, &[&b], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("regional.machines differs"), "{out}");
    assert!(out.contains(&format!("bucket {bucket}:")), "{out}");
    assert!(out.contains("key [\"m2\"]"), "{out}");
    assert!(out.contains("app=\"tampered\""), "{out}");
    assert!(out.contains("app=\"web\""), "{out}");
    assert!(!out.contains("key [\"m1\"]"), "only differing keys: {out}");
    assert!(
        err.contains("patina backup --api HEALTHY_ADDR --to DIR")
            && err.contains("patina restore --from DIR --data-dir D"),
        "{err}"
    );
    // The bucket as check fetched it.
    let (status, _, listed) = digest(&b, &format!("?table=machines&bucket={bucket}"));
    assert_eq!(status, 200);
    let listed: Json = serde_json::from_slice(&listed).unwrap();
    let keys = listed["databases"]["regional"]["machines"]["keys"]
        .as_array()
        .unwrap();
    let m2 = keys
        .iter()
        .find(|k| k["pk"] == serde_json::json!(["m2"]))
        .unwrap();
    assert_eq!(m2["columns"]["app"]["value"], "tampered");
    assert_eq!(m2["in_table"], true);

    // Repaired: a write through capture supersedes the cell everywhere.
    exec(&a, "UPDATE machines SET app = 'fixed' WHERE id = 'm2'");
    eventually("the check passes again", WAIT, || {
        check(&a, &[&b], &["--attempts", "1"]).0 == 0
    });
    let (code, out, err) = check(&b, &[&a], &[]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn digest_query_keys_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let a = Agent::start(&setup(dir.path()));
    for (query, says) in [
        ("?tabel=machines", "unknown query key tabel"),
        (
            "?bucket=256",
            "bucket=\"256\" is not a bucket number: give 0 to 255",
        ),
        ("?table=nope", "no CRR table named \"nope\""),
        ("?bucket=1&bucket=2", "bucket is given twice"),
    ] {
        let (status, _, body) = digest(&a, query);
        let json: Json = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 400, "{query}: {json}");
        assert!(
            json["error"].as_str().unwrap().contains(says),
            "{query}: {json}"
        );
    }
    // A lone node has nothing to compare with, and says so.
    let (code, out, err) = check(&a, &[], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nothing to compare"), "{out}");
}
