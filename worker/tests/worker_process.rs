//! End-to-end tests of the real `voice-worker` binary: started as a process on loopback,
//! driven through the generated tonic client exactly as the operator drives it, and
//! stopped with a real SIGTERM. The control channel is mutual TLS with certificates made
//! by the operator's own issuing code.

mod common;

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::ControlPki;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use voice_proto::worker::v1::worker_control_client::WorkerControlClient;
use voice_proto::worker::v1::{
    GetStatsRequest, ReleaseResult, ReleaseSessionRequest, ReserveResult, ReserveSessionRequest,
    SessionEvent, WatchEventsRequest, session_event,
};

/// How long anything in these tests may take before it counts as hung.
const PATIENCE: Duration = Duration::from_secs(20);

/// A running worker process, killed if a test fails before it exits.
struct WorkerProcess {
    child: Child,
    grpc_port: u16,
    http_port: u16,
    pki: ControlPki,
}

impl WorkerProcess {
    fn start(capacity: u32, drain_timeout_seconds: u64) -> Self {
        let (grpc_port, http_port) = (free_port(), free_port());
        let pki = ControlPki::new();
        let child = Command::new(env!("CARGO_BIN_EXE_voice-worker"))
            .env("CONTROL_TLS_DIR", &pki.dir)
            .env("POD_IP", "127.0.0.1")
            .env("SESSIONS_PER_WORKER", capacity.to_string())
            .env("DRAIN_TIMEOUT_SECONDS", drain_timeout_seconds.to_string())
            .env("POD_NAME", "worker-test-0")
            .env("POD_NAMESPACE", "test")
            .env("BACKEND_NAME", "test-backend")
            .env("VOICE_PIPELINE", r#"{"type":"STT_TTS"}"#)
            // An ephemeral WebRTC port: tests run workers side by side.
            .env("UDP_PORT", "0")
            .env("RUST_LOG", "warn")
            .args(["--grpc-port", &grpc_port.to_string()])
            .args(["--http-port", &http_port.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting voice-worker: {e}"));
        Self {
            child,
            grpc_port,
            http_port,
            pki,
        }
    }

    /// Connects to the gRPC server as the operator does, retrying while the process starts.
    async fn channel(&self) -> Channel {
        self.pki.operator_channel(self.grpc_port).await
    }

    /// `GET path` on the HTTP server: status code and body.
    async fn get(&self, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.http_port))
            .await
            .unwrap_or_else(|e| panic!("connecting to the HTTP server: {e}"));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("running kill: {e}"));
        assert!(status.success(), "kill -TERM failed");
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("waiting for the worker: {e}"))
    }

    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                started.elapsed() < within,
                "worker still running after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _already_gone = self.child.kill();
            let _reaped = self.child.wait();
        }
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("finding a free port: {e}"))
}

fn reserve(id: &str, uid: &str) -> ReserveSessionRequest {
    ReserveSessionRequest {
        session_id: id.to_owned(),
        uid: uid.to_owned(),
        token_key_id: Some("key-1".to_owned()),
        session_config_json: r#"{"agent":{"streamingMode":false}}"#.to_owned(),
    }
}

fn release(id: &str, uid: &str, reason: &str) -> ReleaseSessionRequest {
    ReleaseSessionRequest {
        session_id: id.to_owned(),
        uid: uid.to_owned(),
        reason: reason.to_owned(),
    }
}

async fn health(channel: &Channel, service: &str) -> ServingStatus {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap_or_else(|e| panic!("health check: {e}"));
    response.into_inner().status()
}

async fn reserve_result(
    client: &mut WorkerControlClient<Channel>,
    request: ReserveSessionRequest,
) -> ReserveResult {
    client
        .reserve_session(request)
        .await
        .unwrap_or_else(|e| panic!("ReserveSession: {e}"))
        .into_inner()
        .result()
}

/// The next event, failing the test if none comes in time.
async fn next_event(
    events: &mut tonic::Streaming<SessionEvent>,
) -> (String, Option<session_event::Event>) {
    let event = tokio::time::timeout(PATIENCE, events.next())
        .await
        .unwrap_or_else(|_| panic!("no session event within {PATIENCE:?}"))
        .unwrap_or_else(|| panic!("event stream ended"))
        .unwrap_or_else(|e| panic!("event stream failed: {e}"));
    (event.session_id, event.event)
}

