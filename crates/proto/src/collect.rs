//! When a node may collect tombstones, and whether a node missed collected
//! ones (docs/crr.md, "Tombstone collection").
//!
//! A tombstone written by version `v` of actor `A` may be forgotten once
//! (1) every current member of the cluster has applied `A`'s versions
//! `1..=v` — the *watermark*, the minimum of the members' applied prefixes
//! as their sync summaries told — and (2) this node applied `1..=v` of `A`
//! longer than the retention ago — *aged*, read from checkpoints of its own
//! prefixes taken as time passes. The collection *bound* of `A` is the
//! smaller of the two. A node remembers the largest bound it (or any peer
//! it synced with) collected up to: its *floors*. A node whose applied
//! prefix of some actor is below a floor may hold rows whose delete was
//! forgotten everywhere else: it *missed* collected tombstones and must be
//! re-seeded; it is left out of the watermark, so it cannot stall
//! collection on the others.

use std::collections::{BTreeMap, VecDeque};

use patina_wire::{ActorId, DbKind, Span, Summary};

use crate::bookie::Bookkeeper;

/// Versions `1..=n` held, as the largest such `n` (0: not even version 1).
pub fn applied_prefix(spans: impl IntoIterator<Item = Span>) -> u64 {
    spans
        .into_iter()
        .next()
        .filter(|s| s.start <= 1)
        .map_or(0, |s| s.end)
}

/// Per actor, the applied prefix of `db` a summary states (actors it does
/// not name: 0).
pub fn summary_prefixes(summary: &Summary, db: DbKind) -> BTreeMap<ActorId, u64> {
    summary
        .actors
        .iter()
        .filter(|a| a.db == db)
        .map(|a| (a.actor, applied_prefix(a.applied.iter().copied())))
        .filter(|&(_, p)| p > 0)
        .collect()
}

/// Per actor, the applied prefix of `db` this node holds.
pub fn own_prefixes(book: &Bookkeeper, db: DbKind) -> BTreeMap<ActorId, u64> {
    book.actors()
        .filter(|&(d, _)| d == db)
        .filter_map(|(_, actor)| {
            let p = applied_prefix(book.applied(db, actor)?.iter());
            (p > 0).then_some((actor, p))
        })
        .collect()
}

/// The first actor whose floor `prefixes` fall short of: `(actor, floor,
/// prefix)`. `None`: every version up to every floor is held.
pub fn missed(
    prefixes: &BTreeMap<ActorId, u64>,
    floors: &BTreeMap<ActorId, u64>,
) -> Option<(ActorId, u64, u64)> {
    floors.iter().find_map(|(&actor, &floor)| {
        let have = prefixes.get(&actor).copied().unwrap_or(0);
        (have < floor).then_some((actor, floor, have))
    })
}

/// Whether a peer whose `summary` of `db` this is lacks versions below
/// this node's `floors`: `(actor, floor, prefix)`. Such a peer missed
/// collected tombstones (or has not caught up yet): pulling from it could
/// bring back rows whose deletes were forgotten here.
pub fn summary_missed(
    summary: &Summary,
    db: DbKind,
    floors: &BTreeMap<ActorId, u64>,
) -> Option<(ActorId, u64, u64)> {
    if floors.is_empty() {
        return None;
    }
    missed(&summary_prefixes(summary, db), floors)
}

/// The members' applied prefixes as their last summaries said, for the
/// watermark of one database. Peers are whatever the shell keys them by.
#[derive(Debug, Clone)]
pub struct Watermark<P> {
    db: DbKind,
    peers: BTreeMap<P, BTreeMap<ActorId, u64>>,
    /// Peers that declined to serve sync: they found themselves stale.
    declined: std::collections::BTreeSet<P>,
}

impl<P: Ord + Clone> Watermark<P> {
    pub fn new(db: DbKind) -> Watermark<P> {
        Watermark {
            db,
            peers: BTreeMap::new(),
            declined: Default::default(),
        }
    }

