//! [`CrrConn`]: a SQLite connection whose CRR tables capture, read and merge
//! changes; [`CrrTx`]: one captured local transaction.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Params};

use crate::authorizer::{self, UserSql};
use crate::capture::{self, Capture, Mode};
use crate::changes::{self, Change, Filter, VersionSeqs};
use crate::collect::{self, Collected};
use crate::drops::{self, Dropped};
use crate::error::{CrrError, Result};
use crate::merge::{self, MergeReport};
use crate::migrate::{self, Drops, SchemaPlan};
use crate::schema::{self, TableInfo};
use crate::schema_rules::{self, Owner};
use crate::seed::{self, Adopted};
use crate::store::{ClockCache, CrrTable, Misspeculated, Sites, BOOTSTRAP_SQL};
use crate::versions;
use crate::SiteId;

/// SQLite's page cache per connection, in KiB when negative: 32 MiB, a
/// bound, not an allocation. Clock tables and their index add B-trees to every
/// write; with SQLite's 2 MiB default a large transaction spills and re-reads
/// pages (measured: 7× slower capture of a 100k-row transaction).
pub const CACHE_SIZE_PRAGMA: i64 = -32 * 1024;

/// Rows whose clocks a committing local transaction holds at most before
/// writing them out (≈ 350 bytes each): bounds a large commit's memory
/// without changing how many clock writes it makes.
const SPILL_ROWS: usize = 8192;

/// A database whose CRR tables replicate. Own one per database file; it is
/// `Send` but not `Sync` (like the SQLite connection inside).
pub struct CrrConn {
    conn: Connection,
    capture: Capture,
    user_sql: UserSql,
    tables: HashMap<u32, CrrTable>,
    by_name: HashMap<String, u32>,
    sites: Sites,
    dropped: Dropped,
    /// Per table id, the largest causal length of a collected tombstone
    /// (`collect`): local inserts of keys without a clock start above it.
    collected: HashMap<u32, u64>,
}

