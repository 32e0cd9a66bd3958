//! Helpers for the merge tests: a `Site` (one replica with a pinned site id),
//! synced starting states, full exchanges in several orders and the
//! convergence checks of crr-model.md 7.2.

use std::collections::BTreeMap;

use patina_crr::{Change, CrrConn, MergeReport, SiteId, Value};

pub const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INTEGER, c);
CREATE TABLE p(k TEXT PRIMARY KEY NOT NULL);";

/// The synced row every truth-table scenario starts from (section 13).
pub const SYNCED_ROW: &str = "INSERT INTO t VALUES (1,'x',1,NULL)";

/// Site ids of s0 < s1 < s2.
pub const IDS: [SiteId; 3] = [SiteId([0x11; 16]), SiteId([0x22; 16]), SiteId([0x33; 16])];

/// One replica.
pub struct Site {
    pub conn: CrrConn,
    pub id: SiteId,
    /// For failure messages: "s1", or "s1 (backward exchange)".
    pub name: String,
}

impl Site {
    pub fn new(n: usize) -> Site {
        let mut conn = CrrConn::open_in_memory_with_site_id(Some(IDS[n])).unwrap();
        conn.apply_schema(SCHEMA).unwrap();
        Site {
            conn,
            id: IDS[n],
            name: format!("s{n}"),
        }
    }

    /// Runs `sql` (one or more statements) as ONE local transaction;
    /// returns the db_version it took.
    pub fn exec(&mut self, sql: &str) -> Option<u64> {
        let mut tx = self.conn.transaction().unwrap();
        tx.execute_batch(sql)
            .unwrap_or_else(|e| panic!("{}: {sql}: {e}", self.name));
        tx.commit().unwrap()
    }

    /// Every current change of this site (its own and forwarded ones).
    pub fn changes(&self) -> Vec<Change> {
        self.conn.changes_since(0, None).unwrap()
    }

    pub fn apply(&mut self, batch: &[Change]) -> MergeReport {
        self.conn
            .apply_changes(batch)
            .unwrap_or_else(|e| panic!("{}: apply_changes: {e}", self.name))
    }

    /// Merges everything `other` has, except this site's own changes (as
    /// cr-sqlite peers pull, crr-model.md 8), as one batch.
    pub fn pull_from(&mut self, other: &Site) -> MergeReport {
        let batch = other.conn.changes_since(0, Some(self.id)).unwrap();
        self.apply(&batch)
    }

    /// Table `t`, one SQL-quoted tuple per row: `(1,'x',1,NULL)`.
    pub fn t(&self) -> Vec<String> {
        self.strings(
            "SELECT '(' || quote(id) || ',' || quote(a) || ',' || quote(b) || ',' || quote(c) || ')'
             FROM t ORDER BY id",
        )
    }

    /// Table `p`, quoted keys.
    pub fn p(&self) -> Vec<String> {
        self.strings("SELECT quote(k) FROM p ORDER BY k")
    }

