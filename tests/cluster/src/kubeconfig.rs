//! Kubeconfig files with the credentials embedded, so they can be copied elsewhere and still work.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::Error;
use crate::pki::{CertPair, write_file};

/// Writes a kubeconfig for `user` that talks to `server` with a client certificate.
pub fn write(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    creds: &CertPair,
) -> Result<(), Error> {
    let contents = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: voice-cluster
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: voice-cluster
  context:
    cluster: voice-cluster
    user: {user}
    namespace: default
current-context: voice-cluster
",
        ca = STANDARD.encode(ca_pem),
        cert = STANDARD.encode(&creds.cert_pem),
        key = STANDARD.encode(&creds.key_pem),
    );
    write_file(path, contents.as_bytes(), 0o600)
}
