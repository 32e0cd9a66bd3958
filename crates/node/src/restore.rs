//! Seeding a new node from a backup: the data dir of a node that holds
//! the backed-up rows and bookkeeping under an actor id of its own.
//!
//! In each database the backed-up node's own writes become a remote
//! actor's (`CrrConn::adopt_as_new_site`: its versions and clocks keep its
//! id), and the replication bookkeeping records its versions up to the
//! snapshot as applied — a node's own versions are implicit
//! (`1..=db_version`), a peer's are rows of `patina_applied`. Every other
//! actor's bookkeeping is kept as it was. Sync then asks peers only for
//! what is newer than the snapshot. The new node never speaks as the old
//! actor: the data dir's `actor_id` names the new one, and both databases'
//! site ids agree with it (the node refuses to open otherwise).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use patina_crr::{CrrConn, CrrError, SiteId};
use patina_proto::RangeSet;
use patina_wire::{DbKind, Span};

use crate::backup::{self, BackupManifest, DbManifest, BACKUP_FORMAT, MANIFEST_FILE};
use crate::bookstore;
use crate::datadir::{self, LOCK_FILE};
use crate::error::NodeError;

/// What [`restore`] did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The backed-up node's actor: a peer of the new node from now on.
    pub old_actor: SiteId,
    /// The new node's actor id (written to the data dir's `actor_id`).
    pub new_actor: SiteId,
    pub databases: Vec<RestoredDb>,
    pub took: Duration,
}

#[derive(Debug, Clone)]
pub struct RestoredDb {
    pub db: DbKind,
    /// The old actor's versions `1..=old_version` are recorded as applied.
    pub old_version: u64,
    /// Row clocks holding the old actor's entries, re-attributed.
    pub clocks_rewritten: u64,
    /// Actors whose versions the database holds, the old one included.
    pub actors: usize,
}

