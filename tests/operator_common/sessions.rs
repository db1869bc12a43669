//! Sessions as a client sees them: create one, wait for its phase, read its join token.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use voice_crds::{SessionPhase, VoiceSession};

use super::{merge, wait_for};

/// How long a session may take to reach a phase.
pub const SESSION_WAIT: Duration = Duration::from_secs(120);

/// A VoiceSession `name` on `backend` for user `user-<name>` over WebRTC, with `extra`
/// merged into its spec.
pub fn session(name: &str, backend: &str, extra: Value) -> VoiceSession {
    let mut spec = json!({
        "backendRef": {"name": backend},
        "user": {"userID": format!("user-{name}")},
        "transport": "webrtc",
    });
    merge(&mut spec, extra);
    serde_json::from_value(json!({
        "apiVersion": "voicebackends.dev/v1alpha1",
        "kind": "VoiceSession",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("valid session")
}

/// The session's phase (Pending until it has a status).
pub fn phase(s: &VoiceSession) -> SessionPhase {
    s.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// The reason of the session's `Admitted` condition.
pub fn admitted_reason(s: &VoiceSession) -> Option<String> {
    s.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Admitted")
        .map(|c| c.reason.clone())
}

/// Creates session `name` on `backend`, waits until it is Active, and returns its endpoint and
/// join token, as a client would read them.
pub async fn admit_one(
    api: &Api<VoiceSession>,
    name: &str,
    backend: &str,
    extra: Value,
) -> (voice_crds::SessionEndpoint, String) {
    api.create(&PostParams::default(), &session(name, backend, extra))
        .await
        .expect("creating the session");
    let s = wait_phase(api, name, SessionPhase::Active).await;
    let endpoint = s
        .status
        .and_then(|s| s.endpoint)
        .expect("an Active session has an endpoint");
    let secrets: Api<Secret> = Api::namespaced(
        api.clone().into_client(),
        s.metadata.namespace.as_deref().unwrap_or_default(),
    );
    let token = join_token(&secrets, &endpoint.token_secret_name).await;
    (endpoint, token)
}

/// Waits until session `name` reaches `phase` and returns it.
pub async fn wait_phase(api: &Api<VoiceSession>, name: &str, want: SessionPhase) -> VoiceSession {
    wait_for(SESSION_WAIT, &format!("{name} {want:?}"), || async {
        let s = api.get(name).await.map_err(|e| e.to_string())?;
        if phase(&s) == want {
            Ok(s)
        } else {
            Err(format!("{:?} {:?}", phase(&s), admitted_reason(&s)))
        }
    })
    .await
}

/// Creates the `kubernetes.io/tls` Secret `name` (the shape cert-manager writes) in the
/// namespace of `secrets`.
pub async fn create_tls_secret(secrets: &Api<Secret>, name: &str, cert_pem: &str, key_pem: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert_pem, "tls.key": key_pem},
    }))
    .expect("a TLS Secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("creating the TLS Secret");
}

/// The join token in a session's token Secret (waiting for it, as a client does).
pub use voice_tests::join_token;
