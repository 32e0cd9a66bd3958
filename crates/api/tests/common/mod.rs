//! Test harness: a real node in a temp dir, served on 127.0.0.1:0, and
//! helpers to talk to it over real HTTP.

#![allow(dead_code)]

use std::sync::Arc;

use patina_api::{ApiConfig, ApiState, ClusterView};
use serde_json::Value as Json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const REGIONAL_SCHEMA: &str = "
CREATE TABLE machines (
    id TEXT PRIMARY KEY NOT NULL,
    app TEXT,
    state TEXT,
    n INTEGER,
    r REAL,
    data BLOB
);
CREATE TABLE vals (k INTEGER PRIMARY KEY NOT NULL, v);
";

pub const GLOBAL_SCHEMA: &str = "
CREATE TABLE app_regions (
    app TEXT NOT NULL,
    region TEXT NOT NULL,
    machines INTEGER,
    PRIMARY KEY (app, region)
);
";

pub struct TestServer {
    pub base: String,
    pub node: patina_node::Node,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

#[derive(Default)]
pub struct Options {
    pub config: ApiConfig,
    pub global_member: bool,
    pub cluster: Option<Arc<dyn ClusterView>>,
}

pub async fn start() -> TestServer {
    start_with(Options::default()).await
}

pub async fn start_with(options: Options) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let regional = dir.path().join("regional.sql");
    let global = dir.path().join("global.sql");
    std::fs::write(&regional, REGIONAL_SCHEMA).expect("write schema");
    std::fs::write(&global, GLOBAL_SCHEMA).expect("write schema");
    let node = patina_node::Node::open(patina_node::NodeOptions {
        region: "ams".into(),
        global_member: options.global_member,
        data_dir: dir.path().join("data"),
        schema_paths: vec![regional],
        global_schema_paths: vec![global],
        schema_drops: patina_node::Drops::Refused,
    })
    .expect("open node");
    let subs = patina_subs::Subscriptions::open_for(&node).expect("open subscriptions");
    let mut state = ApiState::new(node.clone(), subs, options.config);
    if let Some(cluster) = options.cluster {
        state = state.with_cluster_view(cluster);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (shutdown, stop) = oneshot::channel::<()>();
    let task = tokio::spawn(patina_api::serve(listener, state, async {
        let _ = stop.await;
    }));
    TestServer {
        base: format!("http://{addr}"),
        node,
        http: reqwest::Client::new(),
        shutdown: Some(shutdown),
        task: Some(task),
        _dir: dir,
    }
}

/// A whole response: status, headers, body.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub version: reqwest::Version,
    pub body: bytes::Bytes,
}

impl Answer {
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// NDJSON lines, each parsed.
    pub fn lines(&self) -> Vec<Json> {
        let text = std::str::from_utf8(&self.body).expect("utf-8");
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "unterminated line: {text:?}"
        );
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
            .collect()
    }

    /// The `error` of a `{"error":"…"}` body (asserting that shape).
    pub fn error(&self) -> String {
        let json = self.json();
        let obj = json.as_object().expect("an object");
        assert_eq!(obj.len(), 1, "only an error key: {json}");
        obj["error"].as_str().expect("error is a string").to_owned()
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The regional schema file the node was started with.
    pub fn regional_schema_path(&self) -> std::path::PathBuf {
        self._dir.path().join("regional.sql")
    }

    pub fn actor(&self) -> String {
        self.node.actor_id().to_string()
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let version = response.version();
        let body = response.bytes().await.expect("body");
        Answer {
            status,
            headers,
            version,
            body,
        }
    }

    pub async fn post_json(&self, path: &str, body: &Json) -> Answer {
        self.post_raw(path, body.to_string()).await
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Answer {
        self.send(
            self.http
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(self.url(path))).await
    }

    /// Runs a transaction and asserts it committed.
    pub async fn exec(&self, statements: Json) -> Json {
        let answer = self.post_json("/v1/transactions", &statements).await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        answer.json()
    }

    /// Runs a query and returns its row cells (asserting columns…eoq).
    pub async fn rows(&self, statement: Json) -> Vec<Json> {
        let answer = self.post_json("/v1/queries", &statement).await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        let lines = answer.lines();
        assert!(lines[0].get("columns").is_some(), "{:?}", lines[0]);
        assert!(
            lines.last().unwrap().get("eoq").is_some(),
            "{:?}",
            lines.last()
        );
        lines[1..lines.len() - 1]
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let row = l["row"].as_array().expect("a row line");
                assert_eq!(row[0], serde_json::json!(i + 1), "row ids count from 1");
                row[1].clone()
            })
            .collect()
    }

    /// Stops the server and waits for `serve` to return.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("serve task"),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
    }
}
