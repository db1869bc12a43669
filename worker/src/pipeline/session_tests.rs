//! The session pipeline with scripted providers and a fake clock: turns, barge-in,
//! streaming, preemptive generation, failures and recovery.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use super::*;
use crate::media::FRAME_SAMPLES;
use crate::pipeline::providers::echo_agent::EchoAgent;
use crate::pipeline::providers::{
    AfterTurn, Agent, AgentTurn, ErrorKind, ProviderError, SpeechToText, TextToSpeech,
};

/// Speech is a frame that is mostly loud (the real VAD is tested on real speech).
struct LoudIsSpeech;
impl VoiceActivity for LoudIsSpeech {
    fn is_speech(&mut self, samples: &[i16]) -> bool {
        2 * samples.iter().filter(|s| s.abs() > 1_000).count() > samples.len()
    }
}

#[derive(Default)]
struct Recorder {
    states: Mutex<Vec<(PipelineState, String)>>,
    transcripts: Mutex<Vec<(String, String)>>,
    /// Agent states and hang-ups, in the order they were passed on.
    agent: Mutex<Vec<String>>,
    /// Turn detection reports: (listening, turn end detected, last speech known).
    turns: Mutex<Vec<(bool, bool, bool)>>,
}
struct Sink(Arc<Recorder>);
impl EventSink for Sink {
    fn state(&self, state: PipelineState, detail: &str) {
        self.0
            .states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((state, detail.to_owned()));
    }
    fn transcript(&self, role: &str, text: &str, _turn: &str) {
        self.0
            .transcripts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((role.to_owned(), text.to_owned()));
    }
    fn turn_detection(&self, t: voice_proto::worker::v1::TurnDetection) {
        assert_eq!(t.silence_timeout_ms, 200, "the detector's own timeout");
        let mut turns = self.0.turns.lock().unwrap_or_else(|e| e.into_inner());
        turns.push((t.listening, t.turn_end_detected, t.last_speech.is_some()));
    }
    fn agent_state(&self, context_json: &str) {
        let mut agent = self.0.agent.lock().unwrap_or_else(|e| e.into_inner());
        agent.push(format!("state {context_json}"));
    }
    fn hangup(&self, reason: &str) {
        let mut agent = self.0.agent.lock().unwrap_or_else(|e| e.into_inner());
        agent.push(format!("hangup {reason}"));
    }
}

/// STT that hears a fixed phrase, fails while `fail` is set, and counts calls.
struct ScriptedStt {
    text: &'static str,
    fail: Arc<std::sync::atomic::AtomicBool>,
    calls: Arc<AtomicUsize>,
}
impl SpeechToText for ScriptedStt {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn transcribe<'a>(&'a self, _audio: &'a [i16]) -> BoxFuture<'a, Result<String, ProviderError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let fail = self.fail.load(Ordering::SeqCst);
        Box::pin(async move {
            if fail {
                return Err(ProviderError::new(
                    "scripted",
                    ErrorKind::Status(503),
                    "HTTP 503: overloaded",
                ));
            }
            Ok(self.text.to_owned())
        })
    }
}

/// TTS that says 100 ms of tone per word.
struct ToneTts;
impl TextToSpeech for ToneTts {
    fn name(&self) -> &'static str {
        "tone"
    }
    fn synthesize<'a>(
        &'a self,
        text: &'a str,
        audio: tokio::sync::mpsc::Sender<Vec<i16>>,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            for _ in text.split_whitespace() {
                if audio.send(vec![5_000; 4_800]).await.is_err() {
                    break;
                }
            }
            Ok(())
        })
    }
}

/// An agent that streams three sentences with a pause between tokens.
struct SlowAgent {
    done: Arc<std::sync::atomic::AtomicBool>,
}
impl Agent for SlowAgent {
    fn name(&self) -> &'static str {
        "slow"
    }
    fn reply<'a>(
        &'a self,
        _turn: AgentTurn,
        deltas: tokio::sync::mpsc::Sender<String>,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            for token in ["One. ", "Two ", "words. ", "Three."] {
                tokio::time::sleep(Duration::from_millis(150)).await;
                if deltas.send(token.to_owned()).await.is_err() {
                    return Ok(());
                }
            }
            self.done.store(true, Ordering::SeqCst);
            Ok(())
        })
    }
}

