//! The region recorder: while this node leads its region, it keeps the
//! region's row of `global.patina_regions` (see
//! [`RegionRecord`](patina_node::RegionRecord)) saying who leads, the live
//! global members and when rollups were last published. The row is
//! written when one of those changes (a later rollup time at most every
//! [`ROLLUP_TIME_EVERY`]), never on a timer of its own: an idle fleet
//! sends nothing for it, and the global lag it carries is the leader's as
//! of that write (`updated_ms`).

use std::time::{Duration, Instant};

use patina_membership::Member;
use patina_node::{DbKind, Node, RegionRecord, REGIONS_TABLE};
use patina_replicator::ClusterCounters;
use patina_wire::ActorId;
use tokio::sync::broadcast;
use tokio::sync::watch;

use crate::leader::live_global_members;
use crate::publisher::RollupsStatus;

/// After a failed write (the node shutting down, a full disk), the next
/// attempt waits this long.
const RETRY_AFTER: Duration = Duration::from_secs(1);

pub(crate) struct RecorderInputs {
    pub leader: watch::Receiver<Option<ActorId>>,
    pub members: watch::Receiver<Vec<Member>>,
    pub rollups: watch::Receiver<RollupsStatus>,
    /// The global cluster's figures, for the leader's global lag.
    pub global: Option<ClusterCounters>,
}

