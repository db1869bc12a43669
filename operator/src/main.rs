//! `voice-operator`: parses flags, wins the leader Lease, then runs the controllers and the
//! HTTP server until SIGTERM/SIGINT (exit 0) or until the lease is lost (exit 1, so
//! Kubernetes restarts the process clean).

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use voice_operator::backend_children::OperatorPods;
use voice_operator::config::Config;
use voice_operator::context::{Context, Scope};
use voice_operator::leader::{self, LeaseConfig};
use voice_operator::metrics::Metrics;
use voice_operator::{
    allocator, backend_controller, control_ca, http, provider_controller, session_live,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = voice_operator::telemetry::init(config.log_json, "voice-operator");
    let client = kube::Client::try_default()
        .await
        .context("building a Kubernetes client")?;
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let synced = CancellationToken::new();
    let listener = http::bind(config.metrics_addr)
        .await
        .with_context(|| format!("binding {}", config.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    let server = tokio::spawn(http::serve(
        listener,
        metrics.clone(),
        synced.clone(),
        shutdown.clone(),
    ));

    let pod = std::env::var("POD_NAME").ok().filter(|s| !s.is_empty());
    let lease = LeaseConfig {
        name: config.lease_name.clone(),
        namespace: config.lease_namespace(),
        identity: format!(
            "{}-{:08x}",
            pod.clone().unwrap_or_else(|| "voice-operator".to_owned()),
            getrandom::u32()
                .map_err(|e| anyhow::anyhow!("no randomness for the lease identity: {e}"))?
        ),
        duration: config.lease_duration(),
        renew_period: config.lease_renew(),
    };
    tracing::info!(lease = %lease.name, namespace = %lease.namespace, identity = %lease.identity, "waiting for leadership");
    let fence = leader::Fence::new();
    if !leader::acquire(client.clone(), &lease, &fence, &shutdown).await {
        let _ = server.await;
        return Ok(());
    }
    tracing::info!(identity = %lease.identity, "leading");
    metrics.leader.set(1);

    let scope = Scope {
        namespace: config.watch_namespace.clone(),
        provider_selector: config.provider_selector.clone(),
    };
    // The control channel's CA: read (or created once) before any worker is called.
    let ca_namespace = config.control_ca_namespace();
    let ca_secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), &ca_namespace);
    let ca = control_ca::load_or_create(&ca_secrets, std::time::SystemTime::now())
        .await
        .with_context(|| format!("control-channel CA in namespace {ca_namespace}"))?;
    let trust = Arc::new(
        control_ca::ControlTrust::new(ca, std::time::SystemTime::now())
            .context("issuing the operator's control-channel client certificate")?,
    );
    tokio::spawn(control_ca::refresh(
        ca_secrets,
        trust.clone(),
        shutdown.clone(),
    ));
    let operator_pods = OperatorPods {
        namespace: ca_namespace,
        labels: config.operator_pod_labels.clone(),
    };
    let ctx: Arc<Context> = Context::new(
        client.clone(),
        metrics.clone(),
        scope,
        pod,
        fence.clone(),
        trust,
        operator_pods,
    );
    let controllers = tokio::spawn({
        let (ctx, cancel) = (ctx.clone(), shutdown.clone());
        async move {
            let (addrs_tx, addrs_rx) = tokio::sync::watch::channel(Default::default());
            let (ended_tx, ended_rx) = tokio::sync::mpsc::channel(1024);
            tokio::join!(
                provider_controller::run(ctx.clone(), cancel.clone()),
                backend_controller::run(ctx.clone(), cancel.clone(), synced),
                allocator::run(ctx.clone(), cancel.clone(), ended_rx, addrs_tx),
                session_live::run(ctx, cancel, addrs_rx, ended_tx),
            );
        }
    });
    let lost = leader::hold(client.clone(), &lease, &fence, &shutdown).await;
    if let Err(why) = lost {
        // Another instance may already be writing: stop every write now, by exiting.
        tracing::error!(%why, "lost leadership; exiting");
        metrics.leader.set(0);
        std::process::exit(1);
    }
    let _ = controllers.await;
    leader::release(client, &lease).await;
    let _ = server.await;
    tracing::info!("stopped");
    Ok(())
}

/// Cancels `token` on the first SIGTERM or SIGINT.
async fn cancel_on_signal(token: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
    token.cancel();
}
