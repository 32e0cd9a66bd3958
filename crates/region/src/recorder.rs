//! The region recorder: while this node leads its region, it keeps the
//! region's row of `global.patina_regions` (see
//! [`RegionRecord`](patina_node::RegionRecord)) saying who leads, the live
//! global members and when rollups were last published. The row is
//! written when one of those changes, never on a timer: an idle fleet
//! sends nothing for it, and the global lag it carries is the leader's as
//! of that write (`updated_ms`).

use std::time::Duration;

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
    let mut written: Option<RegionRecord> = None;
    let mut publishing = true;
    loop {
        let leading = *inputs.leader.borrow_and_update() == Some(me);
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
            if due(written.as_ref(), &record) {
                match node.record_region(&record).await {
                    Ok(_) => {
                        tracing::debug!(region = %record.region, "region row written");
                        written = Some(record);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "writing this region's row of patina_regions failed; retrying");
                        tokio::time::sleep(RETRY_AFTER).await;
                        continue;
                    }
                }
            }
        }
        tokio::select! {
            r = inputs.leader.changed() => if r.is_err() { return },
            r = inputs.members.changed() => if r.is_err() { return },
            // Without rollups no publisher runs: the status never changes.
            r = inputs.rollups.changed(), if publishing => publishing = r.is_ok(),
        }
    }
}

/// Whether `now` says something the row last written does not. The lag
/// and the write time alone never make a write: they change with every
/// sample, and writing them would itself be global traffic that moves
/// other regions' lag.
fn due(written: Option<&RegionRecord>, now: &RegionRecord) -> bool {
    written.is_none_or(|w| {
        let says = |r: &'_ RegionRecord| {
            (
                r.region.clone(),
                r.leader,
                r.global_members.clone(),
                r.last_rollup_ms,
                r.rollup_error.clone(),
            )
        };
        says(w) != says(now)
    })
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
    fn written_on_takeover_and_on_what_it_says_changing() {
        let first = record(&[1, 2], None, None);
        assert!(due(None, &first), "taking over writes the row");
        assert!(!due(Some(&first), &first));
        assert!(
            due(Some(&first), &record(&[1], None, None)),
            "a member went"
        );
        assert!(
            due(Some(&first), &record(&[1, 2], Some(9), None)),
            "rollups published"
        );
        let failing = RegionRecord {
            rollup_error: Some("rollup \"app_regions\": CHECK constraint failed".into()),
            ..first.clone()
        };
        assert!(due(Some(&first), &failing), "rollups started failing");
        assert!(due(Some(&failing), &first), "and recovered");
    }

    #[test]
    fn lag_and_time_alone_write_nothing() {
        let first = record(&[1, 2], Some(9), Some(3.0));
        let later = RegionRecord {
            updated_ms: 99,
            ..record(&[1, 2], Some(9), Some(250.0))
        };
        assert!(!due(Some(&first), &later));
    }
}
