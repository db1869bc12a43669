//! Provider credentials: the spec names a Secret key (`credentialsSecretRef`), the operator
//! makes its value available to the worker pod, and this reads it.
//!
//! Lookup order for `{name, key}`:
//! 1. the file `$VOICE_SECRETS_DIR/<name>/<key>` (default dir `/var/run/secrets/voicebackends.dev`),
//!    which is how a Secret volume mounts;
//! 2. the environment variable `VOICE_SECRET_<NAME>_<KEY>` (upper-cased, every other
//!    character `_`), which is how `env.valueFrom.secretKeyRef` passes it.
//!
//! The value is wrapped in [`ApiKey`], whose `Debug` never prints it.

use std::path::PathBuf;

use voice_crds::SecretKeyRef;

use super::{ErrorKind, ProviderError};

/// Default directory where Secrets are mounted.
pub const DEFAULT_SECRETS_DIR: &str = "/var/run/secrets/voicebackends.dev";

/// A credential; printing it shows only that it is set.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl ApiKey {
    /// The secret, for an `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The environment variable that carries `r` (the operator sets it from the Secret).
pub fn env_name(r: &SecretKeyRef) -> String {
    r.env_var()
}

/// Reads the credential `r` names; `None` when no reference is given.
pub fn load(
    provider: &'static str,
    r: Option<&SecretKeyRef>,
) -> Result<Option<ApiKey>, ProviderError> {
    let dir = std::env::var_os("VOICE_SECRETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SECRETS_DIR));
    load_from(&dir, provider, r)
}

/// [`load`] with the Secrets mounted under `dir`.
pub fn load_from(
    dir: &std::path::Path,
    provider: &'static str,
    r: Option<&SecretKeyRef>,
) -> Result<Option<ApiKey>, ProviderError> {
    let Some(r) = r else { return Ok(None) };
    let file = dir.join(&r.name).join(&r.key);
    if let Ok(value) = std::fs::read_to_string(&file) {
        return Ok(Some(ApiKey(value.trim().to_owned())));
    }
    if let Ok(value) = std::env::var(env_name(r)) {
        return Ok(Some(ApiKey(value.trim().to_owned())));
    }
    Err(ProviderError::new(
        provider,
        ErrorKind::Config,
        format!(
            "credential Secret {}/{} is not available to the worker (no file {} and no variable {})",
            r.name,
            r.key,
            file.display(),
            env_name(r)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_env_safe_and_keys_never_print() {
        let r = SecretKeyRef {
            name: "openai-creds".into(),
            key: "api.key".into(),
        };
        assert_eq!(env_name(&r), "VOICE_SECRET_OPENAI_CREDS_API_KEY");
        assert_eq!(
            format!("{:?}", ApiKey("sk-123".into())),
            "ApiKey(<redacted>)"
        );
        let err = load(
            "t",
            Some(&SecretKeyRef {
                name: "missing-secret-x".into(),
                key: "k".into(),
            }),
        )
        .unwrap_err();
        assert_eq!(err.reason(), "ProviderMisconfigured");
    }
}
