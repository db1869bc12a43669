//! Speech-to-speech against a local server speaking the OpenAI Realtime protocol over a
//! WebSocket on loopback: session.update, input_audio_buffer.append, server VAD events,
//! response.audio.delta, transcripts, response.done, and a barge-in answered by
//! conversation.item.truncate (the reply was already generated, so nothing to cancel).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use voice_crds::PipelineState;
use voice_worker::media::echo::SpeechToSpeech;
use voice_worker::media::{FRAME_SAMPLES, Frame};
use voice_worker::pipeline::{EventSink, PipelineMetrics, PipelineSpec};

#[derive(Default)]
struct Seen {
    session_update: Option<serde_json::Value>,
    append_bytes: Vec<usize>,
    cancels: usize,
    truncated_at_ms: Vec<u64>,
    barge_in_at: Option<Instant>,
}
type Shared = Arc<Mutex<Seen>>;

fn event(v: serde_json::Value) -> Message {
    Message::Text(v.to_string().into())
}

fn tone_delta() -> serde_json::Value {
    let bytes: Vec<u8> = (0..480).flat_map(|_| 6_000i16.to_le_bytes()).collect();
    serde_json::json!({"type": "response.audio.delta", "item_id": "item_1", "delta": B64.encode(bytes)})
}

async fn realtime(
    ws: WebSocketUpgrade,
    Path(scenario): Path<String>,
    State(seen): State<Shared>,
) -> Response {
    ws.on_upgrade(move |socket| session(socket, scenario, seen))
}

async fn session(mut socket: WebSocket, scenario: String, seen: Shared) {
    let mut appends = 0;
    let mut replied = false;
    let mut barged = false;
    while let Some(Ok(message)) = socket.recv().await {
        let Message::Text(text) = message else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        match v["type"].as_str().unwrap_or_default() {
            "session.update" => {
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .session_update = Some(v)
            }
            "response.cancel" => seen.lock().unwrap_or_else(|e| e.into_inner()).cancels += 1,
            "conversation.item.truncate" => {
                assert_eq!(v["item_id"], "item_1");
                let ms = v["audio_end_ms"].as_u64().unwrap_or(u64::MAX);
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .truncated_at_ms
                    .push(ms);
            }
            "input_audio_buffer.append" => {
                appends += 1;
                let len = B64
                    .decode(v["audio"].as_str().unwrap_or_default())
                    .map(|b| b.len())
                    .unwrap_or(0);
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .append_bytes
                    .push(len);
                if appends == 10 && !replied {
                    replied = true;
                    let deltas = if scenario == "bargein" { 150 } else { 25 };
                    let mut script = vec![
                        event(serde_json::json!({"type": "input_audio_buffer.speech_started"})),
                        event(serde_json::json!({"type": "input_audio_buffer.speech_stopped"})),
                        event(
                            serde_json::json!({"type": "conversation.item.input_audio_transcription.completed", "transcript": " hello "}),
                        ),
                    ];
                    script.extend((0..deltas).map(|_| event(tone_delta())));
                    script.push(event(serde_json::json!({"type": "response.audio_transcript.done", "transcript": "Hi there"})));
                    script.push(event(serde_json::json!({"type": "response.done"})));
                    for m in script {
                        if socket.send(m).await.is_err() {
                            return;
                        }
                    }
                }
                if scenario == "bargein" && appends == 40 && !barged {
                    barged = true;
                    seen.lock().unwrap_or_else(|e| e.into_inner()).barge_in_at =
                        Some(Instant::now());
                    let _ = socket
                        .send(event(
                            serde_json::json!({"type": "input_audio_buffer.speech_started"}),
                        ))
                        .await;
                }
            }
            _ => {}
        }
    }
}

#[derive(Default)]
struct Recorder {
    states: Mutex<Vec<PipelineState>>,
    transcripts: Mutex<Vec<(String, String)>>,
}
struct Sink(Arc<Recorder>);
impl EventSink for Sink {
    fn state(&self, state: PipelineState, _detail: &str) {
        self.0
            .states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(state);
    }
    fn transcript(&self, role: &str, text: &str, _turn: &str) {
        self.0
            .transcripts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((role.into(), text.into()));
    }
}

async fn server() -> (SocketAddr, Shared) {
    let seen: Shared = Arc::default();
    let router = Router::new()
        .route("/v1/realtime/{scenario}", get(realtime))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, seen)
}

