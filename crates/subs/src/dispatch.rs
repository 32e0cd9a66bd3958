//! Routing of commits and requests to the subscription workers.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::TrySendError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use patina_node::{Changeset, CommitObserver, Origin};

use crate::codec;
use crate::msg::Msg;
use crate::plan::{Table, Touched};

/// What commits and requests are routed by; shared with the writers.
pub(crate) struct Dispatch {
    pub(crate) workers: Vec<crate::queue::QueueSender<Msg>>,
    pub(crate) query_limit: Arc<crate::clock::QueryLimit>,
    pub(crate) overflow: Vec<Arc<AtomicBool>>,
    pub(crate) registry: Mutex<Registry>,
    /// `api.subscription_idle_expiry` in milliseconds; 0: never.
    pub(crate) idle_expiry_ms: AtomicU64,
    /// Subscription re-runs (restricted or full) since start.
    pub(crate) reruns: AtomicU64,
    /// Shapes analyzed (prepared under the authorizer) since start.
    pub(crate) analyses: AtomicU64,
    /// `api.subscriptions_max`: subscriptions held at most.
    pub(crate) max: AtomicU64,
}

#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) by_key: HashMap<String, String>,
    pub(crate) worker_of: HashMap<String, usize>,
    /// Which workers hold a subscription reading a table.
    pub(crate) readers: HashMap<Table, BTreeSet<usize>>,
    /// Keys of creations asked of a worker and not answered yet: those
    /// not registered yet count against the maximum, or concurrent
    /// creations past the check would all get in.
    pub(crate) creating: HashSet<String>,
}

impl Registry {
    /// Subscriptions held, and being created.
    pub(crate) fn count(&self) -> usize {
        let pending = self
            .creating
            .iter()
            .filter(|k| !self.by_key.contains_key(*k))
            .count();
        self.worker_of.len() + pending
    }
}

impl Dispatch {
    pub(crate) fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long a subscription may have no listener before it is removed;
    /// `None`: kept until deleted.
    pub(crate) fn idle_expiry(&self) -> Option<Duration> {
        match self.idle_expiry_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    pub(crate) fn id_of(&self, key: &str) -> Option<String> {
        self.registry().by_key.get(key).cloned()
    }

    pub(crate) fn register(&self, id: &str, key: &str, worker: usize, reads: &HashSet<Table>) {
        let mut r = self.registry();
        r.by_key.insert(key.to_owned(), id.to_owned());
        r.worker_of.insert(id.to_owned(), worker);
        for t in reads {
            r.readers.entry(t.clone()).or_default().insert(worker);
        }
    }

    /// Records which worker owns a stored subscription (its tables are
    /// registered when the worker has analyzed it).
    pub(crate) fn register_owner(&self, id: &str, key: &str, worker: usize) {
        let mut r = self.registry();
        r.by_key.insert(key.to_owned(), id.to_owned());
        r.worker_of.insert(id.to_owned(), worker);
    }

    pub(crate) fn unregister(&self, id: &str, key: &str) {
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
            if let Some(omitted) = &cs.omitted {
                // Too many changes to carry (or to restrict a re-run by):
                // every subscription reading a table it wrote re-runs in
                // full, as after an overflow.
                let tables: BTreeSet<Table> =
                    omitted.tables.iter().map(|t| (cs.db, t.clone())).collect();
                let workers: BTreeSet<usize> = tables
                    .iter()
                    .filter_map(|t| r.readers.get(t))
                    .flatten()
                    .copied()
                    .collect();
                drop(r);
                let tables = Arc::new(tables);
                for w in workers {
                    match self.workers[w].try_send(Msg::Tables(Arc::clone(&tables))) {
                        Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                        Err(TrySendError::Full(_)) => {
                            self.overflow[w].store(true, Ordering::Release)
                        }
                    }
                }
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
