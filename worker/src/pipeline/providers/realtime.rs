//! Speech-to-speech over an OpenAI Realtime-compatible WebSocket.
//!
//! The client sends `session.update` (PCM16 in and out, server VAD with the configured
//! silence timeout, input transcription), then the user's audio as
//! `input_audio_buffer.append` (base64 PCM16 at 24 kHz). The server decides turns
//! (`input_audio_buffer.speech_started` / `speech_stopped`), answers with
//! `response.audio.delta` (and `response.output_audio.delta`, the GA name), transcripts
//! and `response.done`. User speech during the reply (`speech_started` while Speaking) is a
//! barge-in: output stops at once, `response.cancel` goes to the server if it is still
//! generating, and `conversation.item.truncate` tells it how much of the reply was heard.
//!
//! The socket lives on its own task; the media loop talks to it through two bounded
//! channels, so a slow or dead server never blocks a frame.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;
use voice_crds::PipelineState;

use super::credentials::ApiKey;
use super::s2s_playout::Playout;
use super::{ErrorKind, MAX_REALTIME_MESSAGE_BYTES, MAX_REPLY_BYTES, ProviderError};
use crate::media::echo::SpeechToSpeech;
use crate::media::{FRAME_SAMPLES, Frame, SAMPLE_RATE};
use crate::pipeline::audio::Resampler;
use crate::pipeline::metrics::PipelineMetrics;
use crate::pipeline::sentences::truncate_text;
use crate::pipeline::session::EventSink;
use crate::pipeline::state::{Input, StateMachine, label};

const NAME: &str = "openai-realtime";

/// The Realtime API's PCM16 rate.
const RATE: u32 = 24_000;

/// Audio chunks queued towards the server (20 ms each): one second.
const OUTBOUND: usize = 50;

/// Server events queued towards the media loop.
const INBOUND: usize = 256;

/// How the Realtime session is set up.
#[derive(Clone, Debug)]
pub struct RealtimeConfig {
    /// `ws://` or `wss://` URL (e.g. `wss://api.openai.com/v1/realtime?model=...`).
    pub url: String,
    /// API key, sent as a bearer token.
    pub key: Option<ApiKey>,
    /// Model, sent in `session.update` too.
    pub model: String,
    /// `voice` option.
    pub voice: Option<String>,
    /// System instructions.
    pub instructions: Option<String>,
    /// Server VAD silence before the server ends a turn.
    pub silence: Duration,
}

/// What the media loop asks of the socket task.
#[derive(Debug)]
enum Outbound {
    /// 24 kHz PCM16 to append to the input buffer.
    Audio(Vec<i16>),
    /// The user cut the reply off after hearing `played_ms` of it.
    Interrupted { played_ms: u64 },
}

/// What the socket task reports.
#[derive(Debug)]
enum ServerEvent {
    SpeechStarted,
    SpeechStopped,
    Audio(Vec<i16>),
    Transcript(&'static str, String),
    ResponseDone,
    Failed(ProviderError),
}

/// A Realtime speech-to-speech session.
pub struct RealtimeS2s {
    audio_out: mpsc::Sender<Outbound>,
    /// Reply samples (48 kHz) played since the current response began.
    played: u64,
    events: mpsc::Receiver<ServerEvent>,
    cancel: CancellationToken,
    down: Resampler,
    playout: Playout,
    responding: bool,
    machine: StateMachine,
    sink: Box<dyn EventSink>,
    metrics: PipelineMetrics,
    outbox: VecDeque<String>,
    turn: u64,
    stopped_at: Option<Instant>,
}

impl std::fmt::Debug for RealtimeS2s {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealtimeS2s")
            .field("state", &self.machine.state())
            .finish_non_exhaustive()
    }
}

