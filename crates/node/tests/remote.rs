//! Remote changes through the node's API, without a network: what one node
//! serves, another applies. Incomplete transactions stay buffered (also
//! across a restart) and apply whole; changes for a schema a node lacks are
//! held until it arrives (the rest of their version applies at once) and
//! are still relayed; changes local constraints refuse are held likewise; relays serve other
//! actors' versions; duplicates cost nothing.

use std::path::Path;
use std::sync::Arc;

use patina_node::{DbKind, Drops, Node, NodeOptions, Statement};
use patina_testkit::rows;
use patina_wire::{ChangeChunk, Need, Span, Summary};

const SCHEMA: &str =
    "CREATE TABLE machines(id INTEGER PRIMARY KEY NOT NULL, app TEXT, state TEXT);";
const SCHEMA_V2: &str =
    "CREATE TABLE machines(id INTEGER PRIMARY KEY NOT NULL, app TEXT, state TEXT, region TEXT);";

fn options(dir: &Path, schema: &str) -> NodeOptions {
    patina_testkit::node_options(dir, schema, "")
}

async fn exec(node: &Node, sql: &str) -> u64 {
    node.transact(vec![Statement::new(sql)])
        .await
        .unwrap()
        .version
        .expect("a replicated change")
}

fn summary(node: &Node) -> Summary {
    node.bookkeeping(DbKind::Regional).borrow().summary(4096)
}

/// Everything `from` serves of what `to` lacks, as chunks.
async fn served(from: &Node, to: &Node) -> Vec<ChangeChunk> {
    served_of(from, to, summary(from)).await
}

/// What `from` serves of what `to` lacks of the versions in `offered`.
async fn served_of(from: &Node, to: &Node, offered: Summary) -> Vec<ChangeChunk> {
    let needs = to
        .bookkeeping(DbKind::Regional)
        .borrow()
        .needs(&offered, 10_000);
    let mut chunks = Vec::new();
    for need in needs {
        let mut left = vec![need];
        while let Some(n) = left.pop() {
            let (c, rest) = from.serve(DbKind::Regional, n).await.unwrap();
            chunks.extend(c);
            left.extend(rest.into_iter().rev());
        }
    }
    chunks
}

async fn apply(node: &Node, chunks: Vec<ChangeChunk>) -> patina_node::RemoteOutcome {
    node.apply_remote(DbKind::Regional, chunks.into_iter().map(Arc::new).collect())
        .await
        .unwrap()
}

const ALL: &str = "SELECT id, app, state FROM machines ORDER BY id";

#[tokio::test]
async fn served_versions_apply_once_and_converge() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::open(options(da.path(), SCHEMA)).unwrap();
    let b = Node::open(options(db.path(), SCHEMA)).unwrap();
    exec(
        &a,
        "INSERT INTO machines VALUES (1, 'web', 'started'), (2, 'db', 'created')",
    )
    .await;
    exec(&a, "UPDATE machines SET state = 'stopped' WHERE id = 2").await;
    let v3 = exec(&a, "DELETE FROM machines WHERE id = 1").await;
    exec(&b, "INSERT INTO machines VALUES (3, 'api', 'started')").await;

    let chunks = served(&a, &b).await;
    assert_eq!(chunks.len(), 3, "one chunk per version");
    let outcome = apply(&b, chunks.clone()).await;
    assert_eq!((outcome.versions_applied, outcome.duplicates), (3, 0));
    assert!(b.has_applied(DbKind::Regional, a.actor_id(), v3));
    let again = apply(&b, chunks).await;
    assert_eq!((again.versions_applied, again.duplicates), (0, 3));
    assert!(served(&a, &b).await.is_empty(), "nothing left to pull");

    apply(&a, served(&b, &a).await).await;
    assert_eq!(rows(&a, ALL).await, rows(&b, ALL).await);
    assert_eq!(rows(&a, ALL).await.len(), 2);
}

