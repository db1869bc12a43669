//! The `pipecat` speech-to-speech provider against a real Pipecat 1.14 bot: the worker binary
//! serves a WebSocket session and hands its audio to `examples/pipecat/parrot_bot.py` (Silero
//! VAD, run by `voice-operator-pipecat` from sdk/pipecat) in the Pipecat venv that
//! `cargo xtask test` installs. The bot decides the turn, says how long the user spoke and
//! plays the words back; the worker maps its RTVI messages to state and transcripts. A
//! resumed session hands its bot the saved context and the history (`context_bot.py`).

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Worker, token};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// The client's rate on the WebSocket: the fixture's.
const RATE: u32 = 16_000;
/// Samples per 20 ms at [`RATE`].
const FRAME: usize = 320;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Pipecat venv's python; panics with the fix when `cargo xtask test` has not made it.
fn pipecat_python() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let python = Path::new(&home).join(".cache/voice-operator/pipecat-venv/bin/python");
    let ok = Command::new(&python)
        .args([
            "-c",
            "import pipecat.transports.websocket.fastapi, pipecat.audio.vad.silero, uvicorn",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import Pipecat: run `cargo xtask test` (it installs examples/pipecat/requirements.txt there)",
        python.display()
    );
    python
}

/// The parrot bot, listening on a free port; killed when dropped.
struct Bot {
    child: Child,
    port: u16,
}

impl Bot {
    /// The parrot bot of `examples/pipecat`.
    fn start() -> Self {
        Self::start_script(&repo().join("examples/pipecat/parrot_bot.py"))
    }

    fn start_script(script: &Path) -> Self {
        let port = common::free_port();
        let child = Command::new(pipecat_python())
            .arg(script)
            .env("PYTHONPATH", repo().join("sdk/pipecat"))
            .env("VOICE_BOT_HOST", "127.0.0.1")
            .env("VOICE_BOT_PORT", port.to_string())
            .env("LOGURU_LEVEL", "INFO")
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the bot: {e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the bot did not listen within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Bot { child, port }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/session", self.port)
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn worker_for(url: &str) -> Worker {
    let config = serde_json::json!({"pipeline": {"type": "S2S", "s2s": {"provider": "pipecat"}}});
    Worker::start_with(2, Some(&config), &[("VOICE_BOT_URL", url)])
}

fn fixture() -> Vec<i16> {
    let wav = include_bytes!("fixtures/weather-16k.wav");
    let pcm = voice_worker::pipeline::audio::parse_wav(wav).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pcm.rate, RATE);
    pcm.samples
}

/// What a session heard: reply samples at [`RATE`], text events, and when the reply began
/// relative to the end of the user's speech.
#[derive(Debug, Default)]
struct Heard {
    reply: Vec<i16>,
    events: Vec<serde_json::Value>,
}

/// Speaks `speech` once then silence for `tail`, over the worker's WebSocket.
async fn talk(worker: &Worker, id: &str, speech: Vec<i16>, tail: Duration) -> Heard {
    let uid = format!("uid-{}", id.replace('/', "-"));
    worker.reserve(id, &uid).await;
    let url = format!(
        "ws://127.0.0.1:{}/v1/sessions/{id}/ws?token={}&rate={RATE}",
        worker.http_port,
        token(id, &uid, 600)
    );
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade: {e}"));
    let (mut tx, mut rx) = ws.split();
    let frames = speech.len() / FRAME + (tail.as_millis() / 20) as usize;
    let sender = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        let silence = [0i16; FRAME];
        for i in 0..frames {
            ticks.tick().await;
            let frame = speech.get(i * FRAME..(i + 1) * FRAME).unwrap_or(&silence);
            let bytes: Vec<u8> = frame.iter().flat_map(|s| s.to_le_bytes()).collect();
            if tx.send(Message::Binary(bytes.into())).await.is_err() {
                break;
            }
        }
        let _ = tx.send(Message::Close(None)).await;
    });
    let mut heard = Heard::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let message = match tokio::time::timeout(Duration::from_secs(15), rx.next()).await {
            Ok(Some(Ok(message))) => message,
            _ => break,
        };
        match message {
            Message::Binary(bytes) => heard.reply.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]])),
            ),
            Message::Text(text) => {
                heard
                    .events
                    .push(serde_json::from_str(&text).unwrap_or_default());
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    sender.abort();
    heard
}

