//! [`ApiState`], what every handler sees, and the [`ApiConfig`] it carries.

use std::sync::Arc;

use axum::extract::FromRef;

use crate::cluster::{ClusterView, LoneNode};
use crate::metrics::Metrics;

/// Request bodies larger than this get 413, unless configured otherwise.
pub const BODY_LIMIT_BYTES_DEFAULT: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `api.authz.bearer_token`: when set, every request must carry
    /// `Authorization: Bearer <token>`, else 401.
    pub bearer_token: Option<String>,
    /// Larger request bodies get 413. Default 64 MiB: about 500k short
    /// statements; a larger batch is better split into several requests.
    pub body_limit_bytes: usize,
    /// `api.query_timeout`: a query running longer is interrupted.
    pub query_timeout: std::time::Duration,
    /// `api.subscription_idle_expiry`: a subscription without a listener
    /// for this long is removed; `None`: never.
    pub subscription_idle_expiry: Option<std::time::Duration>,
    /// `api.subscriptions_max`: subscriptions held at most.
    pub subscriptions_max: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            bearer_token: None,
            body_limit_bytes: BODY_LIMIT_BYTES_DEFAULT,
            query_timeout: std::time::Duration::from_secs(30),
            subscription_idle_expiry: Some(patina_subs::IDLE_EXPIRY_DEFAULT),
            subscriptions_max: patina_subs::SUBSCRIPTIONS_MAX_DEFAULT,
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
        subs.set_query_timeout(config.query_timeout);
        subs.set_idle_expiry(config.subscription_idle_expiry);
        subs.set_max_subscriptions(config.subscriptions_max);
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

/// Lets a handler of the full router take the metrics alone, as the
/// metrics-only router hands them.
impl FromRef<ApiState> for Arc<Metrics> {
    fn from_ref(state: &ApiState) -> Arc<Metrics> {
        state.metrics.clone()
    }
}
