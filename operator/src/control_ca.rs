//! The control channel's CA: one Secret in the operator's namespace, created once and shared
//! by every replica and restart, from which the operator issues its own client certificate
//! (in memory) and each backend's serving certificate (a Secret the worker pods mount).
//!
//! Rotation (docs/security.md, "Control channel") is two edits of the CA Secret, and no
//! connection or session is dropped by either:
//! 1. Put a new CA in `ca.crt`/`ca.key` and move the old pair to `previous-ca.crt`/
//!    `previous-ca.key`. Every backend's Secret then trusts both CAs and gets a serving
//!    certificate from the new one; the operator keeps presenting a client certificate from
//!    the *old* CA, which every worker trusts whether or not its files were refreshed yet.
//! 2. Once every worker Secret carries both CAs (and the kubelet refreshed the volumes),
//!    delete `previous-ca.*`. The operator switches to a client certificate from the new CA,
//!    which every worker already trusts; the old CA leaves the bundles.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use voice_proto::control_tls::{
    self, CA_FILE, CERT_FILE, CertifiedKey, KEY_FILE, OPERATOR_CLIENT_NAME, Role,
};

/// Name of the CA Secret in the operator's namespace.
pub const CA_SECRET: &str = "voice-operator-control-ca";
/// Key of the signing CA's certificate in the CA Secret.
pub const CA_CERT: &str = "ca.crt";
/// Key of the signing CA's private key in the CA Secret.
pub const CA_KEY: &str = "ca.key";
/// Key of the previous CA's certificate during a rotation.
pub const PREVIOUS_CA_CERT: &str = "previous-ca.crt";
/// Key of the previous CA's private key during a rotation.
pub const PREVIOUS_CA_KEY: &str = "previous-ca.key";
/// Annotation on a backend's TLS Secret: fingerprint of the CA that signed it, plus its
/// trust bundle, so a CA change is seen without parsing certificates.
pub const ANNOTATION_ISSUER: &str = "voicebackends.dev/control-ca";
/// Annotation on a backend's TLS Secret: when its serving certificate expires (Unix seconds).
pub const ANNOTATION_NOT_AFTER: &str = "voicebackends.dev/not-after";
/// How long a new CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// How long a serving or client certificate is valid.
const LEAF_VALIDITY: Duration = Duration::from_secs(90 * 86_400);
/// A leaf is re-issued when less than this is left.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// How often the CA Secret is re-read and the client certificate's age checked.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// Why the CA cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CA Secret lacks a key or holds something that is not text.
    #[error("Secret {CA_SECRET}: key {0} is missing or not UTF-8 PEM")]
    MissingKey(&'static str),
    /// A certificate could not be made from the CA (e.g. `ca.key` does not match).
    #[error("Secret {CA_SECRET}: {0}")]
    Issue(#[from] control_tls::TlsError),
    /// Reading or creating the CA Secret failed.
    #[error("Secret {CA_SECRET}: {0}")]
    Kube(#[from] kube::Error),
}

fn unix(now: SystemTime) -> i64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .unwrap_or(0)
}

fn renew_at(not_after_unix: i64) -> i64 {
    not_after_unix.saturating_sub(i64::try_from(RENEW_BEFORE.as_secs()).unwrap_or(0))
}

/// The CA in force and, during a rotation, the previous one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlCa {
    /// Signs serving certificates (and the client certificate when no rotation runs).
    pub current: CertifiedKey,
    /// The CA being retired: still trusted, and it signs the client certificate.
    pub previous: Option<CertifiedKey>,
}

/// A backend TLS Secret's data (file name → bytes) and annotations.
pub type WorkerSecret = (BTreeMap<String, ByteString>, BTreeMap<String, String>);

impl ControlCa {
    /// A new CA.
    pub fn generate(now: SystemTime) -> Result<Self, CaError> {
        let mut current = control_tls::new_ca("voice-operator control CA", unix(now), CA_VALIDITY)?;
        // A CA read back from the Secret has no parsed expiry; CAs compare by their PEMs.
        current.not_after_unix = 0;
        Ok(Self {
            current,
            previous: None,
        })
    }

