use std::collections::BTreeMap;

use patina_wire::{ActorId, ChangeChunk, DbKind, Need, Span};
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use super::*;

const REG: DbKind = DbKind::Regional;

fn actor(n: u8) -> ActorId {
    patina_wire::ActorId([n; 16])
}

fn chunk(actor: ActorId, version: u64, seqs: (u64, u64), last_seq: u64) -> ChangeChunk {
    ChangeChunk {
        db: REG,
        actor,
        version,
        seqs: Span::new(seqs.0, seqs.1),
        last_seq,
        committed_ms: 0,
        changes: Vec::new(),
    }
}

/// Feeds `chunk` as a node would: classify, then record what was persisted.
fn feed(book: &mut Bookkeeper, chunk: &ChangeChunk) -> ChunkFate {
    let fate = book.classify(chunk);
    match fate {
        ChunkFate::Duplicate => {}
        ChunkFate::Buffer => book.record_buffered(
            chunk.db,
            chunk.actor,
            chunk.version,
            chunk.last_seq,
            chunk.seqs,
        ),
        ChunkFate::Complete { .. } => book.record_applied(chunk.db, chunk.actor, chunk.version),
    }
    fate
}

#[test]
fn whole_chunk_completes_then_is_duplicate() {
    let mut book = Bookkeeper::new(actor(0));
    let c = chunk(actor(1), 1, (0, 3), 3);
    assert_eq!(feed(&mut book, &c), ChunkFate::Complete { buffered: false });
    assert_eq!(book.classify(&c), ChunkFate::Duplicate);
    assert_eq!(book.max_version(REG, actor(1)), Some(1));
}

#[test]
fn split_chunks_buffer_then_complete() {
    let mut book = Bookkeeper::new(actor(0));
    let a = chunk(actor(1), 2, (0, 1), 5);
    let b = chunk(actor(1), 2, (2, 5), 5);
    assert_eq!(feed(&mut book, &a), ChunkFate::Buffer);
    assert_eq!(book.classify(&a), ChunkFate::Duplicate);
    assert_eq!(
        book.partial(REG, actor(1), 2).map(|p| p.missing()),
        Some(RangeSet::from(Span::new(2, 5)))
    );
    assert_eq!(feed(&mut book, &b), ChunkFate::Complete { buffered: true });
    assert!(book.partials().next().is_none());
    assert_eq!(book.classify(&b), ChunkFate::Duplicate);
}

#[test]
fn smaller_last_seq_of_a_relay_decides_completeness() {
    let mut book = Bookkeeper::new(actor(0));
    // The origin's version has seqs 0..=9; we hold 0..=4 of it.
    assert_eq!(
        feed(&mut book, &chunk(actor(1), 1, (0, 4), 9)),
        ChunkFate::Buffer
    );
    // A relay lost 7..=9 to later writes: its last_seq is 6.
    let relay = chunk(actor(1), 1, (5, 6), 6);
    assert_eq!(
        book.classify(&relay),
        ChunkFate::Complete { buffered: true }
    );
    // A relay's chunk past our smaller last_seq adds nothing.
    let mut other = Bookkeeper::new(actor(0));
    feed(&mut other, &chunk(actor(1), 1, (0, 1), 3));
    assert_eq!(other.partial(REG, actor(1), 1).map(|p| p.last_seq), Some(3));
    assert_eq!(
        other.classify(&chunk(actor(1), 1, (5, 9), 9)),
        ChunkFate::Duplicate
    );
}

#[test]
fn own_versions_are_applied() {
    let mut book = Bookkeeper::new(actor(7));
    book.set_own_version(REG, 5);
    assert_eq!(
        book.classify(&chunk(actor(7), 3, (0, 0), 0)),
        ChunkFate::Duplicate
    );
    let summary = book.summary(SUMMARY_SPANS_MAX);
    assert_eq!(summary.actors.len(), 1);
    assert_eq!(summary.actors[0].applied, vec![Span::new(1, 5)]);
    // Nobody else is asked for our own versions.
    let mut peer = Bookkeeper::new(actor(8));
    peer.restore_applied(REG, actor(7), Span::new(1, 9));
    assert!(book.needs(&peer.summary(SUMMARY_SPANS_MAX), 100).is_empty());
}

#[test]
fn malformed_chunks_are_dropped() {
    let book = Bookkeeper::new(actor(0));
    let mut c = chunk(actor(1), 0, (0, 0), 0);
    assert_eq!(book.classify(&c), ChunkFate::Duplicate);
    c.version = 1;
    c.seqs = Span { start: 3, end: 1 };
    c.last_seq = 4;
    assert_eq!(book.classify(&c), ChunkFate::Duplicate);
    c.seqs = Span::new(0, 5);
    assert_eq!(book.classify(&c), ChunkFate::Duplicate);
}

