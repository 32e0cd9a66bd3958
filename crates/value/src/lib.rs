//! `patina-value`: the two plain values every layer of Patina shares — an
//! owned SQLite [`Value`] and the 16-byte [`SiteId`] that names a replica
//! (an actor) — so that the wire format and the replication protocol can
//! name them without linking SQLite.
//!
//! It must never do I/O or depend on SQLite by default: the `rusqlite`
//! feature (turned on by `patina-crr`) only adds the conversions to and
//! from rusqlite's value types.

mod site;
mod value;

pub use site::{ParseSiteIdError, SiteId};
pub use value::Value;
