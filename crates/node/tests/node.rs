//! A node through its public API: schema files, the write path and its
//! routing, reads, schema reload, the changeset seam, restarts.

use std::path::Path;
use std::time::Duration;

use patina_node::{DbKind, Node, NodeOptions, Params, Statement, TxError, Value};
use patina_testkit::rows;

const REGIONAL: &str = "CREATE TABLE machines(id TEXT PRIMARY KEY NOT NULL, app TEXT, state TEXT);";
const GLOBAL: &str = "CREATE TABLE app_regions(app TEXT NOT NULL, region TEXT NOT NULL, machines INTEGER, PRIMARY KEY (app, region));";

fn options(dir: &Path) -> NodeOptions {
    patina_testkit::node_options(dir, REGIONAL, GLOBAL)
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

#[tokio::test]
async fn writes_route_to_their_database_and_reads_see_both() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path())).unwrap();
    let out = node
        .transact(vec![
            Statement::with_params(
                "INSERT INTO machines VALUES (?, ?, ?)",
                vec![text("m1"), text("web"), text("started")],
            ),
            Statement {
                sql: "INSERT INTO machines VALUES (:id, :app, 'created')".into(),
                params: Params::Named(vec![
                    (":id".into(), text("m2")),
                    (":app".into(), text("web")),
                ]),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        (out.db, out.version, out.results.len()),
        (DbKind::Regional, Some(1), 2)
    );
    assert_eq!(out.results[0].rows_affected, 1);

    let out = node
        .transact(vec![Statement::new(
            "INSERT INTO app_regions VALUES ('web', 'ams', 2)",
        )])
        .await
        .unwrap();
    assert_eq!(
        (out.db, out.version),
        (DbKind::Global, Some(1)),
        "global.db has its own versions"
    );

    let joined = rows(
        &node,
        "SELECT m.id, g.region FROM machines m JOIN global.app_regions g ON g.app = m.app ORDER BY m.id",
    )
    .await;
    assert_eq!(
        joined,
        vec![vec![text("m1"), text("ams")], vec![text("m2"), text("ams")]]
    );
    assert_eq!(
        node.table_row_count(vec!["machines".into(), "app_regions".into(), "nope".into()])
            .await
            .unwrap(),
        (3, vec!["nope".into()])
    );
}

#[tokio::test]
async fn bad_transactions_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path())).unwrap();
    assert_eq!(node.transact(vec![]).await.unwrap_err(), TxError::Empty);
    let mixed = node
        .transact(vec![
            Statement::new("INSERT INTO machines VALUES ('m1', 'web', 'x')"),
            Statement::new("INSERT INTO app_regions VALUES ('web', 'ams', 1)"),
        ])
        .await;
    assert_eq!(mixed.unwrap_err(), TxError::MixedDatabases);
    let failing = node
        .transact(vec![
            Statement::new("INSERT INTO machines VALUES ('m1', 'web', 'x')"),
            Statement::new("INSERT INTO nope VALUES (1)"),
        ])
        .await;
    assert!(
        matches!(failing, Err(TxError::Statement { index: 1, ref message }) if message.contains("nope")),
        "{failing:?}"
    );
    let params = node
        .transact(vec![Statement::with_params(
            "INSERT INTO machines VALUES (?, ?, ?)",
            vec![text("m1")],
        )])
        .await;
    assert!(
        matches!(params, Err(TxError::Statement { index: 0, .. })),
        "{params:?}"
    );
    assert!(rows(&node, "SELECT * FROM machines").await.is_empty());
    let out = node
        .transact(vec![Statement::new(
            "INSERT INTO machines VALUES ('m1', 'web', 'x')",
        )])
        .await
        .unwrap();
    assert_eq!(out.version, Some(1), "failed transactions took no version");
}

