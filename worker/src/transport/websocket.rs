//! WebSocket sessions for telephony bridges and server-to-server clients: binary frames
//! of PCM16 little-endian mono in and out at 8, 16, 24 or 48 kHz (the client's `rate`, or
//! the session's `spec.audio.sampleRate`), text frames of JSON events.
//!
//! Audio goes through the same speech-to-speech provider as WebRTC (`echo`), at 48 kHz;
//! any other rate is resampled on the way in by the pipeline's windowed-sinc [`Resampler`]
//! and on the way out by an integer-factor [`Decimator`] (all rates divide 48 kHz). Replies
//! go out as soon as the provider has a frame, looked for after each message the client
//! sends, and every 20 ms once the client has sent nothing for 60 ms, so a reply plays out
//! even while the client is quiet; the socket's own back-pressure paces what we send.
//!
//! Every edge has a limit ([`ws_rules`](super::ws_rules)): a message larger than the
//! session's `spec.audio.bufferSize` (96 000 bytes by default) is refused by the framing
//! layer before it is buffered; each send has a deadline; the server pings and expects a
//! pong in time. A client that breaks a rule is closed with a close code that says which,
//! and its slot is released.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use tokio::time::Instant;
use voice_proto::worker::v1::Connected;

use crate::connections::Claim;
use crate::media::echo::SpeechToSpeech;
use crate::media::resample::Decimator;
use crate::media::{FRAME_SAMPLES, Frame};
use crate::pipeline::audio::Resampler;
use crate::signaling::MediaContext;
use crate::transport::ws_rules::{
    Inbound, PONG_TIMEOUT, Received, TOO_BIG, Timing, Verdict, classify_within, verdict_for_axum,
};

/// Frames the echo holds before dropping the oldest: two seconds, since a WebSocket
/// client may send faster than real time.
#[cfg(test)]
const ECHO_FRAMES: usize = 100;

/// The pipeline's own rate: a client at this rate is not resampled.
const PIPELINE_HZ: u32 = 48_000;

/// The client's PCM16 sample rate: one of [`PCM_RATES`](voice_proto::session_audio::PCM_RATES).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate(u32);

impl Rate {
    /// 8 kHz: telephone audio (Twilio's μ-law is decoded to PCM16 at this rate).
    pub const TELEPHONE: Rate = Rate(8_000);

    /// `hz` if a WebSocket serves it.
    pub fn new(hz: u32) -> Option<Self> {
        voice_proto::session_audio::PCM_RATES
            .contains(&hz)
            .then_some(Rate(hz))
    }

    /// Samples per second.
    pub fn hz(self) -> u32 {
        self.0
    }
}

/// How one connection's audio is shaped: its rate and its largest inbound message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// The client's rate.
    pub rate: Rate,
    /// Largest inbound message in bytes (`spec.audio.bufferSize`).
    pub max_message: usize,
}

/// How a connection ended.
#[derive(Debug)]
pub(super) enum Ending {
    /// The server ended it (hang-up, slot released, shutdown): say goodbye.
    HungUp,
    /// The client closed, or the connection broke: nothing more can be said.
    PeerClosed,
    /// A send did not finish in time: the client stopped reading.
    SendTimeout,
    /// The client broke a rule: close with the verdict.
    Refused(Verdict),
}

impl Ending {
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Ending::HungUp => "HungUp",
            Ending::PeerClosed => "PeerClosed",
            Ending::SendTimeout => "SendTimeout",
            Ending::Refused(verdict) => verdict.reason,
        }
    }
}

/// Sends `message` within `timeout`; `Err` ends the connection.
pub(super) async fn send(
    socket: &mut WebSocket,
    message: Message,
    timeout: Duration,
) -> Result<(), Ending> {
    match tokio::time::timeout(timeout, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ending::PeerClosed),
        Err(_) => Err(Ending::SendTimeout),
    }
}

/// Closes with the verdict's code and text, the fix a client that broke a rule needs.
pub(super) async fn close_refused(socket: &mut WebSocket, verdict: Verdict, timeout: Duration) {
    let frame = CloseFrame {
        code: verdict.code,
        reason: verdict.message.into(),
    };
    let _ = send(socket, Message::Close(Some(frame)), timeout).await;
}