#[tokio::test]
async fn a_chunked_transaction_applies_whole_also_across_a_restart() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::open(options(da.path(), SCHEMA)).unwrap();
    let v = exec(
        &a,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
         INSERT INTO machines SELECT i, 'app-' || (i % 7), printf('%.60d', i) FROM n",
    )
    .await;
    let chunks = {
        let b = Node::open(options(db.path(), SCHEMA)).unwrap();
        served(&a, &b).await
    };
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    let (first, rest) = chunks.split_at(chunks.len() / 2);
    {
        let b = Node::open(options(db.path(), SCHEMA)).unwrap();
        // Last chunks first: order does not matter.
        let mut reversed = first.to_vec();
        reversed.reverse();
        let outcome = apply(&b, reversed).await;
        assert_eq!(outcome.versions_applied, 0);
        assert!(
            rows(&b, ALL).await.is_empty(),
            "nothing visible before the transaction is whole"
        );
        let s = summary(&b);
        assert_eq!(s.actors.iter().map(|a| a.partial.len()).sum::<usize>(), 1);
    }
    // Restarted: the buffered half is still there; only the rest is asked for.
    let b = Node::open(options(db.path(), SCHEMA)).unwrap();
    let needs = b
        .bookkeeping(DbKind::Regional)
        .borrow()
        .needs(&summary(&a), 10_000);
    assert!(
        matches!(needs.as_slice(), [Need::Seqs { version, .. }] if *version == v),
        "{needs:?}"
    );
    let outcome = apply(&b, rest.to_vec()).await;
    assert_eq!(outcome.versions_applied, 1);
    assert!(b.has_applied(DbKind::Regional, a.actor_id(), v));
    assert_eq!(rows(&b, ALL).await, rows(&a, ALL).await);
    assert_eq!(rows(&b, ALL).await.len(), 3000);
}

#[tokio::test]
async fn changes_for_a_schema_not_here_yet_are_held_relayed_and_applied_after_reload() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Node::open(options(dirs[0].path(), SCHEMA_V2)).unwrap();
    let b = Node::open(options(dirs[1].path(), SCHEMA)).unwrap();
    let c = Node::open(options(dirs[2].path(), SCHEMA_V2)).unwrap();
    let v = exec(
        &a,
        "INSERT INTO machines VALUES (1, 'web', 'started', 'ams')",
    )
    .await;
    // A row that leaves the new column NULL names it too.
    let v2 = exec(&a, "INSERT INTO machines (id, app) VALUES (2, 'db')").await;

    let outcome = apply(&b, served(&a, &b).await).await;
    assert_eq!((outcome.versions_parked, outcome.versions_applied), (2, 2));
    assert_eq!(
        rows(&b, ALL).await,
        rows(&a, ALL).await,
        "what b's schema has applies at once"
    );
    let held = b.held_versions(DbKind::Regional).borrow().clone();
    assert_eq!((held.waiting(), held.refused()), (2, 0));
    assert!(held.contains(a.actor_id(), v) && held.contains(a.actor_id(), v2));
    let instant = std::time::Duration::ZERO;
    assert!(
        !b.wait_applied(DbKind::Regional, a.actor_id(), v, instant)
            .await,
        "after= waits for the whole version"
    );
    assert!(
        served(&a, &b).await.is_empty(),
        "a held version is not asked for again"
    );

    // b relays what it holds to c, which has the new column.
    let outcome = apply(&c, served(&b, &c).await).await;
    assert_eq!(outcome.versions_applied, 2);
    let with_region = "SELECT id, region FROM machines";
    assert_eq!(rows(&c, with_region).await, rows(&a, with_region).await);

    std::fs::write(dirs[1].path().join("schema/regional.sql"), SCHEMA_V2).unwrap();
    b.reload_schema().await.unwrap();
    assert_eq!(rows(&b, with_region).await, rows(&a, with_region).await);
    assert_eq!(
        *b.held_versions(DbKind::Regional).borrow(),
        Default::default()
    );
    assert!(
        b.wait_applied(DbKind::Regional, a.actor_id(), v, instant)
            .await
    );
}

