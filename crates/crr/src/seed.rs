//! Seeding a new replica from a copy of another one's database: the copy's
//! local site (ordinal 0) becomes a remote site like any peer, and ordinal
//! 0 is given a fresh site id with no versions yet.
//!
//! Ordinal 0 means "this replica" in three places: `crr_sites` (its id and
//! db_version counter), every clock entry it wrote (`Entry::site`), and the
//! version index's keys. All three are rewritten in one SQLite transaction,
//! so the copy reads exactly as a replica that merged every change of the
//! old site would: the same rows, the same clocks naming the same site ids,
//! the same versions served for the old site. Nothing else depends on
//! ordinals: merge ties compare site ids, not ordinals.

use rusqlite::{params, Connection};

use crate::clock::{Entry, RowClock};
use crate::error::{CrrError, Result};
use crate::store::{CrrTable, Sites};
use crate::SiteId;

/// Clock rows read and rewritten per statement: bounds what is held while
/// every clock of a large table is visited.
const ROWS_PER_BATCH: usize = 1024;

/// What [`CrrConn::adopt_as_new_site`](crate::CrrConn::adopt_as_new_site)
/// changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// The site id ordinal 0 had: now a remote site.
    pub old_site: SiteId,
    /// The old site's db_version counter: its versions `1..=old_db_version`
    /// are all in this database.
    pub old_db_version: u64,
    /// The ordinal the old site has now.
    pub old_site_ordinal: u32,
    /// The site id of this replica from now on (db_version 0).
    pub new_site: SiteId,
    /// Row clocks that held entries of the old site, rewritten.
    pub clocks_rewritten: u64,
}

/// Re-attributes ordinal 0's entries to a new ordinal for `sites.local()`
/// and gives ordinal 0 to `new_site`. The caller owns the transaction and
/// reloads `sites` afterwards.
pub(crate) fn reattribute_local(
    conn: &Connection,
    tables: &[&CrrTable],
    sites: &Sites,
    new_site: SiteId,
) -> Result<Adopted> {
    if let Some(ordinal) = sites.ordinal(&new_site) {
        let whose = if ordinal == 0 {
            "this replica's own"
        } else {
            "a peer's"
        };
        return Err(CrrError::SiteIdTaken(format!(
            "site id {new_site} is {whose} in this database already; a seeded replica needs an id no replica has used (SiteId::random)"
        )));
    }
    let old_site = sites.local();
    let old_db_version = sites.db_version(0);
    let moved = u32::try_from(sites.len())
        .map_err(|_| CrrError::Corrupt("more sites than ordinals".into()))?;
    // The old id leaves ordinal 0 first: site ids are UNIQUE.
    conn.execute(
        "UPDATE crr_sites SET site_id = ?1, db_version = 0 WHERE ordinal = 0",
        [&new_site.0[..]],
    )?;
    conn.execute(
        "INSERT INTO crr_sites(ordinal, site_id, db_version) VALUES (?1, ?2, ?3)",
        params![moved, &old_site.0[..], old_db_version as i64],
    )?;
    let mut clocks_rewritten = 0;
    for table in tables {
        clocks_rewritten += rewrite_clocks(conn, table, moved)?;
    }
    conn.execute("UPDATE crr_versions SET site = ?1 WHERE site = 0", [moved])?;
    conn.execute(
        "UPDATE crr_version_pks SET site = ?1 WHERE site = 0",
        [moved],
    )?;
    Ok(Adopted {
        old_site,
        old_db_version,
        old_site_ordinal: moved,
        new_site,
        clocks_rewritten,
    })
}

/// Points every entry of ordinal 0 in `table`'s clocks at `to`; returns the
/// rows rewritten. Reads in key order, a batch at a time, and writes a
/// batch only after reading it: no cursor is open on a table being written.
fn rewrite_clocks(conn: &Connection, table: &CrrTable, to: u32) -> Result<u64> {
    let clock_table = crate::schema::quote_ident(&format!("{}__crr_clock", table.info.name));
    let first = format!("SELECT pk, clock FROM {clock_table} ORDER BY pk LIMIT ?1");
    let next = format!("SELECT pk, clock FROM {clock_table} WHERE pk > ?2 ORDER BY pk LIMIT ?1");
    let update = format!("UPDATE {clock_table} SET clock = ?2 WHERE pk = ?1");
    let slots = table.slots();
    let mut after: Option<Vec<u8>> = None;
    let mut rewritten = 0;
    loop {
        let batch: Vec<(Vec<u8>, Vec<u8>)> = match &after {
            None => conn
                .prepare_cached(&first)?
                .query_map([ROWS_PER_BATCH as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?,
            Some(pk) => conn
                .prepare_cached(&next)?
                .query_map(params![ROWS_PER_BATCH as i64, pk], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<rusqlite::Result<_>>()?,
        };
        let Some((last, _)) = batch.last() else {
            return Ok(rewritten);
        };
        after = Some(last.clone());
        let full = batch.len() == ROWS_PER_BATCH;
        let mut write = conn.prepare_cached(&update)?;
        for (pk, blob) in &batch {
            let mut clock = RowClock::decode(blob, slots)?;
            if move_local_entries(&mut clock, to) {
                write.execute(params![pk, clock.encode()])?;
                rewritten += 1;
            }
        }
        if !full {
            return Ok(rewritten);
        }
    }
}

/// Re-points entries of ordinal 0 at `to`; whether any was.
fn move_local_entries(clock: &mut RowClock, to: u32) -> bool {
    let mut moved = false;
    let entries = clock
        .sentinel
        .iter_mut()
        .chain(clock.cols.iter_mut().flatten());
    for entry in entries {
        if let Entry { site: 0, .. } = entry {
            entry.site = to;
            moved = true;
        }
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_entries_move() {
        let e = |site| Entry {
            col_version: 1,
            db_version: 4,
            site,
            seq: 0,
        };
        let mut clock = RowClock {
            cl: 1,
            sentinel: Some(Entry {
                col_version: 1,
                ..e(0)
            }),
            cols: vec![Some(e(2)), None, Some(e(0))],
        };
        assert!(move_local_entries(&mut clock, 7));
        assert_eq!(clock.sentinel.map(|s| s.site), Some(7));
        assert_eq!(
            clock
                .cols
                .iter()
                .map(|c| c.map(|e| e.site))
                .collect::<Vec<_>>(),
            vec![Some(2), None, Some(7)]
        );
        assert!(
            !move_local_entries(&mut clock, 7),
            "nothing of ordinal 0 left"
        );
    }
}
