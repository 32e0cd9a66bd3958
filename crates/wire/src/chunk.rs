//! Splitting one transaction's changes into chunks of at most
//! [`CHUNK_BYTES_TARGET`] encoded bytes.

use patina_value::Value;

use crate::message::{ActorId, ChangeChunk, DbKind, Span, WireChange};

/// What a chunk's changes should weigh, encoded. A single change larger
/// than this travels alone in its own chunk.
pub const CHUNK_BYTES_TARGET: usize = 64 * 1024;

/// An upper bound of a change's encoded size (varints counted at their
/// longest), so chunks never exceed the target by estimate error.
pub fn change_bytes_max(c: &WireChange) -> usize {
    let val = match &c.val {
        Value::Null => 0,
        Value::Integer(_) | Value::Real(_) => 10,
        Value::Text(s) => 10 + s.len(),
        Value::Blob(b) => 10 + b.len(),
    };
    // Four length prefixes / enum tags and three i64 varints.
    c.table.len() + c.pk.len() + c.cid.len() + val + 4 * 10 + 3 * 10
}

/// Splits the changes of transaction (`actor`, `version`), ordered by seq
/// (several may share a seq), into chunks whose seq spans tile
/// `0..=last_seq` without overlap.
/// `last_seq` is the transaction's last seq as the caller knows it (at
/// least the largest seq in `changes`); no changes gives one empty chunk.
pub fn chunk_changes(
    db: DbKind,
    actor: ActorId,
    version: u64,
    last_seq: u64,
    changes: Vec<WireChange>,
) -> Vec<ChangeChunk> {
    let last_seq = changes
        .iter()
        .map(|c| c.seq.max(0) as u64)
        .max()
        .map_or(last_seq, |m| m.max(last_seq));
    chunk_changes_in(
        db,
        actor,
        version,
        Span::new(0, last_seq),
        last_seq,
        changes,
    )
}

/// Like [`chunk_changes`], for the part `cover` of a transaction (what a
/// peer asked for): the chunks' spans tile `cover`; `changes` must lie in
/// it, ordered by seq, and `last_seq >= cover.end`.
pub fn chunk_changes_in(
    db: DbKind,
    actor: ActorId,
    version: u64,
    cover: Span,
    last_seq: u64,
    changes: Vec<WireChange>,
) -> Vec<ChangeChunk> {
    debug_assert!(cover.end <= last_seq);
    let mut chunks = Vec::new();
    let mut current: Vec<WireChange> = Vec::new();
    let mut bytes = 0usize;
    let mut start = cover.start;
    for wc in changes {
        let size = change_bytes_max(&wc);
        // Seqs need not be unique within a version: a replica that created
        // a row's sentinel while merging a column change tags it with that
        // change's seq. Changes sharing a seq stay in one chunk, since a
        // chunk claims whole seqs.
        let seq_advances = current.last().is_some_and(|l: &WireChange| l.seq < wc.seq);
        if seq_advances && bytes + size > CHUNK_BYTES_TARGET {
            // Changes are ordered by seq, so the chunk ends just before this one.
            let end = (wc.seq as u64).saturating_sub(1).max(start);
            chunks.push(chunk(
                db,
                actor,
                version,
                Span::new(start, end),
                last_seq,
                current,
            ));
            current = Vec::new();
            bytes = 0;
            start = end + 1;
        }
        bytes += size;
        current.push(wc);
    }
    // The last chunk ends where `cover` does: claiming up to `last_seq`
    // would tell the receiver it holds seqs it was never sent.
    chunks.push(chunk(
        db,
        actor,
        version,
        Span::new(start, cover.end),
        last_seq,
        current,
    ));
    chunks
}

fn chunk(
    db: DbKind,
    actor: ActorId,
    version: u64,
    seqs: Span,
    last_seq: u64,
    changes: Vec<WireChange>,
) -> ChangeChunk {
    ChangeChunk {
        db,
        actor,
        version,
        seqs,
        last_seq,
        committed_ms: 0,
        changes,
    }
}
