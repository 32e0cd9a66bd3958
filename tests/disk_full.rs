//! A node whose data dir fills up: two real agents, node A's data dir on a
//! small tmpfs that the test fills to the brim. A answers writes with 507
//! and a message that says the disk is full, keeps answering reads and
//! serving its versions to B, and writes again by itself once the test
//! deletes the filler; no acknowledged write is lost on either node,
//! nothing refused is anywhere, the WAL checkpoints again and
//! `PRAGMA integrity_check` is ok.
//!
//! Root only (it mounts a tmpfs): elsewhere it prints `SKIPPED` and why,
//! and passes.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use patina_client::{Client, ClientError, Statement};
use patina_testkit::eventually;
use support::{setup, setup_peer, Agent};

/// The tmpfs: room for two empty databases, their WALs and a few hundred
/// rows, filled by the test anyway.
const TMPFS_SIZE: &str = "16m";
/// What the filler leaves free: a few commits' worth.
const LEFT_FREE: u64 = 192 * 1024;
/// A row's payload: a commit needs several new pages.
const PAYLOAD_BYTES: usize = 3000;
const TIMEOUT: Duration = Duration::from_secs(30);

/// A tmpfs mounted on a directory, unmounted on drop (after the agent
/// using it is gone: the test drops its agents first).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_SIZE}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(at.to_owned()))
        } else {
            Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there cannot keep the mount.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` to the brim with `dir/filler`, then gives
/// back `LEFT_FREE` bytes.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0xa5u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    file.set_len(written.saturating_sub(LEFT_FREE)).unwrap();
    path
}

fn insert(id: &str) -> Statement {
    Statement::Positional(
        "INSERT INTO machines VALUES (?, ?, 0)".into(),
        vec![id.into(), "x".repeat(PAYLOAD_BYTES).into()],
    )
}

enum Outcome {
    Acked,
    /// 507: nothing of it was written.
    Refused(String),
}

async fn write(client: &Client, id: &str) -> Outcome {
    match client.transact(&[insert(id)]).await {
        Ok(resp) if resp.version.is_some() => Outcome::Acked,
        Ok(resp) => panic!("{id}: HTTP 200 without a version: {resp:?}"),
        Err(ClientError::Api {
            status: 507,
            message,
        }) => Outcome::Refused(message),
        Err(e) => panic!("{id}: expected success or 507, got {e}"),
    }
}

use support::machine_ids as ids;

/// The value of counter `name` in the agent's `/metrics` (summed over its
/// labels), by a plain HTTP/1.0 GET.
fn metric(api: &str, name: &str) -> f64 {
    use std::io::Read;
    let mut conn = std::net::TcpStream::connect(api).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every id of `want` is on the node behind `client`.
async fn holds(client: &Client, want: &BTreeSet<String>) -> bool {
    ids(client).await.is_some_and(|have| want.is_subset(&have))
}

#[test]
fn a_node_whose_disk_fills_refuses_writes_keeps_serving_and_resumes_by_itself() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let tmpfs = match Tmpfs::mount(&dirs[0].path().join("data")) {
        Ok(t) => t,
        Err(why) => {
            println!("SKIPPED disk_full: cannot mount a small tmpfs here ({why}); run the tests as root to include it");
            return;
        }
    };
    let a = Agent::start(&setup(dirs[0].path()));
    let b = Agent::start(&setup_peer(dirs[1].path(), &[&a.gossip]));
    let (ca, cb) = (a.client(), b.client());
    let rt = support::runtime();
    rt.block_on(eventually(
        "both nodes to see each other",
        TIMEOUT,
        || async {
            for c in [&ca, &cb] {
                let alive = c.members().await.map(|m| {
                    m.iter()
                        .filter(|m| m["cluster"] == "test" && m["state"] == "alive")
                        .count()
                });
                if alive.ok() != Some(2) {
                    return false;
                }
            }
            true
        },
    ));

    let mut acked = BTreeSet::new();
    let mut refused = BTreeSet::new();
    let filler = fill(&tmpfs.0);

    // Write on A until the disk is full.
    let mut n = 0;
    let message = rt.block_on(async {
        loop {
            let id = format!("a{n}");
            n += 1;
            match write(&ca, &id).await {
                Outcome::Acked => acked.insert(id),
                Outcome::Refused(message) => {
                    refused.insert(id);
                    break message;
                }
            };
            assert!(n < 10_000, "the disk never filled");
        }
    });
    println!(
        "A full after {} acknowledged inserts: {message}",
        acked.len()
    );
    assert!(
        message.contains("disk") && message.contains("full") && message.contains("free space"),
        "{message}"
    );
    assert!(!acked.is_empty(), "the filler left no room for any write");

    rt.block_on(async {
        // Full: A still refuses (a write of the same size finds no room)...
        let id = format!("a{n}");
        n += 1;
        match write(&ca, &id).await {
            Outcome::Refused(_) => refused.insert(id),
            Outcome::Acked => acked.insert(id),
        };
        // ... answers reads...
        assert!(
            holds(&ca, &acked).await,
            "A lost acknowledged rows while full"
        );
        // ... and serves them to B.
        let acked_a = acked.clone();
        eventually("B to hold every write A acknowledged", TIMEOUT, || {
            holds(&cb, &acked_a)
        })
        .await;
        // B goes on writing; A cannot merge that yet.
        for i in 0..50 {
            let id = format!("b{i}");
            match write(&cb, &id).await {
                Outcome::Acked => acked.insert(id),
                Outcome::Refused(m) => panic!("B has room: {m}"),
            };
        }
        // ... which A counts, and leaves to sync for later.
        let api = a.addr.clone();
        eventually(
            "A to count remote chunks it had no room for",
            TIMEOUT,
            || {
                let api = api.clone();
                async move {
                    tokio::task::spawn_blocking(move || {
                        metric(&api, "patina_replication_chunks_refused_storage_full_total")
                    })
                    .await
                    .unwrap()
                        > 0.0
                }
            },
        )
        .await;
    });

    // Room again: A resumes without any action on it.
    std::fs::remove_file(&filler).unwrap();
    rt.block_on(async {
        // Each try is a write whose outcome counts: polled by hand.
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let id = format!("a{n}");
            n += 1;
            match write(&ca, &id).await {
                Outcome::Acked => {
                    acked.insert(id);
                    break;
                }
                Outcome::Refused(_) => refused.insert(id),
            };
            assert!(
                Instant::now() < deadline,
                "A refused writes for {TIMEOUT:?} after space returned"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eventually(
            "both nodes to hold every acknowledged write and the same rows",
            TIMEOUT,
            || async {
                match (ids(&ca).await, ids(&cb).await) {
                    (Some(x), Some(y)) => x == y && acked.is_subset(&x),
                    _ => false,
                }
            },
        )
        .await;
        let present = ids(&ca).await.unwrap();
        let back: Vec<&String> = refused.intersection(&present).collect();
        assert!(back.is_empty(), "writes answered 507 are present: {back:?}");
        assert_eq!(
            present, acked,
            "present ids are exactly the acknowledged ones"
        );
    });
    println!(
        "acknowledged {} ({} on A), refused {} with 507; lost 0",
        acked.len(),
        acked.iter().filter(|id| id.starts_with('a')).count(),
        refused.len()
    );

    // The WAL checkpoints again (the pages written while full included).
    let db = tmpfs.0.join("regional.db");
    let check = rusqlite::Connection::open(&db).unwrap();
    rt.block_on(eventually(
        "a full checkpoint of A's WAL",
        TIMEOUT,
        || async {
            let (busy, log, done): (i64, i64, i64) = check
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
            busy == 0 && log == done
        },
    ));
    drop(check);
    a.kill9();
    b.kill9();
    for file in ["regional.db", "global.db"] {
        let conn = rusqlite::Connection::open(tmpfs.0.join(file)).unwrap();
        let integrity: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(integrity, "ok", "{file}");
    }
}
