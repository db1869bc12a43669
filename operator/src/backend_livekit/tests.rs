use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};
use voice_crds::{VoiceBackend, VoiceBackendSpec, VoiceProvider};

use super::{credentials, recheck};
use crate::backend_acceptance::{Acceptance, Rejection, check};
use crate::livekit_credentials::tests::secret;

fn provider(allow_live_kit: bool) -> VoiceProvider {
    serde_json::from_value(json!({
        "apiVersion": "voicebackends.dev/v1alpha1",
        "kind": "VoiceProvider",
        "metadata": {"name": "livekit"},
        "spec": {
            "capabilities": {"s2sSupport": true, "supportedCodecs": ["opus"]},
            "worker": {"image": "worker:1", "allowLiveKit": allow_live_kit},
            "stages": {"s2s": ["echo"]}
        }
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn backend(live_kit: Option<Value>) -> VoiceBackendSpec {
    let mut spec = json!({
        "provider": "livekit",
        "pipeline": {"type": "S2S", "s2s": {"provider": "echo"}},
    });
    if let Some(live_kit) = live_kit {
        spec["liveKit"] = live_kit;
    }
    serde_json::from_value(spec).unwrap_or_else(|e| panic!("{e}"))
}

fn live_kit() -> Option<Value> {
    Some(json!({"url": "wss://livekit.example.com", "credentialsSecretName": "livekit-keys"}))
}

fn keys() -> Secret {
    secret(&[
        ("api-key", b"devkey"),
        ("api-secret", b"a-secret-of-at-least-32-characters!!"),
    ])
}

fn rejected(a: &Acceptance) -> (Rejection, &str) {
    match a {
        Acceptance::Rejected { rejection, message } => (*rejection, message),
        Acceptance::Accepted => panic!("expected a rejection, got Accepted"),
    }
}

#[test]
fn live_kit_needs_the_providers_permission() {
    let spec = backend(live_kit());
    let outcome = check(&spec, Some(&provider(false)));
    let (r, msg) = rejected(&outcome);
    assert_eq!(r, Rejection::LiveKitNotAllowed);
    assert_eq!(outcome.reason(), "LiveKitNotAllowed");
    assert_eq!(
        msg,
        "spec.liveKit: the workers would join rooms of the LiveKit server \"wss://livekit.example.com\", and VoiceProvider \"livekit\" does not allow that (spec.worker.allowLiveKit is false); remove spec.liveKit, or have the provider's owner set allowLiveKit: true"
    );
    assert_eq!(check(&spec, Some(&provider(true))), Acceptance::Accepted);
    // A backend without liveKit needs no permission.
    assert_eq!(
        check(&backend(None), Some(&provider(false))),
        Acceptance::Accepted
    );
}

#[test]
fn a_missing_credentials_secret_is_rejected_naming_it_and_both_keys() {
    let spec = backend(live_kit());
    let outcome = credentials(Acceptance::Accepted, &spec, "team", None);
    let (r, msg) = rejected(&outcome);
    assert_eq!(r, Rejection::LiveKitCredentialsMissing);
    assert_eq!(outcome.reason(), "LiveKitCredentialsMissing");
    assert_eq!(
        msg,
        "spec.liveKit.credentialsSecretName: Secret team/livekit-keys does not exist; create it with keys api-key and api-secret (the LiveKit server's API key and secret), or name another Secret"
    );
    assert!(recheck(&outcome), "the Secret may appear without an edit");
}

#[test]
fn a_credentials_secret_without_a_key_is_rejected_naming_the_key() {
    let spec = backend(live_kit());
    for (present, missing) in [("api-key", "api-secret"), ("api-secret", "api-key")] {
        let partial = secret(&[(present, b"a-secret-of-at-least-32-characters!!")]);
        let outcome = credentials(Acceptance::Accepted, &spec, "team", Some(&partial));
        let (r, msg) = rejected(&outcome);
        assert_eq!(r, Rejection::LiveKitCredentialsMissing);
        assert!(
            msg.starts_with(&format!(
                "spec.liveKit.credentialsSecretName: Secret team/livekit-keys has no key {missing}; add it"
            )),
            "{msg}"
        );
        assert!(
            !msg.contains("a-secret-of"),
            "no value in the message: {msg}"
        );
    }
}

#[test]
fn complete_credentials_keep_the_backend_accepted_and_other_outcomes_stand() {
    let spec = backend(live_kit());
    assert_eq!(
        credentials(Acceptance::Accepted, &spec, "team", Some(&keys())),
        Acceptance::Accepted
    );
    // Without liveKit the Secret is not asked for.
    assert_eq!(
        credentials(Acceptance::Accepted, &backend(None), "team", None),
        Acceptance::Accepted
    );
    // An earlier rejection is the one reported, and waits for an edit.
    let earlier = check(&spec, Some(&provider(false)));
    assert_eq!(credentials(earlier.clone(), &spec, "team", None), earlier);
    assert!(!recheck(&earlier));
}

/// examples/livekit: the provider allows liveKit, the backend uses it, the Secret has both keys.
#[test]
fn the_livekit_examples_are_accepted() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/livekit");
    let read = |file: &str| -> Value {
        let text =
            std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
    };
    let provider: VoiceProvider =
        serde_json::from_value(read("provider.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let backend: VoiceBackend =
        serde_json::from_value(read("backend.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let mut secret_yaml = read("secret.yaml");
    // A manifest's stringData is what the API server stores as data.
    let data: serde_json::Map<String, Value> = secret_yaml["stringData"]
        .as_object()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let bytes = v.as_str().unwrap_or_default().as_bytes().to_vec();
            (
                k,
                serde_json::to_value(k8s_openapi::ByteString(bytes)).unwrap_or_default(),
            )
        })
        .collect();
    secret_yaml["data"] = Value::Object(data);
    let secret: Secret = serde_json::from_value(secret_yaml).unwrap_or_else(|e| panic!("{e}"));
    let server = backend
        .spec
        .live_kit
        .as_ref()
        .expect("the example uses liveKit");
    assert_eq!(
        secret.metadata.name.as_deref(),
        Some(server.credentials_secret_name.as_str())
    );
    let outcome = credentials(
        check(&backend.spec, Some(&provider)),
        &backend.spec,
        "default",
        Some(&secret),
    );
    assert_eq!(outcome, Acceptance::Accepted);
}
