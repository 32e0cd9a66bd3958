//! Subscriptions on disk: one SQLite database per worker,
//! `data_dir/subs/worker-<n>.db`, holds every subscription that worker
//! owns — its statement, its current result (row id → cells), its next row
//! id and last change id, and its event log (the last [`EVENTS_RETAINED`]
//! events) — in tables keyed by the subscription's number in that file.
//! Each processed batch of the worker is written in one SQLite transaction
//! before any subscriber sees it, so a crash (even `kill -9`) leaves a state
//! that matches the ids handed out.
//!
//! One file per worker instead of one per subscription: with 1,000
//! subscriptions the per-subscription files cost ≈ 100 KiB of heap each
//! (a connection with its schema, statements and page cache) plus their
//! WAL-index maps and 3 file descriptors (docs/benchmarks.md). Workers do
//! not share a file so that they never wait for each other's write lock.
//!
//! The layout before that (`data_dir/subs/<id>.db`, one per subscription)
//! is read once by [`read_legacy`] and moved into the worker files.

use std::path::{Path, PathBuf};

use patina_crr::Value;
use rusqlite::{params, Connection, OptionalExtension};

use super::codec;
use super::diff::{ChangeEvent, ChangeKind, ResultState};
use patina_node::{Params, Statement};

/// Events kept for `from=N` resumes (api.md: at least 10,000).
pub(crate) const EVENTS_RETAINED: u64 = 10_000;

