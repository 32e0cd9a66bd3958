//! Consistency digests (`patina_crr::digest`): replicas that reached the
//! same rows by different paths digest alike; any difference in what
//! converges (value, versions, writer, causal length, the row itself)
//! shows in the bucket of that key, and only there. Tombstones, which
//! replicas collect at different moments, are left out.

// This file uses part of the shared helpers.
#[allow(dead_code)]
mod common;

use common::{t_pk, Site, IDS};
use patina_crr::digest::{
    bucket_keys, bucket_of, crr_tables, table_digest, KeyState, TableDigest, DIGEST_BUCKETS,
};
use patina_crr::{CrrConn, SiteId, Value};
use rusqlite::functions::FunctionFlags;

fn digest(conn: &CrrConn, table: &str) -> TableDigest {
    table_digest(conn.connection(), "main", table).unwrap()
}

fn digests(site: &Site) -> Vec<TableDigest> {
    crr_tables(site.conn.connection(), "main")
        .unwrap()
        .iter()
        .map(|t| digest(&site.conn, t))
        .collect()
}

/// The buckets in which two digests differ.
fn differing(a: &TableDigest, b: &TableDigest) -> Vec<usize> {
    (0..DIGEST_BUCKETS)
        .filter(|&i| a.buckets[i] != b.buckets[i])
        .collect()
}

fn keys(conn: &CrrConn, table: &str, bucket: usize) -> Vec<KeyState> {
    bucket_keys(conn.connection(), "main", table, bucket).unwrap()
}

#[test]
fn replicas_that_converged_by_different_paths_digest_alike() {
    // Concurrent writes of every kind, then full exchanges in each order
    // the common harness knows: every order converges to one digest.
    let runs = common::run(|s| {
        s[0].exec("UPDATE t SET a = 'p'; INSERT INTO t VALUES (2,'m',5,NULL)");
        s[1].exec("UPDATE t SET a = 'q'");
        s[1].exec("INSERT INTO t VALUES (2,'n',3,NULL)");
        s[2].exec("DELETE FROM t WHERE id = 1");
        s[2].exec("INSERT INTO t VALUES (1,'r',3,X'00')");
        s[0].exec("INSERT INTO p VALUES ('k')");
        s[1].exec("INSERT INTO p VALUES ('k')");
        s[2].exec("INSERT INTO t VALUES (3,'gone',1,1); DELETE FROM t WHERE id = 3");
    });
    let expected = digests(&runs[0][0]);
    assert_eq!(expected.len(), 2);
    assert_eq!(expected[1].table, "t");
    assert_eq!(expected[1].rows, 2);
    for (order, sites) in runs.iter().enumerate() {
        for site in sites {
            assert_eq!(
                digests(site),
                expected,
                "{} in exchange order {order}",
                site.name
            );
        }
    }
}

#[test]
fn sentinel_clocks_do_not_count() {
    // Concurrent inserts into a pk-only table, and concurrent delete +
    // re-insert, leave each replica its own sentinel clock (crr-model.md
    // 7.2): the digests still agree.
    let runs = common::run(|s| {
        s[0].exec("INSERT INTO p VALUES ('k')");
        s[2].exec("INSERT INTO p VALUES ('k')");
        s[0].exec("DELETE FROM t WHERE id = 1; INSERT INTO t VALUES (1,'p',1,NULL)");
        s[1].exec("DELETE FROM t WHERE id = 1; INSERT INTO t VALUES (1,'q',0,NULL)");
    });
    for sites in &runs {
        let sentinel = |s: &Site| {
            s.changes()
                .into_iter()
                .filter(|c| c.is_sentinel() && c.table == "p")
                .map(|c| c.site_id)
                .collect::<Vec<_>>()
        };
        assert_ne!(
            sentinel(&sites[0]),
            sentinel(&sites[2]),
            "the test needs sentinels that differ"
        );
        assert_eq!(digests(&sites[0]), digests(&sites[1]));
        assert_eq!(digests(&sites[0]), digests(&sites[2]));
    }
}

#[test]
fn the_writing_site_counts_by_id_not_by_ordinal() {
    // The same value at the same col_version, db_version and seq, written
    // by two sites: only the site differs. Each site is ordinal 0 at home
    // and ordinal 1 on the other, so converging proves ids are hashed.
    let mut s0 = Site::new(0);
    let mut s1 = Site::new(1);
    s0.exec("INSERT INTO t VALUES (7,'same',1,NULL)");
    s1.exec("INSERT INTO t VALUES (7,'same',1,NULL)");
    let (d0, d1) = (digest(&s0.conn, "t"), digest(&s1.conn, "t"));
    assert_eq!(differing(&d0, &d1), vec![bucket_of(&t_pk(7))]);
    s0.pull_from(&s1);
    s1.pull_from(&s0);
    assert_eq!(digest(&s0.conn, "t"), digest(&s1.conn, "t"));
    let listed = keys(&s0.conn, "t", bucket_of(&t_pk(7)));
    let row = listed.iter().find(|k| k.pk == t_pk(7)).unwrap();
    // Ties go to the larger site id (crr-model.md 7, step 5d).
    assert!(row
        .columns
        .iter()
        .all(|c| c.clock.is_some_and(|clock| clock.site_id == IDS[1])));
}