#[tokio::test]
async fn rows_local_constraints_refuse_are_held_and_the_rest_applies() {
    // b's schema has a CHECK a's lacks (schemas drifted): a's 'bad' row
    // cannot be merged on b, every other row and version can.
    let strict = "CREATE TABLE machines(id INTEGER PRIMARY KEY NOT NULL, app TEXT, \
                  state TEXT CHECK (state IS NOT 'bad'));";
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Node::open(options(dirs[0].path(), SCHEMA)).unwrap();
    let b = Node::open(options(dirs[1].path(), strict)).unwrap();
    let c = Node::open(options(dirs[2].path(), SCHEMA)).unwrap();
    let v1 = exec(
        &a,
        "INSERT INTO machines VALUES (1, 'web', 'started'), (2, 'web', 'bad'), (3, 'db', 'started')",
    )
    .await;
    let v2 = exec(&a, "INSERT INTO machines VALUES (4, 'db', 'stopped')").await;

    let outcome = apply(&b, served(&a, &b).await).await;
    assert_eq!(
        (
            outcome.versions_applied,
            outcome.versions_refused,
            outcome.failed
        ),
        (2, 1, 0)
    );
    let ids = "SELECT id FROM machines ORDER BY id";
    assert_eq!(rows(&b, ids).await.len(), 3, "{:?}", rows(&b, ids).await);
    let held = b.held_versions(DbKind::Regional).borrow().clone();
    assert_eq!((held.waiting(), held.refused()), (0, 1));
    assert!(held.contains(a.actor_id(), v1) && !held.contains(a.actor_id(), v2));
    assert!(
        served(&a, &b).await.is_empty(),
        "a refused version is not fetched again and again"
    );
    // b relays the refused row too: c, without the CHECK, holds all of a's.
    apply(&c, served(&b, &c).await).await;
    assert_eq!(rows(&c, ALL).await, rows(&a, ALL).await);

    // Held across a restart.
    drop(b);
    let b = Node::open(options(dirs[1].path(), strict)).unwrap();
    assert_eq!(b.held_versions(DbKind::Regional).borrow().refused(), 1);
}

#[tokio::test]
async fn a_relay_serves_other_actors_versions_and_a_bad_chunk_costs_only_itself() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Node::open(options(dirs[0].path(), SCHEMA)).unwrap();
    let b = Node::open(options(dirs[1].path(), SCHEMA)).unwrap();
    let c = Node::open(options(dirs[2].path(), SCHEMA)).unwrap();
    exec(&a, "INSERT INTO machines VALUES (1, 'web', 'started')").await;
    exec(&a, "INSERT INTO machines VALUES (2, 'web', 'started')").await;
    apply(&b, served(&a, &b).await).await;

    let mut chunks = served(&b, &c).await;
    assert_eq!(chunks.len(), 2);
    // Corrupt the second version's pk: it is refused, the first applies.
    chunks[1].changes[0].pk = vec![0xff];
    let outcome = apply(&c, chunks).await;
    assert_eq!((outcome.versions_applied, outcome.failed), (1, 1));
    assert!(c.has_applied(DbKind::Regional, a.actor_id(), 1));
    assert!(!c.has_applied(DbKind::Regional, a.actor_id(), 2));
    // The refused version is asked for again and applies.
    apply(&c, served(&b, &c).await).await;
    assert_eq!(rows(&c, ALL).await, rows(&a, ALL).await);
    assert_eq!(
        summary(&c)
            .actors
            .iter()
            .find(|s| s.actor == a.actor_id())
            .map(|s| s.db),
        Some(DbKind::Regional)
    );
}

