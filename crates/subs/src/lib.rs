//! `patina-subs`: subscriptions (`docs/subscriptions.md`) — a bound SELECT
//! whose result is kept current as commits arrive (local or merged from a
//! peer: it is a [`CommitObserver`] of the node), streamed as a snapshot
//! then change events with contiguous change ids. It never writes the node's
//! databases and never blocks a writer thread: commits are handed to worker
//! queues without waiting.
//!
//! - `diff`: the result state and the diff, plain values.
//! - `plan`: what a statement reads, its row key, restricted re-runs.
//! - `store`: one SQLite file per worker under `data_dir/subs/`.
//! - `worker`: threads owning the states; [`Subscriptions`] routes commits
//!   and requests to them.

mod clock;
mod codec;
mod diff;
mod dispatch;
mod ids;
mod msg;
mod plan;
mod queue;
mod route;
mod routing;
mod shape;
mod store;
mod stream;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::TrySendError;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

pub use diff::{ChangeEvent, ChangeKind};
pub use ids::new_id;
pub use stream::{Attach, SubError, SubItem, SubStream};

use dispatch::{Dispatch, Registry};
use ids::key_of;
use msg::{Create, Msg};
use patina_node::{CommitObserver, Node, Statement};
pub use stream::SUBSCRIPTIONS_MAX_DEFAULT;
use worker::Worker;

/// Worker threads; each owns a read connection and a share of the
/// subscriptions (by statement). A full re-run delays the others of its
/// worker, never the writers.
const WORKERS: usize = 4;
/// Messages queued per worker. When full, commits are dropped and the
/// worker re-runs all its subscriptions in full (never wrong, just slower);
/// requests get [`SubError::Busy`].
const WORKER_QUEUE_MAX: usize = 4096;
/// A subscription's query running longer is interrupted (the default of
/// `api.query_timeout`; [`Subscriptions::set_query_timeout`] changes it).
const QUERY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// A subscription without a listener for this long is removed (the
/// default of `api.subscription_idle_expiry`): an abandoned stream must
/// not hold one of the `api.subscriptions_max` places for good, while a
/// client re-attaching after a restart or a network cut finds it.
pub const IDLE_EXPIRY_DEFAULT: Duration = Duration::from_secs(3600);
/// The node's subscriptions: the worker threads and the routing to them.
pub struct Subscriptions {
    dispatch: Arc<Dispatch>,
    threads: Vec<JoinHandle<()>>,
}

impl Subscriptions {
    /// Starts the workers (`open_reader` gives each its connection, when
    /// it first needs one) and restores the subscriptions stored under
    /// `dir`.
    pub fn open(
        dir: &Path,
        open_reader: impl Fn() -> rusqlite::Result<rusqlite::Connection> + Send + Sync + 'static,
    ) -> std::io::Result<Subscriptions> {
        let open_reader: worker::OpenReader = Arc::new(open_reader);
        std::fs::create_dir_all(dir)?;
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        let mut overflow = Vec::new();
        for _ in 0..WORKERS {
            let (tx, rx) = queue::bounded(WORKER_QUEUE_MAX);
            senders.push(tx);
            receivers.push(rx);
            overflow.push(Arc::new(AtomicBool::new(false)));
        }
        let dispatch = Arc::new(Dispatch {
            workers: senders,
            query_limit: Arc::new(clock::QueryLimit::new(QUERY_TIMEOUT_DEFAULT)),
            overflow,
            registry: Mutex::new(Registry::default()),
            idle_expiry_ms: AtomicU64::new(IDLE_EXPIRY_DEFAULT.as_millis() as u64),
            reruns: AtomicU64::new(0),
            analyses: AtomicU64::new(0),
            max: AtomicU64::new(SUBSCRIPTIONS_MAX_DEFAULT as u64),
        });
        let mut threads = Vec::new();
        for (no, rx) in receivers.into_iter().enumerate() {
            let (store, stored) = store::Store::open(dir, no).map_err(|e| {
                std::io::Error::other(format!(
                    "subscription store {}: {e}",
                    store::path_of(dir, no).display()
                ))
            })?;
            // Registered before `open` returns, so that an attach by id
            // right after start finds its worker; the worker restores the
            // subscription before it reads the attach (same queue).
            for s in stored {
                dispatch.register_owner(&s.id, &key_of(&s.statement), no);
                let _ = dispatch.workers[no].send(Msg::Restore(Box::new(s), None));
            }
            let worker = Worker::new(
                no,
                Arc::clone(&open_reader),
                store,
                Arc::clone(&dispatch),
                Arc::clone(&dispatch.overflow[no]),
            );
            threads.push(
                std::thread::Builder::new()
                    .name(format!("patina-subs-{no}"))
                    .spawn(move || worker.run(rx))?,
            );
        }
        let subs = Subscriptions { dispatch, threads };
        subs.move_legacy(dir)?;
        Ok(subs)
    }

