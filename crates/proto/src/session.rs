//! The sync conversation with one peer (`docs/replication.md`, Sync), both
//! ends, as values fed messages and `Instant`s: a [`PullSession`] asks a
//! peer for its summary and pulls what the plan assigns to it; a
//! [`ServeSession`] answers one. They own the message order
//! (`SummaryRequest` → `Summary` → `Pull(needs)` → `Changes`* → `PullDone`),
//! the deadlines and the limits; the shell moves frames, reads the clock and
//! performs the actions they return, in order.

use std::time::{Duration, Instant};

use patina_wire::{ChangeChunk, CollectedFloors, DbKind, Message, Need, Summary};

/// Timeouts and bounds of sync conversations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncLimits {
    /// A peer that has not answered a summary request this long after we
    /// started opening the stream is left out of the round: a round waits
    /// for every summary, and an unreachable peer not yet declared down
    /// must not stall it (a LAN answers in milliseconds). 2 s.
    pub summary_timeout: Duration,
    /// A peer that sends nothing for this long during a pull is given up on
    /// for this round (the planner asks someone again). Time spent merging
    /// on our side does not count. 10 s.
    pub frame_timeout: Duration,
    /// Pulled chunks merged per writer job: when that many wait, the puller
    /// merges them before reading on (a hostile or huge pull never holds
    /// more in memory). 128.
    pub apply_chunks_max: usize,
    /// Pulled changes merged per writer job, whatever the chunks: a large
    /// version arrives as chunks of ≈ 900 changes each, ≈ 250 bytes apiece
    /// once decoded, so 128 of them would be ≈ 28 MiB held at once. 8,192.
    pub apply_changes_max: usize,
    /// Needs served from one pull; those beyond are ignored (the puller
    /// asks again next round). 4,096.
    pub needs_max: usize,
    /// Pulls served at once; more are refused (the puller retries next
    /// round). 32.
    pub serving_max: usize,
    /// Pulls served at once to one peer address: one peer cannot take
    /// every serving slot and starve everyone else's anti-entropy. 4.
    pub serving_per_peer_max: usize,
    /// A served conversation ends this long after it started, whatever
    /// the peer does (stays quiet, reads slowly): a slot is never held for
    /// good. 30 s.
    pub serve_timeout: Duration,
    /// Bytes of chunks one pull is served at most; the needs beyond are
    /// skipped (the puller asks again next round). 64 MiB.
    pub serve_bytes_max: usize,
}

impl Default for SyncLimits {
    fn default() -> SyncLimits {
        SyncLimits {
            summary_timeout: Duration::from_secs(2),
            frame_timeout: Duration::from_secs(10),
            apply_chunks_max: 128,
            apply_changes_max: 8192,
            needs_max: 4096,
            serving_max: 32,
            serving_per_peer_max: 4,
            serve_timeout: Duration::from_secs(30),
            serve_bytes_max: 64 << 20,
        }
    }
}

/// Why a sync stream was not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeRefusal {
    /// `serving_max` streams are being served.
    Busy,
    /// `serving_per_peer_max` streams of this peer are being served.
    PeerBusy,
}

impl SyncLimits {
    /// Whether a new sync stream may be served while `serving` are, of
    /// which `of_peer` to the same peer.
    pub fn admits(&self, serving: usize, of_peer: usize) -> Result<(), ServeRefusal> {
        if serving >= self.serving_max {
            Err(ServeRefusal::Busy)
        } else if of_peer >= self.serving_per_peer_max {
            Err(ServeRefusal::PeerBusy)
        } else {
            Ok(())
        }
    }
}

/// Why a conversation with a peer ended early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncFailure {
    #[error("peer sent nothing for {0:?}")]
    Timeout(Duration),
    #[error("peer closed the stream early")]
    Closed,
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
}

/// Events the shell counts (`ReplicatorStats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncCount {
    /// A pulled chunk arrived.
    ChunkReceived,
    /// A peer's pull is being served.
    PullServed,
    /// A peer's digest matched this node's: it got `InSync`, no summary.
    DigestMatched,
    /// A served conversation ran past `serve_timeout` and was ended.
    ServeTimedOut,
    /// A pull reached `serve_bytes_max`; its remaining needs were skipped.
    ServeBytesCapped,
}

