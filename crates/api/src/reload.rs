//! `POST /v1/reload` (Patina addition): re-reads the schema files named by
//! the config and applies them, as SIGHUP does. Body: empty or a JSON
//! object (ignored). 200 `{"reloaded":true}`; a refused schema (a
//! non-additive change, a broken file) → 400 `{"error":"…"}` naming the
//! table and the rule, with nothing changed; a stopping node → 503.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use patina_node::NodeError;
use serde_json::json;

use crate::errors::{error_response, ApiError};
use crate::state::ApiState;

pub(crate) async fn handle(
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !body.iter().all(u8::is_ascii_whitespace) {
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
        if !value.is_object() {
            return Err(ApiError::BadRequest(
                "POST /v1/reload takes an empty body or {}".into(),
            ));
        }
    }
    Ok(match state.node.reload_schema().await {
        Ok(()) => {
            tracing::info!("schema files reloaded (POST /v1/reload)");
            axum::Json(json!({ "reloaded": true })).into_response()
        }
        Err(e) => {
            let status = match &e {
                NodeError::Schema { .. } | NodeError::SchemaPath { .. } => StatusCode::BAD_REQUEST,
                NodeError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            tracing::warn!(error = %e, "schema reload refused (POST /v1/reload)");
            error_response(status, &e.to_string())
        }
    })
}
