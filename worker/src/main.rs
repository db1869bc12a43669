//! `voice-worker`: parse the configuration, set up logging, run until SIGTERM/SIGINT (a second
//! one ends the drain at once).

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use voice_worker::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // providerConfig's logLevel is the backend owner's default; RUST_LOG still wins.
    let level = config.provider_config.log_level.clone();
    let _telemetry = voice_worker::telemetry::init(config.log_json, level.as_deref());
    if !config.provider_config.unused.is_empty() {
        tracing::warn!(
            keys = ?config.provider_config.unused,
            "providerConfig keys the built-in worker does not use (it reads logLevel and jitterBufferMs)"
        );
    }
    // Installed before serving so that an early SIGTERM still drains instead of killing.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let terminate = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
        // The first request drains (up to DRAIN_TIMEOUT_SECONDS); a second one means whoever
        // stops us will not wait that long (a Ctrl-C pressed twice, a node going down), so the
        // worker ends at once rather than be killed mid-write.
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::warn!("second termination request: ending the drain and exiting now");
            std::process::exit(143);
        });
    };
    voice_worker::run(config, terminate).await.map_err(|e| {
        tracing::error!(reason = e.reason(), error = %e, "worker failed");
        anyhow::Error::new(e)
    })
}
