use livekit_api::access_token::TokenVerifier;
use serde_json::{Value, json};
use voice_crds::{VoiceBackend, VoiceSession};
use voice_proto::livekit_token::{AGENT_IDENTITY, ApiKey};

use super::*;
use crate::admission_plan::{Blocked, Misfit};

const SECRET: &str = "a-secret-of-at-least-32-characters!!";

fn session(name: &str, spec: Value) -> VoiceSession {
    let mut full = json!({"backendRef": {"name": "echo"}, "user": {"userID": "alice"}});
    if let (Some(full), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
        full.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "voicebackends.dev/v1alpha1",
        "kind": "VoiceSession",
        "metadata": {"name": name, "namespace": "team", "uid": "uid-1"},
        "spec": full,
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn call(spec: Value) -> VoiceSession {
    session("call-1", spec)
}

fn backend(live_kit: bool) -> VoiceBackend {
    let mut spec = json!({
        "provider": "livekit",
        "pipeline": {"type": "S2S", "s2s": {"provider": "echo"}},
    });
    if live_kit {
        spec["liveKit"] =
            json!({"url": "wss://livekit.example.com", "credentialsSecretName": "lk-keys"});
    }
    serde_json::from_value(json!({
        "apiVersion": "voicebackends.dev/v1alpha1",
        "kind": "VoiceBackend",
        "metadata": {"name": "echo", "namespace": "team"},
        "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn detail(m: Option<Misfit>) -> (Blocked, String) {
    let m = m.unwrap_or_else(|| panic!("expected a misfit"));
    (m.blocked(), m.detail().to_owned())
}

#[test]
fn a_session_meets_in_its_own_room_unless_it_names_one() {
    assert_eq!(room(&call(json!({"transport": "livekit"}))), "team-call-1");
    let named = call(json!({"transport": "livekit", "room": "standup"}));
    assert_eq!(room(&named), "standup");
    assert_eq!(worker_room(&named).as_deref(), Some("standup"));
    assert_eq!(worker_room(&call(json!({}))), None);
}

#[test]
fn livekit_on_a_backend_without_a_livekit_server_waits_naming_spec_transport() {
    let (blocked, why) = detail(misfit_of(
        &call(json!({"transport": "livekit"})),
        Some(&backend(false)),
    ));
    assert_eq!(blocked.reason(), "TransportNotSupported");
    assert_eq!(
        why,
        "spec.transport: livekit needs a backend with spec.liveKit (a LiveKit server to meet in), and VoiceBackend \"echo\" has none; create the session with transport webrtc or websocket, or on a backend with spec.liveKit (spec.transport is immutable)"
    );
}

#[test]
fn other_transports_on_a_livekit_backend_wait_naming_spec_transport() {
    for transport in ["webrtc", "websocket"] {
        let (blocked, why) = detail(misfit_of(
            &call(json!({"transport": transport})),
            Some(&backend(true)),
        ));
        assert_eq!(blocked, Blocked::TransportNotSupported);
        assert_eq!(
            why,
            format!(
                "spec.transport: {transport} is not served by VoiceBackend \"echo\": it has spec.liveKit, so its sessions meet in rooms of wss://livekit.example.com; create the session with transport: livekit (spec.transport is immutable), or on a backend without spec.liveKit"
            )
        );
    }
}

#[test]
fn fitting_sessions_and_a_missing_backend_are_no_misfit() {
    let livekit = call(json!({"transport": "livekit"}));
    assert_eq!(misfit_of(&livekit, Some(&backend(true))), None);
    assert_eq!(misfit_of(&call(json!({})), Some(&backend(false))), None);
    assert_eq!(misfit_of(&livekit, None), None);
}

#[test]
fn the_agents_identity_is_refused_for_the_user_and_for_participants() {
    let user = session(
        "call-1",
        json!({"transport": "livekit", "user": {"userID": AGENT_IDENTITY}}),
    );
    let (blocked, why) = detail(misfit_of(&user, Some(&backend(true))));
    assert_eq!(blocked.reason(), "UserIDReserved");
    assert!(
        why.starts_with("spec.user.userID: \"voice-agent\" is the identity the agent joins LiveKit rooms with; create the session with another userID"),
        "{why}"
    );
    let participant =
        call(json!({"transport": "livekit", "participants": [{"userID": AGENT_IDENTITY}]}));
    let (blocked, why) = detail(misfit_of(&participant, Some(&backend(true))));
    assert_eq!(blocked, Blocked::UserIDReserved);
    assert!(
        why.starts_with("spec.participants[userID=voice-agent]"),
        "{why}"
    );
    // The identity is only the agent's in a room.
    let elsewhere = session("call-1", json!({"user": {"userID": AGENT_IDENTITY}}));
    assert_eq!(misfit_of(&elsewhere, Some(&backend(false))), None);
}

#[test]
fn a_default_room_name_too_long_waits_for_spec_room() {
    let long = "c".repeat(130);
    let (blocked, why) = detail(misfit_of(
        &session(&long, json!({"transport": "livekit"})),
        Some(&backend(true)),
    ));
    assert_eq!(blocked.reason(), "RoomNameTooLong");
    assert!(
        why.starts_with("spec.room: unset, so the session's LiveKit room would be \"team-ccc"),
        "{why}"
    );
    assert!(
        why.contains("135 characters") && why.contains("set spec.room"),
        "{why}"
    );
    let named = session(&long, json!({"transport": "livekit", "room": "short"}));
    assert_eq!(misfit_of(&named, Some(&backend(true))), None);
}

fn room_of(session: &VoiceSession) -> LiveKitRoom {
    LiveKitRoom {
        url: "wss://livekit.example.com".into(),
        room: room(session),
        key: ApiKey {
            key: "devkey".into(),
            secret: SECRET.into(),
        },
    }
}

#[test]
fn the_endpoint_is_the_servers_url_and_the_room_with_no_ice_servers() {
    let s = call(json!({"transport": "livekit"}));
    let (endpoint, _) = endpoint_and_tokens(&s, &room_of(&s)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        endpoint,
        SessionEndpoint {
            url: "wss://livekit.example.com".into(),
            token_secret_name: "call-1-join-token".into(),
            ice_servers: Vec::new(),
            room: Some("team-call-1".into()),
        }
    );
}

#[test]
fn each_person_gets_a_token_to_the_room_that_a_livekit_server_verifies() {
    let s = call(json!({
        "transport": "livekit",
        "room": "standup",
        "maxDuration": "5m",
        "participants": [{"userID": "bob"}],
    }));
    let (endpoint, tokens) =
        endpoint_and_tokens(&s, &room_of(&s)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tokens.keys().collect::<Vec<_>>(), ["token", "token-bob"]);
    let verifier = TokenVerifier::with_api_key("devkey", SECRET);
    for (key, identity) in [("token", "alice"), ("token-bob", "bob")] {
        let claims = verifier
            .verify(&tokens[key])
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(
            (claims.iss.as_str(), claims.sub.as_str()),
            ("devkey", identity)
        );
        assert_eq!(claims.video.room, "standup");
        assert!(
            claims.video.room_join && claims.video.can_publish() && claims.video.can_subscribe()
        );
        assert!(!claims.video.room_admin && !claims.video.agent);
        // The join tokens' lifetime: the session's maxDuration, at most an hour (the signer
        // reads the clock twice, so a second may tick between nbf and exp).
        let lifetime = claims.exp - claims.nbf;
        assert!((300..=301).contains(&lifetime), "{key}: {lifetime}");
    }
    let other = TokenVerifier::with_api_key("devkey", "another-secret-of-32-characters!!!!");
    assert!(other.verify(&tokens["token"]).is_err());

    // The Secret: the tokens, the server's URL and the room.
    let secret = crate::session_tokens::secret(&s, &endpoint, &tokens);
    let data = secret.data.unwrap_or_default();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["room", "token", "token-bob", "url"]
    );
    assert_eq!(data["url"].0, b"wss://livekit.example.com");
    assert_eq!(data["room"].0, b"standup");
    assert_eq!(data["token"].0, tokens["token"].as_bytes());
}

#[test]
fn the_worker_is_told_the_room_and_nothing_of_the_server() {
    let s = call(json!({"transport": "livekit"}));
    let config = crate::admission_steps::session_config(&s, &backend(true));
    assert_eq!(config.room.as_deref(), Some("team-call-1"));
    let json = config.to_json();
    assert!(
        !json.contains("livekit.example.com") && !json.contains("lk-keys"),
        "{json}"
    );
    let plain = crate::admission_steps::session_config(&call(json!({})), &backend(false));
    assert_eq!(plain.room, None);
}

#[test]
fn an_unreadable_secret_holds_the_session_naming_the_backend_and_the_secret() {
    let error = CredentialsError::MissingKey {
        namespace: "team".into(),
        name: "lk-keys".into(),
        key: "api-secret",
    };
    let held = credentials_held(&backend(true), &error);
    assert_eq!(held.reason, "LiveKitCredentialsMissing");
    assert_eq!(
        held.message,
        "VoiceBackend \"echo\" spec.liveKit.credentialsSecretName: Secret team/lk-keys has no key api-secret; add it (keys api-key and api-secret: the LiveKit server's API key and secret); the session is admitted once the key pair can be read"
    );
}
