//! A subscription worker: a thread owning a read connection and the state
//! of the subscriptions assigned to it. Messages are drained in batches;
//! consecutive commits are folded, so a burst of writes costs one re-run
//! per subscription. Events are stored before any subscriber sees them.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::clock::QueryClock;
use super::codec;
use super::diff::{ChangeEvent, ResultState};
use super::dispatch::Dispatch;
use super::ids::{hash_of, key_of, new_id};
use super::msg::{Create, Msg};
use super::plan::{self, Plan, Shape, Table, Touched, RESTRICTED_KEYS_MAX};
use super::routing::{Concerned, Routing};
use super::shape::parameterized;
use super::store::{Batch, Store, Stored, SubNo};
use super::stream::{Attach, Live, SubError, SubStream};
use patina_node::Statement;

/// How long a flush spends on full re-runs (aggregates, joins, …) before
/// it lets messages that arrived meanwhile in: a new commit gets its
/// routed subscriptions' cheap re-runs first instead of waiting behind
/// every aggregate of the worker (≈ 1 ms each on a 10k-row table; 25 per
/// worker in the sub_scale mix made a routed event wait 50–130 ms).
const FULL_RERUNS_SLICE: Duration = Duration::from_millis(4);
/// Messages one batch takes at most before its commits are processed.
const BATCH_MESSAGES_MAX: usize = 1024;
/// How often a worker looks for subscriptions without a listener, at most
/// and at least (a quarter of the expiry in between).
const SWEEP_EVERY_MIN: Duration = Duration::from_millis(10);
const SWEEP_EVERY_MAX: Duration = Duration::from_secs(60);

enum Pending {
    Keys(Touched, usize),
    Full,
}

struct Sub {
    id: String,
    hash: String,
    statement: Statement,
    /// `statement` with its literals bound (`shape`), when it has any:
    /// what runs.
    parameterized: Option<Statement>,
    plan: Plan,
    state: ResultState,
    /// Its number in the worker's store.
    no: SubNo,
    live: Live,
    /// Set when the state could not be stored: the subscription serves no
    /// more (a restart rebuilds it).
    failed: Option<String>,
}

impl Sub {
    /// The statement that runs.
    fn runs(&self) -> &Statement {
        self.parameterized.as_ref().unwrap_or(&self.statement)
    }
}

/// Opens a worker's read connection (both databases, read-only).
pub(crate) type OpenReader = Arc<dyn Fn() -> rusqlite::Result<Connection> + Send + Sync>;

pub(crate) struct Worker {
    pub no: usize,
    /// Opened on first use: a worker that never holds a subscription never
    /// pays for one (two SQLite connections' memory, issue 16).
    conn: Option<Connection>,
    open_reader: OpenReader,
    pub store: Store,
    pub dispatch: Arc<Dispatch>,
    pub overflow: Arc<AtomicBool>,
    clock: Arc<QueryClock>,
    subs: HashMap<String, Sub>,
    /// Subscriptions that may change on any change of a table.
    by_table: HashMap<Table, Vec<String>>,
    /// Subscriptions routed by the values of changed rows
    /// (`plan::Plan::route`), and the changed keys of their tables not
    /// looked up yet (at the next flush, in its read transaction).
    routing: Routing,
    routed_touched: Touched,
    pending: HashMap<String, Pending>,
    /// Analyzed shapes by their SQL text, each dropped with its last
    /// subscription, all of them when the schema changes.
    shapes: HashMap<String, Arc<Shape>>,
    /// The databases' schema versions the shapes were analyzed against.
    shapes_schema: Option<(i64, i64)>,
    /// Messages waiting in this worker's queue (`QueueReceiver::waiting`).
    queued: Arc<AtomicUsize>,
    /// The databases' schema versions the subscriptions' columns were
    /// last checked against.
    subs_schema: Option<(i64, i64)>,
}

impl Worker {
    pub fn new(
        no: usize,
        open_reader: OpenReader,
        store: Store,
        dispatch: Arc<Dispatch>,
        overflow: Arc<AtomicBool>,
    ) -> Worker {
        let clock = QueryClock::new(Arc::clone(&dispatch.query_limit));
        Worker {
            no,
            conn: None,
            open_reader,
            store,
            dispatch,
            overflow,
            clock,
            subs: HashMap::new(),
            by_table: HashMap::new(),
            routing: Routing::default(),
            routed_touched: Touched::new(),
            pending: HashMap::new(),
            shapes: HashMap::new(),
            shapes_schema: None,
            queued: Arc::default(),
            subs_schema: None,
        }
    }

