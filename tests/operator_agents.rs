//! End to end: a user's gRPC agent behind the whole stack (real API server, operator, node
//! agent, worker process, a WebSocket caller speaking espeak-ng audio). The agent is served
//! over TLS from a private CA named in a Secret; it is told who the session is, gets an
//! edit of `spec.metadata` before its next turn, saves state into the session's status and
//! ends the call itself. A webhook agent gets the same edit in the body of its next turn.

mod operator_common;
#[path = "../worker/tests/common/test_agent.rs"]
mod test_agent;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use operator_common::*;
use serde_json::json;
use tokio::sync::mpsc;
use voice_crds::{SessionPhase, VoiceSession};
use voice_proto::agent::v1::{
    ConverseRequest, ConverseResponse, EndOfTurn, Hangup, TextDelta, agent_server,
    converse_request, converse_response,
};

const T: Duration = Duration::from_secs(120);

/// The agent: logs what it is sent, answers the first turn with a saved state and hangs up
/// after answering the second.
struct Receptionist {
    log: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl agent_server::Agent for Receptionist {
    type ConverseStream = test_agent::ConverseStream;

    async fn converse(
        &self,
        request: tonic::Request<tonic::Streaming<ConverseRequest>>,
    ) -> Result<tonic::Response<Self::ConverseStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let log = self.log.clone();
        tokio::spawn(async move {
            let mut turns = 0;
            while let Some(Ok(message)) = inbound.next().await {
                let entry = match message.event {
                    Some(converse_request::Event::Start(s)) => format!(
                        "start uid={} user={} plan={}",
                        s.uid,
                        s.user_id,
                        s.metadata.get("plan").cloned().unwrap_or_default()
                    ),
                    Some(converse_request::Event::Metadata(m)) => format!(
                        "metadata plan={}",
                        m.metadata.get("plan").cloned().unwrap_or_default()
                    ),
                    Some(converse_request::Event::Transcript(t)) => {
                        turns += 1;
                        let last = if turns == 1 {
                            converse_response::Event::EndOfTurn(EndOfTurn {
                                turn_id: t.turn_id.clone(),
                                context_json: r#"{"step":"greeted"}"#.into(),
                            })
                        } else {
                            converse_response::Event::Hangup(Hangup {
                                reason: "the booking is done".into(),
                            })
                        };
                        let delta = converse_response::Event::Delta(TextDelta {
                            turn_id: t.turn_id,
                            text: "Noted, thank you.".into(),
                        });
                        for event in [delta, last] {
                            let _ = tx.send(Ok(ConverseResponse { event: Some(event) })).await;
                        }
                        "transcript".to_owned()
                    }
                    Some(converse_request::Event::End(e)) => format!("end {}", e.reason),
                    other => format!("{other:?}"),
                };
                log.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
            }
        });
        Ok(test_agent::replies(rx))
    }
}

fn log_of(log: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    log.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A caller's microphone: sends 16 kHz PCM16 in 20 ms messages in real time, silence unless
/// it has been handed speech, until the worker closes the socket (as it does when the agent
/// hangs up). Returns the channel that takes speech; an empty message mutes it (nothing is
/// sent once the speech handed to it is out) until it is handed speech again.
fn microphone(mut tx: SessionSender) -> (mpsc::Sender<Vec<u8>>, tokio::task::JoinHandle<()>) {
    use futures::SinkExt;
    let (speech, mut queue) = mpsc::channel::<Vec<u8>>(4);
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        let mut pending: std::collections::VecDeque<u8> = Default::default();
        let mut muted = false;
        loop {
            ticks.tick().await;
            if pending.is_empty()
                && let Ok(more) = queue.try_recv()
            {
                muted = more.is_empty();
                pending.extend(more);
            }
            if muted && pending.is_empty() {
                continue;
            }
            let take = pending.len().min(640);
            let mut frame: Vec<u8> = pending.drain(..take).collect();
            frame.resize(640, 0);
            let message = tokio_tungstenite::tungstenite::Message::Binary(frame.into());
            if tx.send(message).await.is_err() {
                return;
            }
        }
    });
    (speech, task)
}

