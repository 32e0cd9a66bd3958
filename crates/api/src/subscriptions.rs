//! `POST /v1/subscriptions`, `GET`/`DELETE /v1/subscriptions/{id}` and
//! `POST /v1/updates/{table}`: NDJSON streams that stay open. Each line is
//! its own chunk, written as soon as the event exists.
//!
//! Decisions api.md leaves open:
//! - `skip_rows=true` still sends `columns` and `eoq` (no `row` lines), so a
//!   client learns the columns and the change id it starts after.
//! - `from=N` sends change lines only (no `columns`/`eoq`). `from=N` beyond
//!   the last change id gets an error line (the node never sent N) and the
//!   stream ends, as one older than the retained log does.
//! - Query keys other than `from` and `skip_rows`, or one given twice: 400.
//! - A subscriber more than 128 events behind (`SUBSCRIBER_EVENTS_BUFFERED`) gets
//!   `{"error":"… re-attach with from=<last id it got>"}` and the stream ends.

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use patina_subs::{Attach, ChangeEvent, SubError, SubItem, SubStream};
use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast;

use crate::body::{clip, unique_query_pairs, JsonBody};
use crate::errors::{error_response, ApiError};
use crate::json::{Cells, JsonStatement};
use crate::queries::{line, ndjson};
use crate::state::ApiState;

fn parse_attach(raw: Option<&str>) -> Result<Attach, ApiError> {
    let mut attach = Attach::default();
    for (key, value) in unique_query_pairs(raw)? {
        match key.as_str() {
            "from" => {
                attach.from = Some(value.parse().map_err(|_| {
                    ApiError::QueryString(format!(
                        "from={:?} is not a change id: give the last change_id you received",
                        clip(&value)
                    ))
                })?)
            }
            "skip_rows" => {
                attach.skip_rows = match value.as_str() {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ApiError::QueryString(format!(
                            "skip_rows={:?}: use true or false",
                            clip(&value)
                        )))
                    }
                }
            }
            _ => {
                // A misspelled from= must not start a fresh snapshot the
                // client takes for a resume.
                return Err(ApiError::QueryString(format!(
                    "unknown query parameter {}: subscriptions take from= and skip_rows=",
                    clip(&key)
                )));
            }
        }
    }
    Ok(attach)
}

fn refused(e: SubError) -> Response {
    use axum::http::StatusCode;
    let status = match &e {
        SubError::Invalid(_) | SubError::NoSuchSubscription => StatusCode::BAD_REQUEST,
        // The id is the client's, possibly long: the message quotes its start.
        SubError::NotFound(id) => {
            return error_response(
                StatusCode::NOT_FOUND,
                &SubError::NotFound(clip(id)).to_string(),
            )
        }
        SubError::TooMany(_) | SubError::Busy | SubError::ShuttingDown => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        SubError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_response(status, &e.to_string())
}

pub(crate) async fn subscribe(
    State(state): State<ApiState>,
    RawQuery(raw): RawQuery,
    JsonBody(JsonStatement(statement)): JsonBody<JsonStatement>,
) -> Result<Response, ApiError> {
    let attach = parse_attach(raw.as_deref())?;
    let create = attach.from.is_none();
    Ok(
        match state.subs.subscribe(statement, create, attach).await {
            Ok(stream) => respond(stream),
            Err(e) => refused(e),
        },
    )
}

pub(crate) async fn attach(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let attach = parse_attach(raw.as_deref())?;
    Ok(match state.subs.attach(&id, attach).await {
        Ok(stream) => respond(stream),
        Err(e) => refused(e),
    })
}

/// `DELETE /v1/subscriptions/{id}` (Patina addition): 204; unknown id 404.
pub(crate) async fn remove(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match state.subs.remove(&id).await {
        Ok(()) => axum::http::StatusCode::NO_CONTENT.into_response(),
        Err(e) => refused(e),
    }
}

#[derive(Serialize)]
struct RowLine<'a> {
    row: (u64, Cells<'a>),
}

/// Written as a struct, not with `json!`: cells may hold `1e999` (see
/// `Cell`), which `json!`'s value conversion refuses.
#[derive(Serialize)]
struct NotifyLine<'a> {
    notify: (&'static str, Cells<'a>),
}

