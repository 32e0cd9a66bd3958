//! [`LagWindow`]: replication lag samples of the last minute, for the
//! health endpoint's `p99_lag` (a deploy gate: it must fall back once a
//! slow spell is over, so old samples expire).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Samples older than this no longer count.
pub const LAG_WINDOW: Duration = Duration::from_secs(60);
/// Samples kept at most; the oldest go first (at thousands of writes per
/// second the window is then shorter than a minute, which still tells).
pub const LAG_SAMPLES_MAX: usize = 4096;

#[derive(Debug, Default)]
pub struct LagWindow {
    samples: VecDeque<(Instant, u64)>,
}

impl LagWindow {
    /// Records that a version committed `lag_ms` ago was applied at `now`.
    pub fn record(&mut self, now: Instant, lag_ms: u64) {
        if self.samples.len() == LAG_SAMPLES_MAX {
            self.samples.pop_front();
        }
        self.samples.push_back((now, lag_ms));
    }

    /// The 99th percentile of the samples of the last [`LAG_WINDOW`], in
    /// milliseconds; `None` without samples.
    pub fn p99_ms(&mut self, now: Instant) -> Option<u64> {
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > LAG_WINDOW)
        {
            self.samples.pop_front();
        }
        let mut lags: Vec<u64> = self.samples.iter().map(|(_, l)| *l).collect();
        if lags.is_empty() {
            return None;
        }
        lags.sort_unstable();
        // Nearest rank: the smallest sample with at least 99 % at or below it.
        let rank = (lags.len() * 99).div_ceil(100);
        Some(lags[rank.saturating_sub(1)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_nearest_rank_and_old_samples_expire() {
        let t0 = Instant::now();
        let mut w = LagWindow::default();
        assert_eq!(w.p99_ms(t0), None);
        for lag in 1..=100 {
            w.record(t0, lag);
        }
        assert_eq!(w.p99_ms(t0), Some(99));
        w.record(t0 + Duration::from_secs(30), 5_000);
        assert_eq!(w.p99_ms(t0 + Duration::from_secs(30)), Some(100));
        // A minute later only the slow one is left; then nothing.
        assert_eq!(w.p99_ms(t0 + Duration::from_secs(61)), Some(5_000));
        assert_eq!(w.p99_ms(t0 + Duration::from_secs(91)), None);
    }

    #[test]
    fn the_window_is_bounded() {
        let t0 = Instant::now();
        let mut w = LagWindow::default();
        for lag in 0..(LAG_SAMPLES_MAX as u64 + 10) {
            w.record(t0, lag);
        }
        assert_eq!(w.samples.len(), LAG_SAMPLES_MAX);
        assert_eq!(w.samples.front().map(|s| s.1), Some(10));
    }
}