fn pipeline(addr: SocketAddr, scenario: &str, recorder: Arc<Recorder>) -> Box<dyn SpeechToSpeech> {
    let spec = serde_json::json!({
        "pipeline": {"type": "S2S", "s2s": {"provider": "openai-realtime", "endpoint": format!("http://{addr}/v1/realtime/{scenario}"),
                     "model": "test-realtime", "options": {"voice": "verse"}},
                     "turnDetection": {"provider": "silence", "silenceTimeout": "450ms"}}
    });
    let spec = PipelineSpec::parse(&spec.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let mut p = voice_worker::pipeline::build(
        &spec,
        "team/rt",
        Box::new(Sink(recorder)),
        PipelineMetrics::unregistered(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    p.connected();
    p
}

/// Runs the media loop for `frames` ticks; returns when each reply frame was pulled.
async fn run(p: &mut Box<dyn SpeechToSpeech>, frames: usize) -> Vec<Instant> {
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let mut pulled = Vec::new();
    let silence: Frame = [0; FRAME_SAMPLES];
    for _ in 0..frames {
        ticks.tick().await;
        p.push(&silence);
        let mut out: Frame = [0; FRAME_SAMPLES];
        if p.pull(&mut out) && out.iter().any(|&s| s != 0) {
            pulled.push(Instant::now());
        }
    }
    pulled
}

#[tokio::test]
async fn a_realtime_turn_plays_the_reply_and_reports_states_and_transcripts() {
    let (addr, seen) = server().await;
    let recorder = Arc::new(Recorder::default());
    let mut p = pipeline(addr, "turn", recorder.clone());
    let pulled = run(&mut p, 80).await;
    // 25 deltas of 20 ms.
    assert!(
        (24..=27).contains(&pulled.len()),
        "{} reply frames",
        pulled.len()
    );
    let states = recorder
        .states
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    use PipelineState::*;
    assert_eq!(states, [Listening, Processing, Speaking, Listening]);
    let transcripts = recorder
        .transcripts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert_eq!(
        transcripts,
        [
            ("user".to_owned(), "hello".to_owned()),
            ("agent".to_owned(), "Hi there".to_owned())
        ]
    );
    let s = seen.lock().unwrap_or_else(|e| e.into_inner());
    let update = s.session_update.clone().unwrap_or_default();
    assert_eq!(update["session"]["input_audio_format"], "pcm16");
    assert_eq!(update["session"]["turn_detection"]["type"], "server_vad");
    assert_eq!(
        update["session"]["turn_detection"]["silence_duration_ms"],
        450
    );
    assert_eq!(update["session"]["voice"], "verse");
    // 20 ms at 24 kHz, PCM16 (the first is 16 bytes short: the resampler's look-ahead).
    assert!(s.append_bytes.len() >= 10);
    assert!(
        s.append_bytes[1..].iter().all(|&n| n == 960),
        "{:?}",
        &s.append_bytes[..3]
    );
}

#[tokio::test]
async fn user_speech_during_the_reply_stops_it_within_a_frame_and_truncates_the_unheard_rest() {
    let (addr, seen) = server().await;
    let recorder = Arc::new(Recorder::default());
    let mut p = pipeline(addr, "bargein", recorder.clone());
    let pulled = run(&mut p, 90).await;
    let (barge_in_at, cancels, truncated) = {
        let s = seen.lock().unwrap_or_else(|e| e.into_inner());
        (s.barge_in_at, s.cancels, s.truncated_at_ms.clone())
    };
    let barge_in_at = barge_in_at.unwrap_or_else(|| panic!("the server never barged in"));
    let after: Vec<_> = pulled.iter().filter(|t| **t > barge_in_at).collect();
    assert!(
        after.len() <= 2,
        "{} reply frames went out after the user spoke ({} before)",
        after.len(),
        pulled.len() - after.len()
    );
    if let Some(last) = after.last() {
        println!(
            "last reply frame {} ms after the barge-in",
            last.duration_since(barge_in_at).as_millis()
        );
    }
    assert!(pulled.len() > 10, "the reply played before the barge-in");
    // The server had generated the whole reply before the barge-in (as real ones do, faster
    // than real time): nothing to cancel, but the item is truncated to what was heard.
    assert_eq!(
        cancels, 0,
        "a cancel without an active response is an error for the server"
    );
    let heard_ms = (pulled.len() as u64) * 20;
    assert_eq!(truncated.len(), 1, "{truncated:?}");
    assert!(
        truncated[0].abs_diff(heard_ms) <= 60,
        "truncated at {truncated:?} ms, heard {heard_ms} ms"
    );
    let states = recorder
        .states
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert!(
        states.ends_with(&[PipelineState::Speaking, PipelineState::Listening]),
        "{states:?}"
    );
}

/// `https://` endpoints are reached over `wss://` with rustls: against a loopback port that
/// hangs up at once, the session reports a connection error (not "TLS not compiled in",
/// not a panic for a missing crypto provider) and goes to Error with the provider's message.
#[tokio::test]
async fn tls_endpoints_are_dialled_and_failures_become_error_states() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    std::thread::spawn(move || {
        for stream in listener.incoming().take(1) {
            drop(stream);
        }
    });
    let spec = serde_json::json!({
        "pipeline": {"type": "S2S", "s2s": {"provider": "openai-realtime", "endpoint": format!("https://{addr}/v1/realtime")}}
    });
    let spec = PipelineSpec::parse(&spec.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let recorder = Arc::new(Recorder::default());
    let mut p = voice_worker::pipeline::build(
        &spec,
        "team/tls",
        Box::new(Sink(recorder.clone())),
        PipelineMetrics::unregistered(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    p.connected();
    let mut error = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        p.push(&[0; FRAME_SAMPLES]);
        let mut out: Frame = [0; FRAME_SAMPLES];
        p.pull(&mut out);
        if let Some(e) = std::iter::from_fn(|| p.next_event()).find(|e| e.contains("\"error\"")) {
            error = Some(e);
            break;
        }
    }
    let error = error.unwrap_or_else(|| panic!("no error event"));
    println!("{error}");
    assert!(error.contains("ProviderUnavailable"), "{error}");
    assert!(!error.contains("not compiled"), "{error}");
    let states = recorder
        .states
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert_eq!(states.last(), Some(&PipelineState::Error));
}
