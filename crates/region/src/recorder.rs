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
use patina_node::{Node, RegionRecord};
use patina_replicator::ClusterCounters;
use patina_wire::ActorId;
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
    // The row last written, and when.
    let mut written: Option<(RegionRecord, Instant)> = None;
    let mut publishing = true;
    loop {
        let leading = *inputs.leader.borrow_and_update() == Some(me);
        let mut wake: Option<Instant> = None;
        if !leading {
            // Leading again later is a takeover: the row is written anew.
            written = None;
        } else {
            let rollups = inputs.rollups.borrow_and_update().clone();
            let record = RegionRecord {
                region: node.region().to_owned(),
                leader: Some(me),
                global_members: live_global_members(
                    me,
                    node.is_global_member(),
                    &inputs.members.borrow_and_update(),
                ),
                last_rollup_ms: rollups.last_published_ms,
                rollup_error: rollups.last_error,
                global_p99_lag_ms: inputs
                    .global
                    .as_ref()
                    .and_then(|g| g.global_p99_lag_secs())
                    .map(|s| s * 1000.0),
                updated_ms: patina_node::unix_ms(),
            };
            let now = Instant::now();
            match when_due(written.as_ref().map(|(r, at)| (r, *at)), &record, now) {
                Due::No => {}
                Due::At(at) => wake = Some(at),
                Due::Now => match node.record_region(&record).await {
                    Ok(_) => {
                        tracing::debug!(region = %record.region, "region row written");
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
        }
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
/// regions is at most this late.
pub(crate) const ROLLUP_TIME_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq, Eq)]
enum Due {
    Now,
    /// Only the rollup time moved: write then (if nothing more urgent
    /// comes first).
    At(Instant),
    No,
}

/// When the row should be written, given the one last written (and
/// when). What the row says — leader, global members, rollup error, a
/// first publication — writes at once; a later rollup time alone waits out
/// [`ROLLUP_TIME_EVERY`]; the lag and the write time alone never write:
/// they change with every sample, and writing them would itself be global
/// traffic that moves other regions' lag.
fn when_due(written: Option<(&RegionRecord, Instant)>, now: &RegionRecord, at: Instant) -> Due {
    let Some((w, written_at)) = written else {
        return Due::Now;
    };
    let says = |r: &RegionRecord| {
        (
            r.region.clone(),
            r.leader,
            r.global_members.clone(),
            r.rollup_error.clone(),
            // The first publication is news; later ones are its time.
            r.last_rollup_ms.is_some(),
        )
    };
    if says(w) != says(now) {
        return Due::Now;
    }
    if w.last_rollup_ms == now.last_rollup_ms {
        return Due::No;
    }
    let next = written_at + ROLLUP_TIME_EVERY;
    if at >= next {
        Due::Now
    } else {
        Due::At(next)
    }
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
    fn written_on_takeover_and_at_once_when_what_it_says_changes() {
        let t0 = Instant::now();
        let first = record(&[1, 2], None, None);
        assert_eq!(when_due(None, &first, t0), Due::Now, "taking over");
        assert_eq!(when_due(Some((&first, t0)), &first, t0), Due::No);
        assert_eq!(
            when_due(Some((&first, t0)), &record(&[1], None, None), t0),
            Due::Now,
            "a member went"
        );
        let failing = RegionRecord {
            rollup_error: Some("rollup \"app_regions\": CHECK constraint failed".into()),
            ..first.clone()
        };
        assert_eq!(when_due(Some((&first, t0)), &failing, t0), Due::Now);
        assert_eq!(
            when_due(Some((&failing, t0)), &first, t0),
            Due::Now,
            "recovered"
        );
        assert_eq!(
            when_due(Some((&first, t0)), &record(&[1, 2], Some(9), None), t0),
            Due::Now,
            "the first publication since taking over"
        );
    }

    #[test]
    fn a_later_rollup_time_alone_waits_out_the_interval() {
        let t0 = Instant::now();
        let first = record(&[1, 2], Some(9), None);
        let published = record(&[1, 2], Some(10), None);
        let soon = t0 + Duration::from_millis(300);
        assert_eq!(
            when_due(Some((&first, t0)), &published, soon),
            Due::At(t0 + ROLLUP_TIME_EVERY)
        );
        assert_eq!(
            when_due(Some((&first, t0)), &published, t0 + ROLLUP_TIME_EVERY),
            Due::Now
        );
        // A first publication after a long quiet is written at once.
        assert_eq!(
            when_due(Some((&first, t0)), &published, t0 + ROLLUP_TIME_EVERY * 3),
            Due::Now
        );
    }

    #[test]
    fn lag_and_time_alone_write_nothing() {
        let t0 = Instant::now();
        let first = record(&[1, 2], Some(9), Some(3.0));
        let later = RegionRecord {
            updated_ms: 99,
            ..record(&[1, 2], Some(9), Some(250.0))
        };
        assert_eq!(
            when_due(Some((&first, t0)), &later, t0 + ROLLUP_TIME_EVERY * 9),
            Due::No
        );
    }
}
