//! Large versions in bounded pieces (issue 15: one 100,000-row transaction
//! took 260–500 MiB on the writer and 370 MiB on a replica, because each
//! step held all of its changes at once, several times over). A version
//! with more than [`LARGE_CHANGES`] changes is never held whole:
//! - its local commit reports only the tables it wrote (`Changeset::omitted`);
//! - it is served to peers a page of [`PAGE_CHANGES`] changes at a time, each
//!   page a seq span read through the version's seq map
//!   ([`patina_crr::VersionSeqs`]);
//! - a replica that completes it from buffered chunks merges it from the
//!   buffer a page at a time, in one SQLite transaction.

use std::collections::BTreeSet;
use std::sync::Arc;

use patina_crr::{Change, CrrConn, VersionSeqs};
use patina_wire::{ActorId, ChangeChunk, DbKind, Need, Span, WireChange};
use rusqlite::{params, Connection};

use crate::bookstore;
use crate::changeset::Omitted;
use crate::chunks;

/// Changes a version may have and still be handed around whole: in
/// memory ≈ 250 bytes each (as `Change`), so ≈ 2 MiB.
pub const LARGE_CHANGES: usize = 8192;
/// Changes read, sent or merged per page of a large version.
pub(crate) const PAGE_CHANGES: usize = 8192;
/// Rows above which a served version is read in pages: a row holds one
/// change per column written, so a version this large may pass
/// [`LARGE_CHANGES`].
pub(crate) const PAGED_ROWS_MIN: u64 = 1024;

/// The seq map of the last large version served, kept between serve calls
/// (each answers one page): building it reads every row of the version. A
/// stale map is harmless, see [`VersionSeqs`]. One version's at most:
/// ≈ 50 bytes per row.
#[derive(Default)]
pub(crate) struct PageCache {
    last: Option<(DbKind, Arc<VersionSeqs>)>,
}

impl PageCache {
    fn get(
        &mut self,
        conn: &CrrConn,
        db: DbKind,
        actor: ActorId,
        version: u64,
    ) -> patina_crr::Result<Arc<VersionSeqs>> {
        if let Some((d, seqs)) = &self.last {
            if *d == db && seqs.site == actor && seqs.version == version {
                return Ok(Arc::clone(seqs));
            }
        }
        let seqs = Arc::new(conn.version_seqs(actor, version)?);
        self.last = Some((db, Arc::clone(&seqs)));
        Ok(seqs)
    }

    /// Whether a large version is being served.
    pub(crate) fn is_active(&self) -> bool {
        self.last.is_some()
    }

    /// Forgets the map once a version has been served to its end: the next
    /// peer to pull it rebuilds it (cheap next to sending it).
    fn done(&mut self) {
        self.last = None;
    }
}

/// Whether `actor`'s `version` is large enough to be served in pages.
pub(crate) fn is_large(conn: &CrrConn, actor: ActorId, version: u64) -> patina_crr::Result<bool> {
    Ok(conn
        .version_rows(actor, version..=version)?
        .first()
        .is_some_and(|(_, rows)| *rows > PAGED_ROWS_MIN))
}

/// The first large version of `actor` in `first..=last`, if any.
pub(crate) fn first_large(
    conn: &CrrConn,
    actor: ActorId,
    first: u64,
    last: u64,
) -> patina_crr::Result<Option<u64>> {
    Ok(conn
        .version_rows(actor, first..=last)?
        .into_iter()
        .find(|(_, rows)| *rows > PAGED_ROWS_MIN)
        .map(|(v, _)| v))
}

/// One page of the part `spans` (`None`: all) of a large version: chunks
/// covering the first [`PAGE_CHANGES`] changes of the spans (whole spans
/// where they hold fewer), and the part left, as a need for the next call.
pub(crate) fn serve_page(
    conn: &CrrConn,
    cache: &mut PageCache,
    db: DbKind,
    actor: ActorId,
    version: u64,
    spans: Option<&[Span]>,
) -> patina_crr::Result<(Vec<ChangeChunk>, Option<Need>)> {
    let seqs = cache.get(conn, db, actor, version)?;
    let whole = [Span::new(0, seqs.last_seq())];
    // A span from the network was never checked by `Span::new`.
    let mut spans = spans
        .unwrap_or(&whole)
        .iter()
        .filter(|s| s.start <= s.end)
        .copied();
    let Some(first) = spans.next() else {
        return Ok((Vec::new(), None));
    };
    // The version's last seq as the receiver will know it: at least the end
    // of anything it asks for.
    let last_seq = seqs.last_seq().max(first.end);
    let end = match seqs.seq_after(first.start, PAGE_CHANGES) {
        Some(next) if next > first.start && next <= first.end => next - 1,
        _ => first.end,
    };
    let changes = conn.changes_in(&seqs, first.start..=end)?;
    let chunks = patina_wire::chunk_changes_in(
        db,
        actor,
        version,
        Span::new(first.start, end),
        last_seq,
        chunks::wire_changes(&changes),
    );
    let mut rest: Vec<Span> = Vec::new();
    if end < first.end {
        rest.push(Span::new(end + 1, first.end));
    }
    rest.extend(spans);
    if rest.is_empty() {
        cache.done();
        return Ok((chunks, None));
    }
    Ok((
        chunks,
        Some(Need::Seqs {
            db,
            actor,
            version,
            seqs: rest,
        }),
    ))
}

/// A large version that a chunk of the batch completed, merged from the
/// buffer a page at a time instead of loaded whole.
pub(crate) struct Completed {
    pub actor: ActorId,
    pub version: u64,
    pub committed_ms: u64,
    /// Changes of this batch's chunks of the version, not buffered yet.
    pub tail: Vec<WireChange>,
    /// What it touched, for the commit's observers.
    pub omitted: Omitted,
}