struct Harness {
    pipeline: SessionPipeline,
    recorder: Arc<Recorder>,
    now: Instant,
    fail: Arc<std::sync::atomic::AtomicBool>,
    stt_calls: Arc<AtomicUsize>,
    sent: usize,
}

fn harness(agent: Arc<dyn Agent>, behaviour: Behaviour) -> Harness {
    let recorder = Arc::new(Recorder::default());
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stt_calls = Arc::new(AtomicUsize::new(0));
    let providers = Providers {
        stt: Arc::new(ScriptedStt {
            text: "hello there",
            fail: fail.clone(),
            calls: stt_calls.clone(),
        }),
        agent,
        tts: Arc::new(ToneTts),
    };
    let mut pipeline = SessionPipeline::new(
        vec![FrameStage::Vad, FrameStage::TurnDetection],
        Box::new(LoudIsSpeech),
        TurnDetector::new(Duration::from_millis(200), 1),
        behaviour,
        providers,
        Box::new(Sink(recorder.clone())),
        PipelineMetrics::unregistered(),
    );
    pipeline.connected();
    Harness {
        pipeline,
        recorder,
        now: Instant::now(),
        fail,
        stt_calls,
        sent: 0,
    }
}

const ALL_ON: Behaviour = Behaviour {
    streaming: true,
    interruption: true,
    preemptive: false,
};

impl Harness {
    /// One 20 ms step: push a frame (speech or silence), let tasks run, pull once.
    async fn step(&mut self, speech: bool) -> bool {
        let frame = [if speech { 8_000 } else { 0 }; FRAME_SAMPLES];
        self.pipeline.push_at(&frame, self.now);
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let mut out = [0; FRAME_SAMPLES];
        let got = self.pipeline.pull_at(&mut out, self.now);
        self.now += FRAME_PERIOD;
        if got {
            self.sent += 1;
        }
        got
    }

    async fn speak(&mut self, frames: usize) {
        for _ in 0..frames {
            self.step(true).await;
        }
    }

    /// Steps in silence until `until` holds or `max` steps pass; returns the steps taken.
    async fn wait(&mut self, max: usize, until: impl Fn(&Self) -> bool) -> Option<usize> {
        for i in 0..max {
            if until(self) {
                return Some(i);
            }
            self.step(false).await;
        }
        None
    }

    fn states(&self) -> Vec<PipelineState> {
        self.recorder
            .states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(s, _)| *s)
            .collect()
    }

    fn events(&mut self) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| self.pipeline.next_event())
            .filter_map(|e| serde_json::from_str(&e).ok())
            .collect()
    }
}

#[tokio::test]
async fn a_turn_goes_listening_processing_speaking_listening_with_transcripts() {
    use PipelineState::*;
    let mut h = harness(Arc::new(EchoAgent), ALL_ON);
    h.speak(10).await;
    let spoke = h.wait(200, |h| h.pipeline.state() == Speaking).await;
    assert!(spoke.is_some(), "{:?}", h.states());
    let done = h.wait(400, |h| h.pipeline.state() == Listening).await;
    assert!(done.is_some(), "{:?}", h.states());
    assert_eq!(h.states(), [Listening, Processing, Speaking, Listening]);
    let turns = h
        .recorder
        .turns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert_eq!(
        turns,
        [
            (true, false, true),
            (false, true, true),
            (true, false, true)
        ],
        "listening (the first frame is speech), the end of the turn, listening again: once each"
    );
    // "You said: hello there." is 4 words of 100 ms each: 20 frames.
    assert_eq!(h.sent, 20);
    let transcripts = h
        .recorder
        .transcripts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert_eq!(
        transcripts,
        [
            ("user".to_owned(), "hello there".to_owned()),
            ("agent".to_owned(), "You said: hello there.".to_owned())
        ]
    );
    let events = h.events();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(kinds.contains(&"latency"), "{kinds:?}");
    assert!(
        kinds.iter().filter(|k| **k == "transcript").count() == 2,
        "{kinds:?}"
    );
}

