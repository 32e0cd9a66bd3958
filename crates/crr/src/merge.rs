//! Merging remote changes (crr-model.md 7): per change, a decision against
//! the row's clock; per row, one write of the base table.

use std::cmp::Ordering;
use std::collections::HashMap;

use rusqlite::Connection;

use crate::affinity::{self, Affinity};
use crate::changes::{read_values, Change};
use crate::clock::{Entry, RowClock};
use crate::drops::Dropped;
use crate::error::{CrrError, Result};
use crate::schema::quote_ident;
use crate::schema::SENTINEL;
use crate::store::{table_of, ClockCache, CrrTable, Sites};
use crate::value::{merge_order, same_value};
use crate::{pk, Value};

/// What a merge did with each change of a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Indexes (into the batch) of the changes that won: they changed the
    /// table or the clocks. Subscriptions are fed from these.
    pub won: Vec<usize>,
    /// Changes that lost to a local entry of the same causal length.
    pub lost: usize,
    /// Changes of an older causal length, or equal alive sentinels.
    pub ignored: usize,
    /// Changes naming a table or column a destructive schema change
    /// dropped here: not looked at beyond their names.
    pub dropped: usize,
}

/// Counters from peers above this are refused: local writes add to them,
/// and the result must stay an SQLite integer.
const MAX_REMOTE_COUNTER: i64 = 1 << 62;

/// A change checked against the schema, ready to merge.
pub(crate) struct Checked<'a> {
    change: &'a Change,
    /// Its index in the batch (dropped changes leave gaps).
    index: usize,
    /// Index into [`CheckedBatch::rows`].
    row: usize,
    /// `None` for the sentinel.
    slot: Option<usize>,
    site: u32,
    /// The value as SQLite will store it (NaN is NULL).
    val: Value,
}

/// A row named by one or more consecutive changes.
pub(crate) struct CheckedRow {
    tbl: u32,
    /// The pk re-packed canonically: a non-minimal encoding names the same
    /// row as the minimal one.
    pk: Vec<u8>,
    pk_values: Vec<Value>,
}

pub(crate) struct CheckedBatch<'a> {
    changes: Vec<Checked<'a>>,
    rows: Vec<CheckedRow>,
    /// Changes left out because they name something dropped.
    dropped: usize,
}

/// Checks every change of a batch before anything is written; the first bad
/// change fails the whole batch. Changes naming a table or column in
/// `dropped` (and unknown here) are left out and counted.
pub(crate) fn check<'a>(
    conn: &Connection,
    tables: &HashMap<u32, CrrTable>,
    by_name: &HashMap<String, u32>,
    dropped: &Dropped,
    sites: &mut Sites,
    batch: &'a [Change],
) -> Result<CheckedBatch<'a>> {
    let mut out = CheckedBatch {
        changes: Vec::with_capacity(batch.len()),
        rows: Vec::new(),
        dropped: 0,
    };
    // The last change checked: a dropped change between two of one row's
    // changes must not start a new row, nor end one.
    let mut previous: Option<&Change> = None;
    for (index, change) in batch.iter().enumerate() {
        if !dropped.is_empty() && is_dropped(tables, by_name, dropped, change) {
            out.dropped += 1;
            continue;
        }
        let bad = |reason: String| CrrError::BadChange {
            index,
            table: change.table.clone(),
            cid: change.cid.clone(),
            reason,
        };
        let same_row_as_previous =
            previous.is_some_and(|prev| prev.table == change.table && prev.pk == change.pk);
        if !same_row_as_previous {
            out.rows
                .push(check_row(conn, tables, by_name, change).map_err(bad)?);
        }
        previous = Some(change);
        let row = out.rows.len() - 1;
        let table = table_of(tables, out.rows[row].tbl)?;
        out.changes
            .push(check_change(table, sites, change, index, row).map_err(bad)?);
    }
    Ok(out)
}

/// Whether `change` names a dropped table, or a dropped column its table
/// does not have again.
fn is_dropped(
    tables: &HashMap<u32, CrrTable>,
    by_name: &HashMap<String, u32>,
    dropped: &Dropped,
    change: &Change,
) -> bool {
    if !dropped.contains(&change.table, &change.cid) {
        return false;
    }
    let table = by_name.get(&change.table).and_then(|id| tables.get(id));
    match table {
        None => true,
        Some(t) => !change.is_sentinel() && t.info.slot_of(&change.cid).is_none(),
    }
}

