//! Backups taken while writes go on, and new nodes seeded from them: a
//! backup is one commit's snapshot of each database with its bookkeeping;
//! the seeded node holds exactly that snapshot under an actor id of its
//! own, counts the old node's versions up to the snapshot as applied (and
//! its peers' as the old node did), and fetches only what is newer.
//! Damaged or mismatched backups and used data dirs are refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use patina_node::{
    restore, BackupError, BackupManifest, DbKind, Node, NodeOptions, RestoreError, Statement,
    Value, MANIFEST_FILE,
};
use patina_wire::ChangeChunk;

const REGIONAL: &str = "CREATE TABLE machines(id TEXT PRIMARY KEY NOT NULL, app TEXT, n INTEGER);";
const GLOBAL: &str = "CREATE TABLE apps(app TEXT PRIMARY KEY NOT NULL, machines INTEGER);";

fn options(dir: &Path) -> NodeOptions {
    patina_testkit::node_options(dir, REGIONAL, GLOBAL)
}

/// Tests only need the manifest to reach the file; its encoding is the
/// API's (JSON).
fn encode(manifest: &BackupManifest) -> Vec<u8> {
    format!("{manifest:?}").into_bytes()
}

async fn exec(node: &Node, sql: &str, params: Vec<Value>) -> u64 {
    node.transact(vec![Statement::with_params(sql, params)])
        .await
        .unwrap()
        .version
        .expect("a replicated change")
}

/// Everything `from` serves of what `to` lacks in `db`, applied to `to`;
/// returns the versions applied.
async fn sync(from: &Node, to: &Node, db: DbKind) -> usize {
    let offered = from.bookkeeping(db).borrow().summary(4096);
    let needs = to.bookkeeping(db).borrow().needs(&offered, 10_000);
    let mut chunks: Vec<Arc<ChangeChunk>> = Vec::new();
    for need in needs {
        let mut left = vec![need];
        while let Some(n) = left.pop() {
            let (c, rest) = from.serve(db, n).await.unwrap();
            chunks.extend(c.into_iter().map(Arc::new));
            left.extend(rest.into_iter().rev());
        }
    }
    to.apply_remote(db, chunks).await.unwrap().versions_applied
}

