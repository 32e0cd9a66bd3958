//! The messages nodes exchange. Every stream frame and every datagram is
//! wrapped with the sender's cluster name ([`Envelope`], [`crate::Datagram`]);
//! what travels inside is one of these.

use std::net::SocketAddr;

use patina_value::Value;
use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::limits::CLUSTER_NAME_BYTES_MAX;

/// A node's actor id: its site id in both databases.
pub use patina_value::SiteId as ActorId;

/// The name of the cluster a message belongs to: a region, or `global`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterName(String);

impl ClusterName {
    pub fn new(name: impl Into<String>) -> Result<ClusterName, WireError> {
        let name = name.into();
        if name.is_empty() || name.len() > CLUSTER_NAME_BYTES_MAX {
            return Err(WireError::ClusterName(name.len()));
        }
        Ok(ClusterName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClusterName {
    type Error = WireError;
    fn try_from(s: String) -> Result<Self, WireError> {
        ClusterName::new(s)
    }
}

impl From<ClusterName> for String {
    fn from(c: ClusterName) -> String {
        c.0
    }
}

impl std::fmt::Display for ClusterName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which of a node's two databases a change belongs to. The regional
/// transport carries both; the global transport only `Global`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DbKind {
    Regional,
    Global,
}

impl DbKind {
    /// Both, regional first.
    pub const ALL: [DbKind; 2] = [DbKind::Regional, DbKind::Global];

    /// "regional" or "global", as logs, metrics and file names spell it.
    pub fn name(self) -> &'static str {
        match self {
            DbKind::Regional => "regional",
            DbKind::Global => "global",
        }
    }
}

/// Who a node is in SWIM: foca's identity. A restarted node keeps its actor
/// id and address and bumps `generation`, so peers tell the new incarnation
/// from the old one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub actor: ActorId,
    pub addr: SocketAddr,
    /// The cluster this identity is a member of: the region, or `global`.
    pub cluster: ClusterName,
    /// The node's region (in its regional cluster, the same as `cluster`):
    /// the global cluster groups its members by it.
    pub region: ClusterName,
    /// Whether the node is a global member: in its region, the candidates
    /// for leader.
    pub global_member: bool,
    pub generation: u64,
}

/// An inclusive range `start..=end` of versions or of seqs; never empty
/// (`start <= end`, which decoding enforces: a peer cannot hand us a
/// backwards span).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawSpan")]
pub struct Span {
    pub start: u64,
    pub end: u64,
}

/// A span as decoded, before its order is checked (same layout as `Span`).
#[derive(Deserialize)]
struct RawSpan {
    start: u64,
    end: u64,
}

impl TryFrom<RawSpan> for Span {
    type Error = WireError;
    fn try_from(raw: RawSpan) -> Result<Span, WireError> {
        if raw.start > raw.end {
            return Err(WireError::Invalid(format!(
                "span {}..={} runs backwards",
                raw.start, raw.end
            )));
        }
        Ok(Span {
            start: raw.start,
            end: raw.end,
        })
    }
}

impl Span {
    pub fn new(start: u64, end: u64) -> Span {
        debug_assert!(start <= end, "span {start}..={end}");
        Span { start, end }
    }

    /// How many numbers the span holds (saturating: `0..=u64::MAX` holds
    /// one more than a u64 counts).
    pub fn len(&self) -> u64 {
        (self.end - self.start).saturating_add(1)
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, n: u64) -> bool {
        self.start <= n && n <= self.end
    }
}

/// One change of a chunk. Its site id and db_version are the chunk's
/// (`actor`, `version`), so they are not repeated per change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireChange {
    pub table: String,
    pub pk: Vec<u8>,
    pub cid: String,
    pub val: Value,
    pub col_version: i64,
    pub cl: i64,
    pub seq: i64,
}

/// Part of one transaction of one actor: the changes whose seq lies in
/// `seqs`. A transaction's chunks cover `0..=last_seq`; a receiver buffers
/// chunks until they do and then applies the transaction whole.
///
/// A chunk covers its whole seq span even where it carries no change for
/// some seq: the sender no longer has those entries (later writes replaced
/// them, and the receiver gets those writes as their own versions). A
/// version with nothing left is one chunk `seqs = 0..=0, last_seq = 0` with
/// no changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeChunk {
    pub db: DbKind,
    pub actor: ActorId,
    pub version: u64,
    pub seqs: Span,
    pub last_seq: u64,
    /// When the origin committed the transaction, Unix milliseconds; 0 when
    /// unknown (chunks read back from storage for sync). Receivers measure
    /// replication lag with it.
    pub committed_ms: u64,
    pub changes: Vec<WireChange>,
}

