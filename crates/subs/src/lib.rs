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

mod codec;
mod diff;
mod pin;
mod plan;
mod store;
mod worker;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use patina_crr::{SiteId, Value};
use tokio::sync::{broadcast, oneshot};

pub use diff::{ChangeEvent, ChangeKind};

use patina_node::{Changeset, CommitObserver, Node, Origin, Params, Statement};
use plan::{Table, Touched};
use worker::{Msg, Worker};

/// Worker threads; each owns a read connection and a share of the
/// subscriptions (by statement). A full re-run delays the others of its
/// worker, never the writers.
const WORKERS: usize = 4;
/// Messages queued per worker. When full, commits are dropped and the
/// worker re-runs all its subscriptions in full (never wrong, just slower);
/// requests get [`SubError::Busy`].
const WORKER_QUEUE_MAX: usize = 4096;
/// Events buffered per attached subscriber; one that falls further behind
/// gets an error event and is disconnected.
pub(crate) const SUBSCRIBER_EVENTS_BUFFERED: usize = 128;
/// Subscriptions one node keeps (each holds its result in memory).
const SUBSCRIPTIONS_MAX: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubError {
    /// The statement cannot be subscribed to (400).
    #[error("{0}")]
    Invalid(String),
    #[error("could not find subscription with id {0}")]
    NotFound(String),
    /// `from=` for a statement nobody subscribed to yet (400).
    #[error("there is no subscription for this statement yet, so from= has nothing to resume: subscribe without from= first")]
    NoSuchSubscription,
    #[error("this node holds the maximum of {SUBSCRIPTIONS_MAX} subscriptions: reuse an existing statement")]
    TooMany,
    #[error("the subscription workers are busy: retry shortly")]
    Busy,
    #[error("{0}")]
    Internal(String),
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// How a stream attaches to a subscription.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attach {
    /// Only changes with ids above this one; no snapshot.
    pub from: Option<u64>,
    /// No snapshot rows (columns and the current change id still come).
    pub skip_rows: bool,
}

/// What a stream gets next after its snapshot.
#[derive(Debug, Clone, PartialEq)]
pub enum SubItem {
    Change(ChangeEvent),
    /// The stream ends after this.
    Error(String),
}

/// One attached stream: the snapshot (unless `from`), then its changes.
pub struct SubStream {
    /// Hyphenated UUID.
    pub id: String,
    /// 16 hex characters.
    pub hash: String,
    pub columns: Vec<String>,
    /// `(row_id, cells)`; `None` when attached with `from`.
    pub rows: Option<Vec<(u64, Vec<Value>)>>,
    /// The last change id at snapshot time.
    pub change_id: u64,
    pub snapshot_time: Duration,
    backlog: VecDeque<ChangeEvent>,
    live: broadcast::Receiver<ChangeEvent>,
    error: Option<String>,
    delivered: u64,
}