async fn machine_ids(node: &Node) -> Vec<String> {
    patina_testkit::rows(node, "SELECT id FROM machines ORDER BY id")
        .await
        .into_iter()
        .map(|r| match &r[0] {
            Value::Text(s) => s.clone(),
            other => panic!("{other:?}"),
        })
        .collect()
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_writes_seeds_a_new_node_with_exactly_its_snapshot() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let old = Node::open(options(dirs[0].path())).unwrap();
    let peer = Node::open(options(dirs[1].path())).unwrap();
    for i in 0..5 {
        exec(
            &peer,
            "INSERT INTO machines VALUES (?, 'peer', ?)",
            vec![text(&format!("p{i}")), Value::Integer(i)],
        )
        .await;
    }
    assert_eq!(sync(&peer, &old, DbKind::Regional).await, 5);
    exec(&old, "INSERT INTO apps VALUES ('web', 1)", vec![]).await;

    // One commit per write (each awaited), so versions and rows match one
    // to one and the snapshot must be a prefix of them. Writes go on until
    // 20 after the backup returned.
    let backed_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (old, backed_up) = (old.clone(), Arc::clone(&backed_up));
        tokio::spawn(async move {
            let mut written = Vec::new();
            let mut after = 0;
            for i in 0.. {
                if backed_up.load(std::sync::atomic::Ordering::Acquire) {
                    after += 1;
                    if after > 20 {
                        break;
                    }
                }
                let id = format!("w{i:05}");
                let v = exec(
                    &old,
                    "INSERT INTO machines VALUES (?, 'web', ?)",
                    vec![text(&id), Value::Integer(i)],
                )
                .await;
                written.push((id, v));
            }
            written
        })
    };
    // Once some are in: the backup runs among the writes.
    let mut bookkeeping = old.bookkeeping(DbKind::Regional);
    let own = old.actor_id();
    bookkeeping
        .wait_for(|b| b.max_version(DbKind::Regional, own) >= Some(50))
        .await
        .unwrap();
    let target = dirs[2].path().join("backup");
    let report = old.backup(target.clone(), encode).await.unwrap();
    backed_up.store(true, std::sync::atomic::Ordering::Release);
    let written = writer.await.unwrap();
    let manifest = report.manifest;
    assert_eq!(manifest.actor_id, own.to_hex());
    assert_eq!(manifest.region, "ams");
    let regional = manifest
        .databases
        .iter()
        .find(|d| d.db == "regional")
        .unwrap();
    let snapshot = regional.own_version;
    let last = written.last().unwrap().1;
    assert!(
        snapshot >= 50 && snapshot + 20 <= last,
        "{snapshot} of {last}"
    );
    let files: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), 3, "two databases and the manifest: {files:?}");
    assert_eq!(
        std::fs::read(target.join(MANIFEST_FILE)).unwrap(),
        encode(&manifest)
    );
    let peer_entry = regional
        .actors
        .iter()
        .find(|a| a.actor == peer.actor_id().to_hex())
        .unwrap();
    assert_eq!(
        (peer_entry.max_applied, peer_entry.applied_versions),
        (5, 5)
    );

    let data_dir: PathBuf = dirs[2].path().join("data");
    let restored = restore(&target, &manifest, &data_dir).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["actor_id", "global.db", "patina.lock", "regional.db"]
    );
    assert_eq!(
        std::fs::read_to_string(data_dir.join("actor_id"))
            .unwrap()
            .trim(),
        restored.new_actor.to_hex()
    );
    assert_eq!(restored.old_actor, own);
    assert_ne!(restored.new_actor, own);
    let seeded = Node::open(options(dirs[2].path())).unwrap();
    assert_eq!(seeded.actor_id(), restored.new_actor);

    // Exactly the snapshot: the peer's rows and the writes up to it.
    let mut expected: Vec<String> = (0..5).map(|i| format!("p{i}")).collect();
    expected.extend(
        written
            .iter()
            .filter(|(_, v)| *v <= snapshot)
            .map(|(id, _)| id.clone()),
    );
    expected.sort();
    assert_eq!(machine_ids(&seeded).await, expected);
    {
        let book = seeded.bookkeeping(DbKind::Regional);
        let book = book.borrow();
        assert_eq!(book.max_version(DbKind::Regional, own), Some(snapshot));
        assert_eq!(book.applied(DbKind::Regional, own).unwrap().len(), snapshot);
        assert_eq!(book.max_version(DbKind::Regional, peer.actor_id()), Some(5));
        assert_eq!(book.max_version(DbKind::Regional, restored.new_actor), None);
        assert_eq!(book.missing_versions(), 0);
    }
    assert!(seeded.has_applied(DbKind::Global, own, 1));

    // Only what is newer than the snapshot is fetched.
    assert_eq!(
        sync(&old, &seeded, DbKind::Regional).await as u64,
        last - snapshot
    );
    assert_eq!(sync(&peer, &seeded, DbKind::Regional).await, 0);
    assert_eq!(sync(&old, &seeded, DbKind::Global).await, 0);
    assert_eq!(machine_ids(&seeded).await, machine_ids(&old).await);

    // The seeded node writes as itself, from version 1, and the old node
    // takes its writes as a peer's.
    let out = seeded
        .transact(vec![Statement::new(
            "INSERT INTO machines VALUES ('s1', 'new', 0)",
        )])
        .await
        .unwrap();
    assert_eq!(out.version, Some(1));
    assert_eq!(sync(&seeded, &old, DbKind::Regional).await, 1);
    assert!(old.has_applied(DbKind::Regional, restored.new_actor, 1));
    assert_eq!(machine_ids(&seeded).await, machine_ids(&old).await);
}

/// Whether an error is the one a case expects.
type IsExpected = fn(&BackupError) -> bool;

#[tokio::test]
async fn backup_targets_that_cannot_be_used_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path())).unwrap();
    let cases: Vec<(PathBuf, IsExpected)> = vec![
        ("relative/backup".into(), |e| {
            matches!(e, BackupError::RelativeTarget(_))
        }),
        (dir.path().to_owned(), |e| {
            matches!(e, BackupError::TargetExists(_))
        }),
        (dir.path().join("no/such/parent"), |e| {
            matches!(e, BackupError::ParentMissing { .. })
        }),
        (dir.path().join("data/inside"), |e| {
            matches!(e, BackupError::InsideDataDir { .. })
        }),
    ];
    for (target, expected) in cases {
        let err = node.backup(target.clone(), encode).await.unwrap_err();
        assert!(expected(&err), "{target:?}: {err}");
        assert!(!target.join(MANIFEST_FILE).exists());
    }
    assert!(!dir.path().join("data/inside").exists());
}

/// A backup of a node with a few writes, and the manifest.
async fn small_backup(dir: &Path) -> (PathBuf, BackupManifest) {
    let node = Node::open(options(dir)).unwrap();
    exec(
        &node,
        "INSERT INTO machines VALUES ('m1', 'web', 1)",
        vec![],
    )
    .await;
    let target = dir.join("backup");
    let report = node.backup(target.clone(), encode).await.unwrap();
    (target, report.manifest)
}

