//! The write path of one database: a thread that owns its `CrrConn` and runs
//! jobs one at a time. SQLite allows one writer per file anyway; owning the
//! connection in one thread keeps the CRR state free of locks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use patina_crr::{Committed, CrrConn, SiteId};
use patina_wire::{ChangeChunk, Need};
use rusqlite::types::{ToSql, ToSqlOutput};
use tokio::sync::{mpsc, oneshot, watch};

use crate::changeset::{unix_ms, Changeset, Omitted, Origin};
use crate::error::{is_storage_full, TxError};
use crate::held::HeldVersions;
use crate::pages::LARGE_CHANGES;
use crate::remote::{self, RemoteOutcome, Replica};
use crate::statement::{StatementRef, Statements};
use patina_proto::Bookkeeper;
use patina_wire::DbKind;

/// Jobs waiting for a writer; senders wait when it is full (back-pressure).
const QUEUE_JOBS_MAX: usize = 1024;
/// Client transactions committed together at most (group commit).
const GROUP_TXS_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct StatementResult {
    pub rows_affected: usize,
    pub time: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TxOutcome {
    pub results: Vec<StatementResult>,
    pub time: Duration,
    /// The version this transaction was booked under for this node's actor
    /// in `db`; `None` when nothing replicated changed.
    pub version: Option<u64>,
    pub db: DbKind,
}

type Reply<T> = oneshot::Sender<T>;

enum Job {
    Transact(Statements, Reply<Result<TxOutcome, TxError>>),
    /// Merges chunks from peers.
    Remote(Vec<Arc<ChangeChunk>>, Reply<RemoteOutcome>),
    /// Reads what a peer asked for.
    Serve(
        Need,
        Reply<patina_crr::Result<(Vec<ChangeChunk>, Vec<Need>)>>,
    ),
    /// Merges held changes the schema now has.
    RetryHeld(Reply<()>),
    /// Runs a closure on the connection (schema changes, stats).
    With(Box<dyn FnOnce(&mut CrrConn) + Send>),
}

/// What one writer committed: client transactions, and the SQLite commits
/// that carried them (their ratio is the mean group size); and the remote
/// changes it ignored because they name a table or column a destructive
/// schema change dropped here (since the node started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub transactions: u64,
    pub commits: u64,
    pub remote_changes_dropped: u64,
}

#[derive(Debug, Default)]
struct WriteCounters {
    transactions: AtomicU64,
    commits: AtomicU64,
    remote_changes_dropped: AtomicU64,
}

/// Handle to one database's writer thread.
#[derive(Clone)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
    bookkeeping: watch::Receiver<Arc<Bookkeeper>>,
    held: watch::Receiver<Arc<HeldVersions>>,
    counters: Arc<WriteCounters>,
}

