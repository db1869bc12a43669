//! What the data-plane tests share: a worker process with a signing key and its own
//! control-channel certificates, reservations over mutual-TLS gRPC, join tokens, raw HTTP
//! requests and a frequency estimate.

#![allow(dead_code)]

pub mod browser;
pub mod identity_provider;
pub mod speech;

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use voice_proto::control_tls::{self, CertifiedKey, OPERATOR_CLIENT_NAME, Role};
use voice_proto::token::{JoinClaims, mint};
use voice_proto::worker::v1::worker_control_client::WorkerControlClient;
use voice_proto::worker::v1::{ReserveResult, ReserveSessionRequest};

/// The key the test workers check tokens with.
pub const KEY: &[u8] = b"test-signing-key-of-32-bytes!!!!";

/// How long anything may take before it counts as hung.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The name the test workers' serving certificates are issued for (backend `test`,
/// namespace `test`), as the operator issues them.
pub const SERVER_NAME: &str = "test-workers.test.svc";

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .unwrap_or(0)
}

/// One test's control-channel PKI, made with the operator's own issuing code: a CA, a
/// worker serving certificate in a `CONTROL_TLS_DIR`, and the operator's client certificate.
pub struct ControlPki {
    /// The directory the worker reads (`ca.crt`, `tls.crt`, `tls.key`).
    pub dir: PathBuf,
    /// The CA.
    pub ca: CertifiedKey,
    /// A client certificate from the CA (what the operator presents).
    pub client: CertifiedKey,
}

impl ControlPki {
    /// A fresh CA, serving certificate and client certificate.
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let day = Duration::from_secs(86_400);
        let ca = control_tls::new_ca("test CA", unix_now(), day).unwrap_or_else(|e| panic!("{e}"));
        let serving = control_tls::issue(&ca, Role::Server, SERVER_NAME, unix_now(), day)
            .unwrap_or_else(|e| panic!("{e}"));
        let client = Self::leaf(&ca, Role::Client, OPERATOR_CLIENT_NAME);
        let dir = std::env::temp_dir().join(format!(
            "voice-worker-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        for (file, text) in [
            (control_tls::CA_FILE, &ca.cert_pem),
            (control_tls::CERT_FILE, &serving.cert_pem),
            (control_tls::KEY_FILE, &serving.key_pem),
        ] {
            std::fs::write(dir.join(file), text).unwrap_or_else(|e| panic!("{e}"));
        }
        Self { dir, ca, client }
    }