mod relaying {
    //! Convergence when versions travel through relays at random moments:
    //! a relay serves what it holds *now* (entries replaced by later writes
    //! are gone from the old version), so this checks that the union of
    //! what arrives, in any order, still converges.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Write {
            node: usize,
            kind: u8,
            id: u8,
            n: u8,
        },
        Sync {
            from: usize,
            to: usize,
            first_only: bool,
        },
    }

    const NODES: usize = 4;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..NODES, 0u8..5, 0u8..4, any::<u8>()).prop_map(|(node, kind, id, n)| Op::Write { node, kind, id, n }),
            2 => (0..NODES, 0..NODES, any::<bool>()).prop_map(|(from, to, first_only)| Op::Sync { from, to, first_only }),
        ]
    }

    fn sql(kind: u8, id: u8, n: u8, node: usize) -> String {
        match kind {
            0 => format!("INSERT INTO machines VALUES ({id}, 'a{n}', 's{node}') ON CONFLICT(id) DO UPDATE SET app = excluded.app"),
            1 => format!("UPDATE machines SET state = 'u{n}' WHERE id = {id}"),
            2 => format!("DELETE FROM machines WHERE id = {id}"),
            3 => format!("INSERT OR REPLACE INTO machines VALUES ({id}, 'r{n}', NULL)"),
            _ => format!("INSERT INTO machines(id, state) VALUES ({id}, 'p{n}') ON CONFLICT(id) DO UPDATE SET state = excluded.state"),
        }
    }

    async fn sync(from: &Node, to: &Node, first_only: bool) -> usize {
        let mut chunks = served(from, to).await;
        if first_only {
            chunks.truncate(1);
        }
        let n = chunks.len();
        apply(to, chunks).await;
        n
    }

    /// Pulls into `reference` the versions `writer` wrote itself and the
    /// reference lacks: straight from their writer, whole, as written.
    async fn record(writer: &Node, reference: &Node) {
        let mut own = summary(writer);
        own.actors.retain(|a| a.actor == writer.actor_id());
        apply(reference, served_of(writer, reference, own).await).await;
    }

    async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let dirs: Vec<_> = (0..NODES).map(|_| tempfile::tempdir().unwrap()).collect();
        let nodes: Vec<Node> = dirs
            .iter()
            .map(|d| Node::open(options(d.path(), SCHEMA)).unwrap())
            .collect();
        // The model of what was written: a replica that receives every
        // version from its writer right after the write, never through a
        // relay. Nodes agreeing with each other is not enough: a change
        // that relays lose everywhere leaves them agreeing.
        let reference_dir = tempfile::tempdir().unwrap();
        let reference = Node::open(options(reference_dir.path(), SCHEMA)).unwrap();
        for op in ops {
            match op {
                Op::Write { node, kind, id, n } => {
                    // A statement that changes nothing commits no version.
                    let _ = nodes[node]
                        .transact(vec![Statement::new(sql(kind, id, n, node))])
                        .await
                        .unwrap();
                    record(&nodes[node], &reference).await;
                }
                Op::Sync {
                    from,
                    to,
                    first_only,
                } if from != to => {
                    sync(&nodes[from], &nodes[to], first_only).await;
                }
                Op::Sync { .. } => {}
            }
        }
        // Anti-entropy to a fixpoint, every pair.
        for _round in 0..4 {
            let mut moved = 0;
            for from in 0..NODES {
                for to in 0..NODES {
                    if from != to {
                        moved += sync(&nodes[from], &nodes[to], false).await;
                    }
                }
            }
            if moved == 0 {
                break;
            }
        }
        let want = rows(&nodes[0], ALL).await;
        for (i, node) in nodes.iter().enumerate().skip(1) {
            let got = rows(node, ALL).await;
            if got != want && std::env::var("DUMP").is_ok() {
                for (j, n) in [(0, &nodes[0]), (i, node)] {
                    eprintln!("--- node {j} ({})", n.actor_id());
                    for c in all_changes(n).await {
                        eprintln!(
                            "  {:?} pk={:?} {}={:?} colv={} dbv={} site={} cl={} seq={}",
                            c.table,
                            c.pk,
                            c.cid,
                            c.val,
                            c.col_version,
                            c.db_version,
                            &c.site_id.to_hex()[..4],
                            c.cl,
                            c.seq
                        );
                    }
                }
            }
            prop_assert_eq!(&got, &want, "node {} differs from node 0", i);
        }
        let written = rows(&reference, ALL).await;
        prop_assert_eq!(&want, &written, "the nodes differ from what was written");
        Ok(())
    }

    async fn all_changes(n: &Node) -> Vec<patina_crr::Change> {
        let mut out = Vec::new();
        let s = summary(n);
        for a in s.actors {
            for span in a.applied {
                let mut left = vec![Need::Versions {
                    db: DbKind::Regional,
                    actor: a.actor,
                    versions: span,
                }];
                while let Some(need) = left.pop() {
                    let (chunks, rest) = n.serve(DbKind::Regional, need).await.unwrap();
                    for c in chunks {
                        out.extend(patina_node::chunk_changes(&c));
                    }
                    left.extend(rest.into_iter().rev());
                }
            }
        }
        out.sort_by(|a, b| (&a.pk, &a.cid).cmp(&(&b.pk, &b.cid)));
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn versions_relayed_at_random_moments_converge(ops in proptest::collection::vec(op(), 1..60)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(run(ops))?;
        }
    }
}

/// At most `PARTIAL_VERSIONS_MAX` incomplete transactions are buffered; the
/// chunk of one more is refused (counted), a chunk of a buffered one is not.
#[tokio::test]
async fn buffered_incomplete_transactions_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path(), SCHEMA)).unwrap();
    let stranger = patina_node::SiteId([0x42; 16]);
    let start = |version: u64| ChangeChunk {
        db: DbKind::Regional,
        actor: stranger,
        version,
        seqs: patina_wire::Span::new(0, 0),
        last_seq: 9,
        committed_ms: 0,
        changes: Vec::new(),
    };
    let max = patina_node::PARTIAL_VERSIONS_MAX as u64;
    let outcome = apply(&node, (1..=max).map(start).collect()).await;
    assert_eq!(
        (
            outcome.refused_partials_full,
            outcome.fresh.iter().filter(|f| **f).count()
        ),
        (0, max as usize)
    );
    let more = apply(&node, vec![start(max + 1)]).await;
    assert_eq!(more.refused_partials_full, 1);
    // The next chunk of a version already buffered is still taken.
    let next = ChangeChunk {
        seqs: patina_wire::Span::new(1, 1),
        ..start(1)
    };
    assert_eq!(apply(&node, vec![next]).await.fresh, vec![true]);
    let partials: usize = summary(&node).actors.iter().map(|a| a.partial.len()).sum();
    assert_eq!(partials, patina_node::PARTIAL_VERSIONS_MAX);
}

