//! Per-row clocks: the causal length, the sentinel's clock and one clock per
//! replicated column, stored as one blob per row.
//!
//! cr-sqlite keeps one clock row per (row, column); Patina packs a row's
//! clocks together so a local insert costs one clock write, not one per
//! column. What is read out (changes) and decided (merge) is the same.

use crate::error::{CrrError, Result};

/// Counters are SQLite integers on the wire and in changes: never above
/// i64::MAX.
pub const MAX_CLOCK_VALUE: u64 = i64::MAX as u64;

/// `v + by`, or an error if that leaves the i64 range (only a corrupt or
/// tampered clock gets there: merges refuse counters above 2^62).
pub(crate) fn add(v: u64, by: u64) -> Result<u64> {
    v.checked_add(by)
        .filter(|&n| n <= MAX_CLOCK_VALUE)
        .ok_or_else(|| corrupt("a counter would overflow"))
}

/// The clock of one entry: who wrote it, in which transaction, at which seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub col_version: u64,
    pub db_version: u64,
    /// Local ordinal of the writing site; 0 is this replica.
    pub site: u32,
    pub seq: u64,
}

/// Every clock of one row (one primary key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowClock {
    /// Causal length: odd = alive, even = deleted. Without a stored sentinel
    /// it is 1 if any column entry exists (crr-model.md 2).
    pub cl: u64,
    /// The sentinel's clock; its col_version is always `cl`.
    pub sentinel: Option<Entry>,
    /// One slot per replicated non-pk column, in table order.
    pub cols: Vec<Option<Entry>>,
}

impl RowClock {
    /// A row never seen: cl 0, nothing stored.
    pub fn unseen(slots: usize) -> Self {
        RowClock {
            cl: 0,
            sentinel: None,
            cols: vec![None; slots],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sentinel.is_none() && self.cols.iter().all(Option::is_none)
    }

    /// Every distinct (site, db_version) this row's entries carry: the keys
    /// under which the row is found when reading changes.
    pub fn versions(&self) -> Vec<(u32, u64)> {
        let mut out: Vec<(u32, u64)> = self
            .sentinel
            .iter()
            .chain(self.cols.iter().flatten())
            .map(|e| (e.site, e.db_version))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 8 * self.cols.len());
        put_varint(&mut out, self.cl);
        match &self.sentinel {
            Some(e) => {
                out.push(1);
                put_entry(&mut out, e);
            }
            None => out.push(0),
        }
        // Trailing empty slots are not stored: a column added later reads
        // as "no clock" in old blobs.
        let used = self
            .cols
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |i| i + 1);
        put_varint(&mut out, used as u64);
        for slot in &self.cols[..used] {
            match slot {
                Some(e) => {
                    out.push(1);
                    put_entry(&mut out, e);
                }
                None => out.push(0),
            }
        }
        out
    }

    /// Decodes a stored clock for a table that now has `slots` columns.
    pub fn decode(mut bytes: &[u8], slots: usize) -> Result<Self> {
        let buf = &mut bytes;
        let cl = get_varint(buf)?;
        let sentinel = match get_u8(buf)? {
            0 => None,
            _ => Some(get_entry(buf)?),
        };
        let used = get_varint(buf)? as usize;
        if used > slots {
            return Err(corrupt("more column clocks than the table has columns"));
        }
        let mut cols = vec![None; slots];
        for slot in cols.iter_mut().take(used) {
            if get_u8(buf)? != 0 {
                *slot = Some(get_entry(buf)?);
            }
        }
        if !buf.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        let clock = RowClock { cl, sentinel, cols };
        let entries = clock.sentinel.iter().chain(clock.cols.iter().flatten());
        let too_big = |e: &Entry| {
            [e.col_version, e.db_version, e.seq]
                .iter()
                .any(|&v| v > MAX_CLOCK_VALUE)
        };
        if clock.cl > MAX_CLOCK_VALUE || entries.clone().any(too_big) {
            return Err(corrupt("a counter is beyond i64"));
        }
        if clock.sentinel.is_some_and(|s| s.col_version != clock.cl) {
            return Err(corrupt(
                "the sentinel's col_version is not the causal length",
            ));
        }
        Ok(clock)
    }
}

fn corrupt(what: &str) -> CrrError {
    CrrError::Corrupt(format!("stored row clock is corrupt: {what}"))
}

fn put_entry(out: &mut Vec<u8>, e: &Entry) {
    put_varint(out, e.col_version);
    put_varint(out, e.db_version);
    put_varint(out, e.site as u64);
    put_varint(out, e.seq);
}

fn get_entry(buf: &mut &[u8]) -> Result<Entry> {
    Ok(Entry {
        col_version: get_varint(buf)?,
        db_version: get_varint(buf)?,
        site: u32::try_from(get_varint(buf)?).map_err(|_| corrupt("site ordinal"))?,
        seq: get_varint(buf)?,
    })
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_u8(buf: &mut &[u8]) -> Result<u8> {
    let (&b, rest) = buf.split_first().ok_or_else(|| corrupt("truncated"))?;
    *buf = rest;
    Ok(b)
}

pub(crate) fn get_varint(buf: &mut &[u8]) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = get_u8(buf)?;
        v |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(corrupt("varint too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = |cv, dbv, site, seq| Entry {
            col_version: cv,
            db_version: dbv,
            site,
            seq,
        };
        let clock = RowClock {
            cl: 3,
            sentinel: Some(e(3, 1 << 40, 2, 0)),
            cols: vec![
                Some(e(1, 5, 0, 1)),
                None,
                Some(e(0, 7, 1, MAX_CLOCK_VALUE)),
                None,
            ],
        };
        let back = RowClock::decode(&clock.encode(), 4).unwrap();
        assert_eq!(back, clock);
        // A table that gained two columns reads the old blob as-is.
        let wider = RowClock::decode(&clock.encode(), 6).unwrap();
        assert_eq!(wider.cols.len(), 6);
        assert_eq!(wider.cols[..4], clock.cols[..]);
        assert_eq!(clock.versions(), vec![(0, 5), (1, 7), (2, 1 << 40)]);
    }

    #[test]
    fn corrupt_blobs_are_errors() {
        assert!(RowClock::decode(&[], 1).is_err());
        assert!(RowClock::decode(&[1, 0, 5], 1).is_err());
        assert!(RowClock::decode(&[1, 0, 0, 9], 1).is_err());
        assert!(RowClock::decode(&[0xff; 12], 1).is_err());
        let beyond_i64 = RowClock {
            cl: 1,
            sentinel: None,
            cols: vec![Some(Entry {
                col_version: u64::MAX,
                db_version: 1,
                site: 0,
                seq: 0,
            })],
        };
        assert!(RowClock::decode(&beyond_i64.encode(), 1).is_err());
        let odd_sentinel = RowClock {
            cl: 3,
            sentinel: Some(Entry {
                col_version: 1,
                db_version: 1,
                site: 0,
                seq: 0,
            }),
            cols: vec![],
        };
        assert!(RowClock::decode(&odd_sentinel.encode(), 0).is_err());
    }
}