/// Why a restore did not happen. Files it had written are removed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("data dir {path} is not empty (it holds {entries}): a restore prepares the data dir of a NEW node; name a directory that does not exist or is empty")]
    NotEmpty { path: PathBuf, entries: String },
    #[error("backup {dir}: manifest format {found}, but this patina reads format {BACKUP_FORMAT}; restore it with the patina version that took it ({version})")]
    Format {
        dir: PathBuf,
        found: u32,
        version: String,
    },
    #[error("backup {dir}: {what}; the backup is damaged, incomplete, or mixes files of different backups: restore from another backup")]
    Mismatch { dir: PathBuf, what: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{db}.db of backup {dir}: {source}")]
    Database {
        db: &'static str,
        dir: PathBuf,
        source: CrrError,
    },
    #[error(transparent)]
    DataDir(#[from] NodeError),
}

/// Prepares `data_dir` (missing or empty) for a new node from the backup in
/// `backup_dir`, whose manifest is `manifest` (the caller decodes it).
pub fn restore(
    backup_dir: &Path,
    manifest: &BackupManifest,
    data_dir: &Path,
) -> Result<Restored, RestoreError> {
    let started = Instant::now();
    let mismatch = |what: String| RestoreError::Mismatch {
        dir: backup_dir.to_owned(),
        what,
    };
    if manifest.format != BACKUP_FORMAT {
        return Err(RestoreError::Format {
            dir: backup_dir.to_owned(),
            found: manifest.format,
            version: manifest.patina_version.clone(),
        });
    }
    let old_actor: SiteId = manifest
        .actor_id
        .parse()
        .map_err(|e| mismatch(format!("{MANIFEST_FILE}: actor_id: {e}")))?;
    if manifest.databases.len() != 2 {
        return Err(mismatch(format!(
            "{MANIFEST_FILE} lists {} databases; a backup holds two, regional and global",
            manifest.databases.len()
        )));
    }
    let mut entries = Vec::new();
    for db in [DbKind::Regional, DbKind::Global] {
        let mut of_db = manifest.databases.iter().filter(|d| d.db == db.name());
        let (Some(entry), None) = (of_db.next(), of_db.next()) else {
            return Err(mismatch(format!(
                "{MANIFEST_FILE} must describe the {} database exactly once",
                db.name()
            )));
        };
        // The manifest names files; only the two a backup writes are read,
        // never a path it could point elsewhere with.
        if entry.file != backup::file_name(db) {
            return Err(mismatch(format!(
                "{MANIFEST_FILE} names {:?} for the {} database, not {:?}",
                entry.file,
                db.name(),
                backup::file_name(db)
            )));
        }
        let path = backup_dir.join(&entry.file);
        let bytes = fs::metadata(&path)
            .map_err(|e| mismatch(format!("{}: {e}", entry.file)))?
            .len();
        if bytes != entry.bytes {
            return Err(mismatch(format!(
                "{} is {bytes} bytes, the manifest says {}",
                entry.file, entry.bytes
            )));
        }
        entries.push((db, entry, path));
    }

    prepare_data_dir(data_dir)?;
    let _lock = datadir::lock(data_dir)?;
    let new_actor = loop {
        let id = SiteId::random();
        if id != old_actor {
            break id;
        }
    };
    let mut staged = Vec::new();
    let mut databases = Vec::new();
    let result = (|| {
        for (db, entry, source) in &entries {
            let path = data_dir.join(format!("{}.restoring", entry.file));
            staged.push(path.clone());
            fs::copy(source, &path).map_err(|e| RestoreError::Io {
                path: path.clone(),
                source: e,
            })?;
            databases.push(seed_database(
                backup_dir, &path, *db, entry, old_actor, new_actor,
            )?);
        }
        for (db, _, _) in &entries {
            let file = backup::file_name(*db);
            let from = data_dir.join(format!("{file}.restoring"));
            let to = data_dir.join(file);
            fs::rename(&from, &to).map_err(|e| RestoreError::Io {
                path: to,
                source: e,
            })?;
        }
        // Last: an agent started on a data dir whose databases are in place
        // but whose actor_id is missing makes a random one, and refuses to
        // open databases of another site id.
        datadir::write_durably(
            &data_dir.join(datadir::ACTOR_ID_FILE),
            format!("{new_actor}\n").as_bytes(),
        )
        .map_err(|e| RestoreError::Io {
            path: data_dir.join(datadir::ACTOR_ID_FILE),
            source: e,
        })?;
        backup::sync_dir(data_dir).map_err(|e| RestoreError::Io {
            path: data_dir.to_owned(),
            source: e,
        })
    })();
    if let Err(e) = result {
        for path in staged {
            let _ = fs::remove_file(&path);
            for suffix in ["-wal", "-shm"] {
                let mut side = path.clone().into_os_string();
                side.push(suffix);
                let _ = fs::remove_file(side);
            }
        }
        return Err(e);
    }
    Ok(Restored {
        old_actor,
        new_actor,
        databases,
        took: started.elapsed(),
    })
}

/// Creates `path` if missing; refuses one holding anything but a lock file
/// (which an earlier, failed restore leaves).
fn prepare_data_dir(path: &Path) -> Result<(), RestoreError> {
    let io = |source| RestoreError::Io {
        path: path.to_owned(),
        source,
    };
    if path.exists() && !path.is_dir() {
        return Err(RestoreError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(
                "a file, not a directory: name a directory that does not exist or is empty",
            ),
        });
    }
    fs::create_dir_all(path).map_err(io)?;
    let mut names = Vec::new();
    for entry in fs::read_dir(path).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        if name != LOCK_FILE {
            names.push(name.to_string_lossy().into_owned());
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    let shown = names.len().min(3);
    let mut entries = names[..shown].join(", ");
    if names.len() > shown {
        entries.push_str(&format!(" and {} more", names.len() - shown));
    }
    Err(RestoreError::NotEmpty {
        path: path.to_owned(),
        entries,
    })
}

/// Checks the copy at `path` against the manifest, then re-attributes it
/// to `new_actor` with the old actor's versions recorded as applied.
fn seed_database(
    backup_dir: &Path,
    path: &Path,
    db: DbKind,
    entry: &DbManifest,
    old_actor: SiteId,
    new_actor: SiteId,
) -> Result<RestoredDb, RestoreError> {
    let database = |source: CrrError| RestoreError::Database {
        db: db.name(),
        dir: backup_dir.to_owned(),
        source,
    };
    let sqlite = |e: rusqlite::Error| database(e.into());
    let mismatch = |what: String| RestoreError::Mismatch {
        dir: backup_dir.to_owned(),
        what: format!("{}: {what}", entry.file),
    };
    let mut conn = CrrConn::open(path).map_err(database)?;
    // integrity_check, not quick_check: it also finds an index that
    // disagrees with its table, which a node would then read from.
    let check: String = conn
        .connection()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(sqlite)?;
    if check != "ok" {
        return Err(mismatch(format!("SQLite finds it damaged: {check}")));
    }
    if conn.site_id() != old_actor {
        return Err(mismatch(format!(
            "it is the database of actor {}, the manifest names {old_actor}",
            conn.site_id()
        )));
    }
    let (own_version, actors) = backup::summarize(conn.connection()).map_err(sqlite)?;
    if own_version != entry.own_version {
        return Err(mismatch(format!(
            "it holds versions 1..={own_version} of its actor, the manifest says 1..={}",
            entry.own_version
        )));
    }
    if actors != entry.actors {
        return Err(mismatch(
            "the versions it holds per actor are not those the manifest lists".into(),
        ));
    }
    let (adopted, ()) = conn
        .adopt_as_new_site_with(new_actor, |c, adopted| {
            if adopted.old_db_version == 0 {
                return Ok(());
            }
            // Creates the bookkeeping tables a database of an older
            // version may lack, and reads what it holds already.
            let persisted = bookstore::load(c)?;
            let mut applied = RangeSet::new();
            for (actor, spans) in persisted.applied {
                if actor == adopted.old_site {
                    spans.into_iter().for_each(|s| applied.insert(s));
                }
            }
            applied.insert(Span::new(1, adopted.old_db_version));
            let spans: Vec<Span> = applied.iter().collect();
            bookstore::save_applied(c, adopted.old_site, &spans)
        })
        .map_err(database)?;
    crate::collect::mark_restored(conn.connection()).map_err(sqlite)?;
    // The restored file needs no WAL of its own to be complete.
    conn.connection()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(sqlite)?;
    drop(conn);
    backup::sync_file(path).map_err(|e| RestoreError::Io {
        path: path.to_owned(),
        source: e,
    })?;
    Ok(RestoredDb {
        db,
        old_version: adopted.old_db_version,
        clocks_rewritten: adopted.clocks_rewritten,
        actors: actors.len(),
    })
}
