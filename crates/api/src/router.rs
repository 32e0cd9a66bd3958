//! The routes wired to their handlers, behind auth, metrics and panic
//! containment.

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::metrics::Metrics;
use crate::routes;
use crate::state::ApiState;
use crate::{
    auth, backup, digest, errors, health, metrics, queries, reload, subscriptions, transactions,
};

/// Every endpoint of this crate, with auth, metrics and panic containment.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(routes::TRANSACTIONS, post(transactions::handle))
        .route(routes::QUERIES, post(queries::handle))
        .route(routes::HEALTH, get(health::health))
        .route(routes::TABLE_STATS, post(queries::table_stats))
        .route(routes::MEMBERS, get(health::members))
        .route(routes::REGIONS, get(health::regions))
        .route(routes::DIGEST, get(digest::handle))
        .route(routes::METRICS, get(metrics::handle))
        .route(routes::SUBSCRIPTIONS, post(subscriptions::subscribe))
        .route(
            routes::SUBSCRIPTION,
            get(subscriptions::attach).delete(subscriptions::remove),
        )
        .route(routes::UPDATES, post(subscriptions::updates))
        .route(routes::RELOAD, post(reload::handle))
        .route(routes::BACKUP, post(backup::handle))
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
        .route(routes::METRICS, get(metrics::handle))
        .fallback(errors::not_found)
        .with_state(metrics)
}