    /// A peer's summary arrived: it replaces what that peer said before (a
    /// restarted peer at the same address may hold less).
    pub fn on_summary(&mut self, peer: P, summary: &Summary) {
        self.declined.remove(&peer);
        self.peers.insert(peer, summary_prefixes(summary, self.db));
    }

    /// A peer declined to serve: it found it missed collected tombstones,
    /// refuses writes and awaits re-seeding (as a new actor), so it is
    /// left out like a peer below the floors — it must not stall
    /// collection on the others. Until it answers a summary again.
    pub fn on_declined(&mut self, peer: P) {
        self.peers.remove(&peer);
        self.declined.insert(peer);
    }

    /// Keeps only the `live` peers' prefixes: the others are not members.
    pub fn retain_live(&mut self, live: &[P]) {
        self.peers.retain(|p, _| live.contains(p));
        self.declined.retain(|p| live.contains(p));
    }

    /// Per actor, what every current member holds: `own` and each `live`
    /// peer's prefix, leaving out peers below `floors` (they missed
    /// collected tombstones: re-seeding, not waiting, is their fix).
    /// `None` while a live peer has not told its summary yet.
    pub fn watermark(
        &self,
        live: &[P],
        own: &BTreeMap<ActorId, u64>,
        floors: &BTreeMap<ActorId, u64>,
    ) -> Option<BTreeMap<ActorId, u64>> {
        let mut out = own.clone();
        for peer in live {
            if self.declined.contains(peer) {
                continue;
            }
            let theirs = self.peers.get(peer)?;
            if missed(theirs, floors).is_some() {
                continue;
            }
            for (actor, prefix) in out.iter_mut() {
                *prefix = (*prefix).min(theirs.get(actor).copied().unwrap_or(0));
            }
        }
        out.retain(|_, p| *p > 0);
        Some(out)
    }
}

/// This node's applied prefixes as time passed: what it held at least
/// `retention` ago. Times are milliseconds of any clock that only moves
/// forward for the node (the shell uses Unix time, persisted across
/// restarts with the checkpoints).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoints {
    /// (taken at, prefixes), oldest first.
    taken: VecDeque<(u64, BTreeMap<ActorId, u64>)>,
}

impl Checkpoints {
    pub fn new() -> Checkpoints {
        Checkpoints::default()
    }

