//! What a subscription's statement reads and how its result is recomputed:
//! the statement is prepared (never run) under an authorizer that records
//! every table it reads and every function it calls; column origins give
//! the row key; the key and the statement's shape pick the strategy.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use patina_crr::sql_text::{tokenize_complete, Kind};
use patina_crr::Value;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::Connection;

use patina_node::DbKind;
use patina_node::{with_params, Statement};

use super::codec;
use super::route::{self, Constraint};

/// Changed primary keys a restricted re-run takes in one query; more make
/// a full re-run (one scan beats a very long `IN` list).
pub(crate) const RESTRICTED_KEYS_MAX: usize = 512;

/// Aggregate and window functions: a statement calling one is re-run whole.
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "total",
    "avg",
    "min",
    "max",
    "group_concat",
    "string_agg",
    "json_group_array",
    "json_group_object",
    "jsonb_group_array",
    "jsonb_group_object",
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
];

/// Words that make a result depend on rows other than the changed ones.
const NON_LOCAL_WORDS: &[&str] = &[
    "group",
    "distinct",
    "limit",
    "offset",
    "union",
    "intersect",
    "except",
    "over",
    "having",
    "left",
    "right",
    "full",
    "outer",
    "window",
    "recursive",
];

/// A source table: the database it lives in and its name.
pub(crate) type Table = (DbKind, String);

/// What a statement's text determines about it, shared by the
/// subscriptions of one shape (`shape`: the same text after binding
/// literals).
#[derive(Debug, Default)]
pub(crate) struct Shape {
    pub columns: Vec<String>,
    /// Tables the statement reads.
    pub reads: HashSet<Table>,
    /// Result columns identifying a row; empty = the whole row.
    pub key_columns: Vec<usize>,
    /// Per source table, the result columns holding its primary key (in
    /// primary-key order), when every table's key is in the result and the
    /// statement is row-local: changes can be recomputed by key.
    pub restricted: Option<HashMap<Table, Vec<usize>>>,
    /// The one table a restricted statement reads and its primary key:
    /// the statement may be routed by its WHERE (see [`Route`]).
    one_table: Option<(Table, Vec<String>)>,
}

/// A subscription's plan: its shape's, and how commits are routed to it by
/// the values of the rows they change, when they can be (see [`Route`];
/// `None`: by table). The route depends on the parameter values.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub shape: Arc<Shape>,
    pub route: Option<Route>,
}

impl Plan {
    /// `st`'s plan, its shape being `shape`.
    pub fn of(conn: &Connection, st: &Statement, shape: Arc<Shape>) -> Plan {
        let route = shape
            .one_table
            .as_ref()
            .and_then(|(table, pk)| route_of(conn, st, table, pk));
        Plan { shape, route }
    }

    /// The plan of a statement that no longer prepares: no columns.
    pub fn failed() -> Plan {
        Plan {
            shape: Arc::default(),
            route: None,
        }
    }
}

/// A row-local statement over one table whose WHERE constrains a column
/// with an equality, an `IN` list or a range (a top-level conjunct, see
/// `route`): only a row whose value of that column satisfies the
/// constraint can be in its result. A commit reaches it when a row it
/// changed is in its result (old values) or satisfies the constraint now
/// (new values).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Route {
    pub table: Table,
    /// The table's primary-key columns, in order.
    pub pk: Vec<String>,
    /// The constrained column, as the statement names it.
    pub column: String,
    /// Its values as they compare (SQLite's rules, BINARY collation, no
    /// affinity conversion of them: [`comparable`] checked that).
    pub constraint: Constraint,
}

#[derive(Default)]
struct Seen {
    reads: HashSet<(String, String)>,
    functions: HashSet<String>,
    select: bool,
    other: bool,
}

/// Prepares `st` on `conn` and works out its shape; `Err` is a message for
/// the client (400).
pub(crate) fn analyze(conn: &mut Connection, st: &Statement) -> Result<Shape, String> {
    let first = st
        .sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next();
    if !first.is_some_and(|w| w.eq_ignore_ascii_case("select") || w.eq_ignore_ascii_case("with")) {
        return Err("a subscription is a SELECT statement".into());
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let noted = Arc::clone(&seen);
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        let mut s = noted.lock().unwrap_or_else(|e| e.into_inner());
        match ctx.action {
            AuthAction::Read { table_name, .. } => {
                let db = ctx.database_name.unwrap_or("main").to_owned();
                s.reads.insert((db, table_name.to_owned()));
            }
            AuthAction::Function { function_name } => {
                s.functions.insert(function_name.to_ascii_lowercase());
            }
            AuthAction::Select | AuthAction::Recursive => s.select = true,
            _ => s.other = true,
        }
        Authorization::Allow
    }))
    .map_err(|e| e.to_string())?;
    let plan = analyze_prepared(conn, st, &seen);
    let _ = conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>);
    plan
}