#[tokio::test]
async fn a_need_listing_many_overlapping_spans_is_served_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::open(options(dir.path(), SCHEMA)).unwrap();
    let inserts: Vec<Statement> = (0..500)
        .map(|i| {
            Statement::new(format!(
                "INSERT INTO machines VALUES ({i}, 'web', 'started')"
            ))
        })
        .collect();
    let v = a.transact(inserts).await.unwrap().version.unwrap();
    let bytes = |chunks: &[ChangeChunk]| -> usize {
        chunks
            .iter()
            .map(|c| patina_wire::encode_value(c).unwrap().len())
            .sum()
    };
    let need = |seqs: Vec<Span>| Need::Seqs {
        db: DbKind::Regional,
        actor: a.actor_id(),
        version: v,
        seqs,
    };
    let (once, _) = a
        .serve(DbKind::Regional, need(vec![Span::new(0, u64::MAX)]))
        .await
        .unwrap();
    // A peer asking for the whole version 100,000 times over, plus spans
    // nested in it, gets it once: not a copy per span.
    let hostile: Vec<Span> = std::iter::repeat_n(Span::new(0, u64::MAX), 100_000)
        .chain((0..1000).map(|s| Span::new(s, s + 10)))
        .collect();
    let (served, _) = a.serve(DbKind::Regional, need(hostile)).await.unwrap();
    assert_eq!(bytes(&served), bytes(&once));
    assert!(bytes(&once) > 10_000, "the version is not trivially small");
}

const TWO_TABLES: &str =
    "CREATE TABLE machines(id INTEGER PRIMARY KEY NOT NULL, app TEXT, state TEXT);
CREATE TABLE services(app TEXT PRIMARY KEY NOT NULL, port INTEGER);";
/// `TWO_TABLES` without column `state` and table `services`.
const DROPPED: &str = "CREATE TABLE machines(id INTEGER PRIMARY KEY NOT NULL, app TEXT);";

#[tokio::test]
async fn a_drop_needs_the_flag_and_then_changes_naming_it_are_counted_not_held() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::open(options(da.path(), TWO_TABLES)).unwrap();
    let b = Node::open(options(db.path(), TWO_TABLES)).unwrap();
    exec(
        &a,
        "INSERT INTO machines VALUES (1, 'web', 'started'), (2, 'db', 'created')",
    )
    .await;
    exec(&a, "INSERT INTO services VALUES ('web', 80)").await;
    apply(&b, served(&a, &b).await).await;

    std::fs::write(da.path().join("schema/regional.sql"), DROPPED).unwrap();
    let refused = a.reload_schema().await.unwrap_err().to_string();
    for word in [
        "state",
        "services",
        "nothing was changed",
        "--allow-destructive",
    ] {
        assert!(refused.contains(word), "{word:?} missing: {refused}");
    }
    assert_eq!(rows(&a, ALL).await.len(), 2, "nothing was dropped");
    let dropped = a.reload_schema_with(Drops::Allowed).await.unwrap();
    let names: Vec<String> = dropped.iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "table services (regional.db)",
            "column machines.state (regional.db)"
        ]
    );
    let app = "SELECT id, app FROM machines ORDER BY id";
    assert_eq!(rows(&a, app).await, rows(&b, app).await);

    // b, still on the old schema, writes the dropped column and table
    // along with what a keeps; one version touches the dropped table only.
    exec(
        &b,
        "UPDATE machines SET app = 'api', state = 'stopped' WHERE id = 1",
    )
    .await;
    exec(&b, "INSERT INTO services VALUES ('db', 5432)").await;
    exec(&b, "INSERT INTO machines VALUES (3, 'cache', 'started')").await;
    let outcome = apply(&a, served(&b, &a).await).await;
    assert_eq!(outcome.versions_applied, 3);
    assert_eq!(
        outcome.changes_dropped, 3,
        "state twice, services' port once"
    );
    assert_eq!((outcome.versions_parked, outcome.failed), (0, 0));
    assert!(a.held_versions(DbKind::Regional).borrow().is_empty());
    assert!(served(&b, &a).await.is_empty(), "nothing is fetched again");
    assert_eq!(rows(&a, app).await, rows(&b, app).await);
    assert_eq!(
        a.write_stats(DbKind::Regional).remote_changes_dropped,
        3,
        "counted where /metrics and /v1/health read it"
    );

    // After a restart (with the flag off: nothing is left to drop) the
    // drop is remembered.
    drop(a);
    let a = Node::open(options(da.path(), TWO_TABLES)).unwrap();
    exec(&b, "UPDATE machines SET state = 'gone' WHERE id = 2").await;
    let outcome = apply(&a, served(&b, &a).await).await;
    assert_eq!((outcome.changes_dropped, outcome.versions_parked), (1, 0));

    // b drops them too; a's writes keep flowing to it.
    std::fs::write(db.path().join("schema/regional.sql"), DROPPED).unwrap();
    b.reload_schema_with(Drops::Allowed).await.unwrap();
    exec(&a, "UPDATE machines SET app = 'edge' WHERE id = 3").await;
    apply(&b, served(&a, &b).await).await;
    assert_eq!(rows(&a, app).await, rows(&b, app).await);
}

