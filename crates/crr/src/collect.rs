//! Tombstone collection: forgetting the clock of a deleted row (its
//! tombstone) once no replica can still need it (docs/crr.md, "Tombstone
//! collection"). Deciding when that is belongs to the caller, who knows
//! the cluster: it hands over, per site, a version `bound` such that every
//! replica that will ever merge with this one has applied that site's
//! versions `1..=bound`. This module only finds the tombstones written by
//! those versions and removes them with their version index entries.
//!
//! Two facts make that cheap and exact:
//! - A tombstone is found through the version that wrote its sentinel, so a
//!   pass reads only the versions it has not scanned yet (`crr_collect_scanned`,
//!   by site id, as ordinals change when a copy is adopted as a new site).
//!   Once this replica has applied `1..=bound` of a site, no tombstone
//!   written by one of those versions can appear later: their changes are
//!   in already, and later changes carry later versions.
//! - A collected row's causal length is gone, so a later local insert of the
//!   same key must still beat a tombstone other replicas may hold: per table,
//!   `crr_collected` keeps the largest causal length collected (or learned
//!   from a peer), and a local insert of a key without a clock starts above
//!   it, as a re-insert after a delete would.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::Result;
use crate::store::{load_clock, CrrTable, Sites};
use crate::versions::{self, VersionDelta};
use crate::SiteId;

pub(crate) const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS crr_collected(
    tbl INTEGER PRIMARY KEY,
    max_cl INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS crr_collect_scanned(
    site_id BLOB PRIMARY KEY NOT NULL,
    through INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Versions read per query: bounds the keys one step of a pass holds.
const VERSIONS_PER_STEP: i64 = 32;

/// What one [`CrrConn::collect_tombstones`](crate::CrrConn::collect_tombstones)
/// pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Tombstones removed.
    pub rows: u64,
    /// Keys looked at: every key a scanned version wrote is, once.
    pub examined: u64,
    /// Per site asked about: the versions scanned so far, `1..=through`
    /// (every tombstone they wrote is gone). Below the bound when the pass
    /// stopped at its row budget.
    pub through: BTreeMap<SiteId, u64>,
    /// Every site was scanned up to its bound (else the pass stopped at its
    /// budget of keys).
    pub complete: bool,
    /// Per site, the newest version whose tombstone this pass removed
    /// (sites it removed none of are absent): a replica that lacks it may
    /// hold the row that version deleted.
    pub removed_through: BTreeMap<SiteId, u64>,
}

/// The largest causal length collected per table id.
pub(crate) fn load_floors(conn: &Connection) -> Result<HashMap<u32, u64>> {
    let mut stmt = conn.prepare("SELECT tbl, max_cl FROM crr_collected")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = HashMap::new();
    for row in rows {
        let (tbl, cl) = row?;
        out.insert(tbl, cl.max(0) as u64);
    }
    Ok(out)
}

/// Raises table `tbl`'s collected causal length to `cl` if above.
pub(crate) fn raise_floor(
    conn: &Connection,
    floors: &mut HashMap<u32, u64>,
    tbl: u32,
    cl: u64,
) -> Result<bool> {
    if floors.get(&tbl).is_some_and(|&have| have >= cl) {
        return Ok(false);
    }
    conn.prepare_cached(
        "INSERT INTO crr_collected(tbl, max_cl) VALUES (?1, ?2)
         ON CONFLICT(tbl) DO UPDATE SET max_cl = max(max_cl, excluded.max_cl)",
    )?
    .execute(params![tbl, cl.min(i64::MAX as u64) as i64])?;
    floors.insert(tbl, cl);
    Ok(true)
}

fn scanned(conn: &Connection, site: &SiteId) -> Result<u64> {
    let through: Option<i64> = conn
        .prepare_cached("SELECT through FROM crr_collect_scanned WHERE site_id = ?1")?
        .query_row([&site.0[..]], |r| r.get(0))
        .optional()?;
    Ok(through.unwrap_or(0).max(0) as u64)
}

fn set_scanned(conn: &Connection, site: &SiteId, through: u64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO crr_collect_scanned(site_id, through) VALUES (?1, ?2)
         ON CONFLICT(site_id) DO UPDATE SET through = excluded.through",
    )?
    .execute(params![&site.0[..], through.min(i64::MAX as u64) as i64])?;
    Ok(())
}

