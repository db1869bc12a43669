//! The STT → agent → TTS pipeline of one session, as the media loop sees it: frames in
//! (`push`), paced frames out (`pull`), text events for the client, and state changes and
//! transcripts for the operator.
//!
//! The media loop owns this value and calls it synchronously every frame; nothing here
//! blocks. Frame stages (noise suppression, custom processors, VAD, turn detection) run
//! inline in `processingOrder`; a finished turn runs on its own task (see [`super::turn`])
//! and talks back over one bounded channel. Time is an argument (`push_at`, `pull_at`), so
//! the whole state machine is tested with a fake clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use voice_crds::PipelineState;

use super::metrics::{PipelineMetrics, Stage};
use super::processors::AudioProcessor;
use super::providers::{ProviderError, SttStream};
use super::room::SpeakerLabels;
use super::semantic_turn::SemanticTurn;
use super::state::{Input, StateMachine};
use super::turn::{self, OUTPUT_FRAMES, Providers, TurnJob, TurnOutput};
use super::turn_detector::{TurnDetector, TurnEvent};
use super::vad::VoiceActivity;
use crate::media::resample::Downsample3;
use crate::media::{FRAME_PERIOD, Frame};

/// Longest utterance kept for STT: 30 s at 16 kHz. Longer speech keeps its last 30 s
/// (counted as a drop).
const MAX_UTTERANCE: usize = 30 * 16_000;

/// Audio kept from before VAD fired, so the first syllable reaches STT: 300 ms at 16 kHz.
const PREROLL: usize = 4_800;

/// Client text events held for the transport; more than that and the oldest go (counted).
const OUTBOX: usize = 64;

/// Conversation entries kept for the agent.
const HISTORY: usize = 40;

/// Where state changes and transcripts go besides the client (the operator's event bus).
pub trait EventSink: Send + Sync {
    /// The pipeline moved to `state`; `detail` says why when it is `Error`.
    fn state(&self, state: PipelineState, detail: &str);
    /// A finished piece of the conversation; `role` is `user` or `agent`.
    fn transcript(&self, role: &str, text: &str, turn_id: &str);
    /// A user turn's transcript, with the participant who spoke it in a multi-user session.
    fn user_transcript(&self, text: &str, turn_id: &str, _speaker: Option<&str>) {
        self.transcript("user", text, turn_id);
    }
    /// A turn's stage timings, once its first reply packet went out.
    fn latency(&self, _latency: voice_proto::worker::v1::TurnLatency) {}
    /// Turn detection moved between listening and end of turn.
    fn turn_detection(&self, _state: voice_proto::worker::v1::TurnDetection) {}
    /// The agent handed back its conversation state (JSON) to persist.
    fn agent_state(&self, _context_json: &str) {}
    /// The agent ended the session, after its reply was spoken; `reason` is its own words.
    fn hangup(&self, _reason: &str) {}
    /// The session cannot go on (its bot went away): end it as failed with `reason`.
    fn failed(&self, _reason: &'static str, _message: &str) {}
}

/// A stage that runs on every frame, in `processingOrder`.
pub enum FrameStage {
    /// A transform (noise suppression or one custom processor).
    Processor(Box<dyn AudioProcessor>),
    /// Voice activity detection: decides whether this frame is speech.
    Vad,
    /// Turn detection: acts on the latest VAD decision.
    TurnDetection,
}

/// How the session behaves (from `spec.agent`).
#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    /// Stream agent text into TTS sentence by sentence.
    pub streaming: bool,
    /// User speech during a reply cuts it off.
    pub interruption: bool,
    /// Start STT and the agent at VAD's end of speech, before the silence timeout.
    pub preemptive: bool,
}

