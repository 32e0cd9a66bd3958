//! `patina-sim`: Patina's fleet-scale deterministic simulator. Thousands of
//! nodes in tens of regions run the project's real sans-I/O protocol —
//! foca with the agent's settings, the bookkeeper, sync planner, pace and
//! sessions, broadcast targets and forwarding, the region leader and its
//! rollup schedule — over a simulated clock and network (`net`, `geo`)
//! with a seeded workload and faults, while invariants are checked. The
//! databases are an in-memory model (`model`); docs/sim.md says what is
//! real and what is modelled. Same configuration and seed, same run.
//! `suite` runs the report's scenarios and draws them (`charts`).

pub mod charts;
pub mod config;
pub mod geo;
pub mod model;
pub mod net;
pub mod node;
pub mod report;
pub mod sched;
pub mod suite;
pub mod world;

pub use config::{ConfigError, SimConfig};
pub use report::{Report, Samples};
pub use world::{simulate, World};