    pub fn run(mut self, rx: crate::queue::QueueReceiver<Msg>) {
        self.queued = rx.waiting();
        let mut last_sweep: Option<Instant> = None;
        // The earliest time an idle subscription expires, as of the last sweep.
        let mut next_expiry: Option<Instant> = None;
        loop {
            // Read each time: the expiry can be changed while running.
            let every = self
                .dispatch
                .idle_expiry()
                .map_or(SWEEP_EVERY_MAX, |e| e / 4)
                .clamp(SWEEP_EVERY_MIN, SWEEP_EVERY_MAX);
            let now = Instant::now();
            let next_sweep = match (last_sweep, next_expiry) {
                (Some(at), Some(expiry)) => (at + every).min(expiry),
                (Some(at), None) => at + every,
                (None, _) => now,
            };
            if now >= next_sweep {
                next_expiry = self.sweep(now);
                last_sweep = Some(now);
                continue;
            }
            // (Without a connection a flush cannot progress: wait as usual.)
            let first = if self.pending.is_empty() || self.conn.is_none() {
                match rx.recv_timeout(next_sweep - now) {
                    Ok(m) => m,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                // Full re-runs left over from the last slice: new commits
                // first (their cheap re-runs jump the queue), else go on.
                match rx.try_recv() {
                    Ok(m) => m,
                    Err(std::sync::mpsc::TryRecvError::Empty) => {
                        self.flush();
                        continue;
                    }
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                }
            };
            let mut batch = vec![first];
            while batch.len() < BATCH_MESSAGES_MAX {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            if self.overflow.swap(false, Ordering::AcqRel) {
                // Commits were dropped on a full queue: recompute everything.
                for id in self.subs.keys() {
                    self.pending.insert(id.clone(), Pending::Full);
                }
            }
            // A commit too large to carry its changes re-runs whole tables:
            // the pages that read are let go of after, not kept in this
            // worker's cache (8 MiB) beside the next large commit.
            let mut large = false;
            for msg in batch {
                match msg {
                    Msg::Commit(touched) => self.note(&touched),
                    Msg::Tables(tables) => {
                        large = true;
                        self.note_tables(&tables)
                    }
                    Msg::Stop => return,
                    other => {
                        self.flush();
                        let clock = Arc::clone(&self.clock);
                        clock.limited(|| self.handle(other));
                    }
                }
            }
            self.flush();
            if let (true, Some(conn)) = (large, &self.conn) {
                if let Err(e) = conn.execute_batch("PRAGMA shrink_memory") {
                    tracing::debug!(error = %e, "PRAGMA shrink_memory failed");
                }
            }
        }
    }

    fn note(&mut self, touched: &Touched) {
        for (table, keys) in touched {
            if let Some(ids) = self.by_table.get(table) {
                for id in ids {
                    let restricted = self
                        .subs
                        .get(id)
                        .is_some_and(|s| s.plan.shape.restricted.is_some());
                    note_keys(&mut self.pending, id, table, keys, restricted);
                }
            }
            if self.routing.is_routed(table) {
                self.routed_touched
                    .entry(table.clone())
                    .or_default()
                    .extend(keys.iter().cloned());
            }
        }
    }

    /// Every subscription reading one of `tables` (pinned to a key or not)
    /// re-runs in full at the next flush.
    fn note_tables(&mut self, tables: &BTreeSet<Table>) {
        for table in tables {
            for id in self.by_table.get(table).into_iter().flatten() {
                self.pending.insert(id.clone(), Pending::Full);
            }
        }
        for table in tables {
            for id in self.routing.subs_of(table) {
                self.pending.insert(id.clone(), Pending::Full);
            }
        }
    }

    /// Runs `f` with the read connection, opening it on first use.
    fn with_conn<T>(
        &mut self,
        f: impl FnOnce(&mut Worker, &mut Connection) -> T,
    ) -> rusqlite::Result<T> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => {
                let mut conn = (self.open_reader)()?;
                self.clock.watch(&mut conn);
                conn
            }
        };
        let out = f(self, &mut conn);
        self.conn = Some(conn);
        Ok(out)
    }