impl CrrConn {
    /// Opens (creating if needed) a database file: WAL, `synchronous=NORMAL`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_site_id(path, None)
    }

    /// Like [`open`](Self::open); a new database gets `site_id` (tests pin
    /// site ids: they break ties). An existing database with a different id
    /// is an error.
    pub fn open_with_site_id(path: impl AsRef<Path>, site_id: Option<SiteId>) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", CACHE_SIZE_PRAGMA)?;
        Self::init(conn, site_id)
    }

    pub fn open_in_memory() -> Result<Self> {
        Self::open_in_memory_with_site_id(None)
    }

    pub fn open_in_memory_with_site_id(site_id: Option<SiteId>) -> Result<Self> {
        Self::init(Connection::open_in_memory()?, site_id)
    }

    fn init(mut conn: Connection, site_id: Option<SiteId>) -> Result<Self> {
        // Corrosion's settings: INSERT OR REPLACE fires the delete trigger.
        conn.pragma_update(None, "recursive_triggers", true)?;
        // Query-planner stability: cached statements keep their plan when
        // rebound instead of being re-prepared for each new range value
        // (measured: 18% of the writer's time at 8 HTTP clients, +34% tx/s).
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        conn.execute_batch(BOOTSTRAP_SQL)?;
        conn.execute_batch(versions::SCHEMA_SQL)?;
        conn.execute_batch(drops::SCHEMA_SQL)?;
        conn.execute_batch(collect::SCHEMA_SQL)?;
        let collected = collect::load_floors(&conn)?;
        let sites = Sites::load_or_init(&conn, site_id)?;
        let dropped = Dropped::load(&conn)?;
        let capture = Capture::new();
        capture.register(&conn)?;
        let user_sql = UserSql::default();
        authorizer::install(&mut conn, user_sql.clone())?;
        let mut me = CrrConn {
            conn,
            capture,
            user_sql,
            tables: HashMap::new(),
            by_name: HashMap::new(),
            sites,
            dropped,
            collected,
        };
        me.load_tables()?;
        Ok(me)
    }

    /// Loads the CRR tables and checks their triggers are Patina's: a table
    /// whose triggers were dropped or changed outside Patina may hold writes
    /// that bypassed capture, so opening it is refused.
    fn load_tables(&mut self) -> Result<()> {
        let registered: Vec<(u32, String)> = self
            .conn
            .prepare("SELECT id, name FROM crr_tables ORDER BY id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (id, name) in registered {
            let info = schema::introspect(&self.conn, "main", &name)?.ok_or_else(|| {
                CrrError::Corrupt(format!("CRR table {name:?} was dropped outside Patina"))
            })?;
            let table = CrrTable::new(id, info);
            for (trigger, sql) in capture::trigger_sql(&table) {
                let stored: Option<String> = self
                    .conn
                    .query_row(
                        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?1",
                        [&trigger],
                        |r| r.get(0),
                    )
                    .optional()?;
                if stored.as_deref() != Some(sql.as_str()) {
                    return Err(CrrError::Corrupt(format!(
                        "capture trigger {trigger:?} of CRR table {name:?} is missing or was changed outside Patina; \
                         writes may have bypassed replication"
                    )));
                }
            }
            self.register(table);
        }
        Ok(())
    }

    fn register(&mut self, table: CrrTable) {
        self.capture.add_table(&table);
        self.by_name.insert(table.info.name.clone(), table.id);
        self.tables.insert(table.id, table);
    }

    fn unregister(&mut self, id: u32) {
        if let Some(table) = self.tables.remove(&id) {
            self.by_name.remove(&table.info.name);
        }
        self.capture.replace_tables(self.tables.values());
    }

    /// This replica's site id.
    pub fn site_id(&self) -> SiteId {
        self.sites.local()
    }

    /// The db_version of this replica's last committed local transaction.
    pub fn db_version(&self) -> u64 {
        self.sites.db_version(0)
    }

    /// Every site seen (this one first) with the highest db_version seen
    /// from it: the local counter for this site, the maximum over every
    /// merged change (won, lost or ignored) for the others.
    pub fn site_versions(&self) -> Vec<(SiteId, u64)> {
        self.sites.all().collect()
    }

    /// The underlying connection, for reads. Writes to CRR tables through it
    /// fail: use [`transaction`](Self::transaction).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The CRR tables, by name.
    pub fn tables(&self) -> Vec<&TableInfo> {
        let mut out: Vec<&TableInfo> = self.tables.values().map(|t| &t.info).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn table(&self, name: &str) -> Option<&TableInfo> {
        self.by_name.get(name).map(|id| &self.tables[id].info)
    }

    /// Makes an existing table a CRR (rows already in it are recorded as one
    /// local transaction), or — for a table that already is one — picks up
    /// columns added since. Refused with every broken rule named.
    pub fn as_crr(&mut self, table: &str) -> Result<()> {
        self.in_write_tx(|me| me.as_crr_inner(table, Owner::User))
    }

    /// Creates (if missing) one of Patina's own replicated tables — a name
    /// reserved to Patina, `create` its `CREATE TABLE IF NOT EXISTS` — and
    /// makes it a CRR. Clients may read it; only
    /// [`CrrTx::execute_internal`] writes it. Schema files never name it,
    /// and applying them leaves it be.
    pub fn ensure_internal_crr(&mut self, table: &str, create: &str) -> Result<()> {
        debug_assert!(schema::is_reserved_table_name(table));
        self.in_write_tx(|me| {
            me.conn.execute_batch(create)?;
            me.as_crr_inner(table, Owner::Patina)
        })
    }

    fn as_crr_inner(&mut self, name: &str, owner: Owner) -> Result<()> {
        let violations = schema_rules::validate_as(&self.conn, "main", name, owner)?;
        if !violations.is_empty() {
            return Err(CrrError::Schema(violations));
        }
        let info = schema::introspect(&self.conn, "main", name)?
            .ok_or_else(|| CrrError::NotCrr(name.to_owned()))?;
        let existing = self.by_name.get(name).copied();
        let id = match existing {
            Some(id) => id,
            None => {
                self.conn
                    .execute("INSERT INTO crr_tables(name) VALUES (?1)", [name])?;
                self.conn.last_insert_rowid() as u32
            }
        };
        let table = CrrTable::new(id, info);
        self.conn.execute_batch(&table.sql.create_clock)?;
        for (trigger, sql) in capture::trigger_sql(&table) {
            self.conn.execute_batch(&format!(
                "DROP TRIGGER IF EXISTS {}",
                schema::quote_ident(&trigger)
            ))?;
            self.conn.execute_batch(&sql)?;
        }
        self.register(table);
        if existing.is_none() {
            self.backfill(id)?;
        }
        Ok(())
    }

    /// Rows present before a table became a CRR get clocks as if inserted
    /// by one local transaction.
    fn backfill(&mut self, id: u32) -> Result<()> {
        let table = &self.tables[&id];
        let pk_cols = table
            .info
            .pk_columns()
            .map(|c| schema::quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {pk_cols} FROM {}",
            schema::quote_ident(&table.info.name)
        );
        let mut events = Vec::new();
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let values = (0..table.info.pk.len())
                .map(|i| row.get_ref(i))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            events.push(capture::Event::Insert {
                tbl: id,
                pk: crate::pk::pack(values.into_iter())?,
            });
        }
        drop(rows);
        drop(stmt);
        self.record_events(&events, None)?;
        Ok(())
    }

    /// Brings the database's tables to `sql` (CREATE TABLE / CREATE INDEX
    /// statements) additively, makes every table in it a CRR, and refreshes
    /// the capture of tables that gained columns. All or nothing.
    pub fn apply_schema(&mut self, sql: &str) -> Result<()> {
        self.apply_schema_with(sql, Drops::Refused).map(|_| ())
    }

    /// Like [`apply_schema`](Self::apply_schema); with [`Drops::Allowed`]
    /// the CRR tables and columns `sql` no longer declares are dropped
    /// too, their values and clocks with them, and remembered as dropped:
    /// remote changes naming them are ignored from then on (see
    /// [`is_dropped`](Self::is_dropped)) until a later schema declares
    /// them again. All or nothing, in one SQLite transaction. Returns
    /// what was planned and done.
    pub fn apply_schema_with(&mut self, sql: &str, drops: Drops) -> Result<SchemaPlan> {
        let plan = migrate::plan_with(&self.conn, "main", sql, drops)?;
        self.in_write_tx(|me| {
            for name in &plan.dropped_tables {
                let id = me.crr_table_id(name)?;
                let table = me.tables[&id].clone();
                drops::drop_table(&me.conn, &table)?;
                me.unregister(id);
                me.dropped.mark_table(&me.conn, &table.info.name)?;
                for column in table.info.non_pk_columns() {
                    me.dropped
                        .mark_column(&me.conn, &table.info.name, &column.name)?;
                }
            }
            for dropped in &plan.dropped_columns {
                let id = me.crr_table_id(&dropped.table)?;
                let table = me.tables[&id].clone();
                drops::drop_columns(&me.conn, &table, &dropped.columns, &dropped.indexes)?;
                me.as_crr_inner(&table.info.name, Owner::User)?;
                // Generated columns have no clocks, and no change names one.
                let replicated = dropped
                    .columns
                    .iter()
                    .filter(|c| table.info.slot_of_ignore_case(c).is_some());
                for column in replicated {
                    me.dropped.mark_column(&me.conn, &table.info.name, column)?;
                }
            }
            for statement in &plan.statements {
                me.conn.execute_batch(statement)?;
            }
            for name in plan.new_tables.iter().chain(&plan.altered_tables) {
                me.as_crr_inner(name, Owner::User)?;
            }
            if !me.dropped.is_empty() {
                let (tables, by_name) = (&me.tables, &me.by_name);
                let exists = |table: &str, column: Option<&str>| {
                    let info = by_name
                        .iter()
                        .find(|(name, _)| name.eq_ignore_ascii_case(table))
                        .and_then(|(_, id)| tables.get(id))
                        .map(|t| &t.info);
                    match (info, column) {
                        (None, _) => false,
                        (Some(_), None) => true,
                        (Some(info), Some(c)) => info.slot_of_ignore_case(c).is_some(),
                    }
                };
                me.dropped.forget_existing(&me.conn, exists)?;
            }
            Ok(())
        })?;
        Ok(plan)
    }

    fn crr_table_id(&self, name: &str) -> Result<u32> {
        self.by_name
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, id)| *id)
            .ok_or_else(|| CrrError::NotCrr(name.to_owned()))
    }

    /// Runs `f` in an IMMEDIATE transaction; on error everything it did,
    /// in SQLite and in memory, is undone.
    fn in_write_tx<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let tables = (
            self.tables.clone(),
            self.by_name.clone(),
            self.sites.clone(),
            self.dropped.clone(),
        );
        control(&self.conn, "BEGIN IMMEDIATE")?;
        match f(self) {
            Ok(v) => {
                control(&self.conn, "COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                (self.tables, self.by_name, self.sites, self.dropped) = tables;
                self.capture.replace_tables(self.tables.values());
                Err(e)
            }
        }
    }

    /// Starts a local transaction whose writes to CRR tables are captured.
    pub fn transaction(&mut self) -> Result<CrrTx<'_>> {
        control(&self.conn, "BEGIN IMMEDIATE")?;
        self.capture.set_mode(Mode::Capturing);
        Ok(CrrTx {
            crr: self,
            poisoned: false,
            done: false,
        })
    }

    /// Turns recorded events into clock entries under the next db_version;
    /// returns it, or `None` if nothing was recorded, and with
    /// `changes_max` the changes it made (what `changes_of` would read
    /// back, without reading the clocks back) when there are at most that
    /// many, else only the tables written. Caller owns the tx.
    fn record_events(
        &mut self,
        events: &[capture::Event],
        changes_max: Option<usize>,
    ) -> Result<Option<(u64, Committed)>> {
        if events.is_empty() {
            return Ok(None);
        }
        let db_version = crate::clock::add(self.sites.db_version(0), 1)?;
        // A transaction whose changes are not kept needs its rows' clocks
        // only until they are written: the cache writes them out every
        // SPILL_ROWS rows. One whose changes are kept never spills (its rows
        // are at most its changes, so up to `changes_max` of them).
        let spill_at = match changes_max {
            None => SPILL_ROWS,
            Some(usize::MAX) => 0,
            Some(max) => max.max(SPILL_ROWS),
        };
        let mut known = Vec::new();
        // Inserted keys are assumed new; a wrong guess (a re-insert after a
        // delete) is undone and redone with those keys looked up: twice at
        // most.
        for _ in 0..2 {
            let mut cache = ClockCache::for_commit(events.len(), spill_at, known.iter().cloned());
            // Spills write clocks while recording: a misspeculation undoes
            // them too.
            control(&self.conn, "SAVEPOINT crr_flush")?;
            let written = capture::record(
                &self.conn,
                &self.tables,
                &self.collected,
                events,
                db_version,
                &mut cache,
            )?;
            if written == 0 {
                control(&self.conn, "RELEASE crr_flush")?;
                return Ok(None);
            }
            // The rows are only kept when their changes will be built.
            let keep = changes_max.is_some_and(|max| written <= max as u64);
            match cache.flush(&self.conn, &self.tables, keep) {
                Ok(flushed) => {
                    control(&self.conn, "RELEASE crr_flush")?;
                    self.sites.observe(0, db_version);
                    self.sites.save(&self.conn)?;
                    let committed = match changes_max {
                        Some(_) if keep => Committed::Changes(changes::of_rows(
                            &self.conn,
                            &self.tables,
                            &self.sites,
                            &flushed.rows,
                            0,
                            db_version,
                        )?),
                        // Too many to hold at once (issue 15: a 100k-row
                        // transaction's changes took ≈ 100 MiB): readers
                        // page through them with `version_seqs`.
                        Some(_) => Committed::Large {
                            tables: flushed
                                .tables
                                .iter()
                                .filter_map(|id| self.tables.get(id))
                                .map(|t| t.info.name.clone())
                                .collect(),
                            entries: written,
                        },
                        None => Committed::Changes(Vec::new()),
                    };
                    return Ok(Some((db_version, committed)));
                }
                Err(Ok(Misspeculated(keys))) => {
                    self.conn
                        .execute_batch("ROLLBACK TO crr_flush; RELEASE crr_flush")?;
                    known.extend(keys);
                }
                Err(Err(e)) => return Err(e),
            }
        }
        Err(CrrError::Corrupt(
            "clock table changed while a transaction was being recorded".into(),
        ))
    }

    /// Every change with `db_version > since` (stored db_versions: local
    /// and forwarded ones mixed, crr-model.md 6.2), optionally without one
    /// site's, ordered by (db_version, seq).
    pub fn changes_since(&self, since: u64, exclude_site: Option<SiteId>) -> Result<Vec<Change>> {
        let exclude = exclude_site.map(|s| self.sites.ordinal(&s).unwrap_or(u32::MAX));
        changes::read(
            &self.conn,
            &self.tables,
            &self.sites,
            Filter {
                after: since,
                up_to: u64::MAX,
                only: None,
                exclude,
            },
        )
    }

    /// The changes that site `site` made in transactions `versions` and
    /// that are still current here, ordered by (db_version, seq).
    pub fn changes_of(&self, site: SiteId, versions: RangeInclusive<u64>) -> Result<Vec<Change>> {
        let Some(ordinal) = self.sites.ordinal(&site) else {
            return Ok(Vec::new());
        };
        changes::read(
            &self.conn,
            &self.tables,
            &self.sites,
            Filter {
                after: versions.start().saturating_sub(1),
                up_to: *versions.end(),
                only: Some(ordinal),
                exclude: None,
            },
        )
    }

    /// Rows of each of `site`'s versions in `versions` that still hold an
    /// entry of it (the version index's counts), for the versions that have
    /// any: how large reading one would be, without reading it.
    pub fn version_rows(
        &self,
        site: SiteId,
        versions: RangeInclusive<u64>,
    ) -> Result<Vec<(u64, u64)>> {
        let Some(ordinal) = self.sites.ordinal(&site) else {
            return Ok(Vec::new());
        };
        versions::live_rows(&self.conn, ordinal, *versions.start(), *versions.end())
    }

    /// Where the entries of one version of `site` are, by seq: what
    /// [`changes_in`](Self::changes_in) pages through. Holds a key per row
    /// and 16 bytes per entry instead of the changes themselves.
    pub fn version_seqs(&self, site: SiteId, version: u64) -> Result<VersionSeqs> {
        let ordinal = self.sites.ordinal(&site);
        changes::version_seqs(&self.conn, &self.tables, ordinal, site, version)
    }

    /// The changes of the version `seqs` describes whose seq is in `span`,
    /// ordered by seq; entries replaced since `seqs` was read are left out.
    pub fn changes_in(&self, seqs: &VersionSeqs, span: RangeInclusive<u64>) -> Result<Vec<Change>> {
        changes::changes_in(&self.conn, &self.tables, &self.sites, seqs, span)
    }

    /// Merges the changes `next` hands out, batch after batch until it
    /// returns `None`, in one SQLite transaction, then runs `also` in it:
    /// as [`apply_changes_with`](Self::apply_changes_with) of all of them,
    /// without holding them all (merging is per cell and commutative, so
    /// batches merge like one). A bad change fails the whole transaction.
    /// The report's `won` indexes count from the first change handed out.
    pub fn apply_changes_paged<T>(
        &mut self,
        mut next: impl FnMut(&Connection) -> rusqlite::Result<Option<Vec<Change>>>,
        also: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<(MergeReport, T)> {
        self.in_write_tx(|me| {
            let mut total = MergeReport::default();
            let mut seen = 0;
            while let Some(batch) = next(&me.conn)? {
                me.capture.set_mode(Mode::Merging);
                let result = merge::check(
                    &me.conn,
                    &me.tables,
                    &me.by_name,
                    &me.dropped,
                    &mut me.sites,
                    &batch,
                )
                .and_then(|checked| merge::merge(&me.conn, &me.tables, &mut me.sites, &checked));
                me.capture.set_mode(Mode::Idle);
                let report = result?;
                total.won.extend(report.won.iter().map(|i| i + seen));
                total.lost += report.lost;
                total.ignored += report.ignored;
                total.dropped += report.dropped;
                seen += batch.len();
            }
            Ok((total, also(&me.conn)?))
        })
    }

    /// Merges a batch of remote changes in one SQLite transaction, in batch
    /// order. Idempotent. A malformed change fails the whole batch: nothing
    /// of it is applied.
    pub fn apply_changes(&mut self, batch: &[Change]) -> Result<MergeReport> {
        self.apply_changes_with(batch, |_| Ok(()))
            .map(|(report, ())| report)
    }

    /// Merges `batch` as [`apply_changes`](Self::apply_changes) does, then
    /// runs `also` on the connection in the same SQLite transaction, so the
    /// caller's record of what it merged (replication bookkeeping) commits
    /// or rolls back with the merge. `also` must not write CRR tables.
    pub fn apply_changes_with<T>(
        &mut self,
        batch: &[Change],
        also: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<(MergeReport, T)> {
        self.in_write_tx(|me| {
            me.capture.set_mode(Mode::Merging);
            let result = merge::check(
                &me.conn,
                &me.tables,
                &me.by_name,
                &me.dropped,
                &mut me.sites,
                batch,
            )
            .and_then(|checked| merge::merge(&me.conn, &me.tables, &mut me.sites, &checked));
            me.capture.set_mode(Mode::Idle);
            let report = result?;
            Ok((report, also(&me.conn)?))
        })
    }

    /// Makes this database — a copy of another replica's — the database of
    /// a new replica `new_site`: the old replica's own writes become a
    /// remote site's (its id and db_version kept, under a new ordinal), and
    /// this replica starts at db_version 0 under `new_site`. Rows, clocks
    /// and every other site's versions stay as they are, so the copy merges
    /// and serves exactly as a replica that had merged all of them.
    /// Refused when `new_site` is known here already.
    pub fn adopt_as_new_site(&mut self, new_site: SiteId) -> Result<Adopted> {
        self.adopt_as_new_site_with(new_site, |_, _| Ok(()))
            .map(|(adopted, ())| adopted)
    }

    /// As [`adopt_as_new_site`](Self::adopt_as_new_site), then runs `also`
    /// in the same SQLite transaction (the caller's bookkeeping of the old
    /// site's versions commits or rolls back with the change of sites).
    /// `also` must not write CRR tables.
    pub fn adopt_as_new_site_with<T>(
        &mut self,
        new_site: SiteId,
        also: impl FnOnce(&Connection, &Adopted) -> rusqlite::Result<T>,
    ) -> Result<(Adopted, T)> {
        self.in_write_tx(|me| {
            let mut tables: Vec<&CrrTable> = me.tables.values().collect();
            tables.sort_by_key(|t| t.id);
            let adopted = seed::reattribute_local(&me.conn, &tables, &me.sites, new_site)?;
            me.sites = Sites::load_or_init(&me.conn, None)?;
            let extra = also(&me.conn, &adopted)?;
            Ok((adopted, extra))
        })
    }

    /// Removes the tombstones written by versions `1..=bound` of each site
    /// in `bounds`, looking at about `keys_max` keys per call at most (every
    /// key a scanned version wrote is looked at once; the next call goes on
    /// where this one stopped), in one SQLite transaction.
    ///
    /// The caller guarantees what makes this safe (docs/crr.md, "Tombstone
    /// collection"): this replica has applied `1..=bound` of each site, and
    /// so has every replica that will merge with it from now on.
    pub fn collect_tombstones(
        &mut self,
        bounds: &BTreeMap<SiteId, u64>,
        keys_max: u64,
    ) -> Result<Collected> {
        let mut floors = std::mem::take(&mut self.collected);
        let out = self.in_write_tx(|me| {
            collect::collect(
                &me.conn,
                &me.tables,
                &me.sites,
                &mut floors,
                bounds,
                keys_max,
            )
        });
        self.collected = floors;
        out
    }

    /// Per CRR table, the largest causal length a collected tombstone had
    /// here or at a peer that said so ([`raise_collected_cl`](Self::raise_collected_cl));
    /// tables without any are left out. Ordered by name.
    pub fn collected_cls(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .collected
            .iter()
            .filter_map(|(id, &cl)| Some((self.tables.get(id)?.info.name.clone(), cl)))
            .collect();
        out.sort();
        out
    }

    /// Learns that a peer collected a tombstone of `table` with causal
    /// length `cl`: local inserts of keys without a clock start above it
    /// from now on, so they beat that tombstone wherever it is still held.
    /// `false` when nothing changed (an unknown table, or no higher).
    pub fn raise_collected_cl(&mut self, table: &str, cl: u64) -> Result<bool> {
        let Some(&id) = self.by_name.get(table) else {
            return Ok(false);
        };
        // Causal lengths of tombstones are even; an odd one would make a
        // local insert start at an even (deleted) length.
        let cl = cl - cl % 2;
        if cl == 0 || self.collected.get(&id).is_some_and(|&have| have >= cl) {
            return Ok(false);
        }
        collect::raise_floor(&self.conn, &mut self.collected, id, cl)
    }

    /// Whether this database has CRR table `table` with replicated column
    /// `cid` (or `cid` is the sentinel): a change for anything else cannot
    /// be merged yet (its schema has not arrived here).
    pub fn knows_column(&self, table: &str, cid: &str) -> bool {
        let Some(t) = self.by_name.get(table).and_then(|id| self.tables.get(id)) else {
            return false;
        };
        cid == crate::schema::SENTINEL || t.info.columns.iter().any(|c| c.name == cid)
    }

    /// Whether a change for `table`, column `cid`, names a table or column
    /// a destructive schema change dropped here (and no schema declared
    /// again since): it is to be ignored, not held for a later schema.
    pub fn is_dropped(&self, table: &str, cid: &str) -> bool {
        !self.knows_column(table, cid) && self.dropped.contains(table, cid)
    }

    /// What destructive schema changes dropped here, as
    /// [`is_dropped`](Self::is_dropped) reads it; a copy is cheap.
    pub fn dropped(&self) -> &Dropped {
        &self.dropped
    }
}

/// What a commit made, as [`CrrTx::commit_bounded`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Committed {
    /// Every change, ordered by seq.
    Changes(Vec<Change>),
    /// More changes than asked for: the tables written (by name, sorted)
    /// and the number of clock entries written (the version's seqs are
    /// `0..entries`).
    Large { tables: Vec<String>, entries: u64 },
}

