//! One user turn, off the media thread: STT → agent → TTS, streamed sentence by sentence,
//! into one bounded channel back to the session (audio frames and events in order).
//!
//! Cancelling the turn (barge-in, hang-up) drops everything in flight: the agent's HTTP
//! stream or gRPC call, and the TTS process or request.

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::providers::{
    Agent, AgentTurn, MAX_REPLY_BYTES, ProviderError, SpeechToText, TextToSpeech,
};
use super::sentences::{SentenceSplitter, floor_char_boundary, truncate_text};
use crate::media::{FRAME_SAMPLES, Frame};

/// The providers of an STT → agent → TTS pipeline.
#[derive(Clone)]
pub struct Providers {
    /// Speech to text.
    pub stt: Arc<dyn SpeechToText>,
    /// The agent.
    pub agent: Arc<dyn Agent>,
    /// Text to speech.
    pub tts: Arc<dyn TextToSpeech>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("stt", &self.stt.name())
            .field("agent", &self.agent.name())
            .field("tts", &self.tts.name())
            .finish()
    }
}

/// What a turn sends back to the session, in order.
#[derive(Debug)]
pub enum TurnOutput {
    /// STT's final transcript (possibly empty).
    UserTranscript(String, Instant),
    /// The agent's first token arrived.
    AgentFirstToken(Instant),
    /// TTS produced the first audio of the reply.
    TtsFirstAudio(Instant),
    /// One frame of the reply.
    Audio(Box<Frame>),
    /// All frames of this sentence were sent before this message.
    Spoken(String),
    /// The reply is complete; the agent's whole text.
    Done(String),
    /// A provider failed.
    Failed(ProviderError),
}

/// Frames (20 ms) queued between a turn and the media loop: one second. The turn waits
/// when it is full, so TTS runs only as far ahead of playback as that.
pub const OUTPUT_FRAMES: usize = 50;

/// Everything a turn needs.
pub struct TurnJob {
    /// The turn id.
    pub turn_id: String,
    /// The participant who spoke, in a multi-user session: the agent hears `name: text`.
    pub speaker: Option<String>,
    /// The user's utterance, 16 kHz.
    pub audio: Vec<i16>,
    /// The conversation so far.
    pub history: Vec<(String, String)>,
    /// The providers.
    pub providers: Providers,
    /// Speak sentence by sentence while the agent writes (else after it finished).
    pub streaming: bool,
    /// Preemptive turns wait here before saying anything; `None` goes ahead at once.
    pub gate: Option<oneshot::Receiver<()>>,
    /// The transcript of a streamed recognition, when STT listened while the user spoke;
    /// `None` transcribes `audio` now.
    pub transcript: Option<BoxFuture<'static, Result<String, ProviderError>>>,
}

impl std::fmt::Debug for TurnJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnJob")
            .field("turn_id", &self.turn_id)
            .field("samples", &self.audio.len())
            .field("streamed", &self.transcript.is_some())
            .finish_non_exhaustive()
    }
}

/// Runs `job` until it completes or `cancel` fires; everything goes to `out`.
pub async fn run(job: TurnJob, out: mpsc::Sender<TurnOutput>, cancel: CancellationToken) {
    let failed = out.clone();
    tokio::select! {
        () = cancel.cancelled() => {}
        result = speak(job, out) => {
            if let Err(e) = result {
                let _ = failed.send(TurnOutput::Failed(e)).await;
            }
        }
    }
}

/// What the agent hears of a user turn: in a multi-user session, the speaker's userID
/// first (`alice: what time is it`), the way multi-party chat transcripts are written.
pub fn labelled(text: &str, speaker: Option<&str>) -> String {
    match speaker {
        Some(name) if !text.is_empty() => format!("{name}: {text}"),
        _ => text.to_owned(),
    }
}

/// The receiver went away: the turn was cancelled; stop quietly.
struct Gone;

