//! Anti-entropy: periodic rounds that ask a few peers for their summaries,
//! let the [`SyncPlanner`] decide what to pull from whom, and merge what
//! arrives; and the serving side of those pulls.
//!
//! Pulled chunks are merged by the pulling task itself (not through the
//! broadcast apply queue), so when a pull is done its versions are applied
//! and the next round's plan sees them. They are not forwarded: every node
//! runs its own rounds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use patina_wire::{ChangeChunk, DbKind, Envelope, Message, Need, Summary};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::task::JoinSet;

use super::{bump, record, ReplicatorConfig, Shared};
use patina_proto::{Bookkeeper, PlannerConfig, SyncPlanner, SUMMARY_SPANS_MAX};
use patina_transport::{FrameReader, FrameWriter};

/// Pulls served at once; more are refused (the puller retries next round).
pub(super) const SERVING_PULLS_MAX: usize = 32;
/// Needs read from one pull at most.
const PULL_NEEDS_MAX: usize = 4096;
/// A peer that sends nothing for this long is given up on for this round.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer that has not answered a summary request in this long is left out
/// of the round: a round waits for every summary, and an unreachable peer
/// not yet declared down must not stall it (a LAN answers in milliseconds).
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(2);
/// Pulled chunks merged per writer job.
const PULL_APPLY_CHUNKS_MAX: usize = 128;

pub(super) async fn run(shared: Shared, config: ReplicatorConfig) {
    let mut planner: SyncPlanner<SocketAddr> = SyncPlanner::new(PlannerConfig::default());
    let mut rng = SmallRng::seed_from_u64(config.seed.rotate_left(17) ^ 0x5eed);
    let mut tick = tokio::time::interval(config.sync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let peers = shared.peers();
        if peers.is_empty() {
            continue;
        }
        let chosen = patina_proto::choose_peers(&peers, config.sync_peers, &mut rng);
        round(&shared, &mut planner, chosen).await;
    }
}

type Opened = (SocketAddr, Summary, FrameWriter, FrameReader);

async fn round(shared: &Shared, planner: &mut SyncPlanner<SocketAddr>, peers: Vec<SocketAddr>) {
    bump(&shared.stats.sync_rounds, 1);
    let mut asking = JoinSet::new();
    for peer in peers {
        let transport = shared.transport.clone();
        asking.spawn(async move {
            let asked = tokio::time::timeout(SUMMARY_TIMEOUT, ask_summary(&transport, peer)).await;
            (
                peer,
                asked.unwrap_or(Err(SyncError::Timeout(SUMMARY_TIMEOUT))),
            )
        });
    }
    let mut opened: Vec<Opened> = Vec::new();
    while let Some(Ok((peer, result))) = asking.join_next().await {
        match result {
            Ok((summary, w, r)) => opened.push((peer, summary, w, r)),
            Err(e) => {
                bump(&shared.stats.sync_failures, 1);
                tracing::debug!(%peer, error = %e, "sync: no summary");
            }
        }
    }
    let summaries: Vec<(SocketAddr, Summary)> =
        opened.iter().map(|(p, s, _, _)| (*p, s.clone())).collect();
    let local = combined(shared);
    let plan = planner.plan(Instant::now(), &local, &summaries);
    let mut pulls = JoinSet::new();
    for (peer, _, writer, reader) in opened {
        let needs = plan
            .iter()
            .find(|(p, _)| *p == peer)
            .map(|(_, n)| n.clone())
            .unwrap_or_default();
        if needs.is_empty() {
            let _ = writer.finish();
            continue;
        }
        let shared = shared.clone();
        pulls.spawn(async move { (peer, pull(&shared, needs, writer, reader).await) });
    }
    while let Some(Ok((peer, result))) = pulls.join_next().await {
        match result {
            Ok(()) => planner.on_pull_done(&peer),
            Err(e) => {
                bump(&shared.stats.sync_failures, 1);
                tracing::debug!(%peer, error = %e, "sync: pull failed");
                planner.on_pull_failed(&peer);
            }
        }
    }
}

