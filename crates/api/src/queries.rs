//! `POST /v1/queries`: one read-only statement, its result as NDJSON lines
//! (`columns`, `row`…, then `eoq` or `error`), each line its own chunk.
//! And `POST /v1/table_stats`, which reads too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use patina_node::{DbKind, QueryError, QueryStream, RowEvent, SiteId};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant as Deadline;

use crate::body::{parse_timeout, query_pairs, BodyShape, JsonBody};
use crate::errors::ApiError;
use crate::json::{Cells, JsonStatement};
use crate::metrics::{Metrics, QueryOutcome};
use crate::state::ApiState;

/// How long a query waits for its `after=` versions and a read connection
/// when the request names no `timeout`.
pub(crate) const QUERY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// `after=` entries one query may name.
const AFTER_MAX: usize = 256;
/// Tables one `table_stats` request may name.
const TABLE_STATS_TABLES_MAX: usize = 4096;

const NDJSON: &str = "application/x-ndjson";

struct QueryParams {
    timeout: Duration,
    after: Vec<(DbKind, SiteId, u64)>,
}

pub(crate) async fn handle(
    State(state): State<ApiState>,
    RawQuery(raw_query): RawQuery,
    JsonBody(JsonStatement(statement)): JsonBody<JsonStatement>,
) -> Result<Response, ApiError> {
    let params = parse_query(raw_query.as_deref())?;
    let deadline = Deadline::now() + params.timeout;
    let metrics = &state.metrics;
    for &(db, actor, version) in &params.after {
        let left = deadline.saturating_duration_since(Deadline::now());
        if !state.node.wait_applied(db, actor, version, left).await {
            metrics.query(QueryOutcome::Timeout);
            let held = state
                .node
                .held_versions(db)
                .borrow()
                .contains(actor, version);
            let why = if held {
                "it arrived, but part of it is held: it names a table or column this node's \
                 schema lacks (reload the schema files) or this node's constraints refused a \
                 row (see /v1/health's parked_versions and refused_versions)"
            } else {
                "the write has not reached it yet; retry later or with a longer ?timeout="
            };
            return Err(ApiError::Timeout(format!(
                "this node has not applied {} version {version} of actor {actor} within {} s: {why}",
                db.name(),
                params.timeout.as_secs_f64()
            )));
        }
    }
    let started = Instant::now();
    let stream = match tokio::time::timeout_at(
        deadline,
        state.node.query(statement, state.config.query_timeout),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(refused(metrics, e)),
        Err(_) => {
            metrics.query(QueryOutcome::Timeout);
            return Err(ApiError::Timeout(format!(
                "no read connection became free within {} s (they are all busy streaming \
                 results): retry later or with a longer ?timeout=",
                params.timeout.as_secs_f64()
            )));
        }
    };
    metrics.query(QueryOutcome::Started);
    Ok(ndjson(lines(stream, started, state.metrics.clone())))
}

fn parse_query(raw: Option<&str>) -> Result<QueryParams, ApiError> {
    let mut params = QueryParams {
        timeout: QUERY_TIMEOUT_DEFAULT,
        after: Vec::new(),
    };
    for (key, value) in query_pairs(raw)? {
        match key.as_str() {
            "timeout" => params.timeout = parse_timeout(&value)?,
            "after" => {
                if params.after.len() == AFTER_MAX {
                    return Err(ApiError::QueryString(format!(
                        "at most {AFTER_MAX} after= are allowed: wait for the latest version of each actor only"
                    )));
                }
                params.after.push(parse_after(&value)?);
            }
            _ => {}
        }
    }
    Ok(params)
}

/// `ACTOR:VERSION` (a regional write: what Corrosion clients send) or
/// `global:ACTOR:VERSION` (a write to a global table: global.db numbers its
/// versions separately). ACTOR is 32 hex characters, VERSION ≥ 1.
fn parse_after(value: &str) -> Result<(DbKind, SiteId, u64), ApiError> {
    let bad = |why: String| {
        ApiError::QueryString(format!(
            "after={value:?} is not [global:]ACTOR:VERSION ({why}): use the actor_id and version a \
             transaction answered, e.g. after=d5f143e7ba65421c938c850ce78fc9f2:42 (prefix global: \
             when it wrote global tables)"
        ))
    };
    let (db, value) = match value.strip_prefix("global:") {
        Some(rest) => (DbKind::Global, rest),
        None => (DbKind::Regional, value),
    };
    let (actor, version) = value
        .split_once(':')
        .ok_or_else(|| bad("no colon".into()))?;
    let actor = actor.parse::<SiteId>().map_err(|e| bad(e.to_string()))?;
    let version: u64 = version
        .parse()
        .map_err(|_| bad(format!("version {version:?} is not a whole number")))?;
    if version == 0 {
        return Err(bad("versions start at 1".into()));
    }
    Ok((db, actor, version))
}

