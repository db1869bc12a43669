//! The worker's side of the `livekit` provider against a real livekit-server (built from its Go
//! module) and a real LiveKit user (the official Python SDK): the worker, told only a room name
//! at reservation, joins it as the agent, hears the user and answers through the backend's
//! pipeline (the `echo` S2S provider, and the offline Whisper → echo agent → Piper pipeline,
//! whose answer a second recogniser understands), reports the connection, and ends the session
//! when the user leaves (`ParticipantLeft`), the session is released (its own room is
//! deleted) or someone else deletes the room (`RoomEnded`).

mod common;

use std::time::Duration;

use common::Worker;
use common::speech::{recall, speak};
use voice_proto::livekit_token::ApiKey;
use voice_proto::worker::v1::{
    ReleaseSessionRequest, ReserveResult, ReserveSessionRequest, SessionEvent, Transport,
    WatchEventsRequest, session_event::Event,
};
use voice_tests::livekit::{LiveKitServer, UserArgs, run_user};

fn worker_for(server: &LiveKitServer) -> Worker {
    let config = serde_json::json!({"pipeline": {"type": "S2S", "s2s": {"provider": "echo"}}});
    worker_with(server, 2, &config)
}

/// A worker of `capacity` slots serving sessions in `server`'s rooms with backend `config`.
fn worker_with(server: &LiveKitServer, capacity: u32, config: &serde_json::Value) -> Worker {
    Worker::start_with(
        capacity,
        Some(config),
        &[
            ("LIVEKIT_URL", &server.url()),
            ("LIVEKIT_API_KEY", server.api_key()),
            ("LIVEKIT_API_SECRET", server.api_secret()),
            ("RUST_LOG", "voice_worker=debug,warn"),
        ],
    )
}

fn key(server: &LiveKitServer) -> ApiKey {
    ApiKey {
        key: server.api_key().to_owned(),
        secret: server.api_secret().to_owned(),
    }
}

async fn reserve_in_room(worker: &Worker, id: &str, uid: &str, user: &str, room: &str) {
    let config = serde_json::json!({"userId": user, "room": room});
    let result = worker
        .client()
        .await
        .reserve_session(ReserveSessionRequest {
            session_id: id.to_owned(),
            uid: uid.to_owned(),
            token_key_id: None,
            session_config_json: config.to_string(),
        })
        .await
        .unwrap_or_else(|e| panic!("ReserveSession: {e}"))
        .into_inner()
        .result();
    assert_eq!(result, ReserveResult::Reserved);
}

/// The worker's session events from now on.
async fn watch(worker: &Worker) -> tonic::Streaming<SessionEvent> {
    worker
        .client()
        .await
        .watch_events(WatchEventsRequest {})
        .await
        .unwrap_or_else(|e| panic!("WatchEvents: {e}"))
        .into_inner()
}

/// Events of `id` until one matches `done` (or 30 s pass), in order.
async fn events_until(
    events: &mut tonic::Streaming<SessionEvent>,
    id: &str,
    done: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Ok(Some(event))) = tokio::time::timeout_at(deadline, events.message()).await {
        if event.session_id != id {
            continue;
        }
        let Some(event) = event.event else { continue };
        let stop = done(&event);
        seen.push(event);
        if stop {
            break;
        }
    }
    seen
}