fn check_row(
    conn: &Connection,
    tables: &HashMap<u32, CrrTable>,
    by_name: &HashMap<String, u32>,
    change: &Change,
) -> Result<CheckedRow, String> {
    let tbl = *by_name
        .get(&change.table)
        .ok_or_else(|| "unknown table: this database has no CRR table of that name".to_owned())?;
    let table = table_of(tables, tbl).map_err(|e| e.to_string())?;
    let pk_values = pk::unpack(&change.pk).map_err(|e| e.to_string())?;
    if pk_values.len() != table.info.pk.len() {
        return Err(format!(
            "the packed pk holds {} values, the table's primary key has {} columns",
            pk_values.len(),
            table.info.pk.len()
        ));
    }
    for (value, column) in pk_values.iter().zip(table.info.pk_columns()) {
        let aff = affinity::of_decl_type(&column.decl_type);
        let stored = affinity::apply(conn, aff, value).map_err(|e| e.to_string())?;
        let unchanged = same_value(stored.as_ref(), value.as_ref())
            && !(aff == Affinity::Integer
                && !matches!(value, Value::Integer(_))
                && is_rowid_alias(table));
        if matches!(value, Value::Null) || !unchanged {
            return Err(format!(
                "datatype mismatch: pk column {:?} ({}) cannot hold the {} value {:?} unchanged",
                column.name,
                column.decl_type,
                value.type_name(),
                value
            ));
        }
    }
    let pk = pk::pack_values(&pk_values).map_err(|e| e.to_string())?;
    Ok(CheckedRow { tbl, pk, pk_values })
}

fn check_change<'a>(
    table: &CrrTable,
    sites: &mut Sites,
    change: &'a Change,
    index: usize,
    row: usize,
) -> Result<Checked<'a>, String> {
    let slot = match change.cid.as_str() {
        SENTINEL => None,
        cid => Some(table.info.slot_of(cid).ok_or_else(|| {
            "unknown column: the table has no replicated non-primary-key column of that name"
                .to_owned()
        })?),
    };
    let counters_ok = (1..=MAX_REMOTE_COUNTER).contains(&change.cl)
        && (0..=MAX_REMOTE_COUNTER).contains(&change.col_version)
        && change.db_version >= 1
        && change.seq >= 0;
    if !counters_ok {
        return Err(format!(
            "impossible clock: cl {} (1 to 2^62), col_version {} (0 to 2^62), db_version {} (≥ 1), seq {} (≥ 0)",
            change.cl, change.col_version, change.db_version, change.seq
        ));
    }
    let site = match sites.ordinal(&change.site_id) {
        Some(0) if change.db_version as u64 > sites.db_version(0) => {
            return Err(format!(
                "carries this replica's own site id with db_version {} above its counter {}",
                change.db_version,
                sites.db_version(0)
            ))
        }
        Some(o) => o,
        None => sites.ordinal_or_insert(change.site_id),
    };
    let val = match &change.val {
        // SQLite stores a NaN as NULL; comparing the NaN would win forever.
        Value::Real(f) if f.is_nan() => Value::Null,
        v => v.clone(),
    };
    Ok(Checked {
        change,
        index,
        row,
        slot,
        site,
        val,
    })
}

fn is_rowid_alias(table: &CrrTable) -> bool {
    table.info.pk.len() == 1
        && table
            .info
            .pk_columns()
            .all(|c| c.decl_type.eq_ignore_ascii_case("INTEGER"))
}

/// What a group of changes to one row does to the base table.
#[derive(Default)]
struct PendingRow {
    /// The row is deleted first (a winning delete).
    delete_first: bool,
    /// After this group the row exists (`Some(true)`) or not.
    alive: Option<bool>,
    sets: Vec<Option<Value>>,
    /// The row's values before the group, read on first need.
    stored: Option<Option<Vec<Value>>>,
}

impl PendingRow {
    fn delete(&mut self) {
        self.delete_first = true;
        self.alive = Some(false);
        self.sets.iter_mut().for_each(|s| *s = None);
    }

    /// The local value of a column, as the merge compares it.
    fn local_value(
        &mut self,
        conn: &Connection,
        table: &CrrTable,
        pk: &[u8],
        slot: usize,
    ) -> Result<Value> {
        if let Some(v) = &self.sets[slot] {
            return Ok(v.clone());
        }
        if self.stored.is_none() {
            self.stored = Some(read_values(conn, table, pk)?);
        }
        Ok(self
            .stored
            .as_ref()
            .and_then(|row| row.as_ref())
            .map_or(Value::Null, |row| row[slot].clone()))
    }

