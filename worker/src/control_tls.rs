//! The worker's side of the control channel's mutual TLS.
//!
//! The gRPC port terminates TLS itself (not through tonic's static `ServerTlsConfig`) so that
//! it can take a new serving certificate and a new CA bundle without a restart: the files in
//! `CONTROL_TLS_DIR` (a Secret volume) are re-read every few seconds, and a changed, valid set
//! replaces the config used for the *next* handshakes. Open connections (the operator's event
//! stream, media) are not touched, so rotation drops nothing. During a CA rotation `ca.crt`
//! holds both CAs, and a client certificate from either is accepted.
//!
//! Every connection must present a client certificate that chains to a CA in `ca.crt` and
//! carries the `clientAuth` extended key usage; anything else fails the handshake, before
//! HTTP/2 starts and before any handler runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::Stream;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use voice_proto::control_tls::{CA_FILE, CERT_FILE, KEY_FILE};

/// How often the TLS files are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// Time a client gets to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once; more wait, so a flood of idle sockets cannot starve the
/// operator's connection of CPU or memory.
const MAX_HANDSHAKES: usize = 64;

/// Why the control channel's TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("CONTROL_TLS_DIR: cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM of the kind expected.
    #[error("CONTROL_TLS_DIR: {path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the certificate, key or CA bundle.
    #[error("CONTROL_TLS_DIR: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built from the CA bundle.
    #[error("CONTROL_TLS_DIR: ca.crt: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The three files' contents, to tell a real change from a re-read.
type Files = [Vec<u8>; 3];

/// The current TLS acceptor of the control port and where it comes from.
pub struct ControlTls {
    dir: PathBuf,
    current: RwLock<(Files, TlsAcceptor)>,
}

impl std::fmt::Debug for ControlTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlTls")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn read(dir: &Path) -> Result<Files, TlsError> {
    let one = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| TlsError::Read { path, source })
    };
    Ok([one(CA_FILE)?, one(CERT_FILE)?, one(KEY_FILE)?])
}

fn pem_error(dir: &Path, file: &str, message: impl Into<String>) -> TlsError {
    TlsError::Pem {
        path: dir.join(file),
        message: message.into(),
    }
}

/// A rustls server config that requires a client certificate from a CA in `ca_pem`, serves
/// `cert_pem`/`key_pem`, speaks TLS 1.3 and offers HTTP/2 only (gRPC).
pub fn server_config(dir: &Path, files: &Files) -> Result<ServerConfig, TlsError> {
    let [ca_pem, cert_pem, key_pem] = files;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| pem_error(dir, CA_FILE, e.to_string()))?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(pem_error(dir, CA_FILE, "no CA certificate"));
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(dir, CERT_FILE, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(dir, CERT_FILE, "no certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| pem_error(dir, KEY_FILE, e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

impl ControlTls {
    /// Loads the files in `dir`; fails (naming the file) when any is missing or invalid.
    pub fn load(dir: &Path) -> Result<Arc<Self>, TlsError> {
        let files = read(dir)?;
        let acceptor = TlsAcceptor::from(Arc::new(server_config(dir, &files)?));
        Ok(Arc::new(Self {
            dir: dir.to_owned(),
            current: RwLock::new((files, acceptor)),
        }))
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Re-reads the files and swaps in a new config when they changed and are valid
    /// together. A half-updated set (a new certificate beside the old key) fails and keeps
    /// the old config until the rest arrives. Returns whether the config changed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let files = read(&self.dir)?;
        if self.current.read().unwrap_or_else(|p| p.into_inner()).0 == files {
            return Ok(false);
        }
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&self.dir, &files)?));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (files, acceptor);
        Ok(true)
    }

    /// Reloads every [`RELOAD_EVERY`] until `shutdown`; a failed reload is logged once per
    /// distinct error and the previous config stays in force.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        let mut last_error = String::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.reload() {
                Ok(true) => {
                    last_error.clear();
                    tracing::info!(dir = %self.dir.display(), "control TLS certificate or CA bundle changed: reloaded");
                }
                Ok(false) => last_error.clear(),
                Err(e) => {
                    let message = e.to_string();
                    if message != last_error {
                        tracing::warn!(error = %message, "control TLS files changed but cannot be used yet; keeping the previous ones");
                        last_error = message;
                    }
                }
            }
        }
    }
}

/// Accepted control connections that completed the mutual-TLS handshake, for tonic's
/// `serve_with_incoming_shutdown`. Handshakes run concurrently (at most
/// [`MAX_HANDSHAKES`], each within [`HANDSHAKE_TIMEOUT`]); refused ones are logged and
/// dropped without reaching the server.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ControlTls>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(MAX_HANDSHAKES);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Per-connection errors (ECONNABORTED, EMFILE): pause, then go on.
                    tracing::warn!(error = %e, "control port accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, tx) = (tls.acceptor(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "control connection refused: TLS handshake failed")
                    }
                    Err(_) => {
                        tracing::info!(%peer, "control connection refused: TLS handshake timed out")
                    }
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|s| (s, rx)) })
}

#[cfg(test)]
mod tests;
