//! Between `patina-crr`'s changes and the wire's chunks: a chunk names its
//! actor and version once; a `Change` carries them itself.

use patina_crr::{Change, SiteId};
use patina_wire::{ChangeChunk, WireChange};

/// `changes` as the wire carries them (their site id and db_version become
/// the chunk's).
pub fn wire_changes(changes: &[Change]) -> Vec<WireChange> {
    changes
        .iter()
        .map(|c| WireChange {
            table: c.table.clone(),
            pk: c.pk.clone(),
            cid: c.cid.clone(),
            val: c.val.clone(),
            col_version: c.col_version,
            cl: c.cl,
            seq: c.seq,
        })
        .collect()
}

/// The chunk's changes as `patina-crr` changes, site id and db_version
/// filled in from the chunk.
pub fn chunk_changes(chunk: &ChangeChunk) -> Vec<Change> {
    version_changes(chunk.actor, chunk.version, &chunk.changes)
}

/// `changes` of `actor`'s `version` as `patina-crr` changes.
pub(crate) fn version_changes(actor: SiteId, version: u64, changes: &[WireChange]) -> Vec<Change> {
    changes
        .iter()
        .map(|c| Change {
            table: c.table.clone(),
            pk: c.pk.clone(),
            cid: c.cid.clone(),
            val: c.val.clone(),
            col_version: c.col_version,
            db_version: version as i64,
            site_id: actor,
            cl: c.cl,
            seq: c.seq,
        })
        .collect()
}
