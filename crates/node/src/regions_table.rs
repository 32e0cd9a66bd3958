//! `patina_regions`: Patina's own table in `global.db`, one row per region,
//! written by that region's leader and replicated like any global table.
//! It is how a node outside the global cluster learns of other regions'
//! leaders, global members, last rollup and global lag (`/v1/regions`):
//! what reaches every node of every region is `global.db`.
//!
//! Clients read it (`SELECT * FROM global.patina_regions`); only
//! [`Node::record_region`](crate::Node::record_region) writes it. A row is
//! written when what it says changes, never on a timer, so an idle fleet
//! sends nothing for it.

use patina_crr::{SiteId, Value};
use rusqlite::types::ValueRef;
use rusqlite::Connection;

/// The table's name.
pub const REGIONS_TABLE: &str = "patina_regions";

pub(crate) const CREATE_REGIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS patina_regions (
    region TEXT NOT NULL PRIMARY KEY,
    leader TEXT,
    global_members TEXT NOT NULL DEFAULT '',
    last_rollup_ms INTEGER,
    global_p99_lag_ms REAL,
    updated_ms INTEGER NOT NULL DEFAULT 0,
    rollup_error TEXT
)";

/// One region's row, as its leader last wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionRecord {
    pub region: String,
    /// The leader that wrote the row.
    pub leader: Option<SiteId>,
    /// The region's live global members when it was written, sorted.
    pub global_members: Vec<SiteId>,
    /// Unix ms of the leader's last rollup evaluation that wrote rollup
    /// rows, or reconciled them on taking over.
    pub last_rollup_ms: Option<u64>,
    /// The leader's p99 lag of global changes reaching it, when written.
    pub global_p99_lag_ms: Option<f64>,
    /// Unix ms of the write.
    pub updated_ms: u64,
    /// Why the leader's last rollup evaluation failed (cut to
    /// [`ROLLUP_ERROR_CHARS_MAX`]); `None` while they succeed.
    pub rollup_error: Option<String>,
}

/// What a row keeps of a rollup error.
pub const ROLLUP_ERROR_CHARS_MAX: usize = 300;

impl RegionRecord {
    pub(crate) const UPSERT: &'static str = "INSERT INTO patina_regions \
        (region, leader, global_members, last_rollup_ms, global_p99_lag_ms, updated_ms, \
        rollup_error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
        ON CONFLICT (region) DO UPDATE SET leader = excluded.leader, \
        global_members = excluded.global_members, last_rollup_ms = excluded.last_rollup_ms, \
        global_p99_lag_ms = excluded.global_p99_lag_ms, updated_ms = excluded.updated_ms, \
        rollup_error = excluded.rollup_error";

    pub(crate) fn params(&self) -> Vec<Value> {
        let int = |v: u64| Value::Integer(i64::try_from(v).unwrap_or(i64::MAX));
        vec![
            Value::Text(self.region.clone()),
            self.leader.map_or(Value::Null, |l| Value::Text(l.to_hex())),
            Value::Text(
                self.global_members
                    .iter()
                    .map(SiteId::to_hex)
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            self.last_rollup_ms.map_or(Value::Null, int),
            self.global_p99_lag_ms
                .filter(|v| v.is_finite())
                .map_or(Value::Null, Value::Real),
            int(self.updated_ms),
            self.rollup_error.as_ref().map_or(Value::Null, |e| {
                Value::Text(e.chars().take(ROLLUP_ERROR_CHARS_MAX).collect())
            }),
        ]
    }

    /// Every row of `global.patina_regions` on a reader connection (one
    /// with `global.db` attached as `global`), sorted by region. A value
    /// that does not parse (a row a newer Patina wrote) reads as absent.
    pub fn read_all(conn: &Connection) -> rusqlite::Result<Vec<RegionRecord>> {
        let mut stmt = conn.prepare(
            "SELECT region, leader, global_members, last_rollup_ms, global_p99_lag_ms, updated_ms, \
             rollup_error FROM global.patina_regions ORDER BY region",
        )?;
        let rows = stmt.query_map([], |r| {
            let text = |i: usize| -> rusqlite::Result<Option<String>> {
                Ok(match r.get_ref(i)? {
                    ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
                    _ => None,
                })
            };
            let int = |i: usize| -> rusqlite::Result<Option<u64>> {
                Ok(match r.get_ref(i)? {
                    ValueRef::Integer(n) => u64::try_from(n).ok(),
                    _ => None,
                })
            };
            let lag = match r.get_ref(4)? {
                ValueRef::Real(f) => Some(f),
                ValueRef::Integer(n) => Some(n as f64),
                _ => None,
            };
            Ok(RegionRecord {
                region: text(0)?.unwrap_or_default(),
                leader: text(1)?.and_then(|h| h.parse().ok()),
                global_members: text(2)?
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|h| h.parse().ok())
                    .collect(),
                last_rollup_ms: int(3)?,
                global_p99_lag_ms: lag,
                updated_ms: int(5)?.unwrap_or(0),
                rollup_error: text(6)?,
            })
        })?;
        rows.collect()
    }
}