impl SubStream {
    /// The next change; `None` when the node shuts down (or after an error).
    pub async fn next(&mut self) -> Option<SubItem> {
        if let Some(e) = self.error.take() {
            self.delivered = u64::MAX;
            return Some(SubItem::Error(e));
        }
        if self.delivered == u64::MAX {
            return None;
        }
        if let Some(e) = self.backlog.pop_front() {
            self.delivered = e.change_id;
            return Some(SubItem::Change(e));
        }
        loop {
            match self.live.recv().await {
                Ok(e) if e.change_id <= self.delivered => continue,
                Ok(e) => {
                    debug_assert_eq!(e.change_id, self.delivered + 1);
                    self.delivered = e.change_id;
                    return Some(SubItem::Change(e));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let at = self.delivered;
                    self.delivered = u64::MAX;
                    return Some(SubItem::Error(format!(
                        "this subscriber fell {n} events behind and was disconnected: \
                         re-attach with from={at}"
                    )));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// What commits and requests are routed by; shared with the writers.
pub(crate) struct Dispatch {
    workers: Vec<SyncSender<Msg>>,
    overflow: Vec<Arc<AtomicBool>>,
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    by_key: HashMap<String, String>,
    worker_of: HashMap<String, usize>,
    /// Which workers hold a subscription reading a table.
    readers: HashMap<Table, BTreeSet<usize>>,
}

impl Dispatch {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn id_of(&self, key: &str) -> Option<String> {
        self.registry().by_key.get(key).cloned()
    }

    fn register(&self, id: &str, key: &str, worker: usize, reads: &HashSet<Table>) {
        let mut r = self.registry();
        r.by_key.insert(key.to_owned(), id.to_owned());
        r.worker_of.insert(id.to_owned(), worker);
        for t in reads {
            r.readers.entry(t.clone()).or_default().insert(worker);
        }
    }

    /// Records which worker owns a stored subscription (its tables are
    /// registered when the worker has analyzed it).
    fn register_owner(&self, id: &str, key: &str, worker: usize) {
        let mut r = self.registry();
        r.by_key.insert(key.to_owned(), id.to_owned());
        r.worker_of.insert(id.to_owned(), worker);
    }

    fn unregister(&self, id: &str, key: &str) {
        let mut r = self.registry();
        r.by_key.remove(key);
        r.worker_of.remove(id);
    }

    /// Routes a committed changeset to the workers whose subscriptions
    /// read a table it changed. Runs on the writer thread: a lock, lookups
    /// and non-blocking sends; a commit no subscription reads costs a
    /// lookup per changed table.
    pub fn on_commit(&self, cs: &Changeset) {
        let mut touched = Touched::new();
        let mut workers = BTreeSet::new();
        {
            let r = self.registry();
            if r.readers.is_empty() {
                return;
            }
            for change in cs.changes.iter() {
                let table = (cs.db, change.table.clone());
                let Some(w) = r.readers.get(&table) else {
                    continue;
                };
                workers.extend(w.iter().copied());
                if let Ok(pk) = patina_crr::pk::unpack(&change.pk) {
                    touched.entry(table).or_default().insert(codec::encode(&pk));
                }
            }
        }
        if workers.is_empty() {
            return;
        }
        let touched = Arc::new(touched);
        for w in workers {
            match self.workers[w].try_send(Msg::Commit(Arc::clone(&touched))) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => self.overflow[w].store(true, Ordering::Release),
            }
        }
    }
}

impl CommitObserver for Dispatch {
    fn on_commit(&self, changeset: &Changeset, _origin: Origin) {
        Dispatch::on_commit(self, changeset);
    }
}

/// The node's subscriptions: the worker threads and the routing to them.
pub struct Subscriptions {
    dispatch: Arc<Dispatch>,
    threads: Vec<JoinHandle<()>>,
}

impl Subscriptions {
    /// Starts the workers (`open_reader` gives each its connection) and
    /// restores the subscriptions stored under `dir`.
    pub fn open(
        dir: &Path,
        open_reader: impl Fn() -> rusqlite::Result<rusqlite::Connection>,
    ) -> std::io::Result<Subscriptions> {
        std::fs::create_dir_all(dir)?;
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        let mut overflow = Vec::new();
        for _ in 0..WORKERS {
            let (tx, rx) = sync_channel(WORKER_QUEUE_MAX);
            senders.push(tx);
            receivers.push(rx);
            overflow.push(Arc::new(AtomicBool::new(false)));
        }
        let dispatch = Arc::new(Dispatch {
            workers: senders,
            overflow,
            registry: Mutex::new(Registry::default()),
        });
        let mut threads = Vec::new();
        for (no, rx) in receivers.into_iter().enumerate() {
            let conn = open_reader().map_err(std::io::Error::other)?;
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
                conn,
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

    /// Opens `node`'s subscriptions (stored under `data_dir/subs`) and
    /// has the node show them every commit, local or remote. Call it before
    /// the node serves clients or peers.
    pub fn open_for(node: &Node) -> std::io::Result<Subscriptions> {
        let subs = Subscriptions::open(&node.data_dir().join("subs"), || node.open_reader())?;
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
        let owner = {
            let r = self.dispatch.registry();
            let owner = r
                .by_key
                .get(&key)
                .and_then(|id| r.worker_of.get(id))
                .copied();
            if create && owner.is_none() && r.worker_of.len() >= SUBSCRIPTIONS_MAX {
                return Err(SubError::TooMany);
            }
            owner
        };
        let no = owner.unwrap_or_else(|| worker_of_key(&key));
        self.ask(no, |reply| Msg::Subscribe {
            statement,
            key,
            create,
            attach,
            reply,
        })
        .await
    }

    /// Attaches a stream to subscription `id`.
    pub async fn attach(&self, id: &str, attach: Attach) -> Result<SubStream, SubError> {
        let no = self
            .dispatch
            .registry()
            .worker_of
            .get(id)
            .copied()
            .ok_or_else(|| SubError::NotFound(id.to_owned()))?;
        let id = id.to_owned();
        self.ask(no, |reply| Msg::Attach { id, attach, reply })
            .await
    }

    async fn ask(
        &self,
        no: usize,
        msg: impl FnOnce(worker::Reply) -> Msg,
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

/// A subscription's identity: its SQL and bound parameters (no parameters
/// and an empty list of them are the same).
fn key_of(st: &Statement) -> String {
    let mut key = st.sql.trim().to_owned();
    match &st.params {
        Params::None => {}
        Params::Positional(v) if v.is_empty() => {}
        Params::Positional(values) => {
            key.push_str("\0p");
            key.push_str(&hex::encode(codec::encode(values)));
        }
        Params::Named(values) => {
            let mut values: Vec<_> = values.iter().collect();
            values.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, v) in values {
                key.push_str("\0n");
                key.push_str(name);
                key.push('=');
                key.push_str(&hex::encode(codec::encode(std::slice::from_ref(v))));
            }
        }
    }
    key
}

/// FNV-1a, 64 bits: stable across builds and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `corro-query-hash`: 16 hex characters.
fn hash_of(key: &str) -> String {
    format!("{:016x}", fnv1a(key.as_bytes()))
}

fn worker_of_key(key: &str) -> usize {
    (fnv1a(key.as_bytes()) % WORKERS as u64) as usize
}

/// A random (v4) UUID, hyphenated.
pub fn new_id() -> String {
    let hex = SiteId::random().to_hex();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_hashes_and_keys() {
        let id = new_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4', "version 4: {id}");
        assert_ne!(new_id(), id);
        let a = Statement::with_params("SELECT * FROM t WHERE a = ?", vec![Value::Integer(1)]);
        let b = Statement::with_params("SELECT * FROM t WHERE a = ?", vec![Value::Integer(2)]);
        assert_ne!(key_of(&a), key_of(&b));
        assert_eq!(key_of(&a), key_of(&a.clone()));
        let h = hash_of(&key_of(&a));
        assert_eq!(h.len(), 16);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
