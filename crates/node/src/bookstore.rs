//! The durable half of replication bookkeeping: which remote versions a
//! database holds, the chunks of incomplete transactions, and the changes
//! of held versions (waiting for their schema, or refused by local
//! constraints; see `held`). Lives in the database file it
//! describes and is written in the same SQLite transaction as the changes
//! (`CrrConn::apply_changes_with`), so a crash never leaves the bookkeeping
//! claiming changes that are not there, or the reverse. Versions and seqs
//! are stored as SQLite integers (crr refuses counters above 2^62).

use patina_wire::{ActorId, ChangeChunk, Span, WireChange};
use rusqlite::{params, Connection};

pub(crate) const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS patina_applied(
    actor BLOB PRIMARY KEY NOT NULL,
    spans BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS patina_partials(
    actor BLOB NOT NULL,
    version INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    have BLOB NOT NULL,
    PRIMARY KEY (actor, version)
) WITHOUT ROWID;
-- Several changes of a version may share a seq (a sentinel created while
-- merging carries the seq of the change that created it): the change
-- itself is part of the key.
CREATE TABLE IF NOT EXISTS patina_buffered_changes(
    actor BLOB NOT NULL,
    version INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    change BLOB NOT NULL,
    PRIMARY KEY (actor, version, seq, change)
) WITHOUT ROWID;
-- A held version's changes are its rows of patina_buffered_changes.
-- `waiting`: some name a table or column this schema lacks; `refused`:
-- why local constraints refused some (NULL if none were).
CREATE TABLE IF NOT EXISTS patina_parked(
    actor BLOB NOT NULL,
    version INTEGER NOT NULL,
    waiting INTEGER NOT NULL DEFAULT 1,
    refused TEXT,
    PRIMARY KEY (actor, version)
) WITHOUT ROWID;
";

/// Databases written before held versions could be refused have the two
/// first columns of `patina_parked` only; every version held then waited.
fn upgrade(conn: &Connection) -> rusqlite::Result<()> {
    let has_refused: bool = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('patina_parked') WHERE name = 'refused'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_refused {
        conn.execute_batch(
            "ALTER TABLE patina_parked ADD COLUMN waiting INTEGER NOT NULL DEFAULT 1;
             ALTER TABLE patina_parked ADD COLUMN refused TEXT;",
        )?;
    }
    Ok(())
}

/// What is persisted, as loaded at start.
#[derive(Debug, Default)]
pub(crate) struct Persisted {
    pub applied: Vec<(ActorId, Vec<Span>)>,
    pub partials: Vec<(ActorId, u64, u64, Vec<Span>)>,
}

fn actor_of(bytes: Vec<u8>) -> rusqlite::Result<ActorId> {
    ActorId::from_slice(&bytes).ok_or_else(|| corrupt("an actor id is not 16 bytes"))
}

fn corrupt(what: &str) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(format!("replication bookkeeping: {what}").into())
}

fn spans_of(bytes: &[u8]) -> rusqlite::Result<Vec<Span>> {
    patina_wire::decode_value::<Vec<Span>>(bytes)
        .map(|(s, _)| s)
        .map_err(|e| corrupt(&e.to_string()))
}

fn encode<T: serde::Serialize>(value: &T) -> rusqlite::Result<Vec<u8>> {
    patina_wire::encode_value(value).map_err(|e| corrupt(&e.to_string()))
}

pub(crate) fn load(conn: &Connection) -> rusqlite::Result<Persisted> {
    conn.execute_batch(SCHEMA_SQL)?;
    upgrade(conn)?;
    read(conn)
}

/// What [`load`] loads, without creating or upgrading the tables (from a
/// backup's copy, which is only read).
pub(crate) fn read(conn: &Connection) -> rusqlite::Result<Persisted> {
    let mut out = Persisted::default();
    let mut st = conn.prepare("SELECT actor, spans FROM patina_applied")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        out.applied
            .push((actor_of(r.get(0)?)?, spans_of(&r.get::<_, Vec<u8>>(1)?)?));
    }
    let mut st = conn.prepare("SELECT actor, version, last_seq, have FROM patina_partials")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        out.partials.push((
            actor_of(r.get(0)?)?,
            r.get::<_, i64>(1)? as u64,
            r.get::<_, i64>(2)? as u64,
            spans_of(&r.get::<_, Vec<u8>>(3)?)?,
        ));
    }
    Ok(out)
}

pub(crate) fn save_applied(
    conn: &Connection,
    actor: ActorId,
    spans: &[Span],
) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO patina_applied(actor, spans) VALUES (?1, ?2)")?
        .execute(params![actor.as_bytes().as_slice(), encode(&spans)?])?;
    Ok(())
}

