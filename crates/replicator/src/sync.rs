//! Anti-entropy: periodic rounds that ask a few peers for their summaries,
//! let the [`SyncPlanner`] decide what to pull from whom, and merge what
//! arrives; and the serving side of those pulls. The conversation itself
//! (message order, deadlines, limits) is [`PullSession`] and
//! [`ServeSession`]; this file moves their frames and performs their
//! actions.
//!
//! Pulled chunks are merged by the pulling task itself (not through the
//! broadcast apply queue), so when a pull is done its versions are applied
//! and the next round's plan sees them. They are not forwarded: every node
//! runs its own rounds.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use patina_proto::{
    CatchUp, CatchUpPhase, CatchUpStatus, PlannerConfig, PullAction, PullSession, ServeAction,
    ServeSession, SyncCount, SyncFailure, SyncPace, SyncPlanner, SUMMARY_SPANS_MAX,
};
use patina_transport::{FrameReader, FrameWriter};
use patina_wire::{ChangeChunk, Envelope, Message, Need, Summary};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::collect::{check_contact, on_floors, Collector, ReturnCheck};
use crate::config::ReplicatorConfig;
use crate::relay::relay_fresh;
use crate::shared::Shared;
use crate::stats::{count, record, refuse_not_carried, Delivery};

/// Hints waiting for the sync task; more are dropped (a round asks at most
/// `sync_peers` peers anyway).
pub(crate) const HINTS_MAX: usize = 64;

/// How long a peer that declined to serve (stale) is not asked again: it
/// stays stale until re-seeded, which takes minutes.
const DECLINED_BACKOFF: std::time::Duration = std::time::Duration::from_secs(30);

