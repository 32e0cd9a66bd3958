//! [`Client`]: transactions, queries, health, schema reload and backup over the
//! API, and the [`Statement`]s they carry.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value as Json};

use crate::error::{api_error, bad_line, ClientError};
use crate::lines::{read_json, Lines};

/// One statement, in the API's JSON forms.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    Simple(String),
    Positional(String, Vec<Json>),
    Named(String, serde_json::Map<String, Json>),
}

impl Statement {
    pub(crate) fn to_json(&self) -> Json {
        match self {
            Statement::Simple(sql) => json!(sql),
            Statement::Positional(sql, params) => json!([sql, params]),
            Statement::Named(sql, params) => json!([sql, params]),
        }
    }
}

impl From<&str> for Statement {
    fn from(sql: &str) -> Self {
        Statement::Simple(sql.to_owned())
    }
}

/// The answer to a committed transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct TxResponse {
    pub rows_affected: Vec<u64>,
    pub time: f64,
    pub version: Option<u64>,
    pub actor_id: String,
}

/// A table (`column` `None`), or a column of one, that a destructive
/// reload dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// `regional` or `global`.
    pub db: String,
    pub table: String,
    pub column: Option<String>,
}

/// A query's columns, then its rows as they arrive.
pub struct Rows {
    pub columns: Vec<String>,
    lines: Lines,
}

/// One result cell as the server wrote it. Any JSON value, and also
/// `1e999` / `-1e999`: a REAL ±infinity, which JSON has no literal for and
/// `serde_json::Value` cannot hold.
#[derive(Debug, Clone)]
pub struct Cell(Box<RawValue>);

impl Cell {
    /// The cell's JSON text (`"web"`, `1.5`, `1e999`, `null`).
    pub fn raw(&self) -> &str {
        self.0.get()
    }

    /// The cell as a JSON value; `None` for ±infinity.
    pub fn to_json(&self) -> Option<Json> {
        serde_json::from_str(self.raw()).ok()
    }

    /// The cell's number, ±infinity included; `None` if it is not a number.
    pub fn as_f64(&self) -> Option<f64> {
        let raw = self.raw();
        let numeric = raw.starts_with(|c: char| c == '-' || c.is_ascii_digit());
        numeric.then(|| raw.parse().ok()).flatten()
    }
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.raw())
    }
}

/// `{"row": [id, [cells]]}`, cells kept as written.
#[derive(Deserialize)]
struct RowLine {
    row: (u64, Vec<Box<RawValue>>),
}

impl Rows {
    /// The next row's cells as JSON values, or `None` after the last. A
    /// REAL ±infinity has no JSON value: a row holding one is a
    /// [`ClientError::Protocol`] error naming [`Rows::next_cells`], which
    /// reads it.
    pub async fn next(&mut self) -> Result<Option<Vec<Json>>, ClientError> {
        let Some(cells) = self.next_cells().await? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(cells.len());
        for (i, cell) in cells.iter().enumerate() {
            out.push(cell.to_json().ok_or_else(|| {
                ClientError::Protocol(format!(
                    "column {} holds {cell} (a REAL ±infinity), which a JSON value cannot hold: read rows with Rows::next_cells",
                    i + 1
                ))
            })?);
        }
        Ok(Some(out))
    }

    /// The next row's cells as the server wrote them, or `None` after the
    /// last.
    pub async fn next_cells(&mut self) -> Result<Option<Vec<Cell>>, ClientError> {
        let Some(text) = self.lines.next_text().await? else {
            return Err(ClientError::Protocol(
                "the row stream ended without an eoq line".into(),
            ));
        };
        if let Ok(RowLine { row: (_, cells) }) = serde_json::from_str(&text) {
            return Ok(Some(cells.into_iter().map(Cell).collect()));
        }
        let line: Json = serde_json::from_str(&text)
            .map_err(|e| ClientError::Protocol(format!("bad NDJSON line: {e}")))?;
        if line.get("eoq").is_some() {
            return Ok(None);
        }
        match line.get("error").and_then(Json::as_str) {
            Some(e) => Err(ClientError::Api {
                status: 200,
                message: e.to_owned(),
            }),
            None => Err(bad_line(&line)),
        }
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client of the API at `addr` (`host:port` or `http://host:port`).
    pub fn new(addr: &str) -> Result<Client, ClientError> {
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.trim_end_matches('/').to_owned()
        } else if addr.contains(':') && !addr.contains('/') {
            format!("http://{addr}")
        } else {
            return Err(ClientError::Address(addr.to_owned()));
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Client {
            http,
            base,
            token: None,
        })
    }