    /// Moves the subscriptions of the old layout (one `<id>.db` per
    /// subscription) into the workers' stores; each file is removed once
    /// its content is stored (a crash in between finds it again, and a
    /// subscription already moved is not moved twice).
    fn move_legacy(&self, dir: &Path) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path: PathBuf = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".db.tmp") {
                // A creation that did not finish: no client ever saw it.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".db") || name.starts_with("worker-") {
                continue;
            }
            match store::read_legacy(&path) {
                Ok(stored) => {
                    let key = key_of(&stored.statement);
                    if self.dispatch.id_of(&key).is_some() {
                        worker::remove_legacy(&path);
                        continue;
                    }
                    let no = worker_of_key(&key);
                    self.dispatch.register_owner(&stored.id, &key, no);
                    let _ =
                        self.dispatch.workers[no].send(Msg::Restore(Box::new(stored), Some(path)));
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "a stored subscription of the old layout cannot be read; it is skipped (remove the file to drop it)")
                }
            }
        }
        Ok(())
    }

    /// A subscription's query (its first run or a re-run after a commit)
    /// running longer than `limit` is interrupted: creating it fails, a
    /// re-run leaves its result as it was.
    pub fn set_query_timeout(&self, limit: Duration) {
        self.dispatch.query_limit.set(limit);
    }

    /// A subscription that has had no listener (no attached stream) for
    /// `expiry` is removed, as by [`remove`](Self::remove); `None` keeps
    /// subscriptions until they are removed.
    pub fn set_idle_expiry(&self, expiry: Option<Duration>) {
        let ms = expiry.map_or(0, |d| (d.as_millis() as u64).max(1));
        self.dispatch.idle_expiry_ms.store(ms, Ordering::Relaxed);
    }

    /// Removes subscription `id`: its state and event log are deleted and
    /// its attached streams end; the same statement subscribed again is a
    /// new subscription (new id, change ids from 1).
    pub async fn remove(&self, id: &str) -> Result<(), SubError> {
        let no = self.worker_of(id)?;
        let (reply, answer) = oneshot::channel();
        let msg = Msg::Remove {
            id: id.to_owned(),
            reply,
        };
        match self.dispatch.workers[no].try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(SubError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(SubError::ShuttingDown),
        }
        answer.await.map_err(|_| SubError::ShuttingDown)?
    }

    /// How many times a subscription's query was re-run after commits
    /// (restricted to changed keys or in full) since start: what routing
    /// saves shows here.
    pub fn reruns(&self) -> u64 {
        self.dispatch.reruns.load(Ordering::Relaxed)
    }

    /// How many statements were analyzed since start: one per shape and
    /// worker, not one per subscription (`shape`).
    pub fn analyses(&self) -> u64 {
        self.dispatch.analyses.load(Ordering::Relaxed)
    }

    /// How many subscriptions the node holds.
    pub fn len(&self) -> usize {
        self.dispatch.registry().worker_of.len()
    }

    /// Whether the node holds no subscription.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Opens `node`'s subscriptions (stored under `data_dir/subs`) and
    /// has the node show them every commit, local or remote. Call it before
    /// the node serves clients or peers.
    pub fn open_for(node: &Node) -> std::io::Result<Subscriptions> {
        let subs = Subscriptions::open(&node.data_dir().join("subs"), node.reader_opener())?;
        node.add_commit_observer(Arc::clone(&subs.dispatch) as Arc<dyn CommitObserver>);
        Ok(subs)
    }

    /// Subscribes to `statement` (creating the subscription unless
    /// `create` is false) and attaches a stream to it.
    pub async fn subscribe(
        &self,
        statement: Statement,
        create: bool,
        attach: Attach,
    ) -> Result<SubStream, SubError> {
        let key = key_of(&statement);
        // An existing subscription is asked of the worker whose store holds
        // it; a new one goes to the worker its statement hashes to, so
        // that two creations of the same statement are serialized there.
        let (owner, create) = {
            let mut r = self.dispatch.registry();
            let owner = r
                .by_key
                .get(&key)
                .and_then(|id| r.worker_of.get(id))
                .copied();
            let mut mode = if create { Create::Yes } else { Create::No };
            if mode == Create::Yes && owner.is_none() {
                let max = self.max_subscriptions();
                if r.count() >= max {
                    mode = Create::Full(max);
                } else {
                    r.creating.insert(key.clone());
                }
            }
            (owner, mode)
        };
        let creating_key = (owner.is_none() && create == Create::Yes).then(|| key.clone());
        let no = owner.unwrap_or_else(|| worker_of_key(&key));
        let answer = self
            .ask(no, |reply| Msg::Subscribe {
                statement,
                key,
                create,
                attach,
                reply,
            })
            .await;
        // Answered: a created subscription is registered by now.
        if let Some(key) = creating_key {
            self.dispatch.registry().creating.remove(&key);
        }
        answer
    }

    /// `api.subscriptions_max`: creating one more past this many is
    /// refused (503) until some are removed or expire.
    pub fn set_max_subscriptions(&self, max: usize) {
        self.dispatch.max.store(max as u64, Ordering::Relaxed);
    }

    fn max_subscriptions(&self) -> usize {
        usize::try_from(self.dispatch.max.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    /// The worker holding subscription `id`.
    fn worker_of(&self, id: &str) -> Result<usize, SubError> {
        self.dispatch
            .registry()
            .worker_of
            .get(id)
            .copied()
            .ok_or_else(|| SubError::NotFound(id.to_owned()))
    }

    /// Attaches a stream to subscription `id`.
    pub async fn attach(&self, id: &str, attach: Attach) -> Result<SubStream, SubError> {
        let no = self.worker_of(id)?;
        let id = id.to_owned();
        self.ask(no, |reply| Msg::Attach { id, attach, reply })
            .await
    }

    async fn ask(
        &self,
        no: usize,
        msg: impl FnOnce(msg::Reply) -> Msg,
    ) -> Result<SubStream, SubError> {
        let (reply, answer) = oneshot::channel();
        match self.dispatch.workers[no].try_send(msg(reply)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(SubError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(SubError::ShuttingDown),
        }
        answer.await.map_err(|_| SubError::ShuttingDown)?
    }
}

impl Drop for Subscriptions {
    /// Stops the workers and waits for them: a node reopened on the same
    /// data dir finds the stores closed and complete.
    fn drop(&mut self) {
        for w in &self.dispatch.workers {
            let _ = w.send(Msg::Stop);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn worker_of_key(key: &str) -> usize {
    (ids::fnv1a(key.as_bytes()) % WORKERS as u64) as usize
}