#[tokio::test]
async fn user_speech_while_speaking_stops_output_at_the_next_frame_and_listens() {
    use PipelineState::*;
    let mut h = harness(Arc::new(EchoAgent), ALL_ON);
    h.speak(10).await;
    h.wait(200, |h| h.pipeline.state() == Speaking).await;
    assert!(h.step(false).await, "the reply is playing");
    // Barge in: the very frame that carries speech stops the reply.
    assert!(
        !h.step(true).await,
        "reply audio went out after the user spoke"
    );
    assert_eq!(h.pipeline.state(), Listening);
    let events = h.events();
    assert!(
        events.iter().any(|e| e["type"] == "interrupted"),
        "{events:?}"
    );
    // And nothing more of the old reply comes out.
    for _ in 0..5 {
        assert!(!h.step(true).await);
    }
    assert!(
        h.states().ends_with(&[Speaking, Listening]),
        "{:?}",
        h.states()
    );
}

#[tokio::test]
async fn without_interruption_handling_the_reply_plays_on() {
    let mut h = harness(
        Arc::new(EchoAgent),
        Behaviour {
            interruption: false,
            ..ALL_ON
        },
    );
    h.speak(10).await;
    h.wait(200, |h| h.pipeline.state() == PipelineState::Speaking)
        .await;
    assert!(h.step(true).await, "the reply kept playing over the user");
}

#[tokio::test]
async fn streaming_speaks_the_first_sentence_before_the_agent_finishes() {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut h = harness(Arc::new(SlowAgent { done: done.clone() }), ALL_ON);
    h.speak(10).await;
    let first = h.wait(400, |h| h.sent > 0).await;
    assert!(first.is_some());
    assert!(
        !done.load(Ordering::SeqCst),
        "first audio waited for the whole reply"
    );

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut h = harness(
        Arc::new(SlowAgent { done: done.clone() }),
        Behaviour {
            streaming: false,
            ..ALL_ON
        },
    );
    h.speak(10).await;
    h.wait(400, |h| h.sent > 0).await;
    assert!(
        done.load(Ordering::SeqCst),
        "non-streaming mode speaks only the whole reply"
    );
}

#[tokio::test]
async fn a_provider_error_is_reported_and_the_next_turn_recovers() {
    use PipelineState::*;
    let mut h = harness(Arc::new(EchoAgent), ALL_ON);
    h.fail.store(true, Ordering::SeqCst);
    h.speak(10).await;
    h.wait(200, |h| h.pipeline.state() == Error).await;
    let detail = h
        .recorder
        .states
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .last()
        .cloned();
    assert_eq!(
        detail,
        Some((Error, "scripted: HTTP 503: overloaded".to_owned()))
    );
    h.fail.store(false, Ordering::SeqCst);
    h.speak(10).await;
    assert!(
        h.wait(400, |h| h.sent > 0).await.is_some(),
        "{:?}",
        h.states()
    );
    assert!(
        h.states()
            .ends_with(&[Error, Listening, Processing, Speaking]),
        "{:?}",
        h.states()
    );
}

#[tokio::test]
async fn preemptive_generation_starts_at_the_pause_and_is_discarded_if_the_user_goes_on() {
    let mut h = harness(
        Arc::new(EchoAgent),
        Behaviour {
            preemptive: true,
            ..ALL_ON
        },
    );
    h.speak(10).await;
    h.step(false).await; // VAD end: STT starts now, 200 ms before the turn ends
    assert_eq!(h.stt_calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        h.pipeline.state(),
        PipelineState::Listening,
        "nothing is said before the turn ends"
    );
    h.speak(3).await; // the user goes on: the preemptive turn is dropped
    h.step(false).await;
    assert_eq!(
        h.stt_calls.load(Ordering::SeqCst),
        2,
        "a new preemptive turn at the new pause"
    );
    let turn_end = h
        .wait(20, |h| h.pipeline.state() != PipelineState::Listening)
        .await;
    assert!(turn_end.is_some());
    // The reply is ready at the end of the turn: it plays on the next frames, and STT
    // was not run again.
    assert!(h.wait(5, |h| h.sent > 0).await.is_some());
    assert_eq!(h.stt_calls.load(Ordering::SeqCst), 2);
}

