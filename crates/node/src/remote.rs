//! Remote changes on a database's writer thread: merging chunks that peers
//! sent (buffering incomplete transactions, parking versions whose schema
//! has not arrived) and reading out what peers ask for. The writer thread
//! owns the database's [`Bookkeeper`] and is the only place it changes, so
//! what it records is what the database holds.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use patina_crr::{Change, CrrConn};
use patina_wire::{ActorId, ChangeChunk, DbKind, Need, Span, WireChange};
use tokio::sync::watch;

use crate::bookstore;
use crate::changeset::Changeset;
use crate::chunks;
use crate::pages::{self, PageCache};
use patina_proto::{Bookkeeper, ChunkFate};

/// Incomplete transactions buffered at most (per database). Each holds
/// only the chunks received so far, on disk; the bound keeps the
/// bookkeeping's memory and summaries small when a peer sends the start of
/// many large transactions and never their ends.
pub const PARTIAL_VERSIONS_MAX: usize = 1024;

/// Versions one serve call reads at most; a larger need is answered in
/// several calls so the writer is never blocked for long.
pub(crate) const SERVE_VERSIONS_MAX: u64 = 256;

/// What happened to a batch of chunks.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RemoteOutcome {
    /// Per input chunk: whether it was new here (to forward once).
    pub fresh: Vec<bool>,
    /// Versions applied whole by this batch.
    pub versions_applied: usize,
    /// Changes merged (won, lost or ignored).
    pub changes_merged: usize,
    /// Versions kept until their tables or columns exist here.
    pub versions_parked: usize,
    pub duplicates: usize,
    /// Chunks refused because merging them failed (bad content).
    pub failed: usize,
    /// Chunks of new incomplete transactions refused because
    /// `PARTIAL_VERSIONS_MAX` are buffered already.
    pub refused_partials_full: usize,
}

/// A database's replication state on its writer thread.
pub(crate) struct Replica {
    pub db: DbKind,
    pub bookie: Bookkeeper,
    /// The bookkeeping as of the last batch, for summaries and planning.
    pub published: watch::Sender<Arc<Bookkeeper>>,
    /// The large version being served in pages.
    pub pages: PageCache,
}

impl Replica {
    pub fn open(conn: &CrrConn, db: DbKind) -> rusqlite::Result<Replica> {
        let bookie = load_bookie(conn, db)?;
        let (published, _) = watch::channel(Arc::new(bookie.clone()));
        Ok(Replica {
            db,
            bookie,
            published,
            pages: PageCache::default(),
        })
    }

    pub fn publish(&self) {
        self.published.send_replace(Arc::new(self.bookie.clone()));
    }

    pub fn on_local_commit(&mut self, version: u64) {
        self.bookie.set_own_version(self.db, version);
    }
}

fn load_bookie(conn: &CrrConn, db: DbKind) -> rusqlite::Result<Bookkeeper> {
    let persisted = bookstore::load(conn.connection())?;
    let k = db;
    let mut bookie = Bookkeeper::new(conn.site_id());
    bookie.set_own_version(k, conn.db_version());
    for (actor, spans) in persisted.applied {
        for s in spans {
            bookie.restore_applied(k, actor, s);
        }
    }
    for (actor, version, last_seq, have) in persisted.partials {
        bookie.restore_partial(k, actor, version, last_seq, have);
    }
    Ok(bookie)
}

/// One write the batch's transaction makes besides the merge.
enum Write {
    Buffer {
        chunk: Arc<ChangeChunk>,
        last_seq: u64,
        have: Vec<Span>,
    },
    Clear(ActorId, u64),
    Park(ChangeChunk),
}

/// Merges `chunks` (all of this database) in one transaction; on failure,
/// one chunk at a time so that one bad chunk costs only itself.
pub(crate) fn apply(
    conn: &mut CrrConn,
    replica: &mut Replica,
    chunks: &[Arc<ChangeChunk>],
    on_applied: &impl Fn(Changeset),
) -> RemoteOutcome {
    let outcome = match try_batch(conn, replica, chunks, on_applied) {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::warn!(db = replica.db.name(), chunks = chunks.len(), error = %e, "applying a batch of remote chunks failed; retrying one by one");
            reload(conn, replica);
            let mut all = RemoteOutcome::default();
            for chunk in chunks {
                match try_batch(conn, replica, std::slice::from_ref(chunk), on_applied) {
                    Ok(one) => add(&mut all, one),
                    Err(e) => {
                        tracing::warn!(db = replica.db.name(), actor = %chunk.actor, version = chunk.version, error = %e, "refused a remote chunk");
                        reload(conn, replica);
                        all.fresh.push(false);
                        all.failed += 1;
                    }
                }
            }
            all
        }
    };
    replica.publish();
    outcome
}