impl RealtimeS2s {
    /// Starts the socket task (it connects in the background; a failure shows up as Error).
    pub fn start(
        config: RealtimeConfig,
        sink: Box<dyn EventSink>,
        metrics: PipelineMetrics,
    ) -> Self {
        let (audio_out, audio_rx) = mpsc::channel(OUTBOUND);
        let (events_tx, events) = mpsc::channel(INBOUND);
        let cancel = CancellationToken::new();
        tokio::spawn(socket_task(config, audio_rx, events_tx, cancel.clone()));
        Self {
            audio_out,
            played: 0,
            events,
            cancel,
            down: Resampler::new(SAMPLE_RATE, RATE),
            playout: Playout::default(),
            responding: false,
            machine: StateMachine::new(),
            sink,
            metrics,
            outbox: VecDeque::new(),
            turn: 0,
            stopped_at: None,
        }
    }

    fn apply(&mut self, input: Input) {
        for change in self.machine.apply(&input) {
            self.sink.state(change.to, &change.detail);
            let mut event = serde_json::json!({"type": "state", "state": label(change.to)});
            if !change.detail.is_empty() {
                event["detail"] = change.detail.clone().into();
            }
            self.emit(event);
        }
    }

    fn emit(&mut self, event: serde_json::Value) {
        if self.outbox.len() >= 64 {
            self.outbox.pop_front();
            self.metrics.count_dropped("client_event_outbox_full");
        }
        self.outbox.push_back(event.to_string());
    }

    fn drain(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            match event {
                ServerEvent::SpeechStarted => {
                    if self.machine.state() == PipelineState::Speaking || self.responding {
                        // Barge-in: the socket task cancels a response still being
                        // generated; the server is told how much of it the user heard.
                        let played_ms = self.played * 1_000 / u64::from(SAMPLE_RATE);
                        if self
                            .audio_out
                            .try_send(Outbound::Interrupted { played_ms })
                            .is_err()
                        {
                            self.metrics.count_dropped("realtime_outbound_full");
                        }
                        self.playout.clear();
                        self.responding = false;
                        self.metrics.count_barge_in();
                        self.emit(serde_json::json!({"type": "interrupted"}));
                        self.apply(Input::BargeIn);
                    }
                    self.apply(Input::UserSpeech);
                }
                ServerEvent::SpeechStopped => {
                    self.turn += 1;
                    self.played = 0;
                    self.responding = true;
                    self.stopped_at = Some(Instant::now());
                    self.apply(Input::TurnEnded);
                }
                ServerEvent::Audio(samples) => {
                    if !self.responding {
                        continue; // audio of a cancelled response still in flight
                    }
                    if self.playout.extend(samples) {
                        self.metrics.count_dropped("realtime_playout_full");
                    }
                }
                ServerEvent::Transcript(role, text) => {
                    let text = truncate_text(&text, MAX_REPLY_BYTES);
                    let turn = format!("t{}", self.turn);
                    self.sink.transcript(role, &text, &turn);
                    self.emit(serde_json::json!({"type": "transcript", "role": role, "text": text, "turn_id": turn, "final": true}));
                }
                ServerEvent::ResponseDone => self.responding = false,
                ServerEvent::Failed(e) => {
                    self.metrics.count_error(e.provider, e.reason());
                    self.playout.clear();
                    self.responding = false;
                    self.emit(serde_json::json!({"type": "error", "reason": e.reason(), "message": e.to_string()}));
                    self.apply(Input::Failed(e.to_string()));
                }
            }
        }
    }
}

impl Drop for RealtimeS2s {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl SpeechToSpeech for RealtimeS2s {
    fn name(&self) -> &'static str {
        NAME
    }

    fn push(&mut self, frame: &Frame) -> usize {
        let mut narrow = Vec::with_capacity(FRAME_SAMPLES / 2 + 2);
        self.down.process(frame, &mut narrow);
        self.drain();
        match self.audio_out.try_send(Outbound::Audio(narrow)) {
            Ok(()) => 0,
            Err(_) => {
                self.metrics.count_dropped("realtime_outbound_full");
                FRAME_SAMPLES
            }
        }
    }

