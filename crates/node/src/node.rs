//! [`Node`]: what `patina agent` runs — the databases, their writers, the
//! read pool, and the seams replication plugs into.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use patina_crr::migrate::{Drops, SchemaPlan};
use patina_crr::{CrrConn, SiteId};
use patina_proto::Bookkeeper;
use patina_wire::{CollectedFloors, DbKind};
use tokio::sync::{broadcast, watch};

use crate::backup::{self, BackupError, BackupManifest, BackupReport};
use crate::changeset::{Changeset, CommitObserver, Origin};
use crate::classify::{Classifier, Writes};
use crate::collect::{CollectReport, CollectRequest, Collection, CollectionState};
use crate::datadir::DataDir;
use crate::digest::{self, CancelOnDrop, Digest, DigestError, DigestRequest};
use crate::error::{NodeError, QueryError, TxError};
use crate::held::HeldVersions;
use crate::reader::{open_reader, QueryStream, ReadPool};
use crate::regions_table::{RegionRecord, CREATE_REGIONS_TABLE, REGIONS_TABLE};
use crate::remote::RemoteOutcome;
use crate::schema_files;
use crate::statement::{Statement, Statements};
use crate::writer::{TxOutcome, WriteStats, Writer};

/// Committed changesets buffered for slow seam listeners; a listener that
/// falls further behind misses some (and sync, later, re-fetches them).
const CHANGESETS_BUFFERED_MAX: usize = 4096;
/// Read connections: queries running at once.
const READERS: usize = 8;

#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub region: String,
    pub global_member: bool,
    pub data_dir: PathBuf,
    pub schema_paths: Vec<PathBuf>,
    pub global_schema_paths: Vec<PathBuf>,
    /// Whether the schema files applied at open may drop tables and
    /// columns (`db.allow_destructive_schema`); each reload says so itself.
    pub schema_drops: Drops,
}

/// A table, or a column of one, that a destructive schema change dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedSchema {
    pub db: DbKind,
    pub table: String,
    /// `None`: the whole table.
    pub column: Option<String>,
}

impl std::fmt::Display for DroppedSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.column {
            Some(c) => write!(f, "column {}.{c} ({}.db)", self.table, self.db.name()),
            None => write!(f, "table {} ({}.db)", self.table, self.db.name()),
        }
    }
}

fn dropped_by(db: DbKind, plan: &SchemaPlan) -> Vec<DroppedSchema> {
    let tables = plan.dropped_tables.iter().map(|t| DroppedSchema {
        db,
        table: t.clone(),
        column: None,
    });
    let columns = plan.dropped_columns.iter().flat_map(|d| {
        d.columns.iter().map(|c| DroppedSchema {
            db,
            table: d.table.clone(),
            column: Some(c.clone()),
        })
    });
    tables.chain(columns).collect()
}

/// Says, loudly, what a destructive schema change deleted.
fn log_dropped(dropped: &[DroppedSchema]) {
    for d in dropped {
        tracing::warn!(dropped = %d, "destructive schema change: dropped with its data and clocks on this node; remote changes naming it are ignored (and counted) from now on");
    }
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
    changesets: broadcast::Sender<Arc<Changeset>>,
    /// Made by the first [`Node::subscribe_commits`]: 4,096 slots are
    /// ≈ 360 KiB, and a node with no commit listener (no `/v1/updates`, not
    /// a leader) never needs them (issue 16).
    commits: Arc<std::sync::OnceLock<broadcast::Sender<Arc<Changeset>>>>,
    observers: Arc<RwLock<Vec<Arc<dyn CommitObserver>>>>,
    /// One digest at a time: each reads every row of both databases.
    digests: tokio::sync::Semaphore,
    dir: DataDir,
    /// Set while a backup runs: one at a time (each holds a read snapshot
    /// that keeps the WAL from being checkpointed).
    backup_running: Arc<std::sync::atomic::AtomicBool>,
    /// Tombstone collection state: regional, global.
    collections: [Arc<Collection>; 2],
}

