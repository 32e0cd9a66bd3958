//! Capture of local writes: triggers on every CRR table call `crr_capture`,
//! a function only Patina's connections define, which records what happened
//! to which primary key. At commit the recorded events are turned into clock
//! entries with cr-sqlite's local-write rules (crr-model.md 4 and 5).
//!
//! A connection without the function (the sqlite3 shell, another program)
//! fails on any write to a CRR table, and a Patina connection writing outside
//! a [`crate::CrrTx`] gets an error: a write that bypasses capture is
//! impossible rather than silently unreplicated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::ValueRef;
use rusqlite::Connection;

use crate::clock::{add, Entry, RowClock};
use crate::error::Result;
use crate::pk;
use crate::schema::quote_ident;
use crate::store::{table_of, ClockCache, CrrTable};
use crate::value::same_value;

const OP_INSERT: i64 = 0;
const OP_DELETE: i64 = 1;
const OP_UPDATE: i64 = 2;

/// What the connection is doing, which decides what a trigger firing means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// No CRR transaction: a write to a CRR table is refused.
    Idle,
    /// Inside a `CrrTx`: writes are recorded.
    Capturing,
    /// The merge writes base tables: nothing is recorded.
    Merging,
}

/// One row-level write to a CRR table, in the order SQLite made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    Insert {
        tbl: u32,
        pk: Vec<u8>,
    },
    Delete {
        tbl: u32,
        pk: Vec<u8>,
    },
    /// Boxed: inline it made every event 80 bytes instead of 32, and a
    /// 100k-row insert holds 100k events until its commit (issue 15).
    Update(Box<UpdateEvent>),
}

// Keeps the events of a large transaction small (see `Event::Update`).
const _: () = assert!(std::mem::size_of::<Event>() <= 32);

/// `new_pk` is set when the primary key changed; `changed` lists the clock
/// slots whose value changed, ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpdateEvent {
    pub tbl: u32,
    pub old_pk: Vec<u8>,
    pub new_pk: Option<Vec<u8>>,
    pub changed: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Shape {
    name: String,
    pk_len: usize,
    slots: usize,
}

#[derive(Debug)]
pub(crate) struct CaptureState {
    pub mode: Mode,
    pub events: Vec<Event>,
    shapes: HashMap<u32, Shape>,
}

/// The capture state shared between a connection and its `crr_capture`.
#[derive(Debug, Clone)]
pub(crate) struct Capture(Arc<Mutex<CaptureState>>);

