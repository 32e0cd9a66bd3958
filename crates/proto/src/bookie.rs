//! `Bookkeeper`: which versions of which actor this node holds, whole
//! (`applied`) or in part (`partial`), per database. It decides what an
//! arriving chunk is ([`Bookkeeper::classify`]), states what the node holds
//! ([`Bookkeeper::summary`]) and what it lacks of a peer's holdings
//! ([`Bookkeeper::needs`]). It changes only when the caller says a change
//! was persisted, so memory never claims more than the database holds.

use std::collections::BTreeMap;

use patina_wire::{
    ActorId, ActorSummary, ChangeChunk, DbKind, Need, PartialVersion, Span, Summary,
};

use super::ranges::{pieces, RangeSet};

/// Spans a [`Bookkeeper::summary`] holds by default: an applied span or a
/// partial's seq span costs one, a partial version one more. 4,096 spans
/// are about 100 KiB encoded, well inside a 4 MiB frame; a node that is
/// more fragmented than that under-claims and receives some versions twice.
pub const SUMMARY_SPANS_MAX: usize = 4096;

/// Needs [`Bookkeeper::needs`] returns at most. A peer may claim versions
/// up to `u64::MAX`; this bounds the answer, and the next sync round asks
/// for the rest.
pub const NEEDS_MAX: usize = 65_536;

/// What to do with an arriving chunk (see [`Bookkeeper::classify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkFate {
    /// Nothing new: the version is applied, or the chunk's seqs are all
    /// buffered already. Drop it (and count it).
    Duplicate,
    /// New seqs of an incomplete version: buffer them, then call
    /// [`Bookkeeper::record_buffered`].
    Buffer,
    /// The version is complete with this chunk: apply it whole (with the
    /// buffered changes when `buffered`), then call
    /// [`Bookkeeper::record_applied`].
    Complete { buffered: bool },
}

/// A version of which some seqs are buffered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    /// The smallest `last_seq` any sender gave: entries past it were
    /// superseded (docs/replication.md, Bookkeeping).
    pub last_seq: u64,
    /// Seqs held, all within `0..=last_seq`.
    pub have: RangeSet,
}

impl Partial {
    fn new(last_seq: u64) -> Partial {
        Partial {
            last_seq,
            have: RangeSet::new(),
        }
    }

    /// The seqs of `0..=last_seq` not held.
    pub fn missing(&self) -> RangeSet {
        self.have.gaps_in(Span::new(0, self.last_seq))
    }

    fn add(&mut self, last_seq: u64, seqs: Span) {
        if last_seq < self.last_seq {
            self.last_seq = last_seq;
            self.have = self
                .have
                .intersection(&RangeSet::from(Span::new(0, last_seq)));
        }
        if let Some(seqs) = clip(seqs, self.last_seq) {
            self.have.insert(seqs);
        }
    }

    /// What `chunk` (a version not applied) does to this partial.
    fn fate_of(&self, chunk: &ChangeChunk) -> ChunkFate {
        let last_seq = self.last_seq.min(chunk.last_seq);
        let gaps = self.have.gaps_in(Span::new(0, last_seq));
        // The chunk's seqs are one span, so it fills the gaps iff it spans them.
        let fills = match (gaps.min(), gaps.max()) {
            (Some(lo), Some(hi)) => chunk.seqs.start <= lo && hi <= chunk.seqs.end,
            _ => true,
        };
        if chunk.is_complete() || fills {
            return ChunkFate::Complete { buffered: true };
        }
        match clip(chunk.seqs, last_seq) {
            Some(seqs) if !self.have.contains_span(seqs) => ChunkFate::Buffer,
            _ => ChunkFate::Duplicate,
        }
    }
}

/// `seqs` cut to `0..=last_seq`; `None` when nothing is left.
fn clip(seqs: Span, last_seq: u64) -> Option<Span> {
    (seqs.start <= last_seq).then(|| Span::new(seqs.start, seqs.end.min(last_seq)))
}

/// What the node holds of one (db, actor).
#[derive(Debug, Clone, Default)]
struct ActorBook {
    applied: RangeSet,
    partial: BTreeMap<u64, Partial>,
}