struct ActiveTurn {
    id: String,
    cancel: CancellationToken,
    output: mpsc::Receiver<TurnOutput>,
    /// Some while a preemptive turn waits for the end of the turn.
    gate: Option<oneshot::Sender<()>>,
    /// Utterance length (samples) the turn was started with.
    audio_len: usize,
    heard: Vec<String>,
    started_audio: bool,
    timings: Timings,
    /// The participant who spoke the turn, in a multi-user session.
    speaker: Option<String>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Timings {
    vad_end: Option<Instant>,
    turn_end: Option<Instant>,
    stt: Option<Instant>,
    first_token: Option<Instant>,
    first_audio: Option<Instant>,
}

/// The session pipeline.
pub struct SessionPipeline {
    stages: Vec<FrameStage>,
    vad: Box<dyn VoiceActivity>,
    detector: TurnDetector,
    machine: StateMachine,
    behaviour: Behaviour,
    providers: Providers,
    sink: Box<dyn EventSink>,
    metrics: PipelineMetrics,
    down: Downsample3,
    narrow: Vec<i16>,
    preroll: VecDeque<i16>,
    utterance: Vec<i16>,
    speech_len: usize,
    last_speech_at: Option<Instant>,
    /// The latest `now` the media loop passed in, to date `last_speech_at` on the wall clock.
    latest: Option<Instant>,
    /// (listening, turn end detected) as last reported to the sink.
    reported_turn: Option<(bool, bool)>,
    speech: bool,
    media_time: Duration,
    turn: Option<ActiveTurn>,
    turn_seq: u64,
    pending_frame: Option<Box<Frame>>,
    next_due: Option<Instant>,
    outbox: VecDeque<String>,
    history: Vec<(String, String)>,
    /// Recognition running while the user speaks, when STT can stream.
    stt_stream: Option<Box<dyn SttStream>>,
    /// The semantic end-of-turn model asked at pauses, when configured.
    semantic: Option<SemanticTurn>,
    /// Who is speaking, in a multi-user session.
    speakers: Option<SpeakerLabels>,
}

impl std::fmt::Debug for SessionPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionPipeline")
            .field("state", &self.machine.state())
            .field("providers", &self.providers)
            .finish_non_exhaustive()
    }
}

