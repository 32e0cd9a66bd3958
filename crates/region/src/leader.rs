//! The region's leader as this node sees it: recomputed whenever the
//! regional membership changes.

use patina_membership::{alive, Member};
use patina_proto::region_leader;
use patina_wire::ActorId;
use tokio::sync::watch;

/// The leader among `members` (this node's regional peers) and this node
/// itself when it is a global member.
pub(crate) fn leader_of(me: ActorId, me_global: bool, members: &[Member]) -> Option<ActorId> {
    region_leader(live_global_members(me, me_global, members))
}

/// The region's live global members as this node sees them (itself
/// included when it is one), sorted.
pub(crate) fn live_global_members(
    me: ActorId,
    me_global: bool,
    members: &[Member],
) -> Vec<ActorId> {
    let mut out: Vec<ActorId> = alive(members)
        .filter(|id| id.global_member)
        .map(|id| id.actor)
        .chain(me_global.then_some(me))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Keeps `leader` current as the membership changes, until the membership
/// ends.
pub(crate) async fn follow(
    me: ActorId,
    me_global: bool,
    mut members: watch::Receiver<Vec<Member>>,
    leader: watch::Sender<Option<ActorId>>,
) {
    loop {
        let now = leader_of(me, me_global, &members.borrow_and_update());
        leader.send_if_modified(|was| {
            if *was == now {
                return false;
            }
            tracing::info!(leader = ?now.map(|a| a.to_string()), "region leader changed");
            *was = now;
            true
        });
        if members.changed().await.is_err() {
            return;
        }
    }
}
