//! `SyncPlanner`: given peers' summaries, what to pull from whom. Every
//! missing range goes to exactly one peer that holds it, the least loaded;
//! nothing in flight is asked again until its pull ends or times out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use patina_wire::{ActorId, DbKind, Need, Span, Summary};
use rand::Rng;

use super::bookie::{seqs_need, Bookkeeper, Lack};
use super::ranges::RangeSet;

/// Limits of one planning round.
#[derive(Debug, Clone)]
pub struct PlannerConfig {
    /// How long a pull may go unanswered before its needs are planned
    /// again (from any peer). 30 s: a pull of 10,000 versions at 64 KiB a
    /// chunk is ~640 MiB worst case, far more than a LAN moves in 30 s only
    /// when the peer is stuck, which is when another peer should be asked.
    pub pull_timeout: Duration,
    /// Versions asked of one peer in one round (a `Seqs` need counts one).
    /// 10,000: a round of a few seconds catches up a node thousands of
    /// versions behind without one pull hogging a peer.
    pub versions_per_round_max: u64,
    /// Needs in one `Pull` request. 1,024 keeps the request frame small
    /// (a need is ~40 bytes encoded).
    pub needs_per_request_max: usize,
    /// Versions in one `Versions` need: the granularity at which load
    /// spreads over peers. 1,000.
    pub versions_per_need_max: u64,
}

impl Default for PlannerConfig {
    fn default() -> PlannerConfig {
        PlannerConfig {
            pull_timeout: Duration::from_secs(30),
            versions_per_round_max: 10_000,
            needs_per_request_max: 1_024,
            versions_per_need_max: 1_000,
        }
    }
}

/// A pull sent to a peer and not answered yet.
#[derive(Debug, Clone)]
struct Pull {
    needs: Vec<Need>,
    deadline: Instant,
}

/// Decides what to ask whom during sync. One pull per peer at a time: a
/// peer with a pull in flight gets nothing new until it ends.
#[derive(Debug, Clone)]
pub struct SyncPlanner<P> {
    config: PlannerConfig,
    in_flight: BTreeMap<P, Pull>,
    pulls_failed_total: u64,
    pulls_timed_out_total: u64,
}

impl<P: Clone + Eq + Hash + Ord + Debug> SyncPlanner<P> {
    pub fn new(config: PlannerConfig) -> SyncPlanner<P> {
        SyncPlanner {
            config,
            in_flight: BTreeMap::new(),
            pulls_failed_total: 0,
            pulls_timed_out_total: 0,
        }
    }

    /// The pulls to send: for each peer (ascending), the needs to put in
    /// its `Pull`. They count as in flight from `now`. Peers listed twice
    /// count once (the first summary).
    pub fn plan(
        &mut self,
        now: Instant,
        local: &Bookkeeper,
        summaries: &[(P, Summary)],
    ) -> Vec<(P, Vec<Need>)> {
        self.expire(now);
        let blocked = self.blocked_versions();
        let mut round = Round::new(&self.config);
        for ((db, actor), lacks) in self.candidates(local, summaries, &blocked) {
            round.assign_seqs(db, actor, &lacks);
            round.assign_versions(db, actor, &lacks);
        }
        let pulls = round.into_pulls();
        let deadline = now + self.config.pull_timeout;
        for (peer, needs) in &pulls {
            let pull = Pull {
                needs: needs.clone(),
                deadline,
            };
            self.in_flight.insert(peer.clone(), pull);
        }
        pulls
    }

    /// The peer answered its pull (`PullDone`): what it sent is recorded
    /// in the bookkeeper, and anything it lacked is plannable again.
    pub fn on_pull_done(&mut self, peer: &P) {
        self.in_flight.remove(peer);
    }

    /// The pull to `peer` failed (stream error, peer gone): its needs are
    /// plannable again.
    pub fn on_pull_failed(&mut self, peer: &P) {
        if self.in_flight.remove(peer).is_some() {
            self.pulls_failed_total += 1;
        }
    }

