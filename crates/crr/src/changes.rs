//! Reading changes: the current clock state as cr-sqlite's `crsql_changes`
//! shows it (crr-model.md 6) — one change per clock entry, with the column's
//! current value and the row's current causal length.

use std::collections::HashMap;

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::clock::{Entry, RowClock};
use crate::error::{CrrError, Result};
use crate::schema::SENTINEL;
use crate::store::{load_clock, CrrTable, Sites};
use crate::{pk, versions, SiteId, Value};

/// One change: a clock entry and what it says about one cell (or, for the
/// sentinel `cid = "-1"`, about the row's existence).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub table: String,
    /// The packed primary key (see [`crate::pk`]).
    pub pk: Vec<u8>,
    /// A column name, or `"-1"` for the row's sentinel.
    pub cid: String,
    /// The column's value; NULL for a sentinel.
    pub val: Value,
    pub col_version: i64,
    pub db_version: i64,
    pub site_id: SiteId,
    /// The row's causal length: odd = alive, even = deleted.
    pub cl: i64,
    pub seq: i64,
}

impl Change {
    pub fn is_sentinel(&self) -> bool {
        self.cid == SENTINEL
    }
}

/// Which entries to read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Filter {
    /// Only entries with db_version > `after`.
    pub after: u64,
    /// And db_version <= `up_to`.
    pub up_to: u64,
    /// Only this site's entries.
    pub only: Option<u32>,
    /// Not this site's entries.
    pub exclude: Option<u32>,
}

pub(crate) fn read(
    conn: &Connection,
    tables: &HashMap<u32, CrrTable>,
    sites: &Sites,
    filter: Filter,
) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    for site in 0..sites.len() as u32 {
        if filter.only.is_some_and(|o| o != site) || filter.exclude == Some(site) {
            continue;
        }
        for rows in versions::rows_of(conn, site, filter.after, filter.up_to)? {
            let table = tables.get(&rows.tbl).ok_or_else(|| {
                CrrError::Corrupt(format!("version index names unknown table id {}", rows.tbl))
            })?;
            for pk in &rows.pks {
                let Some(clock) = load_clock(conn, table, pk)? else {
                    continue;
                };
                let wanted = |e: &Entry| e.site == site && e.db_version == rows.db_version;
                emit_row(conn, table, sites, pk, &clock, wanted, &mut out)?;
            }
        }
    }
    out.sort_by_key(|c| (c.db_version, c.seq));
    Ok(out)
}

/// The changes `site` made under `db_version` in `rows` (keys and clocks
/// a flush just wrote), ordered by seq.
pub(crate) fn of_rows(
    conn: &Connection,
    tables: &HashMap<u32, CrrTable>,
    sites: &Sites,
    rows: &[((u32, Vec<u8>), RowClock)],
    site: u32,
    db_version: u64,
) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    for ((tbl, pk), clock) in rows {
        let table = tables.get(tbl).ok_or_else(|| {
            CrrError::Corrupt(format!("a flushed clock names unknown table id {tbl}"))
        })?;
        let wanted = |e: &Entry| e.site == site && e.db_version == db_version;
        emit_row(conn, table, sites, pk, clock, wanted, &mut out)?;
    }
    out.sort_by_key(|c| c.seq);
    Ok(out)
}

fn emit_row(
    conn: &Connection,
    table: &CrrTable,
    sites: &Sites,
    pk: &[u8],
    clock: &RowClock,
    wanted: impl Fn(&Entry) -> bool,
    out: &mut Vec<Change>,
) -> Result<()> {
    // Counters are at most i64::MAX (RowClock::decode checks): the casts
    // are exact.
    let change = |cid: &str, val: Value, e: &Entry| -> Result<Change> {
        Ok(Change {
            table: table.info.name.clone(),
            pk: pk.to_vec(),
            cid: cid.to_owned(),
            val,
            col_version: e.col_version as i64,
            db_version: e.db_version as i64,
            site_id: sites.id(e.site)?,
            cl: clock.cl as i64,
            seq: e.seq as i64,
        })
    };
    if let Some(e) = clock.sentinel.as_ref().filter(|e| wanted(e)) {
        out.push(change(SENTINEL, Value::Null, e)?);
    }
    if !clock.cols.iter().flatten().any(&wanted) {
        return Ok(());
    }
    let values = read_values(conn, table, pk)?;
    for (slot, entry) in clock.cols.iter().enumerate() {
        if let Some(e) = entry.as_ref().filter(|e| wanted(e)) {
            let val = values.as_ref().map_or(Value::Null, |v| v[slot].clone());
            let name = &table.info.columns[table.info.non_pk[slot]].name;
            out.push(change(name, val, e)?);
        }
    }
    Ok(())
}

