//! Consistency digests: hashes of every key's converged state per CRR
//! table, in [`DIGEST_BUCKETS`] buckets of the pk-hash space, so replicas
//! can show they hold the same rows without shipping them, and narrow a
//! difference down to a bucket and then to its rows.
//!
//! What is hashed per key (docs/crr.md, "Digests", says why these fields
//! converge and the others may not): the packed pk, the causal length,
//! whether the table holds the row, and for each column that has a clock
//! entry its name, value, col_version, db_version, site id (the 16 bytes,
//! never the local ordinal) and seq. The sentinel's clock is left out, and
//! so are tombstones (an even causal length and no row): replicas collect
//! them at different moments, so which ones a replica still holds is not
//! converged state.
//! Everything is written little-endian and length-prefixed into SipHash-2-4
//! under fixed keys, so every machine and version computes the same hash;
//! a bucket's hash is the wrapping sum of its keys' hashes, which does not
//! depend on the order rows are read in.

use std::collections::HashMap;
use std::hash::Hasher;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension};
use siphasher::sip::SipHasher24;

use crate::clock::{Entry, RowClock};
use crate::error::{CrrError, Result};
use crate::schema::{self, quote_ident, TableInfo};
use crate::{pk, SiteId, Value};

/// Buckets per table. 256 keeps a table's digest at a few KiB of JSON
/// while a differing bucket of a 1M-row table holds ~4,000 keys to list.
pub const DIGEST_BUCKETS: usize = 256;

/// Names the encoding and hash below. Change it with either: nodes whose
/// formats differ must not compare their hashes.
pub const DIGEST_FORMAT: &str = "patina-digest-2/siphash-2-4/256";

/// SipHash keys: arbitrary constants, fixed forever (they are part of
/// [`DIGEST_FORMAT`]). Bucket choice and row hash use different keys so a
/// bucket's keys are not biased in their row hashes.
const ROW_KEYS: (u64, u64) = (0x7061_7469_6e61_2d72, 0x6f77_2d68_6173_6831);
const BUCKET_KEYS: (u64, u64) = (0x7061_7469_6e61_2d62, 0x7563_6b65_742d_3031);

/// The bucket a packed primary key falls in.
pub fn bucket_of(packed_pk: &[u8]) -> usize {
    let mut h = SipHasher24::new_with_keys(BUCKET_KEYS.0, BUCKET_KEYS.1);
    h.write(packed_pk);
    (h.finish() % DIGEST_BUCKETS as u64) as usize
}

/// One table's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDigest {
    pub table: String,
    /// Rows the table holds. Tombstones are neither counted nor hashed.
    pub rows: u64,
    /// [`DIGEST_BUCKETS`] hashes; 0 for a bucket without keys.
    pub buckets: Vec<u64>,
}

impl TableDigest {
    /// One hash of the whole table: equal tables, equal hashes.
    pub fn hash(&self) -> u64 {
        let mut h = SipHasher24::new_with_keys(ROW_KEYS.0, ROW_KEYS.1);
        for b in &self.buckets {
            h.write(&b.to_le_bytes());
        }
        h.finish()
    }
}

/// The converged state of one primary key, as hashed, for listing the
/// keys of a bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyState {
    /// The packed primary key.
    pub pk: Vec<u8>,
    /// Causal length: odd alive; even (deleted) only for a row the table
    /// holds under a tombstone's clock (written around capture), since
    /// tombstones themselves are not listed; 0 when the table holds a row
    /// that has no clock (written around capture).
    pub cl: u64,
    /// Whether the table holds a row for this key.
    pub in_table: bool,
    /// The hashed columns, by name.
    pub columns: Vec<ColumnState>,
    pub hash: u64,
}

impl KeyState {
    /// The primary key's values, in PRIMARY KEY order.
    pub fn pk_values(&self) -> Result<Vec<Value>> {
        Ok(pk::unpack(&self.pk)?)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnState {
    pub name: String,
    /// The value the table holds; `None` when it holds no row.
    pub value: Option<Value>,
    /// The column's clock entry; `None` only for a row without any clock.
    pub clock: Option<ColumnClock>,
}

/// A column clock entry with the writer's site id resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnClock {
    pub col_version: u64,
    pub db_version: u64,
    pub site_id: SiteId,
    pub seq: u64,
}

/// The CRR tables of the database attached as `schema`, by name.
pub fn crr_tables(conn: &Connection, schema: &str) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT name FROM {}.crr_tables ORDER BY name",
        quote_ident(schema)
    );
    let names = conn
        .prepare(&sql)?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(names)
}

