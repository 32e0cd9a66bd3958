//! What a subscriber holds: an attached stream of change events, and the
//! errors of subscribing.

use std::collections::VecDeque;
use std::time::Duration;

use patina_crr::Value;
use tokio::sync::broadcast;

use crate::diff::ChangeEvent;

/// Events buffered per attached subscriber; one that falls further behind
/// gets an error event and is disconnected.
pub(crate) const SUBSCRIBER_EVENTS_BUFFERED: usize = 128;
/// Subscriptions one node keeps (each holds its result in memory).
pub(crate) const SUBSCRIPTIONS_MAX: usize = 10_000;

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
        "this node holds the maximum of {SUBSCRIPTIONS_MAX} subscriptions: reuse an existing \
         statement, or free room with DELETE /v1/subscriptions/{{id}} (a subscription without a \
         listener for api.subscription_idle_expiry is removed by itself)"
    )]
    TooMany,
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
    pub(crate) live: broadcast::Receiver<ChangeEvent>,
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
            match self.live.recv().await {
                Ok(e) if e.change_id <= self.delivered => continue,
                Ok(e) => {
                    debug_assert_eq!(e.change_id, self.delivered + 1);
                    self.delivered = e.change_id;
                    return Some(SubItem::Change(e));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let at = self.delivered;
                    self.delivered = u64::MAX;
                    return Some(SubItem::Error(format!(
                        "this subscriber fell {n} events behind and was disconnected: \
                         re-attach with from={at}"
                    )));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
