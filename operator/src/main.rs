//! `voice-operator`: parses flags, wins the leader Lease, then runs the controllers and the
//! HTTP server until SIGTERM/SIGINT (exit 0, or 1 when the controllers do not stop within
//! `--shutdown-timeout-seconds`), until the lease is lost, or until any controller task ends
//! or panics (exit 1 both: Kubernetes restarts the process clean and the standby leads
//! meanwhile; a leader that renews its Lease with a dead controller would do nothing).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use voice_operator::backend_children::OperatorPods;
use voice_operator::config::Config;
use voice_operator::context::{Context, Scope};
use voice_operator::heartbeat::{Heartbeats, beating};
use voice_operator::http::Liveness;
use voice_operator::leader::{self, LeaseConfig};
use voice_operator::metrics::Metrics;
use voice_operator::{
    allocator, backend_controller, control_ca, http, live_status_writer, provider_controller,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // Crash points, for the end-to-end tests only: inert unless FAILPOINTS names them.
    let _failpoints = std::env::var_os("FAILPOINTS").map(|_| fail::FailScenario::setup());
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
    let heartbeats = Heartbeats::default();
    let liveness = Liveness {
        heartbeats: heartbeats.clone(),
        timeout: config.heartbeat_timeout(),
    };
    let server = tokio::spawn(http::serve(
        listener,
        metrics.clone(),
        synced.clone(),
        liveness,
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
        stop_server(server, config.shutdown_timeout()).await;
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
    let ctx = Arc::new(Context {
        signing_key_propagation: Duration::from_secs(config.signing_key_propagation_seconds),
        ..Context::new(
            client.clone(),
            metrics.clone(),
            scope,
            pod,
            fence.clone(),
            trust,
            operator_pods,
        )
    });
    let mut controllers = JoinSet::new();
    let mut names = HashMap::new();
    let (roster_tx, roster_rx) = tokio::sync::watch::channel(Default::default());
    let (ended_tx, ended_rx) = tokio::sync::mpsc::channel(1024);
    let spawned = [
        (
            "provider-controller",
            controllers.spawn(beating(
                heartbeats.clone(),
                "provider-controller",
                provider_controller::run(ctx.clone(), shutdown.clone()),
            )),
        ),
        (
            "backend-controller",
            controllers.spawn(beating(
                heartbeats.clone(),
                "backend-controller",
                backend_controller::run(ctx.clone(), shutdown.clone(), synced),
            )),
        ),
        (
            "allocator",
            controllers.spawn(allocator::run(
                ctx.clone(),
                shutdown.clone(),
                ended_rx,
                roster_tx,
                heartbeats.clone(),
            )),
        ),
        (
            "session-live",
            controllers.spawn(live_status_writer::run(
                ctx,
                shutdown.clone(),
                roster_rx,
                ended_tx,
                heartbeats,
            )),
        ),
    ];
    for (name, handle) in spawned {
        names.insert(handle.id(), name);
    }
    let hold = leader::hold(client.clone(), &lease, &fence, &shutdown);
    let mut hold = std::pin::pin!(hold);
    let lost = loop {
        tokio::select! {
            lost = &mut hold => break lost,
            Some(done) = controllers.join_next_with_id() => {
                if shutdown.is_cancelled() {
                    // Shutting down: controllers end one by one; the lease waits for them.
                    names.remove(&task_id(&done));
                    continue;
                }
                // A controller ended or panicked while leading: nothing would do its job,
                // yet the Lease would stay renewed. Exit so the standby takes over.
                let (id, why) = match done {
                    Ok((id, ())) => (id, "ended".to_owned()),
                    Err(e) if e.is_panic() => (e.id(), "panicked".to_owned()),
                    Err(e) => (e.id(), format!("was cancelled: {e}")),
                };
                let name = names.get(&id).copied().unwrap_or("unknown");
                tracing::error!(controller = name, "controller {why} while leading; exiting");
                metrics.leader.set(0);
                std::process::exit(1);
            }
        }
    };
    if let Err(why) = lost {
        // Another instance may already be writing: stop every write now, by exiting.
        tracing::error!(%why, "lost leadership; exiting");
        metrics.leader.set(0);
        std::process::exit(1);
    }
    // Bounded: a controller that never stops would otherwise keep the process (and a test,
    // or a rollout waiting for the pod) hanging until the kubelet's SIGKILL, without a word.
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout();
    loop {
        match tokio::time::timeout_at(deadline, controllers.join_next_with_id()).await {
            Ok(None) => break,
            Ok(Some(done)) => {
                let name = names.remove(&task_id(&done)).unwrap_or("unknown");
                if let Err(e) = done {
                    tracing::error!(controller = name, error = %e, "controller failed during shutdown");
                }
            }
            Err(_) => {
                let mut running: Vec<&str> = names.values().copied().collect();
                running.sort_unstable();
                // The Lease is kept: releasing it while a controller may still write would let
                // the standby lead beside it. It takes over when the Lease expires instead.
                tracing::error!(
                    still_running = ?running,
                    timeout = ?config.shutdown_timeout(),
                    "controllers did not stop in time; exiting without releasing the lease"
                );
                std::process::exit(1);
            }
        }
    }
    let release = leader::release(client, &lease);
    if tokio::time::timeout_at(deadline, release).await.is_err() {
        tracing::warn!("releasing the lease timed out; the standby leads when it expires");
    }
    stop_server(
        server,
        deadline.saturating_duration_since(tokio::time::Instant::now()),
    )
    .await;
    tracing::info!("stopped");
    Ok(())
}

/// The task a [`JoinSet`] result belongs to, whether it ended or failed.
fn task_id(done: &Result<(tokio::task::Id, ()), tokio::task::JoinError>) -> tokio::task::Id {
    match done {
        Ok((id, ())) => *id,
        Err(e) => e.id(),
    }
}

/// Waits up to `limit` for the HTTP server to finish its open requests after the shutdown
/// signal; a client that keeps a connection open must not hold the process.
async fn stop_server(server: tokio::task::JoinHandle<std::io::Result<()>>, limit: Duration) {
    if tokio::time::timeout(limit, server).await.is_err() {
        tracing::warn!(?limit, "HTTP connections still open at exit; closing them");
    }
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
