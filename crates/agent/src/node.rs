//! [`Node`]: what `patina agent` runs — the databases, their writers, the
//! read pool, and the seams replication plugs into.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crr::{Change, CrrConn, SiteId};
use tokio::sync::{broadcast, watch};

use crate::classify::{Classifier, Writes};
use crate::cluster::Bookkeeper;
use crate::datadir::DataDir;
use crate::error::{AgentError, QueryError, TxError};
use crate::reader::{open_reader, QueryStream, ReadPool};
use crate::remote::RemoteOutcome;
use crate::schema_files;
use crate::statement::Statement;
use crate::subs::{Attach, SubError, SubStream, Subscriptions};
use crate::writer::{Origin, TxOutcome, Writer};

/// Committed changesets buffered for slow seam listeners; a listener that
/// falls further behind misses some (and sync, later, re-fetches them).
const CHANGESETS_BUFFERED_MAX: usize = 4096;
/// Read connections: queries running at once.
const READERS: usize = 8;

/// One of a node's two databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Db {
    Regional,
    Global,
}

impl Db {
    pub fn name(self) -> &'static str {
        match self {
            Db::Regional => "regional",
            Db::Global => "global",
        }
    }
}

/// The changes of one committed transaction of one actor in one database.
#[derive(Debug, Clone)]
pub struct Changeset {
    pub db: Db,
    pub actor: SiteId,
    pub version: u64,
    /// When the origin committed it, Unix milliseconds (0: unknown).
    pub committed_ms: u64,
    pub changes: Arc<[Change]>,
}

/// One row a changeset changed: its primary key, and whether the row is
/// gone (deleted) or present (inserted or updated).
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    pub pk: Vec<crr::Value>,
    pub deleted: bool,
}

