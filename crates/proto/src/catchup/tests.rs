use patina_wire::{ActorSummary, PartialVersion};

use super::*;

const REG: DbKind = DbKind::Regional;
const GLOBAL: DbKind = DbKind::Global;
const WAIT: Duration = Duration::from_secs(30);

fn actor(n: u8) -> ActorId {
    ActorId([n; 16])
}

/// One actor's applied spans in a test summary: (db, actor, spans).
type Entry<'a> = (DbKind, u8, &'a [(u64, u64)]);

/// A summary of applied spans, per (db, actor).
fn summary(entries: &[Entry<'_>]) -> Summary {
    Summary {
        actors: entries
            .iter()
            .map(|&(db, a, spans)| ActorSummary {
                db,
                actor: actor(a),
                applied: spans
                    .iter()
                    .map(|&(s, e)| Span { start: s, end: e })
                    .collect(),
                partial: Vec::new(),
            })
            .collect(),
    }
}

fn holding(entries: &[(DbKind, u8, u64, u64)]) -> Bookkeeper {
    let mut book = Bookkeeper::new(actor(0));
    for &(db, a, s, e) in entries {
        book.restore_applied(db, actor(a), Span::new(s, e));
    }
    book
}

fn joined(now: Instant) -> CatchUp {
    CatchUp::new(true, &[REG, GLOBAL], now, 1_000, WAIT)
}

#[test]
fn a_node_with_nobody_to_learn_from_is_not_catching_up() {
    let t0 = Instant::now();
    let mut c = CatchUp::new(false, &[REG], t0, 1_000, WAIT);
    assert_eq!(c.status().phase, CatchUpPhase::Alone);
    assert!(!c.status().catching_up());
    assert_eq!(c.status().reason(t0), None);
    // Summaries arriving later do not make it catch up.
    c.on_summaries([&summary(&[(REG, 1, &[(1, 9)])])], &holding(&[]), t0);
    assert!(!c.status().catching_up());
}

#[test]
fn catching_up_until_the_first_rounds_target_is_held() {
    let t0 = Instant::now();
    let mut c = joined(t0);
    assert_eq!(c.status().phase, CatchUpPhase::Waiting);
    assert!(c.status().catching_up());
    assert!(c.status().reason(t0).unwrap().contains("waiting"));

    // Two peers answer the first round; the target is their union.
    let held = holding(&[(REG, 1, 1, 3)]);
    let a = summary(&[(REG, 1, &[(1, 5)]), (GLOBAL, 2, &[(1, 2)])]);
    let b = summary(&[(REG, 1, &[(1, 4), (8, 8)])]);
    c.on_summaries([&a, &b], &held, t0);
    let s = c.status();
    assert_eq!(s.phase, CatchUpPhase::Fetching);
    // REG/1: 4, 5, 8; GLOBAL/2: 1, 2.
    assert_eq!(s.missing_versions, 5);
    assert!(
        s.reason(t0).unwrap().contains("5 versions"),
        "{:?}",
        s.reason(t0)
    );

    // A later round claims more: the target does not move.
    let later = summary(&[(REG, 1, &[(1, 100)])]);
    c.on_summaries([&later], &held, t0);
    assert_eq!(c.status().missing_versions, 5);

    let t1 = t0 + Duration::from_secs(1);
    c.on_held(&holding(&[(REG, 1, 1, 8), (GLOBAL, 2, 1, 1)]), t1);
    assert_eq!(c.status().missing_versions, 1);
    assert!(c.status().catching_up());
    c.on_held(&holding(&[(REG, 1, 1, 8), (GLOBAL, 2, 1, 2)]), t1);
    let s = c.status();
    assert_eq!(s.phase, CatchUpPhase::CaughtUp);
    assert_eq!(s.ended, Some(t1));
    assert!(!s.catching_up());
    assert_eq!(s.reason(t1), None);
    // Over for good: even holding less (it never does) changes nothing.
    c.on_held(&holding(&[]), t1);
    assert_eq!(c.status().phase, CatchUpPhase::CaughtUp);
}

#[test]
fn a_version_held_in_part_is_still_missing() {
    let t0 = Instant::now();
    let mut c = joined(t0);
    let mut held = holding(&[(REG, 1, 1, 1)]);
    held.record_buffered(REG, actor(1), 2, 5, Span::new(0, 2));
    c.on_summaries([&summary(&[(REG, 1, &[(1, 2)])])], &held, t0);
    assert_eq!(c.status().missing_versions, 1);
    held.record_applied(REG, actor(1), 2);
    c.on_held(&held, t0);
    assert_eq!(c.status().phase, CatchUpPhase::CaughtUp);
}

#[test]
fn what_peers_hold_in_part_its_own_versions_and_other_dbs_are_not_the_target() {
    let t0 = Instant::now();
    let mut c = CatchUp::new(true, &[GLOBAL], t0, 1_000, WAIT);
    let mut s = summary(&[
        (REG, 1, &[(1, 9)]),            // a database this cluster does not carry
        (GLOBAL, 0, &[(1, 50)]),        // this node's own versions
        (GLOBAL, 3, &[(5, 1), (0, 0)]), // malformed spans
    ]);
    s.actors.push(ActorSummary {
        db: GLOBAL,
        actor: actor(4),
        applied: Vec::new(),
        partial: vec![PartialVersion {
            version: 1,
            last_seq: 3,
            have: vec![Span::new(0, 1)],
        }],
    });
    c.on_summaries([&s], &holding(&[]), t0);
    assert_eq!(c.status().phase, CatchUpPhase::CaughtUp);
}

#[test]
fn an_empty_answer_ends_catching_up_at_once() {
    let t0 = Instant::now();
    let mut c = joined(t0);
    c.on_summaries([&Summary { actors: vec![] }], &holding(&[]), t0);
    assert_eq!(c.status().phase, CatchUpPhase::CaughtUp);
}

#[test]
fn a_round_nobody_answered_sets_no_target() {
    let t0 = Instant::now();
    let mut c = joined(t0);
    c.on_summaries([], &holding(&[]), t0);
    assert_eq!(c.status().phase, CatchUpPhase::Waiting);
}

#[test]
fn silent_peers_end_the_wait() {
    let t0 = Instant::now();
    let mut c = joined(t0);
    c.on_held(&holding(&[]), t0 + WAIT - Duration::from_millis(1));
    assert!(c.status().catching_up());
    c.on_held(&holding(&[]), t0 + WAIT);
    let s = c.status();
    assert_eq!(s.phase, CatchUpPhase::NoAnswer);
    assert!(!s.catching_up());
    // Once fetching, the wait no longer applies: the target is known.
    let mut c = joined(t0);
    c.on_summaries([&summary(&[(REG, 1, &[(1, 1)])])], &holding(&[]), t0);
    c.on_held(&holding(&[]), t0 + WAIT * 10);
    assert_eq!(c.status().phase, CatchUpPhase::Fetching);
}

#[test]
fn live_lag_is_after_the_start_and_after_catching_up() {
    let t0 = Instant::now();
    let mut c = joined(t0);
    assert!(!c.status().is_live(5_000), "catching up");
    c.on_summaries([&summary(&[])], &holding(&[]), t0);
    assert!(c.status().is_live(1_000));
    assert!(!c.status().is_live(999), "written before the node started");
    let alone = CatchUp::new(false, &[REG], t0, 1_000, WAIT);
    assert!(alone.status().is_live(1_000));
}
