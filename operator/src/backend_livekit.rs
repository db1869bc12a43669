//! What a backend's `spec.liveKit` adds to its acceptance: the provider must allow it
//! (`spec.worker.allowLiveKit`, else `LiveKitNotAllowed`), and the credentials Secret must
//! exist with both keys (else `LiveKitCredentialsMissing`: its workers could not join a room
//! and no user token could be signed).
//!
//! The first rule is part of [`crate::backend_acceptance::check`] (pure, spec and provider);
//! the second needs the Secret, so the backend controller reads it and asks [`credentials`]
//! once everything else passed. A backend rejected for its Secret is checked again every
//! `spec.healthCheck.interval` (the operator does not watch users' Secrets), so creating the
//! Secret is enough to have it Accepted.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use voice_crds::{VoiceBackendSpec, VoiceProvider};

use crate::backend_acceptance::{Acceptance, Rejection};
use crate::error::{Error, Result};
use crate::livekit_credentials;

/// Why `spec.liveKit` may not be used with `provider`, naming the field and the fix.
pub fn not_allowed(spec: &VoiceBackendSpec, provider: &VoiceProvider) -> Option<String> {
    let server = spec.live_kit.as_ref()?;
    (!provider.spec.worker.allow_live_kit).then(|| {
        format!(
            "spec.liveKit: the workers would join rooms of the LiveKit server {:?}, and VoiceProvider {:?} does not allow that (spec.worker.allowLiveKit is false); remove spec.liveKit, or have the provider's owner set allowLiveKit: true",
            server.url, spec.provider
        )
    })
}

/// `acceptance` with the credentials rule applied: an accepted backend with `spec.liveKit`
/// whose Secret (`secret`, as read from `namespace`; `None` when it does not exist) cannot
/// give the key pair is rejected, `LiveKitCredentialsMissing`, naming the Secret and the key.
pub fn credentials(
    acceptance: Acceptance,
    spec: &VoiceBackendSpec,
    namespace: &str,
    secret: Option<&Secret>,
) -> Acceptance {
    let Some(server) = &spec.live_kit else {
        return acceptance;
    };
    if !acceptance.is_accepted() {
        return acceptance;
    }
    match livekit_credentials::api_key_of(secret, namespace, &server.credentials_secret_name) {
        Ok(_) => acceptance,
        Err(e) => Acceptance::Rejected {
            rejection: Rejection::LiveKitCredentialsMissing,
            message: format!("spec.liveKit.credentialsSecretName: {e}"),
        },
    }
}

/// [`credentials`] with the Secret read from the API (only for an accepted backend with
/// `spec.liveKit`). A failed read is an error (the controller retries), not a rejection.
pub async fn check_credentials(
    acceptance: Acceptance,
    spec: &VoiceBackendSpec,
    namespace: &str,
    secrets: &Api<Secret>,
) -> Result<Acceptance> {
    let Some(server) = spec.live_kit.as_ref().filter(|_| acceptance.is_accepted()) else {
        return Ok(acceptance);
    };
    let secret = secrets
        .get_opt(&server.credentials_secret_name)
        .await
        .map_err(Error::kube("get LiveKit credentials Secret"))?;
    Ok(credentials(acceptance, spec, namespace, secret.as_ref()))
}

/// Whether a rejection goes away without an edit of the backend (the Secret appearing), so
/// the controller looks again after a while instead of waiting for a change.
pub fn recheck(acceptance: &Acceptance) -> bool {
    matches!(
        acceptance,
        Acceptance::Rejected {
            rejection: Rejection::LiveKitCredentialsMissing,
            ..
        }
    )
}

#[cfg(test)]
mod tests;
