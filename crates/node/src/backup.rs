//! Online backups: a copy of both databases, each a consistent snapshot
//! with its own replication bookkeeping, taken while writes go on, and a
//! manifest that says what the copy holds.
//!
//! Everything a node must keep lives in `regional.db` and `global.db`:
//! rows, clocks, the sites table (this node's version counter), applied
//! versions, buffered and held changes. The actor id file is not copied —
//! the manifest names the actor, and a restore gives the new node a fresh
//! one (`restore`). Members files and subscription stores are not copied:
//! a seeded node joins through its config's bootstrap list, and
//! subscriptions belong to the clients of one node.
//!
//! Each database is copied with SQLite's online backup API in one step,
//! from a read transaction: in WAL mode that is a snapshot of one commit,
//! and writers go on meanwhile (the WAL grows until the copy ends, since
//! a checkpoint cannot pass a reader). Both read transactions are opened
//! before either copy starts, so the two snapshots are microseconds apart;
//! no transaction spans both databases (the classifier refuses one that
//! writes both), so that is the most "at once" there is to keep.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use patina_crr::SiteId;
use patina_proto::RangeSet;
use patina_wire::{DbKind, Span};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::bookstore;
use crate::changeset::unix_ms;

/// The manifest's file name in a backup directory. It is written last: a
/// directory without it is a backup that did not finish.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The layout of a backup directory this version writes and restores.
pub const BACKUP_FORMAT: u32 = 1;

/// What a backup holds. The caller encodes it (JSON by the API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    pub format: u32,
    pub patina_version: String,
    /// The backed-up node's actor id (hex): the site id of both databases.
    pub actor_id: String,
    pub region: String,
    /// When the snapshots were taken, Unix milliseconds.
    pub taken_unix_ms: u64,
    pub databases: Vec<DbManifest>,
}

/// One database of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbManifest {
    /// `regional` or `global`.
    pub db: String,
    /// The file, in the backup directory.
    pub file: String,
    pub bytes: u64,
    /// The backed-up node's own last version in this database.
    pub own_version: u64,
    /// Every actor the database knows, by actor id.
    pub actors: Vec<ActorManifest>,
}

/// What one database holds of one actor's versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorManifest {
    pub actor: String,
    /// The highest version of the actor any change held here came from.
    pub max_version: u64,
    /// Versions recorded as applied whole (the node's own: all of them).
    pub applied_versions: u64,
    pub max_applied: u64,
    /// Versions of which some chunks are buffered.
    pub partial_versions: u64,
}

/// What [`Node::backup`](crate::Node::backup) did.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub dir: PathBuf,
    pub manifest: BackupManifest,
    /// From the request to the last fsync.
    pub took: Duration,
}

/// Why a backup was not taken. Nothing is left of it in the target.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup target {0:?} is not an absolute path: the agent writes it on its own host, so name it from the root (e.g. /var/backups/patina/2024-05-01)")]
    RelativeTarget(PathBuf),
    #[error("backup target {0} exists already: a backup goes into a new directory; name one that does not exist (its parent must)")]
    TargetExists(PathBuf),
    #[error("backup target {target}: its parent directory does not exist on the agent's host; create {parent} first")]
    ParentMissing { target: PathBuf, parent: PathBuf },
    #[error("backup target {target} is inside the node's data dir {data_dir}: keep backups elsewhere (a data dir holds one node's files only)")]
    InsideDataDir { target: PathBuf, data_dir: PathBuf },
    #[error("backup target {target}: the agent cannot create it ({source}); choose a place the agent's user may write")]
    CannotCreate {
        target: PathBuf,
        source: std::io::Error,
    },
    #[error("another backup of this node is running: wait for it to finish, then retry")]
    Busy,
    #[error("the disk holding backup target {0} is full: nothing of the backup was kept; free space there or choose another place")]
    StorageFull(PathBuf),
    #[error("backup target {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("copying {db}.db: {source}")]
    Sqlite {
        db: &'static str,
        source: rusqlite::Error,
    },
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// What the node knows that a backup needs besides its files.
pub(crate) struct Source<'a> {
    pub data_dir: &'a Path,
    pub regional: &'a Path,
    pub global: &'a Path,
    pub actor: SiteId,
    pub region: &'a str,
}