/// What a peer holds applied that this node lacks, for one (db, actor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lack {
    pub db: DbKind,
    pub actor: ActorId,
    /// Whole versions to fetch.
    pub versions: RangeSet,
    /// Partial versions here that the peer holds applied: (version, the
    /// seqs missing here).
    pub seqs: Vec<(u64, RangeSet)>,
}

/// Per (db, actor): versions applied whole and versions held in part.
#[derive(Debug, Clone)]
pub struct Bookkeeper {
    own: ActorId,
    books: BTreeMap<(DbKind, ActorId), ActorBook>,
}

impl Bookkeeper {
    /// An empty bookkeeper for the node whose actor id is `own`.
    pub fn new(own: ActorId) -> Bookkeeper {
        Bookkeeper {
            own,
            books: BTreeMap::new(),
        }
    }

    pub fn own_actor(&self) -> ActorId {
        self.own
    }

    /// Whether `version` of `actor` in `db` is applied here.
    pub fn holds(&self, db: DbKind, actor: ActorId, version: u64) -> bool {
        self.books
            .get(&(db, actor))
            .is_some_and(|b| b.applied.contains(version))
    }

    /// Versions known to exist and not applied here: the holes below each
    /// actor's highest known version, partial versions included (the
    /// health endpoint's `gaps`).
    pub fn missing_versions(&self) -> u64 {
        self.books
            .values()
            .map(|b| {
                let max = b
                    .applied
                    .max()
                    .into_iter()
                    .chain(b.partial.keys().copied())
                    .max();
                max.map_or(0, |m| b.applied.gaps(m).len())
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Takes in another bookkeeper's books of databases this one has no
    /// books of (a node keeps one bookkeeper per database; a cluster that
    /// carries both plans over their union).
    pub fn absorb(&mut self, other: &Bookkeeper) {
        for (key, book) in &other.books {
            self.books.entry(*key).or_insert_with(|| book.clone());
        }
    }

    /// The node's own versions are `1..=version` (its db_version); they are
    /// not persisted as bookkeeping.
    pub fn set_own_version(&mut self, db: DbKind, version: u64) {
        if version > 0 {
            self.book_mut(db, self.own)
                .applied
                .insert(Span::new(1, version));
        }
    }

    /// What `chunk` is, given what is held; changes nothing. Chunks that
    /// `ChangeChunk::validate` would refuse are `Duplicate` (dropped,
    /// never recorded); callers validate first to count them apart.
    pub fn classify(&self, chunk: &ChangeChunk) -> ChunkFate {
        if !well_formed(chunk) {
            return ChunkFate::Duplicate;
        }
        let book = self.books.get(&(chunk.db, chunk.actor));
        if book.is_some_and(|b| b.applied.contains(chunk.version)) {
            return ChunkFate::Duplicate;
        }
        match book.and_then(|b| b.partial.get(&chunk.version)) {
            Some(partial) => partial.fate_of(chunk),
            None if chunk.is_complete() => ChunkFate::Complete { buffered: false },
            None => ChunkFate::Buffer,
        }
    }

    /// Records that `seqs` of `version` are buffered in the database.
    pub fn record_buffered(
        &mut self,
        db: DbKind,
        actor: ActorId,
        version: u64,
        last_seq: u64,
        seqs: Span,
    ) {
        let book = self.book_mut(db, actor);
        if book.applied.contains(version) {
            return;
        }
        let partial = book
            .partial
            .entry(version)
            .or_insert_with(|| Partial::new(last_seq));
        partial.add(last_seq, seqs);
        debug_assert!(
            !partial.missing().is_empty(),
            "buffered a chunk that completes {version}: classify said Complete"
        );
    }

    /// Records that `version` is applied whole in the database (its buffered
    /// changes gone).
    pub fn record_applied(&mut self, db: DbKind, actor: ActorId, version: u64) {
        let book = self.book_mut(db, actor);
        book.applied.insert_one(version);
        book.partial.remove(&version);
    }

    /// Forgets what is buffered of `version` without recording it applied
    /// (its buffer was dropped): it is missing again, to fetch whole.
    pub fn forget_partial(&mut self, db: DbKind, actor: ActorId, version: u64) {
        self.book_mut(db, actor).partial.remove(&version);
    }

    /// Loads one persisted applied span (`patina_bookkeeping`) at start.
    pub fn restore_applied(&mut self, db: DbKind, actor: ActorId, versions: Span) {
        if versions.start > versions.end {
            return;
        }
        let book = self.book_mut(db, actor);
        book.applied.insert(versions);
        book.partial.retain(|&v, _| !versions.contains(v));
    }

    /// Loads one persisted partial version (`patina_partials`) at start.
    pub fn restore_partial(
        &mut self,
        db: DbKind,
        actor: ActorId,
        version: u64,
        last_seq: u64,
        have: Vec<Span>,
    ) {
        let book = self.book_mut(db, actor);
        if book.applied.contains(version) {
            return;
        }
        let partial = book
            .partial
            .entry(version)
            .or_insert_with(|| Partial::new(last_seq));
        for seqs in have.into_iter().filter(|s| s.start <= s.end) {
            partial.add(last_seq, seqs);
        }
    }

    pub fn applied(&self, db: DbKind, actor: ActorId) -> Option<&RangeSet> {
        self.books.get(&(db, actor)).map(|b| &b.applied)
    }

    /// The highest version of `actor` applied here.
    pub fn max_version(&self, db: DbKind, actor: ActorId) -> Option<u64> {
        self.applied(db, actor).and_then(RangeSet::max)
    }

    pub fn partial(&self, db: DbKind, actor: ActorId, version: u64) -> Option<&Partial> {
        self.books.get(&(db, actor))?.partial.get(&version)
    }

    /// Every partial version: (db, actor, version, partial).
    pub fn partials(&self) -> impl Iterator<Item = (DbKind, ActorId, u64, &Partial)> + '_ {
        self.books.iter().flat_map(|(&(db, actor), book)| {
            book.partial.iter().map(move |(&v, p)| (db, actor, v, p))
        })
    }

    /// Every (db, actor) with bookkeeping.
    pub fn actors(&self) -> impl Iterator<Item = (DbKind, ActorId)> + '_ {
        self.books.keys().copied()
    }

    fn book_mut(&mut self, db: DbKind, actor: ActorId) -> &mut ActorBook {
        self.books.entry((db, actor)).or_default()
    }
}

/// What `ChangeChunk::validate` checks of the span, without the changes.
fn well_formed(chunk: &ChangeChunk) -> bool {
    chunk.version > 0 && chunk.seqs.start <= chunk.seqs.end && chunk.seqs.end <= chunk.last_seq
}

impl Bookkeeper {
    /// What this node holds, for peers to compare with theirs. At most
    /// `spans_max` spans (see [`SUMMARY_SPANS_MAX`]): applied spans first,
    /// lowest actors and versions first, then partial versions. Truncation
    /// only drops, so the summary never claims what is not held.
    /// A digest of the versions held applied, per (database, actor): two
    /// bookkeepers holding the same versions have the same digest, whoever
    /// owns them (partial versions are left out: sync cannot complete
    /// them from a peer that holds them in part too). FNV-1a over a fixed
    /// layout, so it is the same on every build and platform.
    pub fn digest(&self) -> u64 {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut h = OFFSET;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(PRIME);
            }
        };
        for (&(db, actor), book) in &self.books {
            let mut spans = book.applied.iter().peekable();
            if spans.peek().is_none() {
                continue;
            }
            eat(&[db as u8]);
            eat(&actor.0);
            for span in spans {
                eat(&span.start.to_le_bytes());
                eat(&span.end.to_le_bytes());
            }
            // Ends the actor's spans, so that moving a span from one actor
            // to the next changes the digest.
            eat(&[0xff]);
        }
        h
    }

    pub fn summary(&self, spans_max: usize) -> Summary {
        let mut budget = spans_max;
        let mut actors: Vec<ActorSummary> = self
            .books
            .iter()
            .map(|(&(db, actor), book)| {
                let applied: Vec<Span> = book.applied.iter().take(budget).collect();
                budget -= applied.len();
                ActorSummary {
                    db,
                    actor,
                    applied,
                    partial: Vec::new(),
                }
            })
            .collect();
        for (summary, book) in actors.iter_mut().zip(self.books.values()) {
            summary.partial = summarize_partials(&book.partial, &mut budget);
        }
        actors.retain(|a| !a.applied.is_empty() || !a.partial.is_empty());
        Summary { actors }
    }

    /// What `peer` holds applied of one (db, actor) that this node lacks.
    /// The node's own actor lacks nothing: it is its versions' only source.
    /// What the peer holds only in part is ignored: asking for it could
    /// not complete a version unless the seqs happened to fit, and sync
    /// from a peer that holds it whole will.
    pub fn lacks(&self, peer: &ActorSummary) -> Lack {
        let mut lack = Lack {
            db: peer.db,
            actor: peer.actor,
            versions: RangeSet::new(),
            seqs: Vec::new(),
        };
        if peer.actor == self.own {
            return lack;
        }
        let theirs = claimed_versions(&peer.applied);
        let Some(book) = self.books.get(&(peer.db, peer.actor)) else {
            lack.versions = theirs;
            return lack;
        };
        let mut missing = theirs.difference(&book.applied);
        for (&version, partial) in &book.partial {
            if missing.contains(version) {
                lack.seqs.push((version, seqs_to_ask(partial)));
            }
        }
        let partial_versions = RangeSet::from_spans(book.partial.keys().map(|&v| Span::new(v, v)));
        missing = missing.difference(&partial_versions);
        lack.versions = missing;
        lack
    }

    /// What to ask `peer` for so that this node holds everything the peer
    /// holds applied: whole versions in pieces of at most
    /// `versions_per_need_max`, and the missing seqs of partial versions
    /// the peer holds applied. At most [`NEEDS_MAX`] needs.
    pub fn needs(&self, peer: &Summary, versions_per_need_max: u64) -> Vec<Need> {
        let mut needs = Vec::new();
        for actor in &peer.actors {
            let lack = self.lacks(actor);
            needs.extend(lack.seqs.iter().map(|(v, seqs)| seqs_need(&lack, *v, seqs)));
            for span in lack.versions.iter() {
                for versions in pieces(span, versions_per_need_max) {
                    if needs.len() >= NEEDS_MAX {
                        return needs;
                    }
                    needs.push(Need::Versions {
                        db: lack.db,
                        actor: lack.actor,
                        versions,
                    });
                }
            }
        }
        needs.truncate(NEEDS_MAX);
        needs
    }
}