    pub fn strings(&self, sql: &str) -> Vec<String> {
        let conn = self.conn.connection();
        let mut stmt = conn.prepare(sql).unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    pub fn site_versions(&self) -> BTreeMap<SiteId, u64> {
        self.conn.site_versions().into_iter().collect()
    }

    /// The changes of one row of `t`, sentinel first, then columns in table
    /// order.
    pub fn row_changes(&self, id: i64) -> Vec<Change> {
        let pk = t_pk(id);
        let order = |c: &Change| ["-1", "a", "b", "c"].iter().position(|x| *x == c.cid);
        let mut out: Vec<Change> = self.changes().into_iter().filter(|c| c.pk == pk).collect();
        out.sort_by_key(order);
        out
    }

    /// The sentinel change of `(table, pk)`, if this site stores one.
    pub fn sentinel(&self, table: &str, pk: &[u8]) -> Option<Change> {
        self.changes()
            .into_iter()
            .find(|c| c.table == table && c.pk == pk && c.is_sentinel())
    }
}

pub fn t_pk(id: i64) -> Vec<u8> {
    patina_crr::pk::pack_values(&[Value::Integer(id)]).unwrap()
}

pub fn p_pk(k: &str) -> Vec<u8> {
    patina_crr::pk::pack_values(&[Value::Text(k.into())]).unwrap()
}

/// Three sites; s0 runs `init` as one transaction and the others merge it.
pub fn synced(init: &str) -> Vec<Site> {
    let mut sites: Vec<Site> = (0..3).map(Site::new).collect();
    sites[0].exec(init);
    let (first, rest) = sites.split_at_mut(1);
    for s in rest {
        s.pull_from(&first[0]);
    }
    sites
}

/// `sites[to]` pulls everything from `sites[from]`, as one batch.
pub fn pull(sites: &mut [Site], to: usize, from: usize) -> MergeReport {
    let batch = sites[from]
        .conn
        .changes_since(0, Some(sites[to].id))
        .unwrap();
    sites[to].apply(&batch)
}

/// How a full exchange orders the pulls.
#[derive(Debug, Clone, Copy)]
pub enum Order {
    /// s0 pulls s1, s2; s1 pulls s0, s2; … one batch per pull.
    Forward,
    /// s2 pulls s1, s0; s1 pulls s2, s0; …
    Backward,
    /// Like Forward, but every change is its own batch, newest first.
    OneByOneReversed,
}

pub const ORDERS: [Order; 3] = [Order::Forward, Order::Backward, Order::OneByOneReversed];

/// Every site pulls from every other, two full rounds (so that forwarded
/// changes reach everyone).
pub fn exchange(sites: &mut [Site], order: Order) {
    let n = sites.len();
    let pairs: Vec<(usize, usize)> = (0..n)
        .flat_map(|to| (0..n).map(move |from| (to, from)))
        .filter(|(to, from)| to != from)
        .collect();
    for _round in 0..2 {
        let mut round = pairs.clone();
        if matches!(order, Order::Backward) {
            round.reverse();
        }
        for &(to, from) in &round {
            if matches!(order, Order::OneByOneReversed) {
                let batch = sites[from]
                    .conn
                    .changes_since(0, Some(sites[to].id))
                    .unwrap();
                for change in batch.iter().rev() {
                    sites[to].apply(std::slice::from_ref(change));
                }
            } else {
                pull(sites, to, from);
            }
        }
    }
    for s in sites.iter_mut() {
        s.name = format!("{} ({order:?} exchange)", s.name);
    }
}

/// For every exchange order: fresh sites synced with `init`, `ops` run on
/// them without any exchange, then a full exchange.
pub fn run_from(init: &str, ops: impl Fn(&mut [Site])) -> Vec<Vec<Site>> {
    ORDERS
        .iter()
        .map(|&order| {
            let mut sites = synced(init);
            ops(&mut sites);
            exchange(&mut sites, order);
            sites
        })
        .collect()
}

/// `run_from` starting from the synced row (1,'x',1,NULL).
pub fn run(ops: impl Fn(&mut [Site])) -> Vec<Vec<Site>> {
    run_from(SYNCED_ROW, ops)
}

/// Every site holds exactly `rows` in `t`, and the clocks converged.
pub fn assert_t(sites: &[Site], rows: &[&str]) {
    for s in sites {
        assert_eq!(s.t(), rows, "contents of t on {}", s.name);
    }
    assert_clocks_converged(sites);
}

/// Every site holds exactly `keys` (quoted) in `p`.
pub fn assert_p(sites: &[Site], keys: &[&str]) {
    for s in sites {
        assert_eq!(s.p(), keys, "contents of p on {}", s.name);
    }
}

/// crr-model.md 7.2: column clock entries identical everywhere (as a set);
/// sentinels compared by the row's cl only; consistency digests identical.
pub fn assert_clocks_converged(sites: &[Site]) {
    let columns = |s: &Site| {
        let mut cols: Vec<Change> = s
            .changes()
            .into_iter()
            .filter(|c| !c.is_sentinel())
            .collect();
        cols.sort_by(|x, y| (&x.table, &x.pk, &x.cid).cmp(&(&y.table, &y.pk, &y.cid)));
        cols
    };
    let cls = |s: &Site| {
        s.changes()
            .into_iter()
            .map(|c| ((c.table, c.pk), c.cl))
            .collect::<BTreeMap<_, _>>()
    };
    let (first, rest) = sites.split_first().unwrap();
    for s in rest {
        assert_eq!(
            columns(s),
            columns(first),
            "column clocks of {} vs {}",
            s.name,
            first.name
        );
        assert_eq!(
            cls(s),
            cls(first),
            "row cls of {} vs {}",
            s.name,
            first.name
        );
        for table in ["t", "p"] {
            let digest = |site: &Site| {
                patina_crr::digest::table_digest(site.conn.connection(), "main", table).unwrap()
            };
            assert_eq!(
                digest(s),
                digest(first),
                "digests of {table} on {} vs {}",
                s.name,
                first.name
            );
        }
    }
}