    /// A leaf certificate from `ca` for `name` in `role`.
    pub fn leaf(ca: &CertifiedKey, role: Role, name: &str) -> CertifiedKey {
        control_tls::issue(ca, role, name, unix_now(), Duration::from_secs(86_400))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A channel to `port` that trusts this CA for the server and presents `identity`
    /// (none: no client certificate). Connecting may succeed even when the worker refuses
    /// the client certificate (TLS 1.3 checks it after the client's side finished); the
    /// first call then fails.
    pub async fn channel(
        &self,
        port: u16,
        identity: Option<&CertifiedKey>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca.cert_pem))
            .domain_name(SERVER_NAME);
        if let Some(id) = identity {
            tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
        }
        Channel::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .tls_config(tls)?
            .connect()
            .await
    }

    /// A channel as the operator opens it, retrying while the worker starts.
    pub async fn operator_channel(&self, port: u16) -> Channel {
        let started = Instant::now();
        loop {
            match self.channel(port, Some(&self.client)).await {
                Ok(channel) => return channel,
                Err(e) if started.elapsed() > PATIENCE => panic!("worker never listened: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

impl Drop for ControlPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running worker, killed when dropped.
pub struct Worker {
    child: Child,
    /// gRPC port.
    pub grpc_port: u16,
    /// HTTP port.
    pub http_port: u16,
    /// Its control-channel certificates.
    pub pki: ControlPki,
}

impl Worker {
    /// Starts a worker with `capacity` slots and the test signing key, running the
    /// diagnostic echo.
    pub fn start(capacity: u32) -> Self {
        Self::start_with(capacity, None, &[])
    }

    /// Starts a worker whose backend configuration (`VOICE_PIPELINE`) is `pipeline`: what
    /// every session on it runs.
    pub fn start_with_pipeline(capacity: u32, pipeline: Option<&serde_json::Value>) -> Self {
        Self::start_with(capacity, pipeline, &[])
    }

    /// [`Worker::start`] with extra environment variables, which override the defaults.
    pub fn start_with_env(capacity: u32, env: &[(&str, &str)]) -> Self {
        Self::start_with(capacity, None, env)
    }

    /// A worker with `capacity` slots, backend configuration `pipeline` and extra `env`.
    ///
    /// [`free_port`] lets its port go before the worker binds it, so on a busy machine
    /// another process may take it first and the worker exits with `BindFailed`; then it is
    /// started again on fresh ports (up to three times). A worker that exits for any other
    /// reason exits every time, and the last one is returned for the test to look at.
    pub fn start_with(
        capacity: u32,
        pipeline: Option<&serde_json::Value>,
        env: &[(&str, &str)],
    ) -> Self {
        const ATTEMPTS: usize = 3;
        let pki = ControlPki::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (grpc_port, http_port) = (free_port(), free_port());
            let mut command = Command::new(env!("CARGO_BIN_EXE_voice-worker"));
            if let Some(pipeline) = pipeline {
                command.env("VOICE_PIPELINE", pipeline.to_string());
            }
            let mut child = command
                .env("CONTROL_TLS_DIR", &pki.dir)
                .env("POD_IP", "127.0.0.1")
                .env("UDP_PORT", "0")
                .env("SESSIONS_PER_WORKER", capacity.to_string())
                .env(
                    "SESSION_SIGNING_KEY",
                    std::str::from_utf8(KEY).unwrap_or_default(),
                )
                .env("HTTP_REQUEST_TIMEOUT_SECONDS", "2")
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .envs(env.iter().copied())
                .args(["--grpc-port", &grpc_port.to_string()])
                .args(["--http-port", &http_port.to_string()])
                .stdin(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting voice-worker: {e}"));
            let listening = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            let deadline = Instant::now() + PATIENCE;
            let exited = loop {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break true;
                }
                if (listening(http_port) && listening(grpc_port)) || Instant::now() > deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if !exited || attempt == ATTEMPTS {
                return Self {
                    child,
                    grpc_port,
                    http_port,
                    pki,
                };
            }
        }
    }

    /// A gRPC client with the operator's client certificate, retrying while the process
    /// starts.
    pub async fn client(&self) -> WorkerControlClient<Channel> {
        WorkerControlClient::new(self.pki.operator_channel(self.grpc_port).await)
    }

    /// Reserves `id` (`namespace/name`) with `uid`, asserting success.
    pub async fn reserve(&self, id: &str, uid: &str) {
        let result = self
            .client()
            .await
            .reserve_session(ReserveSessionRequest {
                session_id: id.to_owned(),
                uid: uid.to_owned(),
                token_key_id: None,
                session_config_json: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("ReserveSession: {e}"))
            .into_inner()
            .result();
        assert_eq!(result, ReserveResult::Reserved);
    }

    /// One HTTP/1.1 request (connection closed after it): status, headers, body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.http_port))
            .await
            .unwrap_or_else(|e| panic!("connecting to the HTTP server: {e}"));
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // A server may answer (413) and close before reading a large body.
        let _ = stream.write_all(body).await;
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw)).await;
        Response::parse(&raw)
    }

    /// Whether /healthz still answers 200.
    pub async fn healthy(&self) -> bool {
        self.request("GET", "/healthz", &[], b"").await.status == 200
    }

    /// The /metrics text.
    pub async fn metrics(&self) -> String {
        self.request("GET", "/metrics", &[], b"").await.body
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("running kill: {e}"));
        assert!(status.success());
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _already_gone = self.child.kill();
            let _reaped = self.child.wait();
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    /// Status code (0 if the server sent nothing).
    pub status: u16,
    /// Header lines as (lower-case name, value).
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl Response {
    fn parse(raw: &[u8]) -> Self {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Self {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The JSON error `code`.
    pub fn code(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("<not a JSON error: {}>", self.body))
    }
}

/// Claims for `id`/`uid` naming participant `user` (empty: the session's user), valid for
/// `ttl_secs` from now (negative: already expired), as the operator writes them.
fn claims(id: &str, uid: &str, user: &str, ttl_secs: i64) -> JoinClaims {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    JoinClaims {
        sub: id.to_owned(),
        uid: uid.to_owned(),
        backend: "test-backend".to_owned(),
        user: user.to_owned(),
        iat: now.saturating_sub(10),
        exp: now.saturating_add_signed(ttl_secs),
    }
}

/// A join token for `id`/`uid` naming participant `user`, valid for ten minutes.
pub fn participant_token(id: &str, uid: &str, user: &str) -> String {
    mint(KEY, &claims(id, uid, user, 600))
}

/// A join token for `id`/`uid` valid for `ttl_secs` from now (negative: already expired).
pub fn token(id: &str, uid: &str, ttl_secs: i64) -> String {
    mint(KEY, &claims(id, uid, "", ttl_secs))
}

/// [`token`] signed with the current key of `keys`, naming it in its `kid`, as the operator
/// mints them.
pub fn token_with_keys(
    keys: &voice_proto::token::KeySet,
    id: &str,
    uid: &str,
    ttl_secs: i64,
) -> String {
    voice_proto::token::mint_current(keys, &claims(id, uid, "", ttl_secs))
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("finding a free port: {e}"))
}

/// `seconds` of a sine at `hz`, sampled at `rate`, amplitude 10 000.
pub fn sine(hz: f64, rate: u32, seconds: f64) -> Vec<i16> {
    let n = (f64::from(rate) * seconds) as usize;
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            (10_000.0 * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16
        })
        .collect()
}

/// The frequency with the most energy among 100 Hz steps from 100 Hz to 4 kHz
/// (Goertzel), and that energy's share of the signal's.
pub fn dominant_frequency(samples: &[i16], rate: u32) -> (f64, f64) {
    let total: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
    let mut best = (0.0, 0.0);
    for step in 1..=40 {
        let hz = f64::from(step) * 100.0;
        let power = goertzel(samples, rate, hz);
        if power > best.1 {
            best = (hz, power);
        }
    }
    // Goertzel power of a pure tone is about N/2 times its mean-square energy sum.
    let share = if total > 0.0 {
        best.1 / (total * samples.len() as f64 / 2.0)
    } else {
        0.0
    };
    (best.0, share)
}

fn goertzel(samples: &[i16], rate: u32, hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// Root mean square of `samples`.
pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}

/// The aiortc release the interop tests were written against.
pub const AIORTC: &str = "aiortc==1.16.0";

/// Python of the test venv (`~/.cache/voice-operator/venv`) with aiortc, created and
/// provisioned idempotently (python3-venv and PyPI are needed).
pub fn aiortc_python() -> std::path::PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let venv = std::path::PathBuf::from(home).join(".cache/voice-operator/venv");
    let python = venv.join("bin/python");
    let has_aiortc = |python: &std::path::PathBuf| {
        Command::new(python)
            .args(["-c", "import aiortc, av"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has_aiortc(&python) {
        return python;
    }
    if !python.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap_or_else(|e| panic!("running python3 -m venv: {e}"));
        assert!(
            status.success(),
            "python3 -m venv failed: install python3-venv"
        );
    }
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", AIORTC])
        .status()
        .unwrap_or_else(|e| panic!("running pip: {e}"));
    assert!(
        status.success(),
        "pip install {AIORTC} failed (PyPI unreachable?)"
    );
    assert!(has_aiortc(&python), "aiortc installed but does not import");
    python
}

/// A free UDP port on loopback.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// An iptables rule inserted for a test and deleted when dropped (the tests run as root).
pub struct IptablesRule {
    table: Vec<String>,
    rule: Vec<String>,
}

impl IptablesRule {
    /// Inserts `rule` (chain first, e.g. `OUTPUT -d … -j DROP`) into `table` (`None`: filter).
    pub fn insert(table: Option<&str>, rule: &[&str]) -> Self {
        let table: Vec<String> = table
            .map(|t| vec!["-t".to_owned(), t.to_owned()])
            .unwrap_or_default();
        let rule: Vec<String> = rule.iter().map(|s| (*s).to_owned()).collect();
        let output = Command::new("iptables")
            .args(&table)
            .arg("-I")
            .args(&rule)
            .output()
            .unwrap_or_else(|e| {
                panic!("running iptables (apt-get install iptables; the test needs root): {e}")
            });
        assert!(
            output.status.success(),
            "iptables refused {rule:?} (the test needs root): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self { table, rule }
    }
}

impl Drop for IptablesRule {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args(&self.table)
            .arg("-D")
            .args(&self.rule)
            .status();
    }
}

/// Of the 48 kHz s16le recording an aiortc client wrote to `out` (then removed): how many
/// samples came back, and its loud 20 ms frames (RMS over 2,000), the echo of a test tone.
pub fn loud_echo(out: &std::path::Path) -> (usize, Vec<i16>) {
    let raw = std::fs::read(out).unwrap_or_else(|e| panic!("reading {}: {e}", out.display()));
    let _ = std::fs::remove_file(out);
    let received: Vec<i16> = raw
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let loud = received
        .chunks(960)
        .filter(|frame| rms(frame) > 2_000.0)
        .flatten()
        .copied()
        .collect();
    (received.len(), loud)
}