    /// Needs in flight, over all peers.
    pub fn in_flight(&self) -> usize {
        self.in_flight.values().map(|p| p.needs.len()).sum()
    }

    /// Does `peer` have a pull in flight?
    pub fn is_pulling(&self, peer: &P) -> bool {
        self.in_flight.contains_key(peer)
    }

    pub fn pulls_failed_total(&self) -> u64 {
        self.pulls_failed_total
    }

    pub fn pulls_timed_out_total(&self) -> u64 {
        self.pulls_timed_out_total
    }

    fn expire(&mut self, now: Instant) {
        let before = self.in_flight.len();
        self.in_flight.retain(|_, pull| pull.deadline > now);
        self.pulls_timed_out_total += (before - self.in_flight.len()) as u64;
    }

    /// Versions in flight per (db, actor); a `Seqs` need blocks its version.
    fn blocked_versions(&self) -> BTreeMap<(DbKind, ActorId), RangeSet> {
        let mut blocked: BTreeMap<(DbKind, ActorId), RangeSet> = BTreeMap::new();
        for need in self.in_flight.values().flat_map(|p| &p.needs) {
            let (key, versions) = need_versions(need);
            blocked.entry(key).or_default().insert(versions);
        }
        blocked
    }

    /// What each idle peer could give, per (db, actor), minus what is in
    /// flight.
    fn candidates<'s>(
        &self,
        local: &Bookkeeper,
        summaries: &'s [(P, Summary)],
        blocked: &BTreeMap<(DbKind, ActorId), RangeSet>,
    ) -> BTreeMap<(DbKind, ActorId), Vec<(&'s P, Lack)>> {
        let mut seen = BTreeSet::new();
        let mut out: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for (peer, summary) in summaries {
            if self.in_flight.contains_key(peer) || !seen.insert(peer) {
                continue;
            }
            for actor in &summary.actors {
                let mut lack = local.lacks(actor);
                if let Some(b) = blocked.get(&(lack.db, lack.actor)) {
                    lack.versions = lack.versions.difference(b);
                    lack.seqs.retain(|(v, _)| !b.contains(*v));
                }
                if !lack.versions.is_empty() || !lack.seqs.is_empty() {
                    out.entry((lack.db, lack.actor))
                        .or_default()
                        .push((peer, lack));
                }
            }
        }
        out
    }
}

/// The (db, actor) and versions a need asks for.
fn need_versions(need: &Need) -> ((DbKind, ActorId), Span) {
    match need {
        Need::Versions {
            db,
            actor,
            versions,
        } => ((*db, *actor), *versions),
        Need::Seqs {
            db, actor, version, ..
        } => ((*db, *actor), Span::new(*version, *version)),
    }
}

/// What one peer was given this round.
#[derive(Debug, Default)]
struct Load {
    versions: u64,
    needs: Vec<Need>,
}

/// One planning round: the needs given to each peer so far.
struct Round<'c, P> {
    config: &'c PlannerConfig,
    loads: BTreeMap<P, Load>,
}

impl<'c, P: Clone + Ord> Round<'c, P> {
    fn new(config: &'c PlannerConfig) -> Round<'c, P> {
        Round {
            config,
            loads: BTreeMap::new(),
        }
    }

    /// Versions `peer` may still be given this round (0 when full).
    fn room(&self, peer: &P) -> u64 {
        let load = self.loads.get(peer);
        let needs = load.map_or(0, |l| l.needs.len());
        let versions = load.map_or(0, |l| l.versions);
        if needs >= self.config.needs_per_request_max {
            return 0;
        }
        self.config.versions_per_round_max.saturating_sub(versions)
    }

    /// Of `holders`, the one with room and the fewest versions given,
    /// ties by `P` order.
    fn least_loaded<'h>(&self, holders: impl Iterator<Item = &'h P>) -> Option<&'h P>
    where
        P: 'h,
    {
        holders
            .filter(|p| self.room(p) > 0)
            .min_by_key(|p| (self.loads.get(*p).map_or(0, |l| l.versions), *p))
    }