#[tokio::test]
async fn queries_are_read_only_and_stream() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path())).unwrap();
    assert!(matches!(
        node.query(
            Statement::new("DELETE FROM machines"),
            Duration::from_secs(5)
        )
        .await,
        Err(patina_node::QueryError::NotReadOnly)
    ));
    assert!(matches!(
        node.query(Statement::new("SELEC 1"), Duration::from_secs(5))
            .await,
        Err(patina_node::QueryError::Prepare(_))
    ));
    let values: Vec<String> = (0..1000)
        .map(|i| format!("('m{i:04}', 'app', 'x')"))
        .collect();
    node.transact(vec![Statement::new(format!(
        "INSERT INTO machines VALUES {}",
        values.join(",")
    ))])
    .await
    .unwrap();
    let got = rows(&node, "SELECT id FROM machines ORDER BY id").await;
    assert_eq!(got.len(), 1000);
    assert_eq!(got[999], vec![text("m0999")]);
}

#[tokio::test]
async fn committed_changesets_leave_through_the_seam() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path())).unwrap();
    let mut seam = node.subscribe_changesets();
    node.transact(vec![Statement::new(
        "INSERT INTO machines VALUES ('m1', 'web', 'x')",
    )])
    .await
    .unwrap();
    let cs = seam.recv().await.unwrap();
    assert_eq!(
        (cs.db, cs.actor, cs.version, cs.changes.len()),
        (DbKind::Regional, node.actor_id(), 1, 2)
    );
    assert!(node.has_applied(DbKind::Regional, node.actor_id(), 1));
    assert!(
        !node.has_applied(DbKind::Global, node.actor_id(), 1),
        "versions are per database"
    );
    assert!(
        !node
            .wait_applied(
                DbKind::Regional,
                node.actor_id(),
                2,
                Duration::from_millis(20)
            )
            .await
    );
    let waiter = {
        let node = node.clone();
        tokio::spawn(async move {
            node.wait_applied(
                DbKind::Regional,
                node.actor_id(),
                2,
                Duration::from_secs(10),
            )
            .await
        })
    };
    node.transact(vec![Statement::new("UPDATE machines SET state = 'y'")])
        .await
        .unwrap();
    assert!(waiter.await.unwrap());
}

#[tokio::test]
async fn schema_reload_is_additive_and_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());
    let node = Node::open(opts.clone()).unwrap();
    std::fs::write(
        dir.path().join("schema/regional.sql"),
        REGIONAL.replace("state TEXT", "state TEXT, cpus INTEGER"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("schema/services.sql"),
        "CREATE TABLE services(app TEXT NOT NULL PRIMARY KEY, port INTEGER);",
    )
    .unwrap();
    node.reload_schema().await.unwrap();
    node.transact(vec![Statement::new(
        "INSERT INTO machines (id, cpus) VALUES ('m1', 4)",
    )])
    .await
    .unwrap();
    node.transact(vec![Statement::new(
        "INSERT INTO services VALUES ('web', 80)",
    )])
    .await
    .unwrap();

    // A bad global schema refuses the whole reload: the regional change too.
    std::fs::write(
        dir.path().join("schema/more.sql"),
        "CREATE TABLE more(k TEXT NOT NULL PRIMARY KEY);",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("global/global.sql"),
        GLOBAL.replace("machines INTEGER", "machines TEXT"),
    )
    .unwrap();
    let err = node.reload_schema().await.unwrap_err().to_string();
    assert!(err.contains("global") && err.contains("machines"), "{err}");
    let more = node
        .transact(vec![Statement::new("INSERT INTO more VALUES ('k')")])
        .await;
    assert!(
        more.is_err(),
        "a refused reload must not create regional tables"
    );
}

#[tokio::test]
async fn a_refused_schema_keeps_the_node_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());
    std::fs::write(
        dir.path().join("schema/bad.sql"),
        "CREATE TABLE bad(id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
    )
    .unwrap();
    let err = Node::open(opts).err().expect("must refuse").to_string();
    assert!(err.contains("bad") && err.contains("NOT NULL"), "{err}");
    let missing = NodeOptions {
        schema_paths: vec![dir.path().join("nowhere.sql")],
        ..options(dir.path())
    };
    let err = Node::open(missing).err().expect("must refuse").to_string();
    assert!(err.contains("nowhere.sql"), "{err}");
}