    fn flush(
        &self,
        conn: &Connection,
        table: &CrrTable,
        pk_values: &[Value],
        upserts: &mut UpsertSql,
    ) -> Result<()> {
        if self.delete_first {
            conn.prepare_cached(&table.sql.delete_row)?
                .execute(rusqlite::params_from_iter(pk_values))?;
        }
        if self.alive != Some(true) {
            return Ok(());
        }
        let slots: Vec<usize> = (0..self.sets.len())
            .filter(|&s| self.sets[s].is_some())
            .collect();
        let sql = upserts.get(table, slots);
        let params = pk_values.iter().chain(self.sets.iter().flatten());
        conn.prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(params))?;
        Ok(())
    }
}

/// The upsert statements of one batch, by table and set of columns written.
#[derive(Default)]
struct UpsertSql(HashMap<(u32, Vec<usize>), String>);

impl UpsertSql {
    /// `INSERT INTO t (pk…, cols…) VALUES (…) ON CONFLICT (pk…) DO UPDATE SET
    /// col = excluded.col…` — never INSERT OR REPLACE, which would delete
    /// the row and lose the columns not written.
    fn get(&mut self, table: &CrrTable, slots: Vec<usize>) -> &str {
        self.0
            .entry((table.id, slots))
            .or_insert_with_key(|(_, slots)| {
                let pk: Vec<String> = table
                    .info
                    .pk_columns()
                    .map(|c| quote_ident(&c.name))
                    .collect();
                let cols: Vec<String> = slots
                    .iter()
                    .map(|&s| quote_ident(&table.info.columns[table.info.non_pk[s]].name))
                    .collect();
                let all: Vec<&String> = pk.iter().chain(&cols).collect();
                let marks: Vec<String> = (1..=all.len()).map(|i| format!("?{i}")).collect();
                let action = if cols.is_empty() {
                    "DO NOTHING".to_owned()
                } else {
                    let sets: Vec<String> =
                        cols.iter().map(|n| format!("{n} = excluded.{n}")).collect();
                    format!("DO UPDATE SET {}", sets.join(", "))
                };
                format!(
                    "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {action}",
                    quote_ident(&table.info.name),
                    all.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    marks.join(", "),
                    pk.join(", ")
                )
            })
    }
}

enum Outcome {
    Won,
    Lost,
    Ignored,
}

/// Merges a checked batch; the caller owns the transaction.
pub(crate) fn merge(
    conn: &Connection,
    tables: &HashMap<u32, CrrTable>,
    sites: &mut Sites,
    batch: &CheckedBatch<'_>,
) -> Result<MergeReport> {
    let mut report = MergeReport {
        dropped: batch.dropped,
        ..MergeReport::default()
    };
    let mut cache = ClockCache::default();
    let mut upserts = UpsertSql::default();
    for group in batch.changes.chunk_by(|a, b| a.row == b.row) {
        let first = &group[0];
        let row = &batch.rows[first.row];
        let start = first.index;
        merge_row(
            conn,
            table_of(tables, row.tbl)?,
            sites,
            row,
            group,
            (&mut cache, &mut upserts),
            &mut report,
        )
        .map_err(|e| {
            if refused_by_constraints(&e) {
                CrrError::RowRefused {
                    index: start,
                    table: first.change.table.clone(),
                    reason: e.to_string(),
                }
            } else {
                CrrError::BadChange {
                    index: start,
                    table: first.change.table.clone(),
                    cid: first.change.cid.clone(),
                    reason: format!("writing the row failed: {e}"),
                }
            }
        })?;
    }
    // The merge never assumes keys new, so the flush cannot misspeculate.
    cache.flush(conn, tables, false).map_err(|e| match e {
        Err(e) => e,
        Ok(_) => CrrError::Corrupt("merge flushed an assumed key".into()),
    })?;
    sites.save(conn)?;
    Ok(report)
}

/// Whether writing a row failed because this database's constraints
/// refuse its values (and would again), not because the change is
/// malformed or the disk failed.
fn refused_by_constraints(e: &CrrError) -> bool {
    use rusqlite::ErrorCode;
    matches!(e, CrrError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
        if matches!(f.code, ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch | ErrorCode::TooBig))
}

