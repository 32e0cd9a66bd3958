//! [`QueuedVersions`]: versions whose chunks wait in the apply queue, which
//! sync counts as held. Broadcast already delivered them, and a node behind
//! on merging would otherwise pull again what it is about to apply (in a
//! 10-node bench with replicas starved of CPU, serving such pulls was 15 %
//! of the writing node's CPU). Should one of them fail to apply, the next
//! round sees it missing.

use std::collections::HashMap;

use patina_wire::{ActorId, ChangeChunk, DbKind};

use super::bookie::Bookkeeper;

type VersionKey = (DbKind, ActorId, u64);

/// Chunks waiting in the apply queue, counted per version.
#[derive(Debug, Default)]
pub struct QueuedVersions {
    chunks: HashMap<VersionKey, u32>,
}

impl QueuedVersions {
    pub fn new() -> QueuedVersions {
        QueuedVersions::default()
    }

    /// `chunk` is being handed to the apply queue. Call before handing it
    /// over, so that [`left`](Self::left) never comes first and leaves a
    /// stale entry that would hide the version from sync.
    pub fn entered(&mut self, chunk: &ChangeChunk) {
        *self.chunks.entry(key(chunk)).or_default() += 1;
    }

    /// `chunk` left the apply queue: merged, refused, or not queued after
    /// all (the queue was full). A chunk never entered is ignored.
    pub fn left(&mut self, chunk: &ChangeChunk) {
        let key = key(chunk);
        if let Some(n) = self.chunks.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.chunks.remove(&key);
            }
        }
    }

    /// Whether chunks of this version wait in the queue.
    pub fn contains(&self, db: DbKind, actor: ActorId, version: u64) -> bool {
        self.chunks.contains_key(&(db, actor, version))
    }

    /// Versions with chunks waiting.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Records every queued version as held in `book`, the bookkeeping
    /// that summaries and sync plans are made from. A version with only
    /// some chunks queued counts whole: the rest are most likely on their
    /// way behind them, and sync asks again if not.
    pub fn count_as_held(&self, book: &mut Bookkeeper) {
        for &(db, actor, version) in self.chunks.keys() {
            book.record_applied(db, actor, version);
        }
    }
}

fn key(chunk: &ChangeChunk) -> VersionKey {
    (chunk.db, chunk.actor, chunk.version)
}

#[cfg(test)]
mod tests {
    use patina_wire::Span;

    use super::*;

    const ME: ActorId = ActorId([1; 16]);
    const PEER: ActorId = ActorId([2; 16]);

    fn chunk(db: DbKind, version: u64, seq: u64) -> ChangeChunk {
        ChangeChunk {
            db,
            actor: PEER,
            version,
            seqs: Span::new(seq, seq),
            last_seq: 1,
            committed_ms: 0,
            changes: Vec::new(),
        }
    }

    #[test]
    fn a_version_is_queued_until_its_last_chunk_left() {
        let mut queued = QueuedVersions::new();
        let (a, b) = (chunk(DbKind::Regional, 7, 0), chunk(DbKind::Regional, 7, 1));
        queued.entered(&a);
        queued.entered(&b);
        assert_eq!(queued.len(), 1);
        queued.left(&a);
        assert!(queued.contains(DbKind::Regional, PEER, 7));
        queued.left(&b);
        assert!(!queued.contains(DbKind::Regional, PEER, 7));
        assert!(queued.is_empty());
    }

    #[test]
    fn the_same_version_in_another_database_is_another_version() {
        let mut queued = QueuedVersions::new();
        queued.entered(&chunk(DbKind::Global, 7, 0));
        assert!(!queued.contains(DbKind::Regional, PEER, 7));
        assert!(queued.contains(DbKind::Global, PEER, 7));
    }

    #[test]
    fn leaving_without_entering_changes_nothing() {
        let mut queued = QueuedVersions::new();
        queued.left(&chunk(DbKind::Regional, 7, 0));
        assert!(queued.is_empty());
        queued.entered(&chunk(DbKind::Regional, 7, 0));
        queued.left(&chunk(DbKind::Regional, 7, 0));
        queued.left(&chunk(DbKind::Regional, 7, 0));
        queued.entered(&chunk(DbKind::Regional, 7, 0));
        assert!(queued.contains(DbKind::Regional, PEER, 7), "no debt owed");
    }

    #[test]
    fn queued_versions_count_as_held_so_sync_does_not_pull_them() {
        let mut queued = QueuedVersions::new();
        queued.entered(&chunk(DbKind::Regional, 2, 0));
        let mut book = Bookkeeper::new(ME);
        book.record_applied(DbKind::Regional, PEER, 1);
        queued.count_as_held(&mut book);
        assert!(book.holds(DbKind::Regional, PEER, 1));
        assert!(book.holds(DbKind::Regional, PEER, 2));
        assert!(!book.holds(DbKind::Regional, PEER, 3));

        // A peer holding 1..=3 is asked for 3 alone.
        let mut peer = Bookkeeper::new(PEER);
        peer.set_own_version(DbKind::Regional, 3);
        let needs = book.needs(&peer.summary(crate::bookie::SUMMARY_SPANS_MAX), 100);
        assert_eq!(
            needs,
            vec![patina_wire::Need::Versions {
                db: DbKind::Regional,
                actor: PEER,
                versions: Span::new(3, 3),
            }]
        );
    }
}