/// Records what it was asked.
struct RecordingAgent {
    turns: Arc<Mutex<Vec<AgentTurn>>>,
}
impl Agent for RecordingAgent {
    fn name(&self) -> &'static str {
        "recording"
    }
    fn reply<'a>(
        &'a self,
        turn: AgentTurn,
        deltas: tokio::sync::mpsc::Sender<String>,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        self.turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(turn);
        Box::pin(async move {
            let _ = deltas.send("Okay.".to_owned()).await;
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_resumed_session_hands_the_agent_its_history_and_continues_turn_ids() {
    let turns = Arc::new(Mutex::new(Vec::new()));
    let mut h = harness(
        Arc::new(RecordingAgent {
            turns: turns.clone(),
        }),
        ALL_ON,
    );
    h.pipeline.resume(
        vec![
            ("user".into(), "hi".into()),
            ("assistant".into(), "hello".into()),
        ],
        7,
    );
    h.speak(10).await;
    h.wait(400, |h| h.sent > 0).await;
    let asked = turns.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].turn_id, "t8");
    // The history so far; the current utterance travels as the turn's text.
    assert_eq!(
        asked[0].history,
        [
            ("user".to_owned(), "hi".to_owned()),
            ("assistant".to_owned(), "hello".to_owned())
        ]
    );
    assert_eq!(asked[0].text, "hello there");
}

/// STT that listens while the user speaks: counts what it was fed.
struct StreamingStt {
    fed: Arc<AtomicUsize>,
    batch_calls: Arc<AtomicUsize>,
}
struct Fed(Arc<AtomicUsize>);
impl crate::pipeline::providers::SttStream for Fed {
    fn push(&mut self, samples: &[i16]) -> bool {
        self.0.fetch_add(samples.len(), Ordering::SeqCst);
        true
    }
    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<String, ProviderError>> {
        let fed = self.0.load(Ordering::SeqCst);
        Box::pin(async move { Ok(format!("heard {fed} samples")) })
    }
}
impl SpeechToText for StreamingStt {
    fn name(&self) -> &'static str {
        "streaming"
    }
    fn stream(&self) -> Option<Box<dyn crate::pipeline::providers::SttStream>> {
        Some(Box::new(Fed(self.fed.clone())))
    }
    fn transcribe<'a>(&'a self, _audio: &'a [i16]) -> BoxFuture<'a, Result<String, ProviderError>> {
        self.batch_calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(String::new()) })
    }
}

#[tokio::test]
async fn a_streaming_recogniser_hears_the_utterance_as_it_is_spoken() {
    let fed = Arc::new(AtomicUsize::new(0));
    let batch_calls = Arc::new(AtomicUsize::new(0));
    let mut h = harness(Arc::new(EchoAgent), ALL_ON);
    h.pipeline.providers.stt = Arc::new(StreamingStt {
        fed: fed.clone(),
        batch_calls: batch_calls.clone(),
    });
    h.speak(10).await;
    assert!(fed.load(Ordering::SeqCst) >= 10 * 320, "fed while speaking");
    h.wait(400, |h| h.sent > 0).await;
    assert_eq!(
        batch_calls.load(Ordering::SeqCst),
        0,
        "no second, whole-utterance run"
    );
    let transcripts = h
        .recorder
        .transcripts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    // 10 speech frames and the 9 silent ones before the 200 ms timeout ended the turn
    // (the frame that ends it is not part of it), at 16 kHz.
    assert_eq!(
        transcripts.first().map(|t| t.1.as_str()),
        Some("heard 6080 samples")
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]
    /// Whatever the user does (any pattern of speech and silence, with barge-in on), every
    /// state change the session reports is one the seed allows and starts where the last
    /// one ended, and the client's event queue stays bounded.
    #[test]
    fn any_speech_pattern_gives_only_allowed_state_changes(pattern in proptest::collection::vec(proptest::prelude::any::<bool>(), 1..120)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let (states, outbox) = runtime.block_on(async {
            let mut h = harness(Arc::new(EchoAgent), ALL_ON);
            for &speech in &pattern {
                h.step(speech).await;
            }
            for _ in 0..60 {
                h.step(false).await;
            }
            (h.states(), h.pipeline.outbox.len())
        });
        let mut at = PipelineState::Idle;
        for s in states {
            proptest::prop_assert!(at.can_transition_to(s), "{:?} -> {:?}", at, s);
            at = s;
        }
        proptest::prop_assert!(outbox <= OUTBOX);
    }
}