/// Runs a statement without parameters from the statement cache:
/// transaction control runs several times per write, and parsing it every
/// time showed in profiles.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// One local transaction. Statements run with [`execute`](Self::execute)
/// and friends; [`commit`](Self::commit) turns what they wrote into clock
/// entries under one new db_version. Dropped without commit: rolled back.
pub struct CrrTx<'a> {
    crr: &'a mut CrrConn,
    poisoned: bool,
    done: bool,
}

impl CrrTx<'_> {
    /// Runs one statement with parameters; returns the rows it changed.
    pub fn execute(&mut self, sql: &str, params: impl Params) -> Result<usize> {
        self.guard(|conn| {
            check_statement(sql)?;
            let mut stmt = conn.prepare_cached(sql)?;
            if stmt.column_count() > 0 {
                // SQLite's change count is that of the last statement that
                // wrote: a read-only statement would report its
                // predecessor's. `… RETURNING` writes, and counts its rows.
                let writes = !stmt.readonly();
                let mut rows = stmt.query(params)?;
                while rows.next()?.is_some() {}
                Ok(if writes { conn.changes() as usize } else { 0 })
            } else {
                Ok(stmt.execute(params)?)
            }
        })
    }

    /// Runs one statement of Patina's own, never a client's: unlike
    /// [`execute`](Self::execute) it may write Patina's replicated tables
    /// (see [`CrrConn::ensure_internal_crr`]); the write is captured and
    /// replicates like any other.
    pub fn execute_internal(&mut self, sql: &str, params: impl Params) -> Result<usize> {
        self.guarded(false, |conn| {
            Ok(conn.prepare_cached(sql)?.execute(params)?)
        })
    }

    /// Runs every statement of `sql` (no parameters).
    pub fn execute_batch(&mut self, sql: &str) -> Result<()> {
        self.guard(|conn| {
            use rusqlite::fallible_iterator::FallibleIterator;
            let mut batch = rusqlite::Batch::new(conn, sql);
            while let Some(mut stmt) = batch.next()? {
                check_statement(stmt.expanded_sql().as_deref().unwrap_or(""))?;
                let mut rows = stmt.raw_query();
                while rows.next()?.is_some() {}
            }
            Ok(())
        })
    }

    /// Runs a query inside the transaction (sees its uncommitted writes).
    pub fn query<T>(
        &mut self,
        sql: &str,
        params: impl Params,
        mut map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        self.guard(|conn| {
            check_statement(sql)?;
            let mut stmt = conn.prepare_cached(sql)?;
            let mut rows = stmt.query(params)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(map(row)?);
            }
            Ok(out)
        })
    }

    fn guard<T>(&mut self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.guarded(true, f)
    }

    /// Runs `f`, a client's statement when `user` (the authorizer then
    /// refuses what clients may not do).
    fn guarded<T>(&mut self, user: bool, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        if self.poisoned {
            return Err(CrrError::TransactionPoisoned);
        }
        self.crr.user_sql.set(user);
        let result = f(&self.crr.conn).map_err(|e| match (e, self.crr.user_sql.refused()) {
            (CrrError::Sqlite(_), Some(refusal)) => refusal.into(),
            (e, _) => e,
        });
        self.crr.user_sql.set(false);
        // A failed statement may have left part of its writes in SQLite (OR
        // FAIL) while its recorded events say otherwise: only rollback is safe.
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// Runs `f` as one part of this transaction (group commit: several
    /// clients' transactions share one SQLite transaction and one
    /// db_version). If `f` fails, exactly what it wrote is undone — rows by
    /// a savepoint, captured events by truncation — and the transaction
    /// stays usable for other parts, unless SQLite rolled back the whole
    /// transaction (an I/O error, a full disk): then
    /// [`is_usable`](Self::is_usable) is false and only rollback remains.
    /// On success, also says whether the part wrote anything replicated.
    pub fn part<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<(T, bool)> {
        if self.poisoned {
            return Err(CrrError::TransactionPoisoned);
        }
        let mark = self.crr.capture.lock().events.len();
        if let Err(e) = control(&self.crr.conn, "SAVEPOINT crr_part") {
            self.poisoned = true;
            return Err(e.into());
        }
        match f(self) {
            Ok(value) => {
                if let Err(e) = control(&self.crr.conn, "RELEASE crr_part") {
                    self.poisoned = true;
                    return Err(e.into());
                }
                let wrote = self.crr.capture.lock().events.len() > mark;
                Ok((value, wrote))
            }
            Err(e) => {
                let undone = !self.crr.conn.is_autocommit()
                    && self
                        .crr
                        .conn
                        .execute_batch("ROLLBACK TO crr_part; RELEASE crr_part")
                        .is_ok();
                if undone {
                    self.crr.capture.lock().events.truncate(mark);
                    self.poisoned = false;
                } else {
                    self.poisoned = true;
                }
                Err(e)
            }
        }
    }

    /// False once a failure left the transaction unable to commit.
    pub fn is_usable(&self) -> bool {
        !self.poisoned
    }

    /// Commits; returns the db_version the writes were recorded under, or
    /// `None` when nothing replicated changed.
    pub fn commit(self) -> Result<Option<u64>> {
        Ok(self.finish(None)?.map(|(v, _)| v))
    }

    /// Commits like [`commit`](Self::commit) and also returns the changes
    /// the transaction made, ordered by seq: the same as
    /// [`CrrConn::changes_of`] for this version right after the commit,
    /// taken from the clocks just written instead of read back.
    pub fn commit_changes(self) -> Result<Option<(u64, Vec<Change>)>> {
        Ok(self.finish(Some(usize::MAX))?.map(|(v, c)| match c {
            Committed::Changes(changes) => (v, changes),
            Committed::Large { .. } => unreachable!("no bound on the changes returned"),
        }))
    }

    /// Commits like [`commit_changes`](Self::commit_changes) when the
    /// transaction made at most `changes_max` changes; a larger one reports
    /// only the tables it wrote and how many changes it made, so that a
    /// huge transaction is never held in memory as changes (read it back
    /// in pages with [`CrrConn::version_seqs`]).
    pub fn commit_bounded(self, changes_max: usize) -> Result<Option<(u64, Committed)>> {
        self.finish(Some(changes_max))
    }

    fn finish(mut self, changes_max: Option<usize>) -> Result<Option<(u64, Committed)>> {
        self.done = true;
        if self.poisoned {
            self.rollback_now();
            return Err(CrrError::TransactionPoisoned);
        }
        let events = std::mem::take(&mut self.crr.capture.lock().events);
        self.crr.capture.set_mode(Mode::Idle);
        let sites = self.crr.sites.clone();
        let result = self
            .crr
            .record_events(&events, changes_max)
            .and_then(|v| Ok(control(&self.crr.conn, "COMMIT").map(|_| v)?));
        if result.is_err() {
            self.crr.sites = sites;
            self.rollback_now();
        }
        result
    }

    pub fn rollback(mut self) {
        self.done = true;
        self.rollback_now();
    }

    fn rollback_now(&mut self) {
        self.crr.capture.set_mode(Mode::Idle);
        if !self.crr.conn.is_autocommit() {
            let _ = self.crr.conn.execute_batch("ROLLBACK");
        }
    }
}

