//! The cluster protocol core, sans-I/O (see `docs/replication.md`).

mod ranges;

pub use ranges::RangeSet;
