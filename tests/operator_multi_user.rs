//! End to end: a multi-user session against the real operator and API server. It waits while
//! its provider lacks `multiUserSupport` (outside the queue, without a slot), is admitted once
//! the provider has it, counts once against the backend, and gets a join token per person.

mod operator_common;

use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use operator_common::*;
use serde_json::json;
use voice_crds::{SessionPhase, VoiceSession};

const T: Duration = Duration::from_secs(120);

/// The `user` claim of a join token (its payload, without checking the signature: the
/// worker's acceptance of tokens is tested elsewhere).
fn token_user(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    let claims: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON claims");
    claims["user"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_multi_user_session_waits_for_multi_user_support_then_gets_a_token_per_participant() {
    let stack = OperatorStack::start("multi-user").await;
    let ns = &stack.ns;
    stack.apply_backend("echo", json!({"replicas": 1}));
    wait_healthy(ns, "echo", 1, T).await;
    let api: Api<VoiceSession> = ns.api();
    let participants = json!({"participants": [{"userID": "u-2"}, {"userID": "guest.3"}]});
    api.create(
        &PostParams::default(),
        &session("trio", "echo", participants),
    )
    .await
    .unwrap();
    api.create(&PostParams::default(), &session("solo", "echo", json!({})))
        .await
        .unwrap();

    // The provider (multiUserSupport false by default) cannot serve it: it waits, named.
    let waiting = wait_for(T, "trio says MultiUserNotSupported", || async {
        let s = api.get("trio").await.map_err(|e| e.to_string())?;
        if admitted_reason(&s).as_deref() == Some("MultiUserNotSupported") {
            Ok(s)
        } else {
            Err(format!("{:?}", s.status))
        }
    })
    .await;
    let status = waiting.status.unwrap_or_default();
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Admitted")
        .unwrap();
    assert_eq!(c.status, "False");
    assert!(
        c.message
            .starts_with("spec.participants lists 2 participants beside spec.user")
            && c.message.contains("multiUserSupport"),
        "{}",
        c.message
    );
    assert_eq!(status.phase, SessionPhase::Pending);
    assert_eq!(status.queue_position, None, "it waits outside the queue");
    assert_eq!(status.worker, None, "and holds no slot");
    // A session of one user behind it is not held back.
    wait_phase(&api, "solo", SessionPhase::Active).await;

    // The provider gaining the capability admits it.
    let (_, multi) =
        provider_manifest(ns, "p", json!({"capabilities": {"multiUserSupport": true}}));
    apply(ns, &[&multi]);
    let trio = wait_phase(&api, "trio", SessionPhase::Active).await;
    let endpoint = trio.status.and_then(|s| s.endpoint).expect("endpoint");

    let secret = ns
        .api::<Secret>()
        .get(&endpoint.token_secret_name)
        .await
        .expect("token Secret");
    let data = secret.data.unwrap_or_default();
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        ["token", "token-guest.3", "token-u-2", "url"]
    );
    for (key, user) in [
        ("token", "user-trio"),
        ("token-u-2", "u-2"),
        ("token-guest.3", "guest.3"),
    ] {
        let token = String::from_utf8(data[key].0.clone()).unwrap();
        assert_eq!(token_user(&token), user, "{key}");
    }

    // Two sessions, two slots: the participants take none of their own.
    wait_for(T, "the backend counts two active sessions", || async {
        let active = backend_status(ns, "echo").await?.active_sessions;
        if active == 2 {
            Ok(())
        } else {
            Err(format!("activeSessions {active}"))
        }
    })
    .await;
}
