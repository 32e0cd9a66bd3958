//! The discrete-event scheduler: events ordered by (simulated time,
//! insertion number), so two events at the same microsecond run in the
//! order they were scheduled, on every run.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Simulated time: microseconds since the start of the run.
pub type Micros = u64;

pub fn ms(n: u64) -> Micros {
    n * 1_000
}

pub fn secs(n: u64) -> Micros {
    n * 1_000_000
}

pub fn from_duration(d: Duration) -> Micros {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Turns simulated time into the `Instant`s the protocol values take.
/// Only offsets from one `Instant` captured at the start are ever used
/// (the protocol values compare and add them, never read the clock), so
/// nothing of the host's clock reaches the simulation's decisions.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    base: Instant,
}

impl SimClock {
    pub fn new() -> SimClock {
        SimClock {
            base: Instant::now(),
        }
    }

    pub fn instant(&self, at: Micros) -> Instant {
        self.base + Duration::from_micros(at)
    }

    pub fn micros(&self, at: Instant) -> Micros {
        from_duration(at.saturating_duration_since(self.base))
    }
}

impl Default for SimClock {
    fn default() -> Self {
        SimClock::new()
    }
}

struct Entry<E> {
    at: Micros,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<E> Eq for Entry<E> {}

impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Reversed: `BinaryHeap` pops the greatest, the scheduler wants the
/// earliest.
impl<E> Ord for Entry<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

pub struct Scheduler<E> {
    heap: BinaryHeap<Entry<E>>,
    next_seq: u64,
    now: Micros,
}

impl<E> Scheduler<E> {
    pub fn new() -> Scheduler<E> {
        Scheduler {
            heap: BinaryHeap::new(),
            next_seq: 0,
            now: 0,
        }
    }

    pub fn now(&self) -> Micros {
        self.now
    }

    /// Schedules `event` at `at` (never before now).
    pub fn at(&mut self, at: Micros, event: E) {
        let at = at.max(self.now);
        self.heap.push(Entry {
            at,
            seq: self.next_seq,
            event,
        });
        self.next_seq += 1;
    }

    pub fn after(&mut self, delay: Micros, event: E) {
        self.at(self.now.saturating_add(delay), event);
    }

    /// The next event, advancing the clock to it.
    pub fn pop(&mut self) -> Option<(Micros, E)> {
        let entry = self.heap.pop()?;
        self.now = entry.at;
        Some((entry.at, entry.event))
    }

    pub fn pending(&self) -> usize {
        self.heap.len()
    }
}

impl<E> Default for Scheduler<E> {
    fn default() -> Self {
        Scheduler::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_pop_by_time_then_insertion() {
        let mut s = Scheduler::new();
        s.at(5, "c");
        s.at(1, "a");
        s.at(5, "d");
        s.at(1, "b");
        let order: Vec<_> = std::iter::from_fn(|| s.pop()).collect();
        assert_eq!(order, vec![(1, "a"), (1, "b"), (5, "c"), (5, "d")]);
    }

    #[test]
    fn nothing_is_scheduled_in_the_past() {
        let mut s = Scheduler::new();
        s.at(10, 1);
        assert_eq!(s.pop(), Some((10, 1)));
        s.at(3, 2);
        assert_eq!(s.pop(), Some((10, 2)));
    }
}
