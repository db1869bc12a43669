//! Real TLS 1.3 handshakes (over an in-memory pipe) against the control port's config.

use super::*;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use voice_proto::control_tls::{
    self as certs, CertifiedKey, OPERATOR_CLIENT_NAME, Role, worker_server_name,
};

const NOW: i64 = 1_900_000_000;
const DAY: Duration = Duration::from_secs(86_400);

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
    )
    .unwrap_or(NOW)
}

fn ca(name: &str) -> CertifiedKey {
    certs::new_ca(name, now(), DAY * 30).unwrap_or_else(|e| panic!("{e}"))
}

fn leaf(ca: &CertifiedKey, role: Role, name: &str) -> CertifiedKey {
    certs::issue(ca, role, name, now(), DAY).unwrap_or_else(|e| panic!("{e}"))
}

const SERVER: &str = "b-workers.ns.svc";

/// A directory with `ca.crt` (the given CAs), `tls.crt` and `tls.key`.
fn write_dir(tag: &str, trusted: &[&CertifiedKey], serving: &CertifiedKey) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("control-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    write_files(&dir, trusted, serving);
    dir
}

fn write_files(dir: &Path, trusted: &[&CertifiedKey], serving: &CertifiedKey) {
    let bundle: String = trusted.iter().map(|c| c.cert_pem.as_str()).collect();
    std::fs::write(dir.join(CA_FILE), bundle).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join(CERT_FILE), &serving.cert_pem).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join(KEY_FILE), &serving.key_pem).unwrap_or_else(|e| panic!("{e}"));
}

/// Runs one handshake of a client trusting `server_ca` and presenting `identity`; returns
/// whether the *server* accepted it.
async fn handshake(
    tls: &ControlTls,
    server_ca: &CertifiedKey,
    identity: Option<&CertifiedKey>,
) -> bool {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(server_ca.cert_pem.as_bytes()) {
        roots
            .add(cert.unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(id) => {
            let chain = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap_or_else(|e| panic!("{e}"));
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
            builder
                .with_client_auth_cert(chain, key)
                .unwrap_or_else(|e| panic!("{e}"))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let connector = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(SERVER.to_owned()).unwrap_or_else(|e| panic!("{e}"));
    let acceptor = tls.acceptor();
    let (_client, server) = tokio::join!(
        async {
            let stream = connector.connect(name, client_io).await;
            // Keep the client alive until the server decided (TLS 1.3 client auth is checked
            // after the client's side already finished).
            tokio::time::sleep(Duration::from_millis(50)).await;
            stream.is_ok()
        },
        acceptor.accept(server_io)
    );
    server.is_ok()
}

#[tokio::test]
async fn only_a_client_certificate_from_the_trusted_ca_completes_the_handshake() {
    let ca1 = ca("ca-1");
    let other = ca("someone else");
    let serving = leaf(&ca1, Role::Server, SERVER);
    let dir = write_dir("roles", &[&ca1], &serving);
    let tls = ControlTls::load(&dir).unwrap_or_else(|e| panic!("{e}"));

    let operator = leaf(&ca1, Role::Client, OPERATOR_CLIENT_NAME);
    assert!(handshake(&tls, &ca1, Some(&operator)).await, "the operator");
    assert!(!handshake(&tls, &ca1, None).await, "no client certificate");
    let stranger = leaf(&other, Role::Client, OPERATOR_CLIENT_NAME);
    assert!(!handshake(&tls, &ca1, Some(&stranger)).await, "another CA");
    // A worker's own serving certificate (same CA, serverAuth only) cannot call a worker.
    let worker = leaf(&ca1, Role::Server, &worker_server_name("ns", "other"));
    assert!(!handshake(&tls, &ca1, Some(&worker)).await, "wrong role");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn rotation_accepts_both_cas_in_the_bundle_then_only_the_new_one() {
    let old = ca("old");
    let new = ca("new");
    let dir = write_dir("rotate", &[&old], &leaf(&old, Role::Server, SERVER));
    let tls = ControlTls::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let old_client = leaf(&old, Role::Client, OPERATOR_CLIENT_NAME);
    let new_client = leaf(&new, Role::Client, OPERATOR_CLIENT_NAME);
    assert!(handshake(&tls, &old, Some(&old_client)).await);
    assert!(!handshake(&tls, &old, Some(&new_client)).await);
    assert_eq!(
        tls.reload().ok(),
        Some(false),
        "unchanged files are not reloaded"
    );

    // Step 1: both CAs trusted, serving certificate from the new CA.
    write_files(&dir, &[&new, &old], &leaf(&new, Role::Server, SERVER));
    assert_eq!(tls.reload().ok(), Some(true));
    assert!(
        handshake(&tls, &new, Some(&old_client)).await,
        "old CA still trusted"
    );
    assert!(
        handshake(&tls, &new, Some(&new_client)).await,
        "new CA trusted"
    );

    // Step 2: the old CA is dropped.
    write_files(&dir, &[&new], &leaf(&new, Role::Server, SERVER));
    assert_eq!(tls.reload().ok(), Some(true));
    assert!(!handshake(&tls, &new, Some(&old_client)).await);
    assert!(handshake(&tls, &new, Some(&new_client)).await);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_half_written_update_keeps_the_previous_config() {
    let ca1 = ca("ca");
    let dir = write_dir("half", &[&ca1], &leaf(&ca1, Role::Server, SERVER));
    let tls = ControlTls::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    // A new certificate arrives before its key: it does not match, so nothing changes.
    let next = leaf(&ca1, Role::Server, SERVER);
    std::fs::write(dir.join(CERT_FILE), &next.cert_pem).unwrap_or_else(|e| panic!("{e}"));
    assert!(tls.reload().is_err());
    let client = leaf(&ca1, Role::Client, OPERATOR_CLIENT_NAME);
    assert!(
        handshake(&tls, &ca1, Some(&client)).await,
        "old config still serves"
    );
    std::fs::write(dir.join(KEY_FILE), &next.key_pem).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tls.reload().ok(), Some(true));
    assert!(handshake(&tls, &ca1, Some(&client)).await);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn missing_or_garbage_files_name_the_file() {
    let dir = std::env::temp_dir().join(format!("control-tls-missing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let err = ControlTls::load(&dir).map(|_| ()).unwrap_err().to_string();
    assert!(
        err.contains("ca.crt") && err.contains("CONTROL_TLS_DIR"),
        "{err}"
    );
    for file in [CA_FILE, CERT_FILE, KEY_FILE] {
        std::fs::write(dir.join(file), "garbage").unwrap_or_else(|e| panic!("{e}"));
    }
    let err = ControlTls::load(&dir).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("ca.crt"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