impl Node {
    /// Opens the data dir, applies the schema files (both databases are
    /// checked before either changes: a refused schema leaves the node
    /// unstarted and the files untouched), starts the writers.
    pub fn open(options: NodeOptions) -> Result<Node, NodeError> {
        let dir = DataDir::create(&options.data_dir)?;
        let actor = dir.actor_id()?;
        let open = |db: DbKind, path: PathBuf| {
            let conn = CrrConn::open_with_site_id(path, Some(actor)).and_then(|conn| {
                // What a change can carry in one frame (patina_wire::ROW_BYTES_MAX).
                conn.connection().set_limit(
                    rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH,
                    patina_wire::ROW_BYTES_MAX as i32,
                )?;
                Ok(conn)
            });
            conn.map_err(|source| NodeError::Database {
                db: db.name(),
                source,
            })
        };
        let mut regional = open(DbKind::Regional, dir.regional_db())?;
        let mut global = open(DbKind::Global, dir.global_db())?;
        let schemas = read_schemas(&options)?;
        let dropped = apply_schemas(&mut regional, &mut global, &schemas, options.schema_drops)?;
        log_dropped(&dropped);
        global
            .ensure_internal_crr(REGIONS_TABLE, CREATE_REGIONS_TABLE)
            .map_err(|source| NodeError::Database {
                db: DbKind::Global.name(),
                source,
            })?;
        let collection = |db: DbKind, conn: &CrrConn| {
            Collection::load(conn).map_err(|e| NodeError::Database {
                db: db.name(),
                source: e.into(),
            })
        };
        let collections = [
            collection(DbKind::Regional, &regional)?,
            collection(DbKind::Global, &global)?,
        ];
        let (changesets, _) = broadcast::channel(CHANGESETS_BUFFERED_MAX);
        let commits: Arc<std::sync::OnceLock<broadcast::Sender<Arc<Changeset>>>> = Arc::default();
        let observers: Arc<RwLock<Vec<Arc<dyn CommitObserver>>>> = Arc::default();
        let writer = |conn: CrrConn, db: DbKind| {
            let changesets = changesets.clone();
            let commits = Arc::clone(&commits);
            let observers = Arc::clone(&observers);
            Writer::spawn(conn, db, move |cs: Changeset, origin: Origin| {
                for o in observers.read().unwrap_or_else(|e| e.into_inner()).iter() {
                    o.on_commit(&cs, origin);
                }
                // Shared, so that a channel's slots hold a pointer each (a
                // changeset inline made the two channels' 8,192 slots
                // ≈ 0.7 MiB of an idle node's memory, issue 16).
                let cs = Arc::new(cs);
                // No receiver is the common case: a send then costs nothing.
                if let Some(commits) = commits.get() {
                    let _ = commits.send(Arc::clone(&cs));
                }
                if origin == Origin::Local {
                    let _ = changesets.send(cs);
                }
            })
            .map_err(|source| NodeError::DataDir {
                path: options.data_dir.clone(),
                source,
            })
        };
        let regional = writer(regional, DbKind::Regional)?;
        let global = writer(global, DbKind::Global)?;
        let reads = Arc::new(ReadPool::open(
            &dir.regional_db(),
            &dir.global_db(),
            READERS,
        )?);
        let classifier = Classifier::open(&dir.regional_db(), &dir.global_db()).map_err(|e| {
            NodeError::Database {
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
                commits,
                observers,
                digests: tokio::sync::Semaphore::new(1),
                dir,
                backup_running: Arc::default(),
                collections,
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
    pub fn write_stats(&self, db: DbKind) -> WriteStats {
        match db {
            DbKind::Regional => self.inner.regional.stats(),
            DbKind::Global => self.inner.global.stats(),
        }
    }

    /// Runs `statements` as one transaction on the database they write.
    pub async fn transact(&self, statements: impl Into<Statements>) -> Result<TxOutcome, TxError> {
        let statements = statements.into();
        if statements.is_empty() {
            return Err(TxError::Empty);
        }
        let writes = {
            let mut classifier = self
                .inner
                .classifier
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            classifier.classify(statements.sql_texts())
        };
        let db = match writes {
            Writes::Global => DbKind::Global,
            _ => DbKind::Regional,
        };
        let collection = self.collection_of(db).state();
        if let Some(reason) = collection.stale {
            return Err(TxError::Stale {
                db: db.name(),
                reason,
            });
        }
        if let Some(reason) = collection.returning {
            return Err(TxError::Returning {
                db: db.name(),
                reason,
            });
        }
        if let Some(reason) = collection.out_of_touch(crate::unix_ms()) {
            tracing::warn!(db = db.name(), "{reason}");
            self.mark_returning(db, reason.clone());
            return Err(TxError::Returning {
                db: db.name(),
                reason,
            });
        }
        match writes {
            Writes::Both => Err(TxError::MixedDatabases),
            Writes::Global => self.inner.global.transact(statements).await,
            Writes::Regional | Writes::Nothing => self.inner.regional.transact(statements).await,
        }
    }

    /// Writes this node's region's row of `global.patina_regions` (see
    /// [`RegionRecord`]); the region runtime's leader calls it.
    pub async fn record_region(&self, record: &RegionRecord) -> Result<TxOutcome, TxError> {
        let mut statements = Statements::new();
        statements.push(Statement::with_params(
            RegionRecord::UPSERT,
            record.params(),
        ));
        statements.internal = true;
        self.inner.global.transact(statements).await
    }

    /// Every region's row of `global.patina_regions`, sorted by region.
    pub async fn region_records(&self) -> Result<Vec<RegionRecord>, QueryError> {
        let node = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = node.open_reader()?;
            RegionRecord::read_all(&conn)
        })
        .await
        .map_err(|_| QueryError::ShuttingDown)?
        .map_err(|e| QueryError::Prepare(format!("reading {REGIONS_TABLE}: {e}")))
    }

    /// Starts a read-only query over both databases: one statement that
    /// reads. It is interrupted (an error event ends its rows) once it has
    /// run for `limit`, when its stream is dropped, and by [`Node::close_reads`].
    pub async fn query(
        &self,
        statement: Statement,
        limit: Duration,
    ) -> Result<QueryStream, QueryError> {
        self.inner.reads.query(statement, limit).await
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

    /// A consistency digest of both databases (docs/api.md, `GET
    /// /v1/digest`), made on a read connection of its own in one read
    /// transaction: writers go on meanwhile. Requests wait for the one
    /// running; a digest whose caller goes away stops.
    pub async fn digest(&self, request: DigestRequest) -> Result<Digest, DigestError> {
        let _turn = self
            .inner
            .digests
            .acquire()
            .await
            .map_err(|_| DigestError::ShuttingDown)?;
        let cancelled = CancelOnDrop(Arc::default());
        let (gone, closing) = (Arc::clone(&cancelled.0), self.inner.reads.closing());
        let stop = move || {
            gone.load(std::sync::atomic::Ordering::Relaxed)
                || closing.load(std::sync::atomic::Ordering::Relaxed)
        };
        let (regional, global) = (self.inner.dir.regional_db(), self.inner.dir.global_db());
        tokio::task::spawn_blocking(move || digest::make((&regional, &global), &request, stop))
            .await
            .map_err(|_| DigestError::ShuttingDown)?
    }

    /// Re-reads the schema files and applies them to both databases,
    /// additively; refused whole (and the running schema kept) if either
    /// is refused.
    pub async fn reload_schema(&self) -> Result<(), NodeError> {
        self.reload_schema_with(Drops::Refused).await.map(|_| ())
    }

    /// Like [`reload_schema`](Self::reload_schema); with
    /// [`Drops::Allowed`] the tables and columns the files no longer
    /// declare are dropped (docs/crr.md, "Destructive schema changes"),
    /// each database in one transaction, both planned before either
    /// changes. Returns what was dropped.
    pub async fn reload_schema_with(&self, drops: Drops) -> Result<Vec<DroppedSchema>, NodeError> {
        let (regional_sql, global_sql) = read_schemas(&self.inner.options)?;
        // Plan both first: neither database changes unless both can.
        for (db, sql) in [
            (DbKind::Regional, regional_sql.clone()),
            (DbKind::Global, global_sql.clone()),
        ] {
            self.on_writer(db, move |conn| {
                patina_crr::migrate::plan_with(conn.connection(), "main", &sql, drops).map(|_| ())
            })
            .await?;
        }
        let mut dropped = Vec::new();
        for (db, sql) in [
            (DbKind::Regional, regional_sql),
            (DbKind::Global, global_sql),
        ] {
            let plan = self
                .on_writer(db, move |conn| conn.apply_schema_with(&sql, drops))
                .await?;
            dropped.extend(dropped_by(db, &plan));
        }
        log_dropped(&dropped);
        self.inner.reads.schema_changed();
        // Versions that arrived before their tables or columns may apply
        // now; held changes naming what was dropped go.
        self.inner.regional.retry_held().await;
        self.inner.global.retry_held().await;
        self.inner
            .classifier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget();
        Ok(dropped)
    }

    async fn on_writer<T: Send + 'static>(
        &self,
        db: DbKind,
        f: impl FnOnce(&mut CrrConn) -> patina_crr::Result<T> + Send + 'static,
    ) -> Result<T, NodeError> {
        self.writer(db)
            .with(f)
            .await
            .ok_or(NodeError::ShuttingDown)?
            .map_err(|source| NodeError::Schema {
                db: db.name(),
                source,
            })
    }

    /// Committed changesets of this node, as they commit (the seam
    /// broadcast and subscriptions read).
    pub fn subscribe_changesets(&self) -> broadcast::Receiver<Arc<Changeset>> {
        self.inner.changesets.subscribe()
    }

    /// Every commit of this node, local and merged from peers (by
    /// broadcast or sync), as it commits: the seam of change feeds such as
    /// `/v1/updates`. A listener more than 4,096 commits behind misses
    /// some (it sees `Lagged`).
    pub fn subscribe_commits(&self) -> broadcast::Receiver<Arc<Changeset>> {
        self.inner
            .commits
            .get_or_init(|| broadcast::channel(CHANGESETS_BUFFERED_MAX).0)
            .subscribe()
    }

    /// Adds a consumer of every commit, local and remote. Commits made
    /// before it is added are not shown to it: add observers before the
    /// node is handed to the API and the replicator.
    pub fn add_commit_observer(&self, observer: Arc<dyn CommitObserver>) {
        self.inner
            .observers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(observer);
    }

    /// The node's data dir.
    pub fn data_dir(&self) -> &Path {
        &self.inner.dir.path
    }

    /// A new read-only connection to both databases (`global.db` attached
    /// as `global`), configured as the read pool's are.
    pub fn open_reader(&self) -> rusqlite::Result<rusqlite::Connection> {
        open_reader(&self.inner.dir.regional_db(), &self.inner.dir.global_db())
    }

    /// Opens readers as [`Node::open_reader`] does, later and from any
    /// thread, without keeping the node alive (it holds only the paths).
    pub fn reader_opener(
        &self,
    ) -> impl Fn() -> rusqlite::Result<rusqlite::Connection> + Send + Sync + 'static {
        let (regional, global) = (self.inner.dir.regional_db(), self.inner.dir.global_db());
        move || open_reader(&regional, &global)
    }

    /// Takes an online backup of both databases into `target`, a directory
    /// this creates (it must not exist; its parent must): each database a
    /// consistent snapshot with its replication bookkeeping, while writes
    /// go on. `encode` turns the manifest into the bytes of
    /// [`MANIFEST_FILE`](crate::MANIFEST_FILE), written last. One backup
    /// at a time; a failed one leaves nothing behind.
    pub async fn backup(
        &self,
        target: PathBuf,
        encode: impl FnOnce(&BackupManifest) -> Vec<u8> + Send + 'static,
    ) -> Result<BackupReport, BackupError> {
        use std::sync::atomic::Ordering;
        struct Running(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        if self.inner.backup_running.swap(true, Ordering::AcqRel) {
            return Err(BackupError::Busy);
        }
        // Moved into the copying thread: a request that goes away does not
        // end the backup, and the next waits until it is done.
        let running = Running(Arc::clone(&self.inner.backup_running));
        let data_dir = self.inner.dir.path.clone();
        let (regional, global) = (self.inner.dir.regional_db(), self.inner.dir.global_db());
        let (actor, region) = (self.inner.actor, self.inner.options.region.clone());
        tokio::task::spawn_blocking(move || {
            let _running = running;
            let source = backup::Source {
                data_dir: &data_dir,
                regional: &regional,
                global: &global,
                actor,
                region: &region,
            };
            backup::take(&source, &target, encode)
        })
        .await
        .map_err(|_| BackupError::ShuttingDown)?
    }

    /// Whether this node has applied `version` of `actor` in `db` (each
    /// database numbers its versions separately).
    pub fn has_applied(&self, db: DbKind, actor: SiteId, version: u64) -> bool {
        let bookie = self.writer(db).bookkeeping();
        let applied = bookie.borrow().holds(db, actor, version);
        applied
    }

    /// Waits until [`has_applied`](Self::has_applied), up to `timeout`.
    pub async fn wait_applied(
        &self,
        db: DbKind,
        actor: SiteId,
        version: u64,
        timeout: Duration,
    ) -> bool {
        // Applied, and no part of it held: the writer publishes held
        // versions before the bookkeeping, so the second wait sees the
        // version's hold if it has one.
        let mut applied = self.writer(db).bookkeeping();
        let mut held = self.writer(db).held();
        let whole = async {
            applied
                .wait_for(|b| b.holds(db, actor, version))
                .await
                .is_ok()
                && held.wait_for(|h| !h.contains(actor, version)).await.is_ok()
        };
        tokio::time::timeout(timeout, whole).await.unwrap_or(false)
    }

    fn writer(&self, db: DbKind) -> &Writer {
        match db {
            DbKind::Regional => &self.inner.regional,
            DbKind::Global => &self.inner.global,
        }
    }

    /// Merges chunks peers sent into `db`.
    pub async fn apply_remote(
        &self,
        db: DbKind,
        chunks: Vec<Arc<patina_wire::ChangeChunk>>,
    ) -> Result<RemoteOutcome, NodeError> {
        self.writer(db)
            .apply_remote(chunks)
            .await
            .ok_or(NodeError::ShuttingDown)
    }

    /// Reads (part of) what a peer asked for from `db`; returns the chunks
    /// and what is left of the need, in the order to serve it (a large
    /// version is served a page per call).
    pub async fn serve(
        &self,
        db: DbKind,
        need: patina_wire::Need,
    ) -> Result<(Vec<patina_wire::ChangeChunk>, Vec<patina_wire::Need>), NodeError> {
        self.writer(db)
            .serve(need)
            .await
            .ok_or(NodeError::ShuttingDown)?
            .map_err(|source| NodeError::Database {
                db: db.name(),
                source,
            })
    }

    /// Interrupts every running query and refuses new ones: the node is
    /// stopping, and a runaway query must not keep it from exiting.
    pub fn close_reads(&self) {
        self.inner.reads.close();
    }

    /// What this node knows of `db`'s tombstone collection.
    pub fn collection(&self, db: DbKind) -> CollectionState {
        self.collection_of(db).state()
    }

    /// One collection pass on `db` (see [`CollectRequest`]): keeps a
    /// checkpoint of what this node holds when one is due, then removes the
    /// tombstones every member applied more than the retention ago.
    pub async fn collect_tombstones(
        &self,
        db: DbKind,
        request: CollectRequest,
    ) -> Result<CollectReport, NodeError> {
        let own = patina_proto::own_prefixes(&self.bookkeeping(db).borrow(), db);
        self.collection_of(db)
            .collect(self.writer(db), db, own, request)
            .await
    }

    /// Learns what a peer collected of `floors.db` (its floors and causal
    /// lengths): returns whether anything was new here.
    pub async fn adopt_collected(&self, floors: CollectedFloors) -> Result<bool, NodeError> {
        let db = floors.db;
        self.collection_of(db).adopt(self.writer(db), floors).await
    }

    /// Records that `db` missed collected tombstones: from now on (restarts
    /// included) writes to it are refused with `reason`, which says how to
    /// re-seed the node.
    pub async fn mark_stale(&self, db: DbKind, reason: String) -> Result<(), NodeError> {
        self.collection_of(db)
            .mark_stale(self.writer(db), db, reason)
            .await
    }

    /// `db` is back after an absence long enough that peers may have
    /// collected deletes it missed (`reason` says how long): its writes are
    /// refused until [`Node::mark_returned`], when it has caught up with a
    /// peer and the peers' floors showed it missed nothing — a write made
    /// before could bring back a row the cluster deleted and forgot.
    pub fn mark_returning(&self, db: DbKind, reason: String) {
        self.collection_of(db).set_returning(Some(reason));
    }

    /// A peer answered this node's sync of `db` at `at_ms` (Unix ms). From
    /// the first answer on, a write made over `limit_ms` after the last one
    /// (the replicator passes half the retention, or more when that is
    /// within its sync pace) marks `db` returning
    /// ([`CollectionState::out_of_touch`]): a node frozen or cut off that
    /// long is checked like one that was stopped that long.
    pub fn note_contact(&self, db: DbKind, at_ms: u64, limit_ms: u64) {
        self.collection_of(db).note_contact(at_ms, limit_ms);
    }

    /// The return of `db` is checked (see [`Node::mark_returning`]).
    pub fn mark_returned(&self, db: DbKind) {
        self.collection_of(db).set_returning(None);
    }

    /// The first catch-up ended: a bootstrapping `db` now holds what its
    /// peers held, and is checked against floors like any other.
    pub async fn mark_joined(&self, db: DbKind) -> Result<(), NodeError> {
        self.collection_of(db)
            .mark_joined(self.writer(db), db)
            .await
    }

    fn collection_of(&self, db: DbKind) -> &Arc<Collection> {
        match db {
            DbKind::Regional => &self.inner.collections[0],
            DbKind::Global => &self.inner.collections[1],
        }
    }

    /// `db`'s bookkeeping, updated after every commit and merge.
    pub fn bookkeeping(&self, db: DbKind) -> watch::Receiver<Arc<Bookkeeper>> {
        self.writer(db).bookkeeping()
    }

    /// `db`'s held versions (applied, but part of them not merged yet),
    /// updated after every merge.
    pub fn held_versions(&self, db: DbKind) -> watch::Receiver<Arc<HeldVersions>> {
        self.writer(db).held()
    }
}

fn read_schemas(options: &NodeOptions) -> Result<(String, String), NodeError> {
    Ok((
        schema_files::read_all(&options.schema_paths)?,
        schema_files::read_all(&options.global_schema_paths)?,
    ))
}

fn apply_schemas(
    regional: &mut CrrConn,
    global: &mut CrrConn,
    (regional_sql, global_sql): &(String, String),
    drops: Drops,
) -> Result<Vec<DroppedSchema>, NodeError> {
    let plan = |db: DbKind, conn: &CrrConn, sql: &str| {
        patina_crr::migrate::plan_with(conn.connection(), "main", sql, drops).map_err(|source| {
            NodeError::Schema {
                db: db.name(),
                source,
            }
        })
    };
    plan(DbKind::Regional, regional, regional_sql)?;
    plan(DbKind::Global, global, global_sql)?;
    let apply = |db: DbKind, conn: &mut CrrConn, sql: &str| {
        conn.apply_schema_with(sql, drops)
            .map(|plan| dropped_by(db, &plan))
            .map_err(|source| NodeError::Schema {
                db: db.name(),
                source,
            })
    };
    let mut dropped = apply(DbKind::Regional, regional, regional_sql)?;
    dropped.extend(apply(DbKind::Global, global, global_sql)?);
    Ok(dropped)
}
