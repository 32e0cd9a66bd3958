//! Property: replicas doing random concurrent writes and exchanging changes
//! in random order and batch sizes converge — identical table contents,
//! identical column clocks, sentinels equal by causal length — and applying
//! a batch twice changes nothing. Their consistency digests agree exactly
//! when their converged state, tombstones left out, does.

use std::collections::BTreeMap;

use patina_crr::digest::{table_digest, TableDigest};
use patina_crr::{Change, CrrConn, SiteId, Value};
use proptest::prelude::*;

const SCHEMA: &str = "
CREATE TABLE ti(id INTEGER PRIMARY KEY NOT NULL, a, b TEXT, c REAL);
CREATE TABLE tt(k TEXT PRIMARY KEY NOT NULL, v, w INTEGER DEFAULT 7);
CREATE TABLE tc(x INTEGER NOT NULL, y TEXT NOT NULL, v, PRIMARY KEY (x, y)) WITHOUT ROWID;
CREATE TABLE tp(k INTEGER PRIMARY KEY NOT NULL);
";
const SITES: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Insert {
        key: Key,
        vals: [Value; 3],
    },
    Update {
        key: Key,
        col: usize,
        val: Value,
    },
    Delete {
        key: Key,
    },
    Replace {
        key: Key,
        vals: [Value; 3],
    },
    Upsert {
        key: Key,
        val: Value,
    },
    MovePk {
        key: Key,
        to: i64,
    },
    /// `to` pulls everything from `from`, shuffled by `perm`, in batches.
    Sync {
        from: usize,
        to: usize,
        perm: u64,
        batch: usize,
        twice: bool,
    },
}

#[derive(Debug, Clone, Copy)]
enum Key {
    Int(i64),
    Text(i64),
    Comp(i64, i64),
    PkOnly(i64),
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        (-2i64..3).prop_map(Value::Integer),
        prop::sample::select(vec![0.5, 1.0, -2.5]).prop_map(Value::Real),
        prop::sample::select(vec!["", "a", "B", "é"]).prop_map(|s| Value::Text(s.into())),
        prop::sample::select(vec![vec![], vec![0u8], vec![255u8]]).prop_map(Value::Blob),
    ]
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        (1i64..4).prop_map(Key::Int),
        (1i64..4).prop_map(Key::Text),
        (1i64..3, 1i64..3).prop_map(|(a, b)| Key::Comp(a, b)),
        (1i64..3).prop_map(Key::PkOnly),
    ]
}

fn op() -> impl Strategy<Value = (usize, Op)> {
    let vals = || [value(), value(), value()];
    let write = prop_oneof![
        3 => (key(), vals()).prop_map(|(key, vals)| Op::Insert { key, vals }),
        4 => (key(), 0usize..3, value()).prop_map(|(key, col, val)| Op::Update { key, col, val }),
        2 => key().prop_map(|key| Op::Delete { key }),
        1 => (key(), vals()).prop_map(|(key, vals)| Op::Replace { key, vals }),
        1 => (key(), value()).prop_map(|(key, val)| Op::Upsert { key, val }),
        1 => (key(), 1i64..4).prop_map(|(key, to)| Op::MovePk { key, to }),
        3 => (0..SITES, 0..SITES, any::<u64>(), 1usize..8, any::<bool>())
            .prop_map(|(from, to, perm, batch, twice)| Op::Sync { from, to, perm, batch, twice }),
    ];
    (0..SITES, write)
}

fn table_and_where(key: Key) -> (&'static str, String, Vec<Value>) {
    match key {
        Key::Int(i) => ("ti", "id = ?1".into(), vec![Value::Integer(i)]),
        Key::Text(i) => ("tt", "k = ?1".into(), vec![Value::Text(format!("k{i}"))]),
        Key::Comp(a, b) => (
            "tc",
            "x = ?1 AND y = ?2".into(),
            vec![Value::Integer(a), Value::Text(format!("y{b}"))],
        ),
        Key::PkOnly(i) => ("tp", "k = ?1".into(), vec![Value::Integer(i)]),
    }
}

