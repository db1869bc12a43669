//! Start, serve, drain, stop: the life of one worker process.
//!
//! Shutdown has two stages driven by one request to terminate. First the worker drains:
//! readiness and gRPC health turn unhealthy, new reservations are refused, and held
//! sessions get until the drain deadline. Then one `CancellationToken` fans out to both
//! servers and every open event stream, and the process exits 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::config::Config;
use crate::connections::Connections;
use crate::control::{self, ControlService};
use crate::control_tls::{self, ControlTls};
use crate::drain;
use crate::error::Error;
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::server;
use crate::sessions::Sessions;
use crate::signaling::{self, MediaContext};
use crate::transport::tcp_mux::TcpMux;
use crate::transport::udp_mux::UdpMux;

/// How long the servers get to close connections after the drain; a client holding a
/// stream open (e.g. a health watch) must not keep a drained pod alive.
const SERVER_STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs the worker until `terminate` resolves, then drains and stops.
pub async fn run(config: Config, terminate: impl Future<Output = ()>) -> Result<(), Error> {
    let metrics = Metrics::new()?;
    let sessions = Arc::new(
        Sessions::new(
            config.sessions_per_worker,
            config.drain_timeout(),
            usize::from(config.event_buffer),
            metrics,
        )
        .with_default_pipeline(config.pipeline.as_ref()),
    );
    // A TURN Secret the pod lacks is a configuration error: fail at start, naming it.
    let ice_servers =
        crate::ice_servers::IceServers::load(&config.ice_servers.clone().unwrap_or_default().0)?;
    let shutdown = CancellationToken::new();
    let started = Arc::new(AtomicBool::new(false));
    let control_tls = match (&config.control_tls_dir, config.control_insecure) {
        (Some(dir), _) => Some(ControlTls::load(dir)?),
        (None, true) => {
            tracing::warn!(
                "CONTROL_INSECURE: the control gRPC port has no TLS; anyone who reaches it can call it"
            );
            None
        }
        (None, false) => return Err(Error::ControlTlsMissing),
    };

    // Signaling over TLS when the pod has a certificate; a bad one fails the start.
    let http_tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(crate::http_tls::HttpTls::load(cert, key)?),
        _ => None,
    };

    let grpc_listener = bind("gRPC", config.grpc_addr()).await?;
    let http_listener = bind("HTTP", config.http_addr()).await?;
    let media_metrics = sessions.metrics().media().clone();
    let mux = UdpMux::bind(config.udp_addr(), media_metrics.clone())
        .await
        .map_err(|source| Error::Bind {
            server: "WebRTC UDP",
            addr: config.udp_addr(),
            source,
        })?;
    let udp_addr = mux.local_addr().map_err(|source| Error::Bind {
        server: "WebRTC UDP",
        addr: config.udp_addr(),
        source,
    })?;
    tokio::spawn(mux.clone().run(shutdown.clone()));
    let tcp_mux = match config.tcp_media_addr() {
        Some(addr) => {
            let bind_error = |source| Error::Bind {
                server: "WebRTC ICE-TCP",
                addr,
                source,
            };
            let tcp = TcpMux::bind(addr, media_metrics.clone())
                .await
                .map_err(bind_error)?;
            let bound = tcp.local_addr().map_err(bind_error)?;
            tokio::spawn(tcp.clone().run(shutdown.clone()));
            tracing::info!(%bound, "ICE-TCP listener up");
            Some((tcp, bound))
        }
        None => None,
    };
    let connections = Connections::new(shutdown.clone(), media_metrics.clone());
    tokio::spawn(
        connections
            .clone()
            .reap_released(sessions.clone(), shutdown.clone()),
    );
    let signing_keys = Arc::new(crate::signing_keys::SigningKeys::new(
        config.session_signing_key.as_deref(),
        config.session_signing_keys_file.clone(),
    ));
    if signing_keys.get().is_none() && config.session_signing_keys_file.is_none() {
        tracing::warn!(
            "neither SESSION_SIGNING_KEY nor SESSION_SIGNING_KEYS_FILE is set: every offer and upgrade is refused"
        );
    }
    tokio::spawn(signing_keys.clone().run(shutdown.clone()));
    media_metrics.set_jitter_target(config.provider_config.jitter_packets());
    tracing::debug!(
        packets = config.provider_config.jitter_packets(),
        "WebRTC receive jitter buffer depth (providerConfig jitterBufferMs)"
    );
    let client_auth = crate::client_auth::AppTokens::from_env();
    if let Some(Err(why)) = &client_auth {
        tracing::error!(error = %why, "spec.clientAuth cannot be used: application tokens are refused");
    }
    let media = Arc::new(MediaContext {
        sessions: sessions.clone(),
        connections: connections.clone(),
        peers: Default::default(),
        mux,
        signing_keys,
        client_auth: client_auth.map(Arc::new),
        advertised: std::net::SocketAddr::new(config.advertised_ip(), udp_addr.port()),
        advertised_tcp: tcp_mux
            .as_ref()
            .map(|(_, bound)| std::net::SocketAddr::new(config.advertised_ip(), bound.port())),
        tcp_mux: tcp_mux.map(|(tcp, _)| tcp),
        ice_servers,
        allowed_origins: config.allowed_origins.clone(),
        allow_private_candidates: config.allow_private_candidates,
        max_offer_bytes: config.max_offer_bytes,
        body_timeout: config.http_request_timeout(),
        connect_timeout: config.connect_timeout(),
        websocket: config.websocket_timing(),
        jitter_packets: config.provider_config.jitter_packets(),
        metrics: media_metrics.clone(),
        shutdown: shutdown.clone(),
    });

    // A backend with spec.liveKit: the worker joins each session's room as the agent.
    match crate::livekit::LiveKit::from_env() {
        Some(Ok(livekit)) => {
            tracing::info!(url = %livekit.url, "serving sessions in LiveKit rooms");
            tokio::spawn(crate::livekit::dispatch(
                Arc::new(livekit),
                media.clone(),
                shutdown.clone(),
            ));
        }
        Some(Err(why)) => {
            tracing::error!(error = %why, "spec.liveKit cannot be used: LiveKit sessions wait until their pending timeout");
        }
        None => {}
    }
    let (reporter, health) = tonic_health::server::health_reporter();
    // With a bot beside it (spec.workers.bot), the worker serves only while the bot answers.
    let bot = std::env::var(crate::pipeline::build::BOT_URL_ENV)
        .ok()
        .and_then(|url| crate::bot_watch::address(&url));
    let bot_reachable = crate::bot_watch::BotReachable::default();
    let has_bot = bot.is_some();
    control::report_serving(&reporter, !has_bot).await;
    if let Some(address) = bot {
        tokio::spawn(crate::bot_watch::watch(
            address,
            bot_reachable.clone(),
            reporter.clone(),
            sessions.clone(),
            shutdown.clone(),
        ));
    }
    tokio::spawn(control::report_draining(reporter, sessions.clone()));
    let router = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(ControlService::new(sessions.clone(), shutdown.clone()).into_server());
    let stop = shutdown.clone().cancelled_owned();
    let mut grpc: JoinHandle<Result<(), Error>> = match control_tls {
        Some(tls) => {
            tokio::spawn(tls.clone().watch(shutdown.clone()));
            let incoming = control_tls::incoming(grpc_listener, tls, shutdown.clone());
            let serve = router.serve_with_incoming_shutdown(incoming, stop);
            tokio::spawn(async move { serve.await.map_err(Error::Grpc) })
        }
        None => {
            let serve = router.serve_with_incoming_shutdown(TcpIncoming::from(grpc_listener), stop);
            tokio::spawn(async move { serve.await.map_err(Error::Grpc) })
        }
    };
    let mut http_state = HttpState::new(sessions.clone(), started.clone());
    if has_bot {
        http_state = http_state.with_bot(bot_reachable);
    }
    let app = http::router(http_state).merge(signaling::router(media));
    let http = server::serve(
        http_listener,
        app,
        config.http_request_timeout(),
        config.http_limits(),
        media_metrics,
        http_tls.clone(),
        shutdown.clone(),
    );
    if let Some(tls) = http_tls.clone() {
        tokio::spawn(tls.watch(shutdown.clone()));
    }
    let mut http: JoinHandle<Result<(), Error>> =
        tokio::spawn(async move { http.await.map_err(Error::Http) });
    let supervisor = tokio::spawn(drain::supervise(sessions.clone()));
    tokio::spawn(ping_connected(
        sessions.clone(),
        connections.clone(),
        shutdown.clone(),
    ));
    started.store(true, Ordering::Release);
    tracing::info!(
        capacity = config.sessions_per_worker,
        pod = config.pod_name.as_deref().unwrap_or(""),
        namespace = config.pod_namespace.as_deref().unwrap_or(""),
        backend = config.backend_name.as_deref().unwrap_or(""),
        grpc = %config.grpc_addr(),
        control_tls = config.control_tls_dir.is_some(),
        http = %config.http_addr(),
        https = http_tls.is_some(),
        udp = %udp_addr,
        "worker started"
    );

    tokio::select! {
        () = terminate => {}
        ended = &mut grpc => return stop_after_failure("gRPC", ended, &shutdown),
        ended = &mut http => return stop_after_failure("HTTP", ended, &shutdown),
    }

    let now = SystemTime::now();
    let (deadline, remaining) = sessions.drain(None, now);
    let deadline_in_secs = deadline.duration_since(now).unwrap_or_default().as_secs();
    tracing::info!(
        remaining,
        deadline_in_secs,
        "terminating: draining before exit"
    );
    if let Err(e) = supervisor.await {
        tracing::error!(error = %e, "drain supervisor failed; stopping anyway");
    }
    shutdown.cancel();
    for (name, server) in [("gRPC", grpc), ("HTTP", http)] {
        match tokio::time::timeout(SERVER_STOP_GRACE, server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "{name} server stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "{name} server task failed"),
            Err(_) => tracing::warn!("{name} server still had open connections; leaving them"),
        }
    }
    tracing::info!("worker stopped");
    Ok(())
}

async fn bind(server: &'static str, addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        server,
        addr,
        source,
    })
}

/// A server that stops on its own is fatal: stop the other one and report why.
fn stop_after_failure(
    server: &'static str,
    ended: Result<Result<(), Error>, tokio::task::JoinError>,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    shutdown.cancel();
    match ended {
        Ok(Ok(())) => {
            tracing::error!("the {server} server stopped unexpectedly");
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(e) => Err(Error::Task(server, e)),
    }
}

/// How often connected sessions are reported alive to the operator.
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// Reports every connected session whose client sent media within the last
/// [`PING_INTERVAL`] alive, every [`PING_INTERVAL`] until shutdown, so the operator's
/// `lastActivity` (and `spec.idleTimeout`) follow the client's media: a half-open or
/// silent connection (WebSocket pongs, ICE keepalives) does not keep a session alive.
async fn ping_connected(
    sessions: Arc<Sessions>,
    connections: Arc<Connections>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(PING_INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                sessions.ping_connected(
                    SystemTime::now(),
                    |id| connections.had_media_within(id, PING_INTERVAL),
                    |id| connections.dropped(id),
                );
            }
        }
    }
}
