//! The cluster protocol core, sans-I/O: which versions this node holds
//! ([`Bookkeeper`]), what to ask which peer during sync ([`SyncPlanner`]) and
//! what to push to whom after a commit ([`BroadcastQueue`]). These are plain
//! values fed with messages and `Instant`s; they never touch a socket, a
//! clock, SQLite or a thread. The protocol is `docs/replication.md`.

mod bookie;
mod broadcast;
mod lag;
mod planner;
mod ranges;
#[cfg(test)]
mod sim;

pub use bookie::{Bookkeeper, ChunkFate, Lack, Partial, NEEDS_MAX, SUMMARY_SPANS_MAX};
pub use broadcast::{chunk_bytes, BroadcastConfig, BroadcastQueue, Hop};
pub use lag::{LagWindow, LAG_SAMPLES_MAX, LAG_WINDOW};
pub use planner::{choose_peers, PlannerConfig, SyncPlanner};
pub use ranges::RangeSet;
