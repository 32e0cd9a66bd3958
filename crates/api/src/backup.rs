//! `POST /v1/backup` (Patina addition): the node takes an online backup
//! of both databases into a new directory on its own host. Body:
//! `{"to": "/absolute/new/dir"}`. 200
//! `{"dir":"…","time":SECONDS,"manifest":{…}}` once every file is written
//! and fsynced; 400 for a target that cannot be used (relative, existing,
//! no parent, inside the data dir, not writable), 409 while another backup
//! runs, 507 when its disk is full, 503 while stopping. A failed backup
//! leaves no directory behind.

use std::path::PathBuf;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use patina_node::{BackupError, BackupManifest};
use serde::Deserialize;
use serde_json::json;

use crate::body::{BodyShape, JsonBody};
use crate::errors::{error_response, ApiError};
use crate::state::ApiState;

#[derive(Deserialize)]
pub(crate) struct BackupRequest {
    to: PathBuf,
}

impl BodyShape for BackupRequest {
    const EXPECTED: &'static str =
        r#"{"to": "/absolute/path/of/a/new/directory"} (on the agent's host)"#;
}

/// The manifest file's bytes: JSON an operator can read.
fn encode(manifest: &BackupManifest) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(manifest)
        .expect("a manifest is strings and integers, always encodable");
    bytes.push(b'\n');
    bytes
}

pub(crate) async fn handle(
    State(state): State<ApiState>,
    JsonBody(request): JsonBody<BackupRequest>,
) -> Result<Response, ApiError> {
    match state.node.backup(request.to.clone(), encode).await {
        Ok(report) => {
            tracing::info!(dir = %report.dir.display(), secs = report.took.as_secs_f64(), "backup written (POST /v1/backup)");
            Ok(axum::Json(json!({
                "dir": report.dir,
                "time": report.took.as_secs_f64(),
                "manifest": report.manifest,
            }))
            .into_response())
        }
        Err(e) => {
            let status = match &e {
                BackupError::RelativeTarget(_)
                | BackupError::TargetExists(_)
                | BackupError::ParentMissing { .. }
                | BackupError::InsideDataDir { .. }
                | BackupError::CannotCreate { .. } => StatusCode::BAD_REQUEST,
                BackupError::Busy => StatusCode::CONFLICT,
                BackupError::StorageFull(_) => StatusCode::INSUFFICIENT_STORAGE,
                BackupError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
                BackupError::Io { .. } | BackupError::Sqlite { .. } => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            };
            tracing::warn!(target = %request.to.display(), error = %e, "backup failed (POST /v1/backup)");
            Ok(error_response(status, &e.to_string()))
        }
    }
}
