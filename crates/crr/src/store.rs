//! Patina's bookkeeping tables inside each CRR database, and the cache of
//! row clocks a transaction or merge batch works on.
//!
//! Layout (all names start with `crr_` or end with `__crr_clock`):
//! - `crr_sites(ordinal, site_id, db_version)`: ordinal 0 is this replica and
//!   its db_version counter; every other row is a remote site and the highest
//!   db_version seen from it (crr-model.md 8).
//! - `crr_tables(id, name)`: the CRR tables; `id` is stable.
//! - `crr_versions`, `crr_version_pks`: the version index (see `versions`).
//! - `"<table>__crr_clock"(pk, clock)`: one [`RowClock`] blob per primary key
//!   ever seen (keyed by the packed pk).

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, ToSql};

use crate::clock::RowClock;
use crate::error::{CrrError, Result};
use crate::fasthash::FastHashMap;
use crate::schema::{quote_ident, TableInfo};
use crate::versions::VersionDelta;
use crate::SiteId;

pub(crate) const BOOTSTRAP_SQL: &str = "
CREATE TABLE IF NOT EXISTS crr_sites(
    ordinal INTEGER PRIMARY KEY,
    site_id BLOB NOT NULL UNIQUE,
    db_version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS crr_tables(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
";

/// A CRR table as the engine uses it: its shape plus the SQL it runs on it,
/// built once (formatting SQL per row showed up in profiles).
#[derive(Debug, Clone)]
pub(crate) struct CrrTable {
    pub id: u32,
    pub info: TableInfo,
    pub sql: TableSql,
}

#[derive(Debug, Clone)]
pub(crate) struct TableSql {
    pub create_clock: String,
    pub select_clock: String,
    clock_table: String,
    pub delete_clock: String,
    /// The replicated non-pk columns of one row, by pk.
    pub select_values: String,
    pub delete_row: String,
}

impl TableSql {
    /// A multi-row clock write of `rows` rows: replacing, or (`only_new`)
    /// inserting only keys not stored yet.
    pub fn write_clocks(&self, rows: usize, only_new: bool) -> String {
        let values = vec!["(?, ?)"; rows].join(", ");
        if only_new {
            format!(
                "INSERT INTO {}(pk, clock) VALUES {values} ON CONFLICT(pk) DO NOTHING",
                self.clock_table
            )
        } else {
            format!(
                "INSERT OR REPLACE INTO {}(pk, clock) VALUES {values}",
                self.clock_table
            )
        }
    }
}

impl CrrTable {
    pub fn new(id: u32, info: TableInfo) -> Self {
        let pk_where = info
            .pk_columns()
            .enumerate()
            .map(|(i, c)| format!("{} = ?{}", quote_ident(&c.name), i + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        let clock = quote_ident(&format!("{}__crr_clock", info.name));
        let name = quote_ident(&info.name);
        let cols = info
            .non_pk_columns()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = TableSql {
            create_clock: format!(
                "CREATE TABLE IF NOT EXISTS {clock}(pk BLOB PRIMARY KEY NOT NULL, clock BLOB NOT NULL) WITHOUT ROWID"
            ),
            select_clock: format!("SELECT clock FROM {clock} WHERE pk = ?1"),
            clock_table: clock.clone(),
            delete_clock: format!("DELETE FROM {clock} WHERE pk = ?1"),
            select_values: format!("SELECT {cols} FROM {name} WHERE {pk_where}"),
            delete_row: format!("DELETE FROM {name} WHERE {pk_where}"),
        };
        CrrTable { id, info, sql }
    }

    pub fn slots(&self) -> usize {
        self.info.non_pk.len()
    }
}

/// Site ids by local ordinal, with the highest db_version seen from each.
#[derive(Debug, Clone)]
pub(crate) struct Sites {
    ids: Vec<SiteId>,
    by_id: HashMap<SiteId, u32>,
    db_versions: Vec<u64>,
    /// Ordinals whose db_version changed since the last `save`.
    dirty: Vec<u32>,
}

impl Sites {
    /// Loads the sites table, creating the local site (with `pinned` if
    /// given) on a fresh database.
    pub fn load_or_init(conn: &Connection, pinned: Option<SiteId>) -> Result<Sites> {
        let local: Option<Vec<u8>> = conn
            .query_row("SELECT site_id FROM crr_sites WHERE ordinal = 0", [], |r| {
                r.get(0)
            })
            .optional()?;
        match (local, pinned) {
            (None, pinned) => {
                let id = pinned.unwrap_or_else(SiteId::random);
                conn.execute(
                    "INSERT INTO crr_sites(ordinal, site_id, db_version) VALUES (0, ?1, 0)",
                    [&id.0[..]],
                )?;
            }
            (Some(stored), Some(pinned)) if stored != pinned.0 => {
                return Err(CrrError::Corrupt(format!(
                    "this database's site id is {}, not the requested {pinned}; a site id is fixed when the database is created",
                    hex::encode(&stored)
                )));
            }
            _ => {}
        }
        let mut stmt =
            conn.prepare("SELECT ordinal, site_id, db_version FROM crr_sites ORDER BY ordinal")?;
        let mut sites = Sites {
            ids: Vec::new(),
            by_id: HashMap::new(),
            db_versions: Vec::new(),
            dirty: Vec::new(),
        };
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (ordinal, id, version) = row?;
            let id = SiteId::from_slice(&id).ok_or_else(|| {
                CrrError::Corrupt(format!(
                    "crr_sites ordinal {ordinal} holds a site id that is not 16 bytes"
                ))
            })?;
            if ordinal as usize != sites.ids.len() {
                return Err(CrrError::Corrupt(format!(
                    "crr_sites ordinals are not contiguous at {ordinal}"
                )));
            }
            sites.by_id.insert(id, ordinal);
            sites.ids.push(id);
            sites.db_versions.push(version.max(0) as u64);
        }
        Ok(sites)
    }

    pub fn local(&self) -> SiteId {
        self.ids[0]
    }

    /// The site id of an ordinal read from a stored clock.
    pub fn id(&self, ordinal: u32) -> Result<SiteId> {
        self.ids.get(ordinal as usize).copied().ok_or_else(|| {
            CrrError::Corrupt(format!(
                "a stored clock names site ordinal {ordinal}, which crr_sites lacks"
            ))
        })
    }

    pub fn ordinal(&self, id: &SiteId) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// The ordinal of `id`, registering it (in memory; `save` persists) if new.
    pub fn ordinal_or_insert(&mut self, id: SiteId) -> u32 {
        if let Some(o) = self.by_id.get(&id) {
            return *o;
        }
        let o = self.ids.len() as u32;
        self.ids.push(id);
        self.by_id.insert(id, o);
        self.db_versions.push(0);
        self.dirty.push(o);
        o
    }

    pub fn db_version(&self, ordinal: u32) -> u64 {
        self.db_versions[ordinal as usize]
    }

    pub fn observe(&mut self, ordinal: u32, db_version: u64) {
        let slot = &mut self.db_versions[ordinal as usize];
        if db_version > *slot {
            *slot = db_version;
            self.dirty.push(ordinal);
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn all(&self) -> impl Iterator<Item = (SiteId, u64)> + '_ {
        self.ids
            .iter()
            .copied()
            .zip(self.db_versions.iter().copied())
    }

    pub fn save(&mut self, conn: &Connection) -> Result<()> {
        self.dirty.sort_unstable();
        self.dirty.dedup();
        let mut stmt = conn.prepare_cached(
            "INSERT INTO crr_sites(ordinal, site_id, db_version) VALUES (?1, ?2, ?3)
             ON CONFLICT(ordinal) DO UPDATE SET db_version = excluded.db_version",
        )?;
        for &o in &self.dirty {
            stmt.execute(params![
                o,
                &self.ids[o as usize].0[..],
                self.db_versions[o as usize] as i64
            ])?;
        }
        self.dirty.clear();
        Ok(())
    }
}

/// A row clock being worked on, with what was stored before.
pub(crate) struct CachedClock {
    pub clock: RowClock,
    pub stored_versions: Vec<(u32, u64)>,
    pub dirty: bool,
    /// Assumed never seen, without a lookup; checked when written.
    speculative: bool,
}

/// Rows per multi-row INSERT: one statement step per row dominated flush
/// time; 64 rows (128 parameters) per statement cut it by a third.
const ROWS_PER_INSERT: usize = 64;

/// Row clocks touched by one transaction or merge batch, written back at
/// its end: each clock is read and written once however often it changes.
/// A cache made with a spill bound writes its rows out and forgets them
/// whenever it holds that many, so a 100k-row transaction never holds
/// every row's clock at once (issue 15: the map and the rows' column clocks
/// were ≈ 34 MiB, the writer's peak at commit); a row touched again after
/// that is read back from the clock table, as written.
#[derive(Default)]
pub(crate) struct ClockCache {
    rows: FastHashMap<(u32, Vec<u8>), CachedClock>,
    /// Rows held at most before they are written out; 0: no bound.
    spill_at: usize,
    /// Keys an earlier attempt assumed new and found stored: always looked
    /// up. A set rather than rows loaded up front, because a spill would
    /// forget those rows and a later insert would assume the key again.
    known: FastHashMap<(u32, Vec<u8>), ()>,
    /// What the rows written out so far did: the version index's changes,
    /// the tables written, the keys assumed new but found stored.
    versions: VersionDelta,
    written: Vec<u32>,
    misses: Vec<(u32, Vec<u8>)>,
    spilled: bool,
}

/// Keys of which some were assumed new but found stored by a flush.
pub(crate) struct Misspeculated(pub Vec<(u32, Vec<u8>)>);

impl ClockCache {
    /// A cache for one local transaction of `rows` events at most, written
    /// out every `spill_at` rows (0: never), looking up the `known` keys
    /// instead of assuming them new.
    pub fn for_commit(
        rows: usize,
        spill_at: usize,
        known: impl IntoIterator<Item = (u32, Vec<u8>)>,
    ) -> Self {
        let mut cache = ClockCache {
            spill_at,
            known: known.into_iter().map(|k| (k, ())).collect(),
            ..ClockCache::default()
        };
        let bound = if spill_at == 0 {
            rows
        } else {
            rows.min(spill_at + 1)
        };
        cache.rows.reserve(bound);
        cache
    }

    pub fn get(
        &mut self,
        conn: &Connection,
        table: &CrrTable,
        pk: &[u8],
    ) -> Result<&mut CachedClock> {
        use std::collections::hash_map::Entry as Slot;
        match self.rows.entry((table.id, pk.to_vec())) {
            Slot::Occupied(e) => Ok(e.into_mut()),
            Slot::Vacant(v) => {
                let cached = match load_clock(conn, table, pk)? {
                    Some(clock) => CachedClock {
                        stored_versions: clock.versions(),
                        clock,
                        dirty: false,
                        speculative: false,
                    },
                    None => CachedClock::unseen(table, false),
                };
                Ok(v.insert(cached))
            }
        }
    }

    /// Like [`get`](Self::get), but a key not yet cached is assumed never
    /// seen instead of looked up. Right for the key of a local INSERT unless
    /// it was deleted before (a tombstone), or written out by a spill
    /// earlier in the transaction: [`flush`](Self::flush) detects that and
    /// the caller redoes the transaction's clocks with those keys `known`.
    pub fn get_assume_new(
        &mut self,
        conn: &Connection,
        table: &CrrTable,
        pk: &[u8],
    ) -> Result<&mut CachedClock> {
        if !self.known.is_empty() && self.known.contains_key(&(table.id, pk.to_vec())) {
            return self.get(conn, table, pk);
        }
        Ok(self
            .rows
            .entry((table.id, pk.to_vec()))
            .or_insert_with(|| CachedClock::unseen(table, true)))
    }

    /// Writes the rows out and forgets them once the cache holds more than
    /// its spill bound of them (so a spilled transaction changed more rows,
    /// and entries, than the bound). Only between events: a row being
    /// changed stays.
    pub fn spill_if_full(
        &mut self,
        conn: &Connection,
        tables: &HashMap<u32, CrrTable>,
    ) -> Result<()> {
        if self.spill_at == 0 || self.rows.len() <= self.spill_at {
            return Ok(());
        }
        self.write_dirty(conn, tables)?;
        // Keeps the map's table (bounded by the spill size) for the next rows.
        self.rows.clear();
        self.spilled = true;
        Ok(())
    }

    /// Writes every changed clock held now; the version index's changes,
    /// the tables and the misspeculated keys are collected for `flush`.
    fn write_dirty(&mut self, conn: &Connection, tables: &HashMap<u32, CrrTable>) -> Result<()> {
        let ClockCache {
            rows,
            versions,
            written,
            misses,
            ..
        } = self;
        // Key order keeps B-tree writes local: far fewer pages touched than
        // the hash map's random order for large transactions. The order is
        // a list of references (16 bytes a row), not the entries moved out:
        // for a 100k-row transaction a moved copy was 17.8 MiB beside the
        // map's 18 (issue 15).
        let mut order: Vec<_> = rows.iter().filter(|(_, c)| c.dirty).collect();
        order.sort_unstable_by(|a, b| a.0.cmp(b.0));
        // Encoded clocks wait for at most one multi-row INSERT at a time.
        let mut upserts: Vec<(&[u8], Vec<u8>)> = Vec::with_capacity(ROWS_PER_INSERT);
        for group in order.chunk_by(|a, b| (a.0 .0, a.1.speculative) == (b.0 .0, b.1.speculative)) {
            let tbl = group[0].0 .0;
            let speculative = group[0].1.speculative;
            let table = table_of(tables, tbl)?;
            if !written.contains(&tbl) {
                written.push(tbl);
            }
            let mut write = |upserts: &mut Vec<(&[u8], Vec<u8>)>| -> Result<()> {
                let skipped = write_clocks(conn, table, upserts, speculative)?;
                misses.extend(skipped.into_iter().map(|pk| (tbl, pk)));
                upserts.clear();
                Ok(())
            };
            for ((_, pk), cached) in group {
                let now = cached.clock.versions();
                versions.row_changed(tbl, pk, &cached.stored_versions, &now);
                if cached.clock.is_empty() {
                    conn.prepare_cached(&table.sql.delete_clock)?
                        .execute([pk])?;
                } else {
                    upserts.push((pk.as_slice(), cached.clock.encode()));
                    if upserts.len() == ROWS_PER_INSERT {
                        write(&mut upserts)?;
                    }
                }
            }
            if !upserts.is_empty() {
                write(&mut upserts)?;
            }
        }
        Ok(())
    }

    /// Writes every changed clock and the version index; returns the ids
    /// of the tables written and, with `keep_rows`, the changed rows' keys
    /// and clocks in key order (only for a cache that never spilled).
    /// Fails with `Err(Ok(Misspeculated))`, having written part of it, when
    /// an assumed new key was stored: the caller rolls back to before the
    /// first row was written (a spill's included).
    pub fn flush(
        mut self,
        conn: &Connection,
        tables: &HashMap<u32, CrrTable>,
        keep_rows: bool,
    ) -> std::result::Result<Flushed, std::result::Result<Misspeculated, CrrError>> {
        debug_assert!(
            !(keep_rows && self.spilled),
            "a spilled cache no longer holds every row"
        );
        self.write_dirty(conn, tables).map_err(Err)?;
        if !self.misses.is_empty() {
            return Err(Ok(Misspeculated(self.misses)));
        }
        self.versions.write(conn).map_err(Err)?;
        let rows = if keep_rows {
            let mut rows: Vec<_> = self
                .rows
                .into_iter()
                .filter(|(_, c)| c.dirty)
                .map(|(key, c)| (key, c.clock))
                .collect();
            rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            rows
        } else {
            Vec::new()
        };
        let mut tables = self.written;
        tables.sort_unstable();
        Ok(Flushed { rows, tables })
    }
}

/// What [`ClockCache::flush`] wrote.
pub(crate) struct Flushed {
    /// The changed rows' keys and clocks, in key order; empty unless kept.
    pub rows: Vec<((u32, Vec<u8>), RowClock)>,
    /// The ids of the tables whose clocks were written, ascending.
    pub tables: Vec<u32>,
}

impl CachedClock {
    fn unseen(table: &CrrTable, speculative: bool) -> Self {
        CachedClock {
            clock: RowClock::unseen(table.slots()),
            stored_versions: Vec::new(),
            dirty: false,
            speculative,
        }
    }
}

pub(crate) fn table_of(tables: &HashMap<u32, CrrTable>, tbl: u32) -> Result<&CrrTable> {
    tables
        .get(&tbl)
        .ok_or_else(|| CrrError::Corrupt(format!("no CRR table with id {tbl}")))
}

/// Writes clocks in multi-row statements. With `only_new`, keys already
/// stored are left alone and returned: for each statement that skipped a
/// row, every key of it (which ones were skipped is found by looking them
/// up after rolling back).
fn write_clocks(
    conn: &Connection,
    table: &CrrTable,
    rows: &[(&[u8], Vec<u8>)],
    only_new: bool,
) -> Result<Vec<Vec<u8>>> {
    let mut skipped = Vec::new();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let sql = table.sql.write_clocks(chunk.len(), only_new);
        let params = chunk
            .iter()
            .flat_map(|(pk, clock)| [pk as &dyn ToSql, clock as &dyn ToSql]);
        let written = conn
            .prepare_cached(&sql)?
            .execute(rusqlite::params_from_iter(params))?;
        if written < chunk.len() {
            skipped.extend(chunk.iter().map(|(pk, _)| pk.to_vec()));
        }
    }
    Ok(skipped)
}

pub(crate) fn load_clock(
    conn: &Connection,
    table: &CrrTable,
    pk: &[u8],
) -> Result<Option<RowClock>> {
    let blob: Option<Vec<u8>> = conn
        .prepare_cached(&table.sql.select_clock)?
        .query_row([pk], |r| r.get(0))
        .optional()?;
    blob.map(|b| RowClock::decode(&b, table.slots()))
        .transpose()
}
