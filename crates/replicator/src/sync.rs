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

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use patina_proto::{
    CatchUp, CatchUpPhase, CatchUpStatus, PlannerConfig, PullAction, PullSession, ServeAction,
    ServeSession, SyncCount, SyncFailure, SyncPlanner, SUMMARY_SPANS_MAX,
};
use patina_transport::{FrameReader, FrameWriter};
use patina_wire::{ChangeChunk, Envelope, Message, Need, Summary};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::ReplicatorConfig;
use crate::relay::relay_fresh;
use crate::shared::Shared;
use crate::stats::{count, record, refuse_not_carried, Delivery};

/// Sync rounds every `sync_interval`; the task also owns the node's
/// [`CatchUp`]: the first round a peer answers sets its target, and after
/// every round (and tick) it is measured against what is merged.
pub(crate) async fn run(
    shared: Shared,
    config: ReplicatorConfig,
    mut catch_up: CatchUp,
    status: watch::Sender<CatchUpStatus>,
) {
    let mut planner: SyncPlanner<SocketAddr> = SyncPlanner::new(PlannerConfig::default());
    let mut rng = SmallRng::seed_from_u64(config.seed.rotate_left(17) ^ 0x5eed);
    let mut tick = tokio::time::interval(config.sync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    publish(&shared, &catch_up, &status);
    loop {
        tick.tick().await;
        let peers = shared.peers();
        let mut answered = Vec::new();
        if !peers.is_empty() {
            let chosen = patina_proto::choose_peers(&peers, config.sync_peers, &mut rng);
            answered = round(&shared, &mut planner, chosen).await;
        }
        let catching_up = status.borrow().catching_up();
        if catching_up {
            let (merged, now) = (shared.merged(), Instant::now());
            catch_up.on_summaries(answered.iter(), &merged, now);
            catch_up.on_held(&merged, now);
            publish(&shared, &catch_up, &status);
        }
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

/// One round; returns the summaries of the peers that answered.
async fn round(
    shared: &Shared,
    planner: &mut SyncPlanner<SocketAddr>,
    peers: Vec<SocketAddr>,
) -> Vec<Summary> {
    shared.stats.sync_rounds.inc();
    let mut asking = JoinSet::new();
    for peer in peers {
        let shared = shared.clone();
        asking.spawn(async move { (peer, ask_summary(&shared, peer).await) });
    }
    let mut asked: Vec<Asked> = Vec::new();
    while let Some(Ok((peer, result))) = asking.join_next().await {
        match result {
            Ok(a) => asked.push(a),
            Err(e) => {
                shared.stats.sync_failures.inc();
                tracing::debug!(%peer, error = %e, "sync: no summary");
            }
        }
    }
    let summaries: Vec<(SocketAddr, Summary)> =
        asked.iter().map(|a| (a.peer, a.summary.clone())).collect();
    let plan = planner.plan(Instant::now(), &shared.held(), &summaries);
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
    summaries.into_iter().map(|(_, s)| s).collect()
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
    /// Over: finish the stream.
    Done,
}

async fn ask_summary(shared: &Shared, peer: SocketAddr) -> Result<Asked, SyncError> {
    let mut session = PullSession::new(shared.dbs, shared.sync_limits.clone(), Instant::now());
    let (mut writer, mut reader) = within(&mut session, shared.transport.open_bi(peer)).await??;
    let mut actions = session.open();
    loop {
        match perform(shared, peer, &mut session, &mut writer, actions).await? {
            Next::Plan(summary) => {
                return Ok(Asked {
                    peer,
                    summary,
                    session,
                    writer,
                    reader,
                })
            }
            Next::Read => actions = read(&mut session, &mut reader).await?,
            Next::Done => return Err(SyncFailure::Closed.into()),
        }
    }
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
            Next::Read | Next::Plan(_) => actions = read(&mut session, &mut reader).await?,
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
    let mut session = ServeSession::new(shared.dbs, shared.sync_limits.clone(), Instant::now());
    let deadline = session.deadline();
    let served = tokio::time::timeout_at(
        deadline.into(),
        serve_inner(&shared, &mut session, first, &mut writer, &mut reader),
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
    session: &mut ServeSession,
    first: Envelope,
    writer: &mut FrameWriter,
    reader: &mut FrameReader,
) -> Result<(), SyncError> {
    let mut actions = session.on_frame(first.message);
    loop {
        for action in actions {
            match action {
                ServeAction::SendSummary => {
                    let summary = shared.held().summary(SUMMARY_SPANS_MAX);
                    writer.send(Message::Summary(summary)).await?;
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
        };
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
