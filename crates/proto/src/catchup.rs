//! [`CatchUp`]: whether a node that just started still lacks what its
//! peers held when it joined — the health endpoint's deploy gate.
//!
//! A node that has peers to learn from (a bootstrap list, or members
//! remembered from its last run) starts *catching up*. Its target is what
//! its peers advertised in their first answers (the union of their
//! summaries' applied versions, its own actor left out: it is its own
//! versions' only source): each peer's first summary adds to it, later
//! ones from the same peer do not, so a node under a steady write load
//! still gets there. It stays catching up until its bookkeeping holds
//! every version of that target whole (a version held in part does not
//! count) *and* every live peer has answered once — a peer too busy to
//! answer the first round (the one that just took a large write) may hold
//! what the others do not have yet. Peers silent for [`CATCH_UP_WAIT`]
//! since the start are not waited for any longer.
//!
//! A node with nobody to learn from is not catching up. Nor is one whose
//! peers stay silent for [`CATCH_UP_WAIT`]: a node must not wait forever
//! for peers that are not running (the first node of a fleet brought up
//! one by one, its bootstrap list naming nodes not started yet, would
//! hold the whole deploy). That case says so in its phase.
//!
//! Plain value: the shell feeds it summaries and the node's bookkeeping
//! with the time, and reads [`CatchUp::status`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use patina_wire::{ActorId, DbKind, Span, Summary};

use super::bookie::Bookkeeper;
use super::ranges::RangeSet;

/// How long a node that has peers to learn from waits for the first
/// summary before it stops calling itself catching up. A peer answers a
/// summary within 2 s (`SyncLimits`) and SWIM finds a live peer within a
/// second on a LAN; 30 s covers a slow start of the peers without holding
/// a deploy for long when they are all gone.
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(30);

/// Where a node stands in catching up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUpPhase {
    /// Nobody to learn from at start: nothing to catch up.
    Alone,
    /// Waiting for the first sync round in which a peer answers.
    Waiting,
    /// Fetching what the peers of the first round advertised.
    Fetching,
    /// Holds everything the peers advertised when it joined.
    CaughtUp,
    /// No peer answered within the wait: serving what it holds.
    NoAnswer,
}

impl CatchUpPhase {
    /// The phase's name in health reports.
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUpPhase::Alone => "alone",
            CatchUpPhase::Waiting => "waiting_for_peers",
            CatchUpPhase::Fetching => "fetching",
            CatchUpPhase::CaughtUp => "caught_up",
            CatchUpPhase::NoAnswer => "no_peer_answered",
        }
    }
}

/// A copy of where [`CatchUp`] stands, for readers on other tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUpStatus {
    pub phase: CatchUpPhase,
    /// Versions of the target not yet held whole (0 unless `Fetching`).
    pub missing_versions: u64,
    /// Live peers whose first summary has not arrived yet (while
    /// `Fetching`; they are waited for up to [`CATCH_UP_WAIT`]).
    pub unanswered_peers: u64,
    /// When the node started (catching up or not).
    pub started: Instant,
    /// When catching up ended (`None` while it goes on).
    pub ended: Option<Instant>,
    /// The node's start as Unix ms (its own clock): versions committed
    /// before it were written while it was away.
    pub joined_ms: u64,
}

impl CatchUpStatus {
    pub fn catching_up(&self) -> bool {
        matches!(self.phase, CatchUpPhase::Waiting | CatchUpPhase::Fetching)
    }

    /// Why the node is not ready, while it catches up.
    pub fn reason(&self, now: Instant) -> Option<String> {
        let secs = now.saturating_duration_since(self.started).as_secs_f64();
        match self.phase {
            CatchUpPhase::Waiting => Some(format!(
                "catching up: waiting for a peer's summary of what it holds ({secs:.1} s since start)"
            )),
            CatchUpPhase::Fetching if self.missing_versions == 0 => Some(format!(
                "catching up: waiting for the first summary of {} more live peers ({secs:.1} s since start)",
                self.unanswered_peers
            )),
            CatchUpPhase::Fetching => Some(format!(
                "catching up: {} versions its peers held when it joined are not applied yet ({secs:.1} s since start)",
                self.missing_versions
            )),
            _ => None,
        }
    }

    /// Whether a version committed at `committed_ms` (origin's Unix ms)
    /// and applied now measures live replication: not while the node
    /// catches up (merges then queue behind the backlog), and not for a
    /// version written before the node started (it waited for the node,
    /// not for the network). Clock skew between hosts moves the line by
    /// the skew.
    pub fn is_live(&self, committed_ms: u64) -> bool {
        !self.catching_up() && committed_ms >= self.joined_ms
    }
}

/// The catch-up gate of one node in one cluster (see the module docs).
#[derive(Debug, Clone)]
pub struct CatchUp {
    phase: CatchUpPhase,
    /// The target's versions not held yet, per (db, actor); empty sets
    /// are removed.
    remaining: BTreeMap<(DbKind, ActorId), RangeSet>,
    /// Peers whose first summary is in the target.
    answered: BTreeSet<SocketAddr>,
    /// Live peers that have not answered yet (as of the last `on_held`).
    unanswered: usize,
    dbs: Vec<DbKind>,
    started: Instant,
    ended: Option<Instant>,
    joined_ms: u64,
    wait: Duration,
}