/// The digest of CRR table `table` of the database attached as `schema`.
/// Reads every row and clock: run it on a read connection. Outside a
/// transaction it takes one for itself, so the rows and clocks it reads are
/// of one moment.
pub fn table_digest(conn: &Connection, schema: &str, table: &str) -> Result<TableDigest> {
    in_snapshot(conn, || {
        let scan = TableScan::new(conn, schema, table)?;
        let mut digest = TableDigest {
            table: table.to_owned(),
            rows: 0,
            buckets: vec![0; DIGEST_BUCKETS],
        };
        scan.run(
            |_| true,
            |bucket, key| {
                let hash = scan.hash(key)?;
                digest.buckets[bucket] = digest.buckets[bucket].wrapping_add(hash);
                if key.values.is_some() {
                    digest.rows += 1;
                }
                Ok(())
            },
        )?;
        Ok(digest)
    })
}

/// The keys of `bucket` of `table`, ordered by packed pk, each with its
/// hash: what tells two replicas' differing bucket apart row by row.
/// Tombstones are left out, as from the digest.
pub fn bucket_keys(
    conn: &Connection,
    schema: &str,
    table: &str,
    bucket: usize,
) -> Result<Vec<KeyState>> {
    in_snapshot(conn, || {
        let scan = TableScan::new(conn, schema, table)?;
        let mut out = Vec::new();
        scan.run(
            |b| b == bucket,
            |_, key| {
                out.push(scan.state(key)?);
                Ok(())
            },
        )?;
        out.sort_by(|a, b| a.pk.cmp(&b.pk));
        Ok(out)
    })
}

/// Runs `f` inside one read transaction, unless the caller is in one.
fn in_snapshot<T>(conn: &Connection, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !conn.is_autocommit() {
        return f();
    }
    conn.execute_batch("BEGIN")?;
    let out = f();
    // Only reads happened: ending it either way keeps nothing.
    let end = conn.execute_batch("ROLLBACK");
    let out = out?;
    end?;
    Ok(out)
}

/// One key as a scan finds it, borrowed from the scan.
struct KeyView<'a> {
    pk: &'a [u8],
    cl: u64,
    /// The row's replicated non-pk values in clock-slot order; `None` when
    /// the table holds no row.
    values: Option<&'a [ValueRef<'a>]>,
    /// `None` for a row without a clock.
    clock: Option<&'a RowClock>,
}

struct TableScan<'c> {
    conn: &'c Connection,
    info: TableInfo,
    /// `schema.table`, quoted.
    base: String,
    /// `schema.table__crr_clock`, quoted.
    clock_table: String,
    /// Clock slots in column-name order: columns are hashed by name, so the
    /// order they were added in does not matter.
    by_name: Vec<usize>,
    sites: HashMap<u32, SiteId>,
}

impl<'c> TableScan<'c> {
    fn new(conn: &'c Connection, schema: &str, table: &str) -> Result<TableScan<'c>> {
        let registered: Option<i64> = conn
            .query_row(
                &format!(
                    "SELECT 1 FROM {}.crr_tables WHERE name = ?1",
                    quote_ident(schema)
                ),
                [table],
                |r| r.get(0),
            )
            .optional()?;
        if registered.is_none() {
            return Err(CrrError::NotCrr(table.to_owned()));
        }
        let info = schema::introspect(conn, schema, table)?
            .ok_or_else(|| CrrError::Corrupt(format!("CRR table {table:?} does not exist")))?;
        let mut by_name: Vec<usize> = (0..info.non_pk.len()).collect();
        by_name.sort_by(|&a, &b| {
            let name = |slot: usize| &info.columns[info.non_pk[slot]].name;
            name(a).cmp(name(b))
        });
        let sites = conn
            .prepare(&format!(
                "SELECT ordinal, site_id FROM {}.crr_sites",
                quote_ident(schema)
            ))?
            .query_map([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, Vec<u8>>(1)?)))?
            .map(|row| {
                let (ordinal, bytes) = row?;
                let id = SiteId::from_slice(&bytes).ok_or_else(|| {
                    CrrError::Corrupt(format!("crr_sites: site {ordinal} is not 16 bytes"))
                })?;
                Ok((ordinal, id))
            })
            .collect::<Result<_>>()?;
        Ok(TableScan {
            conn,
            base: format!("{}.{}", quote_ident(schema), quote_ident(table)),
            clock_table: format!(
                "{}.{}",
                quote_ident(schema),
                quote_ident(&format!("{table}__crr_clock"))
            ),
            info,
            by_name,
            sites,
        })
    }

