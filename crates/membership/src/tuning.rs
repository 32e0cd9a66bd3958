//! [`SwimTuning`]: foca's settings for the cluster's actual size, re-tuned
//! as members come and go. Sans-I/O: the membership task (and the fleet
//! simulator) tell it the member count after every foca call and hand
//! what it returns to `Foca::set_config`.
//!
//! Why: foca retransmits each membership update `max_transmissions` times
//! (≈ 4·log10 of the size it is tuned for) piggybacked on probes and
//! gossip. Tuned for a fixed 16 members, that is 4 copies; a region of
//! 50–125 members then now and then has a member that gets none of a
//! down, and keeps a dead member (a dead leader: seen in the fleet
//! simulator) until its own probe round reaches it. Suspicion, the other
//! size-dependent setting, is what crash detection waits for.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

/// foca's packet limit. A QUIC datagram carries at least ~1160 bytes (the
/// 1200-byte minimum path MTU less QUIC's headers); the cluster tag takes
/// up to 66 more; 1024 fits with any cluster name.
pub const MAX_PACKET_BYTES: usize = 1024;

/// Which of foca's timing profiles a cluster runs ([`SwimTuning`] sets
/// them for the cluster's size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwimProfile {
    /// A region: members a millisecond apart; probes every 300 ms,
    /// suspicion of 2–3 s.
    Lan,
    /// The global cluster: members on other continents, 100–300 ms
    /// round trips and lossier paths; probes every 5 s and ≈ 36 s of
    /// suspicion so a slow path is not mistaken for a dead member.
    Wan,
}

/// How often announces go to members held as down (partition healing).
const DOWN_MEMBERS_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(2);

/// The smallest size the tuning assumes: clusters of up to this many
/// members run the settings for it.
pub const TUNED_SIZE_MIN: u32 = 16;

/// A region's probe period. With members a millisecond apart, a probe
/// every 300 ms finds a crashed member ≈ 3× sooner than foca's 1 s LAN
/// default, for a ping and an ack per member per period (≈ 3× the
/// membership bytes).
pub const LAN_PROBE_PERIOD: Duration = Duration::from_millis(300);

/// A region's probe round trip before indirect probes go out; the
/// indirect probes get the rest of the period. In-region round trips are
/// 0.3–2 ms; 100 ms leaves room for a loaded host.
pub const LAN_PROBE_RTT: Duration = Duration::from_millis(100);

/// A region's suspicion at [`TUNED_SIZE_MIN`] members: ≈ 6.7 probe
/// periods for the suspect to hear of it (gossip every 200 ms) and refute.
pub const LAN_SUSPICION_BASE: Duration = Duration::from_secs(2);

/// Added to a region's suspicion per doubling above [`TUNED_SIZE_MIN`]:
/// a suspicion takes a little longer to reach the suspect in a larger
/// cluster. 2.45 s at 128 members, 2.9 s at 1,024.
pub const LAN_SUSPICION_PER_DOUBLING: Duration = Duration::from_millis(150);

/// A tuning is shrunk only once the cluster is this fraction of its tuned
/// size or smaller (7/16: 56 of 128), so that a cluster whose size
/// hovers around a power of two does not re-tune on every join and
/// leave. It grows as soon as the size passes the tuned one.
const SHRINK_AT_NUMERATOR: u32 = 7;
const SHRINK_AT_DENOMINATOR: u32 = 16;

/// foca's settings for one cluster, following its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwimTuning {
    profile: SwimProfile,
    /// The size the settings are for: a power of two ≥ [`TUNED_SIZE_MIN`]
    /// when adaptive.
    tuned_for: u32,
    adaptive: bool,
}

impl SwimTuning {
    /// The agent's tuning: starts at [`TUNED_SIZE_MIN`] and follows the
    /// cluster's size by powers of two.
    pub fn adaptive(profile: SwimProfile) -> SwimTuning {
        SwimTuning {
            profile,
            tuned_for: TUNED_SIZE_MIN,
            adaptive: true,
        }
    }

    /// foca's own profile tuned for `cluster_size` members, never
    /// re-tuned: what the agent ran before the tuning was adaptive (1 s
    /// probes in a region, 4 retransmissions at 16). The fleet simulator
    /// pins it to compare.
    pub fn fixed(profile: SwimProfile, cluster_size: u32) -> SwimTuning {
        SwimTuning {
            profile,
            tuned_for: cluster_size.max(1),
            adaptive: false,
        }
    }

    /// The size the current settings are for.
    pub fn tuned_for(&self) -> u32 {
        self.tuned_for
    }

    /// foca's configuration for the current size.
    pub fn config(&self) -> foca::Config {
        if self.adaptive {
            adaptive_config(self.profile, self.tuned_for)
        } else {
            fixed_config(self.profile, self.tuned_for)
        }
    }

