//! The cluster protocol core, sans-I/O (see `docs/replication.md`).

mod bookie;
mod ranges;

pub use bookie::{Bookkeeper, ChunkFate, Lack, Partial, NEEDS_MAX, SUMMARY_SPANS_MAX};
pub use ranges::RangeSet;