    fn slots(&self) -> usize {
        self.info.non_pk.len()
    }

    /// Visits every key whose bucket `want`s: each row of the table (with
    /// its clock, if any), then each alive clock whose row is missing.
    /// Tombstones (a deleted key's clock, no row) are not visited; a row
    /// the table holds under one is, with its values.
    fn run(
        &self,
        want: impl Fn(usize) -> bool,
        mut visit: impl FnMut(usize, &KeyView<'_>) -> Result<()>,
    ) -> Result<()> {
        let pk_count = self.info.pk.len();
        let columns: Vec<String> = self
            .info
            .pk_columns()
            .chain(self.info.non_pk_columns())
            .map(|c| quote_ident(&c.name))
            .collect();
        let mut rows_stmt =
            self.conn
                .prepare(&format!("SELECT {} FROM {}", columns.join(", "), self.base))?;
        let mut clock_stmt = self.conn.prepare(&format!(
            "SELECT clock FROM {} WHERE pk = ?1",
            self.clock_table
        ))?;
        // Rows with an odd-cl clock found in the table, against the odd-cl
        // clocks: when the counts agree every alive clock has its row, and
        // the clock table need not be read a second time.
        let mut alive_rows = 0u64;
        let mut rows = rows_stmt.query([])?;
        while let Some(row) = rows.next()? {
            let refs = (0..columns.len())
                .map(|i| row.get_ref(i))
                .collect::<rusqlite::Result<Vec<ValueRef<'_>>>>()?;
            let pk = pk::pack(refs[..pk_count].iter().copied()).map_err(|e| {
                CrrError::Corrupt(format!(
                    "table {:?} holds a row whose key cannot be packed: {e}",
                    self.info.name
                ))
            })?;
            let bucket = bucket_of(&pk);
            if !want(bucket) {
                continue;
            }
            let clock = clock_stmt
                .query_row([&pk], |r| {
                    Ok(RowClock::decode(r.get_ref(0)?.as_blob()?, self.slots()))
                })
                .optional()?
                .transpose()?
                .filter(|c| c.cl > 0);
            let cl = clock.as_ref().map_or(0, |c| c.cl);
            if cl % 2 == 1 {
                alive_rows += 1;
            }
            let key = KeyView {
                pk: &pk,
                cl,
                values: Some(&refs[pk_count..]),
                clock: clock.as_ref(),
            };
            visit(bucket, &key)?;
        }
        let mut alive_clocks = 0u64;
        self.each_clock(&want, |_, _, clock| {
            alive_clocks += u64::from(clock.cl % 2 == 1);
            Ok(())
        })?;
        if alive_clocks != alive_rows {
            self.visit_alive_without_row(&want, &mut visit)?;
        }
        Ok(())
    }

    /// Calls `f` with the bucket, packed pk and clock of each clock whose
    /// bucket `want`s.
    fn each_clock(
        &self,
        want: &impl Fn(usize) -> bool,
        mut f: impl FnMut(usize, &[u8], &RowClock) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT pk, clock FROM {}", self.clock_table))?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let pk = blob(row.get_ref(0)?)?;
            let bucket = bucket_of(pk);
            if !want(bucket) {
                continue;
            }
            let clock = RowClock::decode(blob(row.get_ref(1)?)?, self.slots())?;
            f(bucket, pk, &clock)?;
        }
        Ok(())
    }

