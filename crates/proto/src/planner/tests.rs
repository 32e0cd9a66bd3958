use std::collections::BTreeMap;

use patina_wire::{ActorId, DbKind, Need, Span, Summary};
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::*;
use crate::bookie::SUMMARY_SPANS_MAX;

const REG: DbKind = DbKind::Regional;

fn actor(n: u8) -> ActorId {
    patina_wire::ActorId([n; 16])
}

/// A summary of a node holding `spans` of actor 1.
fn holding(spans: &[(u64, u64)]) -> Summary {
    let mut book = Bookkeeper::new(actor(200));
    for &(s, e) in spans {
        book.restore_applied(REG, actor(1), Span::new(s, e));
    }
    book.summary(SUMMARY_SPANS_MAX)
}

fn versions(needs: &[Need]) -> RangeSet {
    RangeSet::from_spans(needs.iter().map(|n| need_versions(n).1))
}

fn config() -> PlannerConfig {
    PlannerConfig {
        versions_per_need_max: 100,
        ..PlannerConfig::default()
    }
}

#[test]
fn a_range_held_by_one_peer_goes_to_it() {
    let mut planner = SyncPlanner::new(config());
    let local = Bookkeeper::new(actor(0));
    let peers = [("a", holding(&[(1, 10)])), ("b", holding(&[(1, 20)]))];
    let pulls = planner.plan(Instant::now(), &local, &peers);
    let by_peer: BTreeMap<_, _> = pulls.into_iter().collect();
    assert_eq!(by_peer["a"].len(), 1);
    assert!(versions(&by_peer["b"]).contains_span(Span::new(11, 20)));
    let all = versions(&by_peer["a"]).len() + versions(&by_peer["b"]).len();
    assert_eq!(all, 20, "each version asked once");
}

#[test]
fn load_spreads_over_holders() {
    let mut planner = SyncPlanner::new(config());
    let local = Bookkeeper::new(actor(0));
    let peers: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|p| (p, holding(&[(1, 300)])))
        .collect();
    let pulls = planner.plan(Instant::now(), &local, &peers);
    assert_eq!(pulls.len(), 3);
    for (_, needs) in &pulls {
        assert_eq!(versions(needs).len(), 100);
    }
    assert_eq!(planner.in_flight(), 3);
}

#[test]
fn in_flight_needs_are_not_asked_again_until_released() {
    let mut planner = SyncPlanner::new(config());
    let local = Bookkeeper::new(actor(0));
    let now = Instant::now();
    let a = [("a", holding(&[(1, 50)]))];
    let b = [("b", holding(&[(1, 50)]))];
    assert_eq!(planner.plan(now, &local, &a).len(), 1);
    assert!(planner.is_pulling(&"a"));
    // Another peer holding the same versions is not asked for them.
    assert!(planner.plan(now, &local, &b).is_empty());
    planner.on_pull_failed(&"a");
    assert_eq!(planner.pulls_failed_total(), 1);
    let again = planner.plan(now, &local, &b);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, "b");
    // Unanswered past the timeout: plannable again, from anyone.
    let later = now + config().pull_timeout;
    assert_eq!(planner.plan(later, &local, &a).len(), 1);
    assert_eq!(planner.pulls_timed_out_total(), 1);
    planner.on_pull_done(&"a");
    assert_eq!(planner.in_flight(), 0);
}

#[test]
fn versions_per_peer_per_round_are_bounded() {
    let cfg = PlannerConfig {
        versions_per_round_max: 250,
        needs_per_request_max: 2,
        ..config()
    };
    let mut planner = SyncPlanner::new(cfg);
    let local = Bookkeeper::new(actor(0));
    let pulls = planner.plan(Instant::now(), &local, &[("a", holding(&[(1, 10_000)]))]);
    assert_eq!(pulls[0].1.len(), 2);
    assert_eq!(versions(&pulls[0].1), RangeSet::from(Span::new(1, 200)));
}