    fn pull(&mut self, out: &mut Frame) -> bool {
        self.drain();
        let now = Instant::now();
        if self.playout.len() < FRAME_SAMPLES {
            if !self.responding
                && self.playout.is_empty()
                && self.machine.state() == PipelineState::Speaking
            {
                self.apply(Input::ReplyDone);
            }
            if self.playout.is_empty() {
                return false;
            }
        }
        let n = self.playout.take_due(now, out);
        if n == 0 {
            return false;
        }
        self.played += n as u64;
        if self.machine.state() == PipelineState::Processing {
            if let Some(stopped) = self.stopped_at.take() {
                self.metrics
                    .observe_turn(now.saturating_duration_since(stopped));
            }
            self.apply(Input::ReplyAudio);
        }
        true
    }

    fn connected(&mut self) {
        self.apply(Input::Connected);
    }

    fn next_event(&mut self) -> Option<String> {
        self.outbox.pop_front()
    }
}

fn failed(kind: ErrorKind, message: impl Into<String>) -> ServerEvent {
    ServerEvent::Failed(ProviderError::new(NAME, kind, message))
}

async fn socket_task(
    config: RealtimeConfig,
    mut audio: mpsc::Receiver<Outbound>,
    events: mpsc::Sender<ServerEvent>,
    cancel: CancellationToken,
) {
    let result = tokio::select! {
        () = cancel.cancelled() => return,
        r = converse(&config, &mut audio, &events) => r,
    };
    if let Err(e) = result {
        let _ = events.send(ServerEvent::Failed(e)).await;
    }
}