impl Writer {
    pub fn spawn(
        mut conn: CrrConn,
        db: DbKind,
        on_commit: impl Fn(Changeset, Origin) + Send + 'static,
    ) -> std::io::Result<Writer> {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE_JOBS_MAX);
        let mut replica = Replica::open(&conn, db).map_err(std::io::Error::other)?;
        let bookkeeping = replica.published.subscribe();
        let held = replica.held_published.subscribe();
        let counters = Arc::new(WriteCounters::default());
        let count = Arc::clone(&counters);
        std::thread::Builder::new()
            .name(format!("patina-{}-writer", db.name()))
            .spawn(move || {
                let last_large = AtomicBool::new(false);
                let on_commit = |cs: Changeset, origin: Origin| {
                    if cs.omitted.is_some() {
                        last_large.store(true, Ordering::Relaxed);
                    }
                    on_commit(cs, origin)
                };
                let mut disk = DiskState::default();
                let remote_commit = |cs: Changeset| on_commit(cs, Origin::Remote);
                // A job taken while gathering a group that is not a local
                // transaction: it runs next, so jobs keep their order.
                let mut next: Option<Job> = None;
                // Whether a job since the queue was last empty handled a
                // large version: its memory is handed back before waiting.
                let mut large = false;
                loop {
                    let job = match next.take() {
                        Some(job) => job,
                        None => {
                            if large && rx.is_empty() {
                                release_memory(&conn);
                                large = false;
                            }
                            match rx.blocking_recv() {
                                Some(job) => job,
                                None => break,
                            }
                        }
                    };
                    match job {
                        Job::Transact(statements, reply) => {
                            let mut group = vec![(statements, reply)];
                            while group.len() < GROUP_TXS_MAX {
                                match rx.try_recv() {
                                    Ok(Job::Transact(statements, reply)) => group.push((statements, reply)),
                                    Ok(other) => {
                                        next = Some(other);
                                        break;
                                    }
                                    Err(_) => break,
                                }
                            }
                            let statements: usize = group.iter().map(|(s, _)| s.len()).sum();
                            let (version, replies) = transact_group(&mut conn, db, group, &on_commit);
                            // Many statements: a large request, even if it wrote little.
                            large |= statements > LARGE_CHANGES || last_large.swap(false, Ordering::Relaxed);
                            if let Some(v) = version {
                                replica.on_local_commit(v);
                                replica.publish();
                            }
                            let committed = replies.iter().filter(|(_, r)| r.is_ok()).count() as u64;
                            let full = replies.iter().any(|(_, r)| matches!(r, Err(TxError::StorageFull { .. })));
                            disk.wrote(db, full, committed > 0);
                            if committed > 0 {
                                count.transactions.fetch_add(committed, Ordering::Relaxed);
                                count.commits.fetch_add(1, Ordering::Relaxed);
                            }
                            for (reply, result) in replies {
                                let _ = reply.send(result);
                            }
                        }
                        Job::Remote(chunks, reply) => {
                            let outcome = remote::apply(&mut conn, &mut replica, &chunks, &remote_commit);
                            count.remote_changes_dropped.fetch_add(outcome.changes_dropped as u64, Ordering::Relaxed);
                            large |= outcome.changes_merged > LARGE_CHANGES;
                            disk.wrote(db, outcome.storage_full > 0, outcome.versions_applied > 0);
                            let _ = reply.send(outcome);
                        }
                        Job::Serve(need, reply) => {
                            let paging = replica.pages.is_active();
                            let served = remote::serve(&conn, &mut replica, &need);
                            large |= paging || replica.pages.is_active();
                            let _ = reply.send(served);
                        }
                        Job::RetryHeld(reply) => {
                            match remote::retry_held(&mut conn, &mut replica, &remote_commit) {
                                Ok(done) => {
                                    count.remote_changes_dropped.fetch_add(done.dropped as u64, Ordering::Relaxed);
                                    if done.released > 0 {
                                        tracing::info!(db = db.name(), versions = done.released, "merged held versions after a schema change");
                                    }
                                }
                                Err(e) => tracing::warn!(db = db.name(), error = %e, "merging held versions failed"),
                            }
                            let _ = reply.send(());
                        }
                        Job::With(f) => f(&mut conn),
                    }
                }
            })?;
        Ok(Writer {
            jobs: tx,
            bookkeeping,
            held,
            counters,
        })
    }

    pub fn stats(&self) -> WriteStats {
        WriteStats {
            transactions: self.counters.transactions.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
            remote_changes_dropped: self.counters.remote_changes_dropped.load(Ordering::Relaxed),
        }
    }

    /// Merges chunks that peers sent.
    pub async fn apply_remote(&self, chunks: Vec<Arc<ChangeChunk>>) -> Option<RemoteOutcome> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job::Remote(chunks, reply)).await.ok()?;
        answer.await.ok()
    }

    /// Reads (part of) what a peer asked for; the second value is what is
    /// left of the need, in order.
    pub async fn serve(
        &self,
        need: Need,
    ) -> Option<patina_crr::Result<(Vec<ChangeChunk>, Vec<Need>)>> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job::Serve(need, reply)).await.ok()?;
        answer.await.ok()
    }

    /// Merges held changes whose tables and columns now exist; returns
    /// when done.
    pub async fn retry_held(&self) {
        let (reply, answer) = oneshot::channel();
        if self.jobs.send(Job::RetryHeld(reply)).await.is_ok() {
            let _ = answer.await;
        }
    }

    /// The bookkeeping as of the last commit or merge.
    pub fn bookkeeping(&self) -> watch::Receiver<Arc<Bookkeeper>> {
        self.bookkeeping.clone()
    }

    /// The held versions as of the last merge.
    pub fn held(&self) -> watch::Receiver<Arc<HeldVersions>> {
        self.held.clone()
    }

    pub async fn transact(&self, statements: Statements) -> Result<TxOutcome, TxError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Transact(statements, reply))
            .await
            .map_err(|_| TxError::ShuttingDown)?;
        answer.await.map_err(|_| TxError::ShuttingDown)?
    }

    /// Runs `f` on the writer's connection and returns its result.
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut CrrConn) -> T + Send + 'static,
    ) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        let job = Job::With(Box::new(move |conn| {
            let _ = reply.send(f(conn));
        }));
        self.jobs.send(job).await.ok()?;
        answer.await.ok()
    }
}

