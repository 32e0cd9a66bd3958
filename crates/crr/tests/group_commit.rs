//! Group commit: several parts in one transaction, each undone alone when it
//! fails. What a group commits must be exactly what its successful parts
//! would have committed as one plain transaction: same rows, same clocks,
//! same seqs — a failed part leaves no trace, not even a captured event.

use patina_crr::{CrrConn, SiteId, Value};
use proptest::prelude::*;

const T: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INTEGER CHECK (b IS NULL OR b >= 0));";

fn db() -> CrrConn {
    let mut c = CrrConn::open_in_memory_with_site_id(Some(SiteId([0x22; 16]))).unwrap();
    c.apply_schema(T).unwrap();
    c
}

fn dump(c: &CrrConn) -> Vec<Vec<Value>> {
    let mut stmt = c
        .connection()
        .prepare("SELECT id, a, b FROM t ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| (0..3).map(|i| r.get(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Runs `parts` as a group; returns which parts succeeded, whether each
/// wrote, and the group's version. Also checks that the changes the commit
/// returns are what reading them back gives.
fn run_group(c: &mut CrrConn, parts: &[Vec<String>]) -> (Vec<Option<bool>>, Option<u64>) {
    let mut tx = c.transaction().unwrap();
    let mut outcomes = Vec::new();
    for part in parts {
        let r = tx.part(|tx| {
            for sql in part {
                tx.execute(sql, [])?;
            }
            Ok(())
        });
        assert!(tx.is_usable(), "a failed statement must not lose the group");
        outcomes.push(r.ok().map(|((), wrote)| wrote));
    }
    let committed = tx.commit_changes().unwrap();
    if let Some((v, changes)) = &committed {
        assert!(!changes.is_empty());
        assert_eq!(changes, &c.changes_of(c.site_id(), *v..=*v).unwrap());
    }
    (outcomes, committed.map(|(v, _)| v))
}

/// The same successful parts as one plain transaction.
fn run_plain(c: &mut CrrConn, parts: &[Vec<String>], ok: &[Option<bool>]) -> Option<u64> {
    let mut tx = c.transaction().unwrap();
    for (part, outcome) in parts.iter().zip(ok) {
        if outcome.is_some() {
            for sql in part {
                tx.execute(sql, []).unwrap();
            }
        }
    }
    tx.commit().unwrap()
}

fn part(sqls: &[&str]) -> Vec<String> {
    sqls.iter().map(|s| s.to_string()).collect()
}

#[test]
fn failed_part_leaves_no_trace() {
    let parts = vec![
        part(&["INSERT INTO t VALUES (1, 'x', 1)"]),
        // Writes row 2, then fails: row 2 and its events must go.
        part(&[
            "INSERT INTO t VALUES (2, 'y', 2)",
            "INSERT INTO t VALUES (1, 'dup', 0)",
        ]),
        part(&["UPDATE t SET b = 5 WHERE id = 1"]),
        part(&["UPDATE t SET b = 5 WHERE id = 1"]),
        part(&["UPDATE t SET b = -1 WHERE id = 1"]),
    ];
    let mut group = db();
    let (outcomes, version) = run_group(&mut group, &parts);
    assert_eq!(
        outcomes,
        vec![Some(true), None, Some(true), Some(false), None]
    );
    assert_eq!(version, Some(1));
    let mut plain = db();
    assert_eq!(run_plain(&mut plain, &parts, &outcomes), Some(1));
    assert_eq!(
        dump(&group),
        vec![vec![
            Value::Integer(1),
            Value::Text("x".into()),
            Value::Integer(5)
        ]]
    );
    assert_eq!(dump(&group), dump(&plain));
    assert_eq!(
        group.changes_since(0, None).unwrap(),
        plain.changes_since(0, None).unwrap()
    );
}

#[test]
fn group_of_failures_takes_no_version() {
    let mut c = db();
    let (outcomes, version) = run_group(
        &mut c,
        &[
            part(&["INSERT INTO t VALUES (1, 'x', -3)"]),
            part(&["SELECT nope FROM t"]),
        ],
    );
    assert_eq!(outcomes, vec![None, None]);
    assert_eq!(version, None);
    assert_eq!(c.db_version(), 0);
    assert!(dump(&c).is_empty());
}

fn arb_statement() -> impl Strategy<Value = String> {
    let id = 1i64..5;
    prop_oneof![
        (id.clone(), -1i64..3)
            .prop_map(|(id, b)| format!("INSERT INTO t VALUES ({id}, 'v{id}', {b})")),
        (id.clone(), -1i64..3)
            .prop_map(|(id, b)| format!("INSERT OR REPLACE INTO t VALUES ({id}, 'r', {b})")),
        (id.clone(), -1i64..3).prop_map(|(id, b)| format!("UPDATE t SET b = {b} WHERE id = {id}")),
        id.clone()
            .prop_map(|id| format!("UPDATE t SET id = id + 10 WHERE id = {id}")),
        id.prop_map(|id| format!("DELETE FROM t WHERE id = {id}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn group_equals_its_successful_parts(
        before in prop::collection::vec(arb_statement(), 0..4),
        parts in prop::collection::vec(prop::collection::vec(arb_statement(), 1..4), 1..6),
    ) {
        let (mut group, mut plain) = (db(), db());
        for sql in &before {
            for c in [&mut group, &mut plain] {
                let mut tx = c.transaction().unwrap();
                if tx.execute(sql, []).is_ok() {
                    tx.commit().unwrap();
                }
            }
        }
        let (outcomes, v_group) = run_group(&mut group, &parts);
        let v_plain = run_plain(&mut plain, &parts, &outcomes);
        prop_assert_eq!(v_group, v_plain);
        prop_assert_eq!(dump(&group), dump(&plain));
        prop_assert_eq!(group.changes_since(0, None).unwrap(), plain.changes_since(0, None).unwrap());
    }
}