    /// Checkpoints as stored, in any order.
    pub fn from_stored(taken: impl IntoIterator<Item = (u64, BTreeMap<ActorId, u64>)>) -> Self {
        let mut taken: Vec<_> = taken.into_iter().collect();
        taken.sort_by_key(|(at, _)| *at);
        Checkpoints {
            taken: taken.into(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &(u64, BTreeMap<ActorId, u64>)> {
        self.taken.iter()
    }

    /// When the last one was taken.
    pub fn last_at(&self) -> Option<u64> {
        self.taken.back().map(|(at, _)| *at)
    }

    /// Takes one at `now_ms` if `every_ms` passed since the last; returns
    /// whether it did.
    pub fn maybe_take(
        &mut self,
        now_ms: u64,
        every_ms: u64,
        prefixes: BTreeMap<ActorId, u64>,
    ) -> bool {
        if self
            .last_at()
            .is_some_and(|last| now_ms < last.saturating_add(every_ms) && now_ms >= last)
        {
            return false;
        }
        // A clock that went backwards: older checkpoints claim a future.
        self.taken.retain(|(at, _)| *at <= now_ms);
        self.taken.push_back((now_ms, prefixes));
        true
    }

    /// What this node held `retention_ms` before `now_ms` (the newest
    /// checkpoint at least that old); forgets older ones, which it no
    /// longer needs. Empty while no checkpoint is that old.
    pub fn aged(&mut self, now_ms: u64, retention_ms: u64) -> BTreeMap<ActorId, u64> {
        let cutoff = now_ms.saturating_sub(retention_ms);
        let Some(newest_old) = self.taken.iter().rposition(|(at, _)| *at <= cutoff) else {
            return BTreeMap::new();
        };
        self.taken.drain(..newest_old);
        self.taken
            .front()
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    }
}

/// Per actor, the smaller of two bounds (actors in only one: 0, left out).
pub fn lower_bounds(
    a: &BTreeMap<ActorId, u64>,
    b: &BTreeMap<ActorId, u64>,
) -> BTreeMap<ActorId, u64> {
    a.iter()
        .filter_map(|(actor, &x)| {
            let m = x.min(b.get(actor).copied()?);
            (m > 0).then_some((*actor, m))
        })
        .collect()
}

/// How long a node was away, as it starts (see [`absence`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absence {
    /// Under half the retention: nothing it lacks can have been collected
    /// (docs/crr.md: a tombstone is kept a retention after a collector
    /// applied it, and it was applied after the node left); the other
    /// half is margin for clock skew between hosts and lag.
    Short,
    /// Longer: peers may have collected deletes it missed.
    Long { away_ms: u64 },
    /// It never kept a checkpoint (restored from a backup, or collection
    /// was off), or its clock is behind its last one.
    Unknown,
}

/// How long a node starting at `now_ms` was away, given when it last kept
/// a checkpoint (one every eighth of the retention while it runs).
pub fn absence(last_checkpoint_ms: Option<u64>, now_ms: u64, retention_ms: u64) -> Absence {
    match last_checkpoint_ms {
        Some(last) if last <= now_ms => {
            let away_ms = now_ms - last;
            if away_ms <= retention_ms / 2 {
                Absence::Short
            } else {
                Absence::Long { away_ms }
            }
        }
        _ => Absence::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patina_wire::ActorSummary;

    #[test]
    fn an_absence_over_half_the_retention_or_unknown_must_be_checked() {
        let week = 7 * 24 * 3_600_000;
        assert_eq!(absence(Some(1_000), 61_000, week), Absence::Short);
        assert_eq!(absence(Some(0), week / 2, week), Absence::Short);
        assert_eq!(
            absence(Some(0), week / 2 + 1, week),
            Absence::Long {
                away_ms: week / 2 + 1
            }
        );
        assert_eq!(absence(None, 5, week), Absence::Unknown);
        assert_eq!(
            absence(Some(10), 5, week),
            Absence::Unknown,
            "clock went back"
        );
    }

    fn actor(n: u8) -> ActorId {
        ActorId([n; 16])
    }

    fn summary(entries: &[(u8, &[(u64, u64)])]) -> Summary {
        Summary {
            actors: entries
                .iter()
                .map(|(a, spans)| ActorSummary {
                    db: DbKind::Regional,
                    actor: actor(*a),
                    applied: spans.iter().map(|&(s, e)| Span::new(s, e)).collect(),
                    partial: Vec::new(),
                })
                .collect(),
        }
    }

    fn map(entries: &[(u8, u64)]) -> BTreeMap<ActorId, u64> {
        entries.iter().map(|&(a, v)| (actor(a), v)).collect()
    }

    #[test]
    fn a_prefix_is_what_is_held_from_version_one() {
        assert_eq!(applied_prefix([Span::new(1, 9), Span::new(12, 20)]), 9);
        assert_eq!(applied_prefix([Span::new(2, 9)]), 0);
        assert_eq!(applied_prefix([]), 0);
        let s = summary(&[(1, &[(1, 5)]), (2, &[(3, 4)])]);
        assert_eq!(summary_prefixes(&s, DbKind::Regional), map(&[(1, 5)]));
        assert!(summary_prefixes(&s, DbKind::Global).is_empty());
    }

    #[test]
    fn the_watermark_is_the_least_any_live_member_holds() {
        let mut w = Watermark::new(DbKind::Regional);
        let own = map(&[(1, 10), (2, 7)]);
        // A live peer that has not answered yet: no watermark.
        assert_eq!(w.watermark(&["b"], &own, &BTreeMap::new()), None);
        w.on_summary("b", &summary(&[(1, &[(1, 8)]), (2, &[(1, 9)])]));
        w.on_summary("c", &summary(&[(1, &[(1, 3)])]));
        assert_eq!(
            w.watermark(&["b"], &own, &BTreeMap::new()),
            Some(map(&[(1, 8), (2, 7)]))
        );
        // c holds nothing of actor 2: nothing of it may go.
        assert_eq!(
            w.watermark(&["b", "c"], &own, &BTreeMap::new()),
            Some(map(&[(1, 3)]))
        );
        // Below a floor, c missed collected tombstones: it does not hold
        // the others back.
        assert_eq!(
            w.watermark(&["b", "c"], &own, &map(&[(1, 5)])),
            Some(map(&[(1, 8), (2, 7)]))
        );
        w.retain_live(&["b"]);
        assert_eq!(w.watermark(&["c"], &own, &BTreeMap::new()), None);
    }

    #[test]
    fn a_summary_below_the_floors_is_not_pulled_from() {
        let floors = map(&[(1, 5)]);
        let behind = summary(&[(1, &[(1, 4)]), (2, &[(1, 9)])]);
        assert_eq!(
            summary_missed(&behind, DbKind::Regional, &floors),
            Some((actor(1), 5, 4))
        );
        let caught_up = summary(&[(1, &[(1, 5)])]);
        assert_eq!(summary_missed(&caught_up, DbKind::Regional, &floors), None);
        // No floors (nothing collected): every peer is pulled from.
        assert_eq!(
            summary_missed(&behind, DbKind::Regional, &BTreeMap::new()),
            None
        );
    }

    #[test]
    fn a_peer_that_declined_does_not_hold_the_others_back() {
        let mut w = Watermark::new(DbKind::Regional);
        let own = map(&[(1, 10)]);
        w.on_summary("b", &summary(&[(1, &[(1, 8)])]));
        // d never answered a summary (it is stale and declines): without
        // its declining, it would block every pass.
        assert_eq!(w.watermark(&["b", "d"], &own, &BTreeMap::new()), None);
        w.on_declined("d");
        assert_eq!(
            w.watermark(&["b", "d"], &own, &BTreeMap::new()),
            Some(map(&[(1, 8)]))
        );
        // Declining after answering drops what it said.
        w.on_summary("c", &summary(&[(1, &[(1, 2)])]));
        w.on_declined("c");
        assert_eq!(
            w.watermark(&["b", "c", "d"], &own, &BTreeMap::new()),
            Some(map(&[(1, 8)]))
        );
        // Answering again (re-seeded at the same address) counts again.
        w.on_summary("d", &summary(&[(1, &[(1, 4)])]));
        assert_eq!(
            w.watermark(&["b", "c", "d"], &own, &BTreeMap::new()),
            Some(map(&[(1, 4)]))
        );
    }

    #[test]
    fn missing_a_version_below_a_floor_is_missing_collected_tombstones() {
        let floors = map(&[(1, 5), (2, 3)]);
        assert_eq!(missed(&map(&[(1, 5), (2, 9)]), &floors), None);
        assert_eq!(
            missed(&map(&[(1, 4), (2, 9)]), &floors),
            Some((actor(1), 5, 4))
        );
        assert_eq!(missed(&map(&[(1, 5)]), &floors), Some((actor(2), 3, 0)));
    }

    #[test]
    fn aged_prefixes_are_the_newest_checkpoint_older_than_the_retention() {
        let mut c = Checkpoints::new();
        assert!(c.maybe_take(1_000, 100, map(&[(1, 1)])));
        assert!(!c.maybe_take(1_050, 100, map(&[(1, 2)])));
        assert!(c.maybe_take(1_100, 100, map(&[(1, 3)])));
        assert!(c.maybe_take(1_300, 100, map(&[(1, 7)])));
        assert!(c.aged(1_099, 100).is_empty());
        assert_eq!(c.aged(1_150, 100), map(&[(1, 1)]));
        assert_eq!(c.aged(1_250, 100), map(&[(1, 3)]));
        // The first is no longer needed.
        assert_eq!(c.iter().count(), 2);
        // A clock that went back drops what claims a future.
        assert!(c.maybe_take(500, 100, map(&[(1, 8)])));
        assert_eq!(c.iter().count(), 1);
        assert_eq!(
            lower_bounds(&map(&[(1, 5), (2, 4)]), &map(&[(1, 3), (3, 9)])),
            map(&[(1, 3)])
        );
    }
}