#[tokio::test]
async fn restores_from_mismatched_backups_and_into_used_data_dirs_are_refused() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (backup, manifest) = small_backup(da.path()).await;
    let (other_backup, other_manifest) = small_backup(db.path()).await;
    let scratch = tempfile::tempdir().unwrap();

    let refused = |manifest: &BackupManifest, dir: &Path, what: &str| {
        let data_dir = scratch.path().join(what);
        let err = restore(dir, manifest, &data_dir).unwrap_err();
        // Nothing of a refused restore stays behind but the lock file.
        if data_dir.exists() {
            let left: Vec<_> = std::fs::read_dir(&data_dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(left.iter().all(|n| n == "patina.lock"), "{what}: {left:?}");
        }
        err
    };

    let mut bad = manifest.clone();
    bad.format = 99;
    let err = refused(&bad, &backup, "format");
    assert!(
        matches!(err, RestoreError::Format { found: 99, .. }),
        "{err}"
    );

    let mut bad = manifest.clone();
    bad.databases[0].bytes += 1;
    let err = refused(&bad, &backup, "bytes");
    assert!(
        matches!(err, RestoreError::Mismatch { .. }) && err.to_string().contains("bytes"),
        "{err}"
    );

    let mut bad = manifest.clone();
    bad.databases[1].file = "../elsewhere.db".into();
    let err = refused(&bad, &backup, "file");
    assert!(matches!(err, RestoreError::Mismatch { .. }), "{err}");

    let mut bad = manifest.clone();
    bad.databases.pop();
    let err = refused(&bad, &backup, "missing db");
    assert!(matches!(err, RestoreError::Mismatch { .. }), "{err}");

    // Another backup's manifest for these files: another actor.
    let mut bad = other_manifest.clone();
    for (d, real) in bad.databases.iter_mut().zip(&manifest.databases) {
        d.bytes = real.bytes;
    }
    let err = refused(&bad, &backup, "actor");
    assert!(err.to_string().contains("the manifest names"), "{err}");

    let mut bad = manifest.clone();
    bad.databases[0].own_version += 1;
    let err = refused(&bad, &backup, "version");
    assert!(err.to_string().contains("versions 1..=1"), "{err}");

    // A damaged file of the right size.
    let broken = scratch.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for d in &manifest.databases {
        std::fs::copy(backup.join(&d.file), broken.join(&d.file)).unwrap();
    }
    let file = broken.join("regional.db");
    let mut bytes = std::fs::read(&file).unwrap();
    let len = bytes.len();
    bytes[len / 2..].iter_mut().for_each(|b| *b = 0xa5);
    std::fs::write(&file, bytes).unwrap();
    let err = refused(&manifest, &broken, "damaged");
    assert!(
        matches!(
            err,
            RestoreError::Mismatch { .. } | RestoreError::Database { .. }
        ),
        "{err}"
    );

    // An index that disagrees with its table: two indexes' pages swapped,
    // which SQLite's quick_check does not look at.
    let swapped = scratch.path().join("swapped");
    std::fs::create_dir(&swapped).unwrap();
    for d in &manifest.databases {
        std::fs::copy(backup.join(&d.file), swapped.join(&d.file)).unwrap();
    }
    {
        let c = rusqlite::Connection::open(swapped.join("regional.db")).unwrap();
        let roots: Vec<(String, i64)> = c
            .prepare("SELECT name, rootpage FROM sqlite_master WHERE type = 'index' ORDER BY name LIMIT 2")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(roots.len(), 2, "{roots:?}");
        c.execute_batch("PRAGMA writable_schema = ON").unwrap();
        for (i, (name, _)) in roots.iter().enumerate() {
            c.execute(
                "UPDATE sqlite_master SET rootpage = ?1 WHERE name = ?2",
                rusqlite::params![roots[1 - i].1, name],
            )
            .unwrap();
        }
    }
    let err = refused(&manifest, &swapped, "swapped indexes");
    assert!(err.to_string().contains("damaged"), "{err}");

    // Into a used data dir: a node's own, or a restored one.
    let err = restore(&backup, &manifest, &da.path().join("data")).unwrap_err();
    assert!(matches!(err, RestoreError::NotEmpty { .. }), "{err}");
    assert!(err.to_string().contains("actor_id"), "{err}");
    let fresh = scratch.path().join("fresh");
    restore(&other_backup, &other_manifest, &fresh).unwrap();
    let err = restore(&other_backup, &other_manifest, &fresh).unwrap_err();
    assert!(matches!(err, RestoreError::NotEmpty { .. }), "{err}");
    // Onto a file.
    let file = scratch.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = restore(&other_backup, &other_manifest, &file).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}
