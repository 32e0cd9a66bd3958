//! A subscription on disk: `data_dir/subs/<id>.db` holds its statement, its
//! current result (row id → cells), its next row id and last change id, and
//! its event log (the last [`EVENTS_RETAINED`] events). Each processed batch
//! is written in one SQLite transaction before any subscriber sees it, so a
//! crash (even `kill -9`) leaves a state that matches the ids handed out.

use std::path::{Path, PathBuf};

use crr::Value;
use rusqlite::{params, Connection};

use super::codec;
use super::diff::{ChangeEvent, ChangeKind, ResultState};
use crate::statement::{Params, Statement};

/// Events kept for `from=N` resumes (api.md: at least 10,000).
pub(crate) const EVENTS_RETAINED: u64 = 10_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    id TEXT NOT NULL, sql TEXT NOT NULL, params_kind INTEGER NOT NULL,
    hash TEXT NOT NULL, next_row_id INTEGER NOT NULL, last_change_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS params (idx INTEGER PRIMARY KEY, name TEXT, value ANY);
CREATE TABLE IF NOT EXISTS rows (row_id INTEGER PRIMARY KEY, cells BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    change_id INTEGER PRIMARY KEY, kind INTEGER NOT NULL, row_id INTEGER NOT NULL,
    cells BLOB NOT NULL
);
";

pub(crate) struct Store {
    conn: Connection,
}

/// What a stored subscription holds.
pub(crate) struct Stored {
    pub id: String,
    pub statement: Statement,
    pub hash: String,
    /// `(row_id, cells)` by row id.
    pub rows: Vec<(u64, Vec<Value>)>,
    pub next_row_id: u64,
    pub last_change_id: u64,
    /// The retained events, oldest first.
    pub events: Vec<ChangeEvent>,
}

pub(crate) fn path_of(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.db"))
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // A node holds one store connection per subscription (thousands), and
    // SQLite gives every connection a ~120 KiB lookaside allocator by
    // default; these connections write small batches and do not need it.
    // SAFETY: `handle()` is this open connection's pointer; LOOKASIDE with
    // a null buffer and zero sizes disables it, and the call happens before
    // the connection is used, as SQLite requires.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            0 as std::ffi::c_int,
            0 as std::ffi::c_int,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(rc, "could not disable lookaside on a subscription store");
    }
    // WAL + NORMAL: a commit survives a crash of the process (kill -9)
    // without an fsync per batch; a power loss may lose the last batches.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

