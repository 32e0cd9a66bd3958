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

fn peer(n: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], n))
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
    c.on_summaries([(peer(1), &summary(&[(REG, 1, &[(1, 9)])]))], &holding(&[]));
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
    c.on_summaries([(peer(1), &a), (peer(2), &b)], &held);
    c.on_held(&held, &[peer(1), peer(2)], t0);
    let s = c.status();
    assert_eq!(s.phase, CatchUpPhase::Fetching);
    // REG/1: 4, 5, 8; GLOBAL/2: 1, 2.
    assert_eq!(s.missing_versions, 5);
    assert!(
        s.reason(t0).unwrap().contains("5 versions"),
        "{:?}",
        s.reason(t0)
    );

    // A later answer of the same peer claims more: the target does not move.
    let later = summary(&[(REG, 1, &[(1, 100)])]);
    c.on_summaries([(peer(1), &later)], &held);
    assert_eq!(c.status().missing_versions, 5);

    let t1 = t0 + Duration::from_secs(1);
    c.on_held(&holding(&[(REG, 1, 1, 8), (GLOBAL, 2, 1, 1)]), &[], t1);
    assert_eq!(c.status().missing_versions, 1);
    assert!(c.status().catching_up());
    c.on_held(&holding(&[(REG, 1, 1, 8), (GLOBAL, 2, 1, 2)]), &[], t1);
    let s = c.status();
    assert_eq!(s.phase, CatchUpPhase::CaughtUp);
    assert_eq!(s.ended, Some(t1));
    assert!(!s.catching_up());
    assert_eq!(s.reason(t1), None);
    // Over for good: even holding less (it never does) changes nothing.
    c.on_held(&holding(&[]), &[], t1);
    assert_eq!(c.status().phase, CatchUpPhase::CaughtUp);
}

#[test]
fn a_version_held_in_part_is_still_missing() {
    let t0 = Instant::now();
    let mut c = joined(t0);
    let mut held = holding(&[(REG, 1, 1, 1)]);
    held.record_buffered(REG, actor(1), 2, 5, Span::new(0, 2));
    c.on_summaries([(peer(1), &summary(&[(REG, 1, &[(1, 2)])]))], &held);
    assert_eq!(c.status().missing_versions, 1);
    held.record_applied(REG, actor(1), 2);
    c.on_held(&held, &[], t0);
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
    c.on_summaries([(peer(1), &s)], &holding(&[]));
    c.on_held(&holding(&[]), &[], t0);
    assert_eq!(c.status().phase, CatchUpPhase::CaughtUp);
}

#[test]
fn an_empty_answer_ends_catching_up_at_once() {
    let t0 = Instant::now();
    let mut c = joined(t0);
    c.on_summaries([(peer(1), &Summary { actors: vec![] })], &holding(&[]));
    c.on_held(&holding(&[]), &[peer(1)], t0);
    assert_eq!(c.status().phase, CatchUpPhase::CaughtUp);
}

#[test]
fn a_round_nobody_answered_sets_no_target() {
    let t0 = Instant::now();
    let mut c = joined(t0);
    c.on_summaries(std::iter::empty(), &holding(&[]));
    assert_eq!(c.status().phase, CatchUpPhase::Waiting);
}

#[test]
fn silent_peers_end_the_wait() {
    let t0 = Instant::now();
    let mut c = joined(t0);
    c.on_held(&holding(&[]), &[], t0 + WAIT - Duration::from_millis(1));
    assert!(c.status().catching_up());
    c.on_held(&holding(&[]), &[], t0 + WAIT);
    let s = c.status();
    assert_eq!(s.phase, CatchUpPhase::NoAnswer);
    assert!(!s.catching_up());
    // Once fetching, the wait no longer applies: the target is known.
    let mut c = joined(t0);
    c.on_summaries([(peer(1), &summary(&[(REG, 1, &[(1, 1)])]))], &holding(&[]));
    c.on_held(&holding(&[]), &[], t0 + WAIT * 10);
    assert_eq!(c.status().phase, CatchUpPhase::Fetching);
}

#[test]
fn live_lag_is_after_the_start_and_after_catching_up() {
    let t0 = Instant::now();
    let mut c = joined(t0);
    assert!(!c.status().is_live(5_000), "catching up");
    c.on_summaries([(peer(1), &summary(&[]))], &holding(&[]));
    c.on_held(&holding(&[]), &[], t0);
    assert!(c.status().is_live(1_000));
    assert!(!c.status().is_live(999), "written before the node started");
    let alone = CatchUp::new(false, &[REG], t0, 1_000, WAIT);
    assert!(alone.status().is_live(1_000));
}

#[test]
fn a_live_peer_that_has_not_answered_yet_is_waited_for_and_adds_to_the_target() {
    let t0 = Instant::now();
    let mut c = joined(t0);
    let held = holding(&[]);
    // Two of three live peers answer, holding nothing this node lacks.
    let empty = summary(&[]);
    c.on_summaries([(peer(1), &empty), (peer(2), &empty)], &held);
    let live = [peer(1), peer(2), peer(3)];
    c.on_held(&held, &live, t0);
    let s = c.status();
    assert!(s.catching_up(), "{s:?}");
    assert_eq!(s.unanswered_peers, 1);
    // The sync task asks it first.
    assert_eq!(c.unanswered(&live), vec![&peer(3)]);
    assert!(
        s.reason(t0).unwrap().contains("1 more live peers"),
        "{:?}",
        s.reason(t0)
    );
    // The third, busy with a large write, answers later: its versions are
    // in the target.
    let busy = summary(&[(REG, 7, &[(1, 1)])]);
    c.on_summaries([(peer(3), &busy)], &held);
    c.on_held(&held, &live, t0);
    assert_eq!(c.status().missing_versions, 1);
    c.on_held(&holding(&[(REG, 7, 1, 1)]), &live, t0);
    assert_eq!(c.status().phase, CatchUpPhase::CaughtUp);
    assert!(
        c.unanswered(&[peer(4)]).is_empty(),
        "caught up: no one to ask first"
    );
}

#[test]
fn a_live_peer_silent_past_the_wait_is_not_waited_for() {
    let t0 = Instant::now();
    let mut c = joined(t0);
    let held = holding(&[]);
    c.on_summaries([(peer(1), &summary(&[]))], &held);
    c.on_held(
        &held,
        &[peer(1), peer(2)],
        t0 + WAIT - Duration::from_millis(1),
    );
    assert!(c.status().catching_up());
    c.on_held(&held, &[peer(1), peer(2)], t0 + WAIT);
    assert_eq!(c.status().phase, CatchUpPhase::CaughtUp);
}

#[test]
fn a_declining_peer_is_not_waited_for_and_is_no_answer() {
    let t0 = Instant::now();
    let mut c = joined(t0);
    let live = [peer(1), peer(2)];
    // The only peers so far decline (stale): still waiting for an answer.
    c.on_declined(peer(2));
    c.on_held(&holding(&[]), &live, t0);
    assert_eq!(c.status().phase, CatchUpPhase::Waiting);
    // Peer 1 answers; peer 2, which declined, is not waited for.
    let held = holding(&[(REG, 1, 1, 3)]);
    c.on_summaries([(peer(1), &summary(&[(REG, 1, &[(1, 3)])]))], &held);
    c.on_held(&held, &live, t0);
    assert_eq!(c.status().phase, CatchUpPhase::CaughtUp);
}