#[tokio::test]
async fn restarts_keep_the_actor_and_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let (actor, version) = {
        let node = Node::open(options(dir.path())).unwrap();
        let out = node
            .transact(vec![Statement::new(
                "INSERT INTO machines VALUES ('m1', 'web', 'x')",
            )])
            .await
            .unwrap();
        (node.actor_id(), out.version)
    };
    let node = Node::open(options(dir.path())).unwrap();
    assert_eq!(node.actor_id(), actor);
    assert_eq!(
        rows(&node, "SELECT id FROM machines").await,
        vec![vec![text("m1")]]
    );
    let out = node
        .transact(vec![Statement::new("UPDATE machines SET state = 'y'")])
        .await
        .unwrap();
    assert_eq!(out.version, version.map(|v| v + 1));
}

#[tokio::test]
async fn one_process_at_a_time_writes_a_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let first = Node::open(options(dir.path())).unwrap();
    let second = Node::open(options(dir.path()));
    match second {
        Err(e @ patina_node::NodeError::Locked { .. }) => {
            assert!(
                e.to_string().contains("in use by another patina process"),
                "{e}"
            )
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("two nodes opened one data dir"),
    }
    drop(first);
    // Writer threads let go of the lock with the node's last handle.
    patina_testkit::eventually("the data dir free again", Duration::from_secs(10), || {
        let opened = Node::open(options(dir.path())).is_ok();
        async move { opened }
    })
    .await;
}

#[tokio::test]
async fn a_global_column_added_by_a_reload_is_writable_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path())).unwrap();
    // Classified once before the reload: the statement's target is known.
    node.transact(vec![Statement::new(
        "INSERT INTO app_regions (app, region, machines) VALUES ('web', 'ams', 1)",
    )])
    .await
    .unwrap();
    std::fs::write(
        dir.path().join("global/global.sql"),
        GLOBAL.replace("machines INTEGER", "machines INTEGER, started INTEGER"),
    )
    .unwrap();
    node.reload_schema().await.unwrap();
    let outcome = node
        .transact(vec![Statement::new(
            "INSERT INTO app_regions VALUES ('api', 'ams', 2, 1)",
        )])
        .await
        .unwrap();
    assert_eq!(outcome.db, DbKind::Global);
}

#[tokio::test]
async fn the_regions_table_is_patinas_to_write_and_everyones_to_read() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path())).unwrap();
    let record = patina_node::RegionRecord {
        region: "ams".into(),
        leader: Some(node.actor_id()),
        global_members: vec![node.actor_id()],
        last_rollup_ms: Some(1_700_000_000_000),
        global_p99_lag_ms: Some(12.5),
        updated_ms: 1_700_000_000_001,
        rollup_error: Some("rollup \"app_regions\": no such table".into()),
    };
    let out = node.record_region(&record).await.unwrap();
    assert_eq!((out.db, out.version), (DbKind::Global, Some(1)));
    assert_eq!(node.region_records().await.unwrap(), vec![record.clone()]);

    // A client may read it but never write it.
    let refused = node
        .transact(vec![Statement::new(
            "UPDATE patina_regions SET leader = NULL",
        )])
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("patina_regions"), "{refused}");
    let rows = rows(
        &node,
        "SELECT region, last_rollup_ms FROM global.patina_regions",
    )
    .await;
    assert_eq!(
        rows,
        vec![vec![text("ams"), Value::Integer(1_700_000_000_000)]]
    );

    // It survives a restart, which applies the schema files again.
    drop(node);
    let node = Node::open(options(dir.path())).unwrap();
    assert_eq!(node.region_records().await.unwrap(), vec![record]);
}