#[test]
fn a_differing_version_or_causal_length_changes_the_key_s_bucket() {
    let mut ahead = Site::new(0);
    let mut behind = Site::new(1);
    ahead.exec("INSERT INTO t VALUES (1,'x',1,NULL); INSERT INTO t VALUES (2,'x',1,NULL)");
    behind.pull_from(&ahead);
    assert_eq!(digest(&ahead.conn, "t"), digest(&behind.conn, "t"));
    // Row 1: the same value again, at a higher col_version.
    ahead.exec("UPDATE t SET a = 'y' WHERE id = 1");
    ahead.exec("UPDATE t SET a = 'x' WHERE id = 1");
    // Row 2: the same values under a higher causal length.
    ahead.exec("DELETE FROM t WHERE id = 2; INSERT INTO t VALUES (2,'x',1,NULL)");
    let (a, b) = (digest(&ahead.conn, "t"), digest(&behind.conn, "t"));
    assert_eq!(ahead.t(), behind.t(), "the values alone agree");
    let mut expected = vec![bucket_of(&t_pk(1)), bucket_of(&t_pk(2))];
    expected.sort_unstable();
    expected.dedup();
    assert_eq!(differing(&a, &b), expected);
    assert_eq!((a.rows, b.rows), (2, 2));
    let row = |conn: &CrrConn, id: i64| {
        keys(conn, "t", bucket_of(&t_pk(id)))
            .into_iter()
            .find(|k| k.pk == t_pk(id))
            .unwrap()
    };
    assert_eq!(row(&ahead.conn, 2).cl, 3);
    assert_eq!(row(&behind.conn, 2).cl, 1);
    assert_ne!(row(&ahead.conn, 1).hash, row(&behind.conn, 1).hash);
    behind.pull_from(&ahead);
    assert_eq!(digest(&ahead.conn, "t"), digest(&behind.conn, "t"));
}

#[test]
fn tombstones_are_left_out_a_missed_delete_is_not() {
    // `holder` inserted and deleted key 2: it holds its tombstone.
    // `stranger` never heard of key 2. `missed` got the insert, not the
    // delete. Collecting tombstones at different moments leaves replicas
    // like the first two, which agree; the third holds another row.
    let mut holder = Site::new(0);
    let mut stranger = Site::new(1);
    let mut missed = Site::new(2);
    holder.exec("INSERT INTO t VALUES (1,'x',1,NULL)");
    stranger.pull_from(&holder);
    holder.exec("INSERT INTO t VALUES (2,'y',2,NULL)");
    missed.pull_from(&holder);
    holder.exec("DELETE FROM t WHERE id = 2");
    let gone = bucket_of(&t_pk(2));
    let tombstone = holder.sentinel("t", &t_pk(2)).map(|c| c.cl);
    assert_eq!(tombstone, Some(2), "the test needs a tombstone");
    assert_eq!(holder.t(), stranger.t());

    let (h, s, m) = (
        digest(&holder.conn, "t"),
        digest(&stranger.conn, "t"),
        digest(&missed.conn, "t"),
    );
    assert_eq!(h, s, "a tombstone is neither hashed nor counted");
    assert_eq!(h.rows, 1);
    assert_eq!(m.rows, 2);
    assert_eq!(differing(&h, &m), vec![gone]);
    assert!(keys(&holder.conn, "t", gone)
        .iter()
        .all(|k| k.pk != t_pk(2)));
    assert_eq!(
        keys(&holder.conn, "t", gone),
        keys(&stranger.conn, "t", gone)
    );
    let alive = keys(&missed.conn, "t", gone);
    let two = alive.iter().find(|k| k.pk == t_pk(2)).unwrap();
    assert_eq!((two.cl, two.in_table), (1, true));

    // The digest's JSON form is built from these: byte-identical means
    // equal fields, bucket by bucket and key by key.
    for bucket in 0..DIGEST_BUCKETS {
        assert_eq!(
            keys(&holder.conn, "t", bucket),
            keys(&stranger.conn, "t", bucket),
            "bucket {bucket}"
        );
    }

    // Once the delete reaches it, the replica that missed it agrees too,
    // and still does after collecting that tombstone.
    missed.pull_from(&holder);
    assert_eq!(digest(&missed.conn, "t"), h);
    let bounds = [(IDS[0], holder.conn.db_version())].into_iter().collect();
    let done = missed.conn.collect_tombstones(&bounds, u64::MAX).unwrap();
    assert_eq!(done.rows, 1);
    assert_eq!(missed.sentinel("t", &t_pk(2)), None);
    assert_eq!(digest(&missed.conn, "t"), h);
}

