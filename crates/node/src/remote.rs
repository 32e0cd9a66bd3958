//! Remote changes on a database's writer thread: merging chunks that peers
//! sent (buffering incomplete transactions, holding changes the schema
//! cannot merge yet — see `held`) and reading out what peers ask for. The writer thread
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
use crate::error::is_storage_full;
use crate::held::{self, HeldVersions, Hold, Refused};
use crate::pages::{self, PageCache};
use patina_proto::{Bookkeeper, ChunkFate, RangeSet};

/// Incomplete transactions buffered at most (per database). Each holds
/// only the chunks received so far, on disk; the bound keeps the
/// bookkeeping's memory and summaries small when a peer sends the start of
/// many large transactions and never their ends.
pub const PARTIAL_VERSIONS_MAX: usize = 1024;

/// Bytes of buffered chunks of incomplete transactions, on disk, at most
/// (as encoded). An honest 100,000-row transaction buffers ≈ 25 MiB while
/// its chunks arrive; a peer that sends the starts of huge transactions
/// and never their ends is stopped here. Past it, chunks of incomplete
/// transactions are refused like past [`PARTIAL_VERSIONS_MAX`].
pub const PARTIAL_BYTES_MAX: usize = 512 << 20;

/// Held versions (see `held`) at most, and bytes of their held changes.
/// Past either, a version that would need holding is not recorded as
/// applied — what this schema can merge still merges — so sync fetches it
/// again later (after the reload that makes room, or another peer's
/// answer); counted.
pub const HELD_VERSIONS_MAX: usize = 100_000;
pub const HELD_BYTES_MAX: usize = 512 << 20;

/// The bounds above, as one replica applies them (tests shrink them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BufferLimits {
    pub partial_versions: usize,
    pub partial_bytes: usize,
    pub held_versions: usize,
    pub held_bytes: usize,
}

impl Default for BufferLimits {
    fn default() -> BufferLimits {
        BufferLimits {
            partial_versions: PARTIAL_VERSIONS_MAX,
            partial_bytes: PARTIAL_BYTES_MAX,
            held_versions: HELD_VERSIONS_MAX,
            held_bytes: HELD_BYTES_MAX,
        }
    }
}

/// Versions one serve call reads at most; a larger need is answered in
/// several calls so the writer is never blocked for long.
pub(crate) const SERVE_VERSIONS_MAX: u64 = 256;

/// Seq spans of one need served at most; a longer list is cut (the puller
/// asks again for what is still missing).
pub(crate) const SEQ_SPANS_MAX: usize = 4096;

/// What happened to a batch of chunks.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RemoteOutcome {
    /// Per input chunk: whether it was new here (to forward once).
    pub fresh: Vec<bool>,
    /// Versions applied whole by this batch.
    pub versions_applied: usize,
    /// Changes merged (won, lost or ignored).
    pub changes_merged: usize,
    /// Versions applied but for changes naming tables or columns this
    /// schema lacks, held until a reload adds them.
    pub versions_parked: usize,
    /// Versions applied but for changes local constraints refused.
    pub versions_refused: usize,
    /// Changes ignored because they name a table or column a destructive
    /// schema change dropped here (their versions count as applied).
    pub changes_dropped: usize,
    pub duplicates: usize,
    /// Chunks refused because merging them failed (bad content).
    pub failed: usize,
    /// Chunks of incomplete transactions refused because
    /// `PARTIAL_VERSIONS_MAX` or `PARTIAL_BYTES_MAX` are buffered already.
    pub refused_partials_full: usize,
    /// Versions not recorded because `HELD_VERSIONS_MAX` or
    /// `HELD_BYTES_MAX` are held already.
    pub refused_held_full: usize,
    /// Chunks not merged because the disk holding the data dir is full;
    /// nothing of them was kept, sync fetches them again.
    pub storage_full: usize,
}

/// A database's replication state on its writer thread.
pub(crate) struct Replica {
    pub db: DbKind,
    pub bookie: Bookkeeper,
    /// The bookkeeping as of the last batch, for summaries and planning.
    pub published: watch::Sender<Arc<Bookkeeper>>,
    pub held: HeldVersions,
    pub held_published: watch::Sender<Arc<HeldVersions>>,
    /// Bytes on disk of what is buffered: incomplete and held versions.
    pub buffered: BufferedBytes,
    pub limits: BufferLimits,
    /// The large version being served in pages.
    pub pages: PageCache,
}

