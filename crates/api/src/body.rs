//! Reading requests: the JSON body (content type, size limit, syntax, then
//! shape — in that order, each with its own status) and the query string.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::{DeserializeOwned, IgnoredAny};

use crate::errors::ApiError;
use crate::state::ApiState;

/// A request body type: what it deserializes from, and how to describe
/// that to a client who sent something else.
pub(crate) trait BodyShape: DeserializeOwned {
    const EXPECTED: &'static str;
}

/// A JSON body of shape `T`: 415 without `content-type: application/json`,
/// 413 over the body limit, 400 if not JSON, 422 if JSON of another shape.
pub(crate) struct JsonBody<T>(pub T);

impl<T: BodyShape> FromRequest<ApiState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, ApiError> {
        check_content_type(req.headers())?;
        let limit = state.config.body_limit_bytes;
        if content_length(req.headers()).is_some_and(|len| len > limit as u64) {
            return Err(ApiError::BodyTooLarge { limit });
        }
        let bytes = read_limited(req.into_body(), limit).await?;
        parse::<T>(&bytes).map(JsonBody)
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::ContentType("no content-type".into()));
    };
    let text = value.to_str().unwrap_or("");
    let essence = text.split(';').next().unwrap_or("").trim();
    let json = essence.eq_ignore_ascii_case("application/json")
        || essence
            .to_ascii_lowercase()
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"));
    if json {
        Ok(())
    } else {
        Err(ApiError::ContentType(format!(
            "{:?}",
            String::from_utf8_lossy(value.as_bytes())
        )))
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A small body of any content type (an endpoint's optional flags), read
/// up to `limit` bytes; over it, the same JSON 413 as every other body.
pub(crate) async fn small_body(req: Request, limit: usize) -> Result<bytes::Bytes, ApiError> {
    if content_length(req.headers()).is_some_and(|len| len > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    read_limited(req.into_body(), limit).await
}

async fn read_limited(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::BodyTooLarge { limit })
        }
        Err(e) => Err(ApiError::BodyRead(e.to_string())),
    }
}

/// Syntax first (400), over the whole body, so that a shape error (422)
/// is only ever reported for well-formed JSON.
pub(crate) fn parse<T: BodyShape>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedJson(format!(
            "the body is empty: send {}",
            T::EXPECTED
        )));
    }
    serde_json::from_slice::<IgnoredAny>(bytes)
        .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    serde_json::from_slice::<T>(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data if e.to_string().contains(crate::json::OUTSIDE_RANGE) => {
            ApiError::BadRequest(e.to_string())
        }
        serde_json::error::Category::Data => ApiError::Shape {
            message: e.to_string(),
            expected: T::EXPECTED,
        },
        _ => ApiError::MalformedJson(e.to_string()),
    })
}

/// The query string's `key=value` pairs in order (keys may repeat).
pub(crate) fn query_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::QueryString(format!("could not parse the query string: {e}")))
}

/// The query's pairs, each key once: a repeated one is refused (a gate or
/// a resume must not depend on which of two values wins).
pub(crate) fn unique_query_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let pairs = query_pairs(raw)?;
    for (i, (key, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(k, _)| k == key) {
            return Err(ApiError::QueryString(format!(
                "{} is given twice: give each query parameter once",
                clip(key)
            )));
        }
    }
    Ok(pairs)
}

/// At most 64 characters of what a client sent, for an error message.
pub(crate) fn clip(text: &str) -> String {
    let mut out: String = text.chars().take(64).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// Longest `?timeout=` accepted.
pub(crate) const TIMEOUT_MAX: Duration = Duration::from_secs(3600);

/// `?timeout=SECONDS`: a number (fractions allowed) in (0, 3600].
pub(crate) fn parse_timeout(value: &str) -> Result<Duration, ApiError> {
    let bad = || {
        ApiError::QueryString(format!(
            "timeout={value:?} is not a number of seconds between 0 (excluded) and {}: e.g. timeout=5 or timeout=0.5",
            TIMEOUT_MAX.as_secs()
        ))
    };
    let secs: f64 = value.trim().parse().map_err(|_| bad())?;
    if !secs.is_finite() || secs <= 0.0 || secs > TIMEOUT_MAX.as_secs_f64() {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("5").ok(), Some(Duration::from_secs(5)));
        assert_eq!(parse_timeout("0.25").ok(), Some(Duration::from_millis(250)));
        for bad in ["0", "-1", "NaN", "inf", "", "3601", "5s"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_types() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            check_content_type(&h).is_ok()
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/vnd.patina+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonx"));
        assert!(check_content_type(&HeaderMap::new()).is_err());
    }

    #[test]
    fn repeated_query_keys_are_kept() {
        let pairs = query_pairs(Some("after=a:1&after=b%3A2&x")).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("after".into(), "a:1".into()),
                ("after".into(), "b:2".into()),
                ("x".into(), "".into())
            ]
        );
    }
}