fn columns(table: &str) -> &'static [&'static str] {
    match table {
        "ti" => &["a", "b", "c"],
        "tt" => &["v", "w"],
        "tc" => &["v"],
        _ => &[],
    }
}

fn pk_columns(table: &str) -> &'static [&'static str] {
    match table {
        "ti" => &["id"],
        "tt" | "tp" => &["k"],
        _ => &["x", "y"],
    }
}

/// Runs one local write; SQL errors (duplicate keys…) just roll it back.
fn write(conn: &mut CrrConn, op: &Op) {
    let (sql, params): (String, Vec<Value>) = match op {
        Op::Insert { key, vals } | Op::Replace { key, vals } => {
            let (table, _, mut params) = table_and_where(*key);
            let cols = columns(table);
            params.extend(vals.iter().take(cols.len()).cloned());
            let all: Vec<&str> = pk_columns(table).iter().chain(cols).copied().collect();
            let marks: Vec<String> = (1..=all.len()).map(|i| format!("?{i}")).collect();
            let verb = if matches!(op, Op::Replace { .. }) {
                "INSERT OR REPLACE"
            } else {
                "INSERT"
            };
            (
                format!(
                    "{verb} INTO {table} ({}) VALUES ({})",
                    all.join(", "),
                    marks.join(", ")
                ),
                params,
            )
        }
        Op::Update { key, col, val } => {
            let (table, filter, mut params) = table_and_where(*key);
            let Some(column) = columns(table).get(*col % columns(table).len().max(1)) else {
                return;
            };
            params.push(val.clone());
            (
                format!(
                    "UPDATE {table} SET {column} = ?{} WHERE {filter}",
                    params.len()
                ),
                params,
            )
        }
        Op::Delete { key } => {
            let (table, filter, params) = table_and_where(*key);
            (format!("DELETE FROM {table} WHERE {filter}"), params)
        }
        Op::Upsert { key, val } => {
            let (table, _, mut params) = table_and_where(*key);
            let Some(column) = columns(table).first() else {
                return;
            };
            params.push(val.clone());
            let pks = pk_columns(table);
            let marks: Vec<String> = (1..=params.len()).map(|i| format!("?{i}")).collect();
            (
                format!(
                    "INSERT INTO {table} ({}, {column}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {column} = excluded.{column}",
                    pks.join(", "),
                    marks.join(", "),
                    pks.join(", ")
                ),
                params,
            )
        }
        Op::MovePk { key, to } => {
            let (table, filter, mut params) = table_and_where(*key);
            let first_pk = pk_columns(table)[0];
            let new = match key {
                Key::Text(_) => Value::Text(format!("k{to}")),
                _ => Value::Integer(*to),
            };
            params.push(new);
            (
                format!(
                    "UPDATE {table} SET {first_pk} = ?{} WHERE {filter}",
                    params.len()
                ),
                params,
            )
        }
        Op::Sync { .. } => unreachable!("not a write"),
    };
    let mut tx = conn.transaction().unwrap();
    if tx
        .execute(&sql, rusqlite::params_from_iter(params.iter()))
        .is_ok()
    {
        tx.commit().unwrap();
    }
}

fn shuffle(mut changes: Vec<Change>, mut seed: u64) -> Vec<Change> {
    for i in (1..changes.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        changes.swap(i, (seed >> 33) as usize % (i + 1));
    }
    changes
}

fn contents(conn: &CrrConn) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["ti", "tt", "tc", "tp"] {
        let order = pk_columns(table).join(", ");
        let mut stmt = conn
            .connection()
            .prepare(&format!("SELECT * FROM {table} ORDER BY {order}"))
            .unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| r.get::<_, Value>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .unwrap();
        for row in rows {
            out.push(format!("{table} {:?}", row.unwrap()));
        }
    }
    out
}

/// Column clocks exactly; sentinels by causal length only (crr-model.md 7.2).
/// Causal length per (table, packed pk).
type Cls = BTreeMap<(String, Vec<u8>), i64>;