    /// The cluster has `members` active members, this node included. When
    /// that moves the tuning to another size, the new configuration (for
    /// `Foca::set_config`, which accepts it: probe period and round trip
    /// never change).
    pub fn observe(&mut self, members: usize) -> Option<foca::Config> {
        if !self.adaptive {
            return None;
        }
        let members = u32::try_from(members).unwrap_or(u32::MAX);
        let next = next_tuned_size(self.tuned_for, members);
        if next == self.tuned_for {
            return None;
        }
        self.tuned_for = next;
        Some(self.config())
    }
}

/// The size to tune for, from `tuned_for`, once the cluster has `members`.
fn next_tuned_size(tuned_for: u32, members: u32) -> u32 {
    let fit = members
        .max(TUNED_SIZE_MIN)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31);
    if fit > tuned_for {
        return fit;
    }
    let shrink_at =
        u64::from(tuned_for) * u64::from(SHRINK_AT_NUMERATOR) / u64::from(SHRINK_AT_DENOMINATOR);
    if fit < tuned_for && u64::from(members) <= shrink_at {
        return fit;
    }
    tuned_for
}

/// Doublings of `size` above [`TUNED_SIZE_MIN`].
fn doublings(size: u32) -> u32 {
    (size.max(TUNED_SIZE_MIN) / TUNED_SIZE_MIN).ilog2()
}

fn adaptive_config(profile: SwimProfile, size: u32) -> foca::Config {
    let size = NonZeroU32::new(size).unwrap_or(NonZeroU32::MIN);
    let mut config = match profile {
        SwimProfile::Lan => {
            let mut config = foca::Config::new_lan(size);
            config.probe_period = LAN_PROBE_PERIOD;
            config.probe_rtt = LAN_PROBE_RTT;
            config.suspect_to_down_after =
                LAN_SUSPICION_BASE + LAN_SUSPICION_PER_DOUBLING * doublings(size.get());
            config
        }
        SwimProfile::Wan => {
            // Paths between continents are slow and lossy: the WAN timing
            // (5 s probes, 3 s round trip, ≈ 36 s suspicion) stays as at
            // 16 members; only the retransmissions follow the size, so a
            // down reaches every global member.
            let mut config =
                foca::Config::new_wan(NonZeroU32::new(TUNED_SIZE_MIN).unwrap_or(NonZeroU32::MIN));
            config.max_transmissions = foca::Config::new_wan(size).max_transmissions;
            config
        }
    };
    patina_settings(&mut config);
    config
}

/// foca's own profile at `cluster_size` (see [`SwimTuning::fixed`]).
fn fixed_config(profile: SwimProfile, cluster_size: u32) -> foca::Config {
    let size = NonZeroU32::new(cluster_size).unwrap_or(NonZeroU32::MIN);
    let mut config = match profile {
        SwimProfile::Lan => foca::Config::new_lan(size),
        SwimProfile::Wan => foca::Config::new_wan(size),
    };
    patina_settings(&mut config);
    config
}