fn rms(samples: &[i16]) -> f64 {
    (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len().max(1) as f64)
        .sqrt()
}

#[tokio::test]
async fn a_pipecat_bot_takes_the_turn_and_its_reply_plays_at_the_right_speed() {
    let bot = Bot::start();
    let worker = worker_for(&bot.url());
    let speech = fixture();
    let spoken_s = speech.len() as f64 / f64::from(RATE);
    let heard = talk(&worker, "team/parrot", speech, Duration::from_secs(7)).await;
    let states: Vec<&str> = heard
        .events
        .iter()
        .filter(|e| e["type"] == "state")
        .filter_map(|e| e["state"].as_str())
        .collect();
    assert!(
        !states.contains(&"ERROR"),
        "the session failed: {:?}",
        heard.events
    );
    for state in ["LISTENING", "PROCESSING", "SPEAKING"] {
        assert!(states.contains(&state), "no {state} in {states:?}");
    }
    let agent = heard
        .events
        .iter()
        .find(|e| e["type"] == "transcript" && e["role"] == "agent")
        .unwrap_or_else(|| panic!("no agent transcript in {:?}", heard.events));
    let text = agent["text"].as_str().unwrap_or_default();
    assert!(text.starts_with("You spoke for "), "{text}");
    // The bot heard about as much speech as was sent (its VAD trims and pads the edges).
    let said: f64 = text
        .trim_start_matches("You spoke for ")
        .trim_end_matches(" seconds.")
        .parse()
        .unwrap_or_else(|e| panic!("{text}: {e}"));
    assert!(
        (spoken_s - 0.8..=spoken_s + 0.8).contains(&said),
        "the bot heard {said} s of {spoken_s:.2} s"
    );
    // The reply is the utterance played back: as long in time at the client's rate (a wrong
    // rate anywhere on the path would stretch or squeeze it), and loud.
    let voiced: Vec<i16> = heard
        .reply
        .iter()
        .copied()
        .skip_while(|s| s.abs() < 300)
        .collect();
    let reply_s = heard.reply.len() as f64 / f64::from(RATE);
    assert!(
        (said - 0.5..=said + 1.5).contains(&reply_s),
        "reply {reply_s:.2} s for {said} s heard"
    );
    assert!(
        rms(&voiced) > 500.0,
        "the reply is near silence: rms {:.0}",
        rms(&voiced)
    );
}

#[tokio::test]
async fn a_resumed_session_hands_its_bot_the_saved_context_and_the_history() {
    use voice_proto::session_config::{Conversation, SessionConfig, Speaker, Utterance};
    use voice_proto::worker::v1::{ReserveResult, ReserveSessionRequest, session_event};

    let bot = Bot::start_script(&repo().join("worker/tests/fixtures/context_bot.py"));
    let worker = worker_for(&bot.url());
    let mut control = worker.client().await;
    let mut events = control
        .watch_events(voice_proto::worker::v1::WatchEventsRequest {})
        .await
        .unwrap_or_else(|e| panic!("WatchEvents: {e}"))
        .into_inner();
    // The session moved here from a lost worker: the operator hands over what it persisted.
    let config = SessionConfig {
        context: Some(Conversation {
            turns: 2,
            transcript: vec![
                Utterance {
                    speaker: Speaker::User,
                    text: "book a table for two".into(),
                },
                Utterance {
                    speaker: Speaker::Agent,
                    text: "For what time?".into(),
                },
            ],
            agent_state: Some(r#"{"step":"time","guests":2}"#.into()),
        }),
        ..SessionConfig::default()
    };
    let (id, uid) = ("team/resumed", "uid-resumed");
    let reserved = control
        .reserve_session(ReserveSessionRequest {
            session_id: id.into(),
            uid: uid.into(),
            token_key_id: None,
            session_config_json: serde_json::to_string(&config).unwrap_or_else(|e| panic!("{e}")),
        })
        .await
        .unwrap_or_else(|e| panic!("ReserveSession: {e}"))
        .into_inner()
        .result();
    assert_eq!(reserved, ReserveResult::Reserved);
    let url = format!(
        "ws://127.0.0.1:{}/v1/sessions/{id}/ws?token={}&rate={RATE}",
        worker.http_port,
        token(id, uid, 600)
    );
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade: {e}"));

    // The bot saves what it was handed as its own context, which the worker reports.
    let saved = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(event) = events.next().await {
            let event = event.unwrap_or_else(|e| panic!("event stream: {e}"));
            if let Some(session_event::Event::AgentState(state)) = event.event {
                return state.context_json;
            }
        }
        panic!("the event stream ended without the bot's context");
    })
    .await
    .unwrap_or_else(|_| panic!("the bot saved no context within 60 s"));
    drop(ws);
    let saved: serde_json::Value =
        serde_json::from_str(&saved).unwrap_or_else(|e| panic!("{saved}: {e}"));
    assert_eq!(
        saved,
        serde_json::json!({
            "handedBack": {"step": "time", "guests": 2},
            "history": [
                {"role": "user", "text": "book a table for two"},
                {"role": "agent", "text": "For what time?"},
            ],
        })
    );
}