/// Says the phrase once and waits until the agent has logged `turns` transcripts (Whisper
/// hears it the first time; pocketsphinx needed up to three tries). With `then_mute` the
/// microphone sends nothing after the phrase and a second and a half of silence.
async fn talk_until(
    speech: &mpsc::Sender<Vec<u8>>,
    log: &Arc<Mutex<Vec<String>>>,
    turns: usize,
    then_mute: bool,
) {
    let mut phrase = speak("I would like to book a table for two");
    if then_mute {
        phrase.extend(vec![0u8; 48_000]);
    }
    speech.send(phrase).await.expect("the microphone runs");
    if then_mute {
        speech.send(Vec::new()).await.expect("the microphone runs");
    }
    let heard =
        |log: &Arc<Mutex<Vec<String>>>| log_of(log).iter().filter(|e| *e == "transcript").count();
    // The phrase, the silence that ends the turn, recognition (the model's first load
    // included) and the agent.
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if heard(log) >= turns {
            return;
        }
    }
    panic!("the agent never got turn {turns}: {:?}", log_of(log));
}

#[tokio::test]
async fn a_tls_grpc_agent_hears_the_session_and_a_metadata_edit_saves_state_and_hangs_up() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let stack = OperatorStack::start_with(
        "agents-grpc",
        json!({"stages": {"turnDetection": ["silence"], "stt": ["whisper", "pocketsphinx"]}}),
    )
    .await;
    let ns = &stack.ns;
    let (ca_pem, cert_pem, key_pem) = test_agent::agent_pki();
    let log = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port for the agent");
    let port = listener.local_addr().expect("address").port();
    let server = tonic::transport::Server::builder()
        .tls_config(
            tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(&cert_pem, &key_pem)),
        )
        .expect("TLS")
        .add_service(agent_server::AgentServer::new(Receptionist {
            log: log.clone(),
        }))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    let server = tokio::spawn(server);

    let secrets: Api<Secret> = ns.api();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "agent-ca"},
        "stringData": {"ca.crt": ca_pem},
    }))
    .expect("a Secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("creating the CA Secret");
    stack.apply_backend(
        "booking",
        json!({
            "replicas": 1,
            "pipeline": {"stt": {"provider": "whisper"}, "turnDetection": {"silenceTimeout": "400ms"}},
            "agent": {"type": "Grpc", "grpc": {
                "endpoint": format!("https://127.0.0.1:{port}"),
                "caSecretRef": {"name": "agent-ca", "key": "ca.crt"},
            }},
        }),
    );
    wait_healthy(ns, "booking", 1, T).await;
    let api: Api<VoiceSession> = ns.api();
    let (endpoint, token) = admit_one(
        &api,
        "call",
        "booking",
        json!({"transport": "websocket", "metadata": {"plan": "gold"}}),
    )
    .await;
    let uid = api.get("call").await.expect("the session").metadata.uid;
    let (tx, reader) = connect_session(&endpoint.url, &token).await;
    let (speech, mic) = microphone(tx);

    // Turn one: the agent learns who called and saves its state into the session.
    talk_until(&speech, &log, 1, false).await;
    let start = log_of(&log).first().cloned().unwrap_or_default();
    assert_eq!(
        start,
        format!(
            "start uid={} user=user-call plan=gold",
            uid.unwrap_or_default()
        )
    );
    wait_for(T, "the agent's state in status", || async {
        let s = api.get("call").await.map_err(|e| e.to_string())?;
        let context = s.status.and_then(|s| s.context).unwrap_or_default();
        match context.agent_state.as_deref() {
            Some(r#"{"step":"greeted"}"#) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Turn detection is live in status: the turn's speech was heard, with the backend's
    // silence timeout.
    let turn = wait_for(T, "turn detection in status", || async {
        let s = api.get("call").await.map_err(|e| e.to_string())?;
        match s.status.and_then(|s| s.turn_detection) {
            Some(t) if t.last_speech_time.is_some() => Ok(t),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        turn.silence_timeout.map(std::time::Duration::from),
        Some(Duration::from_millis(400))
    );
    let buffers = api
        .get("call")
        .await
        .expect("the session")
        .status
        .and_then(|s| s.audio_buffers)
        .expect("status.audioBuffers of the live connection");
    let format = buffers.format.expect("the negotiated format");
    assert_eq!(
        (format.codec, format.sample_rate, format.channels),
        (voice_crds::Codec::Pcm, 16_000, 1),
        "what the caller's WebSocket carries"
    );

    // The application edits the metadata; within a second it is on the worker.
    api.patch(
        "call",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"metadata": {"plan": "platinum"}}})),
    )
    .await
    .expect("editing spec.metadata");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Turn two: the edit arrives before it, and the agent hangs up after answering. The
    // caller's microphone goes quiet after the turn: the reply and the hang-up still come,
    // on the worker's own clock.
    talk_until(&speech, &log, 2, true).await;
    let ended = wait_phase(&api, "call", SessionPhase::Completed).await;
    let status = ended.status.expect("status");
    assert_eq!(status.end_reason.as_deref(), Some("AgentHangup"));
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    let said = status
        .conditions
        .iter()
        .any(|c| c.message.contains("the booking is done"));
    assert!(
        said,
        "the agent's reason is shown: {:?} {ready:?}",
        status.conditions
    );
    let entries = log_of(&log);
    let update = entries.iter().position(|e| e == "metadata plan=platinum");
    let second = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| *e == "transcript")
        .map(|(i, _)| i)
        .nth(1);
    assert!(
        matches!((update, second), (Some(u), Some(t)) if u < t),
        "the edit came before the next turn: {entries:?}"
    );
    tokio::time::timeout(T, reader)
        .await
        .expect("the worker closed the caller's socket")
        .expect("the reader ended cleanly");
    mic.abort();
    server.abort();
}

/// The webhook agent: records each turn's JSON body and answers at once.
async fn webhook_turn(
    axum::extract::State(bodies): axum::extract::State<Arc<Mutex<Vec<serde_json::Value>>>>,
    body: axum::body::Bytes,
) -> ([(&'static str, &'static str); 1], String) {
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    bodies.lock().unwrap_or_else(|e| e.into_inner()).push(body);
    (
        [("content-type", "application/json")],
        json!({"text": "Noted."}).to_string(),
    )
}

#[tokio::test]
async fn a_metadata_edit_reaches_a_webhook_agent_on_its_next_turn() {
    let stack = OperatorStack::start_with(
        "agents-hook",
        json!({"stages": {"turnDetection": ["silence"], "stt": ["whisper", "pocketsphinx"]}}),
    )
    .await;
    let ns = &stack.ns;
    let bodies: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port for the webhook");
    let port = listener.local_addr().expect("address").port();
    let app = axum::Router::new()
        .route("/turn", axum::routing::post(webhook_turn))
        .with_state(bodies.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    stack.apply_backend(
        "helpdesk",
        json!({
            "replicas": 1,
            "pipeline": {"stt": {"provider": "whisper"}, "turnDetection": {"silenceTimeout": "400ms"}},
            "agent": {"type": "Callback", "callback": {"url": format!("http://127.0.0.1:{port}/turn")}},
        }),
    );
    wait_healthy(ns, "helpdesk", 1, T).await;
    let api: Api<VoiceSession> = ns.api();
    let (endpoint, token) = admit_one(
        &api,
        "call",
        "helpdesk",
        json!({"transport": "websocket", "metadata": {"plan": "gold"},
               "user": {"metadata": {"lang": "en"}}}),
    )
    .await;
    let (tx, _reader) = connect_session(&endpoint.url, &token).await;
    let (speech, mic) = microphone(tx);
    // The webhook's turns, counted like the gRPC agent's transcripts.
    let log = Arc::new(Mutex::new(Vec::new()));
    let count = {
        let (bodies, log) = (bodies.clone(), log.clone());
        tokio::spawn(async move {
            loop {
                {
                    let n = bodies.lock().unwrap_or_else(|e| e.into_inner()).len();
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    while log.len() < n {
                        log.push("transcript".to_owned());
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    talk_until(&speech, &log, 1, false).await;
    api.patch(
        "call",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"metadata": {"plan": "platinum"}}})),
    )
    .await
    .expect("editing spec.metadata");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = log_of(&log).len();
    talk_until(&speech, &log, before + 1, false).await;

    let bodies = bodies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let first = &bodies[0];
    let last = bodies.last().expect("a later turn");
    assert_eq!(first["metadata"]["plan"], "gold", "{first}");
    assert_eq!(first["user_id"], "user-call", "{first}");
    assert_eq!(first["user_metadata"]["lang"], "en", "{first}");
    assert_eq!(
        last["metadata"]["plan"], "platinum",
        "the edit reached the next turn: {last}"
    );
    mic.abort();
    count.abort();
    server.abort();
}