/// Bytes of buffered changes per version, split by why they are kept, to
/// hold both to their bounds.
#[derive(Debug, Default)]
pub(crate) struct BufferedBytes {
    partial: HashMap<(ActorId, u64), usize>,
    partial_total: usize,
    held: HashMap<(ActorId, u64), usize>,
    held_total: usize,
}

impl BufferedBytes {
    fn load(conn: &CrrConn, held: &HeldVersions) -> rusqlite::Result<BufferedBytes> {
        let mut out = BufferedBytes::default();
        for (actor, version, bytes) in bookstore::buffered_bytes(conn.connection())? {
            if held.contains(actor, version) {
                out.add_held(actor, version, bytes);
            } else {
                out.add_partial(actor, version, bytes);
            }
        }
        Ok(out)
    }

    fn add_partial(&mut self, actor: ActorId, version: u64, bytes: usize) {
        *self.partial.entry((actor, version)).or_default() += bytes;
        self.partial_total += bytes;
    }

    fn add_held(&mut self, actor: ActorId, version: u64, bytes: usize) {
        *self.held.entry((actor, version)).or_default() += bytes;
        self.held_total += bytes;
    }

    /// The version's buffer is cleared (applied, or re-held afresh).
    fn clear(&mut self, actor: ActorId, version: u64) {
        if let Some(b) = self.partial.remove(&(actor, version)) {
            self.partial_total -= b;
        }
        if let Some(b) = self.held.remove(&(actor, version)) {
            self.held_total -= b;
        }
    }

    fn partial_fits(&self, limits: &BufferLimits, bytes: usize) -> bool {
        self.partial_total + bytes <= limits.partial_bytes
    }

    fn held_fits(&self, limits: &BufferLimits, bytes: usize) -> bool {
        self.held_total + bytes <= limits.held_bytes
    }
}

/// Bytes `changes` take encoded (what the buffer stores).
fn wire_bytes(changes: &[WireChange]) -> usize {
    changes.iter().map(patina_wire::change_bytes_max).sum()
}

impl Replica {
    pub fn open(conn: &CrrConn, db: DbKind) -> rusqlite::Result<Replica> {
        let bookie = load_bookie(conn, db)?;
        let held = HeldVersions::load(conn.connection())?;
        let buffered = BufferedBytes::load(conn, &held)?;
        let (published, _) = watch::channel(Arc::new(bookie.clone()));
        let (held_published, _) = watch::channel(Arc::new(held.clone()));
        Ok(Replica {
            db,
            bookie,
            published,
            held,
            held_published,
            buffered,
            limits: BufferLimits::default(),
            pages: PageCache::default(),
        })
    }

