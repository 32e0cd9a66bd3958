//! What a subscriber holds: an attached stream of change events, and the
//! errors of subscribing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use patina_crr::Value;
use tokio::sync::Notify;

use crate::diff::ChangeEvent;

/// Events buffered per attached subscriber; one that falls further behind
/// gets an error event and is disconnected.
pub(crate) const SUBSCRIBER_EVENTS_BUFFERED: usize = 128;
/// The events of one re-run kept for attached subscribers at most, when
/// they outnumber [`SUBSCRIBER_EVENTS_BUFFERED`]: beyond, a subscriber
/// re-attaches with `from=` and reads them from the store.
pub(crate) const SUBSCRIBER_BATCH_EVENTS_MAX: usize = 4096;
/// Subscriptions one node keeps by default (each holds its result in
/// memory; `api.subscriptions_max` changes it).
pub const SUBSCRIPTIONS_MAX_DEFAULT: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubError {
    /// The statement cannot be subscribed to (400).
    #[error("{0}")]
    Invalid(String),
    #[error("could not find subscription with id {0}")]
    NotFound(String),
    /// `from=` for a statement nobody subscribed to yet (400).
    #[error("there is no subscription for this statement yet, so from= has nothing to resume: subscribe without from= first")]
    NoSuchSubscription,
    #[error(
        "this node holds its maximum number of subscriptions, {0} (api.subscriptions_max): \
         reuse an existing statement, or free room with DELETE /v1/subscriptions/{{id}} (the id \
         is the corro-query-id header of the subscription's response); unless \
         api.subscription_idle_expiry is 0, a subscription without a listener for that long is \
         removed by itself"
    )]
    TooMany(usize),
    #[error("the subscription workers are busy: retry shortly")]
    Busy,
    #[error("{0}")]
    Internal(String),
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// How a stream attaches to a subscription.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attach {
    /// Only changes with ids above this one; no snapshot.
    pub from: Option<u64>,
    /// No snapshot rows (columns and the current change id still come).
    pub skip_rows: bool,
}

/// What a stream gets next after its snapshot.
#[derive(Debug, Clone, PartialEq)]
pub enum SubItem {
    Change(ChangeEvent),
    /// The stream ends after this.
    Error(String),
}

/// One attached stream: the snapshot (unless `from`), then its changes.
pub struct SubStream {
    /// Hyphenated UUID.
    pub id: String,
    /// 16 hex characters.
    pub hash: String,
    pub columns: Vec<String>,
    /// `(row_id, cells)`; `None` when attached with `from`.
    pub rows: Option<Vec<(u64, Vec<Value>)>>,
    /// The last change id at snapshot time.
    pub change_id: u64,
    pub snapshot_time: Duration,
    pub(crate) backlog: VecDeque<ChangeEvent>,
    pub(crate) live: Listener,
    pub(crate) error: Option<String>,
    pub(crate) delivered: u64,
}

impl SubStream {
    /// The next change; `None` when the node shuts down (or after an error).
    pub async fn next(&mut self) -> Option<SubItem> {
        if let Some(e) = self.error.take() {
            self.delivered = u64::MAX;
            return Some(SubItem::Error(e));
        }
        if self.delivered == u64::MAX {
            return None;
        }
        if let Some(e) = self.backlog.pop_front() {
            self.delivered = e.change_id;
            return Some(SubItem::Change(e));
        }
        loop {
            let inner = Arc::clone(&self.live.0);
            let notified = inner.notify.notified();
            tokio::pin!(notified);
            // Registered before looking: an event published in between
            // wakes it.
            notified.as_mut().enable();
            {
                let ring = inner.lock();
                match ring.events.iter().find(|e| e.change_id > self.delivered) {
                    Some(e) if e.change_id == self.delivered + 1 => {
                        self.delivered = e.change_id;
                        return Some(SubItem::Change(e.clone()));
                    }
                    Some(e) => {
                        let (at, n) = (self.delivered, e.change_id - self.delivered - 1);
                        self.delivered = u64::MAX;
                        return Some(SubItem::Error(format!(
                            "this subscriber fell {n} events behind and was disconnected: \
                             re-attach with from={at}"
                        )));
                    }
                    None if ring.closed => {
                        self.delivered = u64::MAX;
                        return ring.ended.clone().map(SubItem::Error);
                    }
                    None => {}
                }
            }
            notified.await;
        }
    }
}

/// A subscription's events for its attached streams: the last
/// [`SUBSCRIBER_EVENTS_BUFFERED`], kept only while a stream is attached
/// and allocated as they come. (A broadcast channel allocates all its
/// slots up front: ≈ 11 KiB per subscription, most of an idle one's
/// memory at 10,000 subscriptions.)
pub(crate) struct Live(Arc<LiveInner>);

struct LiveInner {
    ring: Mutex<Ring>,
    notify: Notify,
    listeners: AtomicUsize,
}

struct Ring {
    events: VecDeque<ChangeEvent>,
    closed: bool,
    /// Why the subscription ended, told to its streams as their last line.
    ended: Option<String>,
    /// When the last stream detached (or the subscription was made
    /// without one: restored at start); `None` while one is attached.
    idle_since: Option<Instant>,
}

