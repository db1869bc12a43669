//! Malicious providers on real loopback sockets, speaking the OpenAI wire formats
//! (multipart transcription, SSE chat completions, raw-PCM speech), and a WebSocket caller
//! that speaks one turn to a worker whose pipeline uses them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{Worker, token};

/// How the fake transcription endpoint misbehaves.
#[derive(Clone, Copy, Debug)]
pub enum Stt {
    /// `{"text": "what time is it"}`.
    Fine,
    /// 500 with a 64 MiB error body, streamed as fast as the worker reads.
    HugeErrorBody,
    /// 500, a few bytes of the error body, then nothing for a minute.
    StalledErrorBody,
    /// 200 with headers, then no body for a minute.
    StalledAnswer,
    /// The text beside numbers no float can hold.
    OutOfRangeNumbers,
    /// `NaN` where JSON has no such token.
    NanNumber,
}

/// How the fake chat endpoint answers.
#[derive(Clone, Debug)]
pub enum Chat {
    /// These deltas, then `[DONE]`.
    Deltas(Vec<String>),
    /// `word ` forever (SSE), never `[DONE]`.
    Endless,
    /// One delta whose SSE data holds invalid UTF-8 between `ok ` and ` done`.
    InvalidUtf8,
}

/// What the fake providers were asked.
#[derive(Default)]
pub struct Seen {
    /// The `input` of every speech request, in order.
    pub tts_inputs: Vec<String>,
}

#[derive(Clone)]
struct Fake {
    stt: Stt,
    chat: Chat,
    seen: Arc<Mutex<Seen>>,
}

/// Serves the three endpoints under `/v1` on a free loopback port.
pub async fn serve(stt: Stt, chat: Chat) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let fake = Fake {
        stt,
        chat,
        seen: seen.clone(),
    };
    let router = Router::new()
        .route("/v1/audio/transcriptions", post(transcription))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/audio/speech", post(speech))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, seen)
}

fn respond(status: StatusCode, body: Body) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body)
        .unwrap_or_default()
}

async fn transcription(State(fake): State<Fake>) -> Response {
    let json = |text: &str| respond(StatusCode::OK, Body::from(text.to_owned()));
    match fake.stt {
        Stt::Fine => json(r#"{"text":" what time is it "}"#),
        Stt::OutOfRangeNumbers => json(
            r#"{"text":"what time is it","duration":1e999,"segments":[{"avg_logprob":-1e400,"no_speech_prob":12345678901234567890123456789}]}"#,
        ),
        Stt::NanNumber => json(r#"{"text":"what time is it","duration":NaN}"#),
        Stt::HugeErrorBody => {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let body =
                futures::stream::iter(std::iter::repeat_n(chunk, 1_024).map(Ok::<_, Infallible>));
            respond(StatusCode::INTERNAL_SERVER_ERROR, Body::from_stream(body))
        }
        Stt::StalledErrorBody => {
            respond(StatusCode::INTERNAL_SERVER_ERROR, stalled(b"{\"error\":"))
        }
        Stt::StalledAnswer => respond(StatusCode::OK, stalled(b"")),
    }
}

/// A body that sends `first` and then nothing for a minute.
fn stalled(first: &'static [u8]) -> Body {
    let body = futures::stream::unfold(0, move |i| async move {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return None;
        }
        Some((Ok::<_, Infallible>(Bytes::from_static(first)), 1))
    });
    Body::from_stream(body)
}

fn sse_event(content: &str) -> Bytes {
    let chunk = serde_json::json!({"choices": [{"index": 0, "delta": {"content": content}}]});
    Bytes::from(format!("data: {chunk}\n\n"))
}

async fn chat_completions(State(fake): State<Fake>) -> Response {
    let body = match fake.chat {
        Chat::Deltas(deltas) => {
            let mut events: Vec<Bytes> = deltas.iter().map(|d| sse_event(d)).collect();
            events.push(Bytes::from_static(b"data: [DONE]\n\n"));
            Body::from_stream(futures::stream::iter(
                events.into_iter().map(Ok::<_, Infallible>),
            ))
        }
        Chat::Endless => {
            let body = futures::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Some((Ok::<_, Infallible>(sse_event("word ")), ()))
            });
            Body::from_stream(body)
        }
        Chat::InvalidUtf8 => {
            let mut event = b"data: {\"choices\":[{\"delta\":{\"content\":\"ok ".to_vec();
            event.extend([0xFF, 0xFE, 0xC3]);
            event.extend(b" done\"}}]}\n\ndata: [DONE]\n\n");
            Body::from(event)
        }
    };
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap_or_default()
}