pub(crate) async fn run(node: Node, mut inputs: RecorderInputs) {
    let me = node.actor_id();
    let region = node.region().to_owned();
    let mut commits = node.subscribe_commits();
    // The row this node last wrote (since it took over), and when.
    let mut written: Option<(RegionRecord, Instant)> = None;
    let mut publishing = true;
    loop {
        let leading = *inputs.leader.borrow_and_update() == Some(me);
        let mut wake: Option<Instant> = None;
        if !leading {
            // Leading again later is a takeover: the row is written anew.
            written = None;
        } else {
            // The row as merged here: another node that briefly led (at
            // start, or while paused) may have written it after this one.
            let stored = match node.region_records().await {
                Ok(rows) => rows.into_iter().find(|r| r.region == region),
                Err(e) => {
                    tracing::warn!(error = %e, "reading patina_regions failed; retrying");
                    tokio::time::sleep(RETRY_AFTER).await;
                    continue;
                }
            };
            let rollups = inputs.rollups.borrow_and_update().clone();
            let record = RegionRecord {
                region: region.clone(),
                leader: Some(me),
                global_members: live_global_members(
                    me,
                    node.is_global_member(),
                    &inputs.members.borrow_and_update(),
                ),
                // Never older than what the region already said: a new
                // leader's own last publication may be from an earlier
                // term, or none yet.
                last_rollup_ms: rollups
                    .last_published_ms
                    .max(stored.as_ref().and_then(|r| r.last_rollup_ms)),
                rollup_error: rollups.last_error,
                global_p99_lag_ms: inputs
                    .global
                    .as_ref()
                    .and_then(|g| g.global_p99_lag_secs())
                    .map(|s| s * 1000.0),
                updated_ms: patina_node::unix_ms(),
            };
            let now = Instant::now();
            let last = written.as_ref().map(|(r, at)| (r, *at));
            match when_due(last, stored.as_ref(), &record, now) {
                Due::No => {}
                Due::At(at) => wake = Some(at),
                Due::Now => match node.record_region(&record).await {
                    Ok(_) => {
                        tracing::debug!(%region, "region row written");
                        written = Some((record, now));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "writing this region's row of patina_regions failed; retrying");
                        tokio::time::sleep(RETRY_AFTER).await;
                        continue;
                    }
                },
            }
        }
        tokio::select! {
            r = inputs.leader.changed() => if r.is_err() { return },
            r = inputs.members.changed() => if r.is_err() { return },
            // Without rollups no publisher runs: the status never changes.
            r = inputs.rollups.changed(), if publishing => publishing = r.is_ok(),
            _ = sleep_until(wake) => {}
            commit = commits.recv() => match commit {
                Ok(cs) if !touches_regions(&cs) => continue,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Whether a commit may have changed `patina_regions` (a large one names
/// only its tables).
fn touches_regions(cs: &patina_node::Changeset) -> bool {
    if cs.db != DbKind::Global {
        return false;
    }
    match &cs.omitted {
        Some(omitted) => omitted.tables.iter().any(|t| t == REGIONS_TABLE),
        None => cs.changes.iter().any(|c| c.table == REGIONS_TABLE),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A row whose only news is a later `last_rollup_ms` is written at most
/// this often: a leader publishing every 250 ms under steady machine
/// churn would otherwise double the global bytes of every publication
/// (measured: 500 → 1,280 B per rollup-changing write). The latest value
/// is written at the end of the interval, so `last_rollup` in other
/// regions is at most this late. Correcting a row another node overwrote
/// waits as long, so two nodes that both think they lead cannot trade
/// writes faster.
pub(crate) const ROLLUP_TIME_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq, Eq)]
enum Due {
    Now,
    /// Write then (if nothing more urgent comes first).
    At(Instant),
    No,
}

/// What a row says, for comparing: not its lag or write time, which
/// change with every sample (writing them would itself be global traffic
/// that moves other regions' lag), nor the rollup time beyond whether
/// there is one.
fn says(r: &RegionRecord) -> impl PartialEq {
    (
        r.region.clone(),
        r.leader,
        r.global_members.clone(),
        r.rollup_error.clone(),
        r.last_rollup_ms.is_some(),
    )
}

/// When the row should be written, given the one this node last wrote
/// (and when), the row as merged here (`stored`) and what it would write
/// now (`record`).
/// - Taking over, or news (leader, global members, rollup error, a first
///   publication) this node has not written: at once.
/// - The stored row says otherwise although this node wrote what it says
///   now (another node overwrote it), or only the rollup time moved: once
///   [`ROLLUP_TIME_EVERY`] has passed since this node's last write.
fn when_due(
    written: Option<(&RegionRecord, Instant)>,
    stored: Option<&RegionRecord>,
    record: &RegionRecord,
    now: Instant,
) -> Due {
    let Some((w, written_at)) = written else {
        return Due::Now;
    };
    let after_interval = || {
        let next = written_at + ROLLUP_TIME_EVERY;
        if now >= next {
            Due::Now
        } else {
            Due::At(next)
        }
    };
    let stored_says_it = stored.is_some_and(|s| says(s) == says(record));
    if !stored_says_it {
        return if says(w) == says(record) {
            after_interval()
        } else {
            Due::Now
        };
    }
    if stored.and_then(|s| s.last_rollup_ms) < record.last_rollup_ms {
        return after_interval();
    }
    Due::No
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(members: &[u8], last_rollup_ms: Option<u64>, lag: Option<f64>) -> RegionRecord {
        RegionRecord {
            region: "ams".into(),
            leader: members.first().map(|b| ActorId([*b; 16])),
            global_members: members.iter().map(|b| ActorId([*b; 16])).collect(),
            last_rollup_ms,
            global_p99_lag_ms: lag,
            updated_ms: 5,
            rollup_error: None,
        }
    }

    #[test]
    fn written_on_takeover_and_at_once_on_news() {
        let t0 = Instant::now();
        let first = record(&[1, 2], None, None);
        assert_eq!(when_due(None, None, &first, t0), Due::Now, "taking over");
        let w = Some((&first, t0));
        assert_eq!(when_due(w, Some(&first), &first, t0), Due::No);
        let gone = record(&[1], None, None);
        assert_eq!(
            when_due(w, Some(&first), &gone, t0),
            Due::Now,
            "a member went"
        );
        let failing = RegionRecord {
            rollup_error: Some("rollup \"app_regions\": CHECK constraint failed".into()),
            ..first.clone()
        };
        assert_eq!(when_due(w, Some(&first), &failing, t0), Due::Now);
        let published = record(&[1, 2], Some(9), None);
        assert_eq!(
            when_due(w, Some(&first), &published, t0),
            Due::Now,
            "the first publication"
        );
    }

    #[test]
    fn a_later_rollup_time_alone_waits_out_the_interval() {
        let t0 = Instant::now();
        let first = record(&[1, 2], Some(9), None);
        let published = record(&[1, 2], Some(10), None);
        let w = Some((&first, t0));
        let soon = t0 + Duration::from_millis(300);
        assert_eq!(
            when_due(w, Some(&first), &published, soon),
            Due::At(t0 + ROLLUP_TIME_EVERY)
        );
        assert_eq!(
            when_due(w, Some(&first), &published, t0 + ROLLUP_TIME_EVERY),
            Due::Now
        );
    }

    #[test]
    fn a_row_another_node_overwrote_is_corrected_but_not_in_a_hurry() {
        let t0 = Instant::now();
        let mine = record(&[1, 2], Some(9), None);
        // Node 2 briefly led and wrote after this node did.
        let theirs = record(&[2], Some(9), None);
        let w = Some((&mine, t0));
        let soon = t0 + Duration::from_millis(100);
        assert_eq!(
            when_due(w, Some(&theirs), &mine, soon),
            Due::At(t0 + ROLLUP_TIME_EVERY)
        );
        assert_eq!(
            when_due(w, Some(&theirs), &mine, t0 + ROLLUP_TIME_EVERY),
            Due::Now
        );
        // A row nobody wrote yet (it has not arrived) is written.
        assert_eq!(when_due(w, None, &mine, t0 + ROLLUP_TIME_EVERY), Due::Now);
    }

    #[test]
    fn lag_and_time_alone_write_nothing() {
        let t0 = Instant::now();
        let first = record(&[1, 2], Some(9), Some(3.0));
        let later = RegionRecord {
            updated_ms: 99,
            ..record(&[1, 2], Some(9), Some(250.0))
        };
        let w = Some((&first, t0));
        assert_eq!(
            when_due(w, Some(&first), &later, t0 + ROLLUP_TIME_EVERY * 9),
            Due::No
        );
    }
}