/// What Patina sets whatever the size.
fn patina_settings(config: &mut foca::Config) {
    config.max_packet_size = NonZeroUsize::new(MAX_PACKET_BYTES).unwrap_or(NonZeroUsize::MIN);
    // After a partition heals, each side holds the other as down and
    // SWIM never probes down members: only these announces reconnect
    // them. The LAN profile's 65 s leaves a healed region split for a
    // minute; 2 s costs two small packets per node every 2 s, and only
    // while some member is down.
    config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: DOWN_MEMBERS_ANNOUNCE_INTERVAL,
        num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lan() -> SwimTuning {
        SwimTuning::adaptive(SwimProfile::Lan)
    }

    /// Feeds member counts in turn; returns the tuned size after each.
    fn walk(tuning: &mut SwimTuning, counts: impl IntoIterator<Item = usize>) -> Vec<u32> {
        counts
            .into_iter()
            .map(|n| {
                tuning.observe(n);
                tuning.tuned_for()
            })
            .collect()
    }

    #[test]
    fn small_clusters_keep_the_smallest_tuning() {
        let mut t = lan();
        assert_eq!(walk(&mut t, [1, 2, 8, 16, 3]), vec![16; 5]);
    }

    #[test]
    fn grows_when_the_size_passes_a_power_of_two() {
        let mut t = lan();
        assert!(t.observe(16).is_none());
        let grown = t.observe(17).map(|c| c.max_transmissions);
        assert_eq!(t.tuned_for(), 32);
        assert!(grown.is_some());
        assert!(t.observe(32).is_none());
        assert_eq!(walk(&mut t, [33, 125, 129]), vec![64, 128, 256]);
        // A jump goes straight to the size that fits.
        let mut t = lan();
        assert_eq!(walk(&mut t, [125]), vec![128]);
    }

    #[test]
    fn shrinks_only_well_below_the_tuned_size() {
        let mut t = lan();
        t.observe(125);
        // 128 shrinks once the cluster is 56 or fewer (7/16 of 128).
        assert_eq!(walk(&mut t, [64, 60, 57]), vec![128; 3]);
        assert!(t.observe(56).is_some());
        assert_eq!(t.tuned_for(), 64);
        // A collapse goes straight down.
        assert_eq!(walk(&mut t, [3]), vec![16]);
    }

    #[test]
    fn a_size_hovering_around_a_power_of_two_does_not_flap() {
        let mut t = lan();
        t.observe(65);
        let changes = [64, 65, 63, 66, 60, 65, 58, 64]
            .into_iter()
            .filter(|&n| t.observe(n).is_some())
            .count();
        assert_eq!(changes, 0);
        assert_eq!(t.tuned_for(), 128);
    }

    #[test]
    fn a_region_probes_every_300_ms_and_suspects_for_2_s_plus_150_ms_per_doubling() {
        let mut t = lan();
        let at = |t: &SwimTuning| {
            let c = t.config();
            assert_eq!(c.probe_period, Duration::from_millis(300));
            assert_eq!(c.probe_rtt, Duration::from_millis(100));
            (c.suspect_to_down_after, c.max_transmissions.get())
        };
        assert_eq!(at(&t), (Duration::from_millis(2_000), 4));
        t.observe(32);
        assert_eq!(at(&t), (Duration::from_millis(2_150), 6));
        t.observe(125);
        assert_eq!(at(&t), (Duration::from_millis(2_450), 8));
        t.observe(1_000);
        assert_eq!(at(&t), (Duration::from_millis(2_900), 12));
    }

    /// A crash is found by someone's probe within about a period, suspected
    /// at the end of it, declared down after the suspicion: at a 125-member
    /// region well within 5 s, with the down's dissemination.
    #[test]
    fn a_region_of_125_detects_a_crash_well_within_5_s() {
        let mut t = lan();
        t.observe(125);
        let c = t.config();
        let worst = c.probe_period * 2 + c.suspect_to_down_after;
        assert!(worst < Duration::from_millis(3_100), "{worst:?}");
    }

    #[test]
    fn the_global_cluster_keeps_its_wan_timing_and_scales_retransmissions() {
        let mut t = SwimTuning::adaptive(SwimProfile::Wan);
        let small = t.config();
        t.observe(120);
        let large = t.config();
        assert_eq!(large.probe_period, Duration::from_secs(5));
        assert_eq!(large.probe_period, small.probe_period);
        assert_eq!(large.probe_rtt, small.probe_rtt);
        assert_eq!(large.suspect_to_down_after, small.suspect_to_down_after);
        assert_eq!(small.max_transmissions.get(), 4);
        assert_eq!(large.max_transmissions.get(), 8);
    }

    #[test]
    fn foca_accepts_every_re_tuning() {
        use crate::identity::{SwimId, WireCodec};
        use patina_wire::{ActorId, ClusterName, NodeIdentity};
        use rand::rngs::StdRng;
        use rand::SeedableRng;

        for profile in [SwimProfile::Lan, SwimProfile::Wan] {
            let mut t = SwimTuning::adaptive(profile);
            let cluster = ClusterName::new("r").expect("a valid name");
            let identity = NodeIdentity {
                actor: ActorId([1; 16]),
                addr: "127.0.0.1:1".parse().expect("an address"),
                cluster: cluster.clone(),
                region: cluster.clone(),
                global_member: false,
                generation: 0,
            };
            let mut foca: foca::Foca<SwimId, WireCodec, StdRng, foca::NoCustomBroadcast> =
                foca::Foca::new(
                    SwimId(identity),
                    t.config(),
                    StdRng::seed_from_u64(1),
                    WireCodec::new(cluster, ActorId([1; 16])),
                );
            for n in [17, 40, 125, 600, 200, 20, 3] {
                if let Some(config) = t.observe(n) {
                    assert!(foca.set_config(config).is_ok(), "{profile:?} at {n}");
                }
            }
        }
    }

    #[test]
    fn a_fixed_tuning_never_changes() {
        let mut t = SwimTuning::fixed(SwimProfile::Lan, 64);
        assert!(t.observe(1_000).is_none());
        assert_eq!(t.tuned_for(), 64);
        let c = t.config();
        assert_eq!(c.probe_period, Duration::from_secs(1));
        assert_eq!(c.max_transmissions.get(), 7);
        assert_eq!(c.max_packet_size.get(), MAX_PACKET_BYTES);
    }
}