/// 0.1 s of 24 kHz PCM per request, recording the text.
async fn speech(State(fake): State<Fake>, body: Bytes) -> Response {
    let input = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["input"].as_str().map(str::to_owned))
        .unwrap_or_default();
    fake.seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .tts_inputs
        .push(input);
    let pcm: Vec<u8> = (0..2_400)
        .flat_map(|i| (((i % 48) as i16 - 24) * 300).to_le_bytes())
        .collect();
    Response::builder()
        .header("content-type", "audio/pcm")
        .body(Body::from(pcm))
        .unwrap_or_default()
}

/// The worker's `VOICE_PIPELINE` for STT, LLM and TTS at `addr`, with `stt_timeout` as the
/// STT stage's `timeoutSeconds` (a string: the option is whatever a user wrote).
pub fn pipeline(addr: SocketAddr, stt_timeout: &str, tts_timeout: &str) -> String {
    let base = format!("http://{addr}/v1");
    serde_json::json!({
        "pipeline": {
            "type": "STT_TTS",
            "stt": {"provider": "openai", "endpoint": base, "options": {"timeoutSeconds": stt_timeout}},
            "tts": {"provider": "openai", "endpoint": base, "options": {"timeoutSeconds": tts_timeout}},
            "vad": {"provider": "webrtc", "aggressiveness": 2},
            "turnDetection": {"provider": "silence", "silenceTimeout": "400ms"}
        },
        "agent": {"type": "Llm", "llm": {"endpoint": base, "model": "test-model"}}
    })
    .to_string()
}

/// espeak-ng's "what time is it" as 16 kHz PCM16 (sox converts), cached per process.
fn phrase() -> Vec<i16> {
    static PHRASE: std::sync::OnceLock<Vec<i16>> = std::sync::OnceLock::new();
    PHRASE
        .get_or_init(|| {
            let mut espeak = Command::new("espeak-ng")
                .args(["--stdout", "what time is it"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("espeak-ng (cargo xtask prerequisites): {e}"));
            let out = Command::new("sox")
                .args([
                    "-t", "wav", "-", "-t", "raw", "-r", "16000", "-e", "signed", "-b", "16", "-c",
                    "1", "-",
                ])
                .stdin(espeak.stdout.take().unwrap_or_else(|| panic!("no stdout")))
                .output()
                .unwrap_or_else(|e| panic!("sox (cargo xtask prerequisites): {e}"));
            assert!(out.status.success() && matches!(espeak.wait().map(|s| s.success()), Ok(true)));
            out.stdout
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect()
        })
        .clone()
}

/// Speaks one phrase on a new WebSocket to `session` (reserved on `worker`) at real-time
/// pace, then silence, and returns the JSON text events until `done` says the turn is
/// over or 30 s pass; with the time from the end of speech to the last event.
pub async fn one_turn(
    worker: &Worker,
    session: &str,
    uid: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> (Vec<serde_json::Value>, Duration) {
    let url = format!(
        "ws://127.0.0.1:{}/v1/sessions/{session}/ws?token={}&rate=16000",
        worker.http_port,
        token(session, uid, 600)
    );
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade: {e}"));
    let (mut tx, mut rx) = ws.split();
    let mut script = vec![0i16; 8_000];
    script.extend(phrase());
    let spoken = Duration::from_millis(script.len() as u64 / 16);
    let sender = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        let silence = [0i16; 320];
        for i in 0..2_000 {
            ticks.tick().await;
            let frame = script.get(i * 320..(i + 1) * 320).unwrap_or(&silence);
            let bytes: Vec<u8> = frame.iter().flat_map(|s| s.to_le_bytes()).collect();
            if tx.send(Message::Binary(bytes.into())).await.is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut events = Vec::new();
    let deadline = started + Duration::from_secs(30);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(Some(Ok(message))) = tokio::time::timeout(left, rx.next()).await else {
            break;
        };
        if let Message::Text(text) = message {
            let event: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let finished = done(&event);
            events.push(event);
            if finished {
                break;
            }
        }
    }
    let took = started.elapsed().saturating_sub(spoken);
    sender.abort();
    (events, took)
}

/// The first event of `kind` (`type`), with `role` when given.
pub fn find<'a>(
    events: &'a [serde_json::Value],
    kind: &str,
    role: Option<&str>,
) -> Option<&'a serde_json::Value> {
    events
        .iter()
        .find(|e| e["type"] == kind && role.is_none_or(|r| e["role"] == r))
}
