//! The diff core, as plain values: a subscription's current result (rows
//! by identity, each with its stable row id) and the change events a new
//! result produces. No SQLite, no threads; see the unit tests.

use std::collections::HashMap;

use patina_crr::Value;

use super::codec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Insert => "insert",
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
        }
    }

    pub(crate) fn code(self) -> i64 {
        match self {
            ChangeKind::Insert => 0,
            ChangeKind::Update => 1,
            ChangeKind::Delete => 2,
        }
    }

    pub(crate) fn from_code(code: i64) -> Option<ChangeKind> {
        match code {
            0 => Some(ChangeKind::Insert),
            1 => Some(ChangeKind::Update),
            2 => Some(ChangeKind::Delete),
            _ => None,
        }
    }
}

/// One change of a subscription's result. A delete carries the row's last
/// cells.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    pub kind: ChangeKind,
    pub row_id: u64,
    pub cells: Vec<Value>,
    pub change_id: u64,
}

/// A row's identity: its key's bytes and, when a result holds the same key
/// more than once, its occurrence (0, 1, … in result order).
pub(crate) type RowKey = (Vec<u8>, u32);

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub id: u64,
    pub cells: Vec<Value>,
}

/// The current result of one subscription.
#[derive(Debug, Clone)]
pub(crate) struct ResultState {
    /// Result columns forming the key; empty = the whole row.
    key_columns: Vec<usize>,
    rows: HashMap<RowKey, Row>,
    next_row_id: u64,
    last_change_id: u64,
}

impl ResultState {
    pub fn new(key_columns: Vec<usize>) -> ResultState {
        ResultState {
            key_columns,
            rows: HashMap::new(),
            next_row_id: 1,
            last_change_id: 0,
        }
    }

    /// A new subscription's state: `result` with row ids 1, 2, … and no
    /// change yet.
    pub fn initial(key_columns: Vec<usize>, result: Vec<Vec<Value>>) -> ResultState {
        let mut state = ResultState::new(key_columns);
        state.apply_full(result);
        state.last_change_id = 0;
        state
    }

    /// Rebuilds a state from stored rows `(row_id, cells)`. Among rows of
    /// the same key, occurrences follow row ids (a later occurrence is
    /// always inserted after the earlier ones, and removed first).
    pub fn restore(
        key_columns: Vec<usize>,
        mut rows: Vec<(u64, Vec<Value>)>,
        next_row_id: u64,
        last_change_id: u64,
    ) -> ResultState {
        rows.sort_unstable_by_key(|(id, _)| *id);
        let mut state = ResultState::new(key_columns);
        let mut seen: HashMap<Vec<u8>, u32> = HashMap::new();
        for (id, cells) in rows {
            let key = state.key_of(&cells);
            let occ = seen.entry(key.clone()).or_default();
            state.rows.insert((key, *occ), Row { id, cells });
            *occ += 1;
        }
        state.next_row_id = next_row_id.max(1);
        state.last_change_id = last_change_id;
        state
    }

    pub fn last_change_id(&self) -> u64 {
        self.last_change_id
    }