    /// Partial versions: each to one peer that holds it applied.
    fn assign_seqs(&mut self, db: DbKind, actor: ActorId, lacks: &[(&P, Lack)]) {
        let mut holders: BTreeMap<u64, (&Lack, &RangeSet, Vec<&P>)> = BTreeMap::new();
        for (peer, lack) in lacks {
            for (version, seqs) in &lack.seqs {
                let entry = holders.entry(*version).or_insert((lack, seqs, Vec::new()));
                entry.2.push(*peer);
            }
        }
        for (version, (lack, seqs, peers)) in holders {
            debug_assert!(lack.db == db && lack.actor == actor);
            if let Some(peer) = self.least_loaded(peers.into_iter()) {
                self.give(peer, 1, seqs_need(lack, version, seqs));
            }
        }
    }

    /// Whole versions: cut where the set of holders changes, then each
    /// piece to the least loaded holder.
    fn assign_versions(&mut self, db: DbKind, actor: ActorId, lacks: &[(&P, Lack)]) {
        for (segment, holders) in segments(lacks) {
            let mut start = segment.start;
            while let Some(peer) = self.least_loaded(holders.iter().copied()) {
                let len_max = self
                    .room(peer)
                    .min(self.config.versions_per_need_max.max(1));
                let end = start.saturating_add(len_max - 1).min(segment.end);
                let versions = Span::new(start, end);
                self.give(
                    peer,
                    versions.len(),
                    Need::Versions {
                        db,
                        actor,
                        versions,
                    },
                );
                match end.checked_add(1) {
                    Some(next) if next <= segment.end => start = next,
                    _ => break,
                }
            }
        }
    }

    fn give(&mut self, peer: &P, versions: u64, need: Need) {
        let load = self.loads.entry(peer.clone()).or_default();
        load.versions += versions;
        load.needs.push(need);
    }

    fn into_pulls(self) -> Vec<(P, Vec<Need>)> {
        self.loads
            .into_iter()
            .filter(|(_, load)| !load.needs.is_empty())
            .map(|(peer, load)| (peer, load.needs))
            .collect()
    }
}

/// The versions some peer in `lacks` could give, cut into segments held by
/// the same peers: ascending (segment, holders).
fn segments<'l, P>(lacks: &'l [(&'l P, Lack)]) -> Vec<(Span, Vec<&'l P>)> {
    // u128 so that `end + 1` of a span ending at u64::MAX is a boundary too.
    let mut bounds = BTreeSet::new();
    for (_, lack) in lacks {
        for s in lack.versions.iter() {
            bounds.insert(u128::from(s.start));
            bounds.insert(u128::from(s.end) + 1);
        }
    }
    let bounds: Vec<u128> = bounds.into_iter().collect();
    let mut out = Vec::new();
    for w in bounds.windows(2) {
        // Both bounds are at most u64::MAX + 1 and w[0] < w[1].
        let segment = Span::new(w[0] as u64, (w[1] - 1) as u64);
        let holders: Vec<&P> = lacks
            .iter()
            .filter(|(_, lack)| lack.versions.contains(segment.start))
            .map(|(p, _)| *p)
            .collect();
        if !holders.is_empty() {
            out.push((segment, holders));
        }
    }
    out
}

/// Up to `count` distinct members, chosen uniformly with `rng` (sync
/// partners, broadcast targets).
pub fn choose_peers<P: Clone, R: Rng + ?Sized>(members: &[P], count: usize, rng: &mut R) -> Vec<P> {
    let count = count.min(members.len());
    rand::seq::index::sample(rng, members.len(), count)
        .into_iter()
        .map(|i| members[i].clone())
        .collect()
}

#[cfg(test)]
mod tests;
