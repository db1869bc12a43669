//! End to end: a multi-user session through the whole stack (real API server, operator,
//! node agent, worker process). The user speaks over a WebSocket while a second
//! participant listens from an independent WebRTC client (aiortc) with their own token:
//! both hear the agent, status lists both connections, the user's turn is labelled with
//! who spoke it, joins and leaves are Events, and the session ends when the last
//! participant leaves. A provider without `multiUserSupport` keeps such a session waiting
//! outside the queue until it gains the capability; each person gets a token.
//! The user joins with a JWT from the application's own identity provider
//! (`spec.clientAuth`, the provider's `customAuth`) instead of the session's join token.

#[path = "../worker/tests/common/identity_provider.rs"]
mod identity_provider;
mod operator_common;

use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use operator_common::sessions::{admitted_reason, join_token, session, wait_phase};
use operator_common::*;
use serde_json::json;
use voice_crds::{SessionPhase, Speaker, VoiceSession};

const T: Duration = Duration::from_secs(120);

#[tokio::test]
async fn two_participants_hear_one_agent_and_appear_in_status() {
    let stack = OperatorStack::start_with(
        "participants",
        json!({"capabilities": {"multiUserSupport": true, "customAuth": true}, "stages": {"turnDetection": ["silence"], "stt": ["whisper", "pocketsphinx"]}}),
    )
    .await;
    let ns = &stack.ns;
    let idp = identity_provider::IdentityProvider::new();
    let keys: Secret = serde_json::from_value(json!({
        "metadata": {"name": "idp"},
        "stringData": {"jwks.json": idp.jwks},
    }))
    .expect("a Secret");
    ns.api::<Secret>()
        .create(&PostParams::default(), &keys)
        .await
        .expect("creating the identity provider's key Secret");
    stack.apply_backend(
        "room",
        json!({"replicas": 1, "pipeline": {"stt": {"provider": "whisper"}, "turnDetection": {"silenceTimeout": "400ms"}},
               "clientAuth": identity_provider::IdentityProvider::client_auth("idp")}),
    );
    wait_healthy(ns, "room", 1, T).await;

    let api: Api<VoiceSession> = ns.api();
    let participants = json!({"participants": [{"userID": "bob"}]});
    api.create(
        &PostParams::default(),
        &session("meet", "room", participants),
    )
    .await
    .expect("creating the multi-user session");
    let active = wait_phase(&api, "meet", SessionPhase::Active).await;
    let endpoint = active.status.and_then(|s| s.endpoint).expect("an endpoint");
    let secrets: Api<Secret> = ns.api();
    let secret = voice_tests::token_secret(&secrets, &endpoint.token_secret_name).await;
    let data = secret.data.unwrap_or_default();
    assert!(
        data.contains_key("token-bob"),
        "bob's token: keys {:?}",
        data.keys()
    );
    assert!(
        !join_token(&secrets, &endpoint.token_secret_name)
            .await
            .is_empty()
    );
    // The user holds her application's own token and needs none from the Secret.
    let alice_token = idp.token("user-meet");
    let bob_token = String::from_utf8(data["token-bob"].0.clone()).expect("UTF-8 token");

    // Bob listens from aiortc (no tone: he only listens) for 40 s.
    let (base, _) = endpoint
        .url
        .split_once("/v1/sessions/")
        .expect("a WHIP offer URL");
    let base = base.to_owned();
    let session_path = format!("{}/meet", ns.name());
    let bob = tokio::spawn(async move {
        operator_common::aiortc::call(&base, &session_path, &bob_token, 0.0, 40.0).await
    });
    // The user (userID user-meet) talks over a WebSocket on the same worker.
    let ws = endpoint
        .url
        .replacen("http", "ws", 1)
        .replace("/offer", "/ws");
    let (mut alice, alice_reader) = connect_session(&ws, &alice_token).await;

    let both = wait_for(T, "both connections in status", || async {
        let s = api.get("meet").await.map_err(|e| e.to_string())?;
        let mut who: Vec<String> = s
            .status
            .map(|s| s.connections)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.user_id)
            .collect();
        who.sort();
        if who == ["bob", "user-meet"] {
            Ok(who)
        } else {
            Err(format!("{who:?}"))
        }
    })
    .await;
    assert_eq!(both.len(), 2);
    wait_event(ns, "meet", "ParticipantJoined", T).await;

    // The user speaks, once (Whisper hears it the first time); the echo agent ("You said:
    // ...") hears the turn labelled with who said it.
    let phrase = speak("what will the weather be tomorrow");
    let mut labelled = None;
    send_paced(&mut alice, &phrase).await;
    send_paced(&mut alice, &vec![0u8; 32_000]).await;
    for _ in 0..80 {
        let s = api.get("meet").await.expect("the session");
        let transcript = s
            .status
            .and_then(|s| s.context)
            .unwrap_or_default()
            .transcript;
        let user = transcript
            .iter()
            .find(|e| e.speaker == Speaker::User && !e.text.is_empty());
        let agent = transcript.iter().find(|e| e.speaker == Speaker::Agent);
        if let (Some(u), Some(a)) = (user, agent) {
            labelled = Some((u.participant.clone(), a.text.clone()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (participant, agent_said) = labelled.expect("the agent answered a turn");
    assert_eq!(
        participant.as_deref(),
        Some("user-meet"),
        "the turn's speaker"
    );
    assert!(
        agent_said.contains("user-meet: "),
        "the agent heard the label: {agent_said:?}"
    );

    // Bob, who said nothing, heard the agent's spoken reply on his own connection.
    let (report, heard) = tokio::time::timeout(T, bob)
        .await
        .expect("bob's call ends")
        .expect("bob's task");
    assert_eq!(report["state"], "connected", "{report}");
    let loud = heard.iter().filter(|s| s.unsigned_abs() > 3_000).count();
    assert!(
        loud > 4_800,
        "bob heard {loud} loud samples of the reply (of {})",
        heard.len()
    );

    // Bob hung up: he leaves status and an Event says so; the session goes on.
    wait_event(ns, "meet", "ParticipantLeft", T).await;
    wait_for(T, "only the user connected", || async {
        let s = api.get("meet").await.map_err(|e| e.to_string())?;
        let status = s.status.unwrap_or_default();
        let who: Vec<_> = status
            .connections
            .iter()
            .filter_map(|c| c.user_id.clone())
            .collect();
        match (status.phase, who.as_slice()) {
            (SessionPhase::Active, [one]) if one == "user-meet" => Ok(()),
            (phase, who) => Err(format!("{phase:?} {who:?}")),
        }
    })
    .await;

    // The last participant leaves: the session ends.
    drop(alice);
    alice_reader.abort();
    wait_phase(&api, "meet", SessionPhase::Completed).await;
}

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

    let secret = voice_tests::token_secret(&ns.api::<Secret>(), &endpoint.token_secret_name).await;
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
