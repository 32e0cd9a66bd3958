//! Subscriptions (`POST /v1/subscriptions`, `GET /v1/subscriptions/{id}`):
//! a snapshot then change events, resumed transparently.
//!
//! [`Subscription::next`] hides dropped connections: when the stream ends,
//! fails, or the server sends the "fell … behind" error line of a slow
//! subscriber, it re-attaches with `GET /v1/subscriptions/{id}?from=<last
//! change id seen>` (bounded retries with backoff, [`Reconnect`]) and drops
//! any event it already handed out, so the caller sees change ids
//! increasing by exactly 1. What cannot be resumed is an error: a `from`
//! older than the server retains, an unknown id, a connection lost before
//! the snapshot's `eoq` (the snapshot is not resumable: subscribe again).

use std::time::Duration;

use serde_json::Value as Json;

use crate::client::{Client, Statement};
use crate::error::{api_error, bad_line, ClientError};
use crate::lines::{read_json, Lines};

/// What the server says about a row in a change event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Insert => "insert",
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
        }
    }
}

/// One event of a subscription stream.
#[derive(Debug, Clone, PartialEq)]
pub enum SubEvent {
    /// The result's column names (first line of a snapshot).
    Columns(Vec<String>),
    /// A snapshot row with the subscription's own stable row id.
    Row { row_id: u64, cells: Vec<Json> },
    /// End of the snapshot; `change_id` is the last change it includes.
    EndOfQuery { change_id: u64 },
    /// A change after the snapshot; ids increase by exactly 1. A delete
    /// carries the row's last values.
    Change {
        kind: ChangeKind,
        row_id: u64,
        cells: Vec<Json>,
        change_id: u64,
    },
}

/// One parsed line of a subscription stream.
#[derive(Debug, Clone, PartialEq)]
pub enum SubLine {
    Event(SubEvent),
    /// `{"error":"…"}`: the server ends the stream after it.
    Error(String),
}

/// Parses one NDJSON line of a subscription stream.
pub fn parse_sub_line(line: &Json) -> Result<SubLine, ClientError> {
    let bad = || bad_line(line);
    let u64_at = |v: &Json, i: usize| v.get(i).and_then(Json::as_u64);
    let cells_at = |v: &Json, i: usize| v.get(i).and_then(Json::as_array).cloned();
    if let Some(change) = line.get("change") {
        let kind = match change.get(0).and_then(Json::as_str) {
            Some("insert") => ChangeKind::Insert,
            Some("update") => ChangeKind::Update,
            Some("delete") => ChangeKind::Delete,
            _ => return Err(bad()),
        };
        return Ok(SubLine::Event(SubEvent::Change {
            kind,
            row_id: u64_at(change, 1).ok_or_else(bad)?,
            cells: cells_at(change, 2).ok_or_else(bad)?,
            change_id: u64_at(change, 3).ok_or_else(bad)?,
        }));
    }
    if let Some(row) = line.get("row") {
        return Ok(SubLine::Event(SubEvent::Row {
            row_id: u64_at(row, 0).ok_or_else(bad)?,
            cells: cells_at(row, 1).ok_or_else(bad)?,
        }));
    }
    if let Some(columns) = line.get("columns").and_then(Json::as_array) {
        let names = columns
            .iter()
            .map(|c| c.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?;
        return Ok(SubLine::Event(SubEvent::Columns(names)));
    }
    if let Some(eoq) = line.get("eoq") {
        let change_id = eoq.get("change_id").and_then(Json::as_u64).ok_or_else(|| {
            ClientError::Protocol(format!(
                "eoq without a change_id (not a Patina server?): {line}"
            ))
        })?;
        return Ok(SubLine::Event(SubEvent::EndOfQuery { change_id }));
    }
    match line.get("error").and_then(Json::as_str) {
        Some(e) => Ok(SubLine::Error(e.to_owned())),
        None => Err(bad()),
    }
}

/// The server's error line for a subscriber that fell behind its live
/// buffer (`… re-attach with from=N`): resumable, unlike a too-old `from`.
fn is_slow_subscriber_error(message: &str) -> bool {
    message.contains("behind") && message.contains("re-attach with from=")
}

/// How a [`Subscription`] re-attaches after losing its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// Consecutive attempts without receiving an event before giving up;
    /// 0 disables re-attaching (a stream that ends is then `Ok(None)`).
    pub attempts: u32,
    /// Wait before the first attempt; doubled after each failure…
    pub delay_first: Duration,
    /// …up to this.
    pub delay_max: Duration,
}

impl Default for Reconnect {
    /// 10 attempts, 100 ms doubling to 2 s: about 13 s in all, enough for
    /// a node restart.
    fn default() -> Self {
        Reconnect {
            attempts: 10,
            delay_first: Duration::from_millis(100),
            delay_max: Duration::from_secs(2),
        }
    }
}

