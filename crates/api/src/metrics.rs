//! Prometheus metrics of the API, in a [`Registry`] of their own (one per
//! server, so servers in one process — tests — do not share counters).
//!
//! - `patina_http_requests_total{route,method,status}`
//! - `patina_http_request_duration_seconds{route}` (until the response
//!   head: a streamed body's rows are not in it)
//! - `patina_api_transactions_committed_total`
//! - `patina_api_transactions_failed_total{reason}` — empty, mixed_databases,
//!   statement, timeout, shutting_down
//! - `patina_api_queries_total{outcome}` — started, prepare_error,
//!   not_read_only, timeout, shutting_down
//! - `patina_api_query_rows_streamed_total`
//! - `patina_api_query_stream_errors_total`
//! - `patina_api_bad_requests_total{kind}` — json, shape, content_type,
//!   body_size, auth, query_string, route
//! - `patina_writer_transactions_total{db}`, `patina_writer_commits_total{db}`
//!   — client transactions committed and the SQLite commits (groups) that
//!   carried them; `patina_writer_remote_changes_dropped_total{db}` —
//!   remote changes ignored because they name a table or column a
//!   destructive schema change dropped here (`Metrics::register_node`)
//! - per cluster (label `cluster`): `patina_replication_*` counters, the
//!   `patina_replication_lag_seconds` histogram and `patina_transport_*`
//!   counters (`Metrics::register_cluster`; registered by
//!   `patina_replicator::ClusterRuntime::register` and
//!   `patina_transport::TransportStats::register`)

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::errors::{error_response, BadRequestKind};
use crate::routes;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Why a transaction was not committed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TxFailure {
    Empty,
    Mixed,
    Statement,
    Timeout,
    ShuttingDown,
    StorageFull,
    Stale,
    Returning,
}

/// How a query's start went.
#[derive(Debug, Clone, Copy)]
pub(crate) enum QueryOutcome {
    Started,
    Prepare,
    NotReadOnly,
    Timeout,
    ShuttingDown,
}

type DurationFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The API's metrics and the registry they are encoded from.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: DurationFamily,
    tx_committed: Counter,
    tx_failed: Family<ReasonLabels, Counter>,
    queries: Family<OutcomeLabels, Counter>,
    rows_streamed: Counter,
    stream_errors: Counter,
    bad_requests: Family<KindLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry (prefix `patina`) with the API's metrics in it.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("patina");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            http_requests.clone(),
        );
        let http_duration: DurationFamily = Family::new_with_constructor(|| {
            // 0.5 ms … ~16 s.
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response head, by route",
            http_duration.clone(),
        );
        let api = registry.sub_registry_with_prefix("api");
        let tx_committed = Counter::default();
        api.register(
            "transactions_committed",
            "Transactions committed",
            tx_committed.clone(),
        );
        let tx_failed = Family::<ReasonLabels, Counter>::default();
        api.register(
            "transactions_failed",
            "Transactions not committed, by reason",
            tx_failed.clone(),
        );
        let queries = Family::<OutcomeLabels, Counter>::default();
        api.register(
            "queries",
            "Queries, by how their start went",
            queries.clone(),
        );
        let rows_streamed = Counter::default();
        api.register(
            "query_rows_streamed",
            "Result rows sent by /v1/queries",
            rows_streamed.clone(),
        );
        let stream_errors = Counter::default();
        api.register(
            "query_stream_errors",
            "Queries that failed after their first line",
            stream_errors.clone(),
        );
        let bad_requests = Family::<KindLabels, Counter>::default();
        api.register(
            "bad_requests",
            "Requests refused before reaching the node, by kind",
            bad_requests.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_duration,
            tx_committed,
            tx_failed,
            queries,
            rows_streamed,
            stream_errors,
            bad_requests,
        }
    }

    /// The registry, for other components to register their metrics in
    /// before the server starts.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Everything registered, in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "could not encode metrics");
        }
        merge_families(&out)
    }

    pub(crate) fn tx_committed(&self) {
        self.tx_committed.inc();
    }

    pub(crate) fn tx_failed(&self, why: TxFailure) {
        let reason = match why {
            TxFailure::Empty => "empty",
            TxFailure::Mixed => "mixed_databases",
            TxFailure::Statement => "statement",
            TxFailure::Timeout => "timeout",
            TxFailure::ShuttingDown => "shutting_down",
            TxFailure::StorageFull => "storage_full",
            TxFailure::Stale => "stale",
            TxFailure::Returning => "returning",
        };
        self.tx_failed.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub(crate) fn query(&self, how: QueryOutcome) {
        let outcome = match how {
            QueryOutcome::Started => "started",
            QueryOutcome::Prepare => "prepare_error",
            QueryOutcome::NotReadOnly => "not_read_only",
            QueryOutcome::Timeout => "timeout",
            QueryOutcome::ShuttingDown => "shutting_down",
        };
        self.queries.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub(crate) fn row_streamed(&self) {
        self.rows_streamed.inc();
    }

    pub(crate) fn query_stream_failed(&self) {
        self.stream_errors.inc();
    }

    fn request_done(
        &self,
        route: &'static str,
        method: &'static str,
        response: &Response,
        secs: f64,
    ) {
        let status = response.status().as_u16();
        self.http_requests
            .get_or_create(&HttpLabels {
                route,
                method,
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels { route })
            .observe(secs);
        if let Some(kind) = response.extensions().get::<BadRequestKind>() {
            self.bad_requests
                .get_or_create(&KindLabels { kind: kind.label() })
                .inc();
        }
    }
}

/// The `route` label: a known route, or `unmatched` (bounded cardinality).
fn route_label(path: &str) -> &'static str {
    routes::ALL
        .iter()
        .copied()
        .find(|r| match r.split_once('{') {
            // `/v1/subscriptions/{id}`: one non-empty segment after the prefix.
            Some((prefix, _)) => path
                .strip_prefix(prefix)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/')),
            None => *r == path,
        })
        .unwrap_or("unmatched")
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

/// Middleware: counts and times every request.
pub(crate) async fn track(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let route = route_label(req.uri().path());
    let method = method_label(req.method());
    let started = Instant::now();
    let response = next.run(req).await;
    metrics.request_done(route, method, &response, started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`, in the full router (which hands the metrics out of its
/// state) and alone.
pub(crate) async fn handle(State(metrics): State<Arc<Metrics>>) -> Response {
    let text = metrics.encode();
    if text.is_empty() {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not encode metrics: see the log",
        );
    }
    let mut response = text.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
    response
}

/// A node's writer counters, read at each scrape, labelled with the db.
struct WriterCollector(patina_node::Node);

impl std::fmt::Debug for WriterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriterCollector")
    }
}

/// One family per metric name. A global member registers its two
/// clusters' metrics under the same names with a different `cluster`
/// label, and the encoder writes one family per registration: the same
/// `# HELP`/`# TYPE` twice, which OpenMetrics parsers reject ("clashing
/// name") — the whole scrape would be lost. The samples of every family of
/// a name are gathered under its first header, in order.
fn merge_families(text: &str) -> String {
    let mut order: Vec<&str> = Vec::new();
    let mut families: std::collections::HashMap<&str, (Vec<&str>, Vec<&str>)> =
        std::collections::HashMap::new();
    let mut current: Option<&str> = None;
    let mut tail: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
            .or_else(|| line.strip_prefix("# UNIT "))
        {
            let name = rest.split(' ').next().unwrap_or(rest);
            if current != Some(name) {
                current = Some(name);
                if !families.contains_key(name) {
                    order.push(name);
                }
            }
            let (headers, _) = families.entry(name).or_default();
            // The second registration's header lines are the first's.
            if !headers.contains(&line) {
                headers.push(line);
            }
        } else if line.starts_with("# EOF") || line.is_empty() {
            tail.push(line);
        } else if let Some(name) = current {
            families.entry(name).or_default().1.push(line);
        } else {
            tail.push(line);
        }
    }
    let mut out = String::with_capacity(text.len());
    for name in order {
        let (headers, samples) = &families[name];
        for line in headers.iter().chain(samples) {
            out.push_str(line);
            out.push('\n');
        }
    }
    for line in tail {
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DbLabels {
    db: &'static str,
}

impl prometheus_client::collector::Collector for WriterCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        let stats = [patina_node::DbKind::Regional, patina_node::DbKind::Global]
            .map(|db| (db, self.0.write_stats(db)));
        type Read = fn(&patina_node::WriteStats) -> u64;
        let metrics: [(&str, &str, Read); 3] = [
            (
                "writer_transactions",
                "Client transactions committed, by database",
                |s| s.transactions,
            ),
            (
                "writer_commits",
                "SQLite commits carrying client transactions (group commit), by database",
                |s| s.commits,
            ),
            (
                "writer_remote_changes_dropped",
                "Remote changes ignored because they name a table or column a destructive \
                 schema change dropped on this node, by database",
                |s| s.remote_changes_dropped,
            ),
        ];
        for (name, help, value) in metrics {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (db, s) in &stats {
                ConstCounter::new(value(s))
                    .encode(family.encode_family(&DbLabels { db: db.name() })?)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    /// Adds `node`'s writer counters (`patina_writer_*`, label `db`).
    pub fn register_node(&mut self, node: patina_node::Node) {
        self.registry
            .register_collector(Box::new(WriterCollector(node)));
    }

    /// Adds a cluster's metrics (`patina_replication_*`,
    /// `patina_transport_*`, label `cluster`) to what `/metrics` shows: the
    /// cluster's components register what they count themselves.
    pub fn register_cluster(&mut self, runtime: &patina_replicator::ClusterRuntime) {
        runtime.register(&mut self.registry);
    }

    /// Registers the metrics of a node's clusters (regional, and global on
    /// a global member).
    pub fn register_region(&mut self, runtime: &patina_region::RegionRuntime) {
        runtime.register(&mut self.registry);
    }
}

#[cfg(test)]
mod tests {
    use super::merge_families;

    #[test]
    fn two_registrations_of_a_name_become_one_family() {
        let text = "# HELP a_total Things.\n# TYPE a_total counter\na_total{cluster=\"ams\"} 1\n\
                    # HELP b Other.\n# TYPE b gauge\nb{cluster=\"ams\"} 2\n\
                    # HELP a_total Things.\n# TYPE a_total counter\na_total{cluster=\"global\"} 3\n\
                    # EOF\n";
        assert_eq!(
            merge_families(text),
            "# HELP a_total Things.\n# TYPE a_total counter\na_total{cluster=\"ams\"} 1\n\
             a_total{cluster=\"global\"} 3\n\
             # HELP b Other.\n# TYPE b gauge\nb{cluster=\"ams\"} 2\n# EOF\n"
        );
    }

    #[test]
    fn a_text_without_duplicates_is_unchanged() {
        let text = "# HELP h Lag.\n# TYPE h histogram\nh_bucket{le=\"1.0\"} 0\nh_sum 0.0\nh_count 0\n# EOF\n";
        assert_eq!(merge_families(text), text);
    }
}