impl Store {
    /// Creates the store of a new subscription with its initial result.
    /// Written under a temporary name and renamed: a crash leaves either no
    /// subscription or a whole one.
    pub fn create(
        dir: &Path,
        id: &str,
        st: &Statement,
        hash: &str,
        state: &ResultState,
    ) -> rusqlite::Result<Store> {
        let path = path_of(dir, id);
        let tmp = dir.join(format!("{id}.db.tmp"));
        let _ = std::fs::remove_file(&tmp);
        {
            let mut conn = open_conn(&tmp)?;
            let tx = conn.transaction()?;
            let (kind, params): (i64, Vec<(Option<&str>, &Value)>) = match &st.params {
                Params::None => (0, vec![]),
                Params::Positional(v) => (1, v.iter().map(|v| (None, v)).collect()),
                Params::Named(v) => (2, v.iter().map(|(n, v)| (Some(n.as_str()), v)).collect()),
            };
            tx.execute(
                "INSERT INTO meta VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    id,
                    st.sql,
                    kind,
                    hash,
                    state.next_row_id() as i64,
                    state.last_change_id() as i64
                ],
            )?;
            for (i, (name, value)) in params.iter().enumerate() {
                tx.execute(
                    "INSERT INTO params VALUES (?1, ?2, ?3)",
                    params![i as i64, name, value],
                )?;
            }
            {
                let mut ins = tx.prepare("INSERT INTO rows VALUES (?1, ?2)")?;
                for row in state.rows() {
                    ins.execute(params![row.id as i64, codec::encode(&row.cells)])?;
                }
            }
            tx.commit()?;
        }
        std::fs::rename(&tmp, &path).map_err(io_err)?;
        Ok(Store {
            conn: open_conn(&path)?,
        })
    }

    /// Opens a stored subscription.
    pub fn open(path: &Path) -> rusqlite::Result<(Store, Stored)> {
        let conn = open_conn(path)?;
        let (id, sql, kind, hash, next_row_id, last_change_id) = conn.query_row(
            "SELECT id, sql, params_kind, hash, next_row_id, last_change_id FROM meta",
            [],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            },
        )?;
        let mut stmt = conn.prepare("SELECT name, value FROM params ORDER BY idx")?;
        let params: Vec<(Option<String>, Value)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        drop(stmt);
        let params = match kind {
            0 => Params::None,
            1 => Params::Positional(params.into_iter().map(|(_, v)| v).collect()),
            _ => Params::Named(
                params
                    .into_iter()
                    .map(|(n, v)| (n.unwrap_or_default(), v))
                    .collect(),
            ),
        };
        let rows = read_cells(&conn, "SELECT row_id, cells FROM rows ORDER BY row_id")?;
        let mut events = Vec::new();
        {
            let mut stmt = conn
                .prepare("SELECT change_id, kind, row_id, cells FROM events ORDER BY change_id")?;
            let mut q = stmt.query([])?;
            while let Some(r) = q.next()? {
                let kind = ChangeKind::from_code(r.get(1)?).ok_or_else(|| corrupt("event kind"))?;
                let cells: Vec<u8> = r.get(3)?;
                events.push(ChangeEvent {
                    change_id: r.get::<_, i64>(0)? as u64,
                    kind,
                    row_id: r.get::<_, i64>(2)? as u64,
                    cells: codec::decode(&cells).ok_or_else(|| corrupt("event cells"))?,
                });
            }
        }
        let stored = Stored {
            id,
            statement: Statement { sql, params },
            hash,
            rows,
            next_row_id: next_row_id as u64,
            last_change_id: last_change_id as u64,
            events,
        };
        Ok((Store { conn }, stored))
    }

    /// Writes a processed batch: its events and their effect on the rows.
    pub fn save(&mut self, state: &ResultState, events: &[ChangeEvent]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached("INSERT OR REPLACE INTO rows VALUES (?1, ?2)")?;
            let mut delete = tx.prepare_cached("DELETE FROM rows WHERE row_id = ?1")?;
            let mut log = tx.prepare_cached("INSERT INTO events VALUES (?1, ?2, ?3, ?4)")?;
            for e in events {
                let cells = codec::encode(&e.cells);
                match e.kind {
                    ChangeKind::Delete => delete.execute([e.row_id as i64]).map(drop)?,
                    _ => upsert.execute(params![e.row_id as i64, cells]).map(drop)?,
                }
                log.execute(params![
                    e.change_id as i64,
                    e.kind.code(),
                    e.row_id as i64,
                    cells
                ])?;
            }
        }
        let last = state.last_change_id();
        tx.execute(
            "UPDATE meta SET next_row_id = ?1, last_change_id = ?2",
            params![state.next_row_id() as i64, last as i64],
        )?;
        tx.execute(
            "DELETE FROM events WHERE change_id <= ?1",
            [last.saturating_sub(EVENTS_RETAINED) as i64],
        )?;
        tx.commit()
    }
}

fn read_cells(conn: &Connection, sql: &str) -> rusqlite::Result<Vec<(u64, Vec<Value>)>> {
    let mut stmt = conn.prepare(sql)?;
    let mut q = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = q.next()? {
        let cells: Vec<u8> = r.get(1)?;
        out.push((
            r.get::<_, i64>(0)? as u64,
            codec::decode(&cells).ok_or_else(|| corrupt("row cells"))?,
        ));
    }
    Ok(out)
}

fn corrupt(what: &str) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(format!("subscription store: bad {what}").into())
}

fn io_err(e: std::io::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}