/// Serves one upgraded WebSocket until either side ends it, then frees the slot.
pub async fn serve(
    ctx: Arc<MediaContext>,
    mut claim: Claim,
    mut socket: WebSocket,
    shape: Shape,
    remote: SocketAddr,
) {
    let rate = shape.rate;
    let timing = ctx.websocket;
    let connected = Connected {
        participant: claim.participant.clone(),
        transport: claim.transport.to_proto().into(),
        remote_address: remote.to_string(),
        connection_id: claim.connection_id.clone(),
        format: Some(voice_proto::worker::v1::MediaFormat {
            codec: "pcm".to_owned(),
            sample_rate: rate.hz(),
            channels: 1,
            buffer_bytes: u32::try_from(shape.max_message).unwrap_or(u32::MAX),
        }),
    };
    if !ctx
        .sessions
        .connect(&claim.session_id, &claim.uid, connected, SystemTime::now())
    {
        let _ = send(&mut socket, Message::Close(None), timing.send_timeout).await;
        return;
    }
    claim.set_active();
    tracing::info!(session = %claim.session_id, connection = %claim.connection_id, %remote, rate = rate.hz(), "WebSocket client connected");
    let described = crate::pipeline::wiring::describe(ctx.sessions.pipeline_config().as_deref());
    let hello = serde_json::json!({
        "type": "connected",
        "session": claim.session_id,
        "connection_id": claim.connection_id,
        "transport": "websocket",
        "rate": rate.hz(),
        "format": "pcm16le",
        "maxMessageBytes": shape.max_message,
        "pipeline": described.pipeline,
        "provider": described.provider,
    });
    // The pipeline the session's configuration asks for (the diagnostic `echo` by default).
    let mut provider = crate::pipeline::wiring::for_session(
        &ctx.sessions,
        &claim.session_id,
        &claim.uid,
        &claim.participant,
    );
    provider.connected();
    let state = serde_json::json!({ "type": "state", "state": "LISTENING", "provider": described.provider });
    let mut pipeline = Pipeline::with_provider(rate, provider);
    let greeting = async {
        for message in [hello, state] {
            send(
                &mut socket,
                Message::Text(message.to_string().into()),
                timing.send_timeout,
            )
            .await?;
        }
        Ok(())
    }
    .await;
    let ending = match greeting {
        Err(ending) => ending,
        Ok(()) => {
            converse(
                &ctx,
                &claim,
                &mut socket,
                &mut pipeline,
                timing,
                shape.max_message,
            )
            .await
        }
    };
    match ending {
        Ending::HungUp => {
            let bye = serde_json::json!({ "type": "ended", "reason": "HungUp" });
            let goodbye = async {
                send(
                    &mut socket,
                    Message::Text(bye.to_string().into()),
                    timing.send_timeout,
                )
                .await?;
                send(&mut socket, Message::Close(None), timing.send_timeout).await
            };
            let _ = goodbye.await;
        }
        Ending::Refused(verdict) => close_refused(&mut socket, verdict, timing.send_timeout).await,
        Ending::PeerClosed | Ending::SendTimeout => {}
    }
    let reason = ending.reason();
    ctx.metrics.count_websocket_end(reason);
    drop(socket);
    // Dropped now: a multi-user room must not keep feeding a seat that left.
    drop(pipeline);
    let released = ctx
        .sessions
        .connection_ended(&mut claim, reason, SystemTime::now());
    tracing::info!(session = %claim.session_id, connection = %claim.connection_id, reason, ?released, "WebSocket session ended");
}

/// How long without client audio before the worker's own clock plays replies out: three
/// frames, so a streaming client's jitter never hands the clock over.
const CLIENT_QUIET: Duration = Duration::from_millis(60);

/// Sends the reply frames that are due and the pipeline's events (state changes,
/// transcripts) as text frames.
async fn flush(
    ctx: &MediaContext,
    socket: &mut WebSocket,
    pipeline: &mut Pipeline,
    timing: Timing,
) -> Result<(), Ending> {
    while let Some(reply) = pipeline.pull_bytes() {
        ctx.metrics.count_packet("websocket", "out", reply.len());
        send(socket, Message::Binary(reply.into()), timing.send_timeout).await?;
    }
    while let Some(event) = pipeline.provider.next_event() {
        send(socket, Message::Text(event.into()), timing.send_timeout).await?;
    }
    Ok(())
}