#[derive(Serialize)]
struct ChangeLine<'a> {
    change: (&'static str, u64, Cells<'a>, u64),
}

fn change_line(e: &ChangeEvent) -> Bytes {
    line(&ChangeLine {
        change: (e.kind.as_str(), e.row_id, Cells(&e.cells), e.change_id),
    })
}

fn respond(mut stream: SubStream) -> Response {
    let mut head = Vec::new();
    if let Some(rows) = stream.rows.take() {
        head.push(line(&json!({ "columns": stream.columns })));
        for (id, cells) in &rows {
            head.push(line(&RowLine {
                row: (*id, Cells(cells)),
            }));
        }
        head.push(line(&json!({ "eoq": {
            "time": stream.snapshot_time.as_secs_f64(),
            "change_id": stream.change_id,
        }})));
    }
    let id = HeaderValue::from_str(&stream.id);
    let hash = HeaderValue::from_str(&stream.hash);
    let changes = futures_util::stream::unfold(Some(stream), |s| async move {
        let mut s = s?;
        match s.next().await? {
            SubItem::Change(e) => Some((change_line(&e), Some(s))),
            SubItem::Error(message) => Some((line(&json!({ "error": message })), None)),
        }
    });
    use futures_util::StreamExt;
    let mut response = ndjson(futures_util::stream::iter(head).chain(changes));
    if let (Ok(id), Ok(hash)) = (id, hash) {
        response.headers_mut().insert("corro-query-id", id);
        response.headers_mut().insert("corro-query-hash", hash);
    }
    response
}

/// `POST /v1/updates/{table}`: `{"notify":["update"|"delete",[pk…]]}` per
/// changed row of `table`, inserts reported as updates.
pub(crate) async fn updates(
    State(state): State<ApiState>,
    Path(table): Path<String>,
) -> Result<Response, ApiError> {
    // Listen first: nothing committed after the check is missed. Every
    // commit: local ones and those merged from peers alike.
    let rx = state.node.subscribe_commits();
    match state.node.table_row_count(vec![table.clone()]).await {
        Ok((_, invalid)) if invalid.is_empty() => {}
        Ok(_) => {
            return Err(ApiError::BadRequest(format!(
                "{table} is not a replicated table: name a table of the schema"
            )))
        }
        Err(e) => return Err(ApiError::Unavailable(e.to_string())),
    }
    let lines = futures_util::stream::unfold(Some((rx, table)), |s| async move {
        let (mut rx, table) = s?;
        loop {
            match rx.recv().await {
                Ok(cs)
                    if cs
                        .omitted
                        .as_ref()
                        .is_some_and(|o| o.tables.contains(&table)) =>
                {
                    // Its changes were too many to carry (patina_node::LARGE_CHANGES):
                    // like a lagging subscriber, this one missed rows.
                    let message = format!(
                        "a transaction changed more than {} cells of {table}: re-read the table and re-subscribe",
                        patina_node::LARGE_CHANGES
                    );
                    return Some((line(&json!({ "error": message })), None));
                }
                Ok(cs) => {
                    let rows = cs.row_changes(&table);
                    if rows.is_empty() {
                        continue;
                    }
                    let mut out = Vec::with_capacity(rows.len() * 32);
                    for r in rows {
                        let kind = if r.deleted { "delete" } else { "update" };
                        out.extend_from_slice(&line(&NotifyLine {
                            notify: (kind, Cells(&r.pk)),
                        }));
                    }
                    return Some((Bytes::from(out), Some((rx, table))));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let message = format!(
                        "this subscriber fell {n} commits behind and was disconnected: re-subscribe"
                    );
                    return Some((line(&json!({ "error": message })), None));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let mut response = ndjson(lines);
    if let Ok(id) = HeaderValue::from_str(&patina_subs::new_id()) {
        response.headers_mut().insert("corro-query-id", id);
    }
    Ok(response)
}