pub(crate) fn seqs_need(lack: &Lack, version: u64, seqs: &RangeSet) -> Need {
    Need::Seqs {
        db: lack.db,
        actor: lack.actor,
        version,
        seqs: seqs.iter().collect(),
    }
}

/// The seqs to ask for to complete `partial`. A partial with nothing
/// missing should have been applied; asking for it whole lets any answer
/// complete it rather than leaving it stuck.
fn seqs_to_ask(partial: &Partial) -> RangeSet {
    let missing = partial.missing();
    if missing.is_empty() {
        return RangeSet::from(Span::new(0, partial.last_seq));
    }
    missing
}

/// The versions a peer claims, untrusted: reversed spans dropped, version 0
/// (which does not exist) cut off.
fn claimed_versions(spans: &[Span]) -> RangeSet {
    let valid = spans
        .iter()
        .filter(|s| s.start <= s.end && s.end >= 1)
        .map(|s| Span::new(s.start.max(1), s.end));
    RangeSet::from_spans(valid)
}

fn summarize_partials(
    partials: &BTreeMap<u64, Partial>,
    budget: &mut usize,
) -> Vec<PartialVersion> {
    let mut out = Vec::new();
    for (&version, partial) in partials {
        let cost = 1 + partial.have.span_count();
        if cost > *budget {
            break;
        }
        *budget -= cost;
        out.push(PartialVersion {
            version,
            last_seq: partial.last_seq,
            have: partial.have.iter().collect(),
        });
    }
    out
}

#[cfg(test)]
mod tests;