impl Drop for CrrTx<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.rollback_now();
        }
    }
}

/// Only data statements may run inside a CRR transaction: transaction
/// control would undo writes capture already recorded, DDL and PRAGMAs
/// would change what capture sees.
fn check_statement(sql: &str) -> Result<()> {
    let keyword = first_keyword(sql).to_ascii_uppercase();
    match keyword.as_str() {
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "WITH" | "VALUES" => Ok(()),
        "" => Ok(()),
        // What SQLite would run, but not here.
        "BEGIN" | "COMMIT" | "END" | "ROLLBACK" | "SAVEPOINT" | "RELEASE" | "CREATE" | "DROP"
        | "ALTER" | "PRAGMA" | "ATTACH" | "DETACH" | "VACUUM" | "ANALYZE" | "REINDEX"
        | "EXPLAIN" => Err(CrrError::StatementNotAllowed(keyword)),
        _ => Err(CrrError::NotAStatement(first_keyword(sql).to_owned())),
    }
}

fn first_keyword(sql: &str) -> &str {
    let mut rest = sql;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r);
        } else {
            break;
        }
    }
    let end = rest
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    &rest[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_keywords() {
        assert_eq!(first_keyword("  -- hi\n /* x */ insert into t"), "insert");
        assert_eq!(first_keyword(" ; ;COMMIT"), "COMMIT");
        assert!(check_statement("UPDATE t SET a = 1").is_ok());
        assert!(check_statement("with x as (select 1) delete from t").is_ok());
        for bad in [
            "BEGIN",
            "commit",
            "SAVEPOINT a",
            "ROLLBACK TO a",
            "PRAGMA recursive_triggers=0",
            "DROP TABLE t",
            "ALTER TABLE t ADD c",
        ] {
            assert!(check_statement(bad).is_err(), "{bad}");
        }
    }
}