impl Capture {
    pub fn new() -> Self {
        Capture(Arc::new(Mutex::new(CaptureState {
            mode: Mode::Idle,
            events: Vec::new(),
            shapes: HashMap::new(),
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, CaptureState> {
        // A panic while holding the lock cannot leave the state half-written
        // in a way that matters: the transaction it belonged to rolls back.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_mode(&self, mode: Mode) {
        let mut state = self.lock();
        state.mode = mode;
        state.events.clear();
    }

    /// Forgets every table, then knows `tables` (after a failed schema change).
    pub fn replace_tables<'a>(&self, tables: impl Iterator<Item = &'a CrrTable>) {
        self.lock().shapes.clear();
        for t in tables {
            self.add_table(t);
        }
    }

    pub fn add_table(&self, table: &CrrTable) {
        self.lock().shapes.insert(
            table.id,
            Shape {
                name: table.info.name.clone(),
                pk_len: table.info.pk.len(),
                slots: table.slots(),
            },
        );
    }

    /// Registers `crr_capture` on `conn`.
    pub fn register(&self, conn: &Connection) -> Result<()> {
        let me = self.clone();
        conn.create_scalar_function("crr_capture", -1, FunctionFlags::SQLITE_UTF8, move |ctx| {
            me.on_trigger(ctx)
                .map(|()| Option::<i64>::None)
                .map_err(|msg| rusqlite::Error::UserFunctionError(msg.into()))
        })?;
        Ok(())
    }

    fn on_trigger(&self, ctx: &Context<'_>) -> Result<(), String> {
        let mut state = self.lock();
        let tbl = ctx.get::<i64>(0).map_err(|e| e.to_string())?;
        let shape = u32::try_from(tbl)
            .ok()
            .and_then(|tbl| state.shapes.get(&tbl))
            .ok_or_else(|| format!("crr_capture: unknown CRR table id {tbl}"))?;
        let tbl = tbl as u32;
        match state.mode {
            Mode::Merging => return Ok(()),
            Mode::Idle => {
                return Err(format!(
                    "table {:?} is a CRR table: write it inside a CRR transaction so the change replicates",
                    shape.name
                ))
            }
            Mode::Capturing => {}
        }
        let op = ctx.get::<i64>(1).map_err(|e| e.to_string())?;
        let (pk_len, slots) = (shape.pk_len, shape.slots);
        let expected = match op {
            OP_INSERT => 2 + pk_len + slots,
            OP_DELETE => 2 + pk_len,
            OP_UPDATE => 2 + 2 * pk_len + 2 * slots,
            other => return Err(format!("crr_capture: unknown operation {other}")),
        };
        if ctx.len() != expected {
            return Err(format!(
                "crr_capture: {} arguments for table {:?}, expected {expected}",
                ctx.len(),
                shape.name
            ));
        }
        // Text crosses the wire as UTF-8: refuse what could not arrive intact.
        let utf8 = |from: usize, to: usize| -> Result<(), String> {
            for i in from..to {
                if let ValueRef::Text(bytes) = ctx.get_raw(i) {
                    std::str::from_utf8(bytes).map_err(|_| {
                        format!(
                            "table {:?}: a TEXT value is not valid UTF-8 (store bytes as a BLOB)",
                            shape.name
                        )
                    })?;
                }
            }
            Ok(())
        };
        let pack_at = |start: usize| {
            pk::pack((start..start + pk_len).map(|i| ctx.get_raw(i))).map_err(|e| e.to_string())
        };
        let event = match op {
            OP_INSERT => {
                utf8(2 + pk_len, expected)?;
                Event::Insert {
                    tbl,
                    pk: pack_at(2)?,
                }
            }
            OP_DELETE => Event::Delete {
                tbl,
                pk: pack_at(2)?,
            },
            _ => {
                let old_pk = pack_at(2)?;
                let new_pk = pack_at(2 + pk_len)?;
                let old_vals = 2 + 2 * pk_len;
                let changed: Vec<usize> = (0..slots)
                    .filter(|&s| {
                        !same_value(ctx.get_raw(old_vals + s), ctx.get_raw(old_vals + slots + s))
                    })
                    .collect();
                utf8(old_vals + slots, expected)?;
                let new_pk = (new_pk != old_pk).then_some(new_pk);
                if new_pk.is_none() && changed.is_empty() {
                    return Ok(());
                }
                Event::Update(Box::new(UpdateEvent {
                    tbl,
                    old_pk,
                    new_pk,
                    changed,
                }))
            }
        };
        state.events.push(event);
        Ok(())
    }
}

/// The three capture triggers of a table, as CREATE statements.
pub(crate) fn trigger_sql(table: &CrrTable) -> [(String, String); 3] {
    let t = quote_ident(&table.info.name);
    let cols = |prefix: &str, which: &mut dyn Iterator<Item = &str>| -> String {
        which
            .map(|c| format!(", {prefix}.{}", quote_ident(c)))
            .collect()
    };
    let pk_names = || table.info.pk_columns().map(|c| c.name.as_str());
    let col_names = || table.info.non_pk_columns().map(|c| c.name.as_str());
    let name = |suffix: &str| format!("{}__crr_{suffix}", table.info.name);
    let id = table.id;
    let ins = format!(
        "CREATE TRIGGER {} AFTER INSERT ON {t} BEGIN SELECT crr_capture({id}, {OP_INSERT}{}{}); END",
        quote_ident(&name("ins")),
        cols("NEW", &mut pk_names()),
        cols("NEW", &mut col_names())
    );
    let del = format!(
        "CREATE TRIGGER {} AFTER DELETE ON {t} BEGIN SELECT crr_capture({id}, {OP_DELETE}{}); END",
        quote_ident(&name("del")),
        cols("OLD", &mut pk_names())
    );
    let upd = format!(
        "CREATE TRIGGER {} AFTER UPDATE ON {t} BEGIN SELECT crr_capture({id}, {OP_UPDATE}{}{}{}{}); END",
        quote_ident(&name("upd")),
        cols("OLD", &mut pk_names()),
        cols("NEW", &mut pk_names()),
        cols("OLD", &mut col_names()),
        cols("NEW", &mut col_names()),
    );
    [(name("ins"), ins), (name("upd"), upd), (name("del"), del)]
}

/// Stamps clock entries of one local transaction.
struct Stamp {
    db_version: u64,
    next_seq: u64,
}

impl Stamp {
    fn entry(&mut self, col_version: u64) -> Entry {
        let seq = self.next_seq;
        self.next_seq += 1;
        Entry {
            col_version,
            db_version: self.db_version,
            site: 0,
            seq,
        }
    }
}

/// Sentinel → delete: cl to the next even value; column clocks dropped.
fn mark_deleted(clock: &mut RowClock, stamp: &mut Stamp) -> Result<()> {
    let alive = clock.cl.max(1);
    clock.cl = add(alive, if alive % 2 == 1 { 1 } else { 2 })?;
    clock.sentinel = Some(stamp.entry(clock.cl));
    clock.cols.iter_mut().for_each(|c| *c = None);
    Ok(())
}

/// A key without a clock, in a table whose tombstones were collected here:
/// its key may be one of them, still held as a tombstone by replicas that
/// have not collected it yet, so it comes alive as if deleted at the largest
/// causal length collected (crate::collect).
fn above_collected(clock: &mut RowClock, collected: Option<&u64>) {
    if let Some(&cl) = collected {
        if clock.cl == 0 && clock.is_empty() {
            clock.cl = cl;
        }
    }
}

/// Sentinel → alive: cl to the next odd value (1 for a never-seen key).
fn mark_alive(clock: &mut RowClock, stamp: &mut Stamp) -> Result<()> {
    clock.cl = match clock.cl {
        0 => 1,
        cl if cl.is_multiple_of(2) => add(cl, 1)?,
        cl => add(cl, 2)?,
    };
    clock.sentinel = Some(stamp.entry(clock.cl));
    Ok(())
}

fn bump(clock: &mut RowClock, slot: usize, stamp: &mut Stamp) -> Result<()> {
    let cv = match clock.cols[slot] {
        Some(e) => add(e.col_version, 1)?,
        None => 1,
    };
    clock.cols[slot] = Some(stamp.entry(cv));
    clock.cl = clock.cl.max(1);
    Ok(())
}

/// Turns one transaction's events into clock entries under `db_version`.
/// Returns how many entries were written (0: the transaction takes no
/// db_version).
pub(crate) fn record(
    conn: &Connection,
    tables: &HashMap<u32, CrrTable>,
    collected: &HashMap<u32, u64>,
    events: &[Event],
    db_version: u64,
    cache: &mut ClockCache,
) -> Result<u64> {
    let mut stamp = Stamp {
        db_version,
        next_seq: 0,
    };
    for event in events {
        match event {
            Event::Insert { tbl, pk } => {
                let table = table_of(tables, *tbl)?;
                // An inserted key is new or a tombstone; the cache checks
                // the guess when it writes (see ClockCache::get_assume_new).
                let row = cache.get_assume_new(conn, table, pk)?;
                row.dirty = true;
                let clock = &mut row.clock;
                above_collected(clock, collected.get(tbl));
                if table.slots() == 0 || clock.cl.is_multiple_of(2) && clock.cl > 0 {
                    mark_alive(clock, &mut stamp)?;
                }
                for slot in 0..table.slots() {
                    bump(clock, slot, &mut stamp)?;
                }
            }
            Event::Delete { tbl, pk } => {
                let row = cache.get(conn, table_of(tables, *tbl)?, pk)?;
                row.dirty = true;
                mark_deleted(&mut row.clock, &mut stamp)?;
            }
            Event::Update(update) => {
                let UpdateEvent {
                    tbl,
                    old_pk,
                    new_pk,
                    changed,
                } = &**update;
                let table = table_of(tables, *tbl)?;
                let target = match new_pk {
                    None => old_pk,
                    Some(new_pk) => {
                        let collected = collected.get(tbl);
                        move_row(conn, table, old_pk, new_pk, collected, cache, &mut stamp)?;
                        new_pk
                    }
                };
                let row = cache.get(conn, table, target)?;
                row.dirty = true;
                for &slot in changed {
                    bump(&mut row.clock, slot, &mut stamp)?;
                }
            }
        }
        cache.spill_if_full(conn, tables)?;
    }
    Ok(stamp.next_seq)
}

/// A primary-key UPDATE: the old key is deleted, the new key comes alive
/// and takes over the old key's column clocks, re-owned by this site.
fn move_row(
    conn: &Connection,
    table: &CrrTable,
    old_pk: &[u8],
    new_pk: &[u8],
    collected: Option<&u64>,
    cache: &mut ClockCache,
    stamp: &mut Stamp,
) -> Result<()> {
    let old = cache.get(conn, table, old_pk)?;
    old.dirty = true;
    let moved = old.clock.cols.clone();
    mark_deleted(&mut old.clock, stamp)?;
    let new = cache.get(conn, table, new_pk)?;
    new.dirty = true;
    above_collected(&mut new.clock, collected);
    mark_alive(&mut new.clock, stamp)?;
    for (slot, entry) in moved.iter().enumerate() {
        if let Some(e) = entry {
            new.clock.cols[slot] = Some(stamp.entry(add(e.col_version, 1)?));
        }
    }
    Ok(())
}
