//! A rollup: its definition from the config, checked against the node's
//! schema ([`Rollup::check`]), and one evaluation — the query's rows
//! against what the target holds for this region, and the statements that
//! make up the difference.

use std::collections::{BTreeMap, BTreeSet};

use patina_node::{Statement, Value};
use patina_proto::{rollup_diff, RollupDiff};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::Connection;

/// What an evaluation writes: rows by packed key (`patina_crr::pk`), each
/// the query's values in column order.
pub type RowsDiff = RollupDiff<Vec<u8>, Vec<Value>>;

/// A `[[rollup]]` of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupConfig {
    /// The target: a global table with `PRIMARY KEY (key…, region)`.
    pub name: String,
    /// The columns of the query's rows that identify a row.
    pub key: Vec<String>,
    /// A query over the region's tables; its column names are target
    /// columns, `region` excepted (the leader fills it in).
    pub query: String,
}

/// Why a rollup cannot run: the node refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum RollupError {
    #[error("rollup {name:?}: {why}")]
    Invalid { name: String, why: String },
    #[error("rollup {name:?}: its query does not prepare: {error}")]
    Query { name: String, error: String },
}

/// A rollup checked against the schema, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Rollup {
    pub config: RollupConfig,
    /// Columns the query returns, in order.
    columns: Vec<String>,
    /// Positions of the key columns among `columns`.
    key_at: Vec<usize>,
    /// Regional tables the query reads: a commit to one of them makes the
    /// rollup due.
    pub sources: BTreeSet<String>,
}

