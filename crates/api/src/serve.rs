//! Running a router on a listener: HTTP/1.1 and h2c on one port.

use std::future::Future;

use axum::Router;

use crate::router::router;
use crate::state::ApiState;

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
