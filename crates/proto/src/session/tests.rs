use std::time::{Duration, Instant};

use patina_wire::{ActorId, ChangeChunk, DbKind, Message, Need, Span, Summary};

use super::*;

const REGION: &[DbKind] = &[DbKind::Regional, DbKind::Global];
const GLOBAL: &[DbKind] = &[DbKind::Global];

fn chunk(db: DbKind, version: u64) -> ChangeChunk {
    ChangeChunk {
        db,
        actor: ActorId([3; 16]),
        version,
        seqs: Span::new(0, 0),
        last_seq: 0,
        committed_ms: 0,
        changes: Vec::new(),
    }
}

fn need(db: DbKind, version: u64) -> Need {
    Need::Versions {
        db,
        actor: ActorId([3; 16]),
        versions: Span::new(version, version),
    }
}

fn limits() -> SyncLimits {
    SyncLimits {
        apply_chunks_max: 3,
        needs_max: 4,
        ..SyncLimits::default()
    }
}

/// A session that has sent its pull at `t0`.
fn pulling(carried: &[DbKind], t0: Instant) -> PullSession {
    let mut session = PullSession::new(carried, limits(), t0);
    session.open();
    session.on_frame(Message::Summary(Summary::default()), t0);
    session.pull(vec![need(DbKind::Regional, 1)], t0);
    session
}

fn failed(why: &'static str) -> Vec<PullAction> {
    vec![PullAction::Fail(SyncFailure::Unexpected(why))]
}

#[test]
fn the_defaults_are_the_documented_limits() {
    let l = SyncLimits::default();
    assert_eq!(l.summary_timeout, Duration::from_secs(2));
    assert_eq!(l.frame_timeout, Duration::from_secs(10));
    assert_eq!(l.apply_chunks_max, 128);
    assert_eq!(l.needs_max, 4096);
    assert_eq!(l.serving_max, 32);
}

#[test]
fn a_pull_goes_request_summary_plan_pull_changes_done() {
    let t0 = Instant::now();
    let mut s = PullSession::new(REGION, limits(), t0);
    assert_eq!(s.deadline(), Some(t0 + Duration::from_secs(2)));
    assert_eq!(s.open(), vec![PullAction::Send(Message::SummaryRequest)]);
    assert!(s.open().is_empty(), "asks once");
    let t1 = t0 + Duration::from_millis(5);
    assert_eq!(
        s.on_frame(Message::Summary(Summary::default()), t1),
        vec![PullAction::Plan(Summary::default())]
    );
    assert_eq!(s.deadline(), None, "no deadline while we plan");
    let needs = vec![need(DbKind::Regional, 1)];
    assert_eq!(
        s.pull(needs.clone(), t1),
        vec![PullAction::Send(Message::Pull(needs))]
    );
    assert_eq!(s.deadline(), Some(t1 + Duration::from_secs(10)));
    assert_eq!(
        s.on_frame(Message::Changes(chunk(DbKind::Regional, 1)), t1),
        vec![PullAction::Count(SyncCount::ChunkReceived)]
    );
    assert_eq!(
        s.on_frame(Message::PullDone, t1),
        vec![
            PullAction::Apply(vec![chunk(DbKind::Regional, 1)]),
            PullAction::Finish
        ]
    );
    assert!(s.is_ended());
    assert_eq!(s.deadline(), None);
}

#[test]
fn nothing_to_pull_finishes_at_once() {
    let t0 = Instant::now();
    let mut s = PullSession::new(REGION, limits(), t0);
    s.open();
    s.on_frame(Message::Summary(Summary::default()), t0);
    assert_eq!(s.pull(Vec::new(), t0), vec![PullAction::Finish]);
    assert!(s.is_ended());
}

#[test]
fn an_empty_pull_done_applies_nothing() {
    let t0 = Instant::now();
    let mut s = pulling(REGION, t0);
    assert_eq!(s.on_frame(Message::PullDone, t0), vec![PullAction::Finish]);
}

#[test]
fn chunks_are_handed_out_to_merge_in_batches_of_apply_chunks_max() {
    let t0 = Instant::now();
    let mut s = pulling(REGION, t0);
    let mut applied = Vec::new();
    for v in 1..=7 {
        for action in s.on_frame(Message::Changes(chunk(DbKind::Regional, v)), t0) {
            if let PullAction::Apply(batch) = action {
                applied.push(batch.iter().map(|c| c.version).collect::<Vec<_>>());
            }
        }
    }
    for action in s.on_frame(Message::PullDone, t0) {
        if let PullAction::Apply(batch) = action {
            applied.push(batch.iter().map(|c| c.version).collect());
        }
    }
    assert_eq!(applied, vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]]);
}