/// What the shell does for a [`PullSession`].
#[derive(Debug, Clone, PartialEq)]
pub enum PullAction {
    Send(Message),
    /// The peer's summary: plan with it, then call [`PullSession::pull`].
    Plan(Summary),
    Count(SyncCount),
    /// Merge these chunks (all of databases the cluster carries), then call
    /// [`PullSession::on_applied`] and go on.
    Apply(Vec<ChangeChunk>),
    /// A pulled chunk of a database this cluster does not carry (a regional
    /// change offered on the global cluster): drop it, counting its tables
    /// (isolation, docs/regions.md).
    Refuse(ChangeChunk),
    /// The peer holds the same versions as this node (its digest matched):
    /// nothing to plan or pull; finish the stream.
    InSync,
    /// What the peer collected of a database's tombstones (before its
    /// summary): learn it, and check this node did not miss any.
    Collected(CollectedFloors),
    /// The peer does not serve sync (it is stale: docs/crr.md), saying
    /// why: not a failure to retry soon, and nothing to wait for.
    Declined(String),
    /// The conversation is over: finish the stream.
    Finish,
    /// Give up on this peer for this round.
    Fail(SyncFailure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PullStage {
    Opening,
    AwaitingSummary,
    Planning,
    Pulling,
    Ended,
}

/// The pulling end of a sync conversation. The shell opens a stream, calls
/// [`open`](Self::open), then feeds every frame ([`on_frame`](Self::on_frame)),
/// the stream's end ([`on_closed`](Self::on_closed)) and the passing of
/// [`deadline`](Self::deadline) ([`on_timeout`](Self::on_timeout)) until an
/// action says `Finish` or `Fail`. While the session waits for the plan
/// (after `Plan`) it has no deadline and the shell reads nothing.
#[derive(Debug)]
pub struct PullSession {
    stage: PullStage,
    limits: SyncLimits,
    carried: Vec<DbKind>,
    deadline: Option<Instant>,
    /// Pulled chunks not yet handed out to merge.
    batch: Vec<ChangeChunk>,
    /// Changes in `batch`.
    batch_changes: usize,
    /// `Collected` frames received.
    floors_seen: usize,
}

impl PullSession {
    /// A session with a peer about to be asked, for a cluster carrying
    /// `carried`. The summary deadline runs from `now`, opening included.
    pub fn new(carried: &[DbKind], limits: SyncLimits, now: Instant) -> PullSession {
        let deadline = Some(now + limits.summary_timeout);
        PullSession {
            stage: PullStage::Opening,
            limits,
            carried: carried.to_vec(),
            deadline,
            batch: Vec::new(),
            batch_changes: 0,
            floors_seen: 0,
        }
    }

    /// The stream is open: ask for the summary. Only the first call does.
    pub fn open(&mut self) -> Vec<PullAction> {
        self.ask(Message::SummaryRequest)
    }

    /// As [`open`](Self::open), saying this node's
    /// [`Bookkeeper::digest`](crate::Bookkeeper::digest): a peer holding the
    /// same answers [`PullAction::InSync`] instead of a summary.
    pub fn open_with_digest(&mut self, digest: u64) -> Vec<PullAction> {
        self.ask(Message::DigestRequest(digest))
    }

    fn ask(&mut self, request: Message) -> Vec<PullAction> {
        if self.stage != PullStage::Opening {
            return Vec::new();
        }
        self.stage = PullStage::AwaitingSummary;
        vec![PullAction::Send(request)]
    }

    /// When the peer has taken too long; `None` while nothing is awaited
    /// from it.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn is_ended(&self) -> bool {
        self.stage == PullStage::Ended
    }

    /// The plan assigned `needs` to this peer (maybe none).
    pub fn pull(&mut self, needs: Vec<Need>, now: Instant) -> Vec<PullAction> {
        if self.stage != PullStage::Planning {
            return Vec::new();
        }
        if needs.is_empty() {
            return self.end(PullAction::Finish);
        }
        self.stage = PullStage::Pulling;
        self.deadline = Some(now + self.limits.frame_timeout);
        vec![PullAction::Send(Message::Pull(needs))]
    }

    /// A frame from the peer arrived at `now`.
    pub fn on_frame(&mut self, message: Message, now: Instant) -> Vec<PullAction> {
        match (self.stage, message) {
            (PullStage::Ended, _) => Vec::new(),
            (PullStage::AwaitingSummary, Message::Summary(summary)) => {
                self.stage = PullStage::Planning;
                self.deadline = None;
                vec![PullAction::Plan(summary)]
            }
            (PullStage::AwaitingSummary, Message::Collected(floors)) => {
                // One per database at most: a peer that sends more is broken.
                self.floors_seen += 1;
                if self.floors_seen > DbKind::ALL.len() {
                    return self.fail("more collection floors than databases");
                }
                vec![PullAction::Collected(floors)]
            }
            (PullStage::AwaitingSummary, Message::InSync) => {
                self.close();
                vec![PullAction::InSync]
            }
            (PullStage::AwaitingSummary, Message::Declined(reason)) => {
                self.close();
                vec![PullAction::Declined(reason)]
            }
            (PullStage::AwaitingSummary, _) => self.fail("expected a summary"),
            (PullStage::Opening, _) => self.fail("a message before the summary request"),
            (PullStage::Planning, _) => self.fail("a message before the pull"),
            (PullStage::Pulling, Message::Changes(chunk)) => {
                self.deadline = Some(now + self.limits.frame_timeout);
                self.on_chunk(chunk)
            }
            (PullStage::Pulling, Message::PullDone) => {
                let mut actions = Vec::with_capacity(2);
                if !self.batch.is_empty() {
                    self.batch_changes = 0;
                    actions.push(PullAction::Apply(std::mem::take(&mut self.batch)));
                }
                actions.extend(self.end(PullAction::Finish));
                actions
            }
            (PullStage::Pulling, _) => self.fail("expected changes or the end of a pull"),
        }
    }

    fn on_chunk(&mut self, chunk: ChangeChunk) -> Vec<PullAction> {
        let mut actions = vec![PullAction::Count(SyncCount::ChunkReceived)];
        if !self.carried.contains(&chunk.db) {
            actions.push(PullAction::Refuse(chunk));
            return actions;
        }
        self.batch_changes += chunk.changes.len();
        self.batch.push(chunk);
        if self.batch.len() >= self.limits.apply_chunks_max
            || self.batch_changes >= self.limits.apply_changes_max
        {
            self.batch_changes = 0;
            actions.push(PullAction::Apply(std::mem::take(&mut self.batch)));
        }
        actions
    }

    /// The shell merged what an `Apply` handed out, finishing at `now`: the
    /// peer's time to send the next frame starts again.
    pub fn on_applied(&mut self, now: Instant) {
        if self.stage == PullStage::Pulling {
            self.deadline = Some(now + self.limits.frame_timeout);
        }
    }

    /// The peer closed the stream.
    pub fn on_closed(&mut self) -> Vec<PullAction> {
        if self.stage == PullStage::Ended {
            return Vec::new();
        }
        self.end(PullAction::Fail(SyncFailure::Closed))
    }

    /// The shell's timer for [`deadline`](Self::deadline) fired at `now`:
    /// the failure, if the deadline has indeed passed (the session has then
    /// ended). A timer firing early changes nothing.
    pub fn on_timeout(&mut self, now: Instant) -> Option<SyncFailure> {
        let deadline = self.deadline?;
        if now < deadline {
            return None;
        }
        let waited = match self.stage {
            PullStage::Opening | PullStage::AwaitingSummary => self.limits.summary_timeout,
            _ => self.limits.frame_timeout,
        };
        self.close();
        Some(SyncFailure::Timeout(waited))
    }

    fn fail(&mut self, why: &'static str) -> Vec<PullAction> {
        self.end(PullAction::Fail(SyncFailure::Unexpected(why)))
    }

    fn end(&mut self, last: PullAction) -> Vec<PullAction> {
        self.close();
        vec![last]
    }

    fn close(&mut self) {
        self.stage = PullStage::Ended;
        self.deadline = None;
        self.batch.clear();
        self.batch_changes = 0;
    }
}

/// What the shell does for a [`ServeSession`].
#[derive(Debug, Clone, PartialEq)]
pub enum ServeAction {
    /// Send this node's summary: what it holds, versions waiting to be
    /// merged included ([`crate::QueuedVersions`]).
    SendSummary,
    /// Compare the peer's digest with this node's (of what the summary
    /// would say) and call [`ServeSession::digest_checked`].
    CheckDigest(u64),
    Count(SyncCount),
    /// Send the chunks answering these needs, in order (every one of a
    /// database the cluster carries).
    Serve(Vec<Need>),
    Send(Message),
    /// The conversation is over: finish the stream.
    Finish,
    Fail(SyncFailure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServeStage {
    AwaitingRequest,
    CheckingDigest,
    AwaitingPull,
    Ended,
}

/// The answering end of a sync conversation: fed the stream's frames and
/// its end until an action says `Finish` or `Fail`, and
/// [`on_timeout`](Self::on_timeout) once [`deadline`](Self::deadline)
/// passes — the connection's keep-alives would keep a quiet peer's stream
/// open for good. The shell reports the bytes it serves
/// ([`spend`](Self::spend)). Whether to serve one more stream at all is
/// [`SyncLimits::admits`].
#[derive(Debug)]
pub struct ServeSession {
    stage: ServeStage,
    limits: SyncLimits,
    carried: Vec<DbKind>,
    deadline: Instant,
    served_bytes: usize,
}

impl ServeSession {
    /// A conversation a peer opened at `now`.
    pub fn new(carried: &[DbKind], limits: SyncLimits, now: Instant) -> ServeSession {
        ServeSession {
            stage: ServeStage::AwaitingRequest,
            deadline: now + limits.serve_timeout,
            limits,
            carried: carried.to_vec(),
            served_bytes: 0,
        }
    }

    /// When the conversation ends, whatever the peer does.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The deadline passed (the shell stopped waiting on the peer).
    pub fn on_timeout(&mut self) -> Vec<ServeAction> {
        if self.stage == ServeStage::Ended {
            return Vec::new();
        }
        self.stage = ServeStage::Ended;
        vec![
            ServeAction::Count(SyncCount::ServeTimedOut),
            ServeAction::Fail(SyncFailure::Timeout(self.limits.serve_timeout)),
        ]
    }

    /// `bytes` more were served; `false` once the pull has had
    /// `serve_bytes_max`: serve nothing more of it (and count
    /// [`SyncCount::ServeBytesCapped`]).
    pub fn spend(&mut self, bytes: usize) -> bool {
        self.served_bytes = self.served_bytes.saturating_add(bytes);
        self.served_bytes < self.limits.serve_bytes_max
    }

    pub fn is_ended(&self) -> bool {
        self.stage == ServeStage::Ended
    }

    pub fn on_frame(&mut self, message: Message) -> Vec<ServeAction> {
        match (self.stage, message) {
            (ServeStage::Ended, _) => Vec::new(),
            (ServeStage::AwaitingRequest, Message::SummaryRequest) => {
                self.stage = ServeStage::AwaitingPull;
                vec![ServeAction::SendSummary]
            }
            (ServeStage::AwaitingRequest, Message::DigestRequest(digest)) => {
                self.stage = ServeStage::CheckingDigest;
                vec![ServeAction::CheckDigest(digest)]
            }
            (ServeStage::CheckingDigest, _) => self.fail("a message before the digest's answer"),
            (ServeStage::AwaitingRequest, _) => {
                self.fail("a sync stream starts with a summary request")
            }
            (ServeStage::AwaitingPull, Message::Pull(needs)) => {
                let needs = needs
                    .into_iter()
                    .take(self.limits.needs_max)
                    .filter(|need| self.carried.contains(&need_db(need)))
                    .collect();
                self.stage = ServeStage::Ended;
                vec![
                    ServeAction::Count(SyncCount::PullServed),
                    ServeAction::Serve(needs),
                    ServeAction::Send(Message::PullDone),
                    ServeAction::Finish,
                ]
            }
            (ServeStage::AwaitingPull, _) => self.fail("expected a pull"),
        }
    }

    /// The shell compared the peer's digest with this node's
    /// ([`ServeAction::CheckDigest`]): the same ends the conversation with
    /// `InSync`; a difference is answered with the summary, as a summary
    /// request is.
    pub fn digest_checked(&mut self, same: bool) -> Vec<ServeAction> {
        if self.stage != ServeStage::CheckingDigest {
            return Vec::new();
        }
        if same {
            self.stage = ServeStage::Ended;
            vec![
                ServeAction::Count(SyncCount::DigestMatched),
                ServeAction::Send(Message::InSync),
                ServeAction::Finish,
            ]
        } else {
            self.stage = ServeStage::AwaitingPull;
            vec![ServeAction::SendSummary]
        }
    }

    /// The peer finished its side of the stream.
    pub fn on_closed(&mut self) -> Vec<ServeAction> {
        let last = match self.stage {
            ServeStage::Ended => return Vec::new(),
            ServeStage::CheckingDigest => ServeAction::Fail(SyncFailure::Closed),
            // It needed nothing from us.
            ServeStage::AwaitingPull => ServeAction::Finish,
            ServeStage::AwaitingRequest => ServeAction::Fail(SyncFailure::Closed),
        };
        self.stage = ServeStage::Ended;
        vec![last]
    }

    fn fail(&mut self, why: &'static str) -> Vec<ServeAction> {
        self.stage = ServeStage::Ended;
        vec![ServeAction::Fail(SyncFailure::Unexpected(why))]
    }
}

fn need_db(need: &Need) -> DbKind {
    match need {
        Need::Versions { db, .. } | Need::Seqs { db, .. } => *db,
    }
}

#[cfg(test)]
mod tests;