    /// Held versions first: a reader that sees a version applied in the
    /// bookkeeping then sees whether part of it is held.
    pub fn publish(&self) {
        if **self.held_published.borrow() != self.held {
            self.held_published
                .send_replace(Arc::new(self.held.clone()));
        }
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
    /// Changes naming tables or columns this schema lacks.
    Wait(ActorId, u64, Vec<WireChange>),
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
        // No room: every chunk alone would fail the same way (and log it).
        // The writer logs that the disk is full; sync brings the chunks
        // again once there is room.
        Err(e) if is_storage_full(&e) => {
            reload(conn, replica);
            RemoteOutcome {
                fresh: vec![false; chunks.len()],
                storage_full: chunks.len(),
                ..RemoteOutcome::default()
            }
        }
        Err(e) => {
            tracing::warn!(db = replica.db.name(), chunks = chunks.len(), error = %e, "applying a batch of remote chunks failed; retrying one by one");
            reload(conn, replica);
            let mut all = RemoteOutcome::default();
            for chunk in chunks {
                match try_batch(conn, replica, std::slice::from_ref(chunk), on_applied) {
                    Ok(one) => add(&mut all, one),
                    Err(e) if is_storage_full(&e) => {
                        reload(conn, replica);
                        all.fresh.push(false);
                        all.storage_full += 1;
                    }
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
    all.versions_refused += one.versions_refused;
    all.changes_dropped += one.changes_dropped;
    all.duplicates += one.duplicates;
    all.failed += one.failed;
    all.refused_partials_full += one.refused_partials_full;
    all.refused_held_full += one.refused_held_full;
    all.storage_full += one.storage_full;
}

/// The bookkeeping records a batch as it goes (later chunks of the batch
/// must see earlier ones); when the transaction fails it is reloaded from
/// the database, which the failed transaction left untouched.
fn reload(conn: &CrrConn, replica: &mut Replica) {
    let loaded = load_bookie(conn, replica.db).and_then(|bookie| {
        let held = HeldVersions::load(conn.connection())?;
        let buffered = BufferedBytes::load(conn, &held)?;
        Ok((bookie, held, buffered))
    });
    match loaded {
        Ok((bookie, held, buffered)) => {
            replica.bookie = bookie;
            replica.held = held;
            replica.buffered = buffered;
        }
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
    // Versions (and bytes) this batch will hold, against the bounds.
    let (mut held_in_batch, mut held_bytes_in_batch) = (0, 0);
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
                    && replica.bookie.partials().count() >= replica.limits.partial_versions =>
            {
                // Bounded: a new incomplete transaction is refused while
                // this many are buffered; sync fetches it again later.
                out.refused_partials_full += 1;
                out.fresh.push(false);
                continue;
            }
            ChunkFate::Buffer
                if !replica
                    .buffered
                    .partial_fits(&replica.limits, wire_bytes(&chunk.changes)) =>
            {
                out.refused_partials_full += 1;
                out.fresh.push(false);
                continue;
            }
            ChunkFate::Buffer => {
                replica.buffered.add_partial(
                    chunk.actor,
                    chunk.version,
                    wire_bytes(&chunk.changes),
                );
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
                let (known, dropped, waiting) = held::split_known(conn, changes);
                out.changes_dropped += dropped;
                let waiting_bytes = wire_bytes(&waiting);
                let recorded = waiting.is_empty()
                    || (replica.held.len() + held_in_batch < replica.limits.held_versions
                        && replica
                            .buffered
                            .held_fits(&replica.limits, held_bytes_in_batch + waiting_bytes));
                if recorded {
                    replica
                        .bookie
                        .record_applied(db, chunk.actor, chunk.version);
                } else {
                    // What merges, merges; the version stays missing.
                    out.refused_held_full += 1;
                    replica
                        .bookie
                        .forget_partial(db, chunk.actor, chunk.version);
                }
                touched.insert(chunk.actor);
                let start = merge.len();
                merge.extend(chunks::version_changes(chunk.actor, chunk.version, &known));
                applied.push((
                    chunk.actor,
                    chunk.version,
                    chunk.committed_ms,
                    start..merge.len(),
                ));
                writes.push(Write::Clear(chunk.actor, chunk.version));
                if recorded && !waiting.is_empty() {
                    out.versions_parked += 1;
                    held_in_batch += 1;
                    held_bytes_in_batch += waiting_bytes;
                    writes.push(Write::Wait(chunk.actor, chunk.version, waiting));
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
    let versions: Vec<(ActorId, u64, std::ops::Range<usize>)> = applied
        .iter()
        .map(|(a, v, _, r)| (*a, *v, r.clone()))
        .collect();
    let also = |c: &rusqlite::Connection, refused: &Refused| {
        for w in &writes {
            match w {
                Write::Buffer {
                    chunk,
                    last_seq,
                    have,
                } => bookstore::buffer_chunk(c, chunk, *last_seq, have)?,
                Write::Clear(actor, version) => bookstore::clear_version(c, *actor, *version)?,
                Write::Wait(actor, version, changes) => {
                    bookstore::hold(c, *actor, *version, changes, true, None)?
                }
            }
        }
        hold_refused(c, &merge, &versions, refused)?;
        for (actor, spans) in &spans {
            bookstore::save_applied(c, *actor, spans)?;
        }
        Ok(())
    };
    let refused = if large_done.is_empty() {
        held::merge_isolating(conn, &merge, also)?.1
    } else {
        // A large version merges in pages from its buffer; a refusal fails
        // the batch (`apply` retries chunk by chunk), not one row.
        let source = pages::merge_source(db, merge.clone(), &large_done);
        let (report, ()) = conn.apply_changes_paged(source, |c| also(c, &Vec::new()))?;
        out.changes_dropped += report.dropped;
        Vec::new()
    };
    for w in &writes {
        match w {
            Write::Clear(actor, version) => replica.buffered.clear(*actor, *version),
            Write::Wait(actor, version, changes) => {
                let waiting = Hold {
                    waiting: true,
                    refused: None,
                };
                replica.held.hold(*actor, *version, waiting);
                replica
                    .buffered
                    .add_held(*actor, *version, wire_bytes(changes));
            }
            Write::Buffer { .. } => {}
        }
    }
    out.versions_refused = note_refused(replica, &merge, &versions, &refused);
    let refused_mask = mask(merge.len(), &refused);
    out.changes_merged = merge.len() - refused_mask.iter().filter(|r| **r).count()
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
        let changes: Vec<Change> = range
            .filter(|i| !refused_mask[*i])
            .map(|i| merge[i].clone())
            .collect();
        if changes.is_empty() {
            continue;
        }
        on_applied(Changeset {
            db: replica.db,
            actor,
            version,
            committed_ms,
            changes: changes.into(),
            omitted: None,
        });
    }
    Ok(out)
}

/// Which of `len` changes were refused.
fn mask(len: usize, refused: &Refused) -> Vec<bool> {
    let mut out = vec![false; len];
    for (range, _) in refused {
        out[range.clone()].iter_mut().for_each(|r| *r = true);
    }
    out
}

/// The parts of `refused` (ranges of `merge`) in each version of
/// `versions` (which cover `merge` in order), with the reason. A refused
/// run of one row may cross from one version into the next.
fn refused_by_version<'a>(
    versions: &'a [(ActorId, u64, std::ops::Range<usize>)],
    refused: &'a Refused,
) -> impl Iterator<Item = (ActorId, u64, std::ops::Range<usize>, &'a str)> + 'a {
    refused.iter().flat_map(move |(range, reason)| {
        versions.iter().filter_map(move |(actor, version, r)| {
            let part = range.start.max(r.start)..range.end.min(r.end);
            (part.start < part.end).then_some((*actor, *version, part, reason.as_str()))
        })
    })
}

fn hold_refused(
    c: &rusqlite::Connection,
    merge: &[Change],
    versions: &[(ActorId, u64, std::ops::Range<usize>)],
    refused: &Refused,
) -> rusqlite::Result<()> {
    for (actor, version, part, reason) in refused_by_version(versions, refused) {
        let changes = chunks::wire_changes(&merge[part]);
        bookstore::hold(c, actor, version, &changes, false, Some(reason))?;
    }
    Ok(())
}

/// Records refused versions as held, logs each once; returns how many
/// versions had a part refused.
fn note_refused(
    replica: &mut Replica,
    merge: &[Change],
    versions: &[(ActorId, u64, std::ops::Range<usize>)],
    refused: &Refused,
) -> usize {
    let mut seen = BTreeSet::new();
    for (actor, version, part, reason) in refused_by_version(versions, refused) {
        let first = &merge[part.start];
        tracing::warn!(
            db = replica.db.name(),
            %actor,
            version,
            table = %first.table,
            changes = part.len(),
            reason,
            "refused part of a remote version: it is held (see /v1/health) and retried at the next schema reload; everything else of it applied"
        );
        replica.held.hold(
            actor,
            version,
            Hold {
                waiting: false,
                refused: Some(reason.to_owned()),
            },
        );
        let bytes = wire_bytes(&chunks::wire_changes(&merge[part]));
        replica.buffered.add_held(actor, version, bytes);
        seen.insert((actor, version));
    }
    seen.len()
}

/// What [`retry_held`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retried {
    /// Versions no longer held.
    pub released: usize,
    /// Held changes let go because they name something dropped since.
    pub dropped: usize,
}

/// Merges what held versions hold that the schema now has (after a schema
/// reload), including changes refused before, and lets go of held changes
/// naming a table or column a destructive reload dropped.
pub(crate) fn retry_held(
    conn: &mut CrrConn,
    replica: &mut Replica,
    on_applied: &impl Fn(Changeset),
) -> patina_crr::Result<Retried> {
    let mut done = Retried::default();
    let versions: Vec<(ActorId, u64)> = replica.held.iter().map(|(a, v, _)| (a, v)).collect();
    for (actor, version) in versions {
        let changes = bookstore::buffered(conn.connection(), actor, version)?;
        let (known, dropped, waiting) = held::split_known(conn, changes);
        if known.is_empty() && dropped == 0 {
            continue;
        }
        done.dropped += dropped;
        let merge = chunks::version_changes(actor, version, &known);
        let whole = [(actor, version, 0..merge.len())];
        let ((), refused) = held::merge_isolating(conn, &merge, |c, refused| {
            bookstore::clear_version(c, actor, version)?;
            if !waiting.is_empty() {
                bookstore::hold(c, actor, version, &waiting, true, None)?;
            }
            hold_refused(c, &merge, &whole, refused)
        })?;
        replica.held.release(actor, version);
        replica.buffered.clear(actor, version);
        if !waiting.is_empty() {
            let hold = Hold {
                waiting: true,
                refused: None,
            };
            replica.held.hold(actor, version, hold);
            replica
                .buffered
                .add_held(actor, version, wire_bytes(&waiting));
        }
        note_refused(replica, &merge, &whole, &refused);
        if !replica.held.contains(actor, version) {
            done.released += 1;
        }
        let refused_mask = mask(merge.len(), &refused);
        let changes: Vec<Change> = merge
            .iter()
            .zip(&refused_mask)
            .filter(|(_, r)| !**r)
            .map(|(c, _)| c.clone())
            .collect();
        if !changes.is_empty() {
            on_applied(Changeset {
                db: replica.db,
                actor,
                version,
                committed_ms: 0,
                changes: changes.into(),
                omitted: None,
            });
        }
    }
    replica.publish();
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
                if large == start && !replica.held.contains(*actor, start) {
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
                let mut changes = by_version.remove(&v).unwrap_or_default();
                changes.extend(held_changes(conn, replica, *actor, v)?);
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
            if pages::is_large(conn, *actor, v)? && !replica.held.contains(*actor, v) {
                let (chunks, rest) =
                    pages::serve_page(conn, &mut replica.pages, db, *actor, v, Some(seqs))?;
                return Ok((chunks, rest.into_iter().collect()));
            }
            let mut changes = conn.changes_of(*actor, v..=v)?;
            changes.extend(held_changes(conn, replica, *actor, v)?);
            changes.retain(|c| c.seq >= 0);
            changes.sort_by_key(|c| c.seq);
            let max_seq = changes.last().map_or(0, |c| c.seq as u64);
            // The spans as a set: overlapping or repeated spans (a confused
            // or hostile peer) are served once, so a need costs at most the
            // version once, however many spans it lists. An inverted span
            // (never checked by `Span::new` when it came from the network)
            // asks for nothing.
            let wanted = RangeSet::from_spans(
                seqs.iter()
                    .filter(|s| s.start <= s.end)
                    .take(SEQ_SPANS_MAX)
                    .copied(),
            );
            let mut chunks = Vec::new();
            for span in wanted.iter() {
                let from = changes.partition_point(|c| (c.seq as u64) < span.start);
                let to = changes.partition_point(|c| (c.seq as u64) <= span.end);
                let last_seq = max_seq.max(span.end);
                chunks.extend(patina_wire::chunk_changes_in(
                    db,
                    *actor,
                    v,
                    span,
                    last_seq,
                    chunks::wire_changes(&changes[from..to]),
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

/// What `actor`'s `version` holds unmerged: served with what was merged,
/// so a held version travels on whole.
fn held_changes(
    conn: &CrrConn,
    replica: &Replica,
    actor: ActorId,
    version: u64,
) -> patina_crr::Result<Vec<Change>> {
    if !replica.held.contains(actor, version) {
        return Ok(Vec::new());
    }
    let changes = bookstore::buffered(conn.connection(), actor, version)?;
    Ok(chunks::version_changes(actor, version, &changes))
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

#[cfg(test)]
mod tests;
