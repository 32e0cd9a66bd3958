//! `patina-proto`: Patina's replication protocol as sans-I/O values
//! (`docs/replication.md`). Which versions this node holds
//! ([`Bookkeeper`]) and which of them wait to be merged
//! ([`QueuedVersions`]); whether a node that just started still lacks what
//! its peers held when it joined ([`CatchUp`]); the sync conversation with one peer
//! ([`PullSession`], [`ServeSession`], bounded by [`SyncLimits`]) and what
//! to ask which peer ([`SyncPlanner`]) and how often ([`SyncPace`]); where a commit or a received chunk
//! goes ([`BroadcastConfig::targets`], [`ForwardPolicy`]) and the bounded
//! queue of those sends ([`BroadcastQueue`]); who leads a region
//! ([`region_leader`]) and when and what its leader writes for the
//! rollups ([`RollupSchedule`], [`rollup_diff`]); when tombstones may be
//! collected and whether a node missed collected ones ([`Watermark`],
//! [`Checkpoints`], [`missed`]).
//!
//! Every one is a plain value: fed messages, outcomes and `Instant`s, it
//! answers with decisions and actions for the shell (`patina-replicator`)
//! to perform. This crate must never touch a socket, a clock (time comes
//! in as `Instant` arguments), SQLite, a thread or an async runtime, nor
//! depend on a crate that does: that keeps every protocol decision unit
//! testable and replayable, and the simulated cluster (`sim.rs`)
//! deterministic.

mod bookie;
mod broadcast;
mod catchup;
mod collect;
mod forward;
mod lag;
mod pace;
mod planner;
mod queued;
mod ranges;
mod region;
mod session;
#[cfg(test)]
mod sim;

pub use bookie::{Bookkeeper, ChunkFate, Lack, Partial, NEEDS_MAX, SUMMARY_SPANS_MAX};
pub use broadcast::{chunk_bytes, BroadcastConfig, BroadcastQueue};
pub use catchup::{CatchUp, CatchUpPhase, CatchUpStatus, CATCH_UP_WAIT};
pub use collect::{
    absence, applied_prefix, lower_bounds, missed, own_prefixes, summary_missed, summary_prefixes,
    Absence, Checkpoints, Watermark,
};
pub use forward::{Forward, ForwardPolicy, Hop};
pub use lag::{LagWindow, LAG_SAMPLES_MAX, LAG_WINDOW};
pub use pace::SyncPace;
pub use planner::{choose_peers, PlannerConfig, SyncPlanner};
pub use queued::QueuedVersions;
pub use ranges::RangeSet;
pub use region::{region_leader, rollup_diff, RollupDiff, RollupSchedule, RollupTiming};
pub use session::{
    PullAction, PullSession, ServeAction, ServeRefusal, ServeSession, SyncCount, SyncFailure,
    SyncLimits,
};
