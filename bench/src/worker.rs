//! The worker under test: the release `voice-worker` pinned to one core, with sessions
//! reserved over gRPC the way the operator reserves them, and a join token for each. A bench
//! worker runs outside any cluster, so its control port is plaintext (`CONTROL_INSECURE`);
//! TLS costs nothing per media frame, only one handshake per operator connection.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use voice_proto::token::{JoinClaims, mint};
use voice_proto::worker::v1::ReserveSessionRequest;
use voice_proto::worker::v1::worker_control_client::WorkerControlClient;

/// The signing key the benchmarks' workers verify join tokens with.
pub const SIGNING_KEY: &str = "bench-signing-key-of-32-bytes!!!";

/// A running worker process, killed when dropped.
#[derive(Debug)]
pub struct PinnedWorker {
    child: Child,
    /// Its process id (for CPU and memory figures).
    pub pid: u32,
    /// Its control gRPC port.
    pub grpc_port: u16,
    /// Its HTTP port (signaling, WebSocket, `/metrics`).
    pub http_port: u16,
}

impl PinnedWorker {
    /// Starts `binary` (default: the release build) on `core` with room for `sessions`, every
    /// one running `pipeline` (the backend configuration, `VOICE_PIPELINE`).
    pub fn start(
        binary: Option<PathBuf>,
        core: usize,
        sessions: usize,
        pipeline: &str,
    ) -> anyhow::Result<Self> {
        let binary = binary.unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/voice-worker")
        });
        if !binary.exists() {
            bail!(
                "{} is missing: cargo build --release -p voice-worker",
                binary.display()
            );
        }
        let (grpc_port, http_port) = (free_port()?, free_port()?);
        let child = Command::new("taskset")
            .arg("-c")
            .arg(core.to_string())
            .arg(&binary)
            .env("POD_IP", "127.0.0.1")
            .env("UDP_PORT", "0")
            .env("SESSIONS_PER_WORKER", sessions.to_string())
            .env("SESSION_SIGNING_KEY", SIGNING_KEY)
            .env("VOICE_PIPELINE", pipeline)
            .env("CONTROL_INSECURE", "true")
            .env("RUST_LOG", "error")
            .args(["--grpc-port", &grpc_port.to_string()])
            .args(["--http-port", &http_port.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .context("starting taskset voice-worker")?;
        Ok(Self {
            pid: child.id(),
            child,
            grpc_port,
            http_port,
        })
    }

    /// Reserves `n` sessions `bench/<prefix>-<i>`; returns each session id
    /// (`namespace/name`) with its join token.
    pub async fn reserve(&self, prefix: &str, n: usize) -> anyhow::Result<Vec<(String, String)>> {
        let url = format!("http://127.0.0.1:{}", self.grpc_port);
        let started = Instant::now();
        let mut client = loop {
            match WorkerControlClient::connect(url.clone()).await {
                Ok(client) => break client,
                Err(e) if started.elapsed() > Duration::from_secs(20) => {
                    bail!("the worker never listened: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let mut out = Vec::new();
        for i in 0..n {
            let (id, uid) = (format!("bench/{prefix}-{i}"), format!("uid-{i}"));
            client
                .reserve_session(ReserveSessionRequest {
                    session_id: id.clone(),
                    uid: uid.clone(),
                    token_key_id: None,
                    session_config_json: String::new(),
                })
                .await
                .with_context(|| format!("reserving {id}"))?;
            let token = mint(
                SIGNING_KEY.as_bytes(),
                &JoinClaims {
                    sub: id.clone(),
                    uid,
                    backend: "bench".to_owned(),
                    user: String::new(),
                    iat: now,
                    exp: now + 3_600,
                },
            );
            out.push((id, token));
        }
        Ok(out)
    }
}

impl Drop for PinnedWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback TCP port free right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