/// An agent that says goodbye, saves its state and hangs up.
struct GoodbyeAgent;
impl Agent for GoodbyeAgent {
    fn name(&self) -> &'static str {
        "goodbye"
    }
    fn reply<'a>(
        &'a self,
        _turn: AgentTurn,
        deltas: tokio::sync::mpsc::Sender<String>,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let _ = deltas.send("Goodbye now.".to_owned()).await;
            Ok(())
        })
    }
    fn after_turn(&self) -> AfterTurn {
        AfterTurn {
            hangup: Some("task done".into()),
            state: Some(r#"{"step":2}"#.into()),
        }
    }
}

#[tokio::test]
async fn an_agent_hangs_up_only_after_its_goodbye_is_spoken_and_its_state_goes_first() {
    let mut h = harness(Arc::new(GoodbyeAgent), ALL_ON);
    h.speak(10).await;
    let spoke = h
        .wait(200, |h| h.pipeline.state() == PipelineState::Speaking)
        .await;
    assert!(spoke.is_some(), "{:?}", h.states());
    let agent = |h: &Harness| {
        h.recorder
            .agent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    };
    assert!(agent(&h).is_empty(), "nothing before the reply is spoken");
    let done = h
        .wait(400, |h| h.pipeline.state() == PipelineState::Listening)
        .await;
    assert!(done.is_some(), "{:?}", h.states());
    // "Goodbye now." is two words of 100 ms: all ten frames went out before the hang-up.
    assert_eq!(h.sent, 10);
    assert_eq!(agent(&h), [r#"state {"step":2}"#, "hangup task done"]);
    let events = h.events();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "hangup" && e["reason"] == "task done"),
        "the client is told: {events:?}"
    );
}

#[tokio::test]
async fn a_key_press_is_a_turn_the_agent_answers_and_it_cuts_a_reply_short() {
    use PipelineState::*;
    let mut h = harness(Arc::new(EchoAgent), ALL_ON);
    h.pipeline.dtmf_at('5', h.now);
    let done = h
        .wait(400, |h| h.states().ends_with(&[Speaking, Listening]))
        .await;
    assert!(done.is_some(), "{:?}", h.states());
    let transcripts = h
        .recorder
        .transcripts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert_eq!(
        transcripts,
        [
            ("user".to_owned(), "DTMF 5".to_owned()),
            ("agent".to_owned(), "You said: DTMF 5.".to_owned())
        ]
    );
    assert!(
        h.events()
            .iter()
            .any(|e| e["type"] == "dtmf" && e["digit"] == "5"),
        "the client is told of the key"
    );

    // A key pressed while a reply plays cuts it off, as speech would.
    h.speak(10).await;
    h.wait(200, |h| h.pipeline.state() == Speaking).await;
    assert!(h.step(false).await, "the reply is playing");
    h.pipeline.dtmf_at('#', h.now);
    let events = h.events();
    assert!(
        events.iter().any(|e| e["type"] == "interrupted"),
        "{events:?}"
    );
    let answered = |h: &Harness| {
        let t = h
            .recorder
            .transcripts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        t.ends_with(&[
            ("user".to_owned(), "DTMF #".to_owned()),
            ("agent".to_owned(), "You said: DTMF #.".to_owned()),
        ])
    };
    let done = h.wait(400, answered).await;
    assert!(
        done.is_some(),
        "the key after the cut-off reply is answered"
    );
}
