//! `patina-region`: a node's place in a regionalized fleet
//! (docs/regions.md). [`RegionRuntime`] runs the node's regional cluster
//! and, for a global member, the global cluster too, relaying global
//! changes between them; it names the region's leader from the regional
//! membership, and on the leader evaluates the configured [`Rollup`]s
//! over the region's tables, writing their rows into global tables, and
//! keeps the region's row of `global.patina_regions` (who leads, when
//! rollups were last published) for every other region to read.
//!
//! The decisions (who leads, when to evaluate, what to write) are
//! `patina-proto` values; this crate reads and writes through the
//! [`Node`](patina_node::Node) and moves nothing over the network itself.

mod leader;
mod publisher;
mod recorder;
mod rollup;
mod runtime;

pub use patina_proto::{region_leader, RollupTiming};
pub use publisher::{RollupReport, RollupsStatus};
pub use rollup::{Rollup, RollupConfig, RollupError};
pub use runtime::{RegionError, RegionOptions, RegionRuntime};
