//! The network providers against local servers that speak the real wire formats on
//! loopback: chat completions as server-sent events, streamed (chunked) speech, multipart
//! transcription, a webhook agent that fails before it answers, and a gRPC Agent service.

#[path = "common/test_agent.rs"]
#[allow(dead_code)] // the TLS certificate is for the other agent tests
mod test_agent;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use futures::StreamExt;
use tokio::sync::mpsc;
use voice_proto::agent::v1::{
    ConverseRequest, ConverseResponse, EndOfTurn, TextDelta, agent_server, converse_request,
    converse_response,
};
use voice_worker::pipeline::metadata::MetadataFeed;
use voice_worker::pipeline::providers::grpc_agent::GrpcAgent;
use voice_worker::pipeline::providers::openai_chat::OpenAiChat;
use voice_worker::pipeline::providers::openai_stt::OpenAiStt;
use voice_worker::pipeline::providers::openai_tts::OpenAiTts;
use voice_worker::pipeline::providers::webhook_agent::WebhookAgent;
use voice_worker::pipeline::providers::{
    AfterTurn, Agent, AgentTurn, HttpTarget, SpeechToText, TextToSpeech, credentials,
};
use voice_worker::pipeline::spec::Identity;

/// What the fake servers saw.
#[derive(Default)]
struct Seen {
    bodies: Vec<String>,
    auth: Vec<String>,
    calls: usize,
    last_token_sent: Option<Instant>,
}

type Shared = Arc<Mutex<Seen>>;

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

fn record(seen: &Shared, headers: &HeaderMap, body: &Bytes) {
    let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
    s.calls += 1;
    s.bodies.push(String::from_utf8_lossy(body).into_owned());
    if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        s.auth.push(auth.to_owned());
    }
}