#[test]
fn a_chunk_of_a_database_not_carried_is_dropped_and_counted() {
    let t0 = Instant::now();
    let mut s = pulling(GLOBAL, t0);
    assert_eq!(
        s.on_frame(Message::Changes(chunk(DbKind::Regional, 1)), t0),
        vec![
            PullAction::Count(SyncCount::ChunkReceived),
            PullAction::Refuse(chunk(DbKind::Regional, 1))
        ]
    );
    s.on_frame(Message::Changes(chunk(DbKind::Global, 2)), t0);
    assert_eq!(
        s.on_frame(Message::PullDone, t0),
        vec![
            PullAction::Apply(vec![chunk(DbKind::Global, 2)]),
            PullAction::Finish
        ]
    );
}

#[test]
fn a_summary_answered_with_something_else_fails() {
    for wrong in [
        Message::SummaryRequest,
        Message::PullDone,
        Message::Pull(Vec::new()),
        Message::Changes(chunk(DbKind::Regional, 1)),
    ] {
        let t0 = Instant::now();
        let mut s = PullSession::new(REGION, limits(), t0);
        s.open();
        assert_eq!(s.on_frame(wrong, t0), failed("expected a summary"));
        assert!(s.is_ended());
    }
}

#[test]
fn a_message_before_we_asked_fails() {
    let t0 = Instant::now();
    let mut s = PullSession::new(REGION, limits(), t0);
    assert_eq!(
        s.on_frame(Message::Summary(Summary::default()), t0),
        failed("a message before the summary request")
    );
}

#[test]
fn changes_before_the_pull_fail() {
    let t0 = Instant::now();
    let mut s = PullSession::new(REGION, limits(), t0);
    s.open();
    s.on_frame(Message::Summary(Summary::default()), t0);
    assert_eq!(
        s.on_frame(Message::Changes(chunk(DbKind::Regional, 1)), t0),
        failed("a message before the pull")
    );
    assert!(s.pull(vec![need(DbKind::Regional, 1)], t0).is_empty());
}

#[test]
fn anything_but_changes_or_pull_done_during_a_pull_fails_and_drops_the_batch() {
    for wrong in [
        Message::SummaryRequest,
        Message::Summary(Summary::default()),
        Message::Pull(Vec::new()),
    ] {
        let t0 = Instant::now();
        let mut s = pulling(REGION, t0);
        s.on_frame(Message::Changes(chunk(DbKind::Regional, 1)), t0);
        assert_eq!(
            s.on_frame(wrong, t0),
            failed("expected changes or the end of a pull")
        );
        assert!(s.on_frame(Message::PullDone, t0).is_empty(), "ended");
    }
}

#[test]
fn a_closed_stream_fails_while_waiting_for_the_peer() {
    let t0 = Instant::now();
    let mut asking = PullSession::new(REGION, limits(), t0);
    asking.open();
    assert_eq!(
        asking.on_closed(),
        vec![PullAction::Fail(SyncFailure::Closed)]
    );
    let mut s = pulling(REGION, t0);
    assert_eq!(s.on_closed(), vec![PullAction::Fail(SyncFailure::Closed)]);
    assert!(s.on_closed().is_empty(), "once");
}

#[test]
fn the_summary_deadline_covers_opening_and_answering() {
    let t0 = Instant::now();
    let mut s = PullSession::new(REGION, limits(), t0);
    let deadline = t0 + Duration::from_secs(2);
    assert_eq!(s.on_timeout(deadline - Duration::from_millis(1)), None);
    assert!(!s.is_ended(), "a timer firing early changes nothing");
    assert_eq!(
        s.on_timeout(deadline),
        Some(SyncFailure::Timeout(Duration::from_secs(2)))
    );
    assert!(s.is_ended());
    assert_eq!(s.on_timeout(deadline + Duration::from_secs(60)), None);

    let mut s = PullSession::new(REGION, limits(), t0);
    s.open();
    assert_eq!(
        s.on_timeout(deadline + Duration::from_millis(1)),
        Some(SyncFailure::Timeout(Duration::from_secs(2)))
    );
}

