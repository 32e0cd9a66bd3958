//! Which database a transaction writes: its statements are prepared (never
//! run) on a connection that sees both databases, and an authorizer notes
//! the database of every table they write.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::functions::FunctionFlags;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::Connection;

/// Classified statements remembered, by SQL text; cleared when full.
const CACHE_ENTRIES_MAX: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writes {
    Nothing,
    Regional,
    Global,
    Both,
}

impl Writes {
    fn and(self, other: Writes) -> Writes {
        match (self, other) {
            (Writes::Nothing, x) | (x, Writes::Nothing) => x,
            (a, b) if a == b => a,
            _ => Writes::Both,
        }
    }
}

pub(crate) struct Classifier {
    conn: Connection,
    seen: Arc<Mutex<Writes>>,
    cache: HashMap<String, Writes>,
}

impl Classifier {
    pub fn open(regional: &Path, global: &Path) -> rusqlite::Result<Classifier> {
        let mut conn = Connection::open(regional)?;
        conn.execute("ATTACH DATABASE ?1 AS global", [global.to_string_lossy()])?;
        conn.pragma_update(None, "query_only", true)?;
        // Capture triggers name this function; statements are only
        // prepared here, so it never runs.
        conn.create_scalar_function("crr_capture", -1, FunctionFlags::SQLITE_UTF8, |_| Ok(0))?;
        let seen = Arc::new(Mutex::new(Writes::Nothing));
        let noted = Arc::clone(&seen);
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            let db = match ctx.action {
                AuthAction::Insert { .. }
                | AuthAction::Update { .. }
                | AuthAction::Delete { .. } => ctx.database_name,
                _ => None,
            };
            let writes = match db {
                Some("main") => Writes::Regional,
                Some("global") => Writes::Global,
                _ => Writes::Nothing,
            };
            let mut seen = noted.lock().unwrap_or_else(|e| e.into_inner());
            *seen = seen.and(writes);
            Authorization::Allow
        }))?;
        Ok(Classifier {
            conn,
            seen,
            cache: HashMap::new(),
        })
    }

    /// What `sqls` write together. A statement that does not prepare counts
    /// as regional: the writer reports its error.
    pub fn classify<'a>(&mut self, sqls: impl Iterator<Item = &'a str>) -> Writes {
        let mut all = Writes::Nothing;
        for sql in sqls {
            let writes = match self.cache.get(sql) {
                Some(w) => *w,
                None => {
                    let w = self.classify_one(sql);
                    if self.cache.len() >= CACHE_ENTRIES_MAX {
                        self.cache.clear();
                    }
                    self.cache.insert(sql.to_owned(), w);
                    w
                }
            };
            all = all.and(writes);
        }
        all
    }

    /// Forgets classifications (after a schema change), and makes this
    /// connection read the new schema: it only ever prepares, and a
    /// prepare alone goes on with the schema it read last — a statement
    /// naming a new column would fail to prepare here and be sent to the
    /// regional writer ("no such table" for a global table). Running a
    /// read makes SQLite check both databases' schema cookies.
    pub fn forget(&mut self) {
        self.cache.clear();
        let refreshed = self.conn.query_row(
            "SELECT (SELECT count(*) FROM main.sqlite_master) + (SELECT count(*) FROM global.sqlite_master)",
            [],
            |_| Ok(()),
        );
        if let Err(e) = refreshed {
            tracing::warn!(error = %e, "the classifier could not re-read the schema");
        }
    }

    fn classify_one(&mut self, sql: &str) -> Writes {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Writes::Nothing;
        match self.conn.prepare(sql) {
            Ok(_) => *self.seen.lock().unwrap_or_else(|e| e.into_inner()),
            Err(_) => Writes::Regional,
        }
    }
}
