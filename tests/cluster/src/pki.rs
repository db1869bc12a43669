//! Certificates and keys of the local control plane, generated fresh for every start.
//!
//! Everything is ECDSA P-256: rcgen's ring backend cannot generate RSA keys, and
//! kube-apiserver signs service-account tokens with ES256 when given an EC key.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::Error;

/// Names the apiserver's serving certificate answers to: loopback, the in-cluster service
/// names, and the first address of `--service-cluster-ip-range=10.0.0.0/24`.
const APISERVER_SANS: [&str; 7] = [
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "10.0.0.1",
];

/// A certificate and its private key, PEM-encoded, and where they were written.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM (PKCS#8) private key.
    pub key_pem: String,
    /// File holding `cert_pem`.
    pub cert_file: PathBuf,
    /// File holding `key_pem` (mode 0600).
    pub key_file: PathBuf,
}

/// All credentials of one cluster instance.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA that signs every certificate and that the apiserver trusts for client certs.
    pub ca: CertPair,
    /// kube-apiserver's serving certificate.
    pub apiserver: CertPair,
    /// `admin` in `system:masters`: the kubeconfig handed to developers and tests.
    pub admin: CertPair,
    /// `system:kube-controller-manager` in `system:masters` (see [`generate`] for why).
    pub controller_manager: CertPair,
    /// Service-account token signing key (private, PKCS#8).
    pub service_account_key: PathBuf,
    /// Its public key, for verifying tokens.
    pub service_account_pub: PathBuf,
}

/// Generates a CA, the serving and client certificates and the service-account keys into `dir`.
pub fn generate(dir: &Path) -> Result<Pki, Error> {
    std::fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "voice-cluster-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = write_pair(dir, "ca", ca_cert.pem(), ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca_params, ca_key);

    let sans: Vec<String> = APISERVER_SANS.iter().map(|s| s.to_string()).collect();
    let apiserver = leaf(
        dir,
        "apiserver",
        &issuer,
        sans,
        "kube-apiserver",
        None,
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let admin = leaf(
        dir,
        "admin",
        &issuer,
        Vec::new(),
        "admin",
        Some("system:masters"),
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    // The bootstrap role of system:kube-controller-manager only covers running controllers
    // under per-controller service accounts; with no token controllers here
    // (--use-service-account-credentials=false) the garbage collector and the namespace
    // controller act as this user and need to delete anything, hence system:masters.
    let controller_manager = leaf(
        dir,
        "kube-controller-manager",
        &issuer,
        Vec::new(),
        "system:kube-controller-manager",
        Some("system:masters"),
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;

    let sa_key = KeyPair::generate()?;
    let service_account_key = dir.join("service-account.key");
    write_file(
        &service_account_key,
        sa_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    let service_account_pub = dir.join("service-account.pub");
    write_file(
        &service_account_pub,
        sa_key.public_key_pem().as_bytes(),
        0o644,
    )?;

    Ok(Pki {
        ca,
        apiserver,
        admin,
        controller_manager,
        service_account_key,
        service_account_pub,
    })
}

/// A certificate signed by the CA, for a server or a client.
fn leaf(
    dir: &Path,
    file_stem: &str,
    issuer: &Issuer<'_, KeyPair>,
    sans: Vec<String>,
    common_name: &str,
    organization: Option<&str>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertPair, Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        // Kubernetes reads group membership from O=.
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, issuer)?;
    write_pair(dir, file_stem, cert.pem(), key.serialize_pem())
}

fn write_pair(
    dir: &Path,
    stem: &str,
    cert_pem: String,
    key_pem: String,
) -> Result<CertPair, Error> {
    let cert_file = dir.join(format!("{stem}.crt"));
    let key_file = dir.join(format!("{stem}.key"));
    write_file(&cert_file, cert_pem.as_bytes(), 0o644)?;
    write_file(&key_file, key_pem.as_bytes(), 0o600)?;
    Ok(CertPair {
        cert_pem,
        key_pem,
        cert_file,
        key_file,
    })
}

/// Keys are written 0600 from the first byte, not chmod-ed afterwards.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(Error::io("create", path))?;
    file.write_all(contents).map_err(Error::io("write", path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn generates_pem_files_with_private_keys_readable_only_by_the_owner() {
        let dir = std::env::temp_dir().join(format!("voice-cluster-pki-{}", std::process::id()));
        let pki = generate(&dir).expect("pki");
        for pair in [&pki.ca, &pki.apiserver, &pki.admin, &pki.controller_manager] {
            assert!(
                std::fs::read_to_string(&pair.cert_file)
                    .unwrap()
                    .starts_with("-----BEGIN CERTIFICATE-----")
            );
            let mode = std::fs::metadata(&pair.key_file)
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{}", pair.key_file.display());
        }
        let public = std::fs::read_to_string(&pki.service_account_pub).unwrap();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
