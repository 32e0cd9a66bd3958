//! [`SyncPace`]: how often a node runs anti-entropy rounds. At the fastest
//! while anything happens; slower and slower while rounds find every peer
//! in sync (idle regions cost little); back to the fastest on the first
//! sign of activity.

use std::time::Duration;

/// The interval between sync rounds.
#[derive(Debug, Clone)]
pub struct SyncPace {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl SyncPace {
    /// Rounds every `min` at first; never further apart than `max`.
    pub fn new(min: Duration, max: Duration) -> SyncPace {
        SyncPace {
            min,
            max: max.max(min),
            current: min,
        }
    }

    /// The wait before the next round.
    pub fn interval(&self) -> Duration {
        self.current
    }

    /// A round ended. `quiet`: every peer asked answered that it holds
    /// what this node holds — the next round may wait twice as long. Else
    /// (a peer differed, or did not answer) rounds run at the fastest.
    pub fn on_round(&mut self, quiet: bool) {
        self.current = if quiet {
            self.current.saturating_mul(2).min(self.max)
        } else {
            self.min
        };
    }

    /// Something happened that a round may have to spread or repair: this
    /// node committed or merged a version, a peer asking it showed a
    /// different digest, the membership changed. Rounds run at the fastest.
    pub fn on_activity(&mut self) {
        self.current = self.min;
    }

    /// Whether rounds run at the fastest now.
    pub fn is_fastest(&self) -> bool {
        self.current == self.min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn quiet_rounds_back_off_to_the_maximum() {
        let mut p = SyncPace::new(ms(200), ms(3200));
        let mut seen = vec![p.interval()];
        for _ in 0..6 {
            p.on_round(true);
            seen.push(p.interval());
        }
        assert_eq!(
            seen,
            [200, 400, 800, 1600, 3200, 3200, 3200].map(ms).to_vec()
        );
    }

    #[test]
    fn a_difference_or_any_activity_snaps_back() {
        let mut p = SyncPace::new(ms(200), ms(3200));
        p.on_round(true);
        p.on_round(true);
        p.on_round(false);
        assert!(p.is_fastest());
        p.on_round(true);
        p.on_activity();
        assert_eq!(p.interval(), ms(200));
    }
}