    /// Gives up on a request (its answer included) after `timeout`: for
    /// tools that must not wait forever on a node that stopped answering
    /// (a frozen process keeps its sockets open). Not for subscriptions,
    /// which stream for as long as they last.
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self, ClientError> {
        self.http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout)
            .build()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(self)
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    pub(crate) async fn post(
        &self,
        path: &str,
        body: &Json,
    ) -> Result<reqwest::Response, ClientError> {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        self.send(req).await
    }

    pub(crate) async fn get(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn send(
        &self,
        mut req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req.send().await.map_err(|source| ClientError::Connect {
            addr: self.base.clone(),
            source,
        })
    }

    /// `POST /v1/reload`: re-reads the node's schema files and applies
    /// them (additive changes only). A refusal is `ClientError::Api` with
    /// status 400 and the reason, naming table and rule.
    pub async fn reload(&self) -> Result<(), ClientError> {
        self.reload_with(false).await.map(|_| ())
    }

    /// Like [`reload`](Self::reload); with `allow_destructive` the tables
    /// and columns the files no longer declare are dropped on the node,
    /// their data with them. Returns what was dropped.
    pub async fn reload_with(&self, allow_destructive: bool) -> Result<Vec<Dropped>, ClientError> {
        let body = if allow_destructive {
            serde_json::json!({ "allow_destructive": true })
        } else {
            serde_json::json!({})
        };
        let resp = self.post("/v1/reload", &body).await?;
        let status = resp.status().as_u16();
        let json = read_json(resp).await?;
        if status != 200 || json.get("reloaded") != Some(&Json::Bool(true)) {
            return Err(api_error(status, &json));
        }
        let Some(list) = json.get("dropped") else {
            return Ok(Vec::new());
        };
        let text = |v: &Json, key: &str| v.get(key).and_then(Json::as_str).map(str::to_owned);
        list.as_array()
            .ok_or_else(|| bad_line(&json))?
            .iter()
            .map(|d| {
                Ok(Dropped {
                    db: text(d, "db").ok_or_else(|| bad_line(d))?,
                    table: text(d, "table").ok_or_else(|| bad_line(d))?,
                    column: text(d, "column"),
                })
            })
            .collect()
    }

    /// `POST /v1/backup`: the node writes an online backup of its databases
    /// into `to`, a new directory on the node's host (absolute path).
    /// Returns the answer: `{"dir","time","manifest"}`. A refused target
    /// is `ClientError::Api` with status 400 and the reason.
    pub async fn backup(&self, to: &str) -> Result<Json, ClientError> {
        let resp = self.post("/v1/backup", &json!({ "to": to })).await?;
        let status = resp.status().as_u16();
        let json = read_json(resp).await?;
        if status == 200 && json.get("manifest").is_some() {
            return Ok(json);
        }
        Err(api_error(status, &json))
    }

    /// Runs `statements` as one transaction.
    pub async fn transact(&self, statements: &[Statement]) -> Result<TxResponse, ClientError> {
        let body = Json::Array(statements.iter().map(Statement::to_json).collect());
        let resp = self.post("/v1/transactions", &body).await?;
        let status = resp.status().as_u16();
        let json: Json = read_json(resp).await?;
        let results = json.get("results").and_then(Json::as_array);
        if status != 200 {
            let message = results
                .and_then(|r| r.iter().find_map(|x| x.get("error")?.as_str()))
                .or_else(|| json.get("error").and_then(Json::as_str))
                .unwrap_or("no error message")
                .to_owned();
            return Err(ClientError::Api { status, message });
        }
        let results = results.ok_or_else(|| bad_line(&json))?;
        Ok(TxResponse {
            rows_affected: results
                .iter()
                .map(|r| r.get("rows_affected").and_then(Json::as_u64).unwrap_or(0))
                .collect(),
            time: json.get("time").and_then(Json::as_f64).unwrap_or(0.0),
            version: json.get("version").and_then(Json::as_u64),
            actor_id: json
                .get("actor_id")
                .and_then(Json::as_str)
                .unwrap_or("")
                .to_owned(),
        })
    }

    /// Starts a read-only query; rows stream as the server sends them.
    pub async fn query(&self, statement: &Statement) -> Result<Rows, ClientError> {
        let resp = self.post("/v1/queries", &statement.to_json()).await?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(api_error(status, &read_json(resp).await?));
        }
        let mut lines = Lines::new(resp);
        let first = lines
            .next()
            .await?
            .ok_or_else(|| ClientError::Protocol("empty query response".into()))?;
        if let Some(e) = first.get("error").and_then(Json::as_str) {
            return Err(ClientError::Api {
                status,
                message: e.to_owned(),
            });
        }
        let columns = first
            .get("columns")
            .and_then(Json::as_array)
            .ok_or_else(|| bad_line(&first))?
            .iter()
            .map(|c| c.as_str().unwrap_or("").to_owned())
            .collect();
        Ok(Rows { columns, lines })
    }

