//! The regional layer's decisions (docs/regions.md): who leads a region,
//! and when its leader evaluates the rollups ([`RollupSchedule`]) and what
//! it then writes ([`rollup_diff`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use patina_wire::ActorId;

/// A region's leader: of the live global members of the region (as this
/// node's regional membership sees them, itself included when it is one),
/// the one with the smallest actor id. No election: every member with the
/// same view names the same leader, and a moment of differing views makes
/// two leaders write the same idempotent rows.
pub fn region_leader(live_global_members: impl IntoIterator<Item = ActorId>) -> Option<ActorId> {
    live_global_members.into_iter().min()
}

/// When a leader evaluates its rollups.
#[derive(Debug, Clone)]
pub struct RollupTiming {
    /// After a change to a source table, wait this long for more before
    /// evaluating (a burst of writes costs one evaluation).
    pub quiet: Duration,
    /// But never leave a change unevaluated longer than this, however
    /// steadily writes keep coming.
    pub max_delay: Duration,
    /// Evaluate this often even without a change: repairs rows of the
    /// region that anything but this leader changed in the target.
    pub reconcile_every: Duration,
}

impl Default for RollupTiming {
    fn default() -> Self {
        RollupTiming {
            quiet: Duration::from_millis(50),
            max_delay: Duration::from_millis(250),
            reconcile_every: Duration::from_secs(30),
        }
    }
}

/// Debounces source-table changes into rollup evaluations, and only while
/// this node leads: fed leadership and change events, it says when the
/// next evaluation is due.
#[derive(Debug, Clone)]
pub struct RollupSchedule {
    timing: RollupTiming,
    leading: bool,
    /// The first change not yet evaluated.
    dirty_since: Option<Instant>,
    /// The latest change not yet evaluated.
    last_change: Option<Instant>,
    last_run: Option<Instant>,
    /// Evaluations that failed in a row: each doubles the wait before the
    /// next try (a rollup whose rows the target refuses must not retry four
    /// times a second for good).
    failures: u32,
    /// The first source change since the last failed evaluation.
    changed_since_failure: Option<Instant>,
}

/// The longest wait between retries of a failing evaluation.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// A failing evaluation is retried this soon after a source change.
const RETRY_AFTER_CHANGE: Duration = Duration::from_secs(1);

impl RollupSchedule {
    pub fn new(timing: RollupTiming) -> RollupSchedule {
        RollupSchedule {
            timing,
            leading: false,
            dirty_since: None,
            last_change: None,
            last_run: None,
            failures: 0,
            changed_since_failure: None,
        }
    }

    pub fn leading(&self) -> bool {
        self.leading
    }

    /// This node's leadership, as of `now`. Taking over evaluates at once:
    /// the target may hold what a previous leader wrote from older data.
    pub fn on_leadership(&mut self, leading: bool, now: Instant) {
        if leading && !self.leading {
            self.dirty_since = Some(now);
            self.last_change = Some(now - self.timing.quiet);
        }
        self.leading = leading;
    }

    /// A commit changed one of the rollups' source tables at `now`.
    pub fn on_source_change(&mut self, now: Instant) {
        self.dirty_since.get_or_insert(now);
        self.last_change = Some(now);
        if self.failures > 0 {
            self.changed_since_failure.get_or_insert(now);
        }
    }

    /// When the next evaluation is due; `None` while not leading.
    pub fn next_run(&self) -> Option<Instant> {
        if !self.leading {
            return None;
        }
        if self.failures > 0 {
            let wait = self
                .timing
                .max_delay
                .saturating_mul(1 << self.failures.min(16))
                .min(RETRY_MAX);
            // `on_failed` set `last_run`.
            let retry = self.last_run.map(|at| at + wait);
            // A change since may be the fix (the operator deleted the row
            // the target refused): tried within a second of it, not after
            // up to 30 s — and still at most once a second under churn.
            let after_change = self
                .changed_since_failure
                .zip(self.last_run)
                .map(|(first, run)| (first + self.timing.quiet).max(run + RETRY_AFTER_CHANGE));
            return match (retry, after_change) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        match (self.dirty_since, self.last_change) {
            (Some(first), Some(last)) => {
                Some((last + self.timing.quiet).min(first + self.timing.max_delay))
            }
            _ => self.last_run.map(|at| at + self.timing.reconcile_every),
        }
    }

    /// Whether an evaluation is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.next_run().is_some_and(|at| at <= now)
    }

    /// An evaluation started at `now`: changes until now are covered by
    /// it, if it succeeds.
    pub fn on_run(&mut self, now: Instant) {
        self.dirty_since = None;
        self.last_change = None;
        self.changed_since_failure = None;
        self.last_run = Some(now);
    }

    /// The evaluation started by the last [`on_run`](Self::on_run)
    /// succeeded.
    pub fn on_succeeded(&mut self) {
        self.failures = 0;
    }

    /// The evaluation started at `started` failed (the node is busy, a row
    /// is refused by the target): retried after `max_delay`, then after
    /// twice that, and so on up to 30 s — or 1 s after a source change,
    /// whichever comes first.
    pub fn on_failed(&mut self, started: Instant) {
        self.failures = self.failures.saturating_add(1);
        self.last_run = Some(started);
        self.dirty_since.get_or_insert(started);
        self.last_change.get_or_insert(started);
    }
}

