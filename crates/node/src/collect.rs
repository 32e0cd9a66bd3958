//! Tombstone collection on a node (docs/crr.md, "Tombstone collection"):
//! the durable state around `CrrConn::collect_tombstones` — this node's
//! floors (what was collected, here or at peers it synced with), the
//! checkpoints of its applied prefixes that say what it held a retention
//! ago, whether it is still bootstrapping (a fresh data dir, catching up:
//! what it holds came from peers after their collections), and whether it
//! missed collected tombstones (stale: it must be re-seeded, and refuses
//! writes meanwhile). The replicator decides when (it knows the members);
//! `patina_proto::collect` holds the rules.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use patina_crr::CrrConn;
use patina_proto::{lower_bounds, Checkpoints};
use patina_wire::{ActorId, CollectedFloors, DbKind};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::NodeError;
use crate::writer::Writer;

pub(crate) const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS patina_collect_floors(
    actor BLOB PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS patina_collect_checkpoints(
    at_ms INTEGER NOT NULL,
    actor BLOB NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (at_ms, actor)
) WITHOUT ROWID;
-- `phase`: 'bootstrapping' (a fresh data dir until its first catch-up
-- ends) or 'joined'; `stale`: why this node must be re-seeded.
CREATE TABLE IF NOT EXISTS patina_collect_state(
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;
";

/// What a node knows of one database's collection, as readers see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectionState {
    /// Per actor: tombstones its versions `1..=floor` wrote may be gone
    /// (collected here, or at a peer that said so).
    pub floors: BTreeMap<ActorId, u64>,
    /// Per table: the largest causal length of a collected tombstone.
    pub causal_lengths: Vec<(String, u64)>,
    /// A fresh data dir that has not caught up with its peers yet: what it
    /// lacks below the floors it is still pulling, not missed.
    pub bootstrapping: bool,
    /// Why this database must be re-seeded, once it is known that it
    /// missed collected tombstones.
    pub stale: Option<String>,
    /// Set at start for a node back after an absence too long to be sure
    /// it missed no collected delete (see `Node::mark_returning`): why its
    /// writes wait. Cleared once it caught up with a peer.
    pub returning: Option<String>,
    /// When this node last kept a checkpoint (Unix ms): it was running
    /// then. A pass keeps one every eighth of the retention at most.
    pub last_checkpoint_ms: Option<u64>,
    /// When a peer last answered this node's sync (Unix ms), and how long
    /// a silence may last after it (ms); `None` before the first answer
    /// (see `Node::note_contact`). Kept with each checkpoint, so a restart
    /// starts from the last one kept (older than the last answer: safe).
    pub last_contact: Option<(u64, u64)>,
}

impl CollectionState {
    /// Why writes must wait, at `now_ms`, for a node that has heard from no
    /// peer for longer than the limit noted with the last answer (over half
    /// the retention) while it ran — frozen, or cut off: what it takes then
    /// could bring back a row its peers deleted and forgot meanwhile, as
    /// for a node that was stopped that long.
    pub fn out_of_touch(&self, now_ms: u64) -> Option<String> {
        let (last, limit_ms) = self.last_contact?;
        let silent_ms = now_ms.checked_sub(last)?;
        (silent_ms > limit_ms).then(|| {
            format!(
                "no peer has answered this node for {:.0} s, over half of \
                 db.tombstone_retention (it was frozen, or cut off): peers may have collected \
                 deletes it missed, so it takes writes again once it has caught up with a peer \
                 and found it missed none; write to another node meanwhile",
                silent_ms as f64 / 1000.0,
            )
        })
    }

    /// What this node tells peers before its summary; `None` when it knows
    /// of no collection.
    pub fn to_wire(&self, db: DbKind) -> Option<CollectedFloors> {
        if self.floors.is_empty() && self.causal_lengths.is_empty() {
            return None;
        }
        Some(CollectedFloors {
            db,
            floors: self.floors.iter().map(|(a, v)| (*a, *v)).collect(),
            causal_lengths: self.causal_lengths.clone(),
        })
    }
}

/// One collection pass's inputs; times are Unix milliseconds.
#[derive(Debug, Clone)]
pub struct CollectRequest {
    pub now_ms: u64,
    /// `db.tombstone_retention`.
    pub retention_ms: u64,
    /// How often a checkpoint of the applied prefixes is kept.
    pub checkpoint_every_ms: u64,
    /// What every current member holds (`patina_proto::Watermark`).
    pub watermark: BTreeMap<ActorId, u64>,
    /// Keys a pass looks at, at most (a pass holds the writer).
    pub keys_max: u64,
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectReport {
    /// Tombstones removed.
    pub rows: u64,
    /// Per actor, the versions collected up to (the pass's bounds, unless
    /// it stopped at `keys_max`).
    pub bounds: BTreeMap<ActorId, u64>,
    /// Nothing more is collectable with these bounds.
    pub complete: bool,
}

/// One database's collection state, shared by the node's handles.
#[derive(Debug)]
pub(crate) struct Collection {
    state: Mutex<CollectionState>,
    checkpoints: Mutex<Checkpoints>,
}

impl Collection {
    /// Reads (creating) the tables of `conn`, a database before its writer
    /// starts. A data dir whose bookkeeping holds no other node's version
    /// is fresh: it bootstraps.
    pub(crate) fn load(conn: &CrrConn) -> rusqlite::Result<Arc<Collection>> {
        let c = conn.connection();
        c.execute_batch(SCHEMA_SQL)?;
        let mut floors = BTreeMap::new();
        let mut stmt = c.prepare("SELECT actor, version FROM patina_collect_floors")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))? {
            let (actor, version) = row?;
            if let Some(actor) = ActorId::from_slice(&actor) {
                floors.insert(actor, version.max(0) as u64);
            }
        }
        let mut taken: BTreeMap<u64, BTreeMap<ActorId, u64>> = BTreeMap::new();
        let mut stmt = c.prepare("SELECT at_ms, actor, version FROM patina_collect_checkpoints")?;
        for row in stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })? {
            let (at, actor, version) = row?;
            if let Some(actor) = ActorId::from_slice(&actor) {
                taken
                    .entry(at.max(0) as u64)
                    .or_default()
                    .insert(actor, version.max(0) as u64);
            }
        }
        let phase = state_value(c, "phase")?;
        let bootstrapping = match phase.as_deref() {
            Some(phase) => phase == "bootstrapping",
            None => {
                let has_applied: bool = c.query_row(
                    "SELECT count(*) FROM sqlite_master WHERE name = 'patina_applied'",
                    [],
                    |r| r.get::<_, i64>(0).map(|n| n > 0),
                )?;
                let others: i64 = if has_applied {
                    c.query_row("SELECT count(*) FROM patina_applied", [], |r| r.get(0))?
                } else {
                    0
                };
                let fresh = others == 0;
                set_state(c, "phase", if fresh { "bootstrapping" } else { "joined" })?;
                fresh
            }
        };
        let state = CollectionState {
            floors,
            causal_lengths: conn.collected_cls(),
            bootstrapping,
            stale: state_value(c, "stale")?,
            returning: None,
            last_checkpoint_ms: taken.keys().next_back().copied(),
            last_contact: state_value(c, "last_contact")?.and_then(|v| {
                let (at, limit) = v.split_once(' ')?;
                Some((at.parse().ok()?, limit.parse().ok()?))
            }),
        };
        Ok(Arc::new(Collection {
            state: Mutex::new(state),
            checkpoints: Mutex::new(Checkpoints::from_stored(taken)),
        }))
    }

    /// Sets (or with `None` clears) why writes wait for this node's return
    /// to be checked; in memory only: a restart derives it again from
    /// [`CollectionState::last_checkpoint_ms`], which no pass moves while it
    /// is set.
    pub(crate) fn set_returning(&self, reason: Option<String>) {
        self.update(|s| s.returning = reason);
    }

    pub(crate) fn note_contact(&self, at_ms: u64, limit_ms: u64) {
        self.update(|s| s.last_contact = Some((at_ms, limit_ms)));
    }

    pub(crate) fn state(&self) -> CollectionState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update<T>(&self, f: impl FnOnce(&mut CollectionState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn state_value(c: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    c.query_row(
        "SELECT value FROM patina_collect_state WHERE key = ?1",
        [key],
        |r| r.get(0),
    )
    .optional()
}

fn set_state(c: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO patina_collect_state(key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// Raises the stored floors to `floors` where higher; returns the result.
fn raise_floors(
    c: &Connection,
    have: &BTreeMap<ActorId, u64>,
    floors: impl IntoIterator<Item = (ActorId, u64)>,
) -> rusqlite::Result<BTreeMap<ActorId, u64>> {
    let mut out = have.clone();
    let mut stmt = c.prepare_cached(
        "INSERT INTO patina_collect_floors(actor, version) VALUES (?1, ?2)
         ON CONFLICT(actor) DO UPDATE SET version = max(version, excluded.version)",
    )?;
    for (actor, floor) in floors {
        let floor = floor.min(i64::MAX as u64);
        if out.get(&actor).is_some_and(|&f| f >= floor) || floor == 0 {
            continue;
        }
        stmt.execute(params![&actor.0[..], floor as i64])?;
        out.insert(actor, floor);
    }
    Ok(out)
}

/// Marks a database restored from a backup as joined: what it holds is a
/// peer's as of the backup, to be checked against the floors like any
/// returning node's. The source's checkpoints (what it held when) and a
/// stale mark are not the new node's.
pub(crate) fn mark_restored(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch(SCHEMA_SQL)?;
    c.execute_batch(
        "DELETE FROM patina_collect_checkpoints;
         DELETE FROM patina_collect_state WHERE key = 'stale';",
    )?;
    set_state(c, "phase", "joined")
}

fn database_error(db: DbKind, e: impl Into<patina_crr::CrrError>) -> NodeError {
    NodeError::Database {
        db: db.name(),
        source: e.into(),
    }
}

impl Collection {
    /// One pass on `db` (see [`CollectRequest`]) on its writer; `own` is
    /// what this node holds of each actor.
    pub(crate) async fn collect(
        self: &Arc<Self>,
        writer: &Writer,
        db: DbKind,
        own: BTreeMap<ActorId, u64>,
        request: CollectRequest,
    ) -> Result<CollectReport, NodeError> {
        let collection = Arc::clone(self);
        writer
            .with(move |conn| collect_pass(conn, &collection, own, &request))
            .await
            .ok_or(NodeError::ShuttingDown)?
            .map_err(|e| database_error(db, e))
    }

    /// Learns what a peer collected; whether anything was new here.
    pub(crate) async fn adopt(
        self: &Arc<Self>,
        writer: &Writer,
        floors: CollectedFloors,
    ) -> Result<bool, NodeError> {
        let db = floors.db;
        let collection = Arc::clone(self);
        writer
            .with(move |conn| -> patina_crr::Result<bool> {
                let mut changed = false;
                for (table, cl) in &floors.causal_lengths {
                    changed |= conn.raise_collected_cl(table, *cl)?;
                }
                let have = collection.state().floors;
                let raised = raise_floors(conn.connection(), &have, floors.floors.iter().copied())?;
                changed |= raised != have;
                let cls = conn.collected_cls();
                collection.update(|s| {
                    s.floors = raised;
                    s.causal_lengths = cls;
                });
                Ok(changed)
            })
            .await
            .ok_or(NodeError::ShuttingDown)?
            .map_err(|e| database_error(db, e))
    }

    /// Records (durably) that the database is stale, for `reason`.
    pub(crate) async fn mark_stale(
        self: &Arc<Self>,
        writer: &Writer,
        db: DbKind,
        reason: String,
    ) -> Result<(), NodeError> {
        let collection = Arc::clone(self);
        writer
            .with(move |conn| {
                set_state(conn.connection(), "stale", &reason)?;
                collection.update(|s| s.stale = Some(reason));
                Ok::<_, rusqlite::Error>(())
            })
            .await
            .ok_or(NodeError::ShuttingDown)?
            .map_err(|e| database_error(db, e))
    }

    /// Records (durably) that bootstrapping is over.
    pub(crate) async fn mark_joined(
        self: &Arc<Self>,
        writer: &Writer,
        db: DbKind,
    ) -> Result<(), NodeError> {
        if !self.state().bootstrapping {
            return Ok(());
        }
        let collection = Arc::clone(self);
        writer
            .with(move |conn| {
                set_state(conn.connection(), "phase", "joined")?;
                collection.update(|s| s.bootstrapping = false);
                Ok::<_, rusqlite::Error>(())
            })
            .await
            .ok_or(NodeError::ShuttingDown)?
            .map_err(|e| database_error(db, e))
    }
}

fn collect_pass(
    conn: &mut CrrConn,
    collection: &Collection,
    own: BTreeMap<ActorId, u64>,
    request: &CollectRequest,
) -> patina_crr::Result<CollectReport> {
    let c = conn.connection();
    let aged = {
        let mut checkpoints = collection
            .checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if checkpoints.maybe_take(request.now_ms, request.checkpoint_every_ms, own) {
            let (at, prefixes) = checkpoints.iter().last().cloned().unwrap_or_default();
            // A clock that went back dropped checkpoints from the "future".
            c.execute(
                "DELETE FROM patina_collect_checkpoints WHERE at_ms >= ?1",
                [at as i64],
            )?;
            let mut insert = c.prepare_cached(
                "INSERT INTO patina_collect_checkpoints(at_ms, actor, version) VALUES (?1, ?2, ?3)",
            )?;
            for (actor, version) in &prefixes {
                insert.execute(params![at as i64, &actor.0[..], *version as i64])?;
            }
            collection.update(|s| s.last_checkpoint_ms = Some(at));
            // The last peer answer, kept at the checkpoints' pace: a node
            // cut off keeps checkpointing, so only this tells a restart
            // how long it has been out of touch (see `out_of_touch`).
            if let Some((contact, limit)) = collection.state().last_contact {
                set_state(c, "last_contact", &format!("{contact} {limit}"))?;
            }
        }
        let aged = checkpoints.aged(request.now_ms, request.retention_ms);
        if let Some(&(oldest, _)) = checkpoints.iter().next() {
            c.execute(
                "DELETE FROM patina_collect_checkpoints WHERE at_ms < ?1",
                [oldest as i64],
            )?;
        }
        aged
    };
    let bounds = lower_bounds(&request.watermark, &aged);
    if bounds.is_empty() {
        return Ok(CollectReport {
            complete: true,
            ..CollectReport::default()
        });
    }
    let done = conn.collect_tombstones(&bounds, request.keys_max)?;
    let have = collection.state().floors;
    // Floors name versions whose tombstones are gone: a node that lacks a
    // version this pass only scanned (an insert, an update) holds nothing
    // it deleted, so it is not stale for it.
    let raised = raise_floors(conn.connection(), &have, done.removed_through.clone())?;
    let cls = conn.collected_cls();
    collection.update(|s| {
        s.floors = raised;
        s.causal_lengths = cls;
    });
    Ok(CollectReport {
        rows: done.rows,
        bounds: done.through,
        complete: done.complete,
    })
}