    /// `GET /v1/health`'s `response` object.
    /// `GET /v1/members`: one JSON object per (member, cluster) the node
    /// knows, itself included.
    pub async fn members(&self) -> Result<Vec<Json>, ClientError> {
        let resp = self.get("/v1/members").await?;
        match read_json(resp).await? {
            Json::Array(members) => Ok(members),
            other => Err(bad_line(&other)),
        }
    }

    /// `GET /v1/regions`: every region the node knows, its leader, global
    /// members and rollup rows.
    pub async fn regions(&self) -> Result<Vec<Json>, ClientError> {
        let resp = self.get("/v1/regions").await?;
        match read_json(resp).await? {
            Json::Array(regions) => Ok(regions),
            other => Err(bad_line(&other)),
        }
    }

    /// `GET /v1/health?QUERY` (thresholds such as `gaps=0&p99_lag=1`): the
    /// HTTP status (200 healthy, else the failure status) and `response`.
    pub async fn health_check(&self, query: &str) -> Result<(u16, Json), ClientError> {
        let path = if query.is_empty() {
            "/v1/health".to_owned()
        } else {
            format!("/v1/health?{query}")
        };
        let resp = self.get(&path).await?;
        let status = resp.status().as_u16();
        let json = read_json(resp).await?;
        match json.get("response") {
            Some(response) => Ok((status, response.clone())),
            None => Err(ClientError::Api {
                status,
                message: json
                    .get("error")
                    .and_then(Json::as_str)
                    .unwrap_or("no response object")
                    .to_owned(),
            }),
        }
    }

    /// `GET /v1/digest[?QUERY]` (`table=NAME`, `bucket=N`): the node's
    /// consistency digest, and the actor id of the node that answered (the
    /// `patina-actor-id` header: the body names no node).
    pub async fn digest(&self, query: &str) -> Result<(String, Json), ClientError> {
        let path = if query.is_empty() {
            "/v1/digest".to_owned()
        } else {
            format!("/v1/digest?{query}")
        };
        let resp = self.get(&path).await?;
        let status = resp.status().as_u16();
        let actor = resp
            .headers()
            .get("patina-actor-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let json = read_json(resp).await?;
        if status != 200 {
            return Err(api_error(status, &json));
        }
        let actor = actor.ok_or_else(|| {
            ClientError::Protocol(
                "the digest came without a patina-actor-id header: is this a Patina node of this release?"
                    .into(),
            )
        })?;
        Ok((actor, json))
    }

    pub async fn health(&self) -> Result<Json, ClientError> {
        let resp = self.get("/v1/health").await?;
        let json = read_json(resp).await?;
        json.get("response").cloned().ok_or_else(|| bad_line(&json))
    }
}