#[allow(clippy::too_many_arguments)]
fn merge_row(
    conn: &Connection,
    table: &CrrTable,
    sites: &mut Sites,
    row: &CheckedRow,
    group: &[Checked<'_>],
    (cache, upserts): (&mut ClockCache, &mut UpsertSql),
    report: &mut MergeReport,
) -> Result<()> {
    let cached = cache.get(conn, table, &row.pk)?;
    let mut pending = PendingRow {
        sets: vec![None; table.slots()],
        ..PendingRow::default()
    };
    for c in group {
        sites.observe(c.site, c.change.db_version as u64);
        match decide(conn, table, sites, row, &mut cached.clock, &mut pending, c)? {
            Outcome::Won => {
                cached.dirty = true;
                report.won.push(c.index);
            }
            Outcome::Lost => report.lost += 1,
            Outcome::Ignored => report.ignored += 1,
        }
    }
    pending.flush(conn, table, &row.pk_values, upserts)
}

fn entry_of(c: &Checked<'_>, col_version: u64) -> Entry {
    Entry {
        col_version,
        db_version: c.change.db_version as u64,
        site: c.site,
        seq: c.change.seq as u64,
    }
}

/// Brings a row back at a higher causal length: older column clocks stay
/// as col_version-0 placeholders, values are kept.
fn resurrect(clock: &mut RowClock, pending: &mut PendingRow, c: &Checked<'_>) {
    let cl = c.change.cl as u64;
    clock
        .cols
        .iter_mut()
        .flatten()
        .for_each(|e| e.col_version = 0);
    clock.sentinel = Some(entry_of(c, cl));
    clock.cl = cl;
    pending.alive = Some(true);
}

/// crr-model.md 7, steps 2 to 5, in that order.
fn decide(
    conn: &Connection,
    table: &CrrTable,
    sites: &Sites,
    row: &CheckedRow,
    clock: &mut RowClock,
    pending: &mut PendingRow,
    c: &Checked<'_>,
) -> Result<Outcome> {
    let (local_cl, cl) = (clock.cl, c.change.cl as u64);
    if cl < local_cl {
        return Ok(Outcome::Ignored);
    }
    if cl % 2 == 0 {
        if cl == local_cl {
            let local_site = clock.sentinel.map(|s| sites.id(s.site)).transpose()?;
            if local_site.is_some_and(|s| c.change.site_id <= s) {
                return Ok(Outcome::Lost);
            }
            clock.sentinel = Some(entry_of(c, cl));
            return Ok(Outcome::Won);
        }
        clock.cl = cl;
        clock.sentinel = Some(entry_of(c, cl));
        clock.cols.iter_mut().for_each(|e| *e = None);
        pending.delete();
        return Ok(Outcome::Won);
    }
    let Some(slot) = c.slot else {
        if cl == local_cl {
            return Ok(Outcome::Ignored);
        }
        resurrect(clock, pending, c);
        return Ok(Outcome::Won);
    };
    if cl > local_cl && (local_cl > 0 || cl > 1) {
        resurrect(clock, pending, c);
    }
    let wins = cl > local_cl
        || local_cl == 0
        || column_wins(conn, table, sites, row, clock, pending, c, slot)?;
    if !wins {
        return Ok(Outcome::Lost);
    }
    clock.cols[slot] = Some(entry_of(c, c.change.col_version as u64));
    clock.cl = cl;
    pending.sets[slot] = Some(c.val.clone());
    pending.alive = Some(true);
    Ok(Outcome::Won)
}

/// Step 5a–d: an incoming column change against the local entry of the
/// same causal length.
#[allow(clippy::too_many_arguments)]
fn column_wins(
    conn: &Connection,
    table: &CrrTable,
    sites: &Sites,
    row: &CheckedRow,
    clock: &RowClock,
    pending: &mut PendingRow,
    c: &Checked<'_>,
    slot: usize,
) -> Result<bool> {
    let Some(local) = clock.cols[slot] else {
        return Ok(true);
    };
    match (c.change.col_version as u64).cmp(&local.col_version) {
        Ordering::Greater => return Ok(true),
        Ordering::Less => return Ok(false),
        Ordering::Equal => {}
    }
    let aff = affinity::of_decl_type(&table.info.columns[table.info.non_pk[slot]].decl_type);
    let theirs = affinity::apply(conn, aff, &c.val)?;
    let ours = affinity::apply(conn, aff, &pending.local_value(conn, table, &row.pk, slot)?)?;
    Ok(match merge_order(theirs.as_ref(), ours.as_ref()) {
        Ordering::Greater => true,
        Ordering::Less => false,
        // merge-equal-values: the larger site id takes the clock.
        Ordering::Equal => c.change.site_id > sites.id(local.site)?,
    })
}
