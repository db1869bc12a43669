//! The bot container beside the worker (provider `pipecat`, `spec.workers.bot`): whether it
//! accepts connections. A worker whose bot is gone can run no session, so it says so the way
//! a failing worker does: `/readyz` answers 503 and `grpc.health.v1` NOT_SERVING, and the
//! operator replaces the pod after the backend's `healthCheck.failureThreshold` checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;

use crate::sessions::Sessions;

/// How often the bot's port is tried.
const PERIOD: Duration = Duration::from_secs(1);

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// `host:port` of a `ws://host:port/...` bot URL; `None` when it names no port.
pub fn address(url: &str) -> Option<String> {
    let uri: tokio_tungstenite::tungstenite::http::Uri = url.parse().ok()?;
    let authority = uri.authority()?;
    authority.port_u16()?;
    Some(authority.as_str().to_owned())
}

/// Whether the bot answered the last attempt; false until it first does.
#[derive(Clone, Debug, Default)]
pub struct BotReachable(Arc<AtomicBool>);

impl BotReachable {
    /// The last attempt's answer.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Tries `address` every second until `shutdown`, keeping `reachable` and the gRPC health
/// in step (never turning a draining worker SERVING again).
pub async fn watch(
    address: String,
    reachable: BotReachable,
    reporter: HealthReporter,
    sessions: Arc<Sessions>,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(PERIOD);
    let mut last = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let up = matches!(
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&address)).await,
            Ok(Ok(_))
        );
        reachable.0.store(up, Ordering::Release);
        if last == Some(up) {
            continue;
        }
        last = Some(up);
        if up {
            tracing::info!(bot = %address, "the bot accepts connections");
        } else {
            tracing::warn!(bot = %address, "the bot does not accept connections: no session can run here");
        }
        if sessions.watch().borrow().draining() {
            continue;
        }
        crate::control::report_serving(&reporter, up).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_the_urls_authority_with_its_port() {
        assert_eq!(
            address("ws://10.1.2.3:8765/session").as_deref(),
            Some("10.1.2.3:8765")
        );
        assert_eq!(address("ws://bot/session"), None);
        assert_eq!(address("not a url"), None);
    }
}