/// Hands memory back after a large version (issue 15: RSS stayed at
/// 170–640 MiB after one 100,000-row transaction and grew with each):
/// SQLite's page cache of this connection (refilled from the OS's cache
/// when next needed), then the allocator's free memory — glibc keeps freed
/// memory in its arenas, the HTTP threads' included, until trimmed.
fn release_memory(conn: &CrrConn) {
    if let Err(e) = conn.connection().execute_batch("PRAGMA shrink_memory") {
        tracing::debug!(error = %e, "PRAGMA shrink_memory failed");
    }
    trim_allocator();
}

/// Returns the free memory of every malloc arena to the OS (glibc keeps it
/// otherwise). Milliseconds: for after large work only.
fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the OS; it has no
    // preconditions and touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether the disk was full at the last write: the change is logged, not
/// every write it refuses (under load that would be thousands of lines a
/// second on a disk that is full already).
#[derive(Default)]
struct DiskState {
    full: bool,
}

impl DiskState {
    fn wrote(&mut self, db: DbKind, full: bool, committed: bool) {
        if full && !self.full {
            self.full = true;
            tracing::warn!(
                db = db.name(),
                "the disk holding the data dir is full: writes are refused (HTTP 507) and remote \
                 changes wait, until there is room again; reads and serving peers go on"
            );
        } else if committed && self.full {
            self.full = false;
            tracing::info!(
                db = db.name(),
                "there is room on the disk again: writing resumed"
            );
        }
    }
}

/// One client transaction of a group, and what became of it.
struct Member {
    statements: Statements,
    /// How many statements the client sent (`statements` is emptied once
    /// they all ran).
    count: usize,
    reply: Reply<Result<TxOutcome, TxError>>,
    /// Statement results and whether it wrote anything replicated; final
    /// when `Err`, redone when the group restarts.
    outcome: Option<Result<(Vec<StatementResult>, bool), TxError>>,
}