#[tokio::test]
async fn digests_cover_both_databases_and_list_a_bucket() {
    use patina_node::{Digest, DigestError, DigestRequest, DIGEST_BUCKETS};
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path())).unwrap();
    for i in 0..40 {
        let id = text(&format!("m{i}"));
        node.transact(vec![Statement::with_params(
            "INSERT INTO machines VALUES (?, 'web', 'started')",
            vec![id],
        )])
        .await
        .unwrap();
    }
    node.transact(vec![Statement::new("DELETE FROM machines WHERE id = 'm7'")])
        .await
        .unwrap();
    node.transact(vec![Statement::new(
        "INSERT INTO app_regions VALUES ('web', 'ams', 39)",
    )])
    .await
    .unwrap();

    let Digest::Tables(dbs) = node.digest(DigestRequest::default()).await.unwrap() else {
        panic!("a digest of every bucket was asked for");
    };
    let names: Vec<(DbKind, Vec<&str>)> = dbs
        .iter()
        .map(|(db, t)| (*db, t.iter().map(|d| d.table.as_str()).collect()))
        .collect();
    assert_eq!(
        names,
        vec![
            (DbKind::Regional, vec!["machines"]),
            (DbKind::Global, vec!["app_regions", "patina_regions"]),
        ]
    );
    let machines = &dbs[0].1[0];
    assert_eq!(machines.rows, 39, "m7's tombstone is no row");

    // One bucket's keys hash to that bucket's sum.
    let bucket = (0..DIGEST_BUCKETS)
        .find(|&b| machines.buckets[b] != 0)
        .unwrap();
    let request = DigestRequest {
        table: Some("machines".into()),
        bucket: Some(bucket),
    };
    let Digest::Bucket { dbs, .. } = node.digest(request).await.unwrap() else {
        panic!("a bucket was asked for");
    };
    assert!(dbs[1].1.is_empty(), "global.db has no table machines");
    let listed = &dbs[0].1[0];
    assert_eq!(listed.table, "machines");
    let sum = listed.keys.iter().fold(0u64, |s, k| s.wrapping_add(k.hash));
    assert_eq!(sum, machines.buckets[bucket]);

    let unknown = DigestRequest {
        table: Some("nope".into()),
        bucket: None,
    };
    assert!(matches!(
        node.digest(unknown).await,
        Err(DigestError::UnknownTable(t)) if t == "nope"
    ));
    let beyond = DigestRequest {
        table: None,
        bucket: Some(DIGEST_BUCKETS),
    };
    let e = node.digest(beyond).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "bucket 256 does not exist: buckets are numbered 0 to 255"
    );
}

