//! Signaling over TLS (`TLS_CERT_FILE`/`TLS_KEY_FILE`), with clients nobody here wrote:
//! aiortc completes WHIP over HTTPS trusting only the test's CA and hears its tone back; a WSS
//! session (tokio-tungstenite over rustls) echoes audio; the certificate files are then
//! replaced and a new handshake gets the new certificate without a restart while the WSS
//! session opened before goes on. A second test holds the connection caps and timeouts to TLS.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{PATIENCE, Worker, aiortc_python, dominant_frequency, loud_echo, sine, token};
use futures::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

/// A test CA and the directory the worker reads its certificate from.
struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Pki {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("signaling-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let mut params =
            CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, "signaling test CA");
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let ca_pem = params
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("{e}"))
            .pem();
        std::fs::write(dir.join("ca.crt"), &ca_pem).unwrap_or_else(|e| panic!("{e}"));
        Self {
            dir,
            issuer: Issuer::new(params, key),
            ca_pem,
        }
    }

    /// Issues a serving certificate for 127.0.0.1 named `cn` with `serial` and installs it
    /// the way the kubelet updates a Secret volume (each file replaced by a rename); returns
    /// its DER.
    fn install(&self, cn: &str, serial: u64) -> Vec<u8> {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap_or_else(|e| panic!("{e}"));
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = params
            .signed_by(&key, &self.issuer)
            .unwrap_or_else(|e| panic!("{e}"));
        for (file, text) in [("tls.crt", cert.pem()), ("tls.key", key.serialize_pem())] {
            let staged = self.dir.join(format!(".{file}.new"));
            std::fs::write(&staged, text).unwrap_or_else(|e| panic!("{e}"));
            std::fs::rename(&staged, self.dir.join(file)).unwrap_or_else(|e| panic!("{e}"));
        }
        cert.der().to_vec()
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    fn start_worker(&self, env: &[(&str, &str)]) -> Worker {
        let (cert, key) = (self.path("tls.crt"), self.path("tls.key"));
        let mut all = vec![
            ("TLS_CERT_FILE", cert.as_str()),
            ("TLS_KEY_FILE", key.as_str()),
        ];
        all.extend_from_slice(env);
        Worker::start_with_env(2, &all)
    }

    /// A rustls client config that trusts only this CA.
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots
                .add(cert.unwrap_or_else(|e| panic!("{e}")))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("{e}"))
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// A TLS connection to the worker's HTTP port, retrying while the worker starts.
    async fn connect(&self, port: u16) -> TlsStream<TcpStream> {
        let connector = TlsConnector::from(self.client_config());
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let started = Instant::now();
        loop {
            let attempt = async {
                let tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
                connector.connect(name.clone(), tcp).await
            };
            match attempt.await {
                Ok(stream) => return stream,
                Err(e) if started.elapsed() > PATIENCE => panic!("no TLS handshake: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The certificate a new handshake is served.
    async fn served(&self, port: u16) -> Vec<u8> {
        let stream = self.connect(port).await;
        let certs = stream.get_ref().1.peer_certificates().unwrap_or_default();
        certs.first().map(|c| c.to_vec()).unwrap_or_default()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET /healthz` on an open TLS connection kept alive; returns the status line.
async fn healthz(stream: &mut TlsStream<TcpStream>) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no answer"))
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

/// Runs the aiortc WHIP client against `base` trusting `ca`; returns the seconds of 1 kHz
/// tone that came back.
async fn aiortc_echo(base: &str, ca: &Path, session: &str, uid: &str) -> f64 {
    let python = aiortc_python();
    let out = std::env::temp_dir().join(format!("aiortc-tls-{}.pcm", std::process::id()));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/aiortc_echo.py");
    let token = token(session, uid, 600);
    // Python's default SSL context (urllib) trusts exactly the file SSL_CERT_FILE names.
    let run = tokio::process::Command::new(&python)
        .env("SSL_CERT_FILE", ca)
        .arg(&script)
        .args([base, session, token.as_str(), "3"])
        .arg(&out)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("the aiortc client hung"))
        .unwrap_or_else(|e| panic!("running the aiortc client: {e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "aiortc client failed:\n{stdout}\n{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(report["state"], "connected", "{report}");
    assert_eq!(report["delete_status"], 200, "DELETE over HTTPS: {report}");
    // The loud part of what came back: the echo of the tone.
    let (_, loud) = loud_echo(&out);
    let (hz, _) = dominant_frequency(&loud, 48_000);
    assert_eq!(hz, 1_000.0, "the echo is not the tone");
    loud.len() as f64 / 48_000.0
}

#[tokio::test]
async fn aiortc_signals_over_https_and_a_replaced_certificate_is_served_without_a_restart() {
    let pki = Pki::new("rotate");
    let first = pki.install("voice-worker-first", 1);
    let worker = pki.start_worker(&[]);
    worker.reserve("team/tls-1", "uid-tls-1").await;
    assert_eq!(pki.served(worker.http_port).await, first);

    let base = format!("https://127.0.0.1:{}", worker.http_port);
    let seconds = aiortc_echo(&base, &pki.dir.join("ca.crt"), "team/tls-1", "uid-tls-1").await;
    println!("aiortc over HTTPS: {seconds:.2} s of tone came back");
    assert!(
        seconds > 2.0,
        "only {seconds:.2} s of the 3 s tone came back"
    );

    // A WSS session opened with the first certificate: the hello, then audio comes back.
    worker.reserve("team/wss-1", "uid-wss-1").await;
    let mut ws = wss(&pki, worker.http_port, "team/wss-1", "uid-wss-1").await;
    assert!(echoes(&mut ws).await, "no audio came back over WSS");

    let second = pki.install("voice-worker-second", 2);
    assert_ne!(first, second);
    let rotated = Instant::now();
    loop {
        if pki.served(worker.http_port).await == second {
            break;
        }
        assert!(
            rotated.elapsed() < Duration::from_secs(5),
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "new certificate served {} ms after the files changed",
        rotated.elapsed().as_millis()
    );
    let mut after = pki.connect(worker.http_port).await;
    assert_eq!(healthz(&mut after).await, "HTTP/1.1 200 OK");
    // The session opened before the rotation goes on.
    assert!(
        echoes(&mut ws).await,
        "the WSS session did not survive the rotation"
    );
}

type Wss = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A WSS session of `session` over rustls trusting only the test CA, past its hello.
async fn wss(pki: &Pki, port: u16, session: &str, uid: &str) -> Wss {
    let url = format!(
        "wss://127.0.0.1:{port}/v1/sessions/{session}/ws?token={}",
        token(session, uid, 600)
    );
    let connector = tokio_tungstenite::Connector::Rustls(pki.client_config());
    let (mut ws, response) =
        tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector))
            .await
            .unwrap_or_else(|e| panic!("WSS upgrade: {e}"));
    assert_eq!(response.status().as_u16(), 101);
    let hello = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .ok()
        .flatten()
        .and_then(Result::ok);
    let Some(Message::Text(hello)) = hello else {
        panic!("expected a JSON hello, got {hello:?}")
    };
    assert!(hello.contains(r#""type":"connected""#), "{hello}");
    ws
}

/// Sends 20 ms frames of tone (48 kHz) until audio comes back; whether it did in time.
async fn echoes(ws: &mut Wss) -> bool {
    let frame: Vec<u8> = sine(1_000.0, 48_000, 0.02)
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        ws.send(Message::Binary(frame.clone().into()))
            .await
            .unwrap_or_else(|e| panic!("send: {e}"));
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_millis(100), ws.next()).await
        {
            if matches!(message, Message::Binary(ref data) if !data.is_empty()) {
                return true;
            }
        }
    }
    false
}

#[tokio::test]
async fn tls_connections_count_against_the_caps_and_a_silent_client_is_cut() {
    let pki = Pki::new("caps");
    pki.install("voice-worker-caps", 7);
    let worker = pki.start_worker(&[("MAX_HTTP_CONNECTIONS_PER_ADDRESS", "2")]);
    // Plain HTTP on the TLS port gets no HTTP answer: the handshake fails.
    let _ = pki.connect(worker.http_port).await; // wait until it listens
    let plain = worker.request("GET", "/healthz", &[], b"").await;
    assert_eq!(
        plain.status, 0,
        "plain HTTP must not be served: {}",
        plain.body
    );
    // Let the server see both closes before the cap is measured.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Two handshaken, idle connections fill this address's cap; the third TCP connection is
    // refused with the plain-text 503 before any handshake.
    let mut held = vec![
        pki.connect(worker.http_port).await,
        pki.connect(worker.http_port).await,
    ];
    let mut third = TcpStream::connect(("127.0.0.1", worker.http_port))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, third.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("TooManyConnections"), "{answer}");

    // The held connections sent no request after their handshake: each is closed after the
    // header timeout (2 s in the test workers), which frees the places.
    let started = Instant::now();
    for stream in &mut held {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(6), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "an idle TLS connection stayed open: {read:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A client that starts a handshake and goes silent is cut by the same timeout.
    let mut silent = TcpStream::connect(("127.0.0.1", worker.http_port))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    silent
        .write_all(&[0x16, 0x03, 0x01])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(6), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "a stalled handshake stayed open: {read:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1_500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let mut fresh = pki.connect(worker.http_port).await;
    assert_eq!(
        healthz(&mut fresh).await,
        "HTTP/1.1 200 OK",
        "places were freed"
    );
}

#[test]
fn a_worker_given_a_key_of_another_certificate_refuses_to_start_and_says_why() {
    let pki = Pki::new("mismatch");
    pki.install("voice-worker-mismatch", 9);
    let other = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(pki.dir.join("tls.key"), other.serialize_pem())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_voice-worker"))
        .env("CONTROL_INSECURE", "true")
        .env("POD_IP", "127.0.0.1")
        .env("UDP_PORT", "0")
        .env("RUST_LOG", "warn")
        .env("TLS_CERT_FILE", pki.path("tls.crt"))
        .env("TLS_KEY_FILE", pki.path("tls.key"))
        .args(["--grpc-port", &common::free_port().to_string()])
        .args(["--http-port", &common::free_port().to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting voice-worker: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            break status;
        }
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            panic!("a worker with a mismatched key kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("SignalingTlsInvalid"), "{stderr}");
    assert!(stderr.contains("TLS_CERT_FILE/TLS_KEY_FILE"), "{stderr}");
}