fn clocks(conn: &CrrConn) -> (Vec<String>, Cls) {
    let changes = conn.changes_since(0, None).unwrap();
    let mut cols: Vec<String> = changes
        .iter()
        .filter(|c| !c.is_sentinel())
        .map(|c| format!("{c:?}"))
        .collect();
    cols.sort();
    let cls = changes
        .iter()
        .map(|c| ((c.table.clone(), c.pk.clone()), c.cl))
        .collect();
    (cols, cls)
}

fn sync(sites: &mut [CrrConn], from: usize, to: usize, perm: u64, batch: usize, twice: bool) {
    if from == to {
        return;
    }
    let exclude = sites[to].site_id();
    let changes = shuffle(sites[from].changes_since(0, Some(exclude)).unwrap(), perm);
    for chunk in changes.chunks(batch.max(1)) {
        sites[to].apply_changes(chunk).unwrap();
        if twice {
            let before = (
                contents(&sites[to]),
                sites[to].changes_since(0, None).unwrap(),
            );
            let again = sites[to].apply_changes(chunk).unwrap();
            assert!(
                again.won.is_empty(),
                "re-applying a batch won {:?}",
                again.won
            );
            assert_eq!(
                before,
                (
                    contents(&sites[to]),
                    sites[to].changes_since(0, None).unwrap()
                )
            );
        }
    }
}

fn digests(conn: &CrrConn) -> Vec<TableDigest> {
    ["ti", "tt", "tc", "tp"]
        .iter()
        .map(|t| table_digest(conn.connection(), "main", t).unwrap())
        .collect()
}

/// What the digest hashes: contents, column clocks, and the causal lengths
/// of keys that are not tombstones (these tests write through capture only,
/// so an even causal length is a deleted key without a row).
fn digested_state(conn: &CrrConn) -> (Vec<String>, Vec<String>, Cls) {
    let (cols, mut cls) = clocks(conn);
    cls.retain(|_, cl| *cl % 2 == 1);
    (contents(conn), cols, cls)
}

/// The digest sees exactly what converges, tombstones left out (replicas
/// collect them at different moments): two replicas digest alike if and
/// only if their contents, column clocks and alive causal lengths agree.
fn assert_digests_tell(sites: &[CrrConn]) {
    for i in 0..sites.len() {
        for j in i + 1..sites.len() {
            let same_state = digested_state(&sites[i]) == digested_state(&sites[j]);
            let same_digest = digests(&sites[i]) == digests(&sites[j]);
            assert_eq!(
                same_state, same_digest,
                "sites {i} and {j}: state equal {same_state}, digests equal {same_digest}"
            );
        }
    }
}

fn run(ops: &[(usize, Op)]) {
    let mut sites: Vec<CrrConn> = (0..SITES)
        .map(|i| {
            let mut c =
                CrrConn::open_in_memory_with_site_id(Some(SiteId([0x11 * (i as u8 + 1); 16])))
                    .unwrap();
            c.apply_schema(SCHEMA).unwrap();
            c
        })
        .collect();
    for (site, op) in ops {
        match op {
            Op::Sync {
                from,
                to,
                perm,
                batch,
                twice,
            } => sync(&mut sites, *from, *to, *perm, *batch, *twice),
            write_op => write(&mut sites[*site], write_op),
        }
    }
    assert_digests_tell(&sites);
    for round in 0..2u64 {
        for to in 0..SITES {
            for from in 0..SITES {
                sync(&mut sites, from, to, round * 7 + from as u64, 3, false);
            }
        }
    }
    let expected = (contents(&sites[0]), clocks(&sites[0]));
    for (i, site) in sites.iter().enumerate().skip(1) {
        let got = (contents(site), clocks(site));
        assert_eq!(
            expected.0, got.0,
            "table contents of site 0 and site {i} differ"
        );
        assert_eq!(
            expected.1 .0, got.1 .0,
            "column clocks of site 0 and site {i} differ"
        );
        assert_eq!(
            expected.1 .1, got.1 .1,
            "causal lengths of site 0 and site {i} differ"
        );
    }
    assert_digests_tell(&sites);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge(ops in prop::collection::vec(op(), 1..40)) {
        run(&ops);
    }
}