#[test]
fn partial_versions_ask_their_missing_seqs_once() {
    let mut planner = SyncPlanner::new(config());
    let mut local = Bookkeeper::new(actor(0));
    local.restore_partial(REG, actor(1), 5, 3, vec![Span::new(0, 1)]);
    let peers = [("a", holding(&[(5, 5)])), ("b", holding(&[(5, 5)]))];
    let pulls = planner.plan(Instant::now(), &local, &peers);
    assert_eq!(pulls.len(), 1);
    assert_eq!(
        pulls[0].1,
        vec![Need::Seqs {
            db: REG,
            actor: actor(1),
            version: 5,
            seqs: vec![Span::new(2, 3)]
        }]
    );
}

#[test]
fn choose_peers_picks_distinct_members() {
    let mut rng = SmallRng::seed_from_u64(7);
    let members: Vec<u32> = (0..10).collect();
    let mut chosen = choose_peers(&members, 3, &mut rng);
    chosen.sort();
    chosen.dedup();
    assert_eq!(chosen.len(), 3);
    assert_eq!(choose_peers(&members[..2], 3, &mut rng).len(), 2);
    assert!(choose_peers::<u32, _>(&[], 3, &mut rng).is_empty());
}

fn random_summary(rng: &mut SmallRng) -> Summary {
    let mut book = Bookkeeper::new(actor(100));
    for who in [actor(1), actor(2)] {
        for _ in 0..rng.random_range(0..4) {
            let start = rng.random_range(1..60);
            book.restore_applied(REG, who, Span::new(start, start + rng.random_range(0..20)));
        }
    }
    book.summary(SUMMARY_SPANS_MAX)
}

fn random_local(rng: &mut SmallRng) -> Bookkeeper {
    let mut local = Bookkeeper::new(actor(0));
    for who in [actor(1), actor(2)] {
        for _ in 0..rng.random_range(0..3) {
            let start = rng.random_range(1..60);
            local.restore_applied(REG, who, Span::new(start, start + rng.random_range(0..10)));
        }
        let version = rng.random_range(1..80);
        local.restore_partial(REG, who, version, 4, vec![Span::new(0, 1)]);
    }
    local
}

/// Which (actor, version) each pull asks for; panics on a repeat.
fn asked(pulls: &[(u8, Vec<Need>)]) -> BTreeMap<(ActorId, u64), u8> {
    let mut asked = BTreeMap::new();
    for (peer, needs) in pulls {
        for need in needs {
            let ((_, who), span) = need_versions(need);
            for v in span.start..=span.end {
                let before = asked.insert((who, v), *peer);
                assert!(before.is_none(), "{who:?} {v} asked twice");
            }
        }
    }
    asked
}

proptest! {
    /// Each missing version goes to exactly one peer that holds it; with
    /// ample limits, everything missing is asked; in flight, nothing is
    /// asked again.
    #[test]
    fn plans_ask_each_missing_version_once(seed in any::<u64>()) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let local = random_local(&mut rng);
        let peers: Vec<(u8, Summary)> = (1..=3).map(|p| (p, random_summary(&mut rng))).collect();
        let mut planner = SyncPlanner::new(PlannerConfig {
            versions_per_need_max: rng.random_range(1..10),
            ..PlannerConfig::default()
        });
        let now = Instant::now();
        let pulls = planner.plan(now, &local, &peers);
        let asked = asked(&pulls);
        let mut expected = BTreeMap::new();
        for (peer, summary) in &peers {
            for lack in summary.actors.iter().map(|a| local.lacks(a)) {
                let partial = lack.seqs.iter().map(|(v, _)| Span::new(*v, *v));
                for s in lack.versions.iter().chain(partial) {
                    for v in s.start..=s.end {
                        expected.entry((lack.actor, v)).or_insert_with(Vec::new).push(*peer);
                    }
                }
            }
        }
        prop_assert_eq!(asked.len(), expected.len(), "seed {}", seed);
        for (key, peer) in &asked {
            prop_assert!(expected[key].contains(peer), "seed {}: {:?} from {}", seed, key, peer);
        }
        // Peers that were not asked now hold nothing new to ask.
        let idle: Vec<(u8, Summary)> = peers.iter()
            .filter(|(p, _)| !planner.is_pulling(p))
            .cloned()
            .collect();
        prop_assert!(planner.plan(now, &local, &idle).is_empty(), "seed {}", seed);
    }
}