#[test]
fn each_frame_and_each_merge_restart_the_frame_deadline() {
    let t0 = Instant::now();
    let mut s = pulling(REGION, t0);
    let ten = Duration::from_secs(10);
    assert_eq!(s.deadline(), Some(t0 + ten));
    let t1 = t0 + Duration::from_secs(9);
    s.on_frame(Message::Changes(chunk(DbKind::Regional, 1)), t1);
    assert_eq!(s.deadline(), Some(t1 + ten));
    assert_eq!(s.on_timeout(t0 + ten), None);
    let t2 = t1 + Duration::from_secs(8);
    s.on_applied(t2);
    assert_eq!(
        s.deadline(),
        Some(t2 + ten),
        "our merge is not the peer's delay"
    );
    assert_eq!(s.on_timeout(t2 + ten), Some(SyncFailure::Timeout(ten)));
    assert!(s.is_ended());
}

#[test]
fn no_deadline_and_no_timeout_while_planning() {
    let t0 = Instant::now();
    let mut s = PullSession::new(REGION, limits(), t0);
    s.open();
    s.on_frame(Message::Summary(Summary::default()), t0);
    assert_eq!(s.on_timeout(t0 + Duration::from_secs(3600)), None);
    s.on_applied(t0);
    assert_eq!(s.deadline(), None);
}

#[test]
fn serving_goes_summary_then_the_needs_then_pull_done() {
    let mut s = ServeSession::new(REGION, limits(), Instant::now());
    assert_eq!(
        s.on_frame(Message::SummaryRequest),
        vec![ServeAction::SendSummary]
    );
    let needs = vec![need(DbKind::Regional, 1), need(DbKind::Global, 2)];
    assert_eq!(
        s.on_frame(Message::Pull(needs.clone())),
        vec![
            ServeAction::Count(SyncCount::PullServed),
            ServeAction::Serve(needs),
            ServeAction::Send(Message::PullDone),
            ServeAction::Finish,
        ]
    );
    assert!(s.is_ended());
    assert!(s.on_frame(Message::PullDone).is_empty());
}

#[test]
fn a_peer_that_needs_nothing_closes_after_the_summary() {
    let mut s = ServeSession::new(REGION, limits(), Instant::now());
    s.on_frame(Message::SummaryRequest);
    assert_eq!(s.on_closed(), vec![ServeAction::Finish]);
    assert!(s.on_closed().is_empty());
}

#[test]
fn a_stream_that_does_not_start_with_a_summary_request_is_refused() {
    for wrong in [
        Message::Summary(Summary::default()),
        Message::Pull(vec![need(DbKind::Regional, 1)]),
        Message::Changes(chunk(DbKind::Regional, 1)),
        Message::PullDone,
    ] {
        let mut s = ServeSession::new(REGION, limits(), Instant::now());
        assert_eq!(
            s.on_frame(wrong),
            vec![ServeAction::Fail(SyncFailure::Unexpected(
                "a sync stream starts with a summary request"
            ))]
        );
        assert!(s.is_ended());
    }
}

#[test]
fn anything_but_a_pull_after_the_summary_fails() {
    for wrong in [
        Message::SummaryRequest,
        Message::Changes(chunk(DbKind::Regional, 1)),
        Message::PullDone,
    ] {
        let mut s = ServeSession::new(REGION, limits(), Instant::now());
        s.on_frame(Message::SummaryRequest);
        assert_eq!(
            s.on_frame(wrong),
            vec![ServeAction::Fail(SyncFailure::Unexpected(
                "expected a pull"
            ))]
        );
    }
}

#[test]
fn too_many_needs_are_cut_at_needs_max_then_other_databases_dropped() {
    let mut s = ServeSession::new(GLOBAL, limits(), Instant::now());
    s.on_frame(Message::SummaryRequest);
    let needs: Vec<Need> = (1..=10)
        .map(|v| {
            let db = if v % 2 == 0 {
                DbKind::Global
            } else {
                DbKind::Regional
            };
            need(db, v)
        })
        .collect();
    let actions = s.on_frame(Message::Pull(needs));
    // The first 4 (needs_max) are read; of those, the global ones served.
    assert_eq!(
        actions[1],
        ServeAction::Serve(vec![need(DbKind::Global, 2), need(DbKind::Global, 4)])
    );
}

#[test]
fn a_served_conversation_ends_at_its_deadline_whatever_the_peer_does() {
    let t0 = Instant::now();
    let mut s = ServeSession::new(REGION, limits(), t0);
    assert_eq!(s.deadline(), t0 + Duration::from_secs(30));
    s.on_frame(Message::SummaryRequest);
    // The peer goes quiet after the summary.
    assert_eq!(
        s.on_timeout(),
        vec![
            ServeAction::Count(SyncCount::ServeTimedOut),
            ServeAction::Fail(SyncFailure::Timeout(Duration::from_secs(30)))
        ]
    );
    assert!(s.is_ended());
    assert!(s.on_timeout().is_empty(), "counted once");
}

