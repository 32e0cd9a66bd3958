//! A worker's index of its routed subscriptions ([`plan::Route`]): which of
//! them a changed row can concern. A changed row concerns a subscription
//! when its result holds the row (by primary key: the old values passed
//! its filter) or when the row's current values satisfy its route's
//! constraint. The current values are read once per table and batch, in
//! the batch's read transaction; both sides together are a superset of the
//! subscriptions whose result the change can alter, the restricted re-run
//! decides exactly.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use patina_crr::Value;
use rusqlite::Connection;

use super::codec;
use super::diff::{ChangeEvent, ChangeKind};
use super::plan::{Route, Table};
use super::route::{normalized, Constraint};

/// Subscriptions to re-run, each with the changed keys that concern it.
pub(crate) type Concerned = HashMap<String, HashSet<Vec<u8>>>;

#[derive(Default)]
pub(crate) struct Routing {
    tables: HashMap<Table, TableRouting>,
}

#[derive(Default)]
struct TableRouting {
    pk: Vec<String>,
    /// The constrained columns, as read from changed rows (lowercase).
    columns: Vec<String>,
    /// `(column, encoded normalized value)` → subscriptions wanting it.
    one_of: HashMap<(usize, Vec<u8>), Vec<String>>,
    ranges: Vec<(usize, Constraint, String)>,
    /// Encoded primary key → subscriptions whose result holds that row.
    holding: HashMap<Vec<u8>, Vec<String>>,
    subs: HashSet<String>,
}

impl Routing {
    pub fn is_routed(&self, table: &Table) -> bool {
        self.tables.contains_key(table)
    }

    /// The routed subscriptions of `table`.
    pub fn subs_of(&self, table: &Table) -> impl Iterator<Item = &String> {
        self.tables
            .get(table)
            .into_iter()
            .flat_map(|t| t.subs.iter())
    }

    /// Adds subscription `id`, whose result holds rows of the keys `held`.
    pub fn add(&mut self, id: &str, route: &Route, held: impl Iterator<Item = Vec<u8>>) {
        let t = self.tables.entry(route.table.clone()).or_default();
        t.pk.clone_from(&route.pk);
        let name = route.column.to_ascii_lowercase();
        let column = match t.columns.iter().position(|c| *c == name) {
            Some(i) => i,
            None => {
                t.columns.push(name);
                t.columns.len() - 1
            }
        };
        match &route.constraint {
            Constraint::OneOf(list) => {
                for v in list {
                    let key = (column, codec::encode(std::slice::from_ref(v)));
                    let ids = t.one_of.entry(key).or_default();
                    if !ids.iter().any(|i| i == id) {
                        ids.push(id.to_owned());
                    }
                }
            }
            range => t.ranges.push((column, range.clone(), id.to_owned())),
        }
        for key in held {
            t.holding.entry(key).or_default().push(id.to_owned());
        }
        t.subs.insert(id.to_owned());
    }

    /// Removes subscription `id`, whose result holds rows of the keys `held`.
    pub fn remove(&mut self, id: &str, route: &Route, held: impl Iterator<Item = Vec<u8>>) {
        let Some(t) = self.tables.get_mut(&route.table) else {
            return;
        };
        t.subs.remove(id);
        t.one_of.retain(|_, ids| {
            ids.retain(|i| i != id);
            !ids.is_empty()
        });
        t.ranges.retain(|(_, _, i)| i != id);
        for key in held {
            forget(&mut t.holding, &key, id);
        }
        if t.subs.is_empty() {
            self.tables.remove(&route.table);
        }
    }

    /// Keeps the rows `id` holds up to date with the events it produced.
    pub fn note_events(
        &mut self,
        id: &str,
        route: &Route,
        pk_columns: &[usize],
        events: &[ChangeEvent],
    ) {
        let Some(t) = self.tables.get_mut(&route.table) else {
            return;
        };
        for e in events {
            let key = codec::encode_columns(&e.cells, pk_columns);
            match e.kind {
                ChangeKind::Insert => t.holding.entry(key).or_default().push(id.to_owned()),
                ChangeKind::Delete => forget(&mut t.holding, &key, id),
                // Same key (a row's identity is its primary key), same holder.
                ChangeKind::Update => {}
            }
        }
    }

    /// The routed subscriptions of `table` that the changed rows `keys`
    /// concern, read in `conn`'s current transaction. `None` when the keys
    /// cannot be looked up (values JSON does not carry exactly): the
    /// caller treats every routed subscription of the table as concerned.
    pub fn concerned(
        &self,
        conn: &Connection,
        table: &Table,
        keys: &HashSet<Vec<u8>>,
        out: &mut Concerned,
    ) -> Option<rusqlite::Result<()>> {
        let t = self.tables.get(table)?;
        let mut note = |id: &String, key: &Vec<u8>| {
            out.entry(id.clone()).or_default().insert(key.clone());
        };
        for key in keys {
            for id in t.holding.get(key).into_iter().flatten() {
                note(id, key);
            }
        }
        let json = crate::plan::keys_as_json(keys, t.pk.len())?;
        let sql = t.fetch_sql(table);
        Some((|| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query([json])?;
            let width = t.pk.len();
            let mut lookup = (0, Vec::new());
            while let Some(row) = rows.next()? {
                let pk = (0..width)
                    .map(|i| row.get::<_, Value>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let key = codec::encode(&pk);
                for c in 0..t.columns.len() {
                    let v: Value = row.get(width + c)?;
                    if matches!(v, Value::Null) {
                        continue;
                    }
                    lookup.0 = c;
                    lookup.1 = codec::encode(std::slice::from_ref(&normalized(&v)));
                    for id in t.one_of.get(&lookup).into_iter().flatten() {
                        note(id, &key);
                    }
                    for (_, range, id) in t.ranges.iter().filter(|r| r.0 == c) {
                        if range.holds(&v) {
                            note(id, &key);
                        }
                    }
                }
            }
            Ok(())
        })())
    }
}

impl TableRouting {
    /// Reads the primary key and the constrained columns of the rows whose
    /// keys are bound as one JSON array (`json_each`): one text per table
    /// and set of columns, prepared once.
    fn fetch_sql(&self, table: &Table) -> String {
        let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
        let pk: Vec<String> = self.pk.iter().map(|c| quote(c)).collect();
        let cols: Vec<String> = self.columns.iter().map(|c| quote(c)).collect();
        let picks: Vec<String> = (0..pk.len())
            .map(|i| format!("json_extract(value, '$[{i}]')"))
            .collect();
        let schema = match table.0 {
            patina_node::DbKind::Regional => "main",
            patina_node::DbKind::Global => "global",
        };
        let mut q = format!("SELECT {}", pk.join(", "));
        for c in &cols {
            let _ = write!(q, ", {c}");
        }
        let _ = write!(
            q,
            " FROM \"{schema}\".{} WHERE ({}) IN (SELECT {} FROM json_each(?1))",
            quote(&table.1),
            pk.join(", "),
            picks.join(", ")
        );
        q
    }
}

fn forget(holding: &mut HashMap<Vec<u8>, Vec<String>>, key: &[u8], id: &str) {
    if let Some(ids) = holding.get_mut(key) {
        if let Some(at) = ids.iter().position(|i| i == id) {
            ids.swap_remove(at);
        }
        if ids.is_empty() {
            holding.remove(key);
        }
    }
}