fn refused(metrics: &Metrics, e: QueryError) -> ApiError {
    match e {
        QueryError::Prepare(msg) => {
            metrics.query(QueryOutcome::Prepare);
            ApiError::BadRequest(msg)
        }
        QueryError::NotReadOnly | QueryError::NotAQuery(_) => {
            metrics.query(QueryOutcome::NotReadOnly);
            ApiError::BadRequest(e.to_string())
        }
        QueryError::ShuttingDown => {
            metrics.query(QueryOutcome::ShuttingDown);
            ApiError::Unavailable(e.to_string())
        }
    }
}

pub(crate) fn ndjson(stream: impl futures_util::Stream<Item = Bytes> + Send + 'static) -> Response {
    use futures_util::StreamExt;
    let body = Body::from_stream(stream.map(Ok::<_, std::convert::Infallible>));
    let mut response = (StatusCode::OK, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    response
}

/// Where a result stream is.
enum Lines {
    Columns(QueryStream, Instant, Arc<Metrics>),
    Rows(QueryStream, Instant, Arc<Metrics>, u64),
    Done,
}

/// The result's lines: columns, rows numbered from 1, then `eoq` — or an
/// `error` line, after which nothing follows.
fn lines(
    stream: QueryStream,
    started: Instant,
    metrics: Arc<Metrics>,
) -> impl futures_util::Stream<Item = Bytes> + Send + 'static {
    futures_util::stream::unfold(Lines::Columns(stream, started, metrics), |at| async move {
        match at {
            Lines::Columns(stream, started, metrics) => {
                let line = line(&json!({ "columns": stream.columns }));
                Some((line, Lines::Rows(stream, started, metrics, 0)))
            }
            Lines::Rows(mut stream, started, metrics, sent) => match stream.rows.recv().await {
                Some(RowEvent::Row(cells)) => {
                    let id = sent + 1;
                    metrics.row_streamed();
                    let line = line(&RowLine {
                        row: (id, Cells(&cells)),
                    });
                    Some((line, Lines::Rows(stream, started, metrics, id)))
                }
                Some(RowEvent::Error(message)) => {
                    metrics.query_stream_failed();
                    Some((line(&json!({ "error": message })), Lines::Done))
                }
                None => {
                    let time = started.elapsed().as_secs_f64();
                    Some((line(&json!({ "eoq": { "time": time } })), Lines::Done))
                }
            },
            Lines::Done => None,
        }
    })
}

#[derive(Serialize)]
struct RowLine<'a> {
    row: (u64, Cells<'a>),
}

/// `value` as one NDJSON line.
pub(crate) fn line(value: &impl Serialize) -> Bytes {
    let mut buf = serde_json::to_vec(value).unwrap_or_else(|e| {
        // Only non-string map keys fail, and no line has them.
        tracing::error!(error = %e, "could not encode an NDJSON line");
        br#"{"error":"internal error: could not encode a line"}"#.to_vec()
    });
    buf.push(b'\n');
    Bytes::from(buf)
}

#[derive(Deserialize)]
pub(crate) struct TableStatsRequest {
    tables: Vec<String>,
}

impl BodyShape for TableStatsRequest {
    const EXPECTED: &'static str = r#"{"tables": ["table", …]}"#;
}

#[derive(Serialize)]
struct TableStatsResponse {
    total_row_count: u64,
    invalid_tables: Vec<String>,
}

/// `POST /v1/table_stats`: `{"tables":[…]}` → row count and unknown names.
pub(crate) async fn table_stats(
    State(state): State<ApiState>,
    JsonBody(request): JsonBody<TableStatsRequest>,
) -> Result<Response, ApiError> {
    if request.tables.len() > TABLE_STATS_TABLES_MAX {
        return Err(ApiError::Shape {
            message: format!("{} tables named", request.tables.len()),
            expected: "at most 4096 tables per request: split the list",
        });
    }
    match state.node.table_row_count(request.tables).await {
        Ok((total_row_count, invalid_tables)) => Ok(Json(TableStatsResponse {
            total_row_count,
            invalid_tables,
        })
        .into_response()),
        Err(QueryError::ShuttingDown) => {
            Err(ApiError::Unavailable(QueryError::ShuttingDown.to_string()))
        }
        Err(e) => Err(ApiError::Internal(format!("could not count rows: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_values() {
        let actor = "d5f143e7ba65421c938c850ce78fc9f2";
        let (db, a, v) = parse_after(&format!("{actor}:42")).unwrap();
        assert_eq!(
            (db, a.to_string(), v),
            (DbKind::Regional, actor.to_string(), 42)
        );
        let (db, _, v) = parse_after(&format!("global:{actor}:7")).unwrap();
        assert_eq!((db, v), (DbKind::Global, 7));
        for bad in [
            actor.to_string(),
            format!("{actor}:"),
            format!("{actor}:0"),
            format!("{actor}:-1"),
            format!("{actor}:x"),
            "nothex:1".to_string(),
            format!("{actor}00:1"),
            format!("regional:{actor}:1"),
            format!("global:{actor}"),
        ] {
            assert!(parse_after(&bad).is_err(), "{bad}");
        }
    }
}