/// Group commit: the client transactions that queued up while the previous
/// commit ran share one SQLite transaction and one version, each in a
/// savepoint, so one client's failing statement undoes only its own writes.
/// Commits (and WAL frames, and replication messages) per transaction fall
/// as load rises; a lone transaction is a group of one. If SQLite loses the
/// whole transaction (I/O error), the members that had succeeded are run
/// again without the one that failed: nothing was acknowledged yet.
/// Returns the version and each member's reply, to send once the caller's
/// bookkeeping knows the version.
#[allow(clippy::type_complexity)]
fn transact_group(
    conn: &mut CrrConn,
    db: DbKind,
    group: Vec<(Statements, Reply<Result<TxOutcome, TxError>>)>,
    on_commit: &impl Fn(Changeset, Origin),
) -> (
    Option<u64>,
    Vec<(
        Reply<Result<TxOutcome, TxError>>,
        Result<TxOutcome, TxError>,
    )>,
) {
    let started = Instant::now();
    let actor: SiteId = conn.site_id();
    let mut members: Vec<Member> = group
        .into_iter()
        .map(|(statements, reply)| Member {
            count: statements.len(),
            statements,
            reply,
            outcome: None,
        })
        .collect();
    // A group of one needs no savepoint: if it fails, the transaction is
    // rolled back whole, as without group commit.
    let alone = members.len() == 1;
    let committed = loop {
        for m in &mut members {
            if matches!(m.outcome, Some(Ok(_))) {
                m.outcome = None;
            }
        }
        if members.iter().all(|m| m.outcome.is_some()) {
            // Every member failed: nothing to commit.
            break Ok(None);
        }
        let mut tx = match conn.transaction() {
            Ok(tx) => tx,
            Err(e) => break Err(e),
        };
        let mut lost = false;
        for m in members.iter_mut().filter(|m| m.outcome.is_none()) {
            let mut at = 0;
            let internal = m.statements.internal;
            let mut run = |tx: &mut patina_crr::CrrTx<'_>| {
                let mut results = Vec::with_capacity(m.statements.len());
                for (index, st) in m.statements.iter().enumerate() {
                    at = index;
                    let t0 = Instant::now();
                    let rows_affected = execute(tx, st, internal)?;
                    results.push(StatementResult {
                        rows_affected,
                        time: t0.elapsed(),
                    });
                }
                Ok(results)
            };
            // Alone, "wrote" is whether the commit takes a version.
            let result = if alone {
                run(&mut tx).map(|results| (results, true))
            } else {
                tx.part(run)
            };
            m.outcome = Some(result.map_err(|e| fail(db, at, &e)));
            if !tx.is_usable() {
                lost = true;
                break;
            }
        }
        if !lost {
            // Every member ran and nothing will run again (a failed commit
            // is final): the requests go before the commit builds its
            // clocks. A 100k-statement request is ≈ 40 MiB that otherwise
            // sat beside the commit's own peak (issue 15).
            let statements: usize = members.iter().map(|m| m.statements.len()).sum();
            for m in &mut members {
                m.statements = Statements::new();
            }
            if statements > LARGE_CHANGES {
                // The request was parsed on an HTTP thread, in that thread's
                // malloc arena: hand its pages back to the OS now, or RSS
                // holds them beside the clocks built in this thread's arena.
                trim_allocator();
            }
            break tx.commit_bounded(LARGE_CHANGES);
        }
    };
    // The changes come from the commit itself: nothing is read back.
    let committed = committed.map(|done| {
        done.map(|(v, committed)| {
            let (changes, omitted) = match committed {
                Committed::Changes(changes) => (changes.into(), None),
                Committed::Large { tables, entries } => (
                    Arc::from(Vec::new()),
                    Some(Arc::new(Omitted {
                        tables,
                        changes: entries,
                    })),
                ),
            };
            on_commit(
                Changeset {
                    db,
                    actor,
                    version: v,
                    committed_ms: unix_ms(),
                    changes,
                    omitted,
                },
                Origin::Local,
            );
            v
        })
    });
    let version = committed.as_ref().ok().copied().flatten();
    let time = started.elapsed();
    let replies = members
        .into_iter()
        .map(|m| {
            let last = m.count.saturating_sub(1);
            let result = match (m.outcome, &committed) {
                (Some(Err(e)), _) => Err(e),
                (_, Err(e)) => Err(fail(db, last, e)),
                (Some(Ok((results, wrote))), Ok(_)) => Ok(TxOutcome {
                    results,
                    time,
                    version: if wrote { version } else { None },
                    db,
                }),
                // Unreachable: the group commits only after every member ran.
                (None, Ok(_)) => Err(fail(db, 0, &patina_crr::CrrError::TransactionPoisoned)),
            };
            (m.reply, result)
        })
        .collect();
    (version, replies)
}