#[tokio::test]
async fn the_agent_answers_a_livekit_user_and_the_session_ends_when_the_user_leaves() {
    let server = LiveKitServer::start();
    let worker = worker_for(&server);
    let mut events = watch(&worker).await;
    reserve_in_room(&worker, "team/lk-1", "uid-lk-1", "alice", "team-lk-1").await;
    let token = key(&server)
        .user_token("team-lk-1", "alice", Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e}"));
    let report = run_user(&UserArgs {
        tone_hz: Some(440.0),
        seconds: 6.0,
        ..UserArgs::new(server.url(), token)
    })
    .await;
    let context = || {
        format!(
            "user: {report:?}\nlivekit-server log tail:\n{}",
            tail(&server.log())
        )
    };
    assert!(report.joined, "{}", context());
    assert!(
        report.agent_joined,
        "the agent never joined the room\n{}",
        context()
    );
    assert!(
        report.agent_track,
        "the agent published no track\n{}",
        context()
    );
    // The echo provider plays the user's tone back: audible audio came from the agent.
    assert!(
        report.audible_ms >= 1_000,
        "the agent's audio carried too little sound\n{}",
        context()
    );
    let first = report
        .first_audio_ms
        .unwrap_or_else(|| panic!("no audible reply\n{}", context()));
    eprintln!(
        "LiveKit echo: first audible reply {first} ms after the user's first frame; {} ms audible of {} ms received",
        report.audible_ms, report.received_ms
    );

    let seen = events_until(&mut events, "team/lk-1", |e| matches!(e, Event::Ended(_))).await;
    let connected = seen
        .iter()
        .find_map(|e| match e {
            Event::Connected(c) => Some(c.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Connected event in {seen:?}"));
    assert_eq!(connected.transport(), Transport::Livekit);
    assert_eq!(connected.participant, "alice");
    let ended = seen
        .iter()
        .find_map(|e| match e {
            Event::Ended(ended) => Some(ended.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the session did not end when the user left: {seen:?}"));
    assert_eq!(ended.reason, "ParticipantLeft", "{ended:?}");
    // The slot is free again.
    let stats = worker
        .client()
        .await
        .list_sessions(voice_proto::worker::v1::ListSessionsRequest {})
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert!(stats.sessions.is_empty(), "{:?}", stats.sessions);
}

#[tokio::test]
async fn releasing_the_session_ends_the_call_for_the_user_in_its_own_room() {
    let server = LiveKitServer::start();
    let worker = worker_for(&server);
    reserve_in_room(&worker, "team/lk-2", "uid-lk-2", "bob", "team-lk-2").await;
    let token = key(&server)
        .user_token("team-lk-2", "bob", Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e}"));
    let user = {
        let args = UserArgs {
            tone_hz: Some(300.0),
            seconds: 30.0,
            until_disconnected: true,
            ..UserArgs::new(server.url(), token)
        };
        tokio::spawn(async move { run_user(&args).await })
    };
    // Once the user hears the agent, the operator releases the session (as on delete).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let released = worker
        .client()
        .await
        .release_session(ReleaseSessionRequest {
            session_id: "team/lk-2".into(),
            uid: "uid-lk-2".into(),
            reason: "Deleted".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("ReleaseSession: {e}"))
        .into_inner();
    assert_eq!(released.held_sessions, 0);
    let report = tokio::time::timeout(Duration::from_secs(20), user)
        .await
        .unwrap_or_else(|_| panic!("the user was not disconnected after the release"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.agent_track, "{report:?}");
    assert_eq!(
        report.disconnect_reason.as_deref(),
        Some("ROOM_DELETED"),
        "the session's own room should be deleted: {report:?}"
    );
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[tokio::test]
async fn a_room_deleted_by_someone_else_ends_the_session_as_room_ended() {
    let server = LiveKitServer::start();
    let worker = worker_for(&server);
    let mut events = watch(&worker).await;
    // A room the application named: the worker only ever leaves it.
    reserve_in_room(&worker, "team/lk-3", "uid-lk-3", "carol", "app-room").await;
    let token = key(&server)
        .user_token("app-room", "carol", Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e}"));
    let user = {
        let args = UserArgs {
            tone_hz: Some(500.0),
            seconds: 30.0,
            until_disconnected: true,
            ..UserArgs::new(server.url(), token)
        };
        tokio::spawn(async move { run_user(&args).await })
    };
    let seen = events_until(&mut events, "team/lk-3", |e| {
        matches!(e, Event::Connected(_))
    })
    .await;
    assert!(
        seen.iter().any(|e| matches!(e, Event::Connected(_))),
        "the user never connected: {seen:?}"
    );
    // The application closes its room.
    voice_worker::livekit::room_service::delete_room(&server.url(), &key(&server), "app-room")
        .await
        .unwrap_or_else(|e| panic!("DeleteRoom: {e}"));
    let seen = events_until(&mut events, "team/lk-3", |e| matches!(e, Event::Ended(_))).await;
    let ended = seen
        .iter()
        .find_map(|e| match e {
            Event::Ended(ended) => Some(ended.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the session did not end with its room: {seen:?}"));
    assert_eq!(ended.reason, "RoomEnded", "{ended:?}");
    let report = tokio::time::timeout(Duration::from_secs(20), user)
        .await
        .unwrap_or_else(|_| panic!("the user stayed after the room was deleted"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        report.disconnect_reason.as_deref(),
        Some("ROOM_DELETED"),
        "{report:?}"
    );
}

/// Not only echo: in a room the backend's offline pipeline (Whisper, the echo agent, Piper)
/// understands what a LiveKit user says and answers in speech that a second recogniser
/// understands too.
#[tokio::test]
async fn the_offline_pipeline_understands_a_livekit_user_and_answers_in_speech() {
    use voice_proto::worker::v1::transcript::Role;
    use voice_worker::pipeline::audio::{Resampler, parse_wav};
    use voice_worker::pipeline::providers::SpeechToText;
    use voice_worker::pipeline::providers::whisper::Whisper;

    let server = LiveKitServer::start();
    let config = serde_json::json!({
        "pipeline": {
            "type": "STT_TTS",
            "stt": {"provider": "whisper", "options": {"language": "en-US"}},
            "tts": {"provider": "piper"},
            "vad": {"provider": "webrtc", "aggressiveness": 0},
            "turnDetection": {"provider": "silence", "silenceTimeout": "500ms"}
        },
        "agent": {"type": "Echo", "interruptionHandling": false}
    });
    let worker = worker_with(&server, 1, &config);
    let mut events = watch(&worker).await;
    reserve_in_room(&worker, "team/lk-say", "uid-lk-say", "dave", "team-lk-say").await;
    let token = key(&server)
        .user_token("team-lk-say", "dave", Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e}"));
    // Ten words: one misheard word still leaves the 80 % asked for.
    let said = "what will the weather be like in boston tomorrow morning";
    let say = std::env::temp_dir().join(format!("livekit-said-{}.wav", std::process::id()));
    let pcm = voice_worker::pipeline::audio::Pcm {
        rate: 16_000,
        samples: speak(said, "en-us"),
    };
    std::fs::write(&say, voice_worker::pipeline::audio::encode_wav(&pcm))
        .unwrap_or_else(|e| panic!("{}: {e}", say.display()));
    let recording = std::env::temp_dir().join(format!("livekit-say-{}.wav", std::process::id()));
    let report = run_user(&UserArgs {
        say: Some(say.clone()),
        // What is said before the agent has subscribed to the user's track never reaches
        // it (the server does not buffer), so the user waits, as a caller would.
        lead_in_s: 2.0,
        seconds: 17.0,
        record: Some(recording.clone()),
        ..UserArgs::new(server.url(), token)
    })
    .await;
    let _ = std::fs::remove_file(&say);
    assert!(report.agent_track, "{report:?}");

    let seen = events_until(
        &mut events,
        "team/lk-say",
        |e| matches!(e, Event::Transcript(t) if t.role() == Role::Agent),
    )
    .await;
    let transcript = |role: Role| {
        seen.iter()
            .find_map(|e| match e {
                Event::Transcript(t) if t.role() == role => Some(t.text.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {role:?} transcript in {seen:?}"))
    };
    let (user, agent) = (transcript(Role::User), transcript(Role::Agent));
    println!("said {said:?}; the agent heard {user:?} and answered {agent:?}");
    assert!(
        recall(said, &user) >= 0.8,
        "Whisper heard {user:?} for {said:?}"
    );
    assert_eq!(
        agent,
        format!("You said: {user}."),
        "the echo agent repeats"
    );

    // What the user received is Piper saying the answer.
    let wav = std::fs::read(&recording).unwrap_or_else(|e| panic!("{}: {e}", recording.display()));
    let _ = std::fs::remove_file(&recording);
    let pcm = parse_wav(&wav).unwrap_or_else(|e| panic!("{e}"));
    let mut narrow = Vec::new();
    let mut resampler = Resampler::new(pcm.rate, 16_000);
    resampler.process(&pcm.samples, &mut narrow);
    resampler.flush(&mut narrow);
    let stt = Whisper::from_stage(None, &Default::default()).unwrap_or_else(|e| panic!("{e}"));
    let heard = stt
        .transcribe(&narrow)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!("the user heard {heard:?}");
    assert!(
        recall(&agent, &heard) >= 0.8,
        "the user heard {heard:?}, not {agent:?}"
    );
}