/// Chat completions that stream one token every 200 ms, OpenAI's SSE framing.
async fn slow_chat(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    record(&seen, &headers, &body);
    let tokens = ["Sunny ", "today. ", "Rain ", "tomorrow", "."];
    let stream = futures::stream::unfold(0usize, move |i| {
        let seen = seen.clone();
        async move {
            if i > tokens.len() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let event = if i == tokens.len() {
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_token_sent = Some(Instant::now());
                "data: [DONE]\n\n".to_owned()
            } else {
                let chunk =
                    serde_json::json!({"choices": [{"index": 0, "delta": {"content": tokens[i]}}]});
                format!("data: {chunk}\n\n")
            };
            Some((Ok::<_, Infallible>(Bytes::from(event)), i + 1))
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

/// Speech as raw 24 kHz PCM, in three chunks 100 ms apart (chunked transfer).
async fn speech(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    record(&seen, &headers, &body);
    let stream = futures::stream::unfold(0u32, |i| async move {
        if i == 3 {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let samples: Vec<u8> = (0..2_400).flat_map(|_| 4_000i16.to_le_bytes()).collect();
        Some((Ok::<_, Infallible>(Bytes::from(samples)), i + 1))
    });
    Response::builder()
        .header("content-type", "audio/pcm")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

async fn transcription(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    record(&seen, &headers, &body);
    let text = String::from_utf8_lossy(&body);
    if !text.contains("name=\"file\"") || !text.contains("RIFF") {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(Body::from(r#"{"error":{"message":"no file part"}}"#))
            .unwrap_or_default();
    }
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(r#"{"text":" what is the weather "}"#))
        .unwrap_or_default()
}

async fn unauthorized(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    record(&seen, &headers, &body);
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#,
        ))
        .unwrap_or_default()
}

/// A target at `addr` + `path`; with `key`, the key is mounted as a Secret file and read
/// the way the worker reads it.
fn target(addr: SocketAddr, path: &str, key: Option<&str>) -> HttpTarget {
    let key = key.and_then(|k| {
        let dir = std::env::temp_dir().join(format!("voice-secrets-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("openai")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("openai").join("api-key"), format!("{k}\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        let r = voice_crds::SecretKeyRef {
            name: "openai".into(),
            key: "api-key".into(),
        };
        credentials::load_from(&dir, "test", Some(&r)).unwrap_or_else(|e| panic!("{e}"))
    });
    HttpTarget::new(
        "test",
        &format!("http://{addr}{path}"),
        "test-model",
        key,
        Duration::from_secs(2),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn turn(text: &str) -> AgentTurn {
    AgentTurn {
        turn_id: "t1".into(),
        text: text.into(),
        history: vec![
            ("user".into(), "hi".into()),
            ("assistant".into(), "hello".into()),
        ],
    }
}

/// Collects deltas with the time each arrived.
async fn collect(mut rx: mpsc::Receiver<String>) -> Vec<(String, Instant)> {
    let mut out = Vec::new();
    while let Some(d) = rx.recv().await {
        out.push((d, Instant::now()));
    }
    out
}

#[tokio::test]
async fn chat_completions_stream_token_by_token_with_the_key_and_history() {
    let seen: Shared = Arc::default();
    let router = Router::new().route("/v1/chat/completions", post(slow_chat));
    let addr = serve(router.with_state(seen.clone())).await;
    let chat = OpenAiChat {
        target: target(addr, "/v1", Some("sk-test-123")),
        system_prompt: Some("Be brief.".into()),
    };
    let (tx, rx) = mpsc::channel(8);
    let collector = tokio::spawn(collect(rx));
    chat.reply(turn("weather?"), tx)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let deltas = collector.await.unwrap_or_default();
    let text: String = deltas.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(text, "Sunny today. Rain tomorrow.");
    // Streamed: the first token arrived long before the last.
    let spread = deltas[deltas.len() - 1].1.duration_since(deltas[0].1);
    assert!(spread >= Duration::from_millis(500), "{spread:?}");
    let s = seen.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(s.auth, ["Bearer sk-test-123"]);
    let body: serde_json::Value = serde_json::from_str(&s.bodies[0]).unwrap_or_default();
    assert_eq!(body["stream"], true);
    assert_eq!(body["model"], "test-model");
    let roles: Vec<&str> = body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["role"].as_str())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
}

#[tokio::test]
async fn speech_streams_and_is_resampled_to_48_khz() {
    let seen: Shared = Arc::default();
    let router = Router::new().route("/v1/audio/speech", post(speech));
    let addr = serve(router.with_state(seen.clone())).await;
    let tts = OpenAiTts {
        target: target(addr, "/v1", None),
        voice: "alloy".into(),
    };
    let (tx, mut rx) = mpsc::channel(64);
    let job = tokio::spawn(async move {
        tts.synthesize("Hello.", tx)
            .await
            .map_err(|e| e.to_string())
    });
    let started = Instant::now();
    let mut samples = 0;
    let mut first = None;
    while let Some(chunk) = rx.recv().await {
        if first.is_none() && !chunk.is_empty() {
            first = Some(started.elapsed());
        }
        samples += chunk.len();
    }
    assert_eq!(job.await.ok(), Some(Ok(())));
    // 3 × 2400 samples at 24 kHz = 300 ms = 14 400 samples at 48 kHz.
    assert!((14_390..=14_450).contains(&samples), "{samples}");
    let first = first.unwrap_or_default();
    assert!(
        first < Duration::from_millis(150),
        "first audio after {first:?}: not streamed"
    );
    let bodies = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .bodies
        .clone();
    let body: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap_or_default();
    assert_eq!(body["response_format"], "pcm");
    assert_eq!(body["input"], "Hello.");
}

#[tokio::test]
async fn transcription_posts_a_wav_and_errors_carry_the_providers_message_but_no_key() {
    let seen: Shared = Arc::default();
    let router = Router::new()
        .route("/v1/audio/transcriptions", post(transcription))
        .route("/bad/audio/transcriptions", post(unauthorized));
    let addr = serve(router.with_state(seen.clone())).await;
    let stt = OpenAiStt {
        target: target(addr, "/v1", Some("sk-secret-999")),
        language: Some("en".into()),
    };
    let text = stt
        .transcribe(&[0i16; 1_600])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(text, "what is the weather");
    let bodies = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .bodies
        .clone();
    assert!(bodies[0].contains("name=\"language\""));

    let bad = OpenAiStt {
        target: target(addr, "/bad", Some("sk-secret-999")),
        language: None,
    };
    let err = bad.transcribe(&[0i16; 1_600]).await.unwrap_err();
    assert_eq!(err.reason(), "ProviderRejected");
    assert!(
        err.to_string().contains("Incorrect API key provided"),
        "{err}"
    );
    assert!(!err.to_string().contains("sk-secret"), "{err}");
    assert!(!format!("{err:?}").contains("sk-secret"));

    let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap_or_else(|e| panic!("{e}"));
    let gone = OpenAiStt {
        target: target(nowhere, "/v1", None),
        language: None,
    };
    let err = gone.transcribe(&[0i16; 160]).await.unwrap_err();
    assert_eq!(err.reason(), "ProviderUnavailable", "{err}");
}

/// A webhook that answers 503 twice, then streams its reply as SSE; a JSON one; a slow one.
async fn flaky_webhook(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    record(&seen, &headers, &body);
    let calls = seen.lock().unwrap_or_else(|e| e.into_inner()).calls;
    if calls <= 2 {
        return Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .body(Body::from("warming up"))
            .unwrap_or_default();
    }
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(
            "data: {\"text\":\"It is \"}\n\ndata: sunny.\n\ndata: [DONE]\n\n",
        ))
        .unwrap_or_default()
}

async fn json_webhook(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    record(&seen, &headers, &body);
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"text":"Whole reply.","hangup":"task done"}"#,
        ))
        .unwrap_or_default()
}

async fn slow_webhook() -> Response {
    tokio::time::sleep(Duration::from_secs(5)).await;
    Response::default()
}

#[tokio::test]
async fn webhook_agent_retries_then_streams_and_times_out_when_the_agent_hangs() {
    let seen: Shared = Arc::default();
    let router = Router::new()
        .route("/flaky", post(flaky_webhook))
        .route("/json", post(json_webhook))
        .route("/slow", post(slow_webhook));
    let addr = serve(router.with_state(seen.clone())).await;
    let (metadata, feed) =
        tokio::sync::watch::channel(HashMap::from([("plan".to_owned(), "gold".to_owned())]));
    let agent = |path: &str, retries, timeout| {
        let target = HttpTarget::new(
            "webhook",
            &format!("http://{addr}{path}"),
            "",
            None,
            timeout,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut agent = WebhookAgent::new(target, retries, "team/s");
        agent.identity = Identity {
            uid: "uid-1".into(),
            user_id: "alice".into(),
            connections: [
                (
                    "alice".to_owned(),
                    [("lang".to_owned(), "fr".to_owned())].into(),
                ),
                ("bob".to_owned(), Default::default()),
            ]
            .into(),
        };
        agent.metadata = MetadataFeed::live(feed.clone());
        agent
    };
    let (tx, rx) = mpsc::channel(8);
    let collector = tokio::spawn(collect(rx));
    agent("/flaky", 2, Duration::from_secs(2))
        .reply(turn("weather?"), tx)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let text: String = collector
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    assert_eq!(text, "It is sunny.");
    let (calls, bodies) = {
        let s = seen.lock().unwrap_or_else(|e| e.into_inner());
        (s.calls, s.bodies.clone())
    };
    assert_eq!(calls, 3, "two 503s, then the answer");
    let body: serde_json::Value = serde_json::from_str(&bodies[2]).unwrap_or_default();
    assert_eq!(
        (body["session_id"].as_str(), body["turn_id"].as_str()),
        (Some("team/s"), Some("t1"))
    );
    assert_eq!(
        (body["uid"].as_str(), body["user_id"].as_str()),
        (Some("uid-1"), Some("alice"))
    );
    assert_eq!(body["metadata"], serde_json::json!({"plan": "gold"}));
    assert_eq!(body["user_metadata"], serde_json::json!({"lang": "fr"}));
    assert_eq!(
        body["participants"],
        serde_json::json!([{"user_id": "bob", "metadata": {}}])
    );

    // The application edits the metadata: the next turn carries it; a JSON reply that asks
    // to hang up is handed on once, after the turn.
    metadata.send_replace(HashMap::from([("plan".to_owned(), "platinum".to_owned())]));
    let (tx, rx) = mpsc::channel(8);
    let collector = tokio::spawn(collect(rx));
    let json_agent = agent("/json", 0, Duration::from_secs(2));
    assert_eq!(json_agent.after_turn(), AfterTurn::default());
    json_agent
        .reply(turn("x"), tx)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json_agent.after_turn().hangup.as_deref(), Some("task done"));
    assert_eq!(json_agent.after_turn(), AfterTurn::default(), "taken once");
    let bodies = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .bodies
        .clone();
    let body: serde_json::Value = serde_json::from_str(&bodies[3]).unwrap_or_default();
    assert_eq!(body["metadata"], serde_json::json!({"plan": "platinum"}));
    let text: String = collector
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    assert_eq!(text, "Whole reply.");

    let (tx, _rx) = mpsc::channel(8);
    let started = Instant::now();
    let err = agent("/slow", 1, Duration::from_millis(200))
        .reply(turn("x"), tx)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "ProviderTimeout", "{err}");
    // Two attempts of 200 ms and one 200 ms backoff: well under the agent's 5 s.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// A gRPC Agent service in the test: answers each final transcript with two deltas and
/// `end_of_turn`, and records what the worker sent.
struct TestAgent {
    log: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl agent_server::Agent for TestAgent {
    type ConverseStream = test_agent::ConverseStream;

    async fn converse(
        &self,
        request: tonic::Request<tonic::Streaming<ConverseRequest>>,
    ) -> Result<tonic::Response<Self::ConverseStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let log = self.log.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = inbound.next().await {
                let entry = match message.event {
                    Some(converse_request::Event::Start(s)) => format!("start {}", s.session_id),
                    Some(converse_request::Event::Transcript(t)) => {
                        let reply = [
                            converse_response::Event::Delta(TextDelta {
                                turn_id: t.turn_id.clone(),
                                text: "Heard: ".into(),
                            }),
                            converse_response::Event::Delta(TextDelta {
                                turn_id: t.turn_id.clone(),
                                text: t.text.to_uppercase(),
                            }),
                            converse_response::Event::EndOfTurn(EndOfTurn {
                                turn_id: t.turn_id.clone(),
                                context_json: String::new(),
                            }),
                        ];
                        for event in reply {
                            let _ = tx.send(Ok(ConverseResponse { event: Some(event) })).await;
                        }
                        format!("transcript {} {}", t.turn_id, t.text)
                    }
                    Some(converse_request::Event::Interruption(i)) => {
                        format!("interruption {} {}", i.turn_id, i.heard_text)
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

#[tokio::test]
async fn grpc_agent_converses_over_one_stream_and_hears_interruptions() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let service = agent_server::AgentServer::new(TestAgent { log: log.clone() });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let agent = GrpcAgent::new(
        &format!("http://{addr}"),
        Duration::from_secs(2),
        "team/g",
        "{}",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for (id, text) in [("t1", "hello"), ("t2", "again")] {
        let (tx, rx) = mpsc::channel(8);
        let collector = tokio::spawn(collect(rx));
        let turn = AgentTurn {
            turn_id: id.into(),
            text: text.into(),
            history: vec![],
        };
        agent
            .reply(turn, tx)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let reply: String = collector
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        assert_eq!(reply, format!("Heard: {}", text.to_uppercase()));
    }
    agent.interrupted("t2", "Heard:").await;
    drop(agent);
    let deadline = Instant::now() + Duration::from_secs(2);
    while log.lock().unwrap_or_else(|e| e.into_inner()).len() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        *log.lock().unwrap_or_else(|e| e.into_inner()),
        [
            "start team/g",
            "transcript t1 hello",
            "transcript t2 again",
            "interruption t2 Heard:",
            "end Released"
        ],
        "one stream for the whole session"
    );

    let nowhere = GrpcAgent::new(
        "http://127.0.0.1:9",
        Duration::from_millis(500),
        "team/g",
        "{}",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (tx, _rx) = mpsc::channel(8);
    let err = nowhere.reply(turn("x"), tx).await.unwrap_err();
    assert_eq!(err.reason(), "ProviderUnavailable", "{err}");
}

/// A transcription server that always hears the same words.
async fn fixed_transcription(
    State(seen): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&seen, &headers, &body);
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(r#"{"text":"what is the weather"}"#))
        .unwrap_or_default()
}

/// A whole STT_TTS pipeline on network providers (transcription, a chat-completions server
/// that streams a token every 200 ms, streamed speech), with the real VAD hearing real
/// speech: the first reply audio leaves before the agent's last token has been sent.
#[tokio::test]
async fn streaming_pipeline_speaks_before_the_llm_has_finished() {
    use voice_worker::media::{FRAME_SAMPLES, Frame};
    use voice_worker::pipeline::{EventSink, PipelineMetrics, PipelineSpec};

    struct NoSink;
    impl EventSink for NoSink {
        fn state(&self, _: voice_crds::PipelineState, _: &str) {}
        fn transcript(&self, _: &str, _: &str, _: &str) {}
    }

    let seen: Shared = Arc::default();
    let router = Router::new()
        .route("/v1/audio/transcriptions", post(fixed_transcription))
        .route("/v1/chat/completions", post(slow_chat))
        .route("/v1/audio/speech", post(speech));
    let addr = serve(router.with_state(seen.clone())).await;
    let base = format!("http://{addr}/v1");
    let spec = serde_json::json!({
        "pipeline": {"type": "STT_TTS",
            "stt": {"provider": "openai", "endpoint": base},
            "tts": {"provider": "openai", "endpoint": base},
            "vad": {"provider": "webrtc"},
            "turnDetection": {"provider": "silence", "silenceTimeout": "300ms"}},
        "agent": {"type": "Llm", "llm": {"endpoint": base, "model": "m"}, "streamingMode": true}
    });
    let spec = PipelineSpec::parse(&spec.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let mut p = voice_worker::pipeline::build(
        &spec,
        "team/net",
        Box::new(NoSink),
        PipelineMetrics::unregistered(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    p.connected();

    let wav = include_bytes!("fixtures/weather-16k.wav");
    let speech16 = voice_worker::pipeline::audio::parse_wav(wav).unwrap_or_else(|e| panic!("{e}"));
    let speech48 = voice_worker::pipeline::audio::resample(&speech16, 48_000);
    let mut script = vec![0i16; 24_000];
    script.extend(speech48);
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let mut first_audio = None;
    let mut events = Vec::new();
    for i in 0..250 {
        ticks.tick().await;
        let mut frame: Frame = [0; FRAME_SAMPLES];
        if let Some(chunk) = script.get(i * FRAME_SAMPLES..(i + 1) * FRAME_SAMPLES) {
            frame.copy_from_slice(chunk);
        }
        p.push(&frame);
        let mut out: Frame = [0; FRAME_SAMPLES];
        if p.pull(&mut out) && first_audio.is_none() {
            first_audio = Some(Instant::now());
        }
        events.extend(std::iter::from_fn(|| p.next_event()));
        if first_audio.is_some()
            && seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .last_token_sent
                .is_some()
        {
            break;
        }
    }
    for e in &events {
        println!("event: {e}");
    }
    let first_audio = first_audio.unwrap_or_else(|| panic!("no reply audio; events: {events:?}"));
    let last_token = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .last_token_sent
        .unwrap_or_else(|| panic!("the LLM never finished"));
    println!(
        "first reply audio {} ms before the LLM's last token",
        last_token
            .saturating_duration_since(first_audio)
            .as_millis()
    );
    assert!(
        first_audio < last_token,
        "first audio waited for the whole reply"
    );
}

/// Chat completions that answer at once (one short sentence, then `[DONE]`).
async fn instant_chat(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    record(&seen, &headers, &body);
    let delta = serde_json::json!({"choices": [{"index": 0, "delta": {"content": "Fine."}}]});
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(format!("data: {delta}\n\ndata: [DONE]\n\n")))
        .unwrap_or_default()
}

/// Eight turns in one session with instant local providers: every turn is answered, the
/// conversation history grows turn by turn, and the pipeline's own overhead (end of the
/// turn → first reply frame, i.e. the VAD-end-to-first-packet time minus the silence
/// timeout) is printed as p50/p99.
#[tokio::test]
async fn eight_turns_with_instant_providers_are_all_answered() {
    use voice_worker::media::{FRAME_SAMPLES, Frame};
    use voice_worker::pipeline::{EventSink, PipelineMetrics, PipelineSpec};

    struct NoSink;
    impl EventSink for NoSink {
        fn state(&self, _: voice_crds::PipelineState, _: &str) {}
        fn transcript(&self, _: &str, _: &str, _: &str) {}
    }

    let seen: Shared = Arc::default();
    let router = Router::new()
        .route("/v1/audio/transcriptions", post(fixed_transcription))
        .route("/v1/chat/completions", post(instant_chat))
        .route("/v1/audio/speech", post(speech));
    let addr = serve(router.with_state(seen.clone())).await;
    let base = format!("http://{addr}/v1");
    let spec = serde_json::json!({
        "pipeline": {"type": "STT_TTS",
            "stt": {"provider": "openai", "endpoint": base},
            "tts": {"provider": "openai", "endpoint": base},
            "turnDetection": {"provider": "silence", "silenceTimeout": "300ms"}},
        "agent": {"type": "Llm", "llm": {"endpoint": base, "model": "m"}}
    });
    let spec = PipelineSpec::parse(&spec.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let mut p = voice_worker::pipeline::build(
        &spec,
        "team/turns",
        Box::new(NoSink),
        PipelineMetrics::unregistered(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    p.connected();
    let wav = include_bytes!("fixtures/weather-16k.wav");
    let speech16 = voice_worker::pipeline::audio::parse_wav(wav).unwrap_or_else(|e| panic!("{e}"));
    let speech48 = voice_worker::pipeline::audio::resample(&speech16, 48_000);
    // Each turn: the phrase, then 1.5 s of silence (the 300 ms reply plays in it).
    let mut turn_audio = speech48;
    turn_audio.extend(vec![0i16; 72_000]);
    let turns = 8;
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let mut overheads = Vec::new();
    let frames_per_turn = turn_audio.len() / FRAME_SAMPLES;
    for i in 0..turns * frames_per_turn {
        ticks.tick().await;
        let at = (i % frames_per_turn) * FRAME_SAMPLES;
        let mut frame: Frame = [0; FRAME_SAMPLES];
        frame.copy_from_slice(&turn_audio[at..at + FRAME_SAMPLES]);
        p.push(&frame);
        let mut out: Frame = [0; FRAME_SAMPLES];
        p.pull(&mut out);
        for event in std::iter::from_fn(|| p.next_event()) {
            let v: serde_json::Value = serde_json::from_str(&event).unwrap_or_default();
            if v["type"] == "latency" {
                let total = v["total_ms"].as_f64().unwrap_or_default();
                let detect = v["turn_detect_ms"].as_f64().unwrap_or_default();
                overheads.push(total - detect);
            }
        }
    }
    assert_eq!(overheads.len(), turns, "every turn was answered");
    let bodies = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .bodies
        .clone();
    let chats: Vec<serde_json::Value> = bodies
        .iter()
        .filter_map(|b| serde_json::from_str::<serde_json::Value>(b).ok())
        .filter(|v| v["stream"] == true)
        .collect();
    assert_eq!(chats.len(), turns);
    let last = chats[turns - 1]["messages"].as_array().map_or(0, Vec::len);
    assert_eq!(last, 2 * turns - 1, "the agent sees the whole conversation");
    overheads.sort_by(f64::total_cmp);
    let pct = |q: f64| overheads[((overheads.len() - 1) as f64 * q).round() as usize];
    println!(
        "pipeline overhead per turn (end of turn -> first reply frame, instant local providers): p50 {:.1} ms, p99 {:.1} ms",
        pct(0.5),
        pct(0.99)
    );
}