/// Runs one statement with its parameters bound from the packed buffer
/// (no value is copied out of it).
fn execute(
    tx: &mut patina_crr::CrrTx<'_>,
    st: StatementRef<'_>,
    internal: bool,
) -> patina_crr::Result<usize> {
    if internal {
        let values = st.positional().into_iter().flatten();
        return tx.execute_internal(
            st.sql,
            rusqlite::params_from_iter(values.map(ToSqlOutput::Borrowed)),
        );
    }
    if let Some(named) = st.named() {
        let values: Vec<(&str, ToSqlOutput<'_>)> = named
            .map(|(name, v)| (name, ToSqlOutput::Borrowed(v)))
            .collect();
        let bound: Vec<(&str, &dyn ToSql)> = values
            .iter()
            .map(|(name, v)| (*name, v as &dyn ToSql))
            .collect();
        return tx.execute(st.sql, bound.as_slice());
    }
    let values = st.positional().into_iter().flatten();
    tx.execute(
        st.sql,
        rusqlite::params_from_iter(values.map(ToSqlOutput::Borrowed)),
    )
}

/// What a client is told of statement `index`'s failure (or the commit's).
fn fail(db: DbKind, index: usize, e: &patina_crr::CrrError) -> TxError {
    if is_storage_full(e) {
        return TxError::StorageFull { db: db.name() };
    }
    let too_big = matches!(e, patina_crr::CrrError::Sqlite(s)
        if s.sqlite_error_code() == Some(rusqlite::ErrorCode::TooBig));
    let message = if too_big {
        format!(
            "{e}: a row (and so any value) is at most {} bytes, so that each change fits \
             one replication frame; store bigger data elsewhere and a reference here",
            patina_wire::ROW_BYTES_MAX
        )
    } else {
        e.to_string()
    };
    TxError::Statement { index, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Statement;
    use patina_crr::Value;

    /// A writer on a fresh file with `t(id, v)`, and the changesets it
    /// reported.
    fn writer() -> (
        Writer,
        tempfile::TempDir,
        std::sync::mpsc::Receiver<Changeset>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = CrrConn::open(dir.path().join("regional.db")).unwrap();
        conn.apply_schema("CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, v TEXT);")
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let w = Writer::spawn(conn, DbKind::Regional, move |cs, _| {
            let _ = tx.send(cs);
        })
        .unwrap();
        (w, dir, rx)
    }

    fn insert(id: i64) -> Statements {
        Statements::from(Statement::with_params(
            "INSERT INTO t (id, v) VALUES (?, 'x')",
            vec![Value::Integer(id)],
        ))
    }

    /// Blocks the writer thread until the returned sender is dropped or
    /// sent to; returns once the writer is blocked.
    async fn block(w: &Writer) -> std::sync::mpsc::Sender<()> {
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let (blocked, is_blocked) = oneshot::channel();
        let w2 = w.clone();
        tokio::spawn(async move {
            w2.with(move |_| {
                let _ = blocked.send(());
                let _ = gate.recv();
            })
            .await
        });
        is_blocked.await.unwrap();
        release
    }

    /// Waits until `n` more jobs sit in the writer's queue.
    async fn queued(w: &Writer, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.jobs.capacity() > QUEUE_JOBS_MAX - n {
            assert!(Instant::now() < deadline, "jobs never reached the queue");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_transactions_commit_as_one_group() {
        let (w, _dir, changesets) = writer();
        let release = block(&w).await;
        let mut txs = tokio::task::JoinSet::new();
        for id in 0..20 {
            let w2 = w.clone();
            // id 7 twice: the second one fails alone.
            let id = if id == 19 { 7 } else { id };
            txs.spawn(async move { (id, w2.transact(insert(id)).await) });
            queued(&w, txs.len()).await;
        }
        drop(release);
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        while let Some(done) = txs.join_next().await {
            match done.unwrap() {
                (id, Ok(outcome)) => ok.push((id, outcome.version)),
                (id, Err(e)) => failed.push((id, e.to_string())),
            }
        }
        assert_eq!(ok.len(), 19);
        assert!(ok.iter().all(|(_, v)| *v == Some(1)), "{ok:?}");
        assert_eq!(failed.len(), 1);
        assert!(failed[0].1.contains("UNIQUE"), "{failed:?}");
        assert_eq!(
            w.stats(),
            WriteStats {
                transactions: 19,
                commits: 1,
                remote_changes_dropped: 0
            }
        );
        let cs = changesets.recv().unwrap();
        assert_eq!(cs.version, 1);
        // 19 rows, one change for `v` each: nothing of the failed member.
        assert_eq!(cs.changes.len(), 19);
        let rows: i64 = w
            .with(|c| {
                c.connection()
                    .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                    .unwrap()
            })
            .await
            .unwrap();
        assert_eq!(rows, 19);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_between_transactions_keeps_its_place() {
        let (w, _dir, _changesets) = writer();
        let release = block(&w).await;
        let w1 = w.clone();
        let first = tokio::spawn(async move { w1.transact(insert(1)).await });
        queued(&w, 1).await;
        let w2 = w.clone();
        let seen = tokio::spawn(async move {
            w2.with(|c| {
                c.connection()
                    .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
                    .unwrap()
            })
            .await
        });
        queued(&w, 2).await;
        let w3 = w.clone();
        let second = tokio::spawn(async move { w3.transact(insert(2)).await });
        queued(&w, 3).await;
        drop(release);
        assert_eq!(first.await.unwrap().unwrap().version, Some(1));
        assert_eq!(
            seen.await.unwrap(),
            Some(1),
            "ran after the first insert only"
        );
        assert_eq!(second.await.unwrap().unwrap().version, Some(2));
        assert_eq!(
            w.stats(),
            WriteStats {
                transactions: 2,
                commits: 2,
                remote_changes_dropped: 0
            }
        );
    }

    /// An insert of a row needing a few pages (overflow pages for `v`).
    fn insert_big(id: i64) -> Statements {
        Statements::from(Statement::with_params(
            "INSERT INTO t (id, v) VALUES (?, ?)",
            vec![Value::Integer(id), Value::Text("x".repeat(10_000))],
        ))
    }

    /// SQLITE_FULL without a full filesystem: SQLite refuses to grow the
    /// file past `max_page_count` with the same error a full disk gives.
    async fn set_max_pages(w: &Writer, pages: Option<i64>) {
        w.with(move |c| {
            let conn = c.connection();
            let now: i64 = conn
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .unwrap();
            conn.pragma_update(None, "max_page_count", pages.unwrap_or(now))
                .unwrap();
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_refuses_writes_whole_and_they_resume_when_there_is_room() {
        let (w, _dir, changesets) = writer();
        assert_eq!(w.transact(insert(1)).await.unwrap().version, Some(1));
        assert_eq!(changesets.recv().unwrap().version, 1);
        set_max_pages(&w, None).await;

        // Alone, and as a group of clients queued behind one commit.
        let refused = w.transact(insert_big(2)).await.unwrap_err();
        assert_eq!(refused, TxError::StorageFull { db: "regional" });
        assert!(refused.to_string().contains("free space"), "{refused}");
        let release = block(&w).await;
        let mut txs = tokio::task::JoinSet::new();
        for id in 10..15 {
            let w2 = w.clone();
            txs.spawn(async move { w2.transact(insert_big(id)).await });
            queued(&w, txs.len()).await;
        }
        drop(release);
        while let Some(done) = txs.join_next().await {
            assert_eq!(
                done.unwrap().unwrap_err(),
                TxError::StorageFull { db: "regional" }
            );
        }
        assert!(
            changesets.try_recv().is_err(),
            "nothing refused is replicated"
        );

        // Room again: the next write commits under the next version, and
        // nothing of the refused ones is there.
        set_max_pages(&w, Some(1 << 30)).await;
        assert_eq!(w.transact(insert_big(2)).await.unwrap().version, Some(2));
        let cs = changesets.recv().unwrap();
        assert_eq!(cs.version, 2);
        assert_eq!(cs.changes.len(), 1);
        let (rows, integrity): (i64, String) = w
            .with(|c| {
                let conn = c.connection();
                (
                    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                        .unwrap(),
                    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
                        .unwrap(),
                )
            })
            .await
            .unwrap();
        assert_eq!((rows, integrity.as_str()), (2, "ok"));
    }
}
