//! Bearer auth (`api.authz.bearer_token`): when configured, every request
//! needs `Authorization: Bearer <token>`, else 401.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::errors::ApiError;
use crate::state::ApiState;

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
    // `subtle` compares without branching on where the bytes differ (only
    // the length is public), so response timing does not reveal a prefix.
    if bool::from(token.ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "wrong token in `Authorization: Bearer <token>`: send the one configured as api.authz.bearer_token",
        ))
    }
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