/// Both databases' bookkeeping (of the databases this cluster carries),
/// counting versions waiting in the apply queue as held: broadcast already
/// delivered them, and a node behind on merging would otherwise pull again
/// what it is about to apply (in a 10-node bench with replicas starved of
/// CPU, serving such pulls was 15 % of the writing node's CPU). Should one
/// of them fail to apply, the next round sees it missing.
fn combined(shared: &Shared) -> Bookkeeper {
    let mut dbs = shared.dbs.iter();
    let first = dbs.next().copied().unwrap_or(DbKind::Regional);
    let mut all = (**shared.node.bookkeeping(first).borrow()).clone();
    for &db in dbs {
        all.absorb(&shared.node.bookkeeping(db).borrow());
    }
    for &(db, actor, version) in shared.queued().keys() {
        all.record_applied(db, actor, version);
    }
    all
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Transport(#[from] patina_transport::TransportError),
    #[error("peer sent nothing for {0:?}")]
    Timeout(Duration),
    #[error("peer closed the stream early")]
    Closed,
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
    #[error("node is shutting down")]
    ShuttingDown,
}

async fn next_frame(reader: &mut FrameReader) -> Result<Envelope, SyncError> {
    match tokio::time::timeout(FRAME_TIMEOUT, reader.next()).await {
        Err(_) => Err(SyncError::Timeout(FRAME_TIMEOUT)),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(None)) => Err(SyncError::Closed),
        Ok(Ok(Some(env))) => Ok(env),
    }
}

async fn ask_summary(
    transport: &patina_transport::Transport,
    peer: SocketAddr,
) -> Result<(Summary, FrameWriter, FrameReader), SyncError> {
    let (mut writer, mut reader) = transport.open_bi(peer).await?;
    writer.send(Message::SummaryRequest).await?;
    match next_frame(&mut reader).await?.message {
        Message::Summary(s) => Ok((s, writer, reader)),
        _ => Err(SyncError::Unexpected("expected a summary")),
    }
}

async fn pull(
    shared: &Shared,
    needs: Vec<Need>,
    mut writer: FrameWriter,
    mut reader: FrameReader,
) -> Result<(), SyncError> {
    writer.send(Message::Pull(needs)).await?;
    let mut pending: Vec<ChangeChunk> = Vec::new();
    loop {
        match next_frame(&mut reader).await?.message {
            Message::Changes(chunk) => {
                bump(&shared.stats.chunks_received, 1);
                if shared.carries(chunk.db).is_none() {
                    bump(&shared.stats.wrong_database, 1);
                    continue;
                }
                pending.push(chunk);
                if pending.len() >= PULL_APPLY_CHUNKS_MAX {
                    apply(shared, std::mem::take(&mut pending)).await?;
                }
            }
            Message::PullDone => break,
            _ => {
                return Err(SyncError::Unexpected(
                    "expected changes or the end of a pull",
                ))
            }
        }
    }
    apply(shared, pending).await?;
    let _ = writer.finish();
    Ok(())
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
        record(&shared.stats, &mine, &outcome);
    }
    Ok(())
}

/// Answers one peer's sync stream: our summary, then what it pulls.
pub(super) async fn serve(
    shared: Shared,
    from: SocketAddr,
    first: Envelope,
    mut writer: FrameWriter,
    mut reader: FrameReader,
) {
    if let Err(e) = serve_inner(&shared, first, &mut writer, &mut reader).await {
        tracing::debug!(%from, error = %e, "serving a sync pull failed");
    }
    let _ = writer.finish();
}

async fn serve_inner(
    shared: &Shared,
    first: Envelope,
    writer: &mut FrameWriter,
    reader: &mut FrameReader,
) -> Result<(), SyncError> {
    if first.message != Message::SummaryRequest {
        return Err(SyncError::Unexpected(
            "a sync stream starts with a summary request",
        ));
    }
    let summary = combined(shared).summary(SUMMARY_SPANS_MAX);
    writer.send(Message::Summary(summary)).await?;
    let needs = match reader.next().await? {
        // The peer needed nothing from us.
        None => return Ok(()),
        Some(env) => match env.message {
            Message::Pull(needs) => needs,
            _ => return Err(SyncError::Unexpected("expected a pull")),
        },
    };
    bump(&shared.stats.pulls_served, 1);
    for need in needs.into_iter().take(PULL_NEEDS_MAX) {
        let db = match &need {
            Need::Versions { db, .. } | Need::Seqs { db, .. } => *db,
        };
        let Some(db) = shared.carries(db) else {
            continue;
        };
        let mut next = Some(need);
        while let Some(need) = next.take() {
            let (chunks, rest) = shared
                .node
                .serve(db, need)
                .await
                .ok_or(SyncError::ShuttingDown)?;
            for chunk in chunks {
                writer.send(Message::Changes(chunk)).await?;
            }
            next = rest;
        }
    }
    writer.send(Message::PullDone).await?;
    Ok(())
}