/// Sync rounds at the pace [`SyncPace`] keeps: every `sync_interval` while
/// anything happens, backing off to `sync_interval_max` while every peer
/// asked holds what this node holds. Activity — this node's bookkeeping
/// changing (a commit, a merge), the membership changing, a peer asking
/// with a different digest (a hint) — brings the next round forward to
/// `sync_interval` after the last one; hinted peers are asked first.
///
/// The task also owns the node's [`CatchUp`]: the first round a peer
/// answers sets its target, and after every round it is measured against
/// what is merged.
pub(crate) async fn run(
    shared: Shared,
    config: ReplicatorConfig,
    mut catch_up: CatchUp,
    status: watch::Sender<CatchUpStatus>,
    mut hints: tokio::sync::mpsc::Receiver<SocketAddr>,
) {
    let mut planner: SyncPlanner<SocketAddr> = SyncPlanner::new(PlannerConfig::default());
    let mut rng = SmallRng::seed_from_u64(config.seed.rotate_left(17) ^ 0x5eed);
    let mut pace = SyncPace::new(config.sync_interval, config.sync_interval_max);
    let mut books: Vec<_> = shared
        .dbs
        .iter()
        .map(|&db| shared.node.bookkeeping(db))
        .collect();
    let mut members = shared.members.clone();
    let mut hinted: Vec<SocketAddr> = Vec::new();
    let mut last_round = tokio::time::Instant::now();
    let mut collector = Collector::new(&shared, &config);
    let mut return_check = ReturnCheck::new(&shared, &config);
    // Peers that declined to serve (stale), not asked again until then.
    let mut declined_until: HashMap<SocketAddr, tokio::time::Instant> = HashMap::new();
    publish(&shared, &catch_up, &status);
    loop {
        let next = last_round + pace.interval();
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            changed = any_changed(&mut books) => {
                if !changed {
                    return;
                }
                tracing::trace!("sync pace: bookkeeping changed");
                pace.on_activity();
                continue;
            }
            changed = members.changed() => {
                if changed.is_err() {
                    return;
                }
                tracing::trace!("sync pace: membership changed");
                pace.on_activity();
                continue;
            }
            hint = hints.recv() => {
                let Some(peer) = hint else { return };
                if !hinted.contains(&peer) {
                    hinted.push(peer);
                }
                tracing::trace!(%peer, "sync pace: a peer asked with another digest");
                pace.on_activity();
                continue;
            }
        }
        last_round = tokio::time::Instant::now();
        declined_until.retain(|_, until| *until > last_round);
        // A stale node pulls nothing more: it is to be re-seeded, and what
        // it lacks is the evidence of why.
        let peers: Vec<SocketAddr> = if stale_db(&shared).is_some() {
            Vec::new()
        } else {
            shared
                .peers()
                .into_iter()
                .filter(|p| !declined_until.contains_key(p))
                .collect()
        };
        let mut answered = Vec::new();
        let mut declined = Vec::new();
        let mut quiet = true;
        if !peers.is_empty() {
            let mut chosen: Vec<SocketAddr> = hinted
                .drain(..)
                .filter(|p| peers.contains(p))
                .take(config.sync_peers)
                .collect();
            // Catching up ends when every live peer has answered once: ask
            // the silent ones first (random among them).
            let silent: Vec<SocketAddr> = catch_up
                .unanswered(&peers)
                .into_iter()
                .filter(|p| !chosen.contains(p))
                .copied()
                .collect();
            let room = config.sync_peers.saturating_sub(chosen.len());
            chosen.extend(patina_proto::choose_peers(&silent, room, &mut rng));
            let others: Vec<SocketAddr> = peers
                .iter()
                .filter(|p| !chosen.contains(p))
                .copied()
                .collect();
            let more = config.sync_peers.saturating_sub(chosen.len());
            chosen.extend(patina_proto::choose_peers(&others, more, &mut rng));
            let outcome = round(&shared, &mut planner, chosen).await;
            quiet = outcome.quiet;
            answered = outcome.answered;
            declined = outcome.declined;
            for &peer in &declined {
                declined_until.insert(peer, last_round + DECLINED_BACKOFF);
            }
        }
        hinted.clear();
        // No backing off while catching up: the gate waits on these rounds.
        pace.on_round(quiet && !status.borrow().catching_up());
        tracing::trace!(quiet, next_in = ?pace.interval(), "sync round done");
        let catching_up = status.borrow().catching_up();
        // The contact first: a return check that this round clears must
        // find the answer noted, or a write right after would find the
        // node out of touch still.
        check_contact(&shared, &config, &answered, return_check.is_some());
        if let Some(check) = return_check.as_mut() {
            if check.on_round(&shared, &answered, &declined) {
                return_check = None;
            }
        }
        // Marked returning since (out of touch, here or by a write): the
        // return is checked from the next round on.
        if return_check.is_none() {
            return_check = ReturnCheck::new(&shared, &config);
        }
        if let Some(collector) = collector.as_mut() {
            collector
                .on_round(&shared, &answered, &declined, catching_up)
                .await;
        }
        if catching_up {
            let (merged, now) = (shared.merged(), Instant::now());
            for &peer in &declined {
                catch_up.on_declined(peer);
            }
            catch_up.on_summaries(answered.iter().map(|(p, s)| (*p, s)), &merged);
            catch_up.on_held(&merged, &shared.peers(), now);
            publish(&shared, &catch_up, &status);
        }
        if !status.borrow().catching_up() {
            // A fresh data dir holds what its peers held now (or it has
            // none): from here on — this very round, not the next, which a
            // freeze may put off for days — it is checked against
            // collection floors like any node.
            for &db in shared.dbs {
                if shared.node.collection(db).is_some_and(|c| c.bootstrapping) {
                    shared.node.mark_joined(db).await;
                }
            }
        }
    }
}

/// Waits until the bookkeeping of one of the cluster's databases (at most
/// both) changes; `false` once the node is gone.
async fn any_changed(books: &mut [watch::Receiver<Arc<patina_proto::Bookkeeper>>]) -> bool {
    match books {
        [one] => one.changed().await.is_ok(),
        [a, b] => tokio::select! {
            r = a.changed() => r.is_ok(),
            r = b.changed() => r.is_ok(),
        },
        _ => std::future::pending().await,
    }
}

