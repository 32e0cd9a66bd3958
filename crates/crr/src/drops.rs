//! Destructive schema changes: dropping a CRR table or some of its columns
//! together with their clocks and version index entries, and remembering
//! what was dropped (`crr_dropped`) so that remote changes still naming it
//! are told apart from changes naming what this replica does not know yet.
//!
//! Clock slots are positions among a table's replicated non-pk columns
//! (`TableInfo::non_pk`), so dropping a column in the middle would shift
//! the slots of every column after it: each stored clock is rewritten
//! without the dropped slots before SQLite drops the column.

use std::collections::BTreeSet;

use rusqlite::{params, Connection};

use crate::clock::{Entry, RowClock};
use crate::error::Result;
use crate::schema::quote_ident;
use crate::store::CrrTable;
use crate::versions::VersionDelta;

/// One row per mark; `col` NULL marks the whole table.
pub(crate) const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS crr_dropped(
    tbl TEXT NOT NULL,
    col TEXT
);
";

/// Clock rows rewritten per read: bounds what a drop holds in memory
/// however large the table.
const CLOCKS_PER_PASS: i64 = 4096;

/// The tables and columns dropped from this database and not declared
/// again since, compared as SQLite compares names (ASCII case ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped {
    tables: BTreeSet<String>,
    columns: BTreeSet<(String, String)>,
}

impl Dropped {
    pub(crate) fn load(conn: &Connection) -> Result<Dropped> {
        let mut out = Dropped::default();
        let mut stmt = conn.prepare("SELECT tbl, col FROM crr_dropped")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
        })?;
        for row in rows {
            let table = |(t, _): &(String, Option<String>)| t.to_ascii_lowercase();
            let row = row?;
            match &row.1 {
                None => {
                    out.tables.insert(table(&row));
                }
                Some(column) => {
                    out.columns
                        .insert((table(&row), column.to_ascii_lowercase()));
                }
            }
        }
        Ok(out)
    }

    /// Whether a change of `table`, column `cid` (or the sentinel), names
    /// something dropped here: its table, or its column.
    pub fn contains(&self, table: &str, cid: &str) -> bool {
        let table = table.to_ascii_lowercase();
        self.tables.contains(&table) || self.columns.contains(&(table, cid.to_ascii_lowercase()))
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.columns.is_empty()
    }

    /// Records that `table` was dropped. The caller marks its columns too:
    /// should a table of that name be declared again with fewer columns,
    /// changes naming the others are still known as dropped.
    pub(crate) fn mark_table(&mut self, conn: &Connection, table: &str) -> Result<()> {
        conn.execute(
            "DELETE FROM crr_dropped WHERE tbl = ?1 COLLATE NOCASE AND col IS NULL",
            [table],
        )?;
        conn.execute(
            "INSERT INTO crr_dropped(tbl, col) VALUES (?1, NULL)",
            [table],
        )?;
        self.tables.insert(table.to_ascii_lowercase());
        Ok(())
    }

    pub(crate) fn mark_column(
        &mut self,
        conn: &Connection,
        table: &str,
        column: &str,
    ) -> Result<()> {
        conn.execute(
            "DELETE FROM crr_dropped WHERE tbl = ?1 COLLATE NOCASE AND col = ?2 COLLATE NOCASE",
            params![table, column],
        )?;
        conn.execute(
            "INSERT INTO crr_dropped(tbl, col) VALUES (?1, ?2)",
            params![table, column],
        )?;
        self.columns
            .insert((table.to_ascii_lowercase(), column.to_ascii_lowercase()));
        Ok(())
    }

    /// Forgets the marks of what exists again (a table or column declared
    /// anew after it was dropped): changes naming it merge from now on.
    /// `exists(table, column)` answers for a table when `column` is `None`.
    pub(crate) fn forget_existing(
        &mut self,
        conn: &Connection,
        exists: impl Fn(&str, Option<&str>) -> bool,
    ) -> Result<()> {
        let marks: Vec<(i64, String, Option<String>)> = conn
            .prepare("SELECT rowid, tbl, col FROM crr_dropped")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (rowid, table, column) in marks {
            if exists(&table, column.as_deref()) {
                conn.execute("DELETE FROM crr_dropped WHERE rowid = ?1", [rowid])?;
            }
        }
        *self = Dropped::load(conn)?;
        Ok(())
    }
}

/// Drops CRR table `table`: its rows, its clocks, its entries in the
/// version index and its registration. Its triggers and indexes go with
/// the table. The caller owns the transaction.
pub(crate) fn drop_table(conn: &Connection, table: &CrrTable) -> Result<()> {
    let clock = quote_ident(&format!("{}__crr_clock", table.info.name));
    conn.execute_batch(&format!(
        "DROP TABLE {}; DROP TABLE IF EXISTS {clock};",
        quote_ident(&table.info.name)
    ))?;
    conn.execute("DELETE FROM crr_version_pks WHERE tbl = ?1", [table.id])?;
    conn.execute("DELETE FROM crr_versions WHERE tbl = ?1", [table.id])?;
    conn.execute("DELETE FROM crr_tables WHERE id = ?1", [table.id])?;
    Ok(())
}

