//! The rollup publisher: a task that, while this node leads its region,
//! evaluates the rollups when their source tables change (as
//! [`RollupSchedule`] says) and writes the difference into their global
//! tables.

use std::sync::Arc;
use std::time::{Duration, Instant};

use patina_node::{DbKind, Node};
use patina_proto::{RollupSchedule, RollupTiming};
use patina_wire::ActorId;
use tokio::sync::{broadcast, watch};

use crate::rollup::Rollup;

/// The publisher's counters, exported by [`crate::RegionRuntime::register`]
/// as `patina_rollup_*`.
#[derive(Debug, Default)]
pub(crate) struct RollupMetrics {
    pub evaluations: prometheus_client::metrics::counter::Counter,
    pub failures: prometheus_client::metrics::counter::Counter,
    pub rows_written: prometheus_client::metrics::counter::Counter,
    pub leading: prometheus_client::metrics::gauge::Gauge,
}

impl RollupMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let r = registry.sub_registry_with_prefix("rollup");
        r.register(
            "evaluations",
            "Rollup evaluations this node ran as its region's leader",
            self.evaluations.clone(),
        );
        r.register(
            "failures",
            "Rollup evaluations that failed (retried with backoff up to 30 s)",
            self.failures.clone(),
        );
        r.register(
            "rows_written",
            "Rollup target rows upserted or deleted by this node",
            self.rows_written.clone(),
        );
        r.register(
            "leading",
            "1 while this node leads its region and publishes the rollups",
            self.leading.clone(),
        );
    }
}

/// What this node's publisher has done, for `/v1/regions` and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RollupsStatus {
    /// Whether this node leads its region (and so publishes).
    pub leading: bool,
    /// Unix ms of the last evaluation that completed.
    pub last_run_ms: Option<u64>,
    /// Unix ms of the last evaluation that wrote rows, or of the first
    /// since taking over (which reconciles): the `last_rollup` other
    /// regions read in `global.patina_regions`.
    pub last_published_ms: Option<u64>,
    pub reports: Vec<RollupReport>,
    /// Evaluations that failed (logged).
    pub failures: u64,
    /// Why the last evaluation failed; `None` once one succeeds.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RollupReport {
    pub name: String,
    /// Rows of this region the query returned at the last evaluation.
    pub rows: u64,
    /// Rows written (upserted or deleted) in all.
    pub written: u64,
}

pub(crate) async fn run(
    node: Node,
    rollups: Arc<[Rollup]>,
    timing: RollupTiming,
    mut leader: watch::Receiver<Option<ActorId>>,
    status: watch::Sender<RollupsStatus>,
    metrics: Arc<RollupMetrics>,
) {
    let me = node.actor_id();
    let region = node.region().to_owned();
    let mut schedule = RollupSchedule::new(timing);
    let mut commits = node.subscribe_commits();
    let mut reader: Option<rusqlite::Connection> = None;
    // Whether an evaluation completed since this node took over.
    let mut reconciled = false;
    loop {
        let leading = *leader.borrow_and_update() == Some(me);
        if leading != schedule.leading() {
            reconciled = false;
            schedule.on_leadership(leading, Instant::now());
            status.send_modify(|s| s.leading = leading);
            metrics.leading.set(i64::from(leading));
            if leading {
                tracing::info!(%region, "this node leads its region: publishing rollups");
            }
        }
        let next = schedule.next_run();
        tokio::select! {
            changed = leader.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            commit = commits.recv() => match commit {
                Ok(cs) => {
                    if cs.db == DbKind::Regional && touches(&rollups, &cs) {
                        schedule.on_source_change(Instant::now());
                    }
                }
                // Missed commits may have touched a source: evaluate.
                Err(broadcast::error::RecvError::Lagged(_)) => schedule.on_source_change(Instant::now()),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = sleep_until(next) => {
                let started = Instant::now();
                schedule.on_run(started);
                metrics.evaluations.inc();
                match evaluate(&node, &rollups, &region, &mut reader).await {
                    Ok(reports) => {
                        schedule.on_succeeded();
                        metrics.rows_written.inc_by(reports.iter().map(|r| r.written).sum());
                        let wrote = reports.iter().any(|r| r.written > 0);
                        let published = wrote || !reconciled;
                        reconciled = true;
                        status.send_modify(|s| {
                        let now = patina_node::unix_ms();
                        s.last_run_ms = Some(now);
                        if published {
                            s.last_published_ms = Some(now);
                        }
                        s.last_error = None;
                        for r in reports {
                            match s.reports.iter_mut().find(|x| x.name == r.name) {
                                Some(x) => {
                                    x.rows = r.rows;
                                    x.written += r.written;
                                }
                                None => s.reports.push(r),
                            }
                        }
                    })
                    }
                    Err(e) => {
                        tracing::warn!(%region, error = %e, "evaluating the rollups failed; retrying");
                        schedule.on_failed(started);
                        metrics.failures.inc();
                        status.send_modify(|s| {
                            s.failures += 1;
                            s.last_error = Some(
                                e.chars().take(patina_node::ROLLUP_ERROR_CHARS_MAX).collect(),
                            );
                        });
                        // A broken reader is opened again.
                        reader = None;
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn touches(rollups: &[Rollup], cs: &patina_node::Changeset) -> bool {
    let touched = |table: &str| rollups.iter().any(|r| r.sources.contains(table));
    match &cs.omitted {
        Some(omitted) => omitted.tables.iter().any(|t| touched(t)),
        None => cs.changes.iter().any(|c| touched(&c.table)),
    }
}

/// Evaluates every rollup and writes each one's difference (one
/// transaction per rollup).
async fn evaluate(
    node: &Node,
    rollups: &Arc<[Rollup]>,
    region: &str,
    reader: &mut Option<rusqlite::Connection>,
) -> Result<Vec<RollupReport>, String> {
    let conn = match reader.take() {
        Some(conn) => conn,
        None => node.open_reader().map_err(|e| e.to_string())?,
    };
    let (conn, diffs) = {
        let rollups = Arc::clone(rollups);
        let region = region.to_owned();
        tokio::task::spawn_blocking(move || {
            let diffs: Result<Vec<_>, String> =
                rollups.iter().map(|r| r.evaluate(&conn, &region)).collect();
            (conn, diffs)
        })
        .await
        .map_err(|e| e.to_string())?
    };
    *reader = Some(conn);
    let mut reports = Vec::with_capacity(rollups.len());
    for (rollup, (diff, rows)) in rollups.iter().zip(diffs?) {
        let written = (diff.upserts.len() + diff.deletes.len()) as u64;
        if !diff.is_empty() {
            let statements = rollup.statements(&diff, region);
            tokio::time::timeout(WRITE_TIMEOUT, node.transact(statements))
                .await
                .map_err(|_| {
                    format!(
                        "rollup {:?}: writing took over {WRITE_TIMEOUT:?}",
                        rollup.config.name
                    )
                })?
                .map_err(|e| format!("rollup {:?}: {e}", rollup.config.name))?;
            tracing::debug!(rollup = %rollup.config.name, upserts = diff.upserts.len(), deletes = diff.deletes.len(), "rollup published");
        }
        reports.push(RollupReport {
            name: rollup.config.name.clone(),
            rows,
            written,
        });
    }
    Ok(reports)
}

/// A rollup's write waits behind other transactions; past this the
/// evaluation counts as failed and is retried.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