    pub fn next_row_id(&self) -> u64 {
        self.next_row_id
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// The rows, by row id.
    pub fn snapshot(&self) -> Vec<(u64, Vec<Value>)> {
        let mut rows: Vec<_> = self
            .rows
            .values()
            .map(|r| (r.id, r.cells.clone()))
            .collect();
        rows.sort_unstable_by_key(|(id, _)| *id);
        rows
    }

    /// The rows, in no order (for storing).
    pub fn rows(&self) -> impl Iterator<Item = &Row> {
        self.rows.values()
    }

    fn key_of(&self, cells: &[Value]) -> Vec<u8> {
        if self.key_columns.is_empty() {
            codec::encode(cells)
        } else {
            codec::encode_columns(cells, &self.key_columns)
        }
    }

    /// `result` is the whole new result: every row not in it is deleted.
    pub fn apply_full(&mut self, result: Vec<Vec<Value>>) -> Vec<ChangeEvent> {
        let mut old = std::mem::take(&mut self.rows);
        let mut seen: HashMap<Vec<u8>, u32> = HashMap::with_capacity(result.len());
        let mut events = Vec::new();
        for cells in result {
            let key = self.key_of(&cells);
            let occ = seen.entry(key.clone()).or_default();
            let row_key = (key, *occ);
            *occ += 1;
            let row = self.upsert(old.remove(&row_key), cells, &mut events);
            self.rows.insert(row_key, row);
        }
        let mut gone: Vec<Row> = old.into_values().collect();
        gone.sort_unstable_by_key(|r| r.id);
        for row in gone {
            self.push(&mut events, ChangeKind::Delete, row.id, row.cells);
        }
        events
    }

    /// `result` holds the current rows of the scope (the rows whose key
    /// `in_scope` accepts); rows out of scope are untouched. `None` (and
    /// nothing changed) when identities are ambiguous — a key twice in the
    /// result or an in-scope row stored as a duplicate: run
    /// [`apply_full`](Self::apply_full) instead.
    pub fn apply_scoped(
        &mut self,
        in_scope: impl Fn(&[Value]) -> bool,
        result: Vec<Vec<Value>>,
    ) -> Option<Vec<ChangeEvent>> {
        let mut keys = HashMap::with_capacity(result.len());
        for (i, cells) in result.iter().enumerate() {
            if keys.insert(self.key_of(cells), i).is_some() {
                return None;
            }
        }
        let mut scoped: Vec<RowKey> = Vec::new();
        for (key, row) in &self.rows {
            if in_scope(&row.cells) {
                if key.1 != 0 {
                    return None;
                }
                scoped.push(key.clone());
            }
        }
        let mut gone = Vec::new();
        for key in scoped {
            if !keys.contains_key(&key.0) {
                if let Some(row) = self.rows.remove(&key) {
                    gone.push(row);
                }
            }
        }
        let mut events = Vec::new();
        for cells in result {
            let row_key = (self.key_of(&cells), 0);
            let old = self.rows.remove(&row_key);
            let row = self.upsert(old, cells, &mut events);
            self.rows.insert(row_key, row);
        }
        gone.sort_unstable_by_key(|r| r.id);
        for row in gone {
            self.push(&mut events, ChangeKind::Delete, row.id, row.cells);
        }
        Some(events)
    }

    fn upsert(
        &mut self,
        old: Option<Row>,
        cells: Vec<Value>,
        events: &mut Vec<ChangeEvent>,
    ) -> Row {
        match old {
            Some(row) if row.cells == cells => row,
            Some(row) => {
                self.push(events, ChangeKind::Update, row.id, cells.clone());
                Row { id: row.id, cells }
            }
            None => {
                let id = self.next_row_id;
                self.next_row_id += 1;
                self.push(events, ChangeKind::Insert, id, cells.clone());
                Row { id, cells }
            }
        }
    }

    fn push(
        &mut self,
        events: &mut Vec<ChangeEvent>,
        kind: ChangeKind,
        row_id: u64,
        cells: Vec<Value>,
    ) {
        self.last_change_id += 1;
        events.push(ChangeEvent {
            kind,
            row_id,
            cells,
            change_id: self.last_change_id,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, v: &str) -> Vec<Value> {
        vec![Value::Integer(id), Value::Text(v.into())]
    }

    fn kinds(events: &[ChangeEvent]) -> Vec<(ChangeKind, u64, u64)> {
        events
            .iter()
            .map(|e| (e.kind, e.row_id, e.change_id))
            .collect()
    }

    #[test]
    fn full_diff_inserts_updates_deletes_with_contiguous_ids() {
        use ChangeKind::*;
        let mut s = ResultState::new(vec![0]);
        let e = s.apply_full(vec![row(1, "a"), row(2, "b")]);
        assert_eq!(kinds(&e), [(Insert, 1, 1), (Insert, 2, 2)]);
        let e = s.apply_full(vec![row(2, "B"), row(3, "c")]);
        assert_eq!(kinds(&e), [(Update, 2, 3), (Insert, 3, 4), (Delete, 1, 5)]);
        assert_eq!(e[2].cells, row(1, "a"), "a delete carries the last values");
        assert!(s.apply_full(vec![row(3, "c"), row(2, "B")]).is_empty());
        assert_eq!(s.snapshot(), vec![(2, row(2, "B")), (3, row(3, "c"))]);
        assert_eq!(s.last_change_id(), 5);
    }

    #[test]
    fn duplicate_keys_are_told_apart_by_occurrence() {
        use ChangeKind::*;
        let mut s = ResultState::new(vec![]);
        let e = s.apply_full(vec![row(1, "a"), row(1, "a")]);
        assert_eq!(kinds(&e), [(Insert, 1, 1), (Insert, 2, 2)]);
        let e = s.apply_full(vec![row(1, "a")]);
        assert_eq!(kinds(&e), [(Delete, 2, 3)]);
    }

    #[test]
    fn scoped_diff_touches_only_the_scope() {
        use ChangeKind::*;
        let mut s = ResultState::new(vec![0]);
        s.apply_full(vec![row(1, "a"), row(2, "b"), row(3, "c")]);
        let scope = |cells: &[Value]| matches!(cells[0], Value::Integer(2) | Value::Integer(4));
        let e = s.apply_scoped(scope, vec![row(4, "d")]).unwrap();
        assert_eq!(kinds(&e), [(Insert, 4, 4), (Delete, 2, 5)]);
        assert_eq!(s.len(), 3);
        // A key twice in a scoped result: refused, nothing changed.
        assert!(s
            .apply_scoped(scope, vec![row(4, "x"), row(4, "y")])
            .is_none());
        assert_eq!(s.last_change_id(), 5);
    }

    #[test]
    fn restore_keeps_ids_and_identities() {
        use ChangeKind::*;
        let mut s = ResultState::new(vec![0]);
        s.apply_full(vec![row(1, "a"), row(2, "b")]);
        let stored: Vec<_> = s.rows().map(|r| (r.id, r.cells.clone())).collect();
        let mut r = ResultState::restore(vec![0], stored, s.next_row_id(), s.last_change_id());
        let e = r.apply_full(vec![row(2, "B"), row(5, "e")]);
        assert_eq!(kinds(&e), [(Update, 2, 3), (Insert, 3, 4), (Delete, 1, 5)]);
    }
}