async fn converse(
    config: &RealtimeConfig,
    audio: &mut mpsc::Receiver<Outbound>,
    events: &mpsc::Sender<ServerEvent>,
) -> Result<(), ProviderError> {
    let mut request = config
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| ProviderError::new(NAME, ErrorKind::Config, format!("bad URL: {e}")))?;
    if let Some(key) = &config.key {
        let value = format!("Bearer {}", key.expose()).parse().map_err(|_| {
            ProviderError::new(
                NAME,
                ErrorKind::Config,
                "the API key is not a valid header value",
            )
        })?;
        request.headers_mut().insert("authorization", value);
    }
    request.headers_mut().insert(
        "openai-beta",
        tokio_tungstenite::tungstenite::http::HeaderValue::from_static("realtime=v1"),
    );
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        // Frame and message caps apply while reading, before a message is buffered whole.
        tokio_tungstenite::connect_async_with_config(
            request,
            Some(
                tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .max_message_size(Some(MAX_REALTIME_MESSAGE_BYTES))
                    .max_frame_size(Some(MAX_REALTIME_MESSAGE_BYTES)),
            ),
            false,
        ),
    )
    .await
    .map_err(|_| ProviderError::new(NAME, ErrorKind::Timeout, "no WebSocket handshake in 10 s"))?
    .map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => ProviderError::new(
            NAME,
            ErrorKind::Status(r.status().as_u16()),
            format!("handshake refused: HTTP {}", r.status()),
        ),
        other => ProviderError::new(NAME, ErrorKind::Unavailable, other.to_string()),
    })?;
    let (mut tx, mut rx) = socket.split();
    let mut session = serde_json::json!({
        "modalities": ["audio", "text"],
        "model": config.model,
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "input_audio_transcription": {"model": "whisper-1"},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": config.silence.as_millis()},
    });
    if let Some(voice) = &config.voice {
        session["voice"] = voice.clone().into();
    }
    if let Some(instructions) = &config.instructions {
        session["instructions"] = instructions.clone().into();
    }
    let update = serde_json::json!({"type": "session.update", "session": session});
    let send_err = |e: tokio_tungstenite::tungstenite::Error| {
        ProviderError::new(NAME, ErrorKind::Unavailable, e.to_string())
    };
    tx.send(Message::Text(update.to_string().into()))
        .await
        .map_err(send_err)?;
    let mut up = Resampler::new(RATE, SAMPLE_RATE);
    // Whether the server is producing a response (cancelling none is an error there).
    let mut responding = false;
    // The assistant item whose audio is playing, for `conversation.item.truncate`.
    let mut item: Option<String> = None;
    loop {
        tokio::select! {
            outbound = audio.recv() => {
                let message = match outbound {
                    None => return Ok(()),
                    Some(Outbound::Audio(chunk)) => {
                        let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
                        serde_json::json!({"type": "input_audio_buffer.append", "audio": B64.encode(bytes)})
                    }
                    Some(Outbound::Interrupted { played_ms }) => {
                        let Some(item_id) = item.take() else { continue };
                        serde_json::json!({"type": "conversation.item.truncate", "item_id": item_id,
                                           "content_index": 0, "audio_end_ms": played_ms})
                    }
                };
                tx.send(Message::Text(message.to_string().into())).await.map_err(send_err)?;
            }
            message = rx.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | None => {
                        return Err(ProviderError::new(NAME, ErrorKind::Unavailable, "the server closed the session"));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(send_err(e)),
                };
                let value: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| ProviderError::new(NAME, ErrorKind::Malformed, format!("an event is not JSON: {e}")))?;
                let event = match value["type"].as_str().unwrap_or_default() {
                    "input_audio_buffer.speech_started" => {
                        // Barge-in is the server's call; stop its reply too.
                        if responding {
                            responding = false;
                            let cancel = serde_json::json!({"type": "response.cancel"});
                            tx.send(Message::Text(cancel.to_string().into())).await.map_err(send_err)?;
                        }
                        Some(ServerEvent::SpeechStarted)
                    }
                    "response.created" => {
                        responding = true;
                        None
                    }
                    "input_audio_buffer.speech_stopped" => Some(ServerEvent::SpeechStopped),
                    "response.audio.delta" | "response.output_audio.delta" => {
                        responding = true;
                        if let Some(id) = value["item_id"].as_str() {
                            item = Some(id.to_owned());
                        }
                        let bytes = B64
                            .decode(value["delta"].as_str().unwrap_or_default())
                            .map_err(|e| ProviderError::new(NAME, ErrorKind::Malformed, format!("audio delta is not base64: {e}")))?;
                        let samples = crate::pipeline::audio::samples_from_le(&bytes);
                        let mut wide = Vec::with_capacity(samples.len() * 2 + 2);
                        up.process(&samples, &mut wide);
                        Some(ServerEvent::Audio(wide))
                    }
                    "response.audio_transcript.done" | "response.output_audio_transcript.done" => {
                        Some(ServerEvent::Transcript("agent", value["transcript"].as_str().unwrap_or_default().to_owned()))
                    }
                    "conversation.item.input_audio_transcription.completed" => {
                        Some(ServerEvent::Transcript("user", value["transcript"].as_str().unwrap_or_default().trim().to_owned()))
                    }
                    "response.done" => {
                        responding = false;
                        let mut tail = Vec::new();
                        up.flush(&mut tail);
                        if !tail.is_empty() {
                            let _ = events.send(ServerEvent::Audio(tail)).await;
                        }
                        up = Resampler::new(RATE, SAMPLE_RATE);
                        Some(ServerEvent::ResponseDone)
                    }
                    // A cancel that crossed the end of the response is harmless.
                    "error" if value.pointer("/error/code").and_then(|c| c.as_str()) == Some("response_cancel_not_active") => None,
                    "error" => {
                        let message = value.pointer("/error/message").and_then(|m| m.as_str()).unwrap_or("unknown error");
                        Some(failed(ErrorKind::Status(400), message.to_owned()))
                    }
                    _ => None,
                };
                if let Some(event) = event
                    && events.send(event).await.is_err()
                {
                    return Ok(());
                }
            }
        }
    }
}
