//! Consistency digests of both databases (`patina_crr::digest`), read on a
//! connection of their own: a digest needs one read transaction across
//! every table, which the pool's connections refuse, and reading every row
//! must not hold a pooled connection that queries are waiting for. Being a
//! read, it never blocks the writers (WAL).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use patina_crr::digest::{bucket_keys, crr_tables, table_digest, KeyState, TableDigest};
use patina_crr::CrrError;
use patina_wire::DbKind;
use rusqlite::Connection;

use crate::reader::open_reader;

pub use patina_crr::digest::{ColumnClock, ColumnState, DIGEST_BUCKETS, DIGEST_FORMAT};

/// SQLite VM steps between checks whether a digest must stop.
const INTERRUPT_CHECK_STEPS: i32 = 10_000;

/// What to digest: every CRR table or the one named, whole or one bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DigestRequest {
    /// Only this table (in whichever database has it).
    pub table: Option<String>,
    /// List the keys of this bucket instead of hashing every bucket.
    pub bucket: Option<usize>,
}

/// The answer to a [`DigestRequest`], per database in `DbKind::ALL` order.
#[derive(Debug, Clone, PartialEq)]
pub enum Digest {
    Tables(Vec<(DbKind, Vec<TableDigest>)>),
    /// Each table's keys in the requested bucket.
    Bucket {
        bucket: usize,
        dbs: Vec<(DbKind, Vec<BucketKeys>)>,
    },
}

/// One table's keys in a bucket, ordered by packed pk.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketKeys {
    pub table: String,
    pub keys: Vec<KeyState>,
}

/// Why a digest was not made.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("no CRR table named {0:?} in regional.db or global.db: GET /v1/digest without table= lists them")]
    UnknownTable(String),
    #[error("bucket {0} does not exist: buckets are numbered 0 to {max}", max = DIGEST_BUCKETS - 1)]
    NoSuchBucket(usize),
    #[error("{db}.db could not be digested: {source}")]
    Database { db: &'static str, source: CrrError },
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// Stops a running digest when its caller goes away (the request's
/// future is dropped): nobody would read the answer.
pub(crate) struct CancelOnDrop(pub Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Makes the digest `request` asks for; blocking. `stop` is checked while
/// SQLite runs: set, the digest ends with an error.
pub(crate) fn make(
    paths: (&Path, &Path),
    request: &DigestRequest,
    stop: impl Fn() -> bool + Send + 'static,
) -> Result<Digest, DigestError> {
    if let Some(bucket) = request.bucket.filter(|b| *b >= DIGEST_BUCKETS) {
        return Err(DigestError::NoSuchBucket(bucket));
    }
    let mut opened = open_reader(paths.0, paths.1).map_err(|e| DigestError::Database {
        db: "regional",
        source: e.into(),
    })?;
    let stopped = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&stopped);
    opened
        .progress_handler(
            INTERRUPT_CHECK_STEPS,
            Some(move || {
                let stop = stop();
                seen.store(stop, Ordering::Relaxed);
                stop
            }),
        )
        .map_err(|e| DigestError::Database {
            db: "regional",
            source: e.into(),
        })?;
    let conn = Snapshot::begin(&opened).map_err(|e| DigestError::Database {
        db: "regional",
        source: e.into(),
    })?;
    let out = digest_in(conn.0, request);
    if stopped.load(Ordering::Relaxed) {
        return Err(DigestError::ShuttingDown);
    }
    out
}

/// One read transaction over both databases (each is read as of its first
/// read inside it); rolled back when dropped.
struct Snapshot<'c>(&'c Connection);

impl<'c> Snapshot<'c> {
    fn begin(conn: &'c Connection) -> rusqlite::Result<Snapshot<'c>> {
        conn.execute_batch("BEGIN")?;
        Ok(Snapshot(conn))
    }
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        let _ = self.0.execute_batch("ROLLBACK");
    }
}

/// The attached name of each database on a reader.
fn schema_of(db: DbKind) -> &'static str {
    match db {
        DbKind::Regional => "main",
        DbKind::Global => "global",
    }
}

fn digest_in(conn: &Connection, request: &DigestRequest) -> Result<Digest, DigestError> {
    let mut tables = Vec::new();
    for db in DbKind::ALL {
        let mut names = crr_tables(conn, schema_of(db)).map_err(failed(db))?;
        if let Some(only) = &request.table {
            names.retain(|n| n == only);
        }
        tables.push((db, names));
    }
    if let Some(only) = &request.table {
        if tables.iter().all(|(_, names)| names.is_empty()) {
            return Err(DigestError::UnknownTable(only.clone()));
        }
    }
    match request.bucket {
        None => {
            let mut out = Vec::new();
            for (db, names) in tables {
                let digests = names
                    .iter()
                    .map(|name| table_digest(conn, schema_of(db), name))
                    .collect::<Result<_, _>>()
                    .map_err(failed(db))?;
                out.push((db, digests));
            }
            Ok(Digest::Tables(out))
        }
        Some(bucket) => {
            let mut dbs = Vec::new();
            for (db, names) in tables {
                let listed = names
                    .into_iter()
                    .map(|name| {
                        let keys = bucket_keys(conn, schema_of(db), &name, bucket)?;
                        Ok(BucketKeys { table: name, keys })
                    })
                    .collect::<Result<_, CrrError>>()
                    .map_err(failed(db))?;
                dbs.push((db, listed));
            }
            Ok(Digest::Bucket { bucket, dbs })
        }
    }
}

fn failed(db: DbKind) -> impl Fn(CrrError) -> DigestError {
    move |source| DigestError::Database {
        db: db.name(),
        source,
    }
}
