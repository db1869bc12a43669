//! Mutual TLS of the control channel (operator → worker gRPC, port 50051): the file names,
//! server names and certificates both sides agree on.
//!
//! The operator keeps one CA (a Secret in its own namespace). It issues itself a client
//! certificate (extended key usage `clientAuth` only) and each backend a serving certificate
//! (`serverAuth` only) for [`worker_server_name`]. Because every certificate carries exactly one
//! role, a worker's serving key, which lives in the backend's namespace, can never be used to
//! call another worker; the TLS handshake refuses it before any handler runs.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// File (and Secret key) of the CA bundle a worker trusts for client certificates.
pub const CA_FILE: &str = "ca.crt";
/// File (and Secret key) of the worker's serving certificate chain.
pub const CERT_FILE: &str = "tls.crt";
/// File (and Secret key) of the worker's serving key.
pub const KEY_FILE: &str = "tls.key";
/// Common name of the operator's client certificate.
pub const OPERATOR_CLIENT_NAME: &str = "voice-operator";

/// The name a backend's serving certificate is issued for, and which the operator checks
/// when it connects to a worker by IP: the DNS name of the backend's headless Service, so a
/// worker of one backend cannot pass for a worker of another.
pub fn worker_server_name(namespace: &str, backend: &str) -> String {
    format!("{backend}-workers.{namespace}.svc")
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
    /// End of validity, in seconds since the Unix epoch.
    pub not_after_unix: i64,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("not_after_unix", &self.not_after_unix)
            .finish_non_exhaustive()
    }
}

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen refused the parameters, or the CA's certificate or key did not parse.
    #[error("control-channel certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A time outside what a certificate can carry.
    #[error("control-channel certificate: time out of range: {0}")]
    Time(#[from] time::error::ComponentRange),
}

fn validity(
    params: &mut CertificateParams,
    now_unix: i64,
    valid_for: Duration,
) -> Result<i64, TlsError> {
    // One hour back: a worker whose clock is slightly behind still accepts a fresh certificate.
    let not_before = now_unix.saturating_sub(3600);
    let not_after =
        now_unix.saturating_add(i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX / 4));
    params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before)?;
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after)?;
    Ok(not_after)
}

/// A new self-signed CA, valid for `valid_for` from `now_unix`.
pub fn new_ca(
    common_name: &str,
    now_unix: i64,
    valid_for: Duration,
) -> Result<CertifiedKey, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let not_after_unix = validity(&mut params, now_unix, valid_for)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after_unix,
    })
}

/// The role a leaf certificate may play; each certificate gets exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A worker's serving certificate (`serverAuth`), for one DNS name.
    Server,
    /// The operator's client certificate (`clientAuth`).
    Client,
}

/// A leaf certificate for `name` in `role`, signed by `ca`.
pub fn issue(
    ca: &CertifiedKey,
    role: Role,
    name: &str,
    now_unix: i64,
    valid_for: Duration,
) -> Result<CertifiedKey, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let sans = match role {
        Role::Server => vec![name.to_owned()],
        Role::Client => Vec::new(),
    };
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match role {
        Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    let not_after_unix = validity(&mut params, now_unix, valid_for)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after_unix,
    })
}

/// SHA-256 of a PEM text, hex: tells whether a Secret was made from this very CA.
pub fn fingerprint(pem: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, pem.trim().as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_ca_signs_one_role_per_leaf_with_the_asked_validity() {
        let ca = new_ca("test CA", NOW, DAY * 3650).unwrap_or_else(|e| panic!("{e}"));
        assert!(ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let server = issue(&ca, Role::Server, &worker_server_name("ns", "b"), NOW, DAY)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(server.not_after_unix, NOW + 86_400);
        let client = issue(&ca, Role::Client, OPERATOR_CLIENT_NAME, NOW, DAY)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(server.key_pem, client.key_pem, "every leaf has its own key");
        assert_eq!(worker_server_name("ns", "b"), "b-workers.ns.svc");
    }

    #[test]
    fn a_leaf_cannot_be_issued_from_garbage() {
        let bogus = CertifiedKey {
            cert_pem: "not a certificate".into(),
            key_pem: "not a key".into(),
            not_after_unix: 0,
        };
        assert!(issue(&bogus, Role::Client, "x", NOW, DAY).is_err());
    }

    #[test]
    fn fingerprints_ignore_surrounding_whitespace_only() {
        assert_eq!(fingerprint("abc\n"), fingerprint("abc"));
        assert_ne!(fingerprint("abc"), fingerprint("abd"));
        assert_eq!(fingerprint("abc").len(), 64);
    }
}
