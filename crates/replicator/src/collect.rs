//! Tombstone collection driven by the sync task (docs/crr.md, "Tombstone
//! collection"): the peers' summaries it receives make the watermark
//! (`patina_proto::Watermark`), and after its rounds it asks the node for a
//! pass. Floors a peer sends before its summary are learned here, and a
//! node that finds it missed collected tombstones marks itself stale.
//! Only `regional.db` is collected: `global.db` is replicated beyond the
//! region, whose members are all this node can see.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use patina_node::{unix_ms, CollectRequest};
use patina_proto::{absence, missed, own_prefixes, Absence, CatchUp, CatchUpPhase, Watermark};
use patina_wire::{CollectedFloors, DbKind, Summary};

use crate::config::ReplicatorConfig;
use crate::replica::Replica;
use crate::shared::Shared;

/// Keys a pass looks at, at most: a pass holds the writer (a few µs a
/// key), so a backlog is scanned over several rounds instead of stalling
/// commits.
pub(crate) const KEYS_PER_PASS: u64 = 20_000;

/// The database collected.
const DB: DbKind = DbKind::Regional;

pub(crate) struct Collector {
    watermark: Watermark<SocketAddr>,
    retention: Duration,
    every: Duration,
    next: tokio::time::Instant,
}

impl Collector {
    /// `None` when this cluster does not carry `regional.db`, collection is
    /// off, or the node does not collect.
    pub(crate) fn new(shared: &Shared, config: &ReplicatorConfig) -> Option<Collector> {
        let retention = config.tombstone_retention?;
        let every = config.collection_interval()?;
        if !shared.carries(DB) || shared.node.collection(DB).is_none() {
            return None;
        }
        Some(Collector {
            watermark: Watermark::new(DB),
            retention,
            every,
            next: tokio::time::Instant::now(),
        })
    }

    /// After a sync round: learns the summaries that answered (a peer in
    /// sync answered with this node's own), and runs a pass when one is due.
    pub(crate) async fn on_round(
        &mut self,
        shared: &Shared,
        answered: &[(SocketAddr, Summary)],
        declined: &[SocketAddr],
        catching_up: bool,
    ) {
        for (peer, summary) in answered {
            self.watermark.on_summary(*peer, summary);
        }
        for &peer in declined {
            self.watermark.on_declined(peer);
        }
        let now = tokio::time::Instant::now();
        if catching_up || now < self.next {
            return;
        }
        self.next = now + self.every;
        let Some(state) = shared.node.collection(DB) else {
            return;
        };
        // A returning node keeps no checkpoint until its return is
        // checked: a restart meanwhile must find it away still.
        if state.stale.is_some() || state.bootstrapping || state.returning.is_some() {
            return;
        }
        let live = shared.members_not_down();
        self.watermark.retain_live(&live);
        let own = own_prefixes(&shared.node.bookkeeping(DB).borrow(), DB);
        // Without a watermark the pass still keeps its checkpoint.
        let watermark = self.watermark.watermark(&live, &own, &state.floors);
        tracing::debug!(live = live.len(), ?watermark, "tombstone collection pass");
        let watermark = watermark.unwrap_or_default();
        let request = CollectRequest {
            now_ms: unix_ms(),
            retention_ms: self.retention.as_millis().min(u64::MAX as u128) as u64,
            checkpoint_every_ms: self.every.as_millis() as u64,
            watermark,
            keys_max: KEYS_PER_PASS,
        };
        let Some(report) = shared.node.collect_tombstones(DB, request).await else {
            return;
        };
        tracing::debug!(?report, "tombstone collection pass done");
        shared.stats.tombstones_collected.inc_by(report.rows);
        if report.rows > 0 {
            tracing::info!(
                rows = report.rows,
                complete = report.complete,
                "collected tombstones of regional.db"
            );
        }
        if !report.complete {
            // More is collectable now: the next round goes on.
            self.next = now;
        }
    }
}