/// What a leader writes to bring its region's rows of a rollup target from
/// `current` to `wanted` (both keyed by the rollup key): only rows that are
/// new or differ, and deletes of rows the query no longer returns. Writing
/// nothing when nothing changed is what makes a re-evaluation (a second
/// leader, a reconcile) cost no version.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupDiff<K, V> {
    pub upserts: Vec<(K, V)>,
    pub deletes: Vec<K>,
}

impl<K, V> RollupDiff<K, V> {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }
}

pub fn rollup_diff<K: Ord + Clone, V: PartialEq + Clone>(
    current: &BTreeMap<K, V>,
    wanted: &BTreeMap<K, V>,
) -> RollupDiff<K, V> {
    let upserts = wanted
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let deletes = current
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .cloned()
        .collect();
    RollupDiff { upserts, deletes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_smallest_live_global_member_leads() {
        let a = ActorId([1; 16]);
        let b = ActorId([2; 16]);
        assert_eq!(region_leader([b, a]), Some(a));
        assert_eq!(region_leader([]), None);
    }

    #[test]
    fn nothing_runs_unless_leading() {
        let t0 = Instant::now();
        let mut s = RollupSchedule::new(RollupTiming::default());
        s.on_source_change(t0);
        assert_eq!(s.next_run(), None);
        s.on_leadership(true, t0 + ms(10));
        assert!(s.due(t0 + ms(10)), "taking over evaluates at once");
        s.on_leadership(false, t0 + ms(11));
        assert!(!s.due(t0 + ms(1000)));
    }

    #[test]
    fn a_burst_is_evaluated_once_after_it_quiets() {
        let t0 = Instant::now();
        let mut s = RollupSchedule::new(RollupTiming::default());
        s.on_leadership(true, t0);
        s.on_run(t0);
        for i in 0..4 {
            s.on_source_change(t0 + ms(100 + i * 10));
        }
        assert_eq!(s.next_run(), Some(t0 + ms(130 + 50)));
        assert!(!s.due(t0 + ms(179)));
        assert!(s.due(t0 + ms(180)));
        s.on_run(t0 + ms(180));
        assert_eq!(
            s.next_run(),
            Some(t0 + ms(180) + RollupTiming::default().reconcile_every)
        );
    }

    #[test]
    fn steady_writes_are_evaluated_at_least_every_max_delay() {
        let t0 = Instant::now();
        let mut s = RollupSchedule::new(RollupTiming::default());
        s.on_leadership(true, t0);
        s.on_run(t0);
        let mut runs = Vec::new();
        for i in 1..=100u64 {
            let now = t0 + ms(i * 10);
            s.on_source_change(now);
            if s.due(now) {
                runs.push(i * 10);
                s.on_run(now);
            }
        }
        assert!(runs.len() >= 3, "{runs:?}");
        let mut last = 0;
        for at in runs {
            assert!(at - last <= 260, "evaluations {last} → {at} ms apart");
            last = at;
        }
    }

    #[test]
    fn a_failing_evaluation_is_retried_less_and_less_often() {
        let t0 = Instant::now();
        let mut s = RollupSchedule::new(RollupTiming::default());
        s.on_leadership(true, t0);
        let mut at = t0;
        let mut waits = Vec::new();
        for _ in 0..10 {
            s.on_run(at);
            s.on_failed(at);
            let next = s.next_run().unwrap();
            waits.push(next - at);
            at = next;
        }
        assert_eq!(waits[0], ms(500));
        assert_eq!(waits[1], ms(1000));
        assert_eq!(*waits.last().unwrap(), Duration::from_secs(30));
        // A change (perhaps the fix) is tried within a second of the
        // failed run, and changes cannot make it retry faster than that.
        s.on_run(at);
        s.on_failed(at);
        s.on_source_change(at + ms(1));
        assert_eq!(s.next_run(), Some(at + Duration::from_secs(1)));
        s.on_source_change(at + ms(2));
        assert_eq!(s.next_run(), Some(at + Duration::from_secs(1)));
        let later = at + Duration::from_secs(3);
        s.on_run(later);
        s.on_failed(later);
        s.on_source_change(later + Duration::from_secs(2));
        assert_eq!(
            s.next_run(),
            Some(later + Duration::from_secs(2) + ms(50)),
            "a change long after the failure waits out the debounce"
        );
        s.on_run(at);
        s.on_succeeded();
        s.on_source_change(at + ms(10));
        assert_eq!(s.next_run(), Some(at + ms(60)), "back to the debounce");
    }

    #[test]
    fn the_diff_writes_only_what_changed_and_deletes_what_vanished() {
        let current = BTreeMap::from([("a", 1), ("b", 2), ("c", 3)]);
        let wanted = BTreeMap::from([("a", 1), ("b", 5), ("d", 4)]);
        let diff = rollup_diff(&current, &wanted);
        assert_eq!(diff.upserts, vec![("b", 5), ("d", 4)]);
        assert_eq!(diff.deletes, vec!["c"]);
        assert!(rollup_diff(&wanted, &wanted).is_empty());
    }
}