fn analyze_prepared(
    conn: &Connection,
    st: &Statement,
    seen: &Mutex<Seen>,
) -> Result<Shape, String> {
    let stmt = conn.prepare(&st.sql).map_err(|e| e.to_string())?;
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
    if !stmt.readonly() || !seen.select || seen.other || stmt.column_count() == 0 {
        return Err("a subscription is a read-only SELECT statement".into());
    }
    let mut reads = HashSet::new();
    let mut pks: HashMap<Table, Vec<String>> = HashMap::new();
    for (schema, table) in &seen.reads {
        let db = match schema.as_str() {
            "main" => DbKind::Regional,
            "global" => DbKind::Global,
            _ => return Err(format!("{schema}.{table} is not a replicated table")),
        };
        let pk = pk_columns(conn, schema, table)?;
        pks.insert((db, table.clone()), pk);
        reads.insert((db, table.clone()));
    }
    let mut origins = Vec::new();
    let mut columns = Vec::new();
    for meta in stmt.columns_with_metadata() {
        columns.push(meta.name().to_owned());
        let db = match meta.database_name() {
            Some("main") => Some(DbKind::Regional),
            Some("global") => Some(DbKind::Global),
            _ => None,
        };
        origins.push(match (db, meta.table_name(), meta.origin_name()) {
            (Some(db), Some(t), Some(c)) => Some(((db, t.to_owned()), c.to_owned())),
            _ => None,
        });
    }
    let is_pk = |o: &Option<(Table, String)>| {
        o.as_ref()
            .is_some_and(|(t, c)| pks.get(t).is_some_and(|pk| pk.contains(c)))
    };
    let mut key_columns: Vec<usize> = (0..origins.len()).filter(|&i| is_pk(&origins[i])).collect();
    if key_columns.is_empty() {
        key_columns = (0..origins.len())
            .filter(|&i| origins[i].is_some())
            .collect();
    }
    let restricted = if row_local(&st.sql, &seen.functions) && one_instance_each(&st.sql, &reads) {
        restricted_columns(&pks, &origins)
    } else {
        None
    };
    let one_table = match (&restricted, pks.into_iter().next()) {
        (Some(r), Some(one)) if r.len() == 1 => Some(one),
        _ => None,
    };
    Ok(Shape {
        columns,
        reads,
        key_columns,
        restricted,
        one_table,
    })
}

fn schema_of(db: DbKind) -> &'static str {
    match db {
        DbKind::Regional => "main",
        DbKind::Global => "global",
    }
}

/// The route of a row-local one-table statement: its first recognized
/// conjunct whose values compare exactly (equalities and `IN` lists before
/// ranges: they are looked up by value, ranges are tested one by one).
fn route_of(conn: &Connection, st: &Statement, table: &Table, pk: &[String]) -> Option<Route> {
    let schema = schema_of(table.0);
    let usable: Vec<_> = route::conjuncts(&st.sql, &st.params)?
        .into_iter()
        .filter_map(|c| {
            let constraint = match c.constraint {
                // `= NULL` holds for no row: left out of the list.
                Constraint::OneOf(list) => Constraint::OneOf(
                    list.into_iter()
                        .filter(|v| !matches!(v, Value::Null))
                        .map(|v| route::normalized(&v))
                        .collect(),
                ),
                range => range,
            };
            let exact = constraint
                .values()
                .into_iter()
                .all(|v| comparable(conn, schema, &table.1, &c.column, v));
            exact.then_some((c.column, constraint))
        })
        .collect();
    let (column, constraint) = usable
        .iter()
        .find(|(_, c)| matches!(c, Constraint::OneOf(_)))
        .or_else(|| usable.first())?
        .clone();
    Some(Route {
        table: table.clone(),
        pk: pk.to_vec(),
        column,
        constraint,
    })
}

