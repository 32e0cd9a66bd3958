//! [`ClientError`], and the errors made of what the server answered.

use serde_json::Value as Json;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad API address {0:?}: give host:port or http://host:port")]
    Address(String),
    #[error("cannot reach the Patina API at {addr}: {source} (is `patina agent` running?)")]
    Connect {
        addr: String,
        source: reqwest::Error,
    },
    #[error("HTTP {status}: {message}")]
    Api { status: u16, message: String },
    #[error("the server sent something that is not the API's JSON: {0}")]
    Protocol(String),
    #[error("the connection to the API dropped: {0}")]
    Disconnected(String),
    #[error("subscription {id}: {message}")]
    Subscription { id: String, message: String },
    #[error("subscription {id}: gave up re-attaching after {attempts} attempts: {last}")]
    Reconnect {
        id: String,
        attempts: u32,
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// Whether trying again later may succeed (the node is unreachable,
    /// restarting or busy), as opposed to a refusal.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Disconnected(_) => true,
            ClientError::Api { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

pub(crate) fn api_error(status: u16, json: &Json) -> ClientError {
    ClientError::Api {
        status,
        message: json
            .get("error")
            .and_then(Json::as_str)
            .unwrap_or("no error message")
            .to_owned(),
    }
}

pub(crate) fn bad_line(line: &Json) -> ClientError {
    ClientError::Protocol(format!("unexpected line {line}"))
}