fn invalid(name: &str, why: impl Into<String>) -> RollupError {
    RollupError::Invalid {
        name: name.to_owned(),
        why: why.into(),
    }
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The `region` column every rollup target carries.
pub const REGION_COLUMN: &str = "region";

impl Rollup {
    /// Checks `config` against the schema `conn` sees (a node reader:
    /// regional tables in `main`, global ones in `global`): the target is
    /// a global CRR table keyed by `(key…, region)`, the query prepares,
    /// only reads, and returns the key and nothing the target lacks.
    pub fn check(conn: &mut Connection, config: RollupConfig) -> Result<Rollup, RollupError> {
        let name = config.name.as_str();
        let is_crr = |schema: &str| -> bool {
            let sql = format!("SELECT 1 FROM {schema}.crr_tables WHERE name = ?1");
            conn.query_row(&sql, [name], |_| Ok(())).is_ok()
        };
        if !is_crr("global") {
            let why = if is_crr("main") {
                format!("its target {name:?} is a regional table; a rollup writes a global table (declare it in a db.global_schema_paths file)")
            } else {
                format!("no global table {name:?}; declare it in a db.global_schema_paths file with PRIMARY KEY ({}, region)", config.key.join(", "))
            };
            return Err(invalid(name, why));
        }
        if config.key.is_empty() {
            return Err(invalid(
                name,
                "key is empty; name the columns that identify a row",
            ));
        }
        let target = table_columns(conn, name).map_err(|e| invalid(name, e.to_string()))?;
        let pk: Vec<&str> = {
            let mut pk: Vec<&(String, i64)> = target.iter().filter(|(_, at)| *at > 0).collect();
            pk.sort_by_key(|(_, at)| *at);
            pk.iter().map(|(c, _)| c.as_str()).collect()
        };
        let want_pk: Vec<&str> = config
            .key
            .iter()
            .map(String::as_str)
            .chain([REGION_COLUMN])
            .collect();
        if pk != want_pk {
            return Err(invalid(
                name,
                format!(
                    "the target's primary key is ({}); a rollup keyed by [{}] needs PRIMARY KEY ({})",
                    pk.join(", "),
                    config.key.join(", "),
                    want_pk.join(", ")
                ),
            ));
        }
        let (columns, sources, readonly) =
            prepare_reading(conn, &config.query).map_err(|error| RollupError::Query {
                name: name.to_owned(),
                error,
            })?;
        if !readonly {
            return Err(invalid(name, "its query writes; a rollup query only reads"));
        }
        let target_names: BTreeSet<&str> = target.iter().map(|(c, _)| c.as_str()).collect();
        let mut seen = BTreeSet::new();
        for c in &columns {
            if c == REGION_COLUMN {
                return Err(invalid(
                    name,
                    "its query returns a region column; the leader fills region in itself",
                ));
            }
            if !target_names.contains(c.as_str()) {
                return Err(invalid(name, format!("its query returns {c:?}, which {name:?} has no column for (name each result column after a target column: `AS`)")));
            }
            if !seen.insert(c.as_str()) {
                return Err(invalid(name, format!("its query returns {c:?} twice")));
            }
        }
        let key_at = config
            .key
            .iter()
            .map(|k| {
                columns.iter().position(|c| c == k).ok_or_else(|| {
                    invalid(
                        name,
                        format!("its query does not return the key column {k:?}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if sources.is_empty() {
            return Err(invalid(name, "its query reads no regional table"));
        }
        Ok(Rollup {
            config,
            columns,
            key_at,
            sources,
        })
    }

    /// Evaluates the rollup on `conn` (a node reader) for `region`: what to
    /// write to make the target's rows of the region equal the query's,
    /// and how many rows the query returned.
    pub fn evaluate(&self, conn: &Connection, region: &str) -> Result<(RowsDiff, u64), String> {
        let wanted = self.rows(conn, &self.config.query, &[])?;
        let cols: Vec<String> = self.columns.iter().map(|c| quote(c)).collect();
        let current_sql = format!(
            "SELECT {} FROM global.{} WHERE {} = ?1",
            cols.join(", "),
            quote(&self.config.name),
            quote(REGION_COLUMN)
        );
        let current = self.rows(conn, &current_sql, &[Value::Text(region.to_owned())])?;
        Ok((rollup_diff(&current, &wanted), wanted.len() as u64))
    }

    /// Rows of `sql` keyed by the packed key columns.
    fn rows(
        &self,
        conn: &Connection,
        sql: &str,
        params: &[Value],
    ) -> Result<BTreeMap<Vec<u8>, Vec<Value>>, String> {
        let mut stmt = conn.prepare_cached(sql).map_err(|e| e.to_string())?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params.iter()))
            .map_err(|e| e.to_string())?;
        let mut out = BTreeMap::new();
        while let Some(row) = rows.next().map_err(|e| e.to_string())? {
            let values = (0..self.columns.len())
                .map(|i| row.get::<_, Value>(i))
                .collect::<Result<Vec<Value>, _>>()
                .map_err(|e| e.to_string())?;
            let key: Vec<Value> = self.key_at.iter().map(|&i| values[i].clone()).collect();
            // A NULL key cannot be a target row (its primary key): such a
            // group is left out, or the whole rollup would fail for good.
            if key.iter().any(|v| matches!(v, Value::Null)) {
                continue;
            }
            let key = patina_crr::pk::pack_values(&key).map_err(|e| e.to_string())?;
            // Two rows with one key: the query's GROUP BY does not match
            // its key; the last one wins, as an upsert of both would.
            out.insert(key, values);
        }
        Ok(out)
    }

    /// The statements (for one transaction on `global.db`) that apply
    /// `diff` for `region`. An upsert leaves a row whose values are already
    /// the same untouched, so a re-evaluation by a second leader writes
    /// nothing.
    pub fn statements(&self, diff: &RowsDiff, region: &str) -> Vec<Statement> {
        let table = quote(&self.config.name);
        let region_col = quote(REGION_COLUMN);
        let cols: Vec<String> = self.columns.iter().map(|c| quote(c)).collect();
        let keys: Vec<String> = self.config.key.iter().map(|c| quote(c)).collect();
        let others: Vec<&String> = cols
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.key_at.contains(i))
            .map(|(_, c)| c)
            .collect();
        let placeholders = vec!["?"; cols.len() + 1].join(", ");
        let on_conflict = if others.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            let set: Vec<String> = others
                .iter()
                .map(|c| format!("{c} = excluded.{c}"))
                .collect();
            let differs: Vec<String> = others
                .iter()
                .map(|c| format!("{c} IS NOT excluded.{c}"))
                .collect();
            format!(
                "DO UPDATE SET {} WHERE {}",
                set.join(", "),
                differs.join(" OR ")
            )
        };
        let upsert = format!(
            "INSERT INTO {table} ({}, {region_col}) VALUES ({placeholders}) ON CONFLICT ({}, {region_col}) {on_conflict}",
            cols.join(", "),
            keys.join(", ")
        );
        let delete = format!(
            "DELETE FROM {table} WHERE {} AND {region_col} = ?",
            keys.iter()
                .map(|k| format!("{k} = ?"))
                .collect::<Vec<_>>()
                .join(" AND ")
        );
        let region = Value::Text(region.to_owned());
        let mut out = Vec::with_capacity(diff.upserts.len() + diff.deletes.len());
        for (_, values) in &diff.upserts {
            let mut params = values.clone();
            params.push(region.clone());
            out.push(Statement::with_params(upsert.clone(), params));
        }
        for key in &diff.deletes {
            let Ok(mut params) = patina_crr::pk::unpack(key) else {
                continue;
            };
            params.push(region.clone());
            out.push(Statement::with_params(delete.clone(), params));
        }
        out
    }
}

/// `(name, position in the primary key or 0)` of each column of the global
/// table `table`.
fn table_columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare("SELECT name, pk FROM pragma_table_info(?1, 'global')")?;
    let rows = stmt.query_map([table], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    rows.collect()
}

/// Prepares `sql` with an authorizer noting the regional tables it reads:
/// its column names, those tables, and whether it only reads.
fn prepare_reading(
    conn: &mut Connection,
    sql: &str,
) -> Result<(Vec<String>, BTreeSet<String>, bool), String> {
    let read = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let noted = std::sync::Arc::clone(&read);
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        if let AuthAction::Read { table_name, .. } = ctx.action {
            if ctx.database_name == Some("main") && !table_name.starts_with("sqlite_") {
                noted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(table_name.to_owned());
            }
        }
        Authorization::Allow
    }))
    .map_err(|e| e.to_string())?;
    let prepared = conn.prepare(sql).map(|stmt| {
        let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
        (columns, stmt.readonly())
    });
    conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>)
        .map_err(|e| e.to_string())?;
    let (columns, readonly) = prepared.map_err(|e| e.to_string())?;
    let tables = std::mem::take(&mut *read.lock().unwrap_or_else(|e| e.into_inner()));
    Ok((columns, tables, readonly))
}