/// [`Completed`] when the buffered version `chunk` completes, with `tail`
/// (earlier chunks of the batch) and the chunk itself, has
/// more than [`LARGE_CHANGES`] changes and this database knows, or
/// dropped, every column they name (a version to park goes the ordinary
/// way; the merge ignores and counts what was dropped). Reads the buffer a
/// page at a time.
pub(crate) fn completes_large(
    conn: &CrrConn,
    chunk: &ChangeChunk,
    tail: Vec<WireChange>,
) -> patina_crr::Result<Result<Completed, Vec<WireChange>>> {
    let (actor, version) = (chunk.actor, chunk.version);
    let buffered: i64 = conn.connection().query_row(
        "SELECT count(*) FROM patina_buffered_changes WHERE actor = ?1 AND version = ?2",
        params![actor.as_bytes().as_slice(), version as i64],
        |r| r.get(0),
    )?;
    let changes = buffered.max(0) as u64 + tail.len() as u64 + chunk.changes.len() as u64;
    if changes <= LARGE_CHANGES as u64 {
        return Ok(Err(tail));
    }
    let mut tables = BTreeSet::new();
    let mut known = |c: &WireChange| {
        if conn.knows_column(&c.table, &c.cid) {
            if !tables.contains(&c.table) {
                tables.insert(c.table.clone());
            }
            return true;
        }
        conn.is_dropped(&c.table, &c.cid)
    };
    if !tail.iter().chain(&chunk.changes).all(&mut known) {
        return Ok(Err(tail));
    }
    let mut pages = BufferPages::new(actor, version);
    while let Some(page) = pages.next(conn.connection())? {
        if !page.iter().all(&mut known) {
            return Ok(Err(tail));
        }
    }
    let mut tail = tail;
    tail.extend(chunk.changes.iter().cloned());
    Ok(Ok(Completed {
        actor,
        version,
        committed_ms: chunk.committed_ms,
        tail,
        omitted: Omitted {
            tables: tables.into_iter().collect(),
            changes,
        },
    }))
}

/// Pages of a version's buffered changes, in key order (seq, then the
/// encoded change): a cursor that holds only its last key between calls.
pub(crate) struct BufferPages {
    actor: ActorId,
    version: u64,
    after: Option<(i64, Vec<u8>)>,
}

impl BufferPages {
    pub(crate) fn new(actor: ActorId, version: u64) -> BufferPages {
        BufferPages {
            actor,
            version,
            after: None,
        }
    }

    pub(crate) fn next(&mut self, conn: &Connection) -> rusqlite::Result<Option<Vec<WireChange>>> {
        let (seq, change) = self.after.clone().unwrap_or((i64::MIN, Vec::new()));
        let mut st = conn.prepare_cached(
            "SELECT seq, change FROM patina_buffered_changes
             WHERE actor = ?1 AND version = ?2 AND (seq, change) > (?3, ?4)
             ORDER BY seq, change LIMIT ?5",
        )?;
        let mut rows = st.query(params![
            self.actor.as_bytes().as_slice(),
            self.version as i64,
            seq,
            change,
            PAGE_CHANGES as i64
        ])?;
        let mut out = Vec::new();
        let mut last = None;
        while let Some(r) = rows.next()? {
            let bytes: Vec<u8> = r.get(1)?;
            let (c, _) = patina_wire::decode_value::<WireChange>(&bytes).map_err(|e| {
                rusqlite::Error::ToSqlConversionFailure(
                    format!("replication bookkeeping: {e}").into(),
                )
            })?;
            out.push(c);
            last = Some((r.get::<_, i64>(0)?, bytes));
        }
        if out.is_empty() {
            return Ok(None);
        }
        self.after = last;
        Ok(Some(out))
    }
}

/// Hands out `first` (the rest of the batch), then each completed large
/// version: its tail buffered with the rest of it, then the buffer a page
/// at a time, as crr changes — the source of
/// `CrrConn::apply_changes_paged`.
pub(crate) fn merge_source(
    db: DbKind,
    first: Vec<Change>,
    completed: &[Completed],
) -> impl FnMut(&Connection) -> rusqlite::Result<Option<Vec<Change>>> + '_ {
    let mut first = Some(first).filter(|f| !f.is_empty());
    let mut at = 0;
    let mut pages: Option<BufferPages> = None;
    move |conn| {
        if let Some(first) = first.take() {
            return Ok(Some(first));
        }
        while let Some(c) = completed.get(at) {
            let cursor = match &mut pages {
                Some(p) => p,
                None => {
                    let tail = ChangeChunk {
                        db,
                        actor: c.actor,
                        version: c.version,
                        seqs: Span::new(0, 0),
                        last_seq: 0,
                        committed_ms: c.committed_ms,
                        changes: c.tail.clone(),
                    };
                    // Cleared with the rest of the buffer in this transaction.
                    bookstore::buffer_chunk(conn, &tail, 0, &[])?;
                    pages.insert(BufferPages::new(c.actor, c.version))
                }
            };
            if let Some(page) = cursor.next(conn)? {
                let chunk = ChangeChunk {
                    db,
                    actor: c.actor,
                    version: c.version,
                    seqs: Span::new(0, 0),
                    last_seq: 0,
                    committed_ms: c.committed_ms,
                    changes: page,
                };
                return Ok(Some(chunks::chunk_changes(&chunk)));
            }
            pages = None;
            at += 1;
        }
        Ok(None)
    }
}
