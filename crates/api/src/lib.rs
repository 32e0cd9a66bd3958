//! `patina-api`: Patina's HTTP API — Corrosion's v1 API, wire-compatible,
//! plus Patina's own endpoints and Prometheus metrics. Only this crate
//! knows HTTP; it calls a [`patina_node::Node`] and
//! [`patina_subs::Subscriptions`] for everything else, and reads cluster
//! facts (members, regions, health numbers) through the [`ClusterView`] seam.
//! It never writes a database except through `Node::transact`.
//!
//! [`router`] builds the routes; [`serve`] runs them on one listener that
//! speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c) alike.
//!
//! # Endpoints
//! - `POST /v1/transactions[?timeout=SECONDS]` — statements in one transaction.
//! - `POST /v1/queries[?timeout=SECONDS][&after=[global:]ACTOR:VERSION…]` — NDJSON rows;
//!   `after=` waits for a version of `regional.db`, or with `global:` of `global.db`
//!   (each database numbers its versions separately).
//! - `GET /v1/health[?gaps=N&p99_lag=SECONDS&max_queue=N&failure_status=CODE]`.
//! - `POST /v1/table_stats` — row counts of tables.
//! - `GET /v1/members`, `GET /v1/regions` — Patina additions, shapes below.
//! - `GET /metrics` — Prometheus (OpenMetrics) text.
//! - `POST /v1/subscriptions[?from=N][&skip_rows=true]`,
//!   `GET /v1/subscriptions/{id}[?from=N][&skip_rows=true]`,
//!   `POST /v1/updates/{table}` — NDJSON streams (`subscriptions.rs`).
//! - `POST /v1/reload` — Patina addition: re-reads and applies the schema
//!   files (as SIGHUP does); body empty or `{}`. 200 `{"reloaded":true}`,
//!   or 400 `{"error":"…"}` naming the table and the rule when the change
//!   is not additive (nothing is changed then), 503 while stopping.
//!
//! # Decisions api.md leaves open
//! - **Transaction timeout.** `?timeout=S` (seconds, fractional allowed,
//!   `0 < S ≤ 3600`) bounds how long the request waits for the commit. When
//!   it runs out the answer is **504** in the transactions shape,
//!   `{"results":[{"error":"…"}],"time":…,"version":null,"actor_id":"…"}`.
//!   A write is never half-applied — its statements commit together or not
//!   at all — but a timed-out transaction is *not* cancelled: it may still
//!   commit after the 504. Check for its effects before retrying. (504, not
//!   408: 408 tells a client its request was never processed, and clients
//!   retry it automatically, which could apply the write twice.) Without
//!   `timeout` the request waits for the commit however long it takes.
//! - **Query timeout.** `?timeout=S` (default 5 s, same range) bounds what
//!   happens before the first line: waiting for every `after=` version and
//!   for a free read connection. Running out gives 504 `{"error":"…"}`.
//!   Once rows flow there is no limit. `eoq.time` is the seconds from the
//!   start of the query to its last row.
//! - **Statement errors.** In a transaction of several statements the
//!   error reads `statement I of N: <SQLite's message>` (I counts from 1);
//!   a lone statement's error is SQLite's message alone.
//! - **Parameters.** Per api.md; in addition an empty array is an empty
//!   BLOB, an integer beyond i64 becomes REAL (as in Corrosion), a named
//!   parameter key without its sigil (`:`, `@`, `$`) is refused with 422,
//!   and `{"query", "params", "named_params"}` with both kinds of
//!   parameters non-null is refused with 422. Unknown object keys and
//!   unknown query-string parameters are ignored.
//! - **Query-string errors** (a bad `timeout`, `after`, health threshold)
//!   → 400 `{"error":"…"}`.
//! - **Auth** (when a bearer token is configured) applies to every path,
//!   unknown ones included, before anything else is looked at.
//! - **Unknown path** → 404, **wrong method** → 405, both `{"error":"…"}`.
//!
//! # `GET /v1/members`
//! One entry per (member, cluster) this node knows: a global member
//! appears once for its region and once for `global`.
//! ```text
//! [{"actor_id":"d5f1…f2","addr":null,"region":"ams","cluster":"ams",
//!   "state":"alive","rtt_ms":null}]
//! ```
//! `addr` is the gossip address (`"10.0.0.1:7878"`, null until there is
//! a transport), `state` is `alive`, `suspect` or `down`, `rtt_ms` a float
//! or null (unmeasured; always null for the node itself).
//!
//! # `GET /v1/regions`
//! ```text
//! [{"region":"ams","leader":"d5f1…f2","global_members":["d5f1…f2"],
//!   "last_rollup":null,"rollups":{}}]
//! ```
//! `leader` is the live global member with the smallest actor id, or null;
//! `last_rollup` the unix time (seconds, float) of the region's last
//! rollup, or null; `rollups` maps each rollup name to its row count.

