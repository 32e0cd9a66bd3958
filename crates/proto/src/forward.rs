//! Whether, and when, a chunk received from a peer goes on to the
//! broadcast plan ([`ForwardPolicy`]); to whom is
//! `BroadcastConfig::targets`. Both read the cluster's shape the same way
//! ([`Role`]), so a chunk is only handed on when it may have targets.

/// How a version reached this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop<P> {
    /// Committed here.
    Local,
    /// Received from `from` and new here; `from_origin` when `from` is the
    /// version's own actor.
    Received { from: P, from_origin: bool },
    /// Merged from this node's other cluster and handed into this one by a
    /// global member's relay (docs/regions.md). Receivers see a sender that
    /// is not the version's actor and would act as leaves of the two-hop
    /// tree, so the relay itself reaches every peer a tree would.
    Relayed,
}

/// Where a node that received a version from a peer stands in its spread
/// (`docs/replication.md`, Broadcast).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The origin pushed to every member: nobody forwards.
    ReachedByOrigin,
    /// Got it from a relay of the two-hop tree: forwards nothing.
    Leaf,
    /// Got it from the origin in a tree-sized cluster: one of the relays,
    /// unless the members' views differ for a moment (its place in the
    /// tree's order decides).
    Relay,
    /// A cluster too large for the tree: infect-and-die gossip.
    Gossip,
}

/// What becomes of a chunk received from a peer, decided on its arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward<P> {
    /// Hand it to the broadcast plan now, before merging it: a relay of the
    /// tree forwards on arrival so leaves do not wait for its commit (a
    /// chunk the relay then refuses is refused by the leaves too). The
    /// origin pushes each chunk once, so it is new here.
    OnArrival(Hop<P>),
    /// Hand it on once merged, if it was new here (gossip: a duplicate has
    /// been spread already).
    IfFresh(Hop<P>),
    /// Keep it: the origin pushed to everyone, this node is a leaf of the
    /// tree, or broadcast is off.
    Never,
}

impl<P> Forward<P> {
    /// The hop to hand to the broadcast plan once the chunk is merged;
    /// `fresh` when it was new here.
    pub fn on_applied(self, fresh: bool) -> Option<Hop<P>> {
        match self {
            Forward::IfFresh(hop) if fresh => Some(hop),
            _ => None,
        }
    }
}

/// Forwarding of received chunks, from the broadcast shape
/// (`BroadcastConfig::forward_policy`). Only the base `fanout` and the
/// tree's size decide a role; how many peers a gossiping node pushes to
/// (`BroadcastConfig::gossip_fanout`, grown with the cluster) changes who
/// gets a chunk, not whether a receiver forwards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardPolicy {
    enabled: bool,
    fanout: usize,
    tree_max_peers: usize,
}

impl ForwardPolicy {
    /// `enabled`: broadcast is on (off, sync alone replicates and nothing
    /// is forwarded).
    pub fn new(enabled: bool, fanout: usize, tree_max_peers: usize) -> ForwardPolicy {
        ForwardPolicy {
            enabled,
            fanout,
            tree_max_peers,
        }
    }

    /// A chunk arrived from `from` (`from_origin`: the version's own
    /// actor), with `peers` live (this node not among them).
    pub fn on_arrival<P: PartialEq>(&self, from: P, from_origin: bool, peers: &[P]) -> Forward<P> {
        if !self.enabled {
            return Forward::Never;
        }
        match self.role(&from, from_origin, peers) {
            Role::ReachedByOrigin | Role::Leaf => Forward::Never,
            Role::Relay => Forward::OnArrival(Hop::Received { from, from_origin }),
            Role::Gossip if from_origin => Forward::OnArrival(Hop::Received { from, from_origin }),
            Role::Gossip => Forward::IfFresh(Hop::Received { from, from_origin }),
        }
    }

    pub(crate) fn role<P: PartialEq>(&self, from: &P, from_origin: bool, peers: &[P]) -> Role {
        // The origin's peers as seen here: everyone but the origin (this
        // node included).
        let origin_peers = peers.iter().filter(|p| *p != from).count() + 1;
        if origin_peers <= self.fanout {
            Role::ReachedByOrigin
        } else if origin_peers <= self.tree_max_peers {
            if from_origin {
                Role::Relay
            } else {
                Role::Leaf
            }
        } else {
            Role::Gossip
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fanout 3, tree up to 15 peers.
    fn policy() -> ForwardPolicy {
        ForwardPolicy::new(true, 3, 15)
    }

    fn peers(n: u32) -> Vec<u32> {
        (1..=n).collect()
    }

    fn received(from: u32, from_origin: bool) -> Hop<u32> {
        Hop::Received { from, from_origin }
    }

    #[test]
    fn with_broadcast_off_nothing_is_forwarded() {
        let off = ForwardPolicy::new(false, 3, 15);
        for n in [2, 8, 30] {
            for from_origin in [true, false] {
                assert_eq!(off.on_arrival(1, from_origin, &peers(n)), Forward::Never);
            }
        }
    }

    #[test]
    fn when_the_origin_pushed_to_everyone_nobody_forwards() {
        for from_origin in [true, false] {
            assert_eq!(
                policy().on_arrival(1, from_origin, &peers(3)),
                Forward::Never
            );
        }
    }

    #[test]
    fn an_origin_not_yet_among_the_live_peers_still_counts() {
        // Peers 2..=4 live here, the origin 9 not yet: it has 4 peers.
        assert_eq!(
            policy().on_arrival(9, true, &[2, 3, 4]),
            Forward::OnArrival(received(9, true))
        );
    }

    #[test]
    fn in_the_tree_a_chunk_from_its_origin_goes_on_at_arrival() {
        assert_eq!(
            policy().on_arrival(1, true, &peers(9)),
            Forward::OnArrival(received(1, true))
        );
    }

    #[test]
    fn in_the_tree_a_chunk_from_a_relay_stops_at_the_leaf() {
        assert_eq!(policy().on_arrival(1, false, &peers(9)), Forward::Never);
    }

    #[test]
    fn gossip_forwards_from_the_origin_at_arrival_and_from_others_once_merged_if_fresh() {
        let p = policy();
        assert_eq!(
            p.on_arrival(1, true, &peers(30)),
            Forward::OnArrival(received(1, true))
        );
        let later = p.on_arrival(1, false, &peers(30));
        assert_eq!(later, Forward::IfFresh(received(1, false)));
        assert_eq!(later.on_applied(true), Some(received(1, false)));
        assert_eq!(later.on_applied(false), None, "a duplicate went on already");
    }

    #[test]
    fn what_went_on_at_arrival_or_never_does_not_go_again_after_merging() {
        assert_eq!(Forward::OnArrival(received(1, true)).on_applied(true), None);
        assert_eq!(Forward::<u32>::Never.on_applied(true), None);
    }

    #[test]
    fn roles_follow_the_cluster_size_around_the_origin() {
        let p = policy();
        assert_eq!(p.role(&1, true, &peers(3)), Role::ReachedByOrigin);
        assert_eq!(p.role(&1, true, &peers(4)), Role::Relay);
        assert_eq!(p.role(&1, false, &peers(15)), Role::Leaf);
        assert_eq!(p.role(&1, true, &peers(16)), Role::Gossip);
    }
}