/// The media loop: client audio in, replies and events out, pings, until something ends it.
async fn converse(
    ctx: &MediaContext,
    claim: &Claim,
    socket: &mut WebSocket,
    pipeline: &mut Pipeline,
    timing: Timing,
    max_message: usize,
) -> Ending {
    let mut pings =
        tokio::time::interval_at(Instant::now() + timing.ping_interval, timing.ping_interval);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the unanswered ping must have its pong.
    let mut pong_due: Option<Instant> = None;
    // While the client streams, its frames clock the replies (each reply frame answers the
    // frame just received, which keeps barge-in within a frame of the user's voice). When
    // it goes quiet (push-to-talk, a muted microphone) the worker's own 20 ms clock takes
    // over, so the whole reply still plays and an agent's hang-up still comes after it.
    let mut playout = tokio::time::interval(crate::media::FRAME_PERIOD);
    playout.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_audio = Instant::now();
    loop {
        let due = pong_due;
        let pong_deadline = async move {
            match due {
                Some(due) => tokio::time::sleep_until(due).await,
                None => std::future::pending().await,
            }
        };
        let message = tokio::select! {
            () = claim.cancel.cancelled() => return Ending::HungUp,
            () = pong_deadline => return Ending::Refused(PONG_TIMEOUT),
            _ = pings.tick() => {
                if pong_due.is_none() {
                    pong_due = Some(Instant::now() + timing.pong_timeout);
                    if let Err(ending) = send(socket, Message::Ping(Default::default()), timing.send_timeout).await {
                        return ending;
                    }
                }
                continue;
            }
            _ = playout.tick() => {
                if last_audio.elapsed() >= CLIENT_QUIET
                    && let Err(ending) = flush(ctx, socket, pipeline, timing).await
                {
                    return ending;
                }
                continue;
            }
            message = socket.recv() => message,
        };
        let inbound = match &message {
            Some(Ok(Message::Binary(data))) => classify_within(Received::Binary(data), max_message),
            Some(Ok(Message::Text(text))) => {
                classify_within(Received::Text(text.as_str()), max_message)
            }
            Some(Ok(Message::Ping(_))) => classify_within(Received::Ping, max_message),
            Some(Ok(Message::Pong(_))) => classify_within(Received::Pong, max_message),
            Some(Ok(Message::Close(_))) | None => classify_within(Received::Close, max_message),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket receive failed");
                return verdict_for_axum(e).map_or(Ending::PeerClosed, Ending::Refused);
            }
        };
        match inbound {
            Inbound::Audio(data) => {
                last_audio = Instant::now();
                claim.touch_media();
                ctx.metrics.count_packet("websocket", "in", data.len());
                if pipeline.push_bytes(data) > 0 {
                    ctx.metrics
                        .for_connection(claim.media.dropped.clone())
                        .count_dropped("provider_queue_full");
                }
                if let Err(ending) = flush(ctx, socket, pipeline, timing).await {
                    return ending;
                }
            }
            Inbound::Pong => pong_due = None,
            Inbound::Ignore => {}
            Inbound::Closed => return Ending::PeerClosed,
            Inbound::Refuse(verdict) => {
                if verdict == TOO_BIG {
                    ctx.metrics.count_dropped("ws_message_too_large");
                }
                return Ending::Refused(verdict);
            }
        }
    }
}

/// Client PCM → 48 kHz frames → provider → client PCM (shared with the Twilio transport,
/// which decodes μ-law to PCM first).
pub(super) struct Pipeline {
    pub(super) provider: Box<dyn SpeechToSpeech>,
    /// An odd trailing byte of the last message (frames may split samples).
    carry: Option<u8>,
    samples: Vec<i16>,
    wide: Vec<i16>,
    /// Client rate → 48 kHz (a pass-through at 48 kHz).
    up: Resampler,
    /// 48 kHz → client rate.
    down: Decimator,
}

impl Pipeline {
    #[cfg(test)]
    fn new(rate: Rate) -> Self {
        Self::with_provider(rate, Box::new(crate::media::echo::Echo::new(ECHO_FRAMES)))
    }

    pub(super) fn with_provider(rate: Rate, provider: Box<dyn SpeechToSpeech>) -> Self {
        Self {
            provider,
            carry: None,
            samples: Vec::new(),
            wide: Vec::with_capacity(4 * FRAME_SAMPLES),
            up: Resampler::new(rate.hz(), PIPELINE_HZ),
            down: Decimator::new((PIPELINE_HZ / rate.hz()) as usize),
        }
    }

    /// Feeds client bytes; returns how many samples the provider dropped.
    fn push_bytes(&mut self, data: &[u8]) -> usize {
        self.samples.clear();
        let mut bytes = data.iter().copied();
        if let Some(low) = self.carry.take() {
            match bytes.next() {
                Some(high) => self.samples.push(i16::from_le_bytes([low, high])),
                None => self.carry = Some(low),
            }
        }
        let rest: Vec<u8> = bytes.collect();
        let mut pairs = rest.chunks_exact(2);
        self.samples
            .extend(pairs.by_ref().map(|p| i16::from_le_bytes([p[0], p[1]])));
        if let [odd] = pairs.remainder() {
            self.carry = Some(*odd);
        }
        let samples = std::mem::take(&mut self.samples);
        let dropped = self.push_samples(&samples);
        self.samples = samples;
        dropped
    }

    /// Feeds client samples; returns how many samples the provider dropped.
    pub(super) fn push_samples(&mut self, samples: &[i16]) -> usize {
        self.up.process(samples, &mut self.wide);
        let mut dropped = 0;
        while self.wide.len() >= FRAME_SAMPLES {
            let mut frame: Frame = [0; FRAME_SAMPLES];
            frame.copy_from_slice(&self.wide[..FRAME_SAMPLES]);
            self.wide.drain(..FRAME_SAMPLES);
            dropped += self.provider.push(&frame);
        }
        dropped
    }

    /// The next reply for the client, as PCM16 LE bytes at its rate.
    fn pull_bytes(&mut self) -> Option<Vec<u8>> {
        let narrow = self.pull_samples()?;
        Some(narrow.iter().flat_map(|s| s.to_le_bytes()).collect())
    }

    /// The next 20 ms reply for the client, as samples at its rate.
    pub(super) fn pull_samples(&mut self) -> Option<Vec<i16>> {
        let mut frame: Frame = [0; FRAME_SAMPLES];
        if !self.provider.pull(&mut frame) {
            return None;
        }
        let mut narrow = Vec::with_capacity(FRAME_SAMPLES);
        self.down.process(&frame, &mut narrow);
        Some(narrow)
    }
}

#[cfg(test)]
mod tests;