/// A peer said what it collected of `floors.db`: learn it, then check that
/// this node did not miss any of it.
pub(crate) async fn on_floors(shared: &Shared, peer: SocketAddr, floors: CollectedFloors) {
    let db = floors.db;
    if !shared.carries(db) {
        return;
    }
    let Some(state) = shared.node.collection(db) else {
        return;
    };
    // Most rounds bring nothing new: no writer job for them.
    let known = |have: &[(String, u64)], table: &str, cl: u64| {
        have.iter().any(|(t, c)| t == table && *c >= cl)
    };
    let news = floors
        .floors
        .iter()
        .any(|(actor, floor)| state.floors.get(actor).is_none_or(|f| f < floor))
        || floors
            .causal_lengths
            .iter()
            .any(|(table, cl)| !known(&state.causal_lengths, table, *cl));
    if news {
        shared.node.adopt_collected(floors.clone()).await;
    }
    if state.bootstrapping || state.stale.is_some() {
        return;
    }
    // What this node advertises (queued versions count): a peer's floor
    // never exceeds what it saw this node hold.
    let own = own_prefixes(&shared.held(), db);
    let me = shared.node.actor_id();
    if own.keys().all(|actor| *actor == me) {
        // Nothing of another node's is here (a first catch-up that found no
        // peer to answer): nothing here can bring a deleted row back.
        return;
    }
    let theirs: BTreeMap<_, _> = floors.floors.into_iter().collect();
    let Some((actor, floor, have)) = missed(&own, &theirs) else {
        return;
    };
    let reason = format!(
        "this node missed deletes whose tombstones its peers collected (it was away, or behind, \
         longer than db.tombstone_retention): {db}.db holds versions 1..={have} of actor {actor}, \
         peer {peer} collected up to {floor}. Rows the cluster deleted may still be here, so it \
         refuses writes and does not serve sync. Re-seed it: `patina backup --api <healthy node> \
         --to DIR`, stop this agent, `patina restore --from DIR --data-dir <new data dir>`, and \
         start the agent on that data dir (docs/operations.md)",
        db = db.name()
    );
    tracing::error!(%peer, db = db.name(), "{reason}");
    shared.stats.stale_detected.inc();
    shared.node.mark_stale(db, reason).await;
}

/// At start, before the API takes writes: marks `regional.db` returning
/// when peers may have collected deletes it missed while it was away —
/// collection is on, it has peers to check with, it holds other nodes'
/// versions (a fresh data dir holds nothing that could bring a row back),
/// and its last checkpoint is over half the retention old, or unknown (a
/// data dir restored from a backup). A write it took before its first
/// sync could bring such a row back to every peer that forgot the delete.
pub(crate) fn check_return(
    node: &dyn Replica,
    dbs: &[DbKind],
    config: &ReplicatorConfig,
    learns_from_peers: bool,
) {
    let Some(retention) = config.tombstone_retention else {
        return;
    };
    if !dbs.contains(&DB) || !learns_from_peers {
        return;
    }
    let Some(state) = node.collection(DB) else {
        return;
    };
    if state.bootstrapping || state.stale.is_some() {
        return;
    }
    let me = node.actor_id();
    if own_prefixes(&node.bookkeeping(DB).borrow(), DB)
        .keys()
        .all(|actor| *actor == me)
    {
        return;
    }
    // Out of touch before it stopped (cut off, then restarted): as long
    // an absence as a stop, though it kept running and checkpointing.
    if let Some(reason) = state.out_of_touch(unix_ms()) {
        tracing::warn!(db = DB.name(), "{reason}");
        node.mark_returning(DB, reason);
        return;
    }
    let retention_ms = retention.as_millis().min(u64::MAX as u128) as u64;
    let away = match absence(state.last_checkpoint_ms, unix_ms(), retention_ms) {
        Absence::Short => return,
        Absence::Long { away_ms } => format!(
            "away {:.0} s, over half of db.tombstone_retention ({:.0} s)",
            away_ms as f64 / 1000.0,
            retention.as_secs_f64()
        ),
        Absence::Unknown => {
            "its last run is unknown (restored from a backup, or collection was off)".to_owned()
        }
    };
    let reason = format!(
        "this node is back ({away}): peers may have collected deletes it missed, so it takes \
         writes again once it has caught up with a peer and found it missed none; write to \
         another node meanwhile (if no other node of this region will come back, see \
         docs/operations.md \"A node back after a long absence\")"
    );
    tracing::warn!(db = DB.name(), "{reason}");
    node.mark_returning(DB, reason);
}