#[tokio::test]
async fn held_changes_naming_a_column_dropped_since_are_let_go() {
    let strict = "CREATE TABLE machines(id INTEGER PRIMARY KEY NOT NULL, app TEXT, \
                  state TEXT CHECK (state IS NOT 'bad'));";
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::open(options(da.path(), SCHEMA)).unwrap();
    let b = Node::open(options(db.path(), strict)).unwrap();
    let v = exec(&a, "INSERT INTO machines VALUES (1, 'web', 'bad')").await;
    let outcome = apply(&b, served(&a, &b).await).await;
    assert_eq!(outcome.versions_refused, 1);
    assert!(b
        .held_versions(DbKind::Regional)
        .borrow()
        .contains(a.actor_id(), v));

    std::fs::write(
        db.path().join("schema/regional.sql"),
        "CREATE TABLE machines(id INTEGER PRIMARY KEY NOT NULL, app TEXT);",
    )
    .unwrap();
    b.reload_schema_with(Drops::Allowed).await.unwrap();
    assert!(b.held_versions(DbKind::Regional).borrow().is_empty());
    assert_eq!(
        rows(&b, "SELECT id, app FROM machines").await,
        rows(&a, "SELECT id, app FROM machines").await,
        "the rest of the held row merged"
    );
    assert_eq!(b.write_stats(DbKind::Regional).remote_changes_dropped, 1);
}

#[tokio::test]
async fn a_drop_at_open_needs_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), TWO_TABLES);
    drop(Node::open(opts.clone()).unwrap());
    std::fs::write(dir.path().join("schema/regional.sql"), DROPPED).unwrap();
    let refused = Node::open(opts.clone()).err().expect("refused").to_string();
    assert!(refused.contains("db.allow_destructive_schema"), "{refused}");
    let node = Node::open(NodeOptions {
        schema_drops: Drops::Allowed,
        ..opts
    })
    .unwrap();
    assert_eq!(
        rows(
            &node,
            "SELECT name FROM pragma_table_info('machines') ORDER BY cid"
        )
        .await
        .len(),
        2
    );
}

#[tokio::test]
async fn a_large_version_naming_a_dropped_column_merges_in_pages_and_counts_it() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::open(options(da.path(), TWO_TABLES)).unwrap();
    let b = Node::open(options(db.path(), TWO_TABLES)).unwrap();
    std::fs::write(da.path().join("schema/regional.sql"), DROPPED).unwrap();
    a.reload_schema_with(Drops::Allowed).await.unwrap();
    // 5,000 rows × (app, state): past LARGE_CHANGES, so merged from the
    // buffer in pages.
    exec(
        &b,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
         INSERT INTO machines SELECT i, 'app-' || (i % 7), 'started' FROM n",
    )
    .await;
    let chunks = served(&b, &a).await;
    assert!(chunks.len() > 1, "{} chunks", chunks.len());
    let outcome = apply(&a, chunks).await;
    assert_eq!(outcome.versions_applied, 1);
    assert_eq!(
        (outcome.changes_dropped, outcome.versions_parked),
        (5000, 0)
    );
    let app = "SELECT id, app FROM machines ORDER BY id";
    assert_eq!(rows(&a, app).await, rows(&b, app).await);
}