impl CatchUp {
    /// A node starting at `now` (`joined_ms` the same instant as Unix ms),
    /// replicating `dbs`; `learns_from_peers` when it has a bootstrap list
    /// or remembered members. `wait`: see [`CATCH_UP_WAIT`].
    pub fn new(
        learns_from_peers: bool,
        dbs: &[DbKind],
        now: Instant,
        joined_ms: u64,
        wait: Duration,
    ) -> CatchUp {
        let phase = if learns_from_peers {
            CatchUpPhase::Waiting
        } else {
            CatchUpPhase::Alone
        };
        CatchUp {
            phase,
            remaining: BTreeMap::new(),
            answered: BTreeSet::new(),
            unanswered: 0,
            dbs: dbs.to_vec(),
            started: now,
            ended: (!learns_from_peers).then_some(now),
            joined_ms,
            wait,
        }
    }

    /// The summaries of one sync round, by the peer that answered. A
    /// peer's first summary adds to the target; the first answer of all
    /// starts the fetching. `held` is what the node has merged (not what
    /// waits in its apply queue: that is not readable yet).
    pub fn on_summaries<'a>(
        &mut self,
        summaries: impl IntoIterator<Item = (SocketAddr, &'a Summary)>,
        held: &Bookkeeper,
    ) {
        if !self.status().catching_up() {
            return;
        }
        let mut answered = false;
        for (peer, summary) in summaries {
            answered = true;
            if !self.answered.insert(peer) {
                continue;
            }
            for actor in &summary.actors {
                if actor.actor == held.own_actor() || !self.dbs.contains(&actor.db) {
                    continue;
                }
                let mut claimed = claimed(&actor.applied);
                if let Some(have) = held.applied(actor.db, actor.actor) {
                    claimed = claimed.difference(have);
                }
                if claimed.is_empty() {
                    continue;
                }
                let entry = self.remaining.entry((actor.db, actor.actor)).or_default();
                for span in claimed.iter() {
                    entry.insert(span);
                }
            }
        }
        if answered && self.phase == CatchUpPhase::Waiting {
            self.phase = CatchUpPhase::Fetching;
        }
    }

    /// `peer` declined to serve sync (it is stale and must be re-seeded):
    /// nothing it holds belongs in the target, and it is not waited for.
    /// Not an answer: a node whose only peers decline is still waiting.
    pub fn on_declined(&mut self, peer: SocketAddr) {
        if self.status().catching_up() {
            self.answered.insert(peer);
        }
    }

    /// The live peers whose first summary has not arrived: a catching-up
    /// node asks them before others, so the wait ends on answers rather
    /// than on the luck of random peer choice. Empty once caught up.
    pub fn unanswered<'a>(&self, live: &'a [SocketAddr]) -> Vec<&'a SocketAddr> {
        if !self.status().catching_up() {
            return Vec::new();
        }
        live.iter().filter(|p| !self.answered.contains(p)).collect()
    }

    /// What the node holds now (after merges), its live peers, and the
    /// time: ends catching up when the target is held and every live peer
    /// has answered (or stayed silent past the wait), or when no peer
    /// answered at all within the wait.
    pub fn on_held(&mut self, held: &Bookkeeper, live: &[SocketAddr], now: Instant) {
        let waited = now.saturating_duration_since(self.started) >= self.wait;
        self.unanswered = if waited {
            0
        } else {
            live.iter().filter(|p| !self.answered.contains(p)).count()
        };
        match self.phase {
            CatchUpPhase::Waiting => {
                if waited {
                    self.end(CatchUpPhase::NoAnswer, now);
                }
            }
            CatchUpPhase::Fetching => {
                let empty = RangeSet::new();
                for ((db, actor), versions) in self.remaining.iter_mut() {
                    let have = held.applied(*db, *actor).unwrap_or(&empty);
                    *versions = versions.difference(have);
                }
                self.remaining.retain(|_, v| !v.is_empty());
                if self.remaining.is_empty() && self.unanswered == 0 {
                    self.end(CatchUpPhase::CaughtUp, now);
                }
            }
            CatchUpPhase::Alone | CatchUpPhase::CaughtUp | CatchUpPhase::NoAnswer => {}
        }
    }

    fn end(&mut self, phase: CatchUpPhase, now: Instant) {
        self.phase = phase;
        self.ended = Some(now);
        self.remaining.clear();
        self.unanswered = 0;
    }

    pub fn status(&self) -> CatchUpStatus {
        CatchUpStatus {
            phase: self.phase,
            unanswered_peers: self.unanswered as u64,
            missing_versions: self
                .remaining
                .values()
                .map(RangeSet::len)
                .fold(0u64, u64::saturating_add),
            started: self.started,
            ended: self.ended,
            joined_ms: self.joined_ms,
        }
    }
}

/// The versions a peer claims, untrusted: reversed spans dropped, version
/// 0 (which does not exist) cut off.
fn claimed(spans: &[Span]) -> RangeSet {
    RangeSet::from_spans(
        spans
            .iter()
            .filter(|s| s.start <= s.end && s.end >= 1)
            .map(|s| Span::new(s.start.max(1), s.end)),
    )
}

#[cfg(test)]
mod tests;