/// Takes a backup into `target`, a directory this creates; writes the
/// manifest with `encode` last, fsyncs everything. On failure removes the
/// directory.
pub(crate) fn take(
    source: &Source<'_>,
    target: &Path,
    encode: impl FnOnce(&BackupManifest) -> Vec<u8>,
) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    create_target(source.data_dir, target)?;
    match write_backup(source, target, encode) {
        Ok(manifest) => Ok(BackupReport {
            dir: target.to_owned(),
            manifest,
            took: started.elapsed(),
        }),
        Err(e) => {
            if let Err(cleanup) = fs::remove_dir_all(target) {
                tracing::warn!(target = %target.display(), error = %cleanup, "could not remove a failed backup's directory");
            }
            Err(e)
        }
    }
}

fn create_target(data_dir: &Path, target: &Path) -> Result<(), BackupError> {
    if !target.is_absolute() {
        return Err(BackupError::RelativeTarget(target.to_owned()));
    }
    let parent = target.parent().unwrap_or(target);
    if let (Ok(parent), Ok(data_dir)) = (parent.canonicalize(), data_dir.canonicalize()) {
        if parent.starts_with(&data_dir) {
            return Err(BackupError::InsideDataDir {
                target: target.to_owned(),
                data_dir,
            });
        }
    }
    // create_dir, not create_dir_all: it fails when the directory exists,
    // so two backups never share one.
    fs::create_dir(target).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => BackupError::TargetExists(target.to_owned()),
        std::io::ErrorKind::NotFound => BackupError::ParentMissing {
            target: target.to_owned(),
            parent: parent.to_owned(),
        },
        _ => BackupError::CannotCreate {
            target: target.to_owned(),
            source: e,
        },
    })
}

fn write_backup(
    source: &Source<'_>,
    target: &Path,
    encode: impl FnOnce(&BackupManifest) -> Vec<u8>,
) -> Result<BackupManifest, BackupError> {
    let sqlite = |db: DbKind| {
        let path = target.to_owned();
        move |source: rusqlite::Error| {
            if is_full(&source) {
                BackupError::StorageFull(path.clone())
            } else {
                BackupError::Sqlite {
                    db: db.name(),
                    source,
                }
            }
        }
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::StorageFull {
                BackupError::StorageFull(path.clone())
            } else {
                BackupError::Io {
                    path: path.clone(),
                    source,
                }
            }
        }
    };
    let snapshot =
        open_snapshot(source.regional, source.global).map_err(sqlite(DbKind::Regional))?;
    let taken_unix_ms = unix_ms();
    let mut databases = Vec::new();
    for db in [DbKind::Regional, DbKind::Global] {
        let file = file_name(db);
        let path = target.join(file);
        let mut copy = Connection::open(&path).map_err(sqlite(db))?;
        copy_database(&snapshot, schema_of(db), &mut copy).map_err(sqlite(db))?;
        // A backup file is one file, readable without its -wal and -shm
        // (`sqlite3 -readonly`); a restore turns WAL back on.
        copy.pragma_update(None, "journal_mode", "DELETE")
            .map_err(sqlite(db))?;
        let (own_version, actors) = summarize(&copy).map_err(sqlite(db))?;
        copy.close().map_err(|(_, e)| sqlite(db)(e))?;
        let bytes = sync_file(&path).map_err(io(&path))?;
        databases.push(DbManifest {
            db: db.name().to_owned(),
            file: file.to_owned(),
            bytes,
            own_version,
            actors,
        });
    }
    // The snapshots end only now: the copies read from them.
    drop(snapshot);
    let manifest = BackupManifest {
        format: BACKUP_FORMAT,
        patina_version: env!("CARGO_PKG_VERSION").to_owned(),
        actor_id: source.actor.to_hex(),
        region: source.region.to_owned(),
        taken_unix_ms,
        databases,
    };
    let path = target.join(MANIFEST_FILE);
    fs::write(&path, encode(&manifest)).map_err(io(&path))?;
    sync_file(&path).map_err(io(&path))?;
    sync_dir(target).map_err(io(target))?;
    // The new directory's own entry.
    if let Some(parent) = target.parent() {
        sync_dir(parent).map_err(io(parent))?;
    }
    Ok(manifest)
}