/// Between sync rounds: a node that heard from no peer for over half the
/// retention while it ran (frozen, or cut off) is returning, as if it had
/// been stopped that long; a write it takes first finds out too
/// (`Node::transact`). A round in which a peer answered notes the contact
/// afterwards.
pub(crate) fn check_contact(
    shared: &Shared,
    config: &ReplicatorConfig,
    answered: &[(SocketAddr, Summary)],
    checking_return: bool,
) {
    let Some(retention) = config.tombstone_retention else {
        return;
    };
    if !shared.carries(DB) {
        return;
    }
    let Some(state) = shared.node.collection(DB) else {
        return;
    };
    let now = unix_ms();
    // Out of touch is judged before this round's answers count: a round
    // that ends just after the process was frozen for days must not
    // renew the contact and let a waiting write through unchecked.
    // While a return check runs the node is returning already, and this
    // round's answers may be what clears it.
    if !checking_return && state.stale.is_none() && state.returning.is_none() {
        if let Some(reason) = state.out_of_touch(now) {
            tracing::warn!(db = DB.name(), "{reason}");
            shared.node.mark_returning(DB, reason);
        }
    }
    if !answered.is_empty() {
        // Half the retention (the margin of docs/crr.md's proof), but never
        // within the sync pace: quiet rounds come every sync_interval_max,
        // and a few without an answer (a dead peer asked) are not an
        // absence. Only retentions of a few seconds (tests) reach this.
        let limit = (retention / 2).max(config.sync_interval_max * CONTACT_ROUNDS);
        shared
            .node
            .note_contact(DB, now, limit.as_millis().min(u64::MAX as u128) as u64);
    }
}

/// Quiet sync rounds without any answer before a node counts as out of
/// touch, when half the retention is shorter.
const CONTACT_ROUNDS: u32 = 5;

/// While `regional.db` is returning (see [`check_return`]): the same gate
/// as catching up, for the sync rounds after it — its writes wait until it
/// holds what the peers that answered held, their floors checked on the
/// way. A round in which no peer answered for the wait starts it over: a
/// node whose peers are all gone stays returning.
pub(crate) struct ReturnCheck {
    gate: CatchUp,
    wait: Duration,
}

impl ReturnCheck {
    pub(crate) fn new(shared: &Shared, config: &ReplicatorConfig) -> Option<ReturnCheck> {
        shared.node.collection(DB)?.returning.as_ref()?;
        Some(ReturnCheck {
            gate: Self::gate(config.catch_up_wait),
            wait: config.catch_up_wait,
        })
    }

    fn gate(wait: Duration) -> CatchUp {
        CatchUp::new(true, &[DB], std::time::Instant::now(), unix_ms(), wait)
    }

    /// After a round: `true` once the return is checked (the node then
    /// takes writes, unless it was found stale).
    pub(crate) fn on_round(
        &mut self,
        shared: &Shared,
        answered: &[(SocketAddr, Summary)],
        declined: &[SocketAddr],
    ) -> bool {
        for &peer in declined {
            self.gate.on_declined(peer);
        }
        let merged = shared.merged();
        self.gate
            .on_summaries(answered.iter().map(|(p, s)| (*p, s)), &merged);
        self.gate
            .on_held(&merged, &shared.peers(), std::time::Instant::now());
        match self.gate.status().phase {
            CatchUpPhase::CaughtUp => {
                if shared
                    .node
                    .collection(DB)
                    .is_some_and(|c| c.stale.is_none())
                {
                    tracing::info!(
                        db = DB.name(),
                        "caught up with its peers after returning, and missed no collected delete: writes are accepted again"
                    );
                }
                shared.node.mark_returned(DB);
                true
            }
            CatchUpPhase::NoAnswer => {
                self.gate = Self::gate(self.wait);
                false
            }
            _ => false,
        }
    }
}