    /// Reads the CA Secret's data.
    pub fn from_data(data: &BTreeMap<String, ByteString>) -> Result<Self, CaError> {
        let text = |key: &'static str| {
            data.get(key)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .filter(|s| !s.trim().is_empty())
        };
        let pair = |cert: &'static str, key: &'static str| -> Result<CertifiedKey, CaError> {
            Ok(CertifiedKey {
                cert_pem: text(cert).ok_or(CaError::MissingKey(cert))?,
                key_pem: text(key).ok_or(CaError::MissingKey(key))?,
                not_after_unix: 0,
            })
        };
        let previous = match text(PREVIOUS_CA_CERT) {
            Some(_) => Some(pair(PREVIOUS_CA_CERT, PREVIOUS_CA_KEY)?),
            None => None,
        };
        Ok(Self {
            current: pair(CA_CERT, CA_KEY)?,
            previous,
        })
    }

    /// The CA Secret's data.
    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::from([
            (CA_CERT.to_owned(), bytes(&self.current.cert_pem)),
            (CA_KEY.to_owned(), bytes(&self.current.key_pem)),
        ]);
        if let Some(previous) = &self.previous {
            data.insert(PREVIOUS_CA_CERT.to_owned(), bytes(&previous.cert_pem));
            data.insert(PREVIOUS_CA_KEY.to_owned(), bytes(&previous.key_pem));
        }
        data
    }

    /// Every CA certificate a party must trust now: the current one, then the previous.
    pub fn trust_bundle(&self) -> String {
        let mut bundle = pem_line(&self.current.cert_pem);
        if let Some(previous) = &self.previous {
            bundle.push_str(&pem_line(&previous.cert_pem));
        }
        bundle
    }

    /// What a backend's TLS Secret must have been made from: the signing CA and the bundle.
    pub fn issuer_tag(&self) -> String {
        control_tls::fingerprint(&format!("{}{}", self.current.cert_pem, self.trust_bundle()))
    }

    /// A new client certificate for the operator: from the previous CA while a rotation
    /// runs (every worker still trusts it), from the current one otherwise.
    pub fn client_certificate(&self, now: SystemTime) -> Result<CertifiedKey, CaError> {
        let issuer = self.previous.as_ref().unwrap_or(&self.current);
        Ok(control_tls::issue(
            issuer,
            Role::Client,
            OPERATOR_CLIENT_NAME,
            unix(now),
            LEAF_VALIDITY,
        )?)
    }

    /// The data and annotations of a backend's TLS Secret (see [`WorkerSecret`]): the trust bundle and a new
    /// serving certificate for `server_name`.
    pub fn worker_secret(
        &self,
        server_name: &str,
        now: SystemTime,
    ) -> Result<WorkerSecret, CaError> {
        let leaf = control_tls::issue(
            &self.current,
            Role::Server,
            server_name,
            unix(now),
            LEAF_VALIDITY,
        )?;
        let data = BTreeMap::from([
            (CA_FILE.to_owned(), bytes(&self.trust_bundle())),
            (CERT_FILE.to_owned(), bytes(&leaf.cert_pem)),
            (KEY_FILE.to_owned(), bytes(&leaf.key_pem)),
        ]);
        let annotations = BTreeMap::from([
            (ANNOTATION_ISSUER.to_owned(), self.issuer_tag()),
            (
                ANNOTATION_NOT_AFTER.to_owned(),
                leaf.not_after_unix.to_string(),
            ),
        ]);
        Ok((data, annotations))
    }

    /// Whether a backend's TLS Secret is still good: made from this CA and bundle, with all
    /// three files, and not due for renewal.
    pub fn worker_secret_current(&self, secret: &Secret, now: SystemTime) -> bool {
        let annotations = secret.metadata.annotations.as_ref();
        let get = |k: &str| annotations.and_then(|a| a.get(k));
        let data_ok = secret.data.as_ref().is_some_and(|d| {
            [CA_FILE, CERT_FILE, KEY_FILE]
                .iter()
                .all(|k| d.get(*k).is_some_and(|v| !v.0.is_empty()))
        });
        let not_after = get(ANNOTATION_NOT_AFTER).and_then(|v| v.parse::<i64>().ok());
        data_ok
            && get(ANNOTATION_ISSUER) == Some(&self.issuer_tag())
            && not_after.is_some_and(|t| unix(now) < renew_at(t))
    }
}

fn bytes(text: &str) -> ByteString {
    ByteString(text.as_bytes().to_vec())
}

fn pem_line(pem: &str) -> String {
    format!("{}\n", pem.trim_end())
}

/// Reads the CA Secret, creating it with a new CA when it does not exist. Two replicas racing
/// to create it both end up with the one the API server kept.
pub async fn load_or_create(api: &Api<Secret>, now: SystemTime) -> Result<ControlCa, CaError> {
    if let Some(secret) = api.get_opt(CA_SECRET).await? {
        return ControlCa::from_data(&secret.data.unwrap_or_default());
    }
    let ca = ControlCa::generate(now)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "voice-operator".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(ca.to_data()),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = CA_SECRET, "created the control-channel CA");
            Ok(ca)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let secret = api.get(CA_SECRET).await?;
            ControlCa::from_data(&secret.data.unwrap_or_default())
        }
        Err(e) => Err(e.into()),
    }
}

/// The CA and the operator's client certificate in force, shared by the worker client and
/// the backend controller.
#[derive(Debug, PartialEq, Eq)]
pub struct Trust {
    /// The CA (and the previous one during a rotation).
    pub ca: ControlCa,
    /// The operator's client certificate.
    pub client: CertifiedKey,
}

/// [`Trust`] behind a lock, replaced as a whole when the CA changes or the client
/// certificate needs renewal.
#[derive(Debug)]
pub struct ControlTrust {
    current: RwLock<Arc<Trust>>,
}

impl ControlTrust {
    /// Trust from `ca`, with a fresh client certificate.
    pub fn new(ca: ControlCa, now: SystemTime) -> Result<Self, CaError> {
        let client = ca.client_certificate(now)?;
        Ok(Self {
            current: RwLock::new(Arc::new(Trust { ca, client })),
        })
    }

    /// What is in force now.
    pub fn current(&self) -> Arc<Trust> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes `ca` (as just read from the Secret); issues a new client certificate when the CA
    /// changed or the old one is due for renewal. Returns whether anything changed.
    pub fn refresh(&self, ca: ControlCa, now: SystemTime) -> Result<bool, CaError> {
        let current = self.current();
        if current.ca == ca && unix(now) < renew_at(current.client.not_after_unix) {
            return Ok(false);
        }
        let client = ca.client_certificate(now)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Trust { ca, client });
        Ok(true)
    }
}

/// Re-reads the CA Secret every [`REFRESH_EVERY`] until `cancel`, so a rotation (or a
/// renewal of the client certificate) takes effect without a restart.
pub async fn refresh(
    api: Api<Secret>,
    trust: Arc<ControlTrust>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = match api.get(CA_SECRET).await {
            Ok(secret) => ControlCa::from_data(&secret.data.unwrap_or_default())
                .and_then(|ca| trust.refresh(ca, SystemTime::now())),
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(true) => tracing::info!("control-channel CA or client certificate changed"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot refresh the control-channel CA; keeping the current one")
            }
        }
    }
}

#[cfg(test)]
mod tests;