/// Drops `columns` of CRR table `table` (as it is before the drop):
/// its capture triggers (the caller makes them again for the new shape),
/// the `indexes` naming them, their clock entries (every stored clock
/// rewritten without their slots, the version index following), then the
/// columns. The caller owns the transaction.
pub(crate) fn drop_columns(
    conn: &Connection,
    table: &CrrTable,
    columns: &[String],
    indexes: &[String],
) -> Result<()> {
    for (trigger, _) in crate::capture::trigger_sql(table) {
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", quote_ident(&trigger)))?;
    }
    for index in indexes {
        conn.execute_batch(&format!("DROP INDEX IF EXISTS {}", quote_ident(index)))?;
    }
    let slots: Vec<usize> = columns
        .iter()
        .filter_map(|c| {
            (0..table.slots()).find(|&s| {
                table.info.columns[table.info.non_pk[s]]
                    .name
                    .eq_ignore_ascii_case(c)
            })
        })
        .collect();
    if !slots.is_empty() {
        rewrite_clocks(conn, table, &slots)?;
    }
    for column in columns {
        conn.execute_batch(&format!(
            "ALTER TABLE {} DROP COLUMN {}",
            quote_ident(&table.info.name),
            quote_ident(column)
        ))?;
    }
    Ok(())
}

/// Rewrites every stored clock of `table` without the clock `slots`, a
/// pass of [`CLOCKS_PER_PASS`] rows at a time in key order.
fn rewrite_clocks(conn: &Connection, table: &CrrTable, slots: &[usize]) -> Result<()> {
    let clock_table = quote_ident(&format!("{}__crr_clock", table.info.name));
    let read = format!("SELECT pk, clock FROM {clock_table} WHERE pk > ?1 ORDER BY pk LIMIT ?2");
    let update = format!("UPDATE {clock_table} SET clock = ?2 WHERE pk = ?1");
    let delete = format!("DELETE FROM {clock_table} WHERE pk = ?1");
    let mut versions = VersionDelta::default();
    // A packed pk is never empty, so every key sorts after the empty blob;
    // the range on the key keeps each pass a seek, not a scan.
    let mut after: Vec<u8> = Vec::new();
    loop {
        let rows: Vec<(Vec<u8>, Vec<u8>)> = conn
            .prepare(&read)?
            .query_map(params![after, CLOCKS_PER_PASS], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let Some((last, _)) = rows.last() else { break };
        after = last.clone();
        for (pk, blob) in rows {
            let before = RowClock::decode(&blob, table.slots())?;
            let now = without_slots(&before, slots);
            versions.row_changed(table.id, &pk, &before.versions(), &now.versions());
            if now.is_empty() {
                conn.prepare_cached(&delete)?.execute([&pk])?;
            } else {
                conn.prepare_cached(&update)?
                    .execute(params![pk, now.encode()])?;
            }
        }
    }
    versions.write(conn)
}

/// `clock` without the entries of `slots` (ascending), the later slots
/// moved down to stay at their columns. A live row left without any entry
/// (it held only the dropped columns' entries, and no sentinel) keeps its
/// existence: the first dropped entry becomes its sentinel, as a merge
/// makes one from a column change. Replicas holding the same clock make
/// the same sentinel, so they stay converged.
fn without_slots(clock: &RowClock, slots: &[usize]) -> RowClock {
    let cols: Vec<Option<Entry>> = clock
        .cols
        .iter()
        .enumerate()
        .filter(|(slot, _)| !slots.contains(slot))
        .map(|(_, e)| *e)
        .collect();
    let mut out = RowClock {
        cl: clock.cl,
        sentinel: clock.sentinel,
        cols,
    };
    if out.is_empty() && clock.cl % 2 == 1 {
        let first_dropped = slots
            .iter()
            .find_map(|&s| clock.cols.get(s).copied().flatten());
        out.sentinel = first_dropped.map(|e| Entry {
            col_version: clock.cl,
            ..e
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(db_version: u64, seq: u64) -> Entry {
        Entry {
            col_version: 1,
            db_version,
            site: 0,
            seq,
        }
    }

    #[test]
    fn later_slots_move_down_with_their_entries() {
        let clock = RowClock {
            cl: 1,
            sentinel: None,
            cols: vec![Some(e(1, 0)), Some(e(2, 1)), Some(e(3, 2))],
        };
        let out = without_slots(&clock, &[1]);
        assert_eq!(out.cols, vec![Some(e(1, 0)), Some(e(3, 2))]);
        assert_eq!(out.sentinel, None);
        assert_eq!(out.versions(), vec![(0, 1), (0, 3)]);
    }

    #[test]
    fn a_live_row_holding_only_dropped_entries_keeps_a_sentinel() {
        let clock = RowClock {
            cl: 1,
            sentinel: None,
            cols: vec![None, Some(e(7, 4))],
        };
        let out = without_slots(&clock, &[1]);
        let sentinel = out.sentinel.expect("the row stays alive");
        assert_eq!(
            (sentinel.col_version, sentinel.db_version, sentinel.seq),
            (1, 7, 4)
        );
        assert_eq!(out.versions(), clock.versions());
        // A tombstone has its sentinel already; nothing is made up.
        let tomb = RowClock {
            cl: 2,
            sentinel: Some(Entry {
                col_version: 2,
                ..e(9, 0)
            }),
            cols: vec![None, None],
        };
        assert_eq!(without_slots(&tomb, &[0]).sentinel, tomb.sentinel);
    }
}