fn add(all: &mut RemoteOutcome, one: RemoteOutcome) {
    all.fresh.extend(one.fresh);
    all.versions_applied += one.versions_applied;
    all.changes_merged += one.changes_merged;
    all.versions_parked += one.versions_parked;
    all.duplicates += one.duplicates;
    all.failed += one.failed;
    all.refused_partials_full += one.refused_partials_full;
}

/// The bookkeeping records a batch as it goes (later chunks of the batch
/// must see earlier ones); when the transaction fails it is reloaded from
/// the database, which the failed transaction left untouched.
fn reload(conn: &CrrConn, replica: &mut Replica) {
    match load_bookie(conn, replica.db) {
        Ok(b) => replica.bookie = b,
        Err(e) => {
            tracing::error!(db = replica.db.name(), error = %e, "reloading replication bookkeeping failed")
        }
    }
}

fn try_batch(
    conn: &mut CrrConn,
    replica: &mut Replica,
    chunks: &[Arc<ChangeChunk>],
    on_applied: &impl Fn(Changeset),
) -> patina_crr::Result<RemoteOutcome> {
    let db = replica.db;
    let mut out = RemoteOutcome::default();
    let mut pending: HashMap<(ActorId, u64), Vec<WireChange>> = HashMap::new();
    let mut writes = Vec::new();
    let mut merge: Vec<Change> = Vec::new();
    let mut applied: Vec<(ActorId, u64, u64, std::ops::Range<usize>)> = Vec::new();
    let mut touched = BTreeSet::new();
    let mut large_done: Vec<pages::Completed> = Vec::new();
    for chunk in chunks {
        let key = (chunk.actor, chunk.version);
        let fate = if chunk.db == db {
            replica.bookie.classify(chunk)
        } else {
            ChunkFate::Duplicate
        };
        match fate {
            ChunkFate::Duplicate => {
                out.duplicates += 1;
                out.fresh.push(false);
                continue;
            }
            ChunkFate::Buffer
                if replica
                    .bookie
                    .partial(db, chunk.actor, chunk.version)
                    .is_none()
                    && replica.bookie.partials().count() >= PARTIAL_VERSIONS_MAX =>
            {
                // Bounded: a new incomplete transaction is refused while
                // this many are buffered; sync fetches it again later.
                out.refused_partials_full += 1;
                out.fresh.push(false);
                continue;
            }
            ChunkFate::Buffer => {
                replica.bookie.record_buffered(
                    db,
                    chunk.actor,
                    chunk.version,
                    chunk.last_seq,
                    chunk.seqs,
                );
                let (last_seq, have) = replica
                    .bookie
                    .partial(db, chunk.actor, chunk.version)
                    .map(|p| (p.last_seq, p.have.iter().collect()))
                    .unwrap_or((chunk.last_seq, vec![chunk.seqs]));
                pending
                    .entry(key)
                    .or_default()
                    .extend(chunk.changes.iter().cloned());
                writes.push(Write::Buffer {
                    chunk: Arc::clone(chunk),
                    last_seq,
                    have,
                });
            }
            ChunkFate::Complete { buffered } => {
                let mut changes = Vec::new();
                if buffered {
                    let tail = pending.remove(&key).unwrap_or_default();
                    // A large version is merged from the buffer in pages.
                    let tail = match pages::completes_large(conn, chunk, tail)? {
                        Ok(large) => {
                            replica
                                .bookie
                                .record_applied(db, chunk.actor, chunk.version);
                            touched.insert(chunk.actor);
                            writes.push(Write::Clear(chunk.actor, chunk.version));
                            large_done.push(large);
                            out.fresh.push(true);
                            continue;
                        }
                        Err(tail) => tail,
                    };
                    changes = bookstore::buffered(conn.connection(), chunk.actor, chunk.version)?;
                    changes.extend(tail);
                }
                changes.extend(chunk.changes.iter().cloned());
                // The same change may be buffered and arrive again; several
                // distinct changes may share a seq (see patina_wire::chunk_changes),
                // so only exact repeats of a cell's change are dropped.
                changes.sort_by(|a, b| cell_order(a).cmp(&cell_order(b)));
                changes.dedup_by(|a, b| cell_order(a) == cell_order(b));
                replica
                    .bookie
                    .record_applied(db, chunk.actor, chunk.version);
                touched.insert(chunk.actor);
                let whole = ChangeChunk {
                    changes,
                    ..(**chunk).clone()
                };
                if whole
                    .changes
                    .iter()
                    .all(|c| conn.knows_column(&c.table, &c.cid))
                {
                    let start = merge.len();
                    merge.extend(chunks::chunk_changes(&whole));
                    applied.push((
                        chunk.actor,
                        chunk.version,
                        chunk.committed_ms,
                        start..merge.len(),
                    ));
                    writes.push(Write::Clear(chunk.actor, chunk.version));
                } else {
                    out.versions_parked += 1;
                    writes.push(Write::Park(whole));
                }
            }
        }
        out.fresh.push(true);
    }
    let spans: Vec<(ActorId, Vec<Span>)> = touched
        .into_iter()
        .map(|a| {
            (
                a,
                replica
                    .bookie
                    .applied(db, a)
                    .map(|r| r.iter().collect())
                    .unwrap_or_default(),
            )
        })
        .collect();
    let also = |c: &rusqlite::Connection| {
        for w in &writes {
            match w {
                Write::Buffer {
                    chunk,
                    last_seq,
                    have,
                } => bookstore::buffer_chunk(c, chunk, *last_seq, have)?,
                Write::Clear(actor, version) => bookstore::clear_version(c, *actor, *version)?,
                Write::Park(chunk) => bookstore::park(c, chunk)?,
            }
        }
        for (actor, spans) in &spans {
            bookstore::save_applied(c, *actor, spans)?;
        }
        Ok(())
    };
    if large_done.is_empty() {
        conn.apply_changes_with(&merge, also)?;
    } else {
        let source = pages::merge_source(db, merge.clone(), &large_done);
        conn.apply_changes_paged(source, also)?;
    }
    out.changes_merged = merge.len()
        + large_done
            .iter()
            .map(|l| l.omitted.changes as usize)
            .sum::<usize>();
    out.versions_applied = applied.len() + large_done.len();
    for large in large_done {
        on_applied(Changeset {
            db: replica.db,
            actor: large.actor,
            version: large.version,
            committed_ms: large.committed_ms,
            changes: Arc::from(Vec::new()),
            omitted: Some(Arc::new(large.omitted)),
        });
    }
    for (actor, version, committed_ms, range) in applied {
        on_applied(Changeset {
            db: replica.db,
            actor,
            version,
            committed_ms,
            changes: merge[range].to_vec().into(),
            omitted: None,
        });
    }
    Ok(out)
}

