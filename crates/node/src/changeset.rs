//! What a commit produced: the changes of one transaction, as every
//! consumer of commits (subscriptions, broadcast, the update feed) sees it.

use std::collections::HashMap;
use std::sync::Arc;

use patina_crr::{Change, SiteId};
use patina_wire::DbKind;

/// The changes of one committed transaction of one actor in one database.
#[derive(Debug, Clone)]
pub struct Changeset {
    pub db: DbKind,
    pub actor: SiteId,
    pub version: u64,
    /// When the origin committed it, Unix milliseconds (0: unknown).
    pub committed_ms: u64,
    /// Every change of the version, ordered by seq — or none, when
    /// `omitted` says the version was too large to carry.
    pub changes: Arc<[Change]>,
    /// Set when the version has more than [`crate::LARGE_CHANGES`] changes:
    /// they are not held in memory (a 100,000-row transaction's took
    /// ≈ 100 MiB per copy), only what they touched. Consumers that need
    /// the changes read them from the database (replication serves the
    /// version in pages) or treat the tables as wholly changed.
    pub omitted: Option<Arc<Omitted>>,
}

/// What a changeset too large to carry its changes touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Omitted {
    /// The tables it wrote, sorted.
    pub tables: Vec<String>,
    /// How many changes it made (at least).
    pub changes: u64,
}

/// One row a changeset changed: its primary key, and whether the row is
/// gone (deleted) or present (inserted or updated).
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    pub pk: Vec<patina_crr::Value>,
    pub deleted: bool,
}

/// Now, as Unix milliseconds (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Changeset {
    /// The rows of `table` this changeset changed, in order of first change
    /// (none when its changes were `omitted`).
    pub fn row_changes(&self, table: &str) -> Vec<RowChange> {
        let mut seen: HashMap<&[u8], usize> = HashMap::new();
        let mut out: Vec<RowChange> = Vec::new();
        for c in self.changes.iter().filter(|c| c.table == table) {
            let deleted = c.cl % 2 == 0;
            match seen.get(c.pk.as_slice()) {
                Some(&i) => out[i].deleted = deleted,
                None => {
                    let Ok(pk) = patina_crr::pk::unpack(&c.pk) else {
                        continue;
                    };
                    seen.insert(&c.pk, out.len());
                    out.push(RowChange { pk, deleted });
                }
            }
        }
        out
    }
}

/// Where a committed changeset came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client's transaction on this node.
    Local,
    /// Merged from a peer (broadcast or sync).
    Remote,
}

/// Something that wants every commit of both databases, local or merged
/// from a peer (subscriptions do). Called on the writer thread that
/// committed, in commit order, before the next commit of that database:
/// keep it short and never block (hand the work to a queue).
pub trait CommitObserver: Send + Sync {
    fn on_commit(&self, changeset: &Changeset, origin: Origin);
}
