//! Speech-to-speech through a Pipecat bot (provider `pipecat`, docs/pipecat.md).
//!
//! The bot runs beside the worker (the backend's `spec.workers.bot` container) under the
//! `voice-operator-pipecat` package; the worker keeps the caller's transport, admission and
//! drain, and hands the bot the session's audio over one WebSocket per session
//! ([`pipecat_wire`](super::pipecat_wire)). The bot decides turns: its RTVI messages say when
//! the user started and stopped speaking, which become the session's pipeline state, barge-in
//! and turn latency here, as with `openai-realtime`.
//!
//! The socket lives on its own task; the media loop talks to it through two bounded
//! channels, so a slow or dead bot never blocks a frame. A bot that goes away (or cannot be
//! reached) tells the client `ProviderUnavailable` naming what happened, and the session
//! ends `Failed` with reason `BotLost`, its slot freed.

use std::collections::VecDeque;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use voice_crds::PipelineState;

use super::MAX_REPLY_BYTES;
use super::pipecat_wire::{self, BOT_INPUT_RATE, BotEvent, NAME, PROTOCOL};
use super::s2s_playout::Playout;
use crate::media::echo::SpeechToSpeech;
use crate::media::{FRAME_SAMPLES, Frame, SAMPLE_RATE};
use crate::pipeline::audio::Resampler;
use crate::pipeline::metrics::PipelineMetrics;
use crate::pipeline::sentences::truncate_text;
use crate::pipeline::session::EventSink;
use crate::pipeline::spec::PipelineSpec;
use crate::pipeline::state::{Input, StateMachine, label};

/// Audio chunks queued towards the bot (20 ms each): one second.
const OUTBOUND: usize = 50;

/// Bot events queued towards the media loop.
const INBOUND: usize = 256;

/// The end reason of a session whose bot connection failed or closed.
pub const BOT_LOST: &str = "BotLost";

/// Where the bot is and what it is told about the session.
#[derive(Clone, Debug)]
pub struct PipecatConfig {
    /// `ws://` URL of the bot's session endpoint.
    pub url: String,
    /// The session description sent first (see [`hello`]).
    pub hello: serde_json::Value,
}

/// The session description the bot's `Session` is built from.
pub fn hello(session_id: &str, spec: &PipelineSpec) -> serde_json::Value {
    let resume = spec.resume.as_ref();
    let context = resume
        .and_then(|r| r.agent_state.as_deref())
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok());
    let history: Vec<serde_json::Value> = resume
        .map(|r| {
            r.history
                .iter()
                .map(|(role, text)| {
                    // The bot's protocol names speakers as the session's transcript does.
                    let role = if role == "assistant" { "agent" } else { role };
                    serde_json::json!({"role": role, "text": text})
                })
                .collect()
        })
        .unwrap_or_default();
    let mut metadata = serde_json::Map::new();
    for (key, value) in spec.metadata.current() {
        metadata.insert(key, value.into());
    }
    serde_json::json!({
        "type": "session",
        "protocol": PROTOCOL,
        "session": session_id,
        "user": spec.identity.user_id,
        "metadata": metadata,
        "context": context,
        "history": history,
        "sampleRate": BOT_INPUT_RATE,
    })
}

/// A session whose pipeline is a Pipecat bot.
pub struct PipecatS2s {
    audio_out: mpsc::Sender<Vec<i16>>,
    events: mpsc::Receiver<BotEvent>,
    cancel: CancellationToken,
    down: Resampler,
    playout: Playout,
    /// The bot is speaking or about to (from the user's turn end to `bot-stopped-speaking`).
    responding: bool,
    machine: StateMachine,
    sink: Box<dyn EventSink>,
    metrics: PipelineMetrics,
    outbox: VecDeque<String>,
    turn: u64,
    stopped_at: Option<Instant>,
    /// A hang-up the bot asked for, carried out once its reply has played.
    hangup: Option<String>,
}

impl std::fmt::Debug for PipecatS2s {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipecatS2s")
            .field("state", &self.machine.state())
            .finish_non_exhaustive()
    }
}