async fn speak(job: TurnJob, out: mpsc::Sender<TurnOutput>) -> Result<(), ProviderError> {
    let TurnJob {
        turn_id,
        speaker,
        audio,
        history,
        providers,
        streaming,
        gate,
        transcript,
    } = job;
    let text = match transcript {
        Some(streamed) => streamed.await?,
        None => providers.stt.transcribe(&audio).await?,
    };
    // The transcript is the provider's text: kept, reported and sent on at a bounded length.
    let text = truncate_text(&text, MAX_REPLY_BYTES).into_owned();
    let transcribed = Instant::now();
    let (deltas_tx, deltas) = mpsc::channel::<String>(64);
    let turn = AgentTurn {
        turn_id,
        text: labelled(&text, speaker.as_deref()),
        history,
    };
    let agent = async {
        if text.trim().is_empty() {
            return Ok(());
        }
        providers.agent.reply(turn, deltas_tx).await
    };
    let voice = async {
        // Owned here, so an early return drops it and a blocked agent sees the end.
        let mut deltas = deltas;
        if let Some(gate) = gate
            && gate.await.is_err()
        {
            return Ok(Err(Gone));
        }
        if out
            .send(TurnOutput::UserTranscript(text.clone(), transcribed))
            .await
            .is_err()
        {
            return Ok(Err(Gone));
        }
        let mut splitter = SentenceSplitter::default();
        let mut reply = String::new();
        let mut first_token = true;
        let mut first_audio = true;
        let mut sentences: Vec<String> = Vec::new();
        while let Some(delta) = deltas.recv().await {
            if first_token {
                first_token = false;
                if out
                    .send(TurnOutput::AgentFirstToken(Instant::now()))
                    .await
                    .is_err()
                {
                    return Ok(Err(Gone));
                }
            }
            // An endless reply is cut at MAX_REPLY_BYTES (on a character boundary); the
            // agent sees the channel close and stops.
            let room = MAX_REPLY_BYTES.saturating_sub(reply.len());
            let capped = delta.len() > room;
            let delta = if capped {
                &delta[..floor_char_boundary(&delta, room)]
            } else {
                delta.as_str()
            };
            reply.push_str(delta);
            sentences.extend(splitter.push(delta));
            if streaming {
                for sentence in sentences.drain(..) {
                    if say(&providers, &sentence, &out, &mut first_audio)
                        .await?
                        .is_err()
                    {
                        return Ok(Err(Gone));
                    }
                }
            }
            if capped {
                tracing::info!(
                    bytes = reply.len(),
                    "the agent's reply reached its length cap"
                );
                break;
            }
        }
        drop(deltas);
        sentences.extend(splitter.finish());
        for sentence in sentences.drain(..) {
            if say(&providers, &sentence, &out, &mut first_audio)
                .await?
                .is_err()
            {
                return Ok(Err(Gone));
            }
        }
        Ok(Ok(reply))
    };
    let (agent, voice) = tokio::join!(agent, voice);
    let reply = match voice? {
        Ok(reply) => reply,
        Err(Gone) => return Ok(()),
    };
    agent?;
    let _ = out.send(TurnOutput::Done(reply.trim().to_owned())).await;
    Ok(())
}

/// Synthesizes one sentence into frames on `out`.
async fn say(
    providers: &Providers,
    sentence: &str,
    out: &mpsc::Sender<TurnOutput>,
    first_audio: &mut bool,
) -> Result<Result<(), Gone>, ProviderError> {
    let (audio_tx, audio) = mpsc::channel::<Vec<i16>>(16);
    let tts = providers.tts.synthesize(sentence, audio_tx);
    let frames = async {
        // Owned here, so an early return drops it and TTS stops at its next chunk.
        let mut audio = audio;
        let mut pending: Vec<i16> = Vec::with_capacity(2 * FRAME_SAMPLES);
        while let Some(chunk) = audio.recv().await {
            if *first_audio && !chunk.is_empty() {
                *first_audio = false;
                if out
                    .send(TurnOutput::TtsFirstAudio(Instant::now()))
                    .await
                    .is_err()
                {
                    return Err(Gone);
                }
            }
            pending.extend(chunk);
            while pending.len() >= FRAME_SAMPLES {
                let mut frame: Box<Frame> = Box::new([0; FRAME_SAMPLES]);
                frame.copy_from_slice(&pending[..FRAME_SAMPLES]);
                pending.drain(..FRAME_SAMPLES);
                if out.send(TurnOutput::Audio(frame)).await.is_err() {
                    return Err(Gone);
                }
            }
        }
        if !pending.is_empty() {
            let mut frame: Box<Frame> = Box::new([0; FRAME_SAMPLES]);
            frame[..pending.len()].copy_from_slice(&pending);
            if out.send(TurnOutput::Audio(frame)).await.is_err() {
                return Err(Gone);
            }
        }
        Ok(())
    };
    let (tts, frames) = tokio::join!(tts, frames);
    if frames.is_err() {
        return Ok(Err(Gone));
    }
    tts?;
    if out
        .send(TurnOutput::Spoken(sentence.to_owned()))
        .await
        .is_err()
    {
        return Ok(Err(Gone));
    }
    Ok(Ok(()))
}