#[tokio::test]
async fn a_bot_that_dies_fails_the_session_naming_the_bot_and_frees_its_slot() {
    let mut bot = Bot::start();
    let worker = worker_for(&bot.url());
    let id = "team/orphaned";
    let uid = "uid-orphaned";
    worker.reserve(id, uid).await;
    let url = format!(
        "ws://127.0.0.1:{}/v1/sessions/{id}/ws?token={}&rate={RATE}",
        worker.http_port,
        token(id, uid, 600)
    );
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade: {e}"));
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        let silence: Vec<u8> = vec![0; FRAME * 2];
        loop {
            ticks.tick().await;
            if tx
                .send(Message::Binary(silence.clone().into()))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = bot.child.kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut error = None;
    while error.is_none() && Instant::now() < deadline {
        let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(5), rx.next()).await
        else {
            break;
        };
        if let Message::Text(text) = message {
            let event: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if event["type"] == "error" {
                error = Some(event);
            }
        }
    }
    let error = error.unwrap_or_else(|| panic!("no error event after the bot died"));
    assert_eq!(error["reason"], "ProviderUnavailable", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("bot"),
        "the message does not say the bot went away: {error}"
    );
    // The slot is freed (reason BotLost): the worker reaps the caller's connection.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(message)) = rx.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    sender.abort();
    assert!(
        closed.is_ok(),
        "the session still holds its connection after its bot died"
    );
}

#[tokio::test]
async fn a_worker_without_a_bot_refuses_the_session_naming_the_field() {
    // No VOICE_BOT_URL and no pipeline.s2s.endpoint: nothing to hand the audio to.
    let config = serde_json::json!({"pipeline": {"type": "S2S", "s2s": {"provider": "pipecat"}}});
    let worker = Worker::start_with(1, Some(&config), &[]);
    let heard = talk(
        &worker,
        "team/botless",
        vec![0; FRAME * 10],
        Duration::from_secs(1),
    )
    .await;
    let error = heard
        .events
        .iter()
        .find(|e| e["type"] == "error" || e["state"] == "ERROR")
        .unwrap_or_else(|| panic!("no error for a missing bot: {:?}", heard.events));
    let text = error.to_string();
    assert!(
        text.contains("spec.workers.bot") || text.contains("pipeline.s2s.endpoint"),
        "{text}"
    );
}

#[test]
fn the_example_bots_import_against_the_pinned_pipecat() {
    for bot in ["examples/pipecat/bot.py", "examples/pipecat/parrot_bot.py"] {
        let load = format!(
            "import importlib.util as u; s = u.spec_from_file_location('bot', {:?}); \
             s.loader.exec_module(u.module_from_spec(s))",
            repo().join(bot)
        );
        let out = Command::new(pipecat_python())
            .args(["-c", &load])
            .env("PYTHONPATH", repo().join("sdk/pipecat"))
            .output()
            .unwrap_or_else(|e| panic!("python: {e}"));
        assert!(
            out.status.success(),
            "{bot} does not import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
