//! Bearer auth (`api.authz.bearer_token`): when configured, every request
//! needs `Authorization: Bearer <token>`, else 401.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::errors::ApiError;
use crate::ApiState;

pub(crate) async fn require_bearer(
    State(state): State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    let Some(expected) = state.config.bearer_token.as_deref() else {
        return next.run(req).await;
    };
    match check(
        req.headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
        expected,
    ) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn check(header: Option<&[u8]>, expected: &str) -> Result<(), ApiError> {
    let Some(value) = header else {
        return Err(ApiError::Unauthorized(
            "this API requires a bearer token: send `Authorization: Bearer <token>` (api.authz.bearer_token)",
        ));
    };
    let token = value
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
        .map(|_| value[7..].trim_ascii())
        .ok_or(ApiError::Unauthorized(
            "the Authorization header is not `Bearer <token>`: use the bearer scheme",
        ))?;
    if constant_time_eq(token, expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "wrong token in `Authorization: Bearer <token>`: send the one configured as api.authz.bearer_token",
        ))
    }
}

/// Equality whose time depends on the lengths only, never on where the
/// bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(check(Some(b"Bearer s3cret"), "s3cret").is_ok());
        assert!(check(Some(b"bearer s3cret "), "s3cret").is_ok());
        assert!(check(Some(b"Bearer s3cre"), "s3cret").is_err());
        assert!(check(Some(b"Bearer s3cretx"), "s3cret").is_err());
        assert!(check(Some(b"Basic s3cret"), "s3cret").is_err());
        assert!(check(Some(b"Bear"), "s3cret").is_err());
        assert!(check(None, "s3cret").is_err());
        assert!(check(Some(b"Bearer "), "").is_ok());
    }
}
