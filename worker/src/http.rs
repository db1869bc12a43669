//! The worker's small HTTP server: liveness, readiness and Prometheus metrics for the
//! kubelet and for scrapers, which speak HTTP rather than gRPC.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::sessions::Sessions;

/// What the HTTP handlers read.
#[derive(Clone, Debug)]
pub struct HttpState {
    sessions: Arc<Sessions>,
    started: Arc<AtomicBool>,
    bot: Option<crate::bot_watch::BotReachable>,
}

impl HttpState {
    /// Handler state; `started` turns true once both servers listen.
    pub fn new(sessions: Arc<Sessions>, started: Arc<AtomicBool>) -> Self {
        Self {
            sessions,
            started,
            bot: None,
        }
    }

    /// Ready only while the bot beside the worker answers too (`spec.workers.bot`).
    pub fn with_bot(mut self, bot: crate::bot_watch::BotReachable) -> Self {
        self.bot = Some(bot);
        self
    }
}

/// The routes: `/healthz`, `/readyz`, `/metrics`.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Alive as long as the process answers: a draining worker must not be restarted.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready only while the worker accepts new sessions, so that nothing routes new work
/// to a worker that is starting up or draining.
async fn readyz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if !state.started.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n");
    }
    if state.sessions.watch().borrow().draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    if state.bot.as_ref().is_some_and(|bot| !bot.get()) {
        return (StatusCode::SERVICE_UNAVAILABLE, "bot unreachable\n");
    }
    (StatusCode::OK, "ready\n")
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    match state.sessions.metrics().render() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        ),
        Err(e) => {
            tracing::error!(error = %e, "rendering metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("rendering metrics failed: {e}\n"),
            )
        }
    }
}