/// The current values of a row's replicated columns; `None` if absent.
pub(crate) fn read_values(
    conn: &Connection,
    table: &CrrTable,
    pk: &[u8],
) -> Result<Option<Vec<Value>>> {
    if table.slots() == 0 {
        return Ok(Some(Vec::new()));
    }
    let pk_values = pk::unpack(pk)?;
    let mut stmt = conn.prepare_cached(&table.sql.select_values)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(pk_values.iter()))?;
    match rows.next()? {
        Some(row) => Ok(Some(
            (0..table.slots())
                .map(|i| row.get::<_, Value>(i))
                .collect::<rusqlite::Result<_>>()?,
        )),
        None => Ok(None),
    }
}

/// Where the entries of one version of one site are, by seq: a key per row
/// and, per entry, its seq and row. Built once per version so that pages
/// of its changes (a seq span each) are read without scanning every row
/// again: a huge transaction is served and broadcast in bounded pieces.
/// It may go stale as later writes replace entries; reading a page checks
/// each row's clock, so a stale map only finds less.
#[derive(Debug, Clone)]
pub struct VersionSeqs {
    pub site: SiteId,
    pub version: u64,
    rows: Vec<(u32, Vec<u8>)>,
    /// (seq, index into `rows`), ascending.
    entries: Vec<(u64, u32)>,
}

impl VersionSeqs {
    /// Entries of the version still held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The highest seq still held (0 when none is).
    pub fn last_seq(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.0)
    }

    /// The seq `count` entries after the first entry at or above `from`
    /// (or past the last one): where a page of `count` entries starting at
    /// `from` ends, exclusive.
    pub fn seq_after(&self, from: u64, count: usize) -> Option<u64> {
        let at = self.entries.partition_point(|e| e.0 < from);
        self.entries.get(at + count).map(|e| e.0)
    }
}

pub(crate) fn version_seqs(
    conn: &Connection,
    tables: &HashMap<u32, CrrTable>,
    site: Option<u32>,
    site_id: SiteId,
    version: u64,
) -> Result<VersionSeqs> {
    let mut out = VersionSeqs {
        site: site_id,
        version,
        rows: Vec::new(),
        entries: Vec::new(),
    };
    let Some(site) = site else {
        return Ok(out);
    };
    for rows in versions::rows_of(conn, site, version.saturating_sub(1), version)? {
        let table = tables.get(&rows.tbl).ok_or_else(|| {
            CrrError::Corrupt(format!("version index names unknown table id {}", rows.tbl))
        })?;
        for pk in rows.pks {
            let Some(clock) = load_clock(conn, table, &pk)? else {
                continue;
            };
            let row = out.rows.len() as u32;
            let wanted = |e: &&Entry| e.site == site && e.db_version == version;
            let seqs = clock.sentinel.iter().chain(clock.cols.iter().flatten());
            let before = out.entries.len();
            out.entries
                .extend(seqs.filter(wanted).map(|e| (e.seq, row)));
            if out.entries.len() > before {
                out.rows.push((rows.tbl, pk));
            }
        }
    }
    out.entries.sort_unstable();
    out.rows.shrink_to_fit();
    Ok(out)
}

/// The changes of `seqs`' version whose seq is in `span`, ordered by seq.
pub(crate) fn changes_in(
    conn: &Connection,
    tables: &HashMap<u32, CrrTable>,
    sites: &Sites,
    seqs: &VersionSeqs,
    span: std::ops::RangeInclusive<u64>,
) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    let Some(site) = sites.ordinal(&seqs.site) else {
        return Ok(out);
    };
    let from = seqs.entries.partition_point(|e| e.0 < *span.start());
    let to = seqs.entries.partition_point(|e| e.0 <= *span.end());
    let mut rows: Vec<u32> = seqs.entries[from..to.max(from)]
        .iter()
        .map(|e| e.1)
        .collect();
    rows.sort_unstable();
    rows.dedup();
    for row in rows {
        let (tbl, pk) = &seqs.rows[row as usize];
        let table = tables.get(tbl).ok_or_else(|| {
            CrrError::Corrupt(format!("version index names unknown table id {tbl}"))
        })?;
        let Some(clock) = load_clock(conn, table, pk)? else {
            continue;
        };
        let wanted =
            |e: &Entry| e.site == site && e.db_version == seqs.version && span.contains(&e.seq);
        emit_row(conn, table, sites, pk, &clock, wanted, &mut out)?;
    }
    out.sort_by_key(|c| c.seq);
    Ok(out)
}