/// Now, as Unix milliseconds (0 if the clock is before 1970).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Changeset {
    /// The rows of `table` this changeset changed, in order of first change.
    pub fn row_changes(&self, table: &str) -> Vec<RowChange> {
        let mut seen: HashMap<&[u8], usize> = HashMap::new();
        let mut out: Vec<RowChange> = Vec::new();
        for c in self.changes.iter().filter(|c| c.table == table) {
            let deleted = c.cl % 2 == 0;
            match seen.get(c.pk.as_slice()) {
                Some(&i) => out[i].deleted = deleted,
                None => {
                    let Ok(pk) = crr::pk::unpack(&c.pk) else {
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

#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub region: String,
    pub global_member: bool,
    pub data_dir: PathBuf,
    pub schema_paths: Vec<PathBuf>,
    pub global_schema_paths: Vec<PathBuf>,
}

/// A running node; cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    options: NodeOptions,
    actor: SiteId,
    regional: Writer,
    global: Writer,
    reads: Arc<ReadPool>,
    classifier: Mutex<Classifier>,
    changesets: broadcast::Sender<Changeset>,
    subs: Subscriptions,
}

impl Node {
    /// Opens the data dir, applies the schema files (both databases are
    /// checked before either changes: a refused schema leaves the node
    /// unstarted and the files untouched), starts the writers.
    pub fn open(options: NodeOptions) -> Result<Node, AgentError> {
        let dir = DataDir::create(&options.data_dir)?;
        let actor = dir.actor_id()?;
        let open = |db: Db, path: PathBuf| {
            CrrConn::open_with_site_id(path, Some(actor)).map_err(|source| AgentError::Database {
                db: db.name(),
                source,
            })
        };
        let mut regional = open(Db::Regional, dir.regional_db())?;
        let mut global = open(Db::Global, dir.global_db())?;
        let schemas = read_schemas(&options)?;
        apply_schemas(&mut regional, &mut global, &schemas)?;
        let (changesets, _) = broadcast::channel(CHANGESETS_BUFFERED_MAX);
        let subs = Subscriptions::open(&dir.path.join("subs"), || {
            open_reader(&dir.regional_db(), &dir.global_db())
        })
        .map_err(|source| AgentError::DataDir {
            path: dir.path.join("subs"),
            source,
        })?;
        let subs_dispatch = subs.dispatch();
        let writer = |conn: CrrConn, db: Db| {
            let changesets = changesets.clone();
            let subs = Arc::clone(&subs_dispatch);
            Writer::spawn(conn, db, move |cs: Changeset, origin: Origin| {
                subs.on_commit(&cs);
                if origin == Origin::Local {
                    let _ = changesets.send(cs);
                }
            })
            .map_err(|source| AgentError::DataDir {
                path: options.data_dir.clone(),
                source,
            })
        };
        let regional = writer(regional, Db::Regional)?;
        let global = writer(global, Db::Global)?;
        let reads = Arc::new(ReadPool::open(
            &dir.regional_db(),
            &dir.global_db(),
            READERS,
        )?);
        let classifier = Classifier::open(&dir.regional_db(), &dir.global_db()).map_err(|e| {
            AgentError::Database {
                db: "classifier",
                source: e.into(),
            }
        })?;
        Ok(Node {
            inner: Arc::new(Inner {
                options,
                actor,
                regional,
                global,
                reads,
                classifier: Mutex::new(classifier),
                changesets,
                subs,
            }),
        })
    }

    pub fn actor_id(&self) -> SiteId {
        self.inner.actor
    }

    pub fn region(&self) -> &str {
        &self.inner.options.region
    }

    pub fn is_global_member(&self) -> bool {
        self.inner.options.global_member
    }

    /// What `db`'s writer has committed so far (group commit's effect).
    pub fn write_stats(&self, db: Db) -> crate::writer::WriteStats {
        match db {
            Db::Regional => self.inner.regional.stats(),
            Db::Global => self.inner.global.stats(),
        }
    }

    /// Runs `statements` as one transaction on the database they write.
    pub async fn transact(&self, statements: Vec<Statement>) -> Result<TxOutcome, TxError> {
        if statements.is_empty() {
            return Err(TxError::Empty);
        }
        let writes = {
            let mut classifier = self
                .inner
                .classifier
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            classifier.classify(statements.iter().map(|s| s.sql.as_str()))
        };
        match writes {
            Writes::Both => Err(TxError::MixedDatabases),
            Writes::Global => self.inner.global.transact(statements).await,
            Writes::Regional | Writes::Nothing => self.inner.regional.transact(statements).await,
        }
    }

    /// Starts a read-only query over both databases.
    pub async fn query(&self, statement: Statement) -> Result<QueryStream, QueryError> {
        self.inner.reads.query(statement).await
    }

    /// Rows in `tables` (regional or global CRR tables) and the names that
    /// are not tables.
    pub async fn table_row_count(
        &self,
        tables: Vec<String>,
    ) -> Result<(u64, Vec<String>), QueryError> {
        self.inner
            .reads
            .run(move |conn| {
                let mut total = 0u64;
                let mut invalid = Vec::new();
                for t in tables {
                    let is_crr = |schema: &str| -> bool {
                        let sql = format!("SELECT 1 FROM {schema}.crr_tables WHERE name = ?1");
                        conn.query_row(&sql, [&t], |_| Ok(())).is_ok()
                    };
                    let schema = if is_crr("main") {
                        "main"
                    } else if is_crr("global") {
                        "global"
                    } else {
                        invalid.push(t);
                        continue;
                    };
                    let quoted = format!("\"{}\"", t.replace('"', "\"\""));
                    let sql = format!("SELECT count(*) FROM {schema}.{quoted}");
                    match conn.query_row(&sql, [], |r| r.get::<_, i64>(0)) {
                        Ok(n) => total += n.max(0) as u64,
                        Err(_) => invalid.push(t),
                    }
                }
                (total, invalid)
            })
            .await
    }

    /// Re-reads the schema files and applies them to both databases;
    /// refused whole (and the running schema kept) if either is refused.
    pub async fn reload_schema(&self) -> Result<(), AgentError> {
        let (regional_sql, global_sql) = read_schemas(&self.inner.options)?;
        // Plan both first: neither database changes unless both can.
        self.on_writer(Db::Regional, regional_sql.clone(), |conn, sql| {
            crr::migrate::plan(conn.connection(), "main", &sql).map(|_| ())
        })
        .await?;
        self.on_writer(Db::Global, global_sql.clone(), |conn, sql| {
            crr::migrate::plan(conn.connection(), "main", &sql).map(|_| ())
        })
        .await?;
        self.on_writer(Db::Regional, regional_sql, |conn, sql| {
            conn.apply_schema(&sql)
        })
        .await?;
        self.on_writer(Db::Global, global_sql, |conn, sql| conn.apply_schema(&sql))
            .await?;
        // Versions that arrived before their tables or columns may apply now.
        self.inner.regional.retry_parked().await;
        self.inner.global.retry_parked().await;
        self.inner
            .classifier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget();
        Ok(())
    }

    async fn on_writer(
        &self,
        db: Db,
        sql: String,
        f: fn(&mut CrrConn, String) -> crr::Result<()>,
    ) -> Result<(), AgentError> {
        self.writer(db)
            .with(move |conn| f(conn, sql))
            .await
            .ok_or(AgentError::ShuttingDown)?
            .map_err(|source| AgentError::Schema {
                db: db.name(),
                source,
            })
    }

    /// Committed changesets of this node, as they commit (the seam
    /// broadcast and subscriptions read).
    pub fn subscribe_changesets(&self) -> broadcast::Receiver<Changeset> {
        self.inner.changesets.subscribe()
    }

    /// Subscribes to a SELECT (the same bound statement is the same
    /// subscription) and attaches a stream to it; with `create` false, only
    /// an existing subscription is attached.
    pub async fn subscribe(
        &self,
        statement: Statement,
        create: bool,
        attach: Attach,
    ) -> Result<SubStream, SubError> {
        self.inner.subs.subscribe(statement, create, attach).await
    }

    /// Attaches a stream to subscription `id`.
    pub async fn attach_subscription(
        &self,
        id: &str,
        attach: Attach,
    ) -> Result<SubStream, SubError> {
        self.inner.subs.attach(id, attach).await
    }

    /// Whether this node has applied `version` of `actor` in `db` (each
    /// database numbers its versions separately).
    pub fn has_applied(&self, db: Db, actor: SiteId, version: u64) -> bool {
        let bookie = self.writer(db).bookkeeping();
        let applied = bookie
            .borrow()
            .holds(crate::remote::kind(db), actor, version);
        applied
    }

    /// Waits until [`has_applied`](Self::has_applied), up to `timeout`.
    pub async fn wait_applied(
        &self,
        db: Db,
        actor: SiteId,
        version: u64,
        timeout: Duration,
    ) -> bool {
        let mut rx = self.writer(db).bookkeeping();
        let kind = crate::remote::kind(db);
        let done = |b: &Arc<Bookkeeper>| b.holds(kind, actor, version);
        tokio::time::timeout(timeout, rx.wait_for(done))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn writer(&self, db: Db) -> &Writer {
        match db {
            Db::Regional => &self.inner.regional,
            Db::Global => &self.inner.global,
        }
    }

    /// Merges chunks peers sent into `db`.
    pub async fn apply_remote(
        &self,
        db: Db,
        chunks: Vec<Arc<wire::ChangeChunk>>,
    ) -> Result<RemoteOutcome, AgentError> {
        self.writer(db)
            .apply_remote(chunks)
            .await
            .ok_or(AgentError::ShuttingDown)
    }

    /// Reads (part of) what a peer asked for from `db`; returns the chunks
    /// and what is left of the need.
    pub async fn serve(
        &self,
        db: Db,
        need: wire::Need,
    ) -> Result<(Vec<wire::ChangeChunk>, Option<wire::Need>), AgentError> {
        self.writer(db)
            .serve(need)
            .await
            .ok_or(AgentError::ShuttingDown)?
            .map_err(|source| AgentError::Database {
                db: db.name(),
                source,
            })
    }

    /// `db`'s bookkeeping, updated after every commit and merge.
    pub fn bookkeeping(&self, db: Db) -> watch::Receiver<Arc<Bookkeeper>> {
        self.writer(db).bookkeeping()
    }
}

fn read_schemas(options: &NodeOptions) -> Result<(String, String), AgentError> {
    Ok((
        schema_files::read_all(&options.schema_paths)?,
        schema_files::read_all(&options.global_schema_paths)?,
    ))
}

fn apply_schemas(
    regional: &mut CrrConn,
    global: &mut CrrConn,
    (regional_sql, global_sql): &(String, String),
) -> Result<(), AgentError> {
    let plan = |db: Db, conn: &CrrConn, sql: &str| {
        crr::migrate::plan(conn.connection(), "main", sql).map_err(|source| AgentError::Schema {
            db: db.name(),
            source,
        })
    };
    plan(Db::Regional, regional, regional_sql)?;
    plan(Db::Global, global, global_sql)?;
    let apply = |db: Db, conn: &mut CrrConn, sql: &str| {
        conn.apply_schema(sql).map_err(|source| AgentError::Schema {
            db: db.name(),
            source,
        })
    };
    apply(Db::Regional, regional, regional_sql)?;
    apply(Db::Global, global, global_sql)
}