/// Stores a chunk's changes and the version's new partial state.
pub(crate) fn buffer_chunk(
    conn: &Connection,
    chunk: &ChangeChunk,
    last_seq: u64,
    have: &[Span],
) -> rusqlite::Result<()> {
    store(conn, chunk.actor, chunk.version, &chunk.changes)?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO patina_partials(actor, version, last_seq, have) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        chunk.actor.as_bytes().as_slice(),
        chunk.version as i64,
        last_seq as i64,
        encode(&have)?
    ])?;
    Ok(())
}

fn store(
    conn: &Connection,
    actor: ActorId,
    version: u64,
    changes: &[WireChange],
) -> rusqlite::Result<()> {
    let mut st = conn.prepare_cached(
        "INSERT OR REPLACE INTO patina_buffered_changes(actor, version, seq, change) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for c in changes {
        st.execute(params![
            actor.as_bytes().as_slice(),
            version as i64,
            c.seq,
            encode(c)?
        ])?;
    }
    Ok(())
}

/// The buffered changes of one version, by seq.
pub(crate) fn buffered(
    conn: &Connection,
    actor: ActorId,
    version: u64,
) -> rusqlite::Result<Vec<WireChange>> {
    let mut st = conn.prepare_cached(
        "SELECT change FROM patina_buffered_changes WHERE actor = ?1 AND version = ?2 ORDER BY seq",
    )?;
    let mut rows = st.query(params![actor.as_bytes().as_slice(), version as i64])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let bytes: Vec<u8> = r.get(0)?;
        let (c, _) =
            patina_wire::decode_value::<WireChange>(&bytes).map_err(|e| corrupt(&e.to_string()))?;
        out.push(c);
    }
    Ok(out)
}

/// Bytes stored per buffered version (incomplete or held), at start.
pub(crate) fn buffered_bytes(conn: &Connection) -> rusqlite::Result<Vec<(ActorId, u64, usize)>> {
    let mut st = conn.prepare(
        "SELECT actor, version, sum(length(change)) FROM patina_buffered_changes GROUP BY actor, version",
    )?;
    let mut rows = st.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push((
            actor_of(r.get(0)?)?,
            r.get::<_, i64>(1)? as u64,
            r.get::<_, i64>(2)?.max(0) as usize,
        ));
    }
    Ok(out)
}

/// Forgets a version's buffer and partial state (it was applied).
pub(crate) fn clear_version(
    conn: &Connection,
    actor: ActorId,
    version: u64,
) -> rusqlite::Result<()> {
    let a = actor.as_bytes().as_slice();
    conn.prepare_cached("DELETE FROM patina_buffered_changes WHERE actor = ?1 AND version = ?2")?
        .execute(params![a, version as i64])?;
    conn.prepare_cached("DELETE FROM patina_partials WHERE actor = ?1 AND version = ?2")?
        .execute(params![a, version as i64])?;
    conn.prepare_cached("DELETE FROM patina_parked WHERE actor = ?1 AND version = ?2")?
        .execute(params![a, version as i64])?;
    Ok(())
}

/// Holds `changes` of an applied version (adding to what it holds
/// already): `waiting` when they name a table or column this schema lacks,
/// `refused` with the reason when local constraints refused them.
pub(crate) fn hold(
    conn: &Connection,
    actor: ActorId,
    version: u64,
    changes: &[WireChange],
    waiting: bool,
    refused: Option<&str>,
) -> rusqlite::Result<()> {
    store(conn, actor, version, changes)?;
    conn.prepare_cached(
        "INSERT INTO patina_parked(actor, version, waiting, refused) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (actor, version) DO UPDATE SET
             waiting = max(waiting, excluded.waiting),
             refused = coalesce(excluded.refused, refused)",
    )?
    .execute(params![
        actor.as_bytes().as_slice(),
        version as i64,
        waiting,
        refused
    ])?;
    Ok(())
}

/// One held version as stored.
pub(crate) struct HeldRow {
    pub actor: ActorId,
    pub version: u64,
    pub waiting: bool,
    pub refused: Option<String>,
}

/// Every held version.
pub(crate) fn held(conn: &Connection) -> rusqlite::Result<Vec<HeldRow>> {
    let mut st = conn.prepare(
        "SELECT actor, version, waiting, refused FROM patina_parked ORDER BY actor, version",
    )?;
    let mut rows = st.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(HeldRow {
            actor: actor_of(r.get(0)?)?,
            version: r.get::<_, i64>(1)? as u64,
            waiting: r.get(2)?,
            refused: r.get(3)?,
        });
    }
    Ok(out)
}