impl PipecatS2s {
    /// Starts the socket task (it connects in the background; a failure shows up as Error).
    pub fn start(
        config: PipecatConfig,
        sink: Box<dyn EventSink>,
        metrics: PipelineMetrics,
    ) -> Self {
        let (audio_out, audio_rx) = mpsc::channel(OUTBOUND);
        let (events_tx, events) = mpsc::channel(INBOUND);
        let cancel = CancellationToken::new();
        tokio::spawn(socket_task(config, audio_rx, events_tx, cancel.clone()));
        Self {
            audio_out,
            events,
            cancel,
            down: Resampler::new(SAMPLE_RATE, BOT_INPUT_RATE),
            playout: Playout::default(),
            responding: false,
            machine: StateMachine::new(),
            sink,
            metrics,
            outbox: VecDeque::new(),
            turn: 0,
            stopped_at: None,
            hangup: None,
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

    fn cut_off(&mut self) {
        self.playout.clear();
        self.responding = false;
        self.metrics.count_barge_in();
        self.emit(serde_json::json!({"type": "interrupted"}));
        self.apply(Input::BargeIn);
    }

    fn drain(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            match event {
                BotEvent::UserStarted => {
                    if self.machine.state() == PipelineState::Speaking || !self.playout.is_empty() {
                        self.cut_off();
                    }
                    self.apply(Input::UserSpeech);
                }
                BotEvent::UserStopped => {
                    self.turn += 1;
                    self.responding = true;
                    self.stopped_at = Some(Instant::now());
                    self.apply(Input::TurnEnded);
                }
                BotEvent::Interrupted => {
                    if !self.playout.is_empty() || self.machine.state() == PipelineState::Speaking {
                        self.cut_off();
                    }
                }
                BotEvent::Audio(samples) => {
                    // Speaking until `bot-stopped-speaking`, so a gap between the bot's
                    // paced chunks is not the end of the reply.
                    self.responding = true;
                    if self.playout.extend(samples) {
                        self.metrics.count_dropped("pipecat_playout_full");
                    }
                }
                BotEvent::BotStopped => self.responding = false,
                BotEvent::Transcript(role, text) => {
                    if text.is_empty() {
                        continue;
                    }
                    let text = truncate_text(&text, MAX_REPLY_BYTES);
                    let turn = format!("t{}", self.turn);
                    self.sink.transcript(role, &text, &turn);
                    self.emit(serde_json::json!({"type": "transcript", "role": role, "text": text, "turn_id": turn, "final": true}));
                }
                BotEvent::Context(json) => self.sink.agent_state(&json),
                BotEvent::Hangup(reason) => self.hangup = Some(reason),
                BotEvent::Failed(e) => {
                    self.metrics.count_error(e.provider, e.reason());
                    self.playout.clear();
                    self.responding = false;
                    self.emit(serde_json::json!({"type": "error", "reason": e.reason(), "message": e.to_string()}));
                    self.apply(Input::Failed(e.to_string()));
                    // Without its bot the session has no pipeline: free the slot and end it
                    // Failed, as a lost worker's session is, rather than hold a silent call.
                    self.sink.failed(BOT_LOST, &e.to_string());
                }
            }
        }
    }
}

impl Drop for PipecatS2s {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl SpeechToSpeech for PipecatS2s {
    fn name(&self) -> &'static str {
        NAME
    }

    fn push(&mut self, frame: &Frame) -> usize {
        let mut narrow = Vec::with_capacity(FRAME_SAMPLES / 3 + 2);
        self.down.process(frame, &mut narrow);
        self.drain();
        match self.audio_out.try_send(narrow) {
            Ok(()) => 0,
            Err(_) => {
                self.metrics.count_dropped("pipecat_outbound_full");
                FRAME_SAMPLES
            }
        }
    }

    fn pull(&mut self, out: &mut Frame) -> bool {
        self.drain();
        let now = Instant::now();
        if self.playout.len() < FRAME_SAMPLES {
            let idle = !self.responding && self.playout.is_empty();
            if idle && self.machine.state() == PipelineState::Speaking {
                self.apply(Input::ReplyDone);
            }
            if idle && let Some(reason) = self.hangup.take() {
                self.emit(serde_json::json!({"type": "hangup", "reason": reason}));
                self.sink.hangup(&reason);
            }
            if self.playout.is_empty() {
                return false;
            }
        }
        let n = self.playout.take_due(now, out);
        if n == 0 {
            return false;
        }
        if matches!(
            self.machine.state(),
            PipelineState::Processing | PipelineState::Listening
        ) {
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

async fn socket_task(
    config: PipecatConfig,
    mut audio: mpsc::Receiver<Vec<i16>>,
    events: mpsc::Sender<BotEvent>,
    cancel: CancellationToken,
) {
    let result = tokio::select! {
        () = cancel.cancelled() => return,
        r = pipecat_wire::converse(&config.url, &config.hello, &mut audio, &events) => r,
    };
    if let Err(e) = result {
        let _ = events.send(BotEvent::Failed(e)).await;
    }
}