#[test]
fn bucket_listing_hashes_add_up_to_the_bucket() {
    let mut site = Site::new(0);
    for i in 0..300 {
        site.exec(&format!("INSERT INTO t VALUES ({i}, 'v{i}', {i}, NULL)"));
    }
    site.exec("DELETE FROM t WHERE id < 20");
    let d = digest(&site.conn, "t");
    assert_eq!(d.rows, 280);
    let mut listed = 0;
    for bucket in 0..DIGEST_BUCKETS {
        let keys = keys(&site.conn, "t", bucket);
        listed += keys.len();
        let sum = keys.iter().fold(0u64, |s, k| s.wrapping_add(k.hash));
        assert_eq!(sum, d.buckets[bucket], "bucket {bucket}");
        assert!(keys.windows(2).all(|w| w[0].pk < w[1].pk), "ordered by pk");
    }
    assert_eq!(listed, 280, "the 20 tombstones are not listed");
}

/// A database file and a plain connection to it that writes around
/// capture: what an operator's sqlite3 shell with a stub `crr_capture`
/// (or a bug) would do. The version bookkeeping sees none of it.
struct SideDoor {
    _dir: tempfile::TempDir,
    conn: CrrConn,
    plain: rusqlite::Connection,
}

impl SideDoor {
    fn new(site: SiteId) -> SideDoor {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut conn = CrrConn::open_with_site_id(&path, Some(site)).unwrap();
        conn.apply_schema(common::SCHEMA).unwrap();
        let plain = rusqlite::Connection::open(&path).unwrap();
        plain
            .create_scalar_function("crr_capture", -1, FunctionFlags::SQLITE_UTF8, |_| {
                Ok(rusqlite::types::Null)
            })
            .unwrap();
        SideDoor {
            _dir: dir,
            conn,
            plain,
        }
    }

    fn exec(&mut self, sql: &str) {
        let mut tx = self.conn.transaction().unwrap();
        tx.execute_batch(sql).unwrap();
        tx.commit().unwrap();
    }
}

#[test]
fn writes_around_capture_show_in_the_digest() {
    let mut healthy = SideDoor::new(IDS[0]);
    let mut broken = SideDoor::new(IDS[1]);
    healthy.exec("INSERT INTO t VALUES (1,'x',1,NULL); INSERT INTO t VALUES (2,'y',2,NULL); INSERT INTO t VALUES (3,'z',3,NULL)");
    let changes = healthy.conn.changes_since(0, None).unwrap();
    broken.conn.apply_changes(&changes).unwrap();
    let before = digest(&healthy.conn, "t");
    assert_eq!(digest(&broken.conn, "t"), before);
    let versions = broken.conn.site_versions();

    // A value changed, a row deleted, a row inserted: none through capture.
    broken
        .plain
        .execute_batch(
            "UPDATE t SET a = 'tampered' WHERE id = 1;
             DELETE FROM t WHERE id = 2;
             INSERT INTO t VALUES (4,'new',4,NULL);",
        )
        .unwrap();
    assert_eq!(
        broken.conn.site_versions(),
        versions,
        "bookkeeping saw nothing"
    );
    assert_eq!(broken.conn.db_version(), 0);

    let after = digest(&broken.conn, "t");
    let mut expected: Vec<usize> = [1, 2, 4].iter().map(|&i| bucket_of(&t_pk(i))).collect();
    expected.sort_unstable();
    expected.dedup();
    assert_eq!(differing(&before, &after), expected);
    assert_eq!(after.rows, 3, "rows 1, 3 and 4; row 2's clock says alive");

    let state = |id: i64| {
        keys(&broken.conn, "t", bucket_of(&t_pk(id)))
            .into_iter()
            .find(|k| k.pk == t_pk(id))
            .unwrap()
    };
    let tampered = state(1);
    assert!(tampered.in_table);
    let a = tampered.columns.iter().find(|c| c.name == "a").unwrap();
    assert_eq!(a.value, Some(Value::Text("tampered".into())));
    let missing = state(2);
    assert_eq!((missing.cl, missing.in_table), (1, false));
    assert!(missing.columns.iter().all(|c| c.value.is_none()));
    let unclocked = state(4);
    assert_eq!((unclocked.cl, unclocked.in_table), (0, true));
    assert!(unclocked.columns.iter().all(|c| c.clock.is_none()));
    assert_eq!(
        unclocked.columns.len(),
        3,
        "every column of a row without clock"
    );
}

