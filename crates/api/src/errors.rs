//! Error answers: every one is JSON `{"error":"…"}` that says what was
//! wrong and what to do (the transactions endpoint has its own shape for
//! what happens to the transaction itself, see `transactions.rs`).

use std::any::Any;

use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Why a request was refused before it reached the node; counted by
/// `metrics.rs` as `patina_api_bad_requests_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadRequestKind {
    Json,
    Shape,
    ContentType,
    BodySize,
    Auth,
    QueryString,
    Route,
}

impl BadRequestKind {
    pub fn label(self) -> &'static str {
        match self {
            BadRequestKind::Json => "json",
            BadRequestKind::Shape => "shape",
            BadRequestKind::ContentType => "content_type",
            BadRequestKind::BodySize => "body_size",
            BadRequestKind::Auth => "auth",
            BadRequestKind::QueryString => "query_string",
            BadRequestKind::Route => "route",
        }
    }
}

/// A refused request. `Display` is the message sent to the client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("expected `content-type: application/json`, got {0}: send the body as JSON with that header")]
    ContentType(String),
    #[error("request body is larger than this route's limit of {limit} bytes (a transaction that large: split it into several requests)")]
    BodyTooLarge { limit: usize },
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("request body is JSON of the wrong shape: {message}. Expected {expected}")]
    Shape {
        message: String,
        expected: &'static str,
    },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    QueryString(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyRead(_) | ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::Shape { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::QueryString(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> Option<BadRequestKind> {
        match self {
            ApiError::ContentType(_) => Some(BadRequestKind::ContentType),
            ApiError::BodyTooLarge { .. } => Some(BadRequestKind::BodySize),
            ApiError::BodyRead(_) | ApiError::MalformedJson(_) => Some(BadRequestKind::Json),
            ApiError::Shape { .. } => Some(BadRequestKind::Shape),
            ApiError::Unauthorized(_) => Some(BadRequestKind::Auth),
            ApiError::QueryString(_) => Some(BadRequestKind::QueryString),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = error_response(self.status(), &self.to_string());
        if let Some(kind) = self.kind() {
            response.extensions_mut().insert(kind);
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// `status` with body `{"error": message}`.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

pub(crate) async fn not_found(method: Method, uri: Uri) -> Response {
    let message = format!(
        "no such endpoint: {method} {}. The endpoints are POST /v1/transactions, POST /v1/queries, \
         POST /v1/table_stats, POST /v1/subscriptions, GET /v1/subscriptions/{{id}}, \
         POST /v1/updates/{{table}}, POST /v1/reload, POST /v1/backup, GET /v1/health, GET /v1/members, GET /v1/regions, GET /v1/digest, GET /metrics",
        uri.path()
    );
    let mut response = error_response(StatusCode::NOT_FOUND, &message);
    response.extensions_mut().insert(BadRequestKind::Route);
    response
}

pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let message = format!(
        "{} does not take {method}: the /v1 endpoints that take a body are POST, the others GET",
        uri.path()
    );
    let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED, &message);
    response.extensions_mut().insert(BadRequestKind::Route);
    response
}

/// A panicking handler answers 500 `{"error":…}` instead of dropping the
/// connection. Handlers are written not to panic; this is the backstop.
pub(crate) fn catch_panic_layer(
) -> tower_http::catch_panic::CatchPanicLayer<fn(Box<dyn Any + Send + 'static>) -> Response> {
    tower_http::catch_panic::CatchPanicLayer::custom(panic_response as fn(_) -> _)
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown cause");
    tracing::error!(panic = detail, "an API handler panicked");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error (a handler panicked; the log has details): please report it",
    )
}
