//! End to end: the `livekit` provider. A VoiceBackend names a real livekit-server (built from
//! its Go module, started by the test); an admitted session's join-token Secret holds the
//! user's LiveKit access token, `status.endpoint` names the server and the room, and a real
//! LiveKit user (the official Python SDK) joins with that token and hears the agent the
//! worker runs in the room. The user leaving completes the session (`ParticipantLeft`);
//! deleting a session while its user is in the room ends the call for the user (the room is
//! deleted); a second session naming a held session's room waits `RoomInUse` until it ends;
//! and a server that cannot be reached fails the session (`LiveKitUnavailable`)
//! without a leaked slot.

mod operator_common;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use operator_common::*;
use serde_json::json;
use voice_crds::{SessionPhase, Transport, VoiceSession};
use voice_tests::livekit::{LiveKitServer, UserArgs, run_user};

const T: Duration = Duration::from_secs(120);

async fn credentials(ns: &voice_tests::TestNamespace, name: &str, server: &LiveKitServer) {
    let secrets: Api<Secret> = ns.api();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {"api-key": server.api_key(), "api-secret": server.api_secret()},
    }))
    .expect("a Secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("creating the LiveKit credentials");
}

fn echo_in_rooms(url: &str) -> serde_json::Value {
    json!({
        "replicas": 1,
        "pipeline": {"type": "S2S", "stt": null, "tts": null, "s2s": {"provider": "echo"}},
        "agent": null,
        "liveKit": {"url": url, "credentialsSecretName": "livekit-credentials"},
    })
}

#[tokio::test]
async fn a_livekit_user_hears_the_agent_and_the_room_follows_the_session() {
    let server = LiveKitServer::start();
    let stack = OperatorStack::start_with(
        "livekit",
        json!({
            "capabilities": {"s2sSupport": true},
            "worker": {"allowLiveKit": true},
            "stages": {"s2s": ["echo"]},
        }),
    )
    .await;
    let ns = &stack.ns;
    credentials(ns, "livekit-credentials", &server).await;
    stack.apply_backend("rooms", echo_in_rooms(&server.url()));
    wait_healthy(ns, "rooms", 1, T).await;

    // Admission puts the server, the room and the user's LiveKit token where a client reads them.
    let api: Api<VoiceSession> = ns.api();
    let (endpoint, token) = admit_one(&api, "call", "rooms", json!({"transport": "livekit"})).await;
    let room = format!("{}-call", ns.name());
    assert_eq!(endpoint.url, server.url());
    assert_eq!(endpoint.room.as_deref(), Some(room.as_str()));

    let report = run_user(&UserArgs {
        tone_hz: Some(440.0),
        seconds: 6.0,
        ..UserArgs::new(endpoint.url.clone(), token)
    })
    .await;
    let context = || format!("user: {report:?}\nworker log under target/voice-node-agent/logs");
    assert!(report.joined, "{}", context());
    assert_eq!(report.room.as_deref(), Some(room.as_str()), "{}", context());
    assert!(report.agent_track, "no agent track\n{}", context());
    assert!(
        report.audible_ms >= 1_000,
        "the agent's echo carried too little sound\n{}",
        context()
    );
    eprintln!(
        "LiveKit end to end: first audible reply {:?} ms after the user's first frame",
        report.first_audio_ms
    );

    // The user left: the session completed, having shown its LiveKit connection.
    let ended = wait_phase(&api, "call", SessionPhase::Completed).await;
    let status = ended.status.expect("status");
    assert_eq!(
        status.end_reason.as_deref(),
        Some("ParticipantLeft"),
        "{status:?}"
    );

    // A session deleted while its user is in the room ends the call: the room goes with it.
    let (endpoint, token) =
        admit_one(&api, "second", "rooms", json!({"transport": "livekit"})).await;
    let user = {
        let args = UserArgs {
            tone_hz: Some(300.0),
            seconds: 60.0,
            until_disconnected: true,
            ..UserArgs::new(endpoint.url.clone(), token)
        };
        tokio::spawn(async move { run_user(&args).await })
    };
    let connected = wait_for(T, "second connected over livekit", || async {
        let s = api.get("second").await.map_err(|e| e.to_string())?;
        match s.status.as_ref().and_then(|s| s.connection.clone()) {
            Some(c) if c.transport == Transport::LiveKit => Ok(c),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(connected.user_id.as_deref(), Some("user-second"));
    api.delete("second", &DeleteParams::default())
        .await
        .expect("deleting the session");
    let report = tokio::time::timeout(Duration::from_secs(30), user)
        .await
        .unwrap_or_else(|_| panic!("the user stayed in the room after the session was deleted"))
        .expect("the user task");
    assert_eq!(
        report.disconnect_reason.as_deref(),
        Some("ROOM_DELETED"),
        "{report:?}"
    );
    wait_for(T, "the slot freed", || async {
        match backend_status(ns, "rooms").await?.active_sessions {
            0 => Ok(()),
            active => Err(format!("active {active}")),
        }
    })
    .await;

    // A room serves one session at a time: a second session naming the room of a held one
    // waits RoomInUse, without a slot, and is admitted once the first ends.
    let lobby = json!({"transport": "livekit", "room": "lobby"});
    admit_one(&api, "lobby-first", "rooms", lobby.clone()).await;
    api.create(
        &PostParams::default(),
        &session("lobby-second", "rooms", lobby),
    )
    .await
    .expect("creating the second lobby session");
    let waiting = wait_for(T, "lobby-second waits RoomInUse", || async {
        let s = api.get("lobby-second").await.map_err(|e| e.to_string())?;
        match admitted_reason(&s).as_deref() {
            Some("RoomInUse") => Ok(s),
            other => Err(format!("{:?} {other:?}", phase(&s))),
        }
    })
    .await;
    let message = waiting
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == "Admitted")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("lobby-first") && message.contains("spec.room"),
        "{message}"
    );
    assert_eq!(phase(&waiting), SessionPhase::Pending);
    assert_eq!(
        backend_status(ns, "rooms").await.map(|s| s.active_sessions),
        Ok(1)
    );
    api.delete("lobby-first", &DeleteParams::default())
        .await
        .expect("deleting the first lobby session");
    wait_phase(&api, "lobby-second", SessionPhase::Active).await;
    api.delete("lobby-second", &DeleteParams::default())
        .await
        .expect("deleting the second lobby session");
    wait_for(T, "the lobby's slot freed", || async {
        match backend_status(ns, "rooms").await?.active_sessions {
            0 => Ok(()),
            active => Err(format!("active {active}")),
        }
    })
    .await;
    drop(server);

    // The server is gone: the next session cannot get its agent into the room.
    api.create(
        &PostParams::default(),
        &session("third", "rooms", json!({"transport": "livekit"})),
    )
    .await
    .expect("creating the third session");
    let failed = wait_phase(&api, "third", SessionPhase::Failed).await;
    let status = failed.status.expect("status");
    assert_eq!(
        status.end_reason.as_deref(),
        Some("LiveKitUnavailable"),
        "{status:?}"
    );
    wait_for(T, "the failed session's slot freed", || async {
        match backend_status(ns, "rooms").await?.active_sessions {
            0 => Ok(()),
            active => Err(format!("active {active}")),
        }
    })
    .await;
}