impl LiveInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Live {
    pub fn new() -> Live {
        Live(Arc::new(LiveInner {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                closed: false,
                ended: None,
                idle_since: Some(Instant::now()),
            }),
            notify: Notify::new(),
            listeners: AtomicUsize::new(0),
        }))
    }

    /// How many streams are attached.
    pub fn listeners(&self) -> usize {
        self.0.listeners.load(Ordering::Acquire)
    }

    /// A stream's end of it.
    pub fn listen(&self) -> Listener {
        self.0.listeners.fetch_add(1, Ordering::AcqRel);
        self.0.lock().idle_since = None;
        Listener(Arc::clone(&self.0))
    }

    /// Since when no stream has been attached; `None` while one is.
    pub fn idle_since(&self) -> Option<Instant> {
        let ring = self.0.lock();
        if self.listeners() > 0 {
            return None;
        }
        // Unset only in a race with a listener coming and going.
        Some(ring.idle_since.unwrap_or_else(Instant::now))
    }

    /// Hands `events` to the attached streams; without any, they are
    /// dropped (a later attach reads the store).
    pub fn send(&self, events: impl IntoIterator<Item = ChangeEvent>) {
        let mut ring = self.0.lock();
        if self.listeners() == 0 {
            ring.events = VecDeque::new();
            return;
        }
        let before = ring.events.len();
        ring.events.extend(events);
        // One re-run's events may outnumber the buffer (an aggregate of 200
        // groups, several commits folded): a stream that had read
        // everything before them still gets them all, up to a bound.
        let batch = ring.events.len() - before;
        let keep = batch.clamp(SUBSCRIBER_EVENTS_BUFFERED, SUBSCRIBER_BATCH_EVENTS_MAX);
        while ring.events.len() > keep {
            ring.events.pop_front();
        }
        drop(ring);
        self.0.notify.notify_waiters();
    }

    /// Ends the attached streams (after the events they have not read).
    pub fn close(&self) {
        self.0.lock().closed = true;
        self.0.notify.notify_waiters();
    }

    /// Ends the attached streams with `reason` as their last line.
    pub fn end(&self, reason: String) {
        self.0.lock().ended = Some(reason);
        self.close();
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.close();
    }
}

/// An attached stream's end of a subscription's [`Live`] events.
pub(crate) struct Listener(Arc<LiveInner>);

impl Drop for Listener {
    fn drop(&mut self) {
        if self.0.listeners.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.lock().idle_since = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::ChangeKind;

    fn stream(live: &Live) -> SubStream {
        SubStream {
            id: "s".into(),
            hash: "h".into(),
            columns: Vec::new(),
            rows: None,
            change_id: 0,
            snapshot_time: Duration::ZERO,
            backlog: VecDeque::new(),
            live: live.listen(),
            error: None,
            delivered: 0,
        }
    }

    fn events(ids: std::ops::RangeInclusive<u64>) -> Vec<ChangeEvent> {
        ids.map(|change_id| ChangeEvent {
            kind: ChangeKind::Insert,
            row_id: change_id,
            cells: Vec::new(),
            change_id,
        })
        .collect()
    }

    /// One re-run's 300 events (an aggregate of 300 groups) reach a stream
    /// that had read everything before them; falling behind by more than
    /// the buffer across re-runs still disconnects.
    #[tokio::test]
    async fn a_batch_larger_than_the_buffer_reaches_a_stream_that_kept_up() {
        let live = Live::new();
        let mut s = stream(&live);
        live.send(events(1..=300));
        for id in 1..=300 {
            match s.next().await {
                Some(SubItem::Change(e)) => assert_eq!(e.change_id, id),
                other => panic!("{other:?}"),
            }
        }
        let mut slow = stream(&live);
        slow.delivered = 300;
        for n in 0..3 {
            live.send(events(301 + n * 100..=400 + n * 100));
        }
        assert!(matches!(slow.next().await, Some(SubItem::Error(e)) if e.contains("fell")));
        // A subscription ended by the node tells its streams why.
        let mut current = stream(&live);
        current.delivered = 600;
        drop(s);
        live.end("the schema changed".into());
        assert_eq!(
            current.next().await,
            Some(SubItem::Error("the schema changed".into()))
        );
        assert_eq!(current.next().await, None);
    }

    /// Idle time counts from when the last stream detached (what the
    /// expiry sweep reads), not from when a sweep first noticed it.
    #[test]
    fn idle_since_is_the_last_detach() {
        let made = Instant::now();
        let live = Live::new();
        // Made without a stream (restored at start): idle since then.
        assert!(live.idle_since().is_some_and(|t| t >= made));
        let a = live.listen();
        let b = live.listen();
        assert_eq!(live.idle_since(), None);
        drop(a);
        assert_eq!(live.idle_since(), None, "one stream is still attached");
        let before = Instant::now();
        drop(b);
        let since = live.idle_since().expect("idle");
        assert!(since >= before && since <= Instant::now());
        let c = live.listen();
        assert_eq!(live.idle_since(), None);
        drop(c);
        assert!(live.idle_since().is_some_and(|t| t >= since));
    }
}