/// An open subscription; see the module docs for what is resumed.
pub struct Subscription {
    client: Client,
    id: String,
    hash: String,
    lines: Option<Lines>,
    /// The last change id handed out (or the snapshot's), the resume point.
    last_change_id: Option<u64>,
    reconnect: Reconnect,
    /// Re-attach attempts since the last event.
    failures: u32,
    ended: bool,
}

impl Client {
    /// `POST /v1/subscriptions`: subscribes to a read-only SELECT; the
    /// stream starts with the snapshot.
    pub async fn subscribe(&self, statement: &Statement) -> Result<Subscription, ClientError> {
        self.subscribe_from(statement, None).await
    }

    /// As [`Client::subscribe`]; with `from = Some(N)` the subscription
    /// must already exist and only changes after N are sent.
    pub async fn subscribe_from(
        &self,
        statement: &Statement,
        from: Option<u64>,
    ) -> Result<Subscription, ClientError> {
        let path = match from {
            Some(n) => format!("/v1/subscriptions?from={n}"),
            None => "/v1/subscriptions".to_owned(),
        };
        let resp = self.post(&path, &statement.to_json()).await?;
        Subscription::start(self.clone(), resp, from).await
    }

    /// `GET /v1/subscriptions/{id}`: re-attaches by id; without `from` the
    /// stream starts with a fresh snapshot, with `from = Some(N)` it holds
    /// the changes after N.
    pub async fn attach(&self, id: &str, from: Option<u64>) -> Result<Subscription, ClientError> {
        let resp = self.get(&attach_path(id, from)).await?;
        Subscription::start(self.clone(), resp, from).await
    }
}

fn attach_path(id: &str, from: Option<u64>) -> String {
    match from {
        Some(n) => format!("/v1/subscriptions/{id}?from={n}"),
        None => format!("/v1/subscriptions/{id}"),
    }
}

/// Checks the status and reads the id and hash headers.
async fn open(resp: reqwest::Response) -> Result<(String, String, Lines), ClientError> {
    let status = resp.status().as_u16();
    if status != 200 {
        let json = read_json(resp).await?;
        return Err(api_error(status, &json));
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let id = header("corro-query-id")
        .ok_or_else(|| ClientError::Protocol("no corro-query-id header".into()))?;
    let hash = header("corro-query-hash").unwrap_or_default();
    Ok((id, hash, Lines::new(resp)))
}

impl Subscription {
    async fn start(
        client: Client,
        resp: reqwest::Response,
        from: Option<u64>,
    ) -> Result<Subscription, ClientError> {
        let (id, hash, lines) = open(resp).await?;
        Ok(Subscription {
            client,
            id,
            hash,
            lines: Some(lines),
            last_change_id: from,
            reconnect: Reconnect::default(),
            failures: 0,
            ended: false,
        })
    }

    /// Replaces the re-attach policy.
    pub fn with_reconnect(mut self, reconnect: Reconnect) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// The subscription id (`corro-query-id`), for [`Client::attach`].
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The statement hash (`corro-query-hash`).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The last change id handed out (the snapshot's after its `eoq`).
    pub fn last_change_id(&self) -> Option<u64> {
        self.last_change_id
    }

    /// The next event; `Ok(None)` only when re-attaching is disabled and
    /// the stream ended.
    pub async fn next(&mut self) -> Result<Option<SubEvent>, ClientError> {
        Ok(self.next_line().await?.map(|(event, _)| event))
    }

    /// The next event with the line exactly as the server sent it.
    pub async fn next_line(&mut self) -> Result<Option<(SubEvent, Json)>, ClientError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let Some(lines) = &mut self.lines else {
                self.reattach().await?;
                continue;
            };
            let lost = match lines.next().await {
                Ok(Some(line)) => match parse_sub_line(&line)? {
                    SubLine::Event(event) => {
                        if self.accept(&event)? {
                            self.failures = 0;
                            return Ok(Some((event, line)));
                        }
                        continue;
                    }
                    SubLine::Error(message) if is_slow_subscriber_error(&message) => {
                        ClientError::Subscription {
                            id: self.id.clone(),
                            message,
                        }
                    }
                    SubLine::Error(message) => {
                        self.lines = None;
                        self.ended = true;
                        return Err(ClientError::Subscription {
                            id: self.id.clone(),
                            message,
                        });
                    }
                },
                Ok(None) => ClientError::Disconnected("the stream ended".into()),
                Err(e @ ClientError::Disconnected(_)) => e,
                Err(e) => return Err(e),
            };
            self.lines = None;
            if self.reconnect.attempts == 0 {
                self.ended = true;
                return match lost {
                    ClientError::Disconnected(_) => Ok(None),
                    e => Err(e),
                };
            }
        }
    }

    /// Tracks the resume point; false for an event already handed out.
    fn accept(&mut self, event: &SubEvent) -> Result<bool, ClientError> {
        match *event {
            SubEvent::EndOfQuery { change_id } => self.last_change_id = Some(change_id),
            SubEvent::Change { change_id, .. } => {
                if let Some(last) = self.last_change_id {
                    if change_id <= last {
                        return Ok(false);
                    }
                    if change_id != last + 1 {
                        return Err(ClientError::Protocol(format!(
                            "subscription {}: change {change_id} follows {last}; changes are missing",
                            self.id
                        )));
                    }
                }
                self.last_change_id = Some(change_id);
            }
            SubEvent::Columns(_) | SubEvent::Row { .. } => {}
        }
        Ok(true)
    }

    /// `GET /v1/subscriptions/{id}?from=<last>`, with backoff.
    async fn reattach(&mut self) -> Result<(), ClientError> {
        let Some(from) = self.last_change_id else {
            self.ended = true;
            return Err(ClientError::Subscription {
                id: self.id.clone(),
                message: "the connection dropped before the snapshot ended; subscribe again".into(),
            });
        };
        let path = attach_path(&self.id, Some(from));
        let mut delay = self.reconnect.delay_first;
        for _ in 0..self.reconnect.failures_left(self.failures) {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.reconnect.delay_max);
            self.failures += 1;
            let opened = match self.client.get(&path).await {
                Ok(resp) => open(resp).await,
                Err(e) => Err(e),
            };
            match opened {
                Ok((_, _, lines)) => {
                    self.lines = Some(lines);
                    return Ok(());
                }
                Err(e) if e.is_transient() && self.failures < self.reconnect.attempts => {}
                Err(e) if e.is_transient() => return Err(self.give_up(e)),
                Err(e) => {
                    self.ended = true;
                    return Err(e);
                }
            }
        }
        Err(self.give_up(ClientError::Disconnected(
            "re-attached streams kept dropping before any event".into(),
        )))
    }

    fn give_up(&mut self, last: ClientError) -> ClientError {
        self.ended = true;
        ClientError::Reconnect {
            id: self.id.clone(),
            attempts: self.failures,
            last: Box::new(last),
        }
    }
}