#[test]
fn restore_loads_applied_and_partials() {
    let mut book = Bookkeeper::new(actor(0));
    book.restore_partial(REG, actor(1), 4, 9, vec![Span::new(0, 2), Span::new(6, 9)]);
    book.restore_applied(REG, actor(1), Span::new(1, 3));
    assert_eq!(
        book.classify(&chunk(actor(1), 4, (1, 2), 9)),
        ChunkFate::Duplicate
    );
    assert_eq!(
        book.classify(&chunk(actor(1), 4, (3, 5), 9)),
        ChunkFate::Complete { buffered: true }
    );
    book.restore_applied(REG, actor(1), Span::new(4, 4));
    assert!(book.partials().next().is_none());
}

#[test]
fn summary_truncation_under_claims() {
    let mut book = Bookkeeper::new(actor(0));
    for v in (1..=20).step_by(2) {
        book.record_applied(REG, actor(1), v);
    }
    book.restore_partial(REG, actor(1), 30, 5, vec![Span::new(0, 1)]);
    let full = book.summary(SUMMARY_SPANS_MAX);
    assert_eq!(full.actors[0].applied.len(), 10);
    assert_eq!(full.actors[0].partial.len(), 1);
    let cut = book.summary(4);
    assert_eq!(cut.actors[0].applied, full.actors[0].applied[..4].to_vec());
    assert!(cut.actors[0].partial.is_empty());
    assert!(book.summary(0).actors.is_empty());
}

#[test]
fn needs_split_versions_and_ask_missing_seqs() {
    let mut peer = Bookkeeper::new(actor(9));
    peer.restore_applied(REG, actor(1), Span::new(1, 25));
    let mut book = Bookkeeper::new(actor(0));
    book.restore_applied(REG, actor(1), Span::new(1, 5));
    book.restore_partial(REG, actor(1), 8, 4, vec![Span::new(1, 2)]);
    let needs = book.needs(&peer.summary(SUMMARY_SPANS_MAX), 10);
    let seqs = Need::Seqs {
        db: REG,
        actor: actor(1),
        version: 8,
        seqs: vec![Span::new(0, 0), Span::new(3, 4)],
    };
    let versions = |s, e| Need::Versions {
        db: REG,
        actor: actor(1),
        versions: Span::new(s, e),
    };
    assert_eq!(
        needs,
        vec![seqs, versions(6, 7), versions(9, 18), versions(19, 25)]
    );
}

#[test]
fn needs_from_a_hostile_summary_are_bounded() {
    let claim = ActorSummary {
        db: REG,
        actor: actor(1),
        applied: vec![Span { start: 9, end: 2 }, Span::new(0, u64::MAX)],
        partial: Vec::new(),
    };
    let book = Bookkeeper::new(actor(0));
    let needs = book.needs(
        &Summary {
            actors: vec![claim],
        },
        1,
    );
    assert_eq!(needs.len(), NEEDS_MAX);
    assert!(matches!(needs[0], Need::Versions { versions, .. } if versions == Span::new(1, 1)));
}

/// One version as two senders send it: the origin with `last_seq`, a relay
/// with `relay_last_seq <= last_seq`, each cut at random seqs.
fn sent_chunks(rng: &mut SmallRng, version: u64) -> Vec<ChangeChunk> {
    let last_seq = rng.random_range(0..6u64);
    let relay_last_seq = rng.random_range(0..=last_seq);
    let mut chunks = cut(rng, version, last_seq);
    if rng.random_bool(0.5) {
        chunks.extend(cut(rng, version, relay_last_seq));
    }
    chunks
}

fn cut(rng: &mut SmallRng, version: u64, last_seq: u64) -> Vec<ChangeChunk> {
    let mut chunks = Vec::new();
    let mut start = 0;
    while start <= last_seq {
        let end = rng.random_range(start..=last_seq);
        chunks.push(chunk(actor(1), version, (start, end), last_seq));
        start = end + 1;
    }
    chunks
}