mod auth;
mod body;
mod cluster;
mod errors;
mod health;
mod json;
mod metrics;
mod queries;
mod reload;
mod subscriptions;
mod transactions;

use std::future::Future;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

pub use cluster::{
    ClusterView, HealthReport, LoneNode, MemberInfo, MemberState, RegionInfo, RegionView,
};
pub use metrics::Metrics;

/// Request bodies larger than this get 413, unless configured otherwise.
pub const BODY_LIMIT_BYTES_DEFAULT: usize = 64 * 1024 * 1024;

/// The routes, in one place: the router and the metrics' `route` label
/// both use them.
pub(crate) mod routes {
    pub const TRANSACTIONS: &str = "/v1/transactions";
    pub const QUERIES: &str = "/v1/queries";
    pub const HEALTH: &str = "/v1/health";
    pub const TABLE_STATS: &str = "/v1/table_stats";
    pub const MEMBERS: &str = "/v1/members";
    pub const REGIONS: &str = "/v1/regions";
    pub const METRICS: &str = "/metrics";
    pub const SUBSCRIPTIONS: &str = "/v1/subscriptions";
    pub const SUBSCRIPTION: &str = "/v1/subscriptions/{id}";
    pub const UPDATES: &str = "/v1/updates/{table}";
    pub const RELOAD: &str = "/v1/reload";
    pub const ALL: &[&str] = &[
        RELOAD,
        SUBSCRIPTIONS,
        SUBSCRIPTION,
        UPDATES,
        TRANSACTIONS,
        QUERIES,
        HEALTH,
        TABLE_STATS,
        MEMBERS,
        REGIONS,
        METRICS,
    ];
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `api.authz.bearer_token`: when set, every request must carry
    /// `Authorization: Bearer <token>`, else 401.
    pub bearer_token: Option<String>,
    /// Larger request bodies get 413. Default 64 MiB: about 500k short
    /// statements; a larger batch is better split into several requests.
    pub body_limit_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            bearer_token: None,
            body_limit_bytes: BODY_LIMIT_BYTES_DEFAULT,
        }
    }
}

/// What every handler sees; cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub node: patina_node::Node,
    pub subs: Arc<patina_subs::Subscriptions>,
    pub config: Arc<ApiConfig>,
    pub metrics: Arc<Metrics>,
    /// Members, regions and health numbers. [`LoneNode`] until the agent
    /// has membership to report.
    pub cluster: Arc<dyn ClusterView>,
}

impl ApiState {
    /// State for `node` alone (with its subscriptions): fresh metrics,
    /// [`LoneNode`] as cluster view.
    pub fn new(
        node: patina_node::Node,
        subs: patina_subs::Subscriptions,
        config: ApiConfig,
    ) -> ApiState {
        ApiState {
            cluster: Arc::new(LoneNode::new(node.clone())),
            node,
            subs: Arc::new(subs),
            config: Arc::new(config),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Replaces the cluster view (membership, lag, queue numbers).
    pub fn with_cluster_view(mut self, cluster: Arc<dyn ClusterView>) -> ApiState {
        self.cluster = cluster;
        self
    }

    /// Replaces the metrics (e.g. ones whose registry other components
    /// registered into too).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> ApiState {
        self.metrics = metrics;
        self
    }
}

/// Every endpoint of this crate, with auth, metrics and panic containment.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(routes::TRANSACTIONS, post(transactions::handle))
        .route(routes::QUERIES, post(queries::handle))
        .route(routes::HEALTH, get(health::health))
        .route(routes::TABLE_STATS, post(queries::table_stats))
        .route(routes::MEMBERS, get(health::members))
        .route(routes::REGIONS, get(health::regions))
        .route(routes::METRICS, get(metrics::handle))
        .route(routes::SUBSCRIPTIONS, post(subscriptions::subscribe))
        .route(routes::SUBSCRIPTION, get(subscriptions::attach))
        .route(routes::UPDATES, post(subscriptions::updates))
        .route(routes::RELOAD, post(reload::handle))
        .fallback(errors::not_found)
        .method_not_allowed_fallback(errors::method_not_allowed)
        // Innermost first: a panic becomes a 500 that auth and metrics see.
        .layer(errors::catch_panic_layer())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_bearer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .with_state(state)
}

/// `GET /metrics` alone (for `telemetry.prometheus_addr`), without auth.
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(routes::METRICS, get(metrics::handle_alone))
        .fallback(errors::not_found)
        .with_state(metrics)
}

/// Serves [`router`] on `listener` until `shutdown` completes, then lets
/// requests in flight finish. One listener speaks HTTP/1.1 and h2c.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(state), shutdown).await
}

/// Serves any router the way [`serve`] does (TCP_NODELAY, so streamed
/// lines leave at once; HTTP/1.1 and h2c; graceful shutdown).
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