fn ended_reason(event: Option<session_event::Event>) -> String {
    match event {
        Some(session_event::Event::Ended(ended)) => ended.reason,
        other => panic!("expected an ended event, got {other:?}"),
    }
}

fn metric_line<'a>(metrics: &'a str, name: &str) -> &'a str {
    metrics
        .lines()
        .find(|line| line.starts_with(name))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
}

#[tokio::test]
async fn reserves_up_to_capacity_and_drains_held_sessions_before_exiting_on_sigterm() {
    let mut worker = WorkerProcess::start(2, 60);
    let channel = worker.channel().await;
    let mut client = WorkerControlClient::new(channel.clone());

    assert_eq!(health(&channel, "").await, ServingStatus::Serving);
    assert_eq!(
        health(&channel, "voice.worker.v1.WorkerControl").await,
        ServingStatus::Serving
    );
    assert_eq!(worker.get("/readyz").await.0, 200);
    assert_eq!(worker.get("/healthz").await.0, 200);

    let mut events = client
        .watch_events(WatchEventsRequest {})
        .await
        .unwrap_or_else(|e| panic!("WatchEvents: {e}"))
        .into_inner();

    use ReserveResult::*;
    assert_eq!(
        reserve_result(&mut client, reserve("ns/a", "uid-a")).await,
        Reserved
    );
    assert_eq!(
        reserve_result(&mut client, reserve("ns/b", "uid-b")).await,
        Reserved
    );
    assert_eq!(
        reserve_result(&mut client, reserve("ns/c", "uid-c")).await,
        Full
    );
    assert_eq!(
        reserve_result(&mut client, reserve("ns/a", "uid-a")).await,
        AlreadyReserved,
        "a retry after an operator crash takes no second slot"
    );
    assert_eq!(
        reserve_result(&mut client, reserve("ns/a", "uid-new")).await,
        Conflict
    );

    let stats = client
        .get_stats(GetStatsRequest {})
        .await
        .unwrap_or_else(|e| panic!("GetStats: {e}"))
        .into_inner();
    assert_eq!(
        (
            stats.capacity,
            stats.reserved_sessions,
            stats.active_sessions
        ),
        (2, 2, 0)
    );
    assert!(!stats.draining);
    assert_eq!(stats.sessions.len(), 2);

    let (status, metrics) = worker.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(metric_line(&metrics, r#"voice_worker_sessions{state="reserved"}"#).ends_with(" 2"));
    assert!(metric_line(&metrics, r#"voice_worker_sessions{state="active"}"#).ends_with(" 0"));
    assert!(metric_line(&metrics, "voice_worker_capacity").ends_with(" 2"));
    assert!(metric_line(&metrics, "voice_worker_draining").ends_with(" 0"));
    assert!(
        metric_line(
            &metrics,
            r#"voice_worker_reservations_total{result="reserved"}"#
        )
        .ends_with(" 2")
    );
    assert!(
        metric_line(
            &metrics,
            r#"voice_worker_reservations_total{result="full"}"#
        )
        .ends_with(" 1")
    );

    let released = client
        .release_session(release("ns/b", "uid-b", "Completed"))
        .await
        .unwrap_or_else(|e| panic!("ReleaseSession: {e}"))
        .into_inner();
    assert_eq!(
        (released.result(), released.held_sessions),
        (ReleaseResult::Released, 1)
    );
    let again = client
        .release_session(release("ns/b", "uid-b", "Completed"))
        .await
        .unwrap_or_else(|e| panic!("ReleaseSession: {e}"))
        .into_inner();
    assert_eq!(
        again.result(),
        ReleaseResult::NotFound,
        "release is idempotent"
    );

    let (id, event) = next_event(&mut events).await;
    assert_eq!(id, "ns/a");
    assert!(
        matches!(event, Some(session_event::Event::Reserved(_))),
        "{event:?}"
    );
    let (id, event) = next_event(&mut events).await;
    assert_eq!(id, "ns/b");
    assert!(
        matches!(event, Some(session_event::Event::Reserved(_))),
        "{event:?}"
    );
    let (id, event) = next_event(&mut events).await;
    assert_eq!(
        (id.as_str(), ended_reason(event).as_str()),
        ("ns/b", "Completed")
    );

    // SIGTERM with ns/a still held: the worker drains but stays up for it.
    worker.sigterm();
    let started = Instant::now();
    while worker.get("/readyz").await.0 != 503 {
        assert!(
            started.elapsed() < PATIENCE,
            "/readyz never turned 503 after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        health(&channel, "voice.worker.v1.WorkerControl").await,
        ServingStatus::NotServing
    );
    assert_eq!(
        reserve_result(&mut client, reserve("ns/d", "uid-d")).await,
        Draining
    );
    let (_, metrics) = worker.get("/metrics").await;
    assert!(metric_line(&metrics, "voice_worker_draining").ends_with(" 1"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        worker.exited().is_none(),
        "exited while a session was still held"
    );

    client
        .release_session(release("ns/a", "uid-a", "Completed"))
        .await
        .unwrap_or_else(|e| panic!("ReleaseSession: {e}"));
    let status = worker.wait_exit(PATIENCE).await;
    assert!(status.success(), "worker exited with {status}");
}

#[tokio::test]
async fn sigterm_ends_sessions_left_at_the_drain_deadline_then_exits_zero() {
    let mut worker = WorkerProcess::start(1, 2);
    let channel = worker.channel().await;
    let mut client = WorkerControlClient::new(channel);
    let mut events = client
        .watch_events(WatchEventsRequest {})
        .await
        .unwrap_or_else(|e| panic!("WatchEvents: {e}"))
        .into_inner();
    assert_eq!(
        reserve_result(&mut client, reserve("ns/a", "uid-a")).await,
        ReserveResult::Reserved
    );
    let _reserved = next_event(&mut events).await;

    let signalled = Instant::now();
    worker.sigterm();
    let (id, event) = next_event(&mut events).await;
    assert_eq!(
        (id.as_str(), ended_reason(event).as_str()),
        ("ns/a", "DrainDeadline")
    );
    let status = worker.wait_exit(PATIENCE).await;
    assert!(status.success(), "worker exited with {status}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(1_500),
        "exited before the 2 s drain deadline: {:?}",
        signalled.elapsed()
    );
}

#[tokio::test]
async fn a_second_sigterm_ends_a_long_drain_at_once() {
    let mut worker = WorkerProcess::start(1, 300);
    let channel = worker.channel().await;
    let mut client = WorkerControlClient::new(channel);
    assert_eq!(
        reserve_result(&mut client, reserve("ns/a", "uid-a")).await,
        ReserveResult::Reserved
    );
    worker.sigterm();
    // Draining for a held session: still running after a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        worker.exited().is_none(),
        "exited before its drain deadline"
    );
    let signalled = Instant::now();
    worker.sigterm();
    let status = worker.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(143), "worker exited with {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "the second SIGTERM took {:?}",
        signalled.elapsed()
    );
}

#[tokio::test]
async fn an_idle_worker_exits_zero_at_once_on_sigterm() {
    let mut worker = WorkerProcess::start(1, 60);
    let _channel = worker.channel().await;
    worker.sigterm();
    let status = worker.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "worker exited with {status}");
}

#[test]
fn refuses_to_start_with_a_pipeline_that_is_not_json_and_names_the_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_voice-worker"))
        .env("VOICE_PIPELINE", "{not json")
        .env("POD_IP", "127.0.0.1")
        .args(["--grpc-port", &free_port().to_string()])
        .args(["--http-port", &free_port().to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running voice-worker: {e}"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("VOICE_PIPELINE"), "{stderr}");
}

#[test]
fn refuses_to_start_without_control_tls_and_names_the_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_voice-worker"))
        .env_remove("CONTROL_TLS_DIR")
        .env_remove("CONTROL_INSECURE")
        .env("POD_IP", "127.0.0.1")
        .env("UDP_PORT", "0")
        .args(["--grpc-port", &free_port().to_string()])
        .args(["--http-port", &free_port().to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running voice-worker: {e}"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CONTROL_TLS_DIR"), "{stderr}");
}