/// The file of `db` in a data dir or a backup.
pub(crate) fn file_name(db: DbKind) -> &'static str {
    match db {
        DbKind::Regional => "regional.db",
        DbKind::Global => "global.db",
    }
}

fn schema_of(db: DbKind) -> &'static str {
    match db {
        DbKind::Regional => "main",
        DbKind::Global => "global",
    }
}

/// A read-only connection holding a read transaction on both databases,
/// begun on each by a read before either is copied.
fn open_snapshot(regional: &Path, global: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        regional,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let global = global
        .to_str()
        .ok_or_else(|| rusqlite::Error::InvalidPath(global.to_owned()))?;
    conn.execute("ATTACH DATABASE ?1 AS global", [global])?;
    conn.execute_batch("BEGIN")?;
    for schema in ["main", "global"] {
        conn.query_row(
            &format!("SELECT count(*) FROM {schema}.sqlite_master"),
            [],
            |r| r.get::<_, i64>(0),
        )?;
    }
    Ok(conn)
}

/// Copies `schema` of `snapshot` into `copy` in one backup step: within the
/// snapshot's read transaction, so the copy is that snapshot. (Several
/// smaller steps would each see the latest commit, and SQLite restarts a
/// copy that another connection writes to between steps.)
fn copy_database(
    snapshot: &Connection,
    schema: &str,
    copy: &mut Connection,
) -> rusqlite::Result<()> {
    use rusqlite::backup::{Backup, StepResult};
    let backup = Backup::new_with_names(snapshot, schema, copy, rusqlite::MAIN_DB)?;
    match backup.step(-1)? {
        StepResult::Done => Ok(()),
        // Only a step that stopped early answers these; -1 copies every page.
        other => Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some(format!("the copy stopped before its end ({other:?})")),
        )),
    }
}

/// The database's own version and what it holds of every actor, as read
/// from the database itself (`crr_sites`, the replication bookkeeping).
pub(crate) fn summarize(conn: &Connection) -> rusqlite::Result<(u64, Vec<ActorManifest>)> {
    use std::collections::BTreeMap;
    let local: Option<(Vec<u8>, i64)> = conn
        .query_row(
            "SELECT site_id, db_version FROM crr_sites WHERE ordinal = 0",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let own = local.as_ref().and_then(|(id, _)| SiteId::from_slice(id));
    let own_version = local.map_or(0, |(_, v)| v.max(0) as u64);
    #[derive(Default)]
    struct Of {
        max_version: u64,
        applied: RangeSet,
        partial: u64,
    }
    let mut actors: BTreeMap<SiteId, Of> = BTreeMap::new();
    let mut sites = conn.prepare("SELECT site_id, db_version FROM crr_sites")?;
    let mut rows = sites.query([])?;
    while let Some(row) = rows.next()? {
        let id: Vec<u8> = row.get(0)?;
        let Some(id) = SiteId::from_slice(&id) else {
            continue;
        };
        actors.entry(id).or_default().max_version = row.get::<_, i64>(1)?.max(0) as u64;
    }
    let persisted = bookstore::read(conn)?;
    for (actor, spans) in persisted.applied {
        let of = actors.entry(actor).or_default();
        for span in spans {
            of.applied.insert(span);
        }
    }
    for (actor, _, _, _) in persisted.partials {
        actors.entry(actor).or_default().partial += 1;
    }
    if let Some(own) = own.filter(|_| own_version > 0) {
        actors
            .entry(own)
            .or_default()
            .applied
            .insert(Span::new(1, own_version));
    }
    Ok((
        own_version,
        actors
            .into_iter()
            .map(|(actor, of)| ActorManifest {
                actor: actor.to_hex(),
                max_version: of.max_version,
                applied_versions: of.applied.len(),
                max_applied: of.applied.max().unwrap_or(0),
                partial_versions: of.partial,
            })
            .collect(),
    ))
}

fn is_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

/// fsyncs a file; returns its length.
pub(crate) fn sync_file(path: &Path) -> std::io::Result<u64> {
    let file = fs::File::open(path)?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

/// fsyncs a directory: the entries made in it survive a crash.
pub(crate) fn sync_dir(path: &Path) -> std::io::Result<()> {
    fs::File::open(path)?.sync_all()
}
