//! The operator's HTTP server: `/metrics`, `/healthz` (liveness: every controller of a leader
//! has beaten recently, see [`crate::heartbeat`]) and `/readyz` (a standby waiting for the
//! lease, or a leader whose caches have synced).
//!
//! A live standby counts as ready: with two replicas behind a PodDisruptionBudget, an unready
//! standby would make every voluntary eviction of the leader wait forever. What readiness
//! guards is a leader that leads before it can see the cluster.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::heartbeat::Heartbeats;
use crate::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    synced: CancellationToken,
    liveness: Liveness,
}

/// What `/healthz` checks: the controllers' heartbeats and how old one may get.
#[derive(Clone, Debug)]
pub struct Liveness {
    /// The controllers' heartbeats (empty while standing by).
    pub heartbeats: Heartbeats,
    /// Age after which a heartbeat is stale.
    pub timeout: Duration,
}

impl Liveness {
    /// `/healthz`'s answer at `now`: 200 "ok", or 500 naming each stale controller.
    pub fn answer(&self, now: Instant) -> (StatusCode, String) {
        let stale = self.heartbeats.stale(now, self.timeout);
        if stale.is_empty() {
            return (StatusCode::OK, "ok".to_owned());
        }
        let names: Vec<String> = stale
            .iter()
            .map(|(name, age)| format!("{name} (last beat {}s ago)", age.as_secs()))
            .collect();
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("controllers not making progress: {}", names.join(", ")),
        )
    }
}

/// Serves until `shutdown` fires. `synced` is cancelled when the caches are ready.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    synced: CancellationToken,
    liveness: Liveness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { s.metrics.render() }),
        )
        .route(
            "/healthz",
            get(|State(s): State<AppState>| async move { s.liveness.answer(Instant::now()) }),
        )
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
        .with_state(AppState {
            metrics,
            synced,
            liveness,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Binds the server's address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_fails_naming_the_controller_whose_heartbeat_is_stale() {
        let heartbeats = Heartbeats::default();
        let start = Instant::now();
        heartbeats.beat_at("allocator", start);
        heartbeats.beat_at("backend-controller", start + Duration::from_secs(30));
        let liveness = Liveness {
            heartbeats,
            timeout: Duration::from_secs(60),
        };
        assert_eq!(
            liveness.answer(start + Duration::from_secs(60)),
            (StatusCode::OK, "ok".to_owned())
        );
        let (code, body) = liveness.answer(start + Duration::from_secs(75));
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body,
            "controllers not making progress: allocator (last beat 75s ago)"
        );
    }
}
