//! The data dir: the two databases and the node's actor id.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use patina_crr::SiteId;

use crate::error::NodeError;

pub(crate) struct DataDir {
    pub path: PathBuf,
    /// Held (locked) while the node runs: see [`lock`].
    _lock: fs::File,
}

/// The file in a data dir that one process at a time holds locked.
pub const LOCK_FILE: &str = "patina.lock";

/// The file in a data dir that names the node's actor id.
pub(crate) const ACTOR_ID_FILE: &str = "actor_id";

/// Locks data dir `path` for this process, or says who has it. Two
/// processes writing one data dir would hand out the same versions of the
/// same actor to different changes, and peers would keep one of each pair
/// for good. The OS drops the lock when the process dies, `kill -9`
/// included: no stale lock to clean up.
pub fn lock(path: &Path) -> Result<fs::File, NodeError> {
    let file_path = path.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&file_path)
        .map_err(|source| NodeError::DataDir {
            path: file_path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(NodeError::Locked {
            path: path.to_owned(),
        }),
        Err(fs::TryLockError::Error(source)) => Err(NodeError::DataDir {
            path: file_path,
            source,
        }),
    }
}

impl DataDir {
    pub fn create(path: &Path) -> Result<DataDir, NodeError> {
        fs::create_dir_all(path).map_err(|source| NodeError::DataDir {
            path: path.to_owned(),
            source,
        })?;
        Ok(DataDir {
            path: path.to_owned(),
            _lock: lock(path)?,
        })
    }

    pub fn regional_db(&self) -> PathBuf {
        self.path.join("regional.db")
    }

    pub fn global_db(&self) -> PathBuf {
        self.path.join("global.db")
    }

    /// The node's actor id: read from `actor_id`, or created (random) and
    /// written durably on first start. Both databases use it as site id.
    pub fn actor_id(&self) -> Result<SiteId, NodeError> {
        let file = self.path.join(ACTOR_ID_FILE);
        match fs::read_to_string(&file) {
            Ok(text) => text
                .trim()
                .parse()
                .map_err(|e: patina_crr::ParseSiteIdError| NodeError::ActorId {
                    path: file.clone(),
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = SiteId::random();
                write_durably(&file, format!("{id}\n").as_bytes()).map_err(|source| {
                    NodeError::DataDir {
                        path: file.clone(),
                        source,
                    }
                })?;
                Ok(id)
            }
            Err(source) => Err(NodeError::DataDir { path: file, source }),
        }
    }
}

/// Write to a temp file, fsync, rename, fsync the dir: a crash leaves the
/// old content or the new, never half of it.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