    fn flush(&mut self) {
        if self.pending.is_empty() && self.routed_touched.is_empty() {
            return;
        }
        if let Err(e) = self.with_conn(|w, conn| w.flush_on(conn)) {
            // What is pending stays so, and is tried again with the next batch.
            tracing::error!(worker = self.no, error = %e, "a subscription worker cannot open its read connection; its subscriptions' events wait");
        }
    }

    fn flush_on(&mut self, conn: &Connection) {
        self.end_outdated(conn);
        // One read transaction for the whole batch: every subscription sees
        // the same snapshot, and the file locks are taken once, not once per
        // subscription (~12% of a worker's time with 1,000 subscriptions).
        let snapshot = conn.execute_batch("BEGIN DEFERRED");
        // The routed subscriptions the changed rows concern, by the rows'
        // values in the snapshot the re-runs read.
        for (table, keys) in std::mem::take(&mut self.routed_touched) {
            let mut concerned = Concerned::new();
            let looked_up = self
                .clock
                .limited(|| self.routing.concerned(conn, &table, &keys, &mut concerned));
            match looked_up {
                Some(Ok(())) => {
                    for (id, keys) in &concerned {
                        note_keys(&mut self.pending, id, &table, keys, true);
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, table = table.1, "could not read the changed rows to route them; their table's routed subscriptions re-run in full");
                    for id in self.routing.subs_of(&table) {
                        self.pending.insert(id.clone(), Pending::Full);
                    }
                }
                // Keys JSON cannot carry: every routed subscription of the
                // table gets them (its restricted re-run falls back too).
                None => {
                    for id in self.routing.subs_of(&table) {
                        note_keys(&mut self.pending, id, &table, &keys, true);
                    }
                }
            }
        }
        let pending = std::mem::take(&mut self.pending);
        // Restricted re-runs first, stored and published before the full
        // re-runs start: a `WHERE id = ?` subscription's event does not wait
        // for the aggregates of the same worker (≈ 1 ms each on a 10k-row
        // table). Two store transactions per batch instead of one.
        let (cheap, full): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(id, p)| {
            matches!(p, Pending::Keys(..))
                && self
                    .subs
                    .get(id)
                    .is_some_and(|s| s.plan.shape.restricted.is_some())
        });
        for (slice, part) in [(None, cheap), (Some(FULL_RERUNS_SLICE), full)] {
            let started = Instant::now();
            let mut changed = Vec::new();
            let mut part = part.into_iter();
            while let Some((id, pending)) = part.next() {
                if slice.is_some_and(|s| started.elapsed() >= s)
                    && self.queued.load(Ordering::Acquire) > 0
                {
                    // The rest waits for the next flush, after the queue's
                    // new commits had their cheap re-runs.
                    self.pending.insert(id, pending);
                    self.pending.extend(part);
                    break;
                }
                if let Some(sub) = self.subs.get_mut(&id) {
                    if sub.failed.is_none() {
                        let events = self.clock.limited(|| recompute(conn, sub, pending));
                        self.dispatch.reruns.fetch_add(1, Ordering::Relaxed);
                        if let Some((route, cols)) = routed(&sub.plan) {
                            self.routing.note_events(&id, route, cols, &events);
                        }
                        if !events.is_empty() {
                            changed.push((id, events));
                        }
                    }
                }
            }
            self.publish(changed);
        }
        if snapshot.is_ok() {
            let _ = conn.execute_batch("COMMIT");
        }
    }

    /// Stores the events of a batch (one transaction for all the worker's
    /// subscriptions), then hands them to the subscribers.
    fn publish(&mut self, changed: Vec<(String, Vec<ChangeEvent>)>) {
        if changed.is_empty() {
            return;
        }
        let saved = {
            let batches: Vec<Batch<'_>> = changed
                .iter()
                .filter_map(|(id, events)| {
                    let sub = self.subs.get(id)?;
                    Some(Batch {
                        no: sub.no,
                        state: &sub.state,
                        events,
                    })
                })
                .collect();
            self.store.save(&batches)
        };
        for (id, events) in changed {
            let Some(sub) = self.subs.get_mut(&id) else {
                continue;
            };
            if let Err(e) = &saved {
                tracing::error!(id = sub.id, error = %e, "could not store subscription events; the subscription stops serving until a restart rebuilds it");
                sub.failed = Some(format!("could not store its events: {e}"));
                // Its streams end.
                sub.live.close();
                continue;
            }
            sub.live.send(events);
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Subscribe {
                statement,
                key,
                create,
                attach,
                reply,
            } => {
                let answer = self
                    .with_conn(|w, conn| w.subscribe(conn, statement, key, create, attach))
                    .unwrap_or_else(|e| {
                        Err(SubError::Internal(format!(
                            "could not open a read connection for the subscription: {e}"
                        )))
                    });
                let _ = reply.send(answer);
            }
            Msg::Attach { id, attach, reply } => {
                let answer = match self.subs.get(&id) {
                    Some(sub) => attach_to(sub, &self.store, attach),
                    None => Err(SubError::NotFound(id)),
                };
                let _ = reply.send(answer);
            }
            Msg::Restore(stored, legacy) => {
                let id = stored.id.clone();
                if let Err(e) = self.with_conn(|w, conn| w.restore(conn, *stored, legacy)) {
                    tracing::error!(id, error = %e, "a stored subscription cannot be restored: no read connection opens; restart the node once the data dir is readable");
                }
            }
            Msg::Remove { id, reply } => {
                let _ = reply.send(self.remove(&id));
            }
            Msg::Commit(_) | Msg::Tables(_) | Msg::Stop => {}
        }
    }

    fn subscribe(
        &mut self,
        conn: &mut Connection,
        statement: Statement,
        key: String,
        create: Create,
        attach: Attach,
    ) -> Result<SubStream, SubError> {
        if let Some(id) = self.dispatch.id_of(&key) {
            return match self.subs.get(&id) {
                Some(sub) => attach_to(sub, &self.store, attach),
                None => Err(SubError::NotFound(id)),
            };
        }
        if create == Create::No {
            return Err(SubError::NoSuchSubscription);
        }
        let parameterized = parameterized(&statement);
        let runs = parameterized.as_ref().unwrap_or(&statement);
        let plan = match self.plan_of(conn, runs) {
            Ok(plan) => plan,
            // The message about the statement the client wrote, not its
            // rewrite (offsets, `?` for its literals).
            Err(e) if parameterized.is_some() => {
                return Err(SubError::Invalid(
                    plan::analyze(conn, &statement).err().unwrap_or(e),
                ))
            }
            Err(e) => return Err(SubError::Invalid(e)),
        };
        if let Create::Full(max) = create {
            let sql = runs.sql.clone();
            self.forget_shape(&sql, plan);
            return Err(SubError::TooMany(max));
        }
        let id = new_id();
        let hash = hash_of(&key);
        // Registered before the first run: a commit racing it is either
        // visible to the run or delivered to this worker afterwards.
        self.dispatch
            .register(&id, &key, self.no, &plan.shape.reads);
        let started = Instant::now();
        let created = plan::run(conn, runs)
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::OperationInterrupted) => SubError::Invalid(
                    "the subscription's query ran longer than api.query_timeout and was \
                     interrupted: narrow it (WHERE on indexed columns) or raise the limit"
                        .to_owned(),
                ),
                // The row limit's message says what to do.
                Some(rusqlite::ErrorCode::TooBig) => match e {
                    rusqlite::Error::SqliteFailure(_, Some(message)) => SubError::Invalid(message),
                    e => SubError::Invalid(e.to_string()),
                },
                _ => SubError::Invalid(e.to_string()),
            })
            .and_then(|rows| {
                let state = ResultState::initial(plan.shape.key_columns.clone(), rows);
                self.store
                    .create(&id, &statement, &hash, &state, &[])
                    .map(|no| (state, no))
                    .map_err(|e| {
                        SubError::Internal(format!("could not store the subscription: {e}"))
                    })
            });
        let (state, no) = match created {
            Ok(x) => x,
            Err(e) => {
                self.dispatch.unregister(&id, &key);
                self.forget_shape(runs.sql.as_str(), plan);
                return Err(e);
            }
        };
        tracing::debug!(id, hash, rows = state.len(), elapsed = ?started.elapsed(), "subscription created");
        self.insert(Sub {
            id: id.clone(),
            hash,
            statement,
            parameterized,
            plan,
            state,
            no,
            live: Live::new(),
            failed: None,
        });
        match self.subs.get(&id) {
            Some(sub) => attach_to(sub, &self.store, attach),
            None => Err(SubError::NotFound(id)),
        }
    }

    fn restore(&mut self, conn: &mut Connection, stored: Stored, legacy: Option<PathBuf>) {
        let parameterized = parameterized(&stored.statement);
        let runs = parameterized.as_ref().unwrap_or(&stored.statement);
        let plan = match self.plan_of(conn, runs) {
            Ok(plan) => plan,
            Err(e) => {
                tracing::error!(id = stored.id, error = %e, "a stored subscription no longer prepares; it serves no events");
                Plan::failed()
            }
        };
        let failed = plan
            .shape
            .columns
            .is_empty()
            .then(|| "its statement no longer prepares against the schema".to_owned());
        let state = ResultState::restore(
            plan.shape.key_columns.clone(),
            stored.rows,
            stored.next_row_id,
            stored.last_change_id,
        );
        let no = match (stored.no, &legacy) {
            (Some(no), _) => no,
            (None, Some(path)) => {
                match self.store.create(
                    &stored.id,
                    &stored.statement,
                    &stored.hash,
                    &state,
                    &stored.events,
                ) {
                    Ok(no) => {
                        remove_legacy(path);
                        no
                    }
                    Err(e) => {
                        tracing::error!(id = stored.id, path = %path.display(), error = %e, "could not move a subscription of the old layout into the worker's store; it is skipped until the next start");
                        self.dispatch
                            .unregister(&stored.id, &key_of(&stored.statement));
                        self.forget_shape(&runs.sql, plan);
                        return;
                    }
                }
            }
            (None, None) => return,
        };
        self.dispatch.register(
            &stored.id,
            &key_of(&stored.statement),
            self.no,
            &plan.shape.reads,
        );
        let id = stored.id.clone();
        let sub = self.insert(Sub {
            id: stored.id,
            hash: stored.hash,
            statement: stored.statement,
            parameterized,
            plan,
            state,
            no,
            live: Live::new(),
            failed,
        });
        if sub.failed.is_none() {
            // Whatever was committed since it was last stored: one full
            // re-run and diff, new events continue the ids.
            self.pending.insert(id, Pending::Full);
        }
    }

    /// Removes the subscriptions that have had no listener for the idle
    /// expiry; returns when the next of the others expires, if none
    /// attaches before.
    fn sweep(&mut self, now: Instant) -> Option<Instant> {
        let expiry = self.dispatch.idle_expiry();
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        for sub in self.subs.values_mut() {
            let Some(since) = sub.live.idle_since() else {
                continue;
            };
            // No one to hand them to: the retained events go.
            sub.live.send(std::iter::empty());
            let Some(expiry) = expiry else {
                continue;
            };
            let at = since + expiry;
            if at <= now {
                expired.push(sub.id.clone());
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        for id in expired {
            match self.remove(&id) {
                Ok(()) => tracing::info!(
                    id,
                    "subscription removed: no listener for api.subscription_idle_expiry"
                ),
                Err(e) => {
                    tracing::warn!(id, error = %e, "an expired subscription could not be removed")
                }
            }
        }
        next
    }

    /// Removes subscription `id` from this worker, the routing and the
    /// store. Its streams see their channel close.
    fn remove(&mut self, id: &str) -> Result<(), SubError> {
        let Some(sub) = self.subs.get(id) else {
            return Err(SubError::NotFound(id.to_owned()));
        };
        self.store
            .remove(sub.no)
            .map_err(|e| SubError::Internal(format!("could not delete the subscription: {e}")))?;
        let Some(sub) = self.subs.remove(id) else {
            return Err(SubError::NotFound(id.to_owned()));
        };
        self.pending.remove(id);
        for ids in self.by_table.values_mut() {
            ids.retain(|i| i != id);
        }
        self.by_table.retain(|_, ids| !ids.is_empty());
        if let Some((route, cols)) = routed(&sub.plan) {
            let held = sub
                .state
                .rows()
                .map(|r| codec::encode_columns(&r.cells, cols));
            self.routing.remove(id, route, held);
        }
        self.dispatch.unregister(id, &key_of(&sub.statement));
        let runs = sub.runs().sql.clone();
        self.forget_shape(&runs, sub.plan);
        Ok(())
    }

    /// After a schema change, ends the subscriptions whose statement now
    /// returns other columns (`SELECT *` of a table that gained one): their
    /// streams announced the old columns, and rows of another width would
    /// not match them. Their streams get a line saying to subscribe again,
    /// which makes a new subscription with the new columns.
    fn end_outdated(&mut self, conn: &Connection) {
        let schema = schema_versions(conn);
        if schema.is_none() || schema == self.subs_schema {
            return;
        }
        let first_check = self.subs_schema.is_none();
        self.subs_schema = schema;
        if first_check {
            return;
        }
        refresh_schema(conn);
        conn.flush_prepared_statement_cache();
        let outdated: Vec<String> = self
            .subs
            .values()
            .filter(|sub| sub.failed.is_none())
            .filter(|sub| {
                // Not the statement cache: its statements were prepared
                // against the old schema.
                conn.prepare(&sub.runs().sql).is_ok_and(|stmt| {
                    !stmt
                        .column_names()
                        .eq(sub.plan.shape.columns.iter().map(String::as_str))
                })
            })
            .map(|sub| sub.id.clone())
            .collect();
        for id in outdated {
            if let Some(sub) = self.subs.get(&id) {
                sub.live.end(format!(
                    "the schema changed the columns subscription {id} returns: subscribe to \
                     the statement again for its new columns"
                ));
            }
            match self.remove(&id) {
                Ok(()) => tracing::info!(
                    id,
                    "subscription ended: a schema change changed its columns"
                ),
                Err(e) => {
                    tracing::warn!(id, error = %e, "a subscription whose columns changed could not be removed")
                }
            }
        }
    }

    /// The plan of `runs` (a statement as it runs), its shape analyzed
    /// once for all the subscriptions that share it.
    fn plan_of(&mut self, conn: &mut Connection, runs: &Statement) -> Result<Plan, String> {
        let schema = schema_versions(conn);
        if schema.is_none() || schema != self.shapes_schema {
            self.shapes.clear();
            self.shapes_schema = schema;
            refresh_schema(conn);
        }
        let shape = match self.shapes.get(&runs.sql) {
            Some(shape) => Arc::clone(shape),
            None => {
                self.dispatch.analyses.fetch_add(1, Ordering::Relaxed);
                let shape = Arc::new(plan::analyze(conn, runs)?);
                if schema.is_some() {
                    self.shapes.insert(runs.sql.clone(), Arc::clone(&shape));
                }
                shape
            }
        };
        Ok(Plan::of(conn, runs, shape))
    }

    /// Drops the cached shape of `sql` if `plan` held its last use.
    fn forget_shape(&mut self, sql: &str, plan: Plan) {
        drop(plan);
        if self
            .shapes
            .get(sql)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            self.shapes.remove(sql);
        }
    }

    fn insert(&mut self, sub: Sub) -> &Sub {
        match routed(&sub.plan) {
            Some((route, cols)) => {
                let held = sub
                    .state
                    .rows()
                    .map(|r| codec::encode_columns(&r.cells, cols));
                self.routing.add(&sub.id, route, held);
            }
            None => {
                for table in &sub.plan.shape.reads {
                    self.by_table
                        .entry(table.clone())
                        .or_default()
                        .push(sub.id.clone());
                }
            }
        }
        let id = sub.id.clone();
        self.subs.entry(id).or_insert(sub)
    }
}