/// What a digest of a large table costs through the node, and what writes
/// wait meanwhile (reported in docs/api.md):
/// `PATINA_DIGEST_ROWS=1000000 cargo test --release -p patina-node --test
/// node -- --ignored --nocapture digest_cost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand in release mode"]
async fn digest_cost() {
    use patina_node::{Digest, DigestRequest};
    let rows: i64 = std::env::var("PATINA_DIGEST_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path())).unwrap();
    let batch = 50_000;
    for start in (0..rows).step_by(batch as usize) {
        node.transact(vec![Statement::with_params(
            "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?2)
             INSERT INTO machines SELECT printf('m%08d', i), 'app' || (i % 100), 'started' FROM n",
            vec![
                Value::Integer(start),
                Value::Integer((start + batch).min(rows)),
            ],
        )])
        .await
        .unwrap();
    }
    let started = std::time::Instant::now();
    let digesting = tokio::spawn({
        let node = node.clone();
        async move { node.digest(DigestRequest::default()).await }
    });
    let mut slowest = Duration::ZERO;
    let mut writes = 0;
    while !digesting.is_finished() {
        let t = std::time::Instant::now();
        node.transact(vec![Statement::with_params(
            "INSERT INTO machines VALUES (?, 'web', 'created')",
            vec![text(&format!("w{writes}"))],
        )])
        .await
        .unwrap();
        slowest = slowest.max(t.elapsed());
        writes += 1;
    }
    let took = started.elapsed();
    let Digest::Tables(dbs) = digesting.await.unwrap().unwrap() else {
        panic!("tables were asked for");
    };
    let machines = &dbs[0].1[0];
    assert!(machines.rows >= rows as u64);
    // The same writes with no digest running, for comparison.
    let mut alone = Duration::ZERO;
    for i in 0..writes {
        let t = std::time::Instant::now();
        node.transact(vec![Statement::with_params(
            "INSERT INTO machines VALUES (?, 'web', 'created')",
            vec![text(&format!("x{i}"))],
        )])
        .await
        .unwrap();
        alone = alone.max(t.elapsed());
    }
    println!(
        "{rows} rows: digest {took:?}; {writes} writes committed meanwhile, the slowest in \
         {slowest:?} ({alone:?} without a digest)"
    );
}

#[tokio::test]
async fn a_returning_or_stale_database_refuses_writes_and_the_other_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path())).unwrap();
    let insert = || vec![Statement::new("INSERT INTO machines(id) VALUES ('m1')")];
    node.mark_returning(DbKind::Regional, "back after a week".into());
    assert!(node.collection(DbKind::Regional).returning.is_some());
    match node.transact(insert()).await {
        Err(e @ TxError::Returning { .. }) => {
            assert!(e.to_string().contains("back after a week"), "{e}")
        }
        other => panic!("a returning node took a write: {other:?}"),
    }
    // global.db is not collected: it takes writes.
    node.transact(vec![Statement::new(
        "INSERT INTO app_regions VALUES ('web', 'ams', 1)",
    )])
    .await
    .unwrap();
    node.mark_returned(DbKind::Regional);
    node.transact(insert()).await.unwrap();

    // A peer last answered 10 s ago, a silence of 60 s allowed: writes go.
    // 61 s ago: the node was out of touch (frozen, or cut off), so its
    // next write finds it returning.
    let now = patina_node::unix_ms();
    node.note_contact(DbKind::Regional, now - 10_000, 60_000);
    node.transact(vec![Statement::new(
        "INSERT INTO machines(id) VALUES ('m2')",
    )])
    .await
    .unwrap();
    node.note_contact(DbKind::Regional, now - 61_000, 60_000);
    match node.transact(insert()).await {
        Err(e @ TxError::Returning { .. }) => {
            assert!(e.to_string().contains("no peer has answered"), "{e}")
        }
        other => panic!("a node out of touch took a write: {other:?}"),
    }
    assert!(node.collection(DbKind::Regional).returning.is_some());
    // It stays returning after a peer answers, until its return is checked.
    node.note_contact(DbKind::Regional, now, 60_000);
    assert!(matches!(
        node.transact(insert()).await,
        Err(TxError::Returning { .. })
    ));
    node.mark_returned(DbKind::Regional);
    node.transact(vec![Statement::new(
        "INSERT INTO machines(id) VALUES ('m3')",
    )])
    .await
    .unwrap();

    // The last answer is kept with the checkpoints: a node cut off and
    // then restarted is still out of touch when it opens.
    node.note_contact(DbKind::Regional, now - 61_000, 60_000);
    node.collect_tombstones(
        DbKind::Regional,
        patina_node::CollectRequest {
            now_ms: patina_node::unix_ms(),
            retention_ms: 120_000,
            checkpoint_every_ms: 1,
            watermark: Default::default(),
            keys_max: 100,
        },
    )
    .await
    .unwrap();
    drop(node);
    let node = Node::open(options(dir.path())).unwrap();
    assert_eq!(
        node.collection(DbKind::Regional).last_contact,
        Some((now - 61_000, 60_000))
    );
    assert!(matches!(
        node.transact(insert()).await,
        Err(TxError::Returning { .. })
    ));
    node.mark_returned(DbKind::Regional);
    node.note_contact(DbKind::Regional, patina_node::unix_ms(), 60_000);

    // Stale is durable: a restart keeps refusing.
    node.mark_stale(DbKind::Regional, "re-seed it".into())
        .await
        .unwrap();
    assert!(matches!(
        node.transact(insert()).await,
        Err(TxError::Stale { .. })
    ));
    drop(node);
    let node = Node::open(options(dir.path())).unwrap();
    assert!(matches!(
        node.transact(insert()).await,
        Err(TxError::Stale { .. })
    ));
    assert!(node.collection(DbKind::Regional).returning.is_none());
}