/// Whether comparing `column` with `value` in SQL compares the stored value
/// with `value` as they are ([`route::compare`]): the column compares with
/// BINARY collation, and its affinity does not convert `value` (text
/// against a TEXT column, a number against an INTEGER, REAL or NUMERIC
/// one, anything but NULL against a column without affinity). Anything
/// else (e.g. the integer 5 against a TEXT column, which SQLite compares
/// as '5') is not routed by that column.
fn comparable(conn: &Connection, schema: &str, table: &str, column: &str, value: &Value) -> bool {
    let Ok((declared, collation, ..)) = conn.column_metadata(Some(schema), table, column) else {
        return false;
    };
    let binary = collation
        .as_ref()
        .is_none_or(|c| c.to_bytes().eq_ignore_ascii_case(b"binary"));
    let declared = declared
        .map(|d| d.to_string_lossy().to_ascii_uppercase())
        .unwrap_or_default();
    // SQLite's affinity rules (datatype3.html, 3.1), in their order.
    let affinity = if declared.contains("INT") {
        "integer"
    } else if ["CHAR", "CLOB", "TEXT"]
        .iter()
        .any(|t| declared.contains(t))
    {
        "text"
    } else if declared.contains("BLOB") || declared.is_empty() {
        "blob"
    } else if ["REAL", "FLOA", "DOUB"]
        .iter()
        .any(|t| declared.contains(t))
    {
        "real"
    } else {
        "numeric"
    };
    binary
        && matches!(
            (affinity, value),
            ("text", Value::Text(_))
                | (
                    "integer" | "numeric" | "real",
                    Value::Integer(_) | Value::Real(_)
                )
                | (
                    "blob",
                    Value::Integer(_) | Value::Real(_) | Value::Text(_) | Value::Blob(_)
                )
        )
}

/// The primary-key columns of a replicated table, in primary-key order.
fn pk_columns(conn: &Connection, schema: &str, table: &str) -> Result<Vec<String>, String> {
    let not_replicated =
        || format!("{table} is not a replicated table: subscribe to tables of the schema");
    let sql = format!("SELECT 1 FROM \"{schema}\".crr_tables WHERE name = ?1");
    conn.query_row(&sql, [table], |_| Ok(()))
        .map_err(|_| not_replicated())?;
    let sql = "SELECT name, pk FROM pragma_table_info(?1, ?2) WHERE pk > 0 ORDER BY pk";
    let mut stmt = conn.prepare(sql).map_err(|e| e.to_string())?;
    let names = stmt
        .query_map([table, schema], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| e.to_string())?;
    if names.is_empty() {
        return Err(not_replicated());
    }
    Ok(names)
}

/// Whether each result row depends only on the source rows whose keys it
/// carries: one SELECT, no aggregate, window, DISTINCT, LIMIT or outer join.
fn row_local(sql: &str, functions: &HashSet<String>) -> bool {
    if functions.iter().any(|f| AGGREGATES.contains(&f.as_str())) {
        return false;
    }
    let lower = sql.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    words.iter().filter(|w| **w == "select").count() == 1
        && !words.iter().any(|w| NON_LOCAL_WORDS.contains(w))
}

/// Whether every source table is named once (qualifiers like `t.col` do
/// not count): the authorizer reports tables, not their instances, and a
/// self-join (`FROM t a JOIN t b`) whose result carries only one side's
/// key is not row-local by that key — a change of the other side's row
/// changes result rows keyed otherwise. Counting names errs towards "more
/// than once" (a column named like its table), i.e. towards a full re-run.
fn one_instance_each(sql: &str, reads: &HashSet<Table>) -> bool {
    let Some(toks) = tokenize_complete(sql) else {
        return false;
    };
    reads.iter().all(|(_, table)| {
        let named = toks.iter().enumerate().filter(|(i, t)| {
            matches!(t.kind, Kind::Word | Kind::Quoted)
                && t.unquoted().eq_ignore_ascii_case(table)
                && !toks.get(i + 1).is_some_and(|n| n.is_punct('.'))
        });
        named.count() <= 1
    })
}

/// For every source table, the result columns of its pk (each exactly
/// once); `None` if some table's key is not wholly in the result.
fn restricted_columns(
    pks: &HashMap<Table, Vec<String>>,
    origins: &[Option<(Table, String)>],
) -> Option<HashMap<Table, Vec<usize>>> {
    let mut out = HashMap::new();
    for (table, pk) in pks {
        let mut cols = Vec::with_capacity(pk.len());
        for c in pk {
            let mut at = origins
                .iter()
                .enumerate()
                .filter(|(_, o)| o.as_ref().is_some_and(|(t, oc)| t == table && oc == c));
            let (i, _) = at.next()?;
            if at.next().is_some() {
                return None;
            }
            cols.push(i);
        }
        out.insert(table.clone(), cols);
    }
    Some(out)
}

/// Runs `st` and collects its rows.
pub(crate) fn run(conn: &Connection, st: &Statement) -> rusqlite::Result<Vec<Vec<Value>>> {
    run_sql(conn, &st.sql, st)
}