proptest! {
    /// Chunks in any order, duplicated, from two senders: every version
    /// completes exactly once, and every chunk is a duplicate afterwards.
    #[test]
    fn every_version_completes_exactly_once(seed in any::<u64>(), versions in 1..12u64) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut chunks: Vec<ChangeChunk> =
            (1..=versions).flat_map(|v| sent_chunks(&mut rng, v)).collect();
        let copies: Vec<ChangeChunk> =
            chunks.iter().filter(|_| rng.random_bool(0.3)).cloned().collect();
        chunks.extend(copies);
        chunks.shuffle(&mut rng);
        let mut book = Bookkeeper::new(actor(0));
        let mut completed: BTreeMap<u64, u32> = BTreeMap::new();
        for c in &chunks {
            if let ChunkFate::Complete { .. } = feed(&mut book, c) {
                *completed.entry(c.version).or_default() += 1;
            }
        }
        prop_assert!(completed.values().all(|&n| n == 1), "seed {}: {:?}", seed, completed);
        prop_assert_eq!(completed.len() as u64, versions, "seed {}", seed);
        prop_assert!(chunks.iter().all(|c| book.classify(c) == ChunkFate::Duplicate));
        prop_assert!(book.partials().next().is_none());
    }

    /// After A fetches everything in `A.needs(B.summary())`, A holds every
    /// version B holds applied (of actors other than A itself).
    #[test]
    fn needs_cover_the_peer_summary(seed in any::<u64>()) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut a = random_bookkeeper(&mut rng, actor(0));
        let b = random_bookkeeper(&mut rng, actor(9));
        let needs = a.needs(&b.summary(SUMMARY_SPANS_MAX), rng.random_range(1..8));
        for need in needs {
            apply_need(&mut a, need);
        }
        for (db, who) in b.actors().filter(|&(_, who)| who != actor(0)) {
            let theirs = b.applied(db, who).cloned().unwrap_or_default();
            let ours = a.applied(db, who).cloned().unwrap_or_default();
            prop_assert!(theirs.difference(&ours).is_empty(), "seed {}", seed);
        }
    }

    /// A truncated summary claims nothing that is not held.
    #[test]
    fn truncated_summary_never_over_claims(seed in any::<u64>(), spans_max in 0..30usize) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let book = random_bookkeeper(&mut rng, actor(0));
        let summary = book.summary(spans_max);
        let mut spans = 0;
        for a in &summary.actors {
            let claimed = RangeSet::from_spans(a.applied.iter().copied());
            let held = book.applied(a.db, a.actor).cloned().unwrap_or_default();
            prop_assert!(claimed.difference(&held).is_empty());
            for p in &a.partial {
                let held = book.partial(a.db, a.actor, p.version);
                prop_assert_eq!(held.map(|h| h.have.iter().collect::<Vec<_>>()), Some(p.have.clone()));
                spans += 1 + p.have.len();
            }
            spans += a.applied.len();
        }
        prop_assert!(spans <= spans_max);
    }
}

/// Applies a need as if the peer answered it in full.
fn apply_need(book: &mut Bookkeeper, need: Need) {
    match need {
        Need::Versions {
            db,
            actor,
            versions,
        } => {
            assert!(!book
                .applied(db, actor)
                .is_some_and(|a| a.overlaps(versions)));
            for v in versions.start..=versions.end {
                book.record_applied(db, actor, v);
            }
        }
        Need::Seqs {
            db,
            actor,
            version,
            seqs,
        } => {
            let partial = book
                .partial(db, actor, version)
                .expect("asked seqs of a partial");
            let got = RangeSet::from_spans(seqs);
            assert!(partial.missing().difference(&got).is_empty());
            book.record_applied(db, actor, version);
        }
    }
}

/// Three actors (one is `own`) in both databases, random applied spans and
/// partial versions.
fn random_bookkeeper(rng: &mut SmallRng, own: ActorId) -> Bookkeeper {
    let mut book = Bookkeeper::new(own);
    book.set_own_version(REG, rng.random_range(0..5));
    for who in [actor(1), actor(2), own] {
        for db in [DbKind::Regional, DbKind::Global] {
            for _ in 0..rng.random_range(0..5) {
                let start = rng.random_range(1..40);
                book.restore_applied(db, who, Span::new(start, start + rng.random_range(0..6)));
            }
            for _ in 0..rng.random_range(0..3) {
                let version = rng.random_range(1..50);
                let last_seq = rng.random_range(1..6);
                let held = rng.random_range(0..last_seq);
                book.restore_partial(db, who, version, last_seq, vec![Span::new(0, held)]);
            }
        }
    }
    book
}

#[test]
fn missing_versions_counts_holes_and_partials() {
    let (me, a) = (patina_wire::ActorId([1; 16]), patina_wire::ActorId([2; 16]));
    let mut b = Bookkeeper::new(me);
    b.set_own_version(DbKind::Regional, 5);
    assert_eq!(b.missing_versions(), 0);
    b.restore_applied(DbKind::Regional, a, Span::new(1, 3));
    b.restore_applied(DbKind::Regional, a, Span::new(7, 7));
    assert_eq!(b.missing_versions(), 3, "4, 5, 6");
    b.restore_partial(DbKind::Regional, a, 9, 10, vec![Span::new(0, 2)]);
    assert_eq!(b.missing_versions(), 5, "4, 5, 6, 8, 9");
}

#[test]
fn the_digest_is_of_the_versions_held_whoever_holds_them() {
    let (a, b) = (actor(1), actor(2));
    let mut one = Bookkeeper::new(a);
    let mut two = Bookkeeper::new(b);
    assert_eq!(one.digest(), two.digest(), "empty");
    for v in 1..=3 {
        feed(&mut one, &chunk(a, v, (0, 0), 0));
    }
    assert_ne!(one.digest(), two.digest());
    for v in [3, 1, 2] {
        feed(&mut two, &chunk(a, v, (0, 0), 0));
    }
    assert_eq!(
        one.digest(),
        two.digest(),
        "same versions, other order, other owner"
    );
    // A partial version is not in the digest; another actor's version is.
    feed(&mut two, &chunk(b, 1, (0, 0), 5));
    assert_eq!(one.digest(), two.digest());
    feed(&mut two, &chunk(b, 2, (0, 0), 0));
    assert_ne!(one.digest(), two.digest());
}