/// A routed subscription's route and the result columns of its table's
/// primary key.
fn routed(plan: &Plan) -> Option<(&plan::Route, &[usize])> {
    let route = plan.route.as_ref()?;
    let cols = plan.shape.restricted.as_ref()?.get(&route.table)?;
    Some((route, cols))
}

/// The events `pending` causes, applied to the sub's state.
fn recompute(conn: &Connection, sub: &mut Sub, pending: Pending) -> Vec<ChangeEvent> {
    let shape = Arc::clone(&sub.plan.shape);
    if let (Pending::Keys(touched, _), Some(cols)) = (&pending, &shape.restricted) {
        let width = shape.columns.len();
        match plan::run_restricted(conn, sub.runs(), width, cols, touched) {
            Some(Ok(rows)) => {
                let in_scope = |cells: &[patina_crr::Value]| {
                    touched.iter().any(|(table, keys)| {
                        cols.get(table)
                            .is_some_and(|c| keys.contains(&codec::encode_columns(cells, c)))
                    })
                };
                if let Some(events) = sub.state.apply_scoped(in_scope, rows) {
                    return events;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(id = sub.id, error = %e, "restricted re-run failed; re-running in full")
            }
            None => {}
        }
    }
    match plan::run(conn, sub.runs()) {
        Ok(rows) => sub.state.apply_full(rows),
        Err(e) => {
            tracing::error!(id = sub.id, error = %e, "re-running a subscription failed; its result is unchanged until the next commit");
            Vec::new()
        }
    }
}

/// Adds `keys` of `table` to what `id` recomputes at the next flush.
fn note_keys(
    pending: &mut HashMap<String, Pending>,
    id: &str,
    table: &Table,
    keys: &HashSet<Vec<u8>>,
    restricted: bool,
) {
    let entry = pending
        .entry(id.to_owned())
        .or_insert_with(|| Pending::Keys(Touched::new(), 0));
    if let Pending::Keys(t, n) = entry {
        let set = t.entry(table.clone()).or_default();
        for k in keys {
            if set.insert(k.clone()) {
                *n += 1;
            }
        }
        if !restricted || *n > RESTRICTED_KEYS_MAX {
            *entry = Pending::Full;
        }
    }
}

/// The schema versions of both databases: a change of either may change
/// what a shape's text means (`SELECT *`, a dropped index's column).
fn schema_versions(conn: &Connection) -> Option<(i64, i64)> {
    let version = |db: &str| {
        conn.query_row(&format!("PRAGMA {db}.schema_version"), [], |r| r.get(0))
            .ok()
    };
    Some((version("main")?, version("global")?))
}

/// Has `conn` read the schema again. A connection notices another's schema
/// change only when a statement runs (and is then re-prepared): preparing
/// after a reload would describe the old tables (`SELECT *` without the
/// new column) to the analysis.
fn refresh_schema(conn: &Connection) {
    for db in ["main", "global"] {
        let sql = format!("SELECT count(*) FROM {db}.sqlite_schema");
        if let Err(e) = conn.query_row(&sql, [], |r| r.get::<_, i64>(0)) {
            tracing::warn!(db, error = %e, "could not re-read the schema");
        }
    }
}

/// Removes a subscription file of the old layout once its content is in a
/// worker's store.
pub(crate) fn remove_legacy(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

fn attach_to(sub: &Sub, store: &Store, attach: Attach) -> Result<SubStream, SubError> {
    if let Some(why) = &sub.failed {
        return Err(SubError::Internal(format!(
            "subscription {} failed: {why}",
            sub.id
        )));
    }
    let started = Instant::now();
    let live = sub.live.listen();
    let last = sub.state.last_change_id();
    let mut stream = SubStream {
        id: sub.id.clone(),
        hash: sub.hash.clone(),
        columns: sub.plan.shape.columns.clone(),
        rows: None,
        change_id: last,
        snapshot_time: started.elapsed(),
        backlog: VecDeque::new(),
        live,
        error: None,
        delivered: last,
    };
    match attach.from {
        Some(from) => {
            // The log is read from the store: keeping 10,000 events per
            // subscription in memory would dominate the node's RSS.
            let (backlog, oldest) = store
                .events_after(sub.no, from)
                .map_err(|e| SubError::Internal(format!("could not read the event log: {e}")))?;
            let oldest = oldest.unwrap_or(last + 1);
            if from > last {
                stream.error = Some(format!(
                    "change id {from} is ahead of subscription {}'s last change ({last}): this \
                     node never sent it; re-attach without from= for a fresh snapshot",
                    sub.id
                ));
            } else if from < last && from + 1 < oldest {
                stream.error = Some(format!(
                    "change id {from} is older than what subscription {} retains (its oldest \
                     change is {oldest}): re-attach without from= for a fresh snapshot",
                    sub.id
                ));
            } else {
                stream.backlog = backlog.into();
                stream.delivered = from;
            }
        }
        None if attach.skip_rows => stream.rows = Some(Vec::new()),
        None => {
            stream.rows = Some(sub.state.snapshot());
            stream.snapshot_time = started.elapsed();
        }
    }
    Ok(stream)
}
