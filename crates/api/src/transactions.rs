//! `POST /v1/transactions[?timeout=SECONDS]`: statements run as one
//! transaction on the node; the answer says what happened to it.

use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use patina_node::{TxError, TxOutcome};
use serde::Serialize;

use crate::body::{parse_timeout, query_pairs, JsonBody};
use crate::errors::ApiError;
use crate::json::JsonStatements;
use crate::metrics::TxFailure;
use crate::state::ApiState;

/// Corrosion's `ExecResponse`, plus `actor_id`.
#[derive(Debug, Serialize)]
struct ExecResponse {
    results: Vec<ExecResult>,
    time: f64,
    version: Option<u64>,
    actor_id: String,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum ExecResult {
    Execute { rows_affected: usize, time: f64 },
    Error { error: String },
}

pub(crate) async fn handle(
    State(state): State<ApiState>,
    RawQuery(raw_query): RawQuery,
    JsonBody(JsonStatements(statements)): JsonBody<JsonStatements>,
) -> Result<Response, ApiError> {
    let timeout = parse_query(raw_query.as_deref())?;
    let actor_id = state.node.actor_id().to_string();
    if statements.is_empty() {
        state.metrics.tx_failed(TxFailure::Empty);
        return Ok(refused(
            StatusCode::BAD_REQUEST,
            TxError::Empty.to_string(),
            0.0,
            actor_id,
        ));
    }
    let count = statements.len();
    let started = Instant::now();
    let outcome = match timeout {
        Some(t) => tokio::time::timeout(t, state.node.transact(statements)).await,
        None => Ok(state.node.transact(statements).await),
    };
    let time = started.elapsed().as_secs_f64();
    let (status, failure, message) = match outcome {
        Ok(Ok(outcome)) => {
            state.metrics.tx_committed();
            return Ok(committed(outcome, actor_id));
        }
        Ok(Err(TxError::Empty)) => (
            StatusCode::BAD_REQUEST,
            TxFailure::Empty,
            TxError::Empty.to_string(),
        ),
        Ok(Err(e @ TxError::MixedDatabases)) => {
            (StatusCode::BAD_REQUEST, TxFailure::Mixed, e.to_string())
        }
        Ok(Err(TxError::Statement { index, message })) => {
            let message = if count > 1 {
                format!("statement {} of {count}: {message}", index + 1)
            } else {
                message
            };
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                TxFailure::Statement,
                message,
            )
        }
        // 507 Insufficient Storage (RFC 4918): the client may retry once
        // the node has room again; the message says so.
        Ok(Err(e @ TxError::StorageFull { .. })) => (
            StatusCode::INSUFFICIENT_STORAGE,
            TxFailure::StorageFull,
            e.to_string(),
        ),
        // The node must be re-seeded: another node takes the write.
        Ok(Err(e @ TxError::Stale { .. })) => (
            StatusCode::SERVICE_UNAVAILABLE,
            TxFailure::Stale,
            e.to_string(),
        ),
        // Back after a long absence, not yet checked: another node takes
        // the write, or this one in a moment.
        Ok(Err(e @ TxError::Returning { .. })) => (
            StatusCode::SERVICE_UNAVAILABLE,
            TxFailure::Returning,
            e.to_string(),
        ),
        Ok(Err(e @ TxError::ShuttingDown)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            TxFailure::ShuttingDown,
            e.to_string(),
        ),
        Err(_elapsed) => (
            StatusCode::GATEWAY_TIMEOUT,
            TxFailure::Timeout,
            timeout_message(timeout.unwrap_or_default()),
        ),
    };
    state.metrics.tx_failed(failure);
    Ok(refused(status, message, time, actor_id))
}

fn parse_query(raw: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let mut timeout = None;
    for (key, value) in query_pairs(raw)? {
        if key == "timeout" {
            timeout = Some(parse_timeout(&value)?);
        }
    }
    Ok(timeout)
}

fn timeout_message(timeout: Duration) -> String {
    format!(
        "the transaction did not commit within the timeout of {} s. It was not cancelled and may \
         still commit (all of its statements or none): check for its effects before retrying",
        timeout.as_secs_f64()
    )
}

fn committed(outcome: TxOutcome, actor_id: String) -> Response {
    let body = ExecResponse {
        results: outcome
            .results
            .iter()
            .map(|r| ExecResult::Execute {
                rows_affected: r.rows_affected,
                time: r.time.as_secs_f64(),
            })
            .collect(),
        time: outcome.time.as_secs_f64(),
        version: outcome.version,
        actor_id,
    };
    (StatusCode::OK, Json(body)).into_response()
}

fn refused(status: StatusCode, error: String, time: f64, actor_id: String) -> Response {
    let body = ExecResponse {
        results: vec![ExecResult::Error { error }],
        time,
        version: None,
        actor_id,
    };
    (status, Json(body)).into_response()
}