// `params.value` has no declared type on purpose: any type name would give
// the column an affinity (e.g. `ANY` is NUMERIC outside STRICT tables) and
// turn a text parameter '5' into the integer 5, i.e. another statement.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS subs (
    n INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, sql TEXT NOT NULL,
    params_kind INTEGER NOT NULL, hash TEXT NOT NULL,
    next_row_id INTEGER NOT NULL, last_change_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS params (
    sub INTEGER NOT NULL, idx INTEGER NOT NULL, name TEXT, value,
    PRIMARY KEY (sub, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rows (
    sub INTEGER NOT NULL, row_id INTEGER NOT NULL, cells BLOB NOT NULL,
    PRIMARY KEY (sub, row_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    sub INTEGER NOT NULL, change_id INTEGER NOT NULL, kind INTEGER NOT NULL,
    row_id INTEGER NOT NULL, cells BLOB NOT NULL,
    PRIMARY KEY (sub, change_id)
) WITHOUT ROWID;
";

/// One worker's store. Its file is opened at start only if it exists, and
/// created with the worker's first subscription otherwise: a node without
/// subscriptions does not pay for 4 connections at idle (page-cache bulk,
/// lookaside, schema).
pub(crate) struct Store {
    path: PathBuf,
    conn: Option<Connection>,
}

/// A subscription's number in its worker's store.
pub(crate) type SubNo = i64;

/// What a stored subscription holds.
pub(crate) struct Stored {
    /// Its number in the store (`None` for one read from the old layout).
    pub no: Option<SubNo>,
    pub id: String,
    pub statement: Statement,
    pub hash: String,
    /// `(row_id, cells)` by row id.
    pub rows: Vec<(u64, Vec<Value>)>,
    pub next_row_id: u64,
    pub last_change_id: u64,
    /// The retained events, oldest first: only for the old layout, whose
    /// events are moved into the worker's store (the worker's store serves
    /// `from=` from disk and keeps no log in memory).
    pub events: Vec<ChangeEvent>,
}

/// What one subscription's processed batch writes.
pub(crate) struct Batch<'a> {
    pub no: SubNo,
    pub state: &'a ResultState,
    pub events: &'a [ChangeEvent],
}

pub(crate) fn path_of(dir: &Path, worker: usize) -> PathBuf {
    dir.join(format!("worker-{worker}.db"))
}

impl Store {
    /// Opens worker `worker`'s store under `dir`, if it exists, and reads
    /// every subscription it holds.
    pub fn open(dir: &Path, worker: usize) -> rusqlite::Result<(Store, Vec<Stored>)> {
        let mut store = Store {
            path: path_of(dir, worker),
            conn: None,
        };
        if !store.path.exists() {
            return Ok((store, Vec::new()));
        }
        let stored = store.read_all()?;
        Ok((store, stored))
    }

    fn conn(&mut self) -> rusqlite::Result<&mut Connection> {
        if self.conn.is_none() {
            let conn = Connection::open(&self.path)?;
            // WAL + NORMAL: a commit survives a crash of the process
            // (kill -9) without an fsync per batch; a power loss may lose
            // the last batches.
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.execute_batch(SCHEMA)?;
            self.conn = Some(conn);
        }
        match &mut self.conn {
            Some(conn) => Ok(conn),
            None => unreachable!("opened above"),
        }
    }

    fn read_all(&mut self) -> rusqlite::Result<Vec<Stored>> {
        let conn = self.conn()?;
        let mut subs = Vec::new();
        let mut stmt = conn.prepare(
            "SELECT n, id, sql, params_kind, hash, next_row_id, last_change_id FROM subs ORDER BY n",
        )?;
        let mut q = stmt.query([])?;
        while let Some(r) = q.next()? {
            let no: SubNo = r.get(0)?;
            let params = read_params(conn, no, r.get(3)?)?;
            subs.push(Stored {
                no: Some(no),
                id: r.get(1)?,
                statement: Statement {
                    sql: r.get(2)?,
                    params,
                },
                hash: r.get(4)?,
                rows: Vec::new(),
                next_row_id: r.get::<_, i64>(5)? as u64,
                last_change_id: r.get::<_, i64>(6)? as u64,
                events: Vec::new(),
            });
        }
        for s in &mut subs {
            s.rows = read_cells(
                conn,
                "SELECT row_id, cells FROM rows WHERE sub = ?1 ORDER BY row_id",
                s.no.unwrap_or_default(),
            )?;
        }
        Ok(subs)
    }

    /// Stores a new subscription with its initial result (and, for one
    /// moved from the old layout, its retained events), in one
    /// transaction: a crash leaves either no subscription or a whole one.
    pub fn create(
        &mut self,
        id: &str,
        st: &Statement,
        hash: &str,
        state: &ResultState,
        events: &[ChangeEvent],
    ) -> rusqlite::Result<SubNo> {
        let tx = self.conn()?.transaction()?;
        let (kind, params): (i64, Vec<(Option<&str>, &Value)>) = match &st.params {
            Params::None => (0, vec![]),
            Params::Positional(v) => (1, v.iter().map(|v| (None, v)).collect()),
            Params::Named(v) => (2, v.iter().map(|(n, v)| (Some(n.as_str()), v)).collect()),
        };
        tx.execute(
            "INSERT INTO subs (id, sql, params_kind, hash, next_row_id, last_change_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id,
                st.sql,
                kind,
                hash,
                state.next_row_id() as i64,
                state.last_change_id() as i64
            ],
        )?;
        let no = tx.last_insert_rowid();
        for (i, (name, value)) in params.iter().enumerate() {
            tx.execute(
                "INSERT INTO params VALUES (?1, ?2, ?3, ?4)",
                params![no, i as i64, name, value],
            )?;
        }
        {
            let mut ins = tx.prepare_cached("INSERT INTO rows VALUES (?1, ?2, ?3)")?;
            for row in state.rows() {
                ins.execute(params![no, row.id as i64, codec::encode(&row.cells)])?;
            }
            let mut log = tx.prepare_cached("INSERT INTO events VALUES (?1, ?2, ?3, ?4, ?5)")?;
            for e in events {
                log.execute(params![
                    no,
                    e.change_id as i64,
                    e.kind.code(),
                    e.row_id as i64,
                    codec::encode(&e.cells)
                ])?;
            }
        }
        tx.commit()?;
        Ok(no)
    }

    /// Writes the processed batches of several subscriptions, in one
    /// transaction: their events and their effect on the rows.
    pub fn save(&mut self, batches: &[Batch<'_>]) -> rusqlite::Result<()> {
        let tx = self.conn()?.transaction()?;
        {
            let mut upsert =
                tx.prepare_cached("INSERT OR REPLACE INTO rows VALUES (?1, ?2, ?3)")?;
            let mut delete =
                tx.prepare_cached("DELETE FROM rows WHERE sub = ?1 AND row_id = ?2")?;
            let mut log = tx.prepare_cached("INSERT INTO events VALUES (?1, ?2, ?3, ?4, ?5)")?;
            let mut meta = tx.prepare_cached(
                "UPDATE subs SET next_row_id = ?2, last_change_id = ?3 WHERE n = ?1",
            )?;
            let mut trim =
                tx.prepare_cached("DELETE FROM events WHERE sub = ?1 AND change_id <= ?2")?;
            for b in batches {
                for e in b.events {
                    let cells = codec::encode(&e.cells);
                    match e.kind {
                        ChangeKind::Delete => delete.execute(params![b.no, e.row_id as i64])?,
                        _ => upsert.execute(params![b.no, e.row_id as i64, cells])?,
                    };
                    log.execute(params![
                        b.no,
                        e.change_id as i64,
                        e.kind.code(),
                        e.row_id as i64,
                        cells
                    ])?;
                }
                let last = b.state.last_change_id();
                meta.execute(params![b.no, b.state.next_row_id() as i64, last as i64])?;
                trim.execute(params![b.no, last.saturating_sub(EVENTS_RETAINED) as i64])?;
            }
        }
        tx.commit()
    }

    /// Deletes subscription `no`: its statement, rows and event log, in
    /// one transaction.
    pub fn remove(&mut self, no: SubNo) -> rusqlite::Result<()> {
        let tx = self.conn()?.transaction()?;
        tx.execute("DELETE FROM params WHERE sub = ?1", [no])?;
        tx.execute("DELETE FROM rows WHERE sub = ?1", [no])?;
        tx.execute("DELETE FROM events WHERE sub = ?1", [no])?;
        tx.execute("DELETE FROM subs WHERE n = ?1", [no])?;
        tx.commit()
    }

    /// The retained events of subscription `no` after change id `from`,
    /// oldest first, and the oldest change id retained (if any).
    pub fn events_after(
        &self,
        no: SubNo,
        from: u64,
    ) -> rusqlite::Result<(Vec<ChangeEvent>, Option<u64>)> {
        // No file yet: no subscription has stored anything.
        let Some(conn) = &self.conn else {
            return Ok((Vec::new(), None));
        };
        let oldest: Option<i64> = conn
            .prepare_cached("SELECT min(change_id) FROM events WHERE sub = ?1")?
            .query_row([no], |r| r.get(0))
            .optional()?
            .flatten();
        let mut stmt = conn.prepare_cached(
            "SELECT change_id, kind, row_id, cells FROM events
             WHERE sub = ?1 AND change_id > ?2 ORDER BY change_id",
        )?;
        let mut q = stmt.query(params![no, from.min(i64::MAX as u64) as i64])?;
        let mut events = Vec::new();
        while let Some(r) = q.next()? {
            events.push(event_of(r, 0)?);
        }
        Ok((events, oldest.map(|o| o as u64)))
    }
}

fn read_params(conn: &Connection, no: SubNo, kind: i64) -> rusqlite::Result<Params> {
    let mut stmt =
        conn.prepare_cached("SELECT name, value FROM params WHERE sub = ?1 ORDER BY idx")?;
    let values: Vec<(Option<String>, Value)> = stmt
        .query_map([no], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(params_of(kind, values))
}

fn event_of(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<ChangeEvent> {
    let kind = ChangeKind::from_code(r.get(at + 1)?).ok_or_else(|| corrupt("event kind"))?;
    let cells: Vec<u8> = r.get(at + 3)?;
    Ok(ChangeEvent {
        change_id: r.get::<_, i64>(at)? as u64,
        kind,
        row_id: r.get::<_, i64>(at + 2)? as u64,
        cells: codec::decode(&cells).ok_or_else(|| corrupt("event cells"))?,
    })
}

fn params_of(kind: i64, values: Vec<(Option<String>, Value)>) -> Params {
    match kind {
        0 => Params::None,
        1 => Params::Positional(values.into_iter().map(|(_, v)| v).collect()),
        _ => Params::Named(
            values
                .into_iter()
                .map(|(n, v)| (n.unwrap_or_default(), v))
                .collect(),
        ),
    }
}

/// Reads a subscription stored in the old layout (`data_dir/subs/<id>.db`,
/// one file per subscription), events included. The caller moves it into
/// a worker's store and then removes the file.
pub(crate) fn read_legacy(path: &Path) -> rusqlite::Result<Stored> {
    let conn = Connection::open(path)?;
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
    let values: Vec<(Option<String>, Value)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    drop(stmt);
    let mut rows = Vec::new();
    {
        let mut stmt = conn.prepare("SELECT row_id, cells FROM rows ORDER BY row_id")?;
        let mut q = stmt.query([])?;
        while let Some(r) = q.next()? {
            let cells: Vec<u8> = r.get(1)?;
            rows.push((
                r.get::<_, i64>(0)? as u64,
                codec::decode(&cells).ok_or_else(|| corrupt("row cells"))?,
            ));
        }
    }
    let mut events = Vec::new();
    {
        let mut stmt =
            conn.prepare("SELECT change_id, kind, row_id, cells FROM events ORDER BY change_id")?;
        let mut q = stmt.query([])?;
        while let Some(r) = q.next()? {
            events.push(event_of(r, 0)?);
        }
    }
    Ok(Stored {
        no: None,
        id,
        statement: Statement {
            sql,
            params: params_of(kind, values),
        },
        hash,
        rows,
        next_row_id: next_row_id as u64,
        last_change_id: last_change_id as u64,
        events,
    })
}

fn read_cells(conn: &Connection, sql: &str, no: SubNo) -> rusqlite::Result<Vec<(u64, Vec<Value>)>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut q = stmt.query([no])?;
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