/// Hands the catch-up status to its readers (health, lag sampling,
/// metrics); says so in the log when catching up ends.
fn publish(shared: &Shared, catch_up: &CatchUp, status: &watch::Sender<CatchUpStatus>) {
    let now = catch_up.status();
    shared.stats.catching_up.set(i64::from(now.catching_up()));
    shared
        .stats
        .catch_up_missing_versions
        .set(i64::try_from(now.missing_versions).unwrap_or(i64::MAX));
    let was = status.send_replace(now);
    if was.catching_up() && !now.catching_up() {
        let secs = now
            .ended
            .map_or(0.0, |e| e.duration_since(now.started).as_secs_f64());
        match now.phase {
            CatchUpPhase::NoAnswer => tracing::warn!(
                secs,
                "no peer answered a sync summary; serving what this node holds"
            ),
            _ => tracing::info!(secs, "caught up with what peers held when this node joined"),
        }
    }
}

/// A peer that answered with its summary, and the stream to pull on.
struct Asked {
    peer: SocketAddr,
    summary: Summary,
    session: PullSession,
    writer: FrameWriter,
    reader: FrameReader,
}

/// What a round found.
struct RoundOutcome {
    /// The summaries of the peers that answered (a peer in sync counts as
    /// answering with this node's own summary).
    answered: Vec<(SocketAddr, Summary)>,
    /// Every peer asked answered that it holds what this node holds.
    quiet: bool,
    /// Peers that declined to serve (stale).
    declined: Vec<SocketAddr>,
}