/// Applies parked versions whose tables and columns now exist (after a
/// schema reload). Returns how many were applied.
pub(crate) fn retry_parked(
    conn: &mut CrrConn,
    replica: &mut Replica,
    on_applied: &impl Fn(Changeset),
) -> patina_crr::Result<usize> {
    let mut done = 0;
    for (actor, version) in bookstore::parked(conn.connection())? {
        let changes = bookstore::buffered(conn.connection(), actor, version)?;
        if !changes.iter().all(|c| conn.knows_column(&c.table, &c.cid)) {
            continue;
        }
        let chunk = ChangeChunk {
            db: replica.db,
            actor,
            version,
            seqs: Span::new(0, 0),
            last_seq: 0,
            committed_ms: 0,
            changes,
        };
        let merged = chunks::chunk_changes(&chunk);
        conn.apply_changes_with(&merged, |c| bookstore::clear_version(c, actor, version))?;
        on_applied(Changeset {
            db: replica.db,
            actor,
            version,
            committed_ms: 0,
            changes: merged.into(),
            omitted: None,
        });
        done += 1;
    }
    Ok(done)
}

/// Reads what `need` asks for that this database holds, as chunks; at most
/// [`SERVE_VERSIONS_MAX`] versions, and a large version alone, a page at a
/// time ([`pages`]). Returns the chunks and, when the need was larger, the
/// rest of it, in order, to serve in other calls.
pub(crate) fn serve(
    conn: &CrrConn,
    replica: &mut Replica,
    need: &Need,
) -> patina_crr::Result<(Vec<ChangeChunk>, Vec<Need>)> {
    let db = replica.db;
    match need {
        Need::Versions {
            actor, versions, ..
        } => {
            let Some(start) = first_held(conn, replica, *actor, *versions) else {
                return Ok((Vec::new(), Vec::new()));
            };
            let mut end = versions
                .end
                .min(start.saturating_add(SERVE_VERSIONS_MAX - 1));
            // A large version goes alone, in pages; the versions before it
            // first.
            if let Some(large) = pages::first_large(conn, *actor, start, end)? {
                if large == start && !bookstore::is_parked(conn.connection(), *actor, start)? {
                    let (chunks, page_rest) =
                        pages::serve_page(conn, &mut replica.pages, db, *actor, start, None)?;
                    let rest = page_rest.into_iter().chain((start < versions.end).then(|| {
                        Need::Versions {
                            db,
                            actor: *actor,
                            versions: Span::new(start + 1, versions.end),
                        }
                    }));
                    return Ok((chunks, rest.collect()));
                }
                if large > start {
                    end = large - 1;
                }
            }
            let rest: Vec<Need> = (end < versions.end)
                .then(|| Need::Versions {
                    db,
                    actor: *actor,
                    versions: Span::new(end + 1, versions.end),
                })
                .into_iter()
                .collect();
            let mut chunks = Vec::new();
            let mut by_version = group_by_version(conn.changes_of(*actor, start..=end)?);
            for v in start..=end {
                if !holds(conn, replica, *actor, v) {
                    continue;
                }
                let changes = match parked_changes(conn, *actor, v)? {
                    Some(c) => c,
                    None => by_version.remove(&v).unwrap_or_default(),
                };
                chunks.extend(patina_wire::chunk_changes(
                    db,
                    *actor,
                    v,
                    0,
                    chunks::wire_changes(&changes),
                ));
            }
            Ok((chunks, rest))
        }
        Need::Seqs {
            actor,
            version,
            seqs,
            ..
        } => {
            if !holds(conn, replica, *actor, *version) {
                return Ok((Vec::new(), Vec::new()));
            }
            let v = *version;
            if pages::is_large(conn, *actor, v)?
                && !bookstore::is_parked(conn.connection(), *actor, v)?
            {
                let (chunks, rest) =
                    pages::serve_page(conn, &mut replica.pages, db, *actor, v, Some(seqs))?;
                return Ok((chunks, rest.into_iter().collect()));
            }
            let changes = match parked_changes(conn, *actor, v)? {
                Some(c) => c,
                None => conn.changes_of(*actor, v..=v)?,
            };
            let max_seq = changes
                .iter()
                .map(|c| c.seq.max(0) as u64)
                .max()
                .unwrap_or(0);
            let mut chunks = Vec::new();
            // An inverted span (never checked by `Span::new` when it came
            // from the network) asks for nothing.
            let spans = seqs.iter().filter(|s| s.start <= s.end);
            for span in spans.take(patina_wire::FRAME_BYTES_MAX / 64) {
                let part: Vec<Change> = changes
                    .iter()
                    .filter(|c| c.seq >= 0 && span.contains(c.seq as u64))
                    .cloned()
                    .collect();
                let last_seq = max_seq.max(span.end);
                chunks.extend(patina_wire::chunk_changes_in(
                    db,
                    *actor,
                    v,
                    *span,
                    last_seq,
                    chunks::wire_changes(&part),
                ));
            }
            Ok((chunks, Vec::new()))
        }
    }
}

