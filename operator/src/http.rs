//! The operator's HTTP server: `/metrics`, `/healthz` (the process runs) and `/readyz`
//! (a standby waiting for the lease, or a leader whose caches have synced).
//!
//! A live standby counts as ready: with two replicas behind a PodDisruptionBudget, an unready
//! standby would make every voluntary eviction of the leader wait forever. What readiness
//! guards is a leader that leads before it can see the cluster.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    synced: CancellationToken,
}

/// Serves until `shutdown` fires. `synced` is cancelled when the caches are ready.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    synced: CancellationToken,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { s.metrics.render() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move {
                if s.synced.is_cancelled() {
                    (StatusCode::OK, "ready")
                } else if s.metrics.leader.get() == 0 {
                    (StatusCode::OK, "standby")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "leading, caches not synced",
                    )
                }
            }),
        )
        .with_state(AppState { metrics, synced });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Binds the server's address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