/// One round.
async fn round(
    shared: &Shared,
    planner: &mut SyncPlanner<SocketAddr>,
    peers: Vec<SocketAddr>,
) -> RoundOutcome {
    shared.stats.sync_rounds.inc();
    let held = shared.held();
    let digest = held.digest();
    let mut asking = JoinSet::new();
    for peer in peers {
        let shared = shared.clone();
        asking.spawn(async move { (peer, ask_summary(&shared, peer, digest).await) });
    }
    let mut asked: Vec<Asked> = Vec::new();
    let mut in_sync = Vec::new();
    let mut declined = Vec::new();
    let mut quiet = true;
    while let Some(Ok((peer, result))) = asking.join_next().await {
        match result {
            Ok(Answer::Summary(a)) => {
                quiet = false;
                asked.push(*a);
            }
            Ok(Answer::InSync) => in_sync.push(peer),
            Ok(Answer::Declined(reason)) => {
                tracing::debug!(%peer, %reason, "sync: the peer declined");
                declined.push(peer);
            }
            Err(e) => {
                quiet = false;
                shared.stats.sync_failures.inc();
                tracing::debug!(%peer, error = %e, "sync: no summary");
            }
        }
    }
    let mut answered: Vec<(SocketAddr, Summary)> = Vec::new();
    if !in_sync.is_empty() {
        let mine = held.summary(SUMMARY_SPANS_MAX);
        answered.extend(in_sync.into_iter().map(|p| (p, mine.clone())));
    }
    let summaries: Vec<(SocketAddr, Summary)> =
        asked.iter().map(|a| (a.peer, a.summary.clone())).collect();
    let plan = planner.plan(Instant::now(), &held, &summaries);
    let mut pulls = JoinSet::new();
    for a in asked {
        let needs = plan
            .iter()
            .find(|(p, _)| *p == a.peer)
            .map(|(_, n)| n.clone())
            .unwrap_or_default();
        if needs.is_empty() {
            // Nothing to pull: the session finishes the stream at once.
            let Asked {
                peer,
                mut session,
                mut writer,
                ..
            } = a;
            let actions = session.pull(needs, Instant::now());
            if let Ok(Next::Done) = perform(shared, peer, &mut session, &mut writer, actions).await
            {
                let _ = writer.finish();
            }
            continue;
        }
        let shared = shared.clone();
        pulls.spawn(async move { (a.peer, pull(&shared, a, needs).await) });
    }
    while let Some(Ok((peer, result))) = pulls.join_next().await {
        match result {
            Ok(()) => planner.on_pull_done(&peer),
            Err(e) => {
                shared.stats.sync_failures.inc();
                tracing::debug!(%peer, error = %e, "sync: pull failed");
                planner.on_pull_failed(&peer);
            }
        }
    }
    answered.extend(summaries);
    RoundOutcome {
        answered,
        quiet,
        declined,
    }
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Transport(#[from] patina_transport::TransportError),
    #[error(transparent)]
    Protocol(#[from] SyncFailure),
    #[error("node is shutting down")]
    ShuttingDown,
}

/// Where a puller's conversation stands after performing some actions.
enum Next {
    Read,
    Plan(Summary),
    /// The peer holds what this node holds: nothing to pull.
    InSync,
    /// The peer does not serve sync, saying why.
    Declined(String),
    /// Over: finish the stream.
    Done,
}

/// How a peer answered the summary request.
enum Answer {
    Summary(Box<Asked>),
    /// It holds what this node holds.
    InSync,
    /// It does not serve (it is stale), saying why.
    Declined(String),
}

/// Asks `peer` for its summary, saying this node's `digest`.
async fn ask_summary(shared: &Shared, peer: SocketAddr, digest: u64) -> Result<Answer, SyncError> {
    let mut session = PullSession::new(shared.dbs, shared.sync_limits.clone(), Instant::now());
    let (mut writer, mut reader) = within(&mut session, shared.transport.open_bi(peer)).await??;
    let mut actions = session.open_with_digest(digest);
    loop {
        match perform(shared, peer, &mut session, &mut writer, actions).await? {
            Next::Plan(summary) => {
                if let Some(reason) = below_floors(shared, peer, &summary) {
                    let _ = writer.finish();
                    return Ok(Answer::Declined(reason));
                }
                return Ok(Answer::Summary(Box::new(Asked {
                    peer,
                    summary,
                    session,
                    writer,
                    reader,
                })));
            }
            Next::InSync => {
                let _ = writer.finish();
                return Ok(Answer::InSync);
            }
            Next::Declined(reason) => {
                let _ = writer.finish();
                return Ok(Answer::Declined(reason));
            }
            Next::Read => actions = read(&mut session, &mut reader).await?,
            Next::Done => return Err(SyncFailure::Closed.into()),
        }
    }
}

/// Why not to pull from a peer whose summary is below this node's
/// collection floors: it missed deletes whose tombstones were collected
/// here (it was cut off, frozen or stopped that long), and rows it still
/// holds or wrote meanwhile would come back as new keys. It finds out it
/// is stale when it pulls from a node that collected; meanwhile it is
/// treated like a peer that declined.
fn below_floors(shared: &Shared, peer: SocketAddr, summary: &Summary) -> Option<String> {
    let db = patina_wire::DbKind::Regional;
    if !shared.carries(db) {
        return None;
    }
    let floors = shared.node.collection(db)?.floors;
    let (actor, floor, have) = patina_proto::summary_missed(summary, db, &floors)?;
    shared.stats.pulls_refused_stale.inc();
    let reason = format!(
        "peer {peer} holds versions 1..={have} of actor {actor}, below this node's collection \
         floor {floor}: it missed collected deletes, so nothing is pulled from it"
    );
    tracing::warn!(%peer, "{reason}");
    Some(reason)
}

async fn pull(shared: &Shared, asked: Asked, needs: Vec<Need>) -> Result<(), SyncError> {
    let Asked {
        peer,
        mut session,
        mut writer,
        mut reader,
        ..
    } = asked;
    let mut actions = session.pull(needs, Instant::now());
    loop {
        match perform(shared, peer, &mut session, &mut writer, actions).await? {
            Next::Done => {
                let _ = writer.finish();
                return Ok(());
            }
            Next::Read | Next::Plan(_) | Next::InSync | Next::Declined(_) => {
                actions = read(&mut session, &mut reader).await?
            }
        }
    }
}

/// The next frame (or the stream's end), fed to the session.
async fn read(
    session: &mut PullSession,
    reader: &mut FrameReader,
) -> Result<Vec<PullAction>, SyncError> {
    let frame = within(session, reader.next()).await??;
    Ok(match frame {
        Some(envelope) => session.on_frame(envelope.message, Instant::now()),
        None => session.on_closed(),
    })
}

/// Runs `io` until the session's deadline, which the session judges.
async fn within<T>(
    session: &mut PullSession,
    io: impl Future<Output = T>,
) -> Result<T, SyncFailure> {
    let mut io = std::pin::pin!(io);
    loop {
        let Some(deadline) = session.deadline() else {
            return Ok(io.await);
        };
        match tokio::time::timeout_at(deadline.into(), &mut io).await {
            Ok(out) => return Ok(out),
            Err(_) => {
                if let Some(failure) = session.on_timeout(Instant::now()) {
                    return Err(failure);
                }
            }
        }
    }
}

async fn perform(
    shared: &Shared,
    peer: SocketAddr,
    session: &mut PullSession,
    writer: &mut FrameWriter,
    actions: Vec<PullAction>,
) -> Result<Next, SyncError> {
    let mut next = Next::Read;
    for action in actions {
        match action {
            // Under the session's deadline too: the summary's covers the
            // whole exchange.
            PullAction::Send(message) => within(session, writer.send(message)).await??,
            PullAction::Plan(summary) => next = Next::Plan(summary),
            PullAction::InSync => next = Next::InSync,
            PullAction::Declined(reason) => next = Next::Declined(reason),
            PullAction::Collected(floors) => on_floors(shared, peer, floors).await,
            PullAction::Count(event) => count(&shared.stats, event),
            PullAction::Refuse(chunk) => refuse_not_carried(&shared.stats, peer, &chunk),
            PullAction::Apply(chunks) => {
                apply(shared, chunks).await?;
                session.on_applied(Instant::now());
            }
            // The caller owns the writer and finishes it.
            PullAction::Finish => next = Next::Done,
            PullAction::Fail(failure) => return Err(failure.into()),
        }
    }
    Ok(next)
}

async fn apply(shared: &Shared, chunks: Vec<ChangeChunk>) -> Result<(), SyncError> {
    for &db in shared.dbs {
        let mine: Vec<Arc<ChangeChunk>> = chunks
            .iter()
            .filter(|c| c.db == db)
            .map(|c| Arc::new(c.clone()))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let outcome = shared
            .node
            .apply_remote(db, mine.clone())
            .await
            .ok_or(SyncError::ShuttingDown)?;
        let catch_up = *shared.catch_up.borrow();
        record(&shared.stats, &mine, &outcome, Delivery::Sync, &catch_up);
        relay_fresh(shared, &mine, &outcome.fresh);
    }
    Ok(())
}

/// Answers one peer's sync stream: our summary, then what it pulls.
pub(crate) async fn serve(
    shared: Shared,
    from: SocketAddr,
    first: Envelope,
    mut writer: FrameWriter,
    mut reader: FrameReader,
) {
    if let Some(db) = stale_db(&shared) {
        // What it holds may bring back rows the cluster deleted. Saying so
        // keeps the asker from waiting for this node while it catches up.
        shared.stats.serves_refused_stale.inc();
        tracing::debug!(%from, db = db.name(), "not serving a sync: this node is stale");
        let why = format!(
            "{}.db of this node missed collected deletes: it must be re-seeded",
            db.name()
        );
        let _ = writer.send(Message::Declined(why)).await;
        let _ = writer.finish();
        return;
    }
    let mut session = ServeSession::new(shared.dbs, shared.sync_limits.clone(), Instant::now());
    let deadline = session.deadline();
    let served = tokio::time::timeout_at(
        deadline.into(),
        serve_inner(&shared, from, &mut session, first, &mut writer, &mut reader),
    )
    .await;
    let result = match served {
        Ok(result) => result,
        // Quiet, or reading too slowly: the slot goes to someone else.
        Err(_) => run_serve_actions(&shared, session.on_timeout()),
    };
    if let Err(e) = result {
        tracing::debug!(%from, error = %e, "serving a sync pull failed");
    }
    let _ = writer.finish();
}

/// A database of this cluster's that missed collected tombstones.
fn stale_db(shared: &Shared) -> Option<patina_wire::DbKind> {
    shared.dbs.iter().copied().find(|&db| {
        shared
            .node
            .collection(db)
            .is_some_and(|c| c.stale.is_some())
    })
}

/// The actions a session takes without the stream (its end by timeout).
fn run_serve_actions(shared: &Shared, actions: Vec<ServeAction>) -> Result<(), SyncError> {
    for action in actions {
        match action {
            ServeAction::Count(event) => count(&shared.stats, event),
            ServeAction::Fail(failure) => return Err(failure.into()),
            _ => {}
        }
    }
    Ok(())
}

async fn serve_inner(
    shared: &Shared,
    from: SocketAddr,
    session: &mut ServeSession,
    first: Envelope,
    writer: &mut FrameWriter,
    reader: &mut FrameReader,
) -> Result<(), SyncError> {
    let mut actions: std::collections::VecDeque<ServeAction> =
        session.on_frame(first.message).into();
    loop {
        while let Some(action) = actions.pop_front() {
            match action {
                ServeAction::SendSummary => {
                    for &db in shared.dbs {
                        let floors = shared.node.collection(db).and_then(|c| c.to_wire(db));
                        if let Some(floors) = floors {
                            writer.send(Message::Collected(floors)).await?;
                        }
                    }
                    let summary = shared.held().summary(SUMMARY_SPANS_MAX);
                    writer.send(Message::Summary(summary)).await?;
                }
                ServeAction::CheckDigest(theirs) => {
                    let same = shared.held().digest() == theirs;
                    if !same {
                        // The peer holds something else: one of the two
                        // has to pull. Ask it back soon (it may hold what
                        // this node lacks); a full queue only delays that.
                        let _ = shared.hints.try_send(from);
                    }
                    actions.extend(session.digest_checked(same));
                }
                ServeAction::Count(event) => count(&shared.stats, event),
                ServeAction::Serve(needs) => {
                    for need in needs {
                        if !serve_need(shared, session, writer, need).await? {
                            count(&shared.stats, SyncCount::ServeBytesCapped);
                            break;
                        }
                    }
                }
                ServeAction::Send(message) => writer.send(message).await?,
                ServeAction::Finish => return Ok(()),
                ServeAction::Fail(failure) => return Err(failure.into()),
            }
        }
        actions = match reader.next().await? {
            Some(envelope) => session.on_frame(envelope.message),
            None => session.on_closed(),
        }
        .into();
    }
}

/// Streams the chunks answering `need`, read a writer job at a time;
/// `false` when the pull's byte budget ran out.
async fn serve_need(
    shared: &Shared,
    session: &mut ServeSession,
    writer: &mut FrameWriter,
    need: Need,
) -> Result<bool, SyncError> {
    let db = match &need {
        Need::Versions { db, .. } | Need::Seqs { db, .. } => *db,
    };
    // What is left, next last: a large version comes back a page at a time
    // with the versions after it behind its rest.
    let mut left = vec![need];
    while let Some(need) = left.pop() {
        let (chunks, rest) = shared
            .node
            .serve(db, need)
            .await
            .ok_or(SyncError::ShuttingDown)?;
        for chunk in chunks {
            let bytes = patina_proto::chunk_bytes(&chunk);
            writer.send(Message::Changes(chunk)).await?;
            if !session.spend(bytes) {
                return Ok(false);
            }
        }
        left.extend(rest.into_iter().rev());
    }
    Ok(true)
}
