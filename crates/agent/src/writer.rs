//! The write path of one database: a thread that owns its `CrrConn` and runs
//! jobs one at a time. SQLite allows one writer per file anyway; owning the
//! connection in one thread keeps the CRR state free of locks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crr::{CrrConn, SiteId};
use tokio::sync::{mpsc, oneshot, watch};
use wire::{ChangeChunk, Need};

use crate::cluster::Bookkeeper;
use crate::error::TxError;
use crate::node::{Changeset, Db};
use crate::remote::{self, RemoteOutcome, Replica};
use crate::statement::{with_params, Statement};

/// Jobs waiting for a writer; senders wait when it is full (back-pressure).
const QUEUE_JOBS_MAX: usize = 1024;

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
    pub db: Db,
}

type Reply<T> = oneshot::Sender<T>;

/// Where a committed changeset came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Local,
    Remote,
}

enum Job {
    Transact(Vec<Statement>, Reply<Result<TxOutcome, TxError>>),
    /// Merges chunks from peers.
    Remote(Vec<Arc<ChangeChunk>>, Reply<RemoteOutcome>),
    /// Reads what a peer asked for.
    Serve(Need, Reply<crr::Result<(Vec<ChangeChunk>, Option<Need>)>>),
    /// Applies parked versions whose schema arrived.
    RetryParked(Reply<()>),
    /// Runs a closure on the connection (schema changes, stats).
    With(Box<dyn FnOnce(&mut CrrConn) + Send>),
}

/// Handle to one database's writer thread.
#[derive(Clone)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
    bookkeeping: watch::Receiver<Arc<Bookkeeper>>,
}

impl Writer {
    pub fn spawn(
        mut conn: CrrConn,
        db: Db,
        on_commit: impl Fn(Changeset, Origin) + Send + 'static,
    ) -> std::io::Result<Writer> {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE_JOBS_MAX);
        let mut replica = Replica::open(&conn, db).map_err(std::io::Error::other)?;
        let bookkeeping = replica.published.subscribe();
        std::thread::Builder::new()
            .name(format!("patina-{}-writer", db.name()))
            .spawn(move || {
                let remote_commit = |cs: Changeset| on_commit(cs, Origin::Remote);
                while let Some(job) = rx.blocking_recv() {
                    match job {
                        Job::Transact(statements, reply) => {
                            let result = transact(&mut conn, db, &statements, &on_commit);
                            if let Ok(TxOutcome { version: Some(v), .. }) = &result {
                                replica.on_local_commit(*v);
                                replica.publish();
                            }
                            let _ = reply.send(result);
                        }
                        Job::Remote(chunks, reply) => {
                            let _ = reply.send(remote::apply(&mut conn, &mut replica, &chunks, &remote_commit));
                        }
                        Job::Serve(need, reply) => {
                            let _ = reply.send(remote::serve(&conn, &replica, &need));
                        }
                        Job::RetryParked(reply) => {
                            match remote::retry_parked(&mut conn, &mut replica, &remote_commit) {
                                Ok(0) => {}
                                Ok(n) => tracing::info!(db = db.name(), versions = n, "applied parked versions after a schema change"),
                                Err(e) => tracing::warn!(db = db.name(), error = %e, "applying parked versions failed"),
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
        })
    }

    /// Merges chunks that peers sent.
    pub async fn apply_remote(&self, chunks: Vec<Arc<ChangeChunk>>) -> Option<RemoteOutcome> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job::Remote(chunks, reply)).await.ok()?;
        answer.await.ok()
    }

    /// Reads (part of) what a peer asked for; the second value is what is
    /// left of the need.
    pub async fn serve(&self, need: Need) -> Option<crr::Result<(Vec<ChangeChunk>, Option<Need>)>> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job::Serve(need, reply)).await.ok()?;
        answer.await.ok()
    }

    /// Applies parked versions whose tables and columns now exist; returns
    /// when done.
    pub async fn retry_parked(&self) {
        let (reply, answer) = oneshot::channel();
        if self.jobs.send(Job::RetryParked(reply)).await.is_ok() {
            let _ = answer.await;
        }
    }

    /// The bookkeeping as of the last commit or merge.
    pub fn bookkeeping(&self) -> watch::Receiver<Arc<Bookkeeper>> {
        self.bookkeeping.clone()
    }

    pub async fn transact(&self, statements: Vec<Statement>) -> Result<TxOutcome, TxError> {
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

fn transact(
    conn: &mut CrrConn,
    db: Db,
    statements: &[Statement],
    on_commit: &impl Fn(Changeset, Origin),
) -> Result<TxOutcome, TxError> {
    let started = Instant::now();
    let actor: SiteId = conn.site_id();
    let mut tx = conn.transaction().map_err(|e| fail(0, e))?;
    let mut results = Vec::with_capacity(statements.len());
    for (index, st) in statements.iter().enumerate() {
        let t0 = Instant::now();
        let rows_affected =
            with_params!(st, |p| tx.execute(&st.sql, p)).map_err(|e| fail(index, e))?;
        results.push(StatementResult {
            rows_affected,
            time: t0.elapsed(),
        });
    }
    let version = tx
        .commit()
        .map_err(|e| fail(statements.len().saturating_sub(1), e))?;
    if let Some(v) = version {
        // The changes as committed: read back before anything else writes.
        match conn.changes_of(actor, v..=v) {
            Ok(changes) => on_commit(
                Changeset {
                    db,
                    actor,
                    version: v,
                    committed_ms: crate::node::unix_ms(),
                    changes: changes.into(),
                },
                Origin::Local,
            ),
            Err(e) => {
                tracing::error!(db = db.name(), version = v, error = %e, "reading a committed changeset failed")
            }
        }
    }
    Ok(TxOutcome {
        results,
        time: started.elapsed(),
        version,
        db,
    })
}

fn fail(index: usize, e: crr::CrrError) -> TxError {
    TxError::Statement {
        index,
        message: e.to_string(),
    }
}