#[test]
fn a_row_under_a_deleted_key_is_listed_once() {
    let mut door = SideDoor::new(IDS[0]);
    door.exec("INSERT INTO t VALUES (5,'x',1,NULL)");
    door.exec("DELETE FROM t WHERE id = 5");
    let clean = digest(&door.conn, "t");
    door.plain
        .execute_batch("INSERT INTO t VALUES (5,'back',1,NULL)")
        .unwrap();
    let d = digest(&door.conn, "t");
    assert_eq!(d.rows, 1);
    assert_eq!(differing(&clean, &d), vec![bucket_of(&t_pk(5))]);
    let listed = keys(&door.conn, "t", bucket_of(&t_pk(5)));
    let fives: Vec<_> = listed.iter().filter(|k| k.pk == t_pk(5)).collect();
    assert_eq!(fives.len(), 1);
    assert_eq!((fives[0].cl, fives[0].in_table), (2, true));
}

#[test]
fn the_encoding_is_pinned() {
    // These hashes are part of DIGEST_FORMAT: nodes of different releases
    // compare them. A change here must change the format's name too.
    let mut site = Site::new(0);
    site.exec("INSERT INTO t VALUES (1,'x',1,NULL); INSERT INTO t VALUES (-2,X'00ff',2.5,'é')");
    site.exec("DELETE FROM t WHERE id = 1");
    site.exec("INSERT INTO p VALUES ('k')");
    let t = digest(&site.conn, "t");
    let p = digest(&site.conn, "p");
    let nonzero = |d: &TableDigest| {
        d.buckets
            .iter()
            .enumerate()
            .filter(|(_, h)| **h != 0)
            .map(|(i, h)| format!("{i}:{h:016x}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        patina_crr::digest::DIGEST_FORMAT,
        "patina-digest-2/siphash-2-4/256"
    );
    // Row -2's hash is that of patina-digest-1; row 1's tombstone (bucket
    // 67 there) is no longer hashed.
    assert_eq!(nonzero(&t), ["2:1fbd3165b00ba047"]);
    assert_eq!(nonzero(&p), ["47:e644b49bbe269db1"]);
    assert_eq!(format!("{:016x}", t.hash()), "3451aad60001b361");
}

#[test]
fn unknown_tables_are_refused() {
    let site = Site::new(0);
    let e = table_digest(site.conn.connection(), "main", "nope").unwrap_err();
    assert!(e.to_string().contains("\"nope\" is not a CRR table"), "{e}");
}

/// How long a digest of a large table takes (reported in docs/api.md):
/// `PATINA_DIGEST_ROWS=1000000 cargo test --release -p patina-crr --test
/// digest -- --ignored --nocapture digest_time`.
#[test]
#[ignore = "a measurement: run by hand in release mode"]
fn digest_time() {
    let rows: i64 = std::env::var("PATINA_DIGEST_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let mut conn = CrrConn::open_with_site_id(dir.path().join("db"), Some(IDS[0])).unwrap();
    conn.apply_schema(
        "CREATE TABLE machines(id TEXT PRIMARY KEY NOT NULL, app TEXT, state TEXT, cpus INTEGER, mem REAL);",
    )
    .unwrap();
    let batch = 50_000;
    for start in (0..rows).step_by(batch as usize) {
        let mut tx = conn.transaction().unwrap();
        tx.execute(
            "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?2)
             INSERT INTO machines SELECT printf('m%08d', i), 'app' || (i % 100), 'started', i % 64, i * 0.5 FROM n",
            [start, (start + batch).min(rows)],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let mut tx = conn.transaction().unwrap();
    tx.execute("DELETE FROM machines WHERE id LIKE '%7'", [])
        .unwrap();
    tx.commit().unwrap();
    let reader = rusqlite::Connection::open(dir.path().join("db")).unwrap();
    let started = std::time::Instant::now();
    let d = table_digest(&reader, "main", "machines").unwrap();
    let full = started.elapsed();
    let started = std::time::Instant::now();
    let listed = bucket_keys(&reader, "main", "machines", 17).unwrap();
    let one_bucket = started.elapsed();
    let deleted = (rows + 2) / 10;
    assert_eq!(d.rows, (rows - deleted) as u64);
    println!(
        "{rows} keys ({} rows, {deleted} tombstones): digest {full:?}, bucket 17 ({} keys) {one_bucket:?}",
        d.rows,
        listed.len()
    );
}
