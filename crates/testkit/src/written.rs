//! A model of what a test wrote: the rows every node must hold once the
//! cluster has converged. Nodes agreeing with each other is not enough: a
//! write lost on every node leaves them agreeing.

use std::collections::{BTreeMap, BTreeSet};

use patina_node::Value;

/// A row's key (its first cell), rendered with `Debug`: `Value` has no
/// total order (reals), and keys here are integers and text.
type Key = String;

fn key(v: &Value) -> Key {
    format!("{v:?}")
}

#[derive(Debug, Clone, Default)]
struct Table {
    /// Rows one writer alone decided: present with exactly these cells, or
    /// (`None`) deleted.
    exact: BTreeMap<Key, Option<Vec<Value>>>,
    /// Keys several nodes wrote concurrently. Which write wins is the
    /// merge's business (the nodes agreeing checks it), so these may hold
    /// any row or none; no other key may hold a row the model lacks.
    contested: BTreeSet<Key>,
}

/// What was written, table by table. Tables never mentioned must be empty.
#[derive(Debug, Clone, Default)]
pub struct Written {
    tables: BTreeMap<String, Table>,
}

impl Written {
    pub fn new() -> Written {
        Written::default()
    }

    fn table(&mut self, table: &str) -> &mut Table {
        self.tables.entry(table.to_owned()).or_default()
    }

    /// `row` (keyed by its first cell) must be on every node as it is.
    pub fn row(&mut self, table: &str, row: Vec<Value>) -> &mut Self {
        let k = key(&row[0]);
        let t = self.table(table);
        t.contested.remove(&k);
        t.exact.insert(k, Some(row));
        self
    }

    /// The row with this key must be on no node.
    pub fn deleted(&mut self, table: &str, k: &Value) -> &mut Self {
        let k = key(k);
        let t = self.table(table);
        t.contested.remove(&k);
        t.exact.insert(k, None);
        self
    }

    /// The row with this key may end in any state.
    pub fn contested(&mut self, table: &str, k: &Value) -> &mut Self {
        let k = key(k);
        let t = self.table(table);
        t.exact.remove(&k);
        t.contested.insert(k);
        self
    }

    /// A row of the harness's `machines` table.
    pub fn machine(&mut self, id: i64, app: &str, state: &str, n: i64) -> &mut Self {
        self.row(
            "machines",
            vec![
                Value::Integer(id),
                Value::Text(app.into()),
                Value::Text(state.into()),
                Value::Integer(n),
            ],
        )
    }

    /// The row the model holds for `k`, if one writer decided it.
    pub fn get(&self, table: &str, k: &Value) -> Option<&Vec<Value>> {
        self.tables.get(table)?.exact.get(&key(k))?.as_ref()
    }

    /// Adds what `other` wrote, later than what is here: its rows replace
    /// ours; a key contested on either side stays contested.
    pub fn extend(&mut self, other: Written) {
        for (name, theirs) in other.tables {
            let ours = self.table(&name);
            for (k, row) in theirs.exact {
                if !ours.contested.contains(&k) {
                    ours.exact.insert(k, row);
                }
            }
            for k in theirs.contested {
                ours.exact.remove(&k);
                ours.contested.insert(k);
            }
        }
    }

    /// Whether `rows` (all of `table` on one node) are what was written;
    /// the error names the first few differences.
    pub fn check(&self, table: &str, rows: &[Vec<Value>]) -> Result<(), String> {
        let empty = Table::default();
        let t = self.tables.get(table).unwrap_or(&empty);
        let mut errors = Vec::new();
        let mut seen = BTreeSet::new();
        for row in rows {
            let k = key(&row[0]);
            match t.exact.get(&k) {
                Some(Some(want)) if want == row => {}
                Some(Some(want)) => errors.push(format!("{row:?} where {want:?} was written")),
                Some(None) => errors.push(format!("{row:?}, which was deleted")),
                None if t.contested.contains(&k) => {}
                None => errors.push(format!("{row:?}, which was never written")),
            }
            seen.insert(k);
        }
        for (k, want) in &t.exact {
            if let (Some(want), false) = (want, seen.contains(k)) {
                errors.push(format!("{want:?} is missing"));
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        let more = errors.len().saturating_sub(5);
        errors.truncate(5);
        let more = if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        };
        Err(format!("{}{more}", errors.join("; ")))
    }
}