impl ChangeChunk {
    /// Is this chunk the whole transaction?
    pub fn is_complete(&self) -> bool {
        self.seqs.start == 0 && self.seqs.end >= self.last_seq
    }

    /// Checks what a decoder cannot: the spans are ordered, every change
    /// lies inside `seqs`, and `seqs` inside `0..=last_seq`.
    pub fn validate(&self) -> Result<(), WireError> {
        let bad = |why: &str| Err(WireError::Invalid(format!("chunk: {why}")));
        if self.version == 0 {
            return bad("version 0 does not exist (versions start at 1)");
        }
        if self.seqs.start > self.seqs.end || self.seqs.end > self.last_seq {
            return bad("seq span out of order or past last_seq");
        }
        if self
            .changes
            .iter()
            .any(|c| c.seq < 0 || !self.seqs.contains(c.seq as u64))
        {
            return bad("a change's seq lies outside the chunk's span");
        }
        Ok(())
    }
}

/// What one node holds of one actor's versions in one database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorSummary {
    pub db: DbKind,
    pub actor: ActorId,
    /// Versions applied whole (including versions with nothing left),
    /// ascending, disjoint, not adjacent.
    pub applied: Vec<Span>,
    /// Versions of which only some seqs are buffered.
    pub partial: Vec<PartialVersion>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialVersion {
    pub version: u64,
    pub last_seq: u64,
    /// The seq spans buffered, ascending, disjoint.
    pub have: Vec<Span>,
}

/// A node's compact statement of what it holds. Summaries may be
/// truncated (fewer spans than the node holds); a truncated summary only
/// under-claims, which costs a redundant transfer, never a lost one.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Summary {
    pub actors: Vec<ActorSummary>,
}

/// One thing a node asks a peer for during sync.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Need {
    /// Whole versions.
    Versions {
        db: DbKind,
        actor: ActorId,
        versions: Span,
    },
    /// The missing seqs of one partially received version.
    Seqs {
        db: DbKind,
        actor: ActorId,
        version: u64,
        seqs: Vec<Span>,
    },
}

/// What a node collected of one database's tombstones (docs/crr.md,
/// "Tombstone collection"): a node that holds less than `floors` of some
/// actor missed deletes nobody keeps any more and must be re-seeded; local
/// inserts of keys without a clock must start above `causal_lengths`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectedFloors {
    pub db: DbKind,
    /// Per actor: every tombstone its versions `1..=floor` wrote may be gone.
    pub floors: Vec<(ActorId, u64)>,
    /// Per table: the largest causal length of a collected tombstone.
    pub causal_lengths: Vec<(String, u64)>,
}

/// What travels in a QUIC stream frame.
///
/// Broadcast: a unidirectional stream of `Changes` frames.
/// Sync: the requester opens a bidirectional stream and sends
/// `SummaryRequest`; the peer answers `Summary`; the requester sends
/// `Pull`; the peer answers with `Changes` frames and a final `PullDone`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    Changes(ChangeChunk),
    SummaryRequest,
    Summary(Summary),
    Pull(Vec<Need>),
    PullDone,
    /// A summary request carrying a digest of the asker's summary: a peer
    /// whose own digest is the same answers [`Message::InSync`] instead of
    /// its summary (idle clusters exchange 8 bytes, not summaries).
    DigestRequest(u64),
    /// The answer to a [`Message::DigestRequest`] whose digest matched: the
    /// two hold the same versions; the conversation is over.
    InSync,
    /// Sent before [`Message::Summary`] by a node that collected tombstones
    /// (or learned that peers did), one per database. Last in this enum so
    /// the other messages keep their encoding.
    Collected(CollectedFloors),
    /// The answer, instead of a summary, of a node that does not serve
    /// sync (it missed collected tombstones and must be re-seeded): the
    /// asker stops waiting for it. Says why. After `Collected` for the
    /// same reason.
    Declined(String),
}

/// A stream frame: the sender's cluster and the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub cluster: ClusterName,
    pub from: ActorId,
    pub message: Message,
}