/// Removes row `pk`'s clock if it is a tombstone whose sentinel version
/// `db_version` of site `ordinal` wrote; returns its causal length.
fn collect_one(
    conn: &Connection,
    table: &CrrTable,
    ordinal: u32,
    db_version: u64,
    pk: &[u8],
    delta: &mut VersionDelta,
) -> Result<Option<u64>> {
    let Some(clock) = load_clock(conn, table, pk)? else {
        return Ok(None);
    };
    let written_here = clock
        .sentinel
        .is_some_and(|s| s.site == ordinal && s.db_version == db_version);
    let tombstone = clock.cl > 0 && clock.cl % 2 == 0;
    if !(tombstone && written_here) {
        return Ok(None);
    }
    conn.prepare_cached(&table.sql.delete_clock)?
        .execute([pk])?;
    delta.row_changed(table.id, pk, &clock.versions(), &[]);
    Ok(Some(clock.cl))
}

/// The pass itself; the caller owns the SQLite transaction.
pub(crate) fn collect(
    conn: &Connection,
    tables: &HashMap<u32, CrrTable>,
    sites: &Sites,
    floors: &mut HashMap<u32, u64>,
    bounds: &BTreeMap<SiteId, u64>,
    keys_max: u64,
) -> Result<Collected> {
    let mut out = Collected {
        complete: true,
        ..Collected::default()
    };
    let mut delta = VersionDelta::default();
    let mut max_cl: HashMap<u32, u64> = HashMap::new();
    let mut versions_stmt = conn.prepare_cached(
        "SELECT DISTINCT db_version FROM crr_versions
         WHERE site = ?1 AND db_version > ?2 AND db_version <= ?3
         ORDER BY db_version LIMIT ?4",
    )?;
    for (site, &bound) in bounds {
        let mut through = scanned(conn, site)?;
        let Some(ordinal) = sites.ordinal(site) else {
            // Nothing of this site is stored here: nothing to scan.
            out.through.insert(*site, bound.max(through));
            continue;
        };
        'scan: while through < bound {
            let step: Vec<u64> = versions_stmt
                .query_map(
                    params![
                        ordinal,
                        through as i64,
                        bound.min(i64::MAX as u64) as i64,
                        VERSIONS_PER_STEP
                    ],
                    |r| r.get::<_, i64>(0),
                )?
                .map(|v| v.map(|v| v.max(0) as u64))
                .collect::<rusqlite::Result<_>>()?;
            let Some(&last) = step.last() else {
                through = bound;
                break;
            };
            // Fewer versions than asked: nothing else is stored up to the bound.
            let up_to = if (step.len() as i64) < VERSIONS_PER_STEP {
                bound
            } else {
                last
            };
            let found = versions::rows_of(conn, ordinal, through, up_to)?;
            for (i, rows) in found.iter().enumerate() {
                if let Some(table) = tables.get(&rows.tbl) {
                    out.examined += rows.pks.len() as u64;
                    for pk in &rows.pks {
                        if let Some(cl) =
                            collect_one(conn, table, ordinal, rows.db_version, pk, &mut delta)?
                        {
                            let m = max_cl.entry(rows.tbl).or_default();
                            *m = (*m).max(cl);
                            out.rows += 1;
                            let r = out.removed_through.entry(*site).or_default();
                            *r = (*r).max(rows.db_version);
                        }
                    }
                }
                let version_done = found
                    .get(i + 1)
                    .is_none_or(|next| next.db_version != rows.db_version);
                if version_done && out.examined >= keys_max {
                    through = rows.db_version;
                    if through < bound {
                        out.complete = false;
                    }
                    break 'scan;
                }
            }
            through = up_to;
        }
        set_scanned(conn, site, through)?;
        out.through.insert(*site, through);
    }
    delta.write(conn)?;
    for (tbl, cl) in max_cl {
        raise_floor(conn, floors, tbl, cl)?;
    }
    Ok(out)
}