fn run_sql(conn: &Connection, sql: &str, st: &Statement) -> rusqlite::Result<Vec<Vec<Value>>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let width = stmt.column_count();
    let rows = with_params!(st, |p| stmt.query(p))?;
    collect(rows, width)
}

/// Rows a subscription's result may hold: it is kept in memory, and a
/// query without end (`WITH RECURSIVE` without a stop) would otherwise
/// fill gigabytes before `api.query_timeout` ends it (black-box finding:
/// 10 GB in 40 s).
pub(crate) const RESULT_ROWS_MAX: usize = 1_000_000;

fn collect(rows: rusqlite::Rows<'_>, width: usize) -> rusqlite::Result<Vec<Vec<Value>>> {
    collect_at_most(rows, width, RESULT_ROWS_MAX)
}

/// The rows, or `SQLITE_TOOBIG` past `max`.
fn collect_at_most(
    mut rows: rusqlite::Rows<'_>,
    width: usize,
    max: usize,
) -> rusqlite::Result<Vec<Vec<Value>>> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        if out.len() == max {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_TOOBIG),
                Some(format!(
                    "the subscription's result has more than {max} rows: narrow it (a WHERE, a LIMIT)"
                )),
            ));
        }
        out.push(
            (0..width)
                .map(|i| row.get::<_, Value>(i))
                .collect::<rusqlite::Result<Vec<_>>>()?,
        );
    }
    Ok(out)
}

/// Changed primary keys per table (unpacked values, encoded with
/// `codec`), as a restricted re-run takes them.
pub(crate) type Touched = BTreeMap<Table, HashSet<Vec<u8>>>;

/// Runs `st` restricted to the rows whose keys are in `touched`; `None`
/// when that cannot be expressed (then re-run in full).
///
/// The changed keys are bound as one JSON array per table (`json_each`), so
/// the query text depends only on which tables changed and is prepared
/// once: preparing a new text per commit was ~30% of a subscription
/// worker's time with 1,000 subscriptions.
pub(crate) fn run_restricted(
    conn: &Connection,
    st: &Statement,
    width: usize,
    pk_columns: &HashMap<Table, Vec<usize>>,
    touched: &Touched,
) -> Option<rusqlite::Result<Vec<Vec<Value>>>> {
    let sql = st.sql.trim().trim_end_matches(';');
    let mut q = String::from("WITH __patina_sub(");
    for i in 0..width {
        let _ = write!(q, "{}c{i}", if i > 0 { ", " } else { "" });
    }
    let _ = write!(q, ") AS ({sql}\n) SELECT * FROM __patina_sub WHERE ");
    let mut keys_json = Vec::new();
    for (table, keys) in touched {
        let cols = pk_columns.get(table)?;
        if keys.is_empty() {
            continue;
        }
        let param = format!(":__patina_keys_{}", keys_json.len());
        q.push_str(if keys_json.is_empty() { "(" } else { " OR (" });
        let names: Vec<String> = cols.iter().map(|c| format!("c{c}")).collect();
        let picks: Vec<String> = (0..cols.len())
            .map(|i| format!("json_extract(value, '$[{i}]')"))
            .collect();
        let _ = write!(
            q,
            "({}) IN (SELECT {} FROM json_each({param})))",
            names.join(", "),
            picks.join(", ")
        );
        keys_json.push((param, keys_as_json(keys, cols.len())?));
    }
    if keys_json.is_empty() {
        return Some(Ok(Vec::new()));
    }
    Some((|| {
        let mut stmt = conn.prepare_cached(&q)?;
        bind_statement_params(&mut stmt, st)?;
        for (name, json) in &keys_json {
            let index = stmt
                .parameter_index(name)?
                .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.clone()))?;
            stmt.raw_bind_parameter(index, json)?;
        }
        let width = stmt.column_count();
        let rows = stmt.raw_query();
        collect(rows, width)
    })())
}

/// Binds a subscription's own parameters (positional or named) by index,
/// leaving the key parameters to the caller.
fn bind_statement_params(
    stmt: &mut rusqlite::CachedStatement<'_>,
    st: &Statement,
) -> rusqlite::Result<()> {
    stmt.clear_bindings();
    match &st.params {
        patina_node::Params::None => {}
        patina_node::Params::Positional(values) => {
            for (i, v) in values.iter().enumerate() {
                stmt.raw_bind_parameter(i + 1, v)?;
            }
        }
        patina_node::Params::Named(values) => {
            for (name, v) in values {
                let index = stmt
                    .parameter_index(name)?
                    .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.clone()))?;
                stmt.raw_bind_parameter(index, v)?;
            }
        }
    }
    Ok(())
}