/// The first version of `actor` in `span` this database holds. Serving
/// starts there, so a need reaching far past what is held (a confused or
/// hostile peer pulling `1..=u64::MAX`) ends after one call instead of
/// walking the whole span [`SERVE_VERSIONS_MAX`] versions per call on the
/// writer thread. `None` for an inverted span too: spans from the network
/// were never checked by `Span::new`.
fn first_held(conn: &CrrConn, replica: &Replica, actor: ActorId, span: Span) -> Option<u64> {
    if span.start > span.end {
        return None;
    }
    if actor == conn.site_id() {
        let first = span.start.max(1);
        return (first <= span.end.min(conn.db_version())).then_some(first);
    }
    replica
        .bookie
        .applied(replica.db, actor)?
        .overlapping(span)
        .next()
        .map(|held| held.start.max(span.start))
}

fn holds(conn: &CrrConn, replica: &Replica, actor: ActorId, version: u64) -> bool {
    if actor == conn.site_id() {
        return version >= 1 && version <= conn.db_version();
    }
    replica
        .bookie
        .applied(replica.db, actor)
        .is_some_and(|r| r.contains(version))
}

fn parked_changes(
    conn: &CrrConn,
    actor: ActorId,
    version: u64,
) -> patina_crr::Result<Option<Vec<Change>>> {
    if !bookstore::is_parked(conn.connection(), actor, version)? {
        return Ok(None);
    }
    let changes = bookstore::buffered(conn.connection(), actor, version)?;
    let chunk = ChangeChunk {
        db: DbKind::Regional,
        actor,
        version,
        seqs: Span::new(0, 0),
        last_seq: 0,
        committed_ms: 0,
        changes,
    };
    Ok(Some(chunks::chunk_changes(&chunk)))
}

fn cell_order(c: &WireChange) -> (i64, &str, &[u8], &str) {
    (c.seq, &c.table, &c.pk, &c.cid)
}

fn group_by_version(changes: Vec<Change>) -> HashMap<u64, Vec<Change>> {
    let mut out: HashMap<u64, Vec<Change>> = HashMap::new();
    for c in changes {
        out.entry(c.db_version as u64).or_default().push(c);
    }
    out
}
