//! `voice-worker`: parse the configuration, set up logging, run until SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;
use voice_worker::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_logging(config.log_json);
    // Installed before serving so that an early SIGTERM still drains instead of killing.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let terminate = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    };
    voice_worker::run(config, terminate).await.map_err(|e| {
        tracing::error!(reason = e.reason(), error = %e, "worker failed");
        anyhow::Error::new(e)
    })
}

fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