    /// Visits the alive clocks whose row the table does not hold (deleted
    /// around capture), each looked up in the table: only run when the
    /// counts of alive rows and alive clocks disagree.
    fn visit_alive_without_row(
        &self,
        want: &impl Fn(usize) -> bool,
        visit: &mut impl FnMut(usize, &KeyView<'_>) -> Result<()>,
    ) -> Result<()> {
        let pk_where = self
            .info
            .pk_columns()
            .enumerate()
            .map(|(i, c)| format!("{} = ?{}", quote_ident(&c.name), i + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        let mut exists = self
            .conn
            .prepare(&format!("SELECT 1 FROM {} WHERE {pk_where}", self.base))?;
        self.each_clock(want, |bucket, pk, clock| {
            if clock.cl % 2 == 0 {
                return Ok(());
            }
            let values = pk::unpack(pk)?;
            let held = exists
                .query_row(rusqlite::params_from_iter(values.iter()), |_| Ok(()))
                .optional()?
                .is_some();
            if held {
                return Ok(());
            }
            let key = KeyView {
                pk,
                cl: clock.cl,
                values: None,
                clock: Some(clock),
            };
            visit(bucket, &key)
        })
    }

    /// The columns a key's state holds, by name: those with a clock entry,
    /// or every column of a row without a clock. A column without an entry
    /// in a clocked row holds its DEFAULT on every replica (docs/crr.md).
    fn columns<'k>(
        &'k self,
        key: &'k KeyView<'_>,
    ) -> impl Iterator<Item = (usize, Option<&'k Entry>)> + 'k {
        self.by_name
            .iter()
            .filter_map(move |&slot| match key.clock {
                None => Some((slot, None)),
                Some(clock) => clock.cols[slot].as_ref().map(|e| (slot, Some(e))),
            })
    }

    fn site(&self, ordinal: u32) -> Result<SiteId> {
        self.sites.get(&ordinal).copied().ok_or_else(|| {
            CrrError::Corrupt(format!(
                "a clock of table {:?} names site ordinal {ordinal}, which crr_sites lacks",
                self.info.name
            ))
        })
    }

    fn column_name(&self, slot: usize) -> &str {
        &self.info.columns[self.info.non_pk[slot]].name
    }

    fn hash(&self, key: &KeyView<'_>) -> Result<u64> {
        let mut h = SipHasher24::new_with_keys(ROW_KEYS.0, ROW_KEYS.1);
        put_bytes(&mut h, key.pk);
        h.write(&key.cl.to_le_bytes());
        h.write(&[u8::from(key.values.is_some())]);
        for (slot, entry) in self.columns(key) {
            put_bytes(&mut h, self.column_name(slot).as_bytes());
            match key.values {
                Some(values) => put_value(&mut h, values[slot]),
                None => h.write(&[0]),
            }
            match entry {
                Some(e) => {
                    h.write(&[1]);
                    h.write(&e.col_version.to_le_bytes());
                    h.write(&e.db_version.to_le_bytes());
                    h.write(self.site(e.site)?.as_bytes());
                    h.write(&e.seq.to_le_bytes());
                }
                None => h.write(&[0]),
            }
        }
        Ok(h.finish())
    }

    fn state(&self, key: &KeyView<'_>) -> Result<KeyState> {
        let columns = self
            .columns(key)
            .map(|(slot, entry)| {
                Ok(ColumnState {
                    name: self.column_name(slot).to_owned(),
                    value: key.values.map(|v| Value::from_ref(v[slot])),
                    clock: entry
                        .map(|e| {
                            Ok::<_, CrrError>(ColumnClock {
                                col_version: e.col_version,
                                db_version: e.db_version,
                                site_id: self.site(e.site)?,
                                seq: e.seq,
                            })
                        })
                        .transpose()?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(KeyState {
            pk: key.pk.to_vec(),
            cl: key.cl,
            in_table: key.values.is_some(),
            columns,
            hash: self.hash(key)?,
        })
    }
}

fn blob(v: ValueRef<'_>) -> Result<&[u8]> {
    v.as_blob().map_err(|_| {
        CrrError::Corrupt("a clock table holds a key or clock that is not a blob".into())
    })
}

fn put_bytes(h: &mut SipHasher24, bytes: &[u8]) {
    h.write(&(bytes.len() as u64).to_le_bytes());
    h.write(bytes);
}

/// A value as a tag (its storage class) and its bytes: `1` and `1.0` and
/// `'1'` hash apart, as they merge apart.
fn put_value(h: &mut SipHasher24, v: ValueRef<'_>) {
    match v {
        ValueRef::Null => h.write(&[1]),
        ValueRef::Integer(i) => {
            h.write(&[2]);
            h.write(&i.to_le_bytes());
        }
        ValueRef::Real(f) => {
            h.write(&[3]);
            h.write(&f.to_bits().to_le_bytes());
        }
        ValueRef::Text(t) => {
            h.write(&[4]);
            put_bytes(h, t);
        }
        ValueRef::Blob(b) => {
            h.write(&[5]);
            put_bytes(h, b);
        }
    }
}
