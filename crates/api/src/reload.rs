//! `POST /v1/reload` (Patina addition): re-reads the schema files named by
//! the config and applies them, as SIGHUP does. Body: empty, `{}`, or
//! `{"allow_destructive": true}` — a destructive reload, which drops the
//! tables and columns the files no longer declare (docs/crr.md); any other
//! key or value is refused (400), so a misspelled flag never reloads
//! without it. 200 `{"reloaded":true}`, plus `"dropped":[{"db","table",
//! "column"}…]` when something was dropped; a refused schema (a removal
//! without the flag, a rename, a broken file) → 400 `{"error":"…"}` naming
//! the table and the rule, with nothing changed; a stopping node → 503.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use patina_node::{Drops, NodeError};
use serde_json::{json, Value as Json};

use crate::body::{clip, small_body};
use crate::errors::{error_response, ApiError};
use crate::state::ApiState;

/// A reload body is a flag or two; anything longer is not one.
const BODY_LIMIT: usize = 4096;

const SHAPE: &str = "POST /v1/reload takes an empty body, {} or {\"allow_destructive\": true}";

/// Whether the body asks for a destructive reload.
fn drops_of(body: &[u8]) -> Result<Drops, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Drops::Refused);
    }
    let value: Json =
        serde_json::from_slice(body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    // serde_json keeps the last of repeated keys: `{"allow_destructive":
    // false, "allow_destructive": true}` must not drop anything quietly.
    if let Some(key) = repeated_key(body) {
        return Err(ApiError::BadRequest(format!(
            "key {:?} appears twice: {SHAPE}",
            clip(&key)
        )));
    }
    let Json::Object(fields) = value else {
        return Err(ApiError::BadRequest(SHAPE.into()));
    };
    let mut drops = Drops::Refused;
    for (key, value) in fields {
        match (key.as_str(), value) {
            ("allow_destructive", Json::Bool(true)) => drops = Drops::Allowed,
            ("allow_destructive", Json::Bool(false)) => {}
            ("allow_destructive", other) => {
                return Err(ApiError::BadRequest(format!(
                    "allow_destructive is {}, not true or false: {SHAPE}",
                    clip(&other.to_string())
                )))
            }
            (other, _) => {
                return Err(ApiError::BadRequest(format!(
                    "unknown key {:?}: {SHAPE}",
                    clip(other)
                )))
            }
        }
    }
    Ok(drops)
}

/// The first key an object body repeats at its top level (the body is
/// known to be JSON).
fn repeated_key(body: &[u8]) -> Option<String> {
    struct Keys(Option<String>);
    impl<'de> serde::de::Visitor<'de> for &mut Keys {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                if !seen.insert(key.clone()) && self.0.is_none() {
                    self.0 = Some(key);
                }
            }
            Ok(())
        }
    }
    let mut keys = Keys(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    serde::Deserializer::deserialize_map(&mut de, &mut keys).ok()?;
    keys.0
}

pub(crate) async fn handle(
    State(state): State<ApiState>,
    req: Request,
) -> Result<Response, ApiError> {
    let body = small_body(req, BODY_LIMIT).await?;
    let drops = drops_of(&body)?;
    Ok(match state.node.reload_schema_with(drops).await {
        Ok(dropped) => {
            tracing::info!(
                destructive = drops == Drops::Allowed,
                dropped = dropped.len(),
                "schema files reloaded (POST /v1/reload)"
            );
            let mut answer = json!({ "reloaded": true });
            if !dropped.is_empty() {
                let dropped: Vec<Json> = dropped
                    .iter()
                    .map(|d| json!({"db": d.db.name(), "table": d.table, "column": d.column}))
                    .collect();
                answer["dropped"] = Json::Array(dropped);
            }
            axum::Json(answer).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_key_is_refused() {
        let err = drops_of(br#"{"allow_destructive":false,"allow_destructive":true}"#);
        assert!(
            matches!(&err, Err(ApiError::BadRequest(m)) if m.contains("appears twice")),
            "{err:?}"
        );
        assert_eq!(repeated_key(br#"{"a":{"b":1,"b":2}}"#), None);
    }

    #[test]
    fn bodies() {
        assert_eq!(drops_of(b"").unwrap(), Drops::Refused);
        assert_eq!(drops_of(b" \n").unwrap(), Drops::Refused);
        assert_eq!(drops_of(b"{}").unwrap(), Drops::Refused);
        assert_eq!(
            drops_of(br#"{"allow_destructive":false}"#).unwrap(),
            Drops::Refused
        );
        assert_eq!(
            drops_of(br#"{"allow_destructive":true}"#).unwrap(),
            Drops::Allowed
        );
        for bad in [
            &br#"{"allow_destructive":"yes"}"#[..],
            br#"{"allow_destructiv":true}"#,
            br#"{"allow_destructive":true,"x":1}"#,
            b"[1]",
            b"{",
        ] {
            assert!(drops_of(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