impl Reconnect {
    fn failures_left(&self, failures: u32) -> u32 {
        self.attempts.saturating_sub(failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(line: Json) -> SubLine {
        parse_sub_line(&line).unwrap()
    }

    #[test]
    fn parses_every_line_kind() {
        assert_eq!(
            parse(json!({"columns":["id","app"]})),
            SubLine::Event(SubEvent::Columns(vec!["id".into(), "app".into()]))
        );
        assert_eq!(
            parse(json!({"row":[3,["m1",null]]})),
            SubLine::Event(SubEvent::Row {
                row_id: 3,
                cells: vec![json!("m1"), Json::Null]
            })
        );
        assert_eq!(
            parse(json!({"eoq":{"time":0.001,"change_id":7}})),
            SubLine::Event(SubEvent::EndOfQuery { change_id: 7 })
        );
        for (text, kind) in [
            ("insert", ChangeKind::Insert),
            ("update", ChangeKind::Update),
            ("delete", ChangeKind::Delete),
        ] {
            assert_eq!(
                parse(json!({"change":[text, 2, ["m2", 1.5], 12]})),
                SubLine::Event(SubEvent::Change {
                    kind,
                    row_id: 2,
                    cells: vec![json!("m2"), json!(1.5)],
                    change_id: 12
                })
            );
            assert_eq!(kind.as_str(), text);
        }
        assert_eq!(
            parse(json!({"error":"too slow"})),
            SubLine::Error("too slow".into())
        );
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        for line in [
            json!({}),
            json!([1, 2]),
            json!({"change":["upsert", 1, [], 1]}),
            json!({"change":["insert", -1, [], 1]}),
            json!({"change":["insert", 1, "x", 1]}),
            json!({"change":["insert", 1, []]}),
            json!({"row":[1]}),
            json!({"row":"x"}),
            json!({"columns":[1]}),
            json!({"eoq":{"time":0.1}}),
            json!({"error":1}),
        ] {
            assert!(
                matches!(parse_sub_line(&line), Err(ClientError::Protocol(_))),
                "{line}"
            );
        }
    }

    #[test]
    fn slow_subscriber_errors_are_told_from_too_old_ones() {
        assert!(is_slow_subscriber_error(
            "this subscriber fell 3 events behind and was disconnected: re-attach with from=9"
        ));
        assert!(!is_slow_subscriber_error(
            "change id 0 is older than what subscription x retains (its oldest change is 51): \
             re-attach without from= for a fresh snapshot"
        ));
    }

    #[test]
    fn the_default_backoff_is_bounded() {
        let r = Reconnect::default();
        let mut delay = r.delay_first;
        let mut total = Duration::ZERO;
        for _ in 0..r.attempts {
            total += delay;
            delay = (delay * 2).min(r.delay_max);
        }
        assert!(total < Duration::from_secs(15), "{total:?}");
        assert_eq!(r.failures_left(10), 0);
    }
}
