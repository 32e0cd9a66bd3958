//! Held versions: remote versions this node records as applied although
//! some of their changes could not be merged. Those changes are kept on
//! disk (`bookstore::hold`) and merged later, while everything else of the
//! version and of the versions behind it applies at once:
//!
//! - **waiting**: they name a table or column this node's schema lacks (a
//!   peer runs a newer schema, the way a rolling change deploys); merged by
//!   the next schema reload that adds them. What this node dropped itself
//!   (a destructive schema change) is not waited for: changes naming it
//!   are counted and let go.
//! - **refused**: local constraints refused merging them (a schema that
//!   differs between nodes: a CHECK or NOT NULL here that the writer's
//!   schema lacks); retried at each reload. A malformed change is not
//!   refused this way: it is a bad message, not data this node cannot
//!   hold, so its chunk fails whole and sync fetches it again (perhaps
//!   from an honest peer).
//!
//! Merging a version's changes in parts is sound because the merge is a
//! CRDT join, per cell: applying the parts in any order, at any time, ends
//! in the state applying them together would (docs/crr.md). A held version
//! is still served whole to peers, so it travels on unchanged.

use std::collections::BTreeMap;
use std::ops::Range;

use patina_crr::{Change, CrrConn, CrrError};
use patina_wire::{ActorId, WireChange};
use rusqlite::Connection;

/// Why a version's changes are held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hold {
    /// Some name a table or column this schema lacks.
    pub waiting: bool,
    /// Why local constraints refused some, if they did.
    pub refused: Option<String>,
}

/// The held versions of a database, as of its last merge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldVersions {
    versions: BTreeMap<(ActorId, u64), Hold>,
}

impl HeldVersions {
    pub(crate) fn load(conn: &Connection) -> rusqlite::Result<HeldVersions> {
        let versions = crate::bookstore::held(conn)?
            .into_iter()
            .map(|r| {
                let hold = Hold {
                    waiting: r.waiting,
                    refused: r.refused,
                };
                ((r.actor, r.version), hold)
            })
            .collect();
        Ok(HeldVersions { versions })
    }

    /// Whether part of `actor`'s `version` is held (not merged yet).
    pub fn contains(&self, actor: ActorId, version: u64) -> bool {
        self.versions.contains_key(&(actor, version))
    }

    /// Versions held, for whatever reason.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// Versions waiting for schema this node lacks.
    pub fn waiting(&self) -> u64 {
        self.versions.values().filter(|h| h.waiting).count() as u64
    }

    /// Versions of which local constraints refused a part.
    pub fn refused(&self) -> u64 {
        self.versions
            .values()
            .filter(|h| h.refused.is_some())
            .count() as u64
    }

    /// Adds `hold` to what is held of the version.
    pub(crate) fn hold(&mut self, actor: ActorId, version: u64, hold: Hold) {
        let h = self.versions.entry((actor, version)).or_default();
        h.waiting |= hold.waiting;
        if hold.refused.is_some() {
            h.refused = hold.refused;
        }
    }

    pub(crate) fn release(&mut self, actor: ActorId, version: u64) {
        self.versions.remove(&(actor, version));
    }

    pub fn iter(&self) -> impl Iterator<Item = (ActorId, u64, &Hold)> {
        self.versions.iter().map(|(&(a, v), h)| (a, v, h))
    }
}

/// Changes `merge_isolating` refused: ranges of the batch with the reason.
pub(crate) type Refused = Vec<(Range<usize>, String)>;

/// Merges `batch` and runs `also` (the caller's bookkeeping, told what was
/// refused) in one transaction. When local constraints refuse the batch,
/// finds the rows they refuse by bisection, merges every other row — in
/// transactions of their own, which is safe because merging is idempotent:
/// a crash before `also` commits only means merging them again — and then
/// commits `also` with the refused rows. Any other failure (I/O, a busy
/// database) is returned, nothing recorded.
pub(crate) fn merge_isolating<T>(
    conn: &mut CrrConn,
    batch: &[Change],
    also: impl Fn(&Connection, &Refused) -> rusqlite::Result<T>,
) -> patina_crr::Result<(T, Refused)> {
    let first = conn.apply_changes_with(batch, |c| also(c, &Vec::new()));
    match first {
        Ok((_, t)) => return Ok((t, Vec::new())),
        Err(CrrError::RowRefused { .. }) => {}
        Err(e) => return Err(e),
    }
    let rows = row_ranges(batch);
    let mut refused = Vec::new();
    bisect(conn, batch, &rows, &mut refused)?;
    let (_, t) = conn.apply_changes_with(&[], |c| also(c, &refused))?;
    Ok((t, refused))
}

/// Merges the rows `rows` of `batch`, halving on refusal down to single
/// rows, which are refused.
fn bisect(
    conn: &mut CrrConn,
    batch: &[Change],
    rows: &[Range<usize>],
    refused: &mut Refused,
) -> patina_crr::Result<()> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(());
    };
    let span = first.start..last.end;
    match conn.apply_changes(&batch[span.clone()]) {
        Ok(_) => Ok(()),
        Err(CrrError::RowRefused { reason, .. }) => {
            if rows.len() == 1 {
                refused.push((span, reason));
                Ok(())
            } else {
                let (a, b) = rows.split_at(rows.len() / 2);
                bisect(conn, batch, a, refused)?;
                bisect(conn, batch, b, refused)
            }
        }
        Err(e) => Err(e),
    }
}

/// The runs of consecutive changes of one row: the smallest part a merge
/// is refused in (the merge writes a row at once).
fn row_ranges(batch: &[Change]) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for (i, c) in batch.iter().enumerate() {
        match out.last_mut() {
            Some(r) if batch[r.start].table == c.table && batch[r.start].pk == c.pk => {
                r.end = i + 1
            }
            _ => out.push(i..i + 1),
        }
    }
    out
}

/// Splits a version's changes into those this schema can merge, those
/// naming a table or column a destructive schema change dropped here (only
/// counted: they are never merged), and those naming a table or column it
/// lacks (held until a reload adds it).
pub(crate) fn split_known(
    conn: &CrrConn,
    changes: Vec<WireChange>,
) -> (Vec<WireChange>, usize, Vec<WireChange>) {
    let (known, unknown): (Vec<_>, Vec<_>) = changes
        .into_iter()
        .partition(|c| conn.knows_column(&c.table, &c.cid));
    let before = unknown.len();
    let waiting: Vec<WireChange> = unknown
        .into_iter()
        .filter(|c| !conn.is_dropped(&c.table, &c.cid))
        .collect();
    (known, before - waiting.len(), waiting)
}