/// Keys as a JSON array of arrays (one value per key column); `None` for
/// values JSON cannot carry exactly (blobs, infinities): those commits
/// re-run in full.
pub(crate) fn keys_as_json(keys: &HashSet<Vec<u8>>, columns: usize) -> Option<String> {
    let mut rows = Vec::with_capacity(keys.len());
    for key in keys {
        let values = codec::decode(key)?;
        if values.len() != columns {
            return None;
        }
        let row = values.iter().map(json_value).collect::<Option<Vec<_>>>()?;
        rows.push(serde_json::Value::Array(row));
    }
    serde_json::to_string(&rows).ok()
}

fn json_value(v: &Value) -> Option<serde_json::Value> {
    Some(match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => serde_json::Value::from(*i),
        // serde_json writes `1.0` for a whole float, so SQLite reads it back
        // as REAL, not INTEGER; it refuses infinities and NaN (`None`).
        Value::Real(f) => serde_json::Number::from_f64(*f).map(serde_json::Value::Number)?,
        Value::Blob(_) => return None,
        Value::Text(t) => serde_json::Value::String(t.clone()),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_result_past_the_row_limit_is_refused() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let endless =
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r";
        let mut stmt = conn.prepare(endless).unwrap();
        let err = super::collect_at_most(stmt.query([]).unwrap(), 1, 1000).unwrap_err();
        assert_eq!(err.sqlite_error_code(), Some(rusqlite::ErrorCode::TooBig));
        assert!(err.to_string().contains("more than 1000 rows"), "{err}");
        let mut stmt = conn.prepare("SELECT 1 UNION ALL SELECT 2").unwrap();
        assert_eq!(
            super::collect_at_most(stmt.query([]).unwrap(), 1, 2)
                .unwrap()
                .len(),
            2
        );
    }

    use super::*;

    /// Through `analyze`, against real columns: affinity and collation
    /// decide whether a value routes by its column.
    #[test]
    fn analyze_routes_by_affinity_and_collation() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE crr_tables (name TEXT);
             INSERT INTO crr_tables VALUES ('t'), ('n');
             CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, a INTEGER, b);
             CREATE TABLE n (id TEXT COLLATE NOCASE PRIMARY KEY NOT NULL, a INTEGER);",
        )
        .unwrap();
        let mut routed = |sql: &str, v: Value| {
            let st = Statement::with_params(sql, vec![v]);
            let shape = Arc::new(analyze(&mut conn, &st).unwrap());
            Plan::of(&conn, &st, shape)
                .route
                .map(|r| (r.table.1, r.column, r.constraint))
        };
        let text = Value::Text("k".into());
        assert_eq!(
            routed("SELECT id, a FROM t WHERE id = ?", text.clone()),
            Some((
                "t".into(),
                "id".into(),
                Constraint::OneOf(vec![text.clone()])
            ))
        );
        assert_eq!(
            routed("SELECT id, a FROM t WHERE id = ?", Value::Integer(1)),
            None
        );
        assert_eq!(
            routed(
                "SELECT id, a FROM t WHERE a > 2 AND a = ?",
                Value::Real(3.0)
            ),
            Some((
                "t".into(),
                "a".into(),
                Constraint::OneOf(vec![Value::Integer(3)])
            )),
            "equalities before ranges; a whole real looked up as the integer"
        );
        assert_eq!(
            routed("SELECT id, a FROM t WHERE a = ? AND b < 'x'", text.clone()).map(|r| r.1),
            Some("b".into()),
            "a text against an INTEGER column does not route; any value against no affinity does"
        );
        assert_eq!(
            routed("SELECT id, a FROM n WHERE id = ?", text.clone()),
            None
        );
        assert_eq!(
            routed("SELECT a FROM t WHERE id = ?", text.clone()),
            None,
            "the key is not in the result: not row-local by key"
        );
        assert_eq!(routed("SELECT count(*) FROM t WHERE id = ?", text), None);
        let restricted = |conn: &mut Connection, sql: &str| {
            analyze(conn, &Statement::new(sql))
                .unwrap()
                .restricted
                .is_some()
        };
        assert!(restricted(
            &mut conn,
            "SELECT t.id, n.id FROM t JOIN n ON n.a = t.a"
        ));
        assert!(
            !restricted(&mut conn, "SELECT x.id, x.a FROM t x JOIN t y ON y.a = x.a"),
            "a self-join carrying one side's key is not row-local by that key"
        );
    }
}