#[test]
fn a_pull_is_served_up_to_its_byte_budget() {
    let limits = SyncLimits {
        serve_bytes_max: 1000,
        ..limits()
    };
    let mut s = ServeSession::new(REGION, limits, Instant::now());
    assert!(s.spend(400));
    assert!(s.spend(599));
    assert!(!s.spend(1));
}

#[test]
fn serving_slots_are_bounded_in_total_and_per_peer() {
    let l = SyncLimits::default();
    assert_eq!(l.admits(0, 0), Ok(()));
    assert_eq!(l.admits(31, 3), Ok(()));
    assert_eq!(l.admits(31, 4), Err(ServeRefusal::PeerBusy));
    assert_eq!(l.admits(32, 0), Err(ServeRefusal::Busy));
}

#[test]
fn a_peer_with_the_same_digest_answers_in_sync_and_the_pull_ends() {
    let t0 = Instant::now();
    let mut puller = PullSession::new(REGION, limits(), t0);
    assert_eq!(
        puller.open_with_digest(42),
        vec![PullAction::Send(Message::DigestRequest(42))]
    );
    let mut server = ServeSession::new(REGION, limits(), t0);
    assert_eq!(
        server.on_frame(Message::DigestRequest(42)),
        vec![ServeAction::CheckDigest(42)]
    );
    assert_eq!(
        server.digest_checked(true),
        vec![
            ServeAction::Count(SyncCount::DigestMatched),
            ServeAction::Send(Message::InSync),
            ServeAction::Finish,
        ]
    );
    assert!(server.is_ended());
    assert_eq!(
        puller.on_frame(Message::InSync, t0),
        vec![PullAction::InSync]
    );
    assert!(puller.is_ended());
    assert_eq!(puller.deadline(), None);
}

#[test]
fn a_peer_that_declines_ends_the_pull_without_a_failure() {
    let t0 = Instant::now();
    let mut puller = PullSession::new(REGION, limits(), t0);
    puller.open_with_digest(7);
    assert_eq!(
        puller.on_frame(Message::Declined("stale".into()), t0),
        vec![PullAction::Declined("stale".into())]
    );
    assert!(puller.is_ended());
    assert_eq!(puller.deadline(), None);
    assert!(
        puller.on_closed().is_empty(),
        "the close that follows is no failure"
    );
}

#[test]
fn a_different_digest_is_answered_with_the_summary() {
    let t0 = Instant::now();
    let mut server = ServeSession::new(REGION, limits(), t0);
    server.on_frame(Message::DigestRequest(1));
    assert_eq!(server.digest_checked(false), vec![ServeAction::SendSummary]);
    assert!(server.digest_checked(false).is_empty(), "answered once");
    let needs = vec![need(DbKind::Regional, 1)];
    assert_eq!(
        server.on_frame(Message::Pull(needs.clone()))[1],
        ServeAction::Serve(needs)
    );
    // Before the answer, anything from the peer is out of order.
    let mut server = ServeSession::new(REGION, limits(), t0);
    server.on_frame(Message::DigestRequest(1));
    assert_eq!(
        server.on_frame(Message::Pull(Vec::new())),
        vec![ServeAction::Fail(SyncFailure::Unexpected(
            "a message before the digest's answer"
        ))]
    );
}

#[test]
fn collection_floors_may_precede_the_summary_once_per_database() {
    let t0 = Instant::now();
    let floors = patina_wire::CollectedFloors {
        db: DbKind::Regional,
        floors: vec![(ActorId([3; 16]), 7)],
        causal_lengths: vec![("t".into(), 4)],
    };
    let mut session = PullSession::new(REGION, limits(), t0);
    session.open();
    assert_eq!(
        session.on_frame(Message::Collected(floors.clone()), t0),
        vec![PullAction::Collected(floors.clone())]
    );
    assert_eq!(
        session.on_frame(Message::Summary(Summary::default()), t0),
        vec![PullAction::Plan(Summary::default())]
    );
    // After the summary they are out of place.
    let mut session = PullSession::new(REGION, limits(), t0);
    session.open();
    session.on_frame(Message::Collected(floors.clone()), t0);
    session.on_frame(Message::Collected(floors.clone()), t0);
    assert_eq!(
        session.on_frame(Message::Collected(floors), t0),
        failed("more collection floors than databases")
    );
}