impl SessionPipeline {
    /// A pipeline in `Idle`; call [`SessionPipeline::connected`] when media starts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stages: Vec<FrameStage>,
        vad: Box<dyn VoiceActivity>,
        detector: TurnDetector,
        behaviour: Behaviour,
        providers: Providers,
        sink: Box<dyn EventSink>,
        metrics: PipelineMetrics,
    ) -> Self {
        Self {
            stages,
            vad,
            detector,
            machine: StateMachine::new(),
            behaviour,
            providers,
            sink,
            metrics,
            down: Downsample3::default(),
            narrow: Vec::with_capacity(320),
            preroll: VecDeque::with_capacity(PREROLL),
            utterance: Vec::new(),
            speech_len: 0,
            last_speech_at: None,
            latest: None,
            reported_turn: None,
            speech: false,
            media_time: Duration::ZERO,
            turn: None,
            turn_seq: 0,
            pending_frame: None,
            next_due: None,
            outbox: VecDeque::with_capacity(OUTBOX),
            history: Vec::new(),
            stt_stream: None,
            semantic: None,
            speakers: None,
        }
    }

    /// Labels each user turn with the participant whose voice carried most of it (a
    /// multi-user session's room measures it): the agent hears `name: text` and the
    /// transcript records the name.
    pub fn with_speakers(mut self, speakers: SpeakerLabels) -> Self {
        self.speakers = Some(speakers);
        self
    }

    /// Asks `semantic` at each pause whether the turn is over (the silence rule stays
    /// the upper bound).
    pub fn with_semantic_turn(mut self, semantic: SemanticTurn) -> Self {
        self.semantic = Some(semantic);
        self
    }

    /// Continues a conversation: the agent sees `history`, and turn ids continue after
    /// `turns`.
    pub fn resume(&mut self, history: Vec<(String, String)>, turns: u64) {
        self.history = history;
        let excess = self.history.len().saturating_sub(HISTORY);
        self.history.drain(..excess);
        self.turn_seq = turns;
    }

    /// The current PipelineState.
    pub fn state(&self) -> PipelineState {
        self.machine.state()
    }

    /// The media connection is up: start listening.
    pub fn connected(&mut self) {
        self.apply(Input::Connected);
    }

    /// The next text event for the client (JSON), if any.
    pub fn next_event(&mut self) -> Option<String> {
        self.outbox.pop_front()
    }

    /// Feeds one received frame at wall time `now`.
    pub fn push_at(&mut self, frame: &Frame, now: Instant) {
        self.media_time += FRAME_PERIOD;
        let mut frame = *frame;
        let mut narrow_ready = false;
        let mut stages = std::mem::take(&mut self.stages);
        for stage in &mut stages {
            match stage {
                FrameStage::Processor(p) => p.process(&mut frame),
                FrameStage::Vad => {
                    self.narrow.clear();
                    self.down.process(&frame, &mut self.narrow);
                    narrow_ready = true;
                    self.speech = self.vad.is_speech(&self.narrow);
                }
                FrameStage::TurnDetection => {
                    // Barge-in does not wait for the turn detector's onset: the first
                    // frame VAD calls speech stops the reply (the turn starts as usual).
                    if self.speech
                        && self.behaviour.interruption
                        && self.state() == PipelineState::Speaking
                    {
                        self.barge_in();
                    }
                    let event = self.detector.observe(self.media_time, self.speech);
                    self.on_turn_event(event, now);
                    self.ask_semantic(event, now);
                }
            }
        }
        self.stages = stages;
        if !narrow_ready {
            self.narrow.clear();
            self.down.process(&frame, &mut self.narrow);
        }
        if self.speech {
            self.last_speech_at = Some(now);
        }
        self.latest = Some(now);
        self.report_turn_detection();
        self.keep_audio();
        self.drain_events(now);
    }

    /// Fills `out` with the next reply frame if one is due at `now` (one per 20 ms);
    /// false means the caller sends silence.
    pub fn pull_at(&mut self, out: &mut Frame, now: Instant) -> bool {
        self.drain_events(now);
        self.report_turn_detection();
        let Some(frame) = self.pending_frame.take() else {
            return false;
        };
        if let Some(due) = self.next_due
            && now + Duration::from_millis(2) < due
        {
            self.pending_frame = Some(frame);
            return false;
        }
        // A late caller gets one frame now, not a burst to catch up.
        let base = self
            .next_due
            .map_or(now, |due| due.max(now - 2 * FRAME_PERIOD));
        self.next_due = Some(base.max(now - FRAME_PERIOD) + FRAME_PERIOD);
        *out = *frame;
        if let Some(turn) = self.turn.as_mut()
            && !turn.started_audio
        {
            turn.started_audio = true;
            let t = turn.timings;
            if let Some(first_audio) = t.first_audio {
                self.metrics.observe_stage(
                    Stage::FirstPacket,
                    now.saturating_duration_since(first_audio),
                );
            }
            if let Some(vad_end) = t.vad_end {
                let total = now.saturating_duration_since(vad_end);
                self.metrics.observe_turn(total);
                let span = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
                    (Some(a), Some(b)) => Some(b.saturating_duration_since(a).as_secs_f64() * 1e3),
                    _ => None,
                };
                self.sink.latency(voice_proto::worker::v1::TurnLatency {
                    turn_id: turn.id.to_string(),
                    turn_detect_ms: span(t.vad_end, t.turn_end),
                    stt_ms: span(t.turn_end, t.stt),
                    agent_first_token_ms: span(t.stt, t.first_token),
                    tts_first_audio_ms: span(t.first_token, t.first_audio),
                    first_packet_ms: span(t.first_audio, Some(now)),
                    total_ms: total.as_secs_f64() * 1e3,
                });
                let ms = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
                    (Some(a), Some(b)) => {
                        serde_json::json!(b.saturating_duration_since(a).as_secs_f64() * 1e3)
                    }
                    _ => serde_json::Value::Null,
                };
                let figures = serde_json::json!({
                    "type": "latency",
                    "turn_id": turn.id,
                    "turn_detect_ms": ms(t.vad_end, t.turn_end),
                    "stt_ms": ms(t.turn_end, t.stt),
                    "agent_first_token_ms": ms(t.stt, t.first_token),
                    "tts_first_audio_ms": ms(t.first_token, t.first_audio),
                    "first_packet_ms": ms(t.first_audio, Some(now)),
                    "total_ms": total.as_secs_f64() * 1e3,
                });
                self.emit(figures);
            }
            self.apply(Input::ReplyAudio);
        }
        true
    }

    /// With a semantic detector: a pause it calls the end of the turn ends it now.
    fn ask_semantic(&mut self, event: TurnEvent, now: Instant) {
        let Some(semantic) = self.semantic.as_mut() else {
            return;
        };
        if event != TurnEvent::None {
            semantic.reset();
        }
        if let Some(last_speech) = self.detector.paused_since()
            && semantic.on_pause(self.media_time, last_speech, &self.utterance)
        {
            let ended = self.detector.end_turn();
            self.on_turn_event(ended, now);
        }
    }

    fn keep_audio(&mut self) {
        if self.detector.in_turn() {
            self.utterance.extend_from_slice(&self.narrow);
            if let Some(stream) = self.stt_stream.as_mut()
                && !stream.push(&self.narrow)
            {
                self.metrics.count_dropped("stt_stream_full");
            }
            if self.speech {
                self.speech_len = self.utterance.len();
            }
            if self.utterance.len() > MAX_UTTERANCE {
                let excess = self.utterance.len() - MAX_UTTERANCE;
                self.utterance.drain(..excess);
                self.speech_len = self.speech_len.saturating_sub(excess);
                self.metrics.count_dropped("utterance_too_long");
            }
        } else {
            self.preroll.extend(self.narrow.iter().copied());
            let excess = self.preroll.len().saturating_sub(PREROLL);
            self.preroll.drain(..excess);
        }
    }

    fn on_turn_event(&mut self, event: TurnEvent, now: Instant) {
        match event {
            TurnEvent::None => {}
            TurnEvent::SpeechStarted => {
                let replying = matches!(
                    self.state(),
                    PipelineState::Processing | PipelineState::Speaking
                );
                if replying && self.behaviour.interruption {
                    self.barge_in();
                } else if self.turn.as_ref().is_some_and(|t| t.gate.is_some()) {
                    self.discard_preemptive();
                }
                self.utterance.clear();
                self.utterance.extend(self.preroll.drain(..));
                self.speech_len = self.utterance.len();
                // Preemptive turns transcribe at each pause instead.
                self.stt_stream = if self.behaviour.preemptive {
                    None
                } else {
                    self.providers.stt.stream()
                };
                if let Some(stream) = self.stt_stream.as_mut() {
                    stream.push(&self.utterance);
                }
                if self.state() != PipelineState::Speaking
                    && self.state() != PipelineState::Processing
                {
                    self.apply(Input::UserSpeech);
                }
            }
            TurnEvent::SpeechPaused => {
                if self.behaviour.preemptive && self.turn.is_none() {
                    let (tx, rx) = oneshot::channel();
                    self.start_turn(Some(rx), None, now);
                    if let Some(turn) = self.turn.as_mut() {
                        turn.gate = Some(tx);
                    }
                }
            }
            TurnEvent::SpeechResumed => {
                if self.turn.as_ref().is_some_and(|t| t.gate.is_some()) {
                    self.discard_preemptive();
                }
            }
            TurnEvent::TurnEnded => {
                let vad_end = self.last_speech_at;
                let preempted = self
                    .turn
                    .as_ref()
                    .is_some_and(|t| t.gate.is_some() && t.audio_len >= self.speech_len);
                if preempted {
                    if let Some(gate) = self.turn.as_mut().and_then(|t| t.gate.take()) {
                        let _ = gate.send(());
                    }
                } else {
                    if self.turn.as_ref().is_some_and(|t| t.gate.is_some()) {
                        self.discard_preemptive();
                    }
                    // A reply still playing when the next turn ends (no barge-in) is
                    // finished first: its turn is replaced only once it is done.
                    if self.turn.is_some() {
                        self.cancel_turn("superseded");
                    }
                    let streamed = self.stt_stream.take().map(|s| s.finish());
                    self.start_turn(None, streamed, now);
                }
                if let Some(turn) = self.turn.as_mut() {
                    turn.timings.vad_end = vad_end;
                    turn.timings.turn_end = Some(now);
                    if let Some(v) = vad_end {
                        self.metrics
                            .observe_stage(Stage::TurnDetect, now.saturating_duration_since(v));
                    }
                }
                self.apply(Input::TurnEnded);
            }
        }
    }

    fn start_turn(
        &mut self,
        gate: Option<oneshot::Receiver<()>>,
        transcript: Option<futures::future::BoxFuture<'static, Result<String, ProviderError>>>,
        _now: Instant,
    ) {
        self.turn_seq += 1;
        let id = format!("t{}", self.turn_seq);
        let audio = self.utterance[..self.speech_len.min(self.utterance.len())].to_vec();
        let audio_len = self.speech_len;
        let (tx, rx) = mpsc::channel(OUTPUT_FRAMES);
        let cancel = CancellationToken::new();
        let speaker = self
            .speakers
            .as_ref()
            .and_then(SpeakerLabels::take_dominant);
        let job = TurnJob {
            speaker: speaker.clone(),
            turn_id: id.clone(),
            audio,
            history: self.history.clone(),
            providers: self.providers.clone(),
            streaming: self.behaviour.streaming,
            gate,
            transcript,
        };
        tokio::spawn(turn::run(job, tx, cancel.clone()));
        self.turn = Some(ActiveTurn {
            id,
            cancel,
            output: rx,
            gate: None,
            audio_len,
            heard: Vec::new(),
            started_audio: false,
            timings: Timings::default(),
            speaker,
        });
    }

    fn discard_preemptive(&mut self) {
        self.cancel_turn("discarded");
    }

    fn cancel_turn(&mut self, outcome: &str) {
        if let Some(turn) = self.turn.take() {
            turn.cancel.cancel();
            self.metrics.count_turn(outcome);
        }
        self.pending_frame = None;
    }

    /// A key press is a turn of its own: the agent gets `DTMF <digit>` as the user's words
    /// (which an LLM reads without a tool, and a webhook or gRPC agent without a new field),
    /// and a reply still playing is cut off as by speech, so a caller can answer a menu
    /// before it ends.
    pub fn dtmf_at(&mut self, digit: char, now: Instant) {
        self.emit(serde_json::json!({ "type": "dtmf", "digit": digit.to_string() }));
        if self.turn.is_some() {
            if self.behaviour.interruption {
                self.barge_in();
            } else {
                self.cancel_turn("superseded");
            }
        }
        let said = format!("DTMF {digit}");
        self.start_turn(
            None,
            Some(Box::pin(async move { Ok::<_, ProviderError>(said) })),
            now,
        );
        if let Some(turn) = self.turn.as_mut() {
            turn.timings.turn_end = Some(now);
        }
        self.apply(Input::TurnEnded);
    }

    /// The user spoke over the reply: stop output now, cancel the turn, tell the agent
    /// what was heard, listen.
    fn barge_in(&mut self) {
        let Some(turn) = self.turn.take() else { return };
        turn.cancel.cancel();
        self.pending_frame = None;
        self.next_due = None;
        self.metrics.count_barge_in();
        self.metrics.count_turn("interrupted");
        let heard = turn.heard.join(" ");
        let agent = self.providers.agent.clone();
        let turn_id = turn.id.clone();
        let told = heard.clone();
        tokio::spawn(async move { agent.interrupted(&turn_id, &told).await });
        if !heard.is_empty() {
            self.sink.transcript("agent", &heard, &turn.id);
            self.push_history("assistant", &heard);
        }
        self.emit(serde_json::json!({ "type": "interrupted", "turn_id": turn.id, "heard": heard }));
        self.apply(Input::BargeIn);
        self.detector.listen();
    }

    fn drain_events(&mut self, now: Instant) {
        while self.pending_frame.is_none() {
            let Some(turn) = self.turn.as_mut() else {
                return;
            };
            if turn.gate.is_some() {
                return; // a preemptive turn says nothing until the turn ends
            }
            let message = match turn.output.try_recv() {
                Ok(message) => message,
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    // The task ended without `Done` or `Failed`: it was cancelled.
                    self.turn = None;
                    return;
                }
            };
            self.on_output(message, now);
        }
    }

    fn on_output(&mut self, message: TurnOutput, _now: Instant) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        let id = turn.id.clone();
        match message {
            TurnOutput::UserTranscript(text, at) => {
                turn.timings.stt = Some(at);
                if let Some(end) = turn.timings.turn_end {
                    self.metrics
                        .observe_stage(Stage::Stt, at.saturating_duration_since(end));
                }
                let speaker = turn.speaker.clone();
                if !text.is_empty() {
                    self.sink.user_transcript(&text, &id, speaker.as_deref());
                    self.push_history("user", &super::turn::labelled(&text, speaker.as_deref()));
                }
                self.emit(serde_json::json!({ "type": "transcript", "role": "user", "text": text, "turn_id": id, "final": true, "speaker": speaker }));
            }
            TurnOutput::AgentFirstToken(at) => {
                turn.timings.first_token = Some(at);
                if let Some(stt) = turn.timings.stt {
                    self.metrics
                        .observe_stage(Stage::AgentFirstToken, at.saturating_duration_since(stt));
                }
            }
            TurnOutput::TtsFirstAudio(at) => {
                turn.timings.first_audio = Some(at);
                if let Some(token) = turn.timings.first_token {
                    self.metrics
                        .observe_stage(Stage::TtsFirstAudio, at.saturating_duration_since(token));
                }
            }
            TurnOutput::Audio(frame) => self.pending_frame = Some(frame),
            TurnOutput::Spoken(sentence) => turn.heard.push(sentence),
            TurnOutput::Done(reply) => {
                self.turn = None;
                self.pending_frame = None;
                if reply.is_empty() {
                    self.metrics.count_turn("empty");
                } else {
                    self.metrics.count_turn("replied");
                    self.sink.transcript("agent", &reply, &id);
                    self.push_history("assistant", &reply);
                    self.emit(serde_json::json!({ "type": "transcript", "role": "agent", "text": reply, "turn_id": id, "final": true }));
                }
                self.apply(Input::ReplyDone);
                self.detector.listen();
                self.settle_agent();
            }
            TurnOutput::Failed(e) => {
                self.turn = None;
                self.pending_frame = None;
                self.metrics.count_error(e.provider, e.reason());
                self.metrics.count_turn("failed");
                tracing::warn!(provider = e.provider, reason = e.reason(), error = %e, "provider failed; the next turn retries");
                self.emit(serde_json::json!({ "type": "error", "reason": e.reason(), "message": e.to_string(), "turn_id": id }));
                self.apply(Input::Failed(e.to_string()));
                self.detector.listen();
                self.settle_agent();
            }
        }
    }

    /// Passes on what the agent asked for during the turn that just finished: its state
    /// first, so a hang-up never loses it.
    fn settle_agent(&mut self) {
        let after = self.providers.agent.after_turn();
        if let Some(state) = after.state {
            self.sink.agent_state(&state);
        }
        if let Some(reason) = after.hangup {
            self.emit(serde_json::json!({ "type": "hangup", "reason": reason }));
            self.sink.hangup(&reason);
        }
    }

    /// Tells the sink when turn detection moves between listening and end of turn (not per
    /// frame: the last speech time changes every frame the user talks).
    fn report_turn_detection(&mut self) {
        let state = self.detector.state();
        let now = (state.is_listening, state.turn_end_detected);
        if self.reported_turn == Some(now) {
            return;
        }
        self.reported_turn = Some(now);
        let last_speech = match (self.last_speech_at, self.latest) {
            (Some(at), Some(latest)) => std::time::SystemTime::now()
                .checked_sub(latest.saturating_duration_since(at))
                .map(Into::into),
            _ => None,
        };
        let timeout = self.detector.silence_timeout().as_millis();
        self.sink
            .turn_detection(voice_proto::worker::v1::TurnDetection {
                listening: now.0,
                last_speech,
                silence_timeout_ms: u32::try_from(timeout).unwrap_or(u32::MAX),
                turn_end_detected: now.1,
            });
    }

    fn push_history(&mut self, role: &str, text: &str) {
        self.history.push((role.to_owned(), text.to_owned()));
        let excess = self.history.len().saturating_sub(HISTORY);
        self.history.drain(..excess);
    }

    fn apply(&mut self, input: Input) {
        for change in self.machine.apply(&input) {
            self.sink.state(change.to, &change.detail);
            let mut event =
                serde_json::json!({ "type": "state", "state": super::state::label(change.to) });
            if !change.detail.is_empty() {
                event["detail"] = change.detail.clone().into();
            }
            self.emit(event);
        }
    }

    fn emit(&mut self, event: serde_json::Value) {
        if self.outbox.len() >= OUTBOX {
            self.outbox.pop_front();
            self.metrics.count_dropped("client_event_outbox_full");
        }
        self.outbox.push_back(event.to_string());
    }
}

impl Drop for SessionPipeline {
    fn drop(&mut self) {
        if let Some(turn) = self.turn.take() {
            turn.cancel.cancel();
        }
    }
}

impl crate::media::echo::SpeechToSpeech for SessionPipeline {
    fn name(&self) -> &'static str {
        "stt-tts"
    }

    fn push(&mut self, frame: &Frame) -> usize {
        self.push_at(frame, Instant::now());
        0
    }

    fn pull(&mut self, out: &mut Frame) -> bool {
        self.pull_at(out, Instant::now())
    }

    fn next_event(&mut self) -> Option<String> {
        SessionPipeline::next_event(self)
    }

    fn connected(&mut self) {
        SessionPipeline::connected(self);
    }

    fn dtmf(&mut self, digit: char) -> bool {
        self.dtmf_at(digit, Instant::now());
        true
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
