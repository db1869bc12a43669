//! TLS on the signaling HTTP port (HTTPS and WSS), from `TLS_CERT_FILE` and `TLS_KEY_FILE`.
//!
//! The files are a mounted `kubernetes.io/tls` Secret (`spec.workers.network.tls`); cert-manager
//! renews it in place and the kubelet rewrites the files, so they are re-read every
//! [`RELOAD_EVERY`] and a changed, valid pair replaces the config used for the *next*
//! handshakes. Open connections keep the certificate they began with, so a renewal drops no
//! call. A pair that cannot be used (unreadable, not PEM, a key that does not match the
//! certificate: a Secret caught half-written) is logged once and the last good pair stays.
//!
//! Only the handshake lives here; [`crate::server`] runs it on connections it has already
//! counted against its caps, within its header timeout.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often the certificate and key files are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// The variables that name the files, for errors a user can act on.
const CERT_VAR: &str = "TLS_CERT_FILE";
const KEY_VAR: &str = "TLS_KEY_FILE";

/// Why the signaling certificate cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HttpTlsError {
    /// A file could not be read.
    #[error(
        "{var}: cannot read {path}; mount the backend's network.tls Secret there or unset {var}"
    )]
    Read {
        /// `TLS_CERT_FILE` or `TLS_KEY_FILE`.
        var: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM of the kind expected.
    #[error("{var}: {path}: {message}")]
    Pem {
        /// `TLS_CERT_FILE` or `TLS_KEY_FILE`.
        var: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the pair (most often: the key is not the certificate's key).
    #[error(
        "TLS_CERT_FILE/TLS_KEY_FILE: the certificate and key cannot be served together: {0}; \
         put the key of the first certificate of tls.crt in tls.key"
    )]
    Rustls(#[from] rustls::Error),
}

/// The two files' contents, to tell a real change from a re-read.
type Files = [Vec<u8>; 2];

/// The current TLS acceptor of the signaling port and the files it comes from.
pub struct HttpTls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Files, TlsAcceptor)>,
}

impl std::fmt::Debug for HttpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn read(var: &'static str, path: &Path) -> Result<Vec<u8>, HttpTlsError> {
    std::fs::read(path).map_err(|source| HttpTlsError::Read {
        var,
        path: path.to_owned(),
        source,
    })
}

/// A server config serving the chain in `cert_pem` with `key_pem`, TLS 1.2 and 1.3, no client
/// certificates, HTTP/1.1 by ALPN (the signaling server speaks HTTP/1.1 only; WebSocket
/// upgrades need it).
fn server_config(cert: &Path, key: &Path, files: &Files) -> Result<ServerConfig, HttpTlsError> {
    let [cert_pem, key_pem] = files;
    let pem = |var, path: &Path, message: String| HttpTlsError::Pem {
        var,
        path: path.to_owned(),
        message,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(CERT_VAR, cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem(CERT_VAR, cert, "no PEM certificate".to_owned()));
    }
    let private_key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem(KEY_VAR, key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl HttpTls {
    /// Loads `cert` and `key`; fails, naming the file, when either is missing or invalid.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, HttpTlsError> {
        let files = [read(CERT_VAR, cert)?, read(KEY_VAR, key)?];
        let acceptor = TlsAcceptor::from(Arc::new(server_config(cert, key, &files)?));
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
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

    /// Re-reads the files and swaps in a new config when they changed and fit together;
    /// otherwise the previous config stays. Returns whether the config changed.
    pub fn reload(&self) -> Result<bool, HttpTlsError> {
        let files = [read(CERT_VAR, &self.cert)?, read(KEY_VAR, &self.key)?];
        if self.current.read().unwrap_or_else(|p| p.into_inner()).0 == files {
            return Ok(false);
        }
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&self.cert, &self.key, &files)?));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (files, acceptor);
        Ok(true)
    }

    /// Reloads every [`RELOAD_EVERY`] until `shutdown`; a failed reload is logged once per
    /// distinct error, and the last good pair keeps serving.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        let mut last_error = String::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.reload() {
                Ok(changed) => {
                    if changed {
                        tracing::info!(cert = %self.cert.display(), "signaling TLS certificate changed: reloaded");
                    }
                    last_error.clear();
                }
                Err(e) => {
                    let message = e.to_string();
                    if message != last_error {
                        tracing::warn!(error = %message, "signaling TLS files changed but cannot be used; serving the previous certificate");
                        last_error = message;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
