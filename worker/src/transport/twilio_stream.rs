//! A Twilio Media Streams connection (`spec.transport: twilio`): the caller's μ-law audio
//! in, the session's pipeline, μ-law replies out, on the protocol of [`twilio_media`].
//!
//! The upgrade is accepted for a session this worker holds; the join token then arrives in
//! the `start` message (the `<Stream>`'s `<Parameter name="token">`), which must come
//! within [`HANDSHAKE`]. Only then is the connection admitted and the pipeline started, so
//! no audio reaches a pipeline before its caller is known.
//!
//! Twilio buffers what we send and plays it in real time. Replies go out as the pipeline
//! makes them, clocked by the caller's frames (Twilio sends one every 20 ms, silence
//! included) and by the worker's own 20 ms clock when they stop. At the end of each reply we
//! send a `mark`; Twilio echoes it when the reply has played. When the pipeline reports a
//! barge-in we send `clear`, so Twilio drops what it buffered and the caller hears the
//! agent stop at once.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use tokio::time::Instant;
use voice_proto::worker::v1::Connected;

use super::twilio_media::{self, FromTwilio, Start};
use super::twilio_quality::StreamQuality;
use super::websocket::{Ending, Pipeline, Rate, close_refused, send};
use super::ws_rules::{PONG_TIMEOUT, Verdict, verdict_for_axum};
use crate::connections::{Claim, Transport};
use crate::signaling::{Admitted, MediaContext, admit};

/// How long Twilio has, after the upgrade, to send `start`.
pub const HANDSHAKE: Duration = Duration::from_secs(10);

/// Largest message accepted from Twilio: its `media` messages are about 300 bytes and its
/// `start` a few hundred more; a peer sending more is not Twilio.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The transport label in metrics and logs.
const LABEL: &str = "twilio";

/// How long without caller audio before the worker's own clock plays replies out.
const CALLER_QUIET: Duration = Duration::from_millis(60);

/// Serves one upgraded Twilio stream for `session_id` until either side ends it.
pub async fn serve(
    ctx: Arc<MediaContext>,
    session_id: String,
    mut socket: WebSocket,
    remote: SocketAddr,
) {
    let timing = ctx.websocket;
    let start = match tokio::time::timeout(HANDSHAKE, handshake(&mut socket)).await {
        Ok(Ok(start)) => start,
        Ok(Err(refusal)) => return refuse(&ctx, socket, &session_id, refusal).await,
        Err(_) => {
            let refusal = Refusal::new(
                1008,
                "StartTimeout",
                "no start message within 10 s of the upgrade".into(),
            );
            return refuse(&ctx, socket, &session_id, refusal).await;
        }
    };
    let claim = admit(&ctx, &session_id, start.token())
        .map_err(|e| Refusal::from_signaling(&e))
        .and_then(
            |Admitted {
                 uid, participant, ..
             }| {
                ctx.connections
                    .claim(&session_id, &uid, &participant, Transport::Twilio)
                    .map_err(|e| Refusal::new(1008, "AlreadyConnected", e.to_string()))
            },
        );
    let mut claim = match claim {
        Ok(claim) => claim,
        Err(refusal) => return refuse(&ctx, socket, &session_id, refusal).await,
    };
    let connected = Connected {
        participant: claim.participant.clone(),
        transport: claim.transport.to_proto().into(),
        remote_address: remote.to_string(),
        connection_id: claim.connection_id.clone(),
        format: Some(voice_proto::worker::v1::MediaFormat {
            codec: "pcmu".to_owned(),
            sample_rate: twilio_media::SAMPLE_RATE,
            channels: 1,
            buffer_bytes: u32::try_from(MAX_MESSAGE_BYTES).unwrap_or(u32::MAX),
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
    tracing::info!(session = %claim.session_id, connection = %claim.connection_id, call = %start.call_sid, stream = %start.stream_sid, %remote, "Twilio stream connected");
    let mut provider = crate::pipeline::wiring::for_session(
        &ctx.sessions,
        &claim.session_id,
        &claim.uid,
        &claim.participant,
    );
    provider.connected();
    let mut call = Call {
        pipeline: Pipeline::with_provider(Rate::TELEPHONE, provider),
        stream_sid: start.stream_sid,
        replying: false,
        replies: 0,
        unplayed: BTreeSet::new(),
        quality: StreamQuality::default(),
    };
    let ending = converse(&ctx, &claim, &mut socket, &mut call).await;
    match &ending {
        Ending::HungUp => {
            let _ = send(&mut socket, Message::Close(None), timing.send_timeout).await;
        }
        Ending::Refused(verdict) => close_refused(&mut socket, *verdict, timing.send_timeout).await,
        Ending::PeerClosed | Ending::SendTimeout => {}
    }
    let reason = ending.reason();
    ctx.metrics.count_websocket_end(reason);
    drop(socket);
    drop(call);
    let released = ctx
        .sessions
        .connection_ended(&mut claim, reason, SystemTime::now());
    tracing::info!(session = %claim.session_id, connection = %claim.connection_id, reason, ?released, "Twilio stream ended");
}

/// Why a stream was closed before its pipeline started: the close code, the stable reason
/// counted in metrics, and the text (which names the fix).
#[derive(Debug)]
struct Refusal {
    code: u16,
    reason: &'static str,
    message: String,
}

impl Refusal {
    fn new(code: u16, reason: &'static str, message: String) -> Self {
        Self {
            code,
            reason,
            message,
        }
    }

    fn from_signaling(error: &crate::signaling::SignalingError) -> Self {
        // 1013 "try again later" for a draining worker; every other refusal is policy.
        let code = if error.status().as_u16() == 503 {
            1013
        } else {
            1008
        };
        let mut message = error.to_string();
        if error.reason() == "TokenMissing" {
            message = format!(
                "start.customParameters.token is missing: add <Parameter name=\"{}\" value=\"<join token>\"/> to the <Stream>",
                twilio_media::TOKEN_PARAMETER
            );
        }
        Self::new(code, error.reason(), message)
    }
}

/// Closes a stream that was not admitted, with a close frame that says why.
async fn refuse(ctx: &MediaContext, mut socket: WebSocket, session_id: &str, refusal: Refusal) {
    tracing::info!(session = %session_id, reason = refusal.reason, message = %refusal.message, "Twilio stream refused");
    ctx.metrics.count_websocket_end(refusal.reason);
    let frame = CloseFrame {
        code: refusal.code,
        reason: close_reason(&refusal.message).into(),
    };
    let _ = send(
        &mut socket,
        Message::Close(Some(frame)),
        ctx.websocket.send_timeout,
    )
    .await;
}

/// A close frame's reason is at most 123 bytes (RFC 6455 §5.5): cut at a character boundary.
fn close_reason(message: &str) -> String {
    let mut end = message.len().min(123);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_owned()
}

/// Reads `connected` and `start`; anything else first is a refusal.
async fn handshake(socket: &mut WebSocket) -> Result<Start, Refusal> {
    loop {
        let text = match socket.recv().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Binary(_))) => {
                return Err(Refusal::new(
                    1003,
                    "BinaryUnsupported",
                    "Twilio Media Streams messages are JSON text frames".into(),
                ));
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                return Err(Refusal::new(
                    1000,
                    "PeerClosed",
                    "closed before start".into(),
                ));
            }
        };
        match twilio_media::parse(&text) {
            Ok(FromTwilio::Connected | FromTwilio::Ignored) => {}
            Ok(FromTwilio::Start(start)) => return Ok(start),
            Ok(_) => {
                return Err(Refusal::new(
                    1002,
                    "StartExpected",
                    "media, mark, dtmf or stop came before start".into(),
                ));
            }
            Err(e @ twilio_media::ProtocolError::Format { .. }) => {
                return Err(Refusal::new(1003, "MediaFormatUnsupported", e.to_string()));
            }
            Err(e) => return Err(Refusal::new(1002, "ProtocolError", e.to_string())),
        }
    }
}

/// One admitted call: its pipeline and what Twilio has been sent.
struct Call {
    pipeline: Pipeline,
    stream_sid: String,
    /// Reply audio was sent since the last mark.
    replying: bool,
    /// Replies marked so far (names the marks).
    replies: u64,
    /// Marks Twilio has not echoed yet: reply audio it may still be playing.
    unplayed: BTreeSet<String>,
    /// Missing chunks and jitter of the caller's audio.
    quality: StreamQuality,
}

/// Sends the due reply audio, a mark after each reply, and `clear` on barge-in.
async fn flush(ctx: &MediaContext, socket: &mut WebSocket, call: &mut Call) -> Result<(), Ending> {
    let timeout = ctx.websocket.send_timeout;
    while let Some(samples) = call.pipeline.pull_samples() {
        let mulaw = twilio_media::encode(&samples);
        ctx.metrics.count_packet(LABEL, "out", mulaw.len());
        call.replying = true;
        let message = twilio_media::media(&call.stream_sid, &mulaw);
        send(socket, Message::Text(message.into()), timeout).await?;
    }
    while let Some(event) = call.pipeline.provider.next_event() {
        let event: serde_json::Value = serde_json::from_str(&event).unwrap_or_default();
        if event["type"] == "interrupted" {
            call.replying = false;
            call.unplayed.clear();
            let message = twilio_media::clear(&call.stream_sid);
            send(socket, Message::Text(message.into()), timeout).await?;
        } else if event["type"] == "state" && event["state"] != "SPEAKING" && call.replying {
            call.replying = false;
            call.replies += 1;
            let name = format!("reply-{}", call.replies);
            let message = twilio_media::mark(&call.stream_sid, &name);
            call.unplayed.insert(name);
            send(socket, Message::Text(message.into()), timeout).await?;
        }
    }
    Ok(())
}

/// The media loop: caller audio in, replies out, pings, until something ends it.
async fn converse(
    ctx: &MediaContext,
    claim: &Claim,
    socket: &mut WebSocket,
    call: &mut Call,
) -> Ending {
    let timing = ctx.websocket;
    let mut pings =
        tokio::time::interval_at(Instant::now() + timing.ping_interval, timing.ping_interval);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pong_due: Option<Instant> = None;
    let mut playout = tokio::time::interval(crate::media::FRAME_PERIOD);
    playout.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_audio = Instant::now();
    // Drops are counted for the metrics and for the connection (status.audioBuffers).
    let connection = ctx.metrics.for_connection(claim.media.dropped.clone());
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
                if last_audio.elapsed() >= CALLER_QUIET && let Err(ending) = flush(ctx, socket, call).await {
                    return ending;
                }
                continue;
            }
            message = socket.recv() => message,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Pong(_))) => {
                pong_due = None;
                continue;
            }
            Some(Ok(Message::Ping(_))) => continue,
            Some(Ok(Message::Binary(_))) => return Ending::Refused(BINARY),
            Some(Ok(Message::Close(_))) | None => return Ending::PeerClosed,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "Twilio stream receive failed");
                return verdict_for_axum(&e).map_or(Ending::PeerClosed, Ending::Refused);
            }
        };
        match twilio_media::parse(&text) {
            Ok(FromTwilio::Media(media)) => {
                last_audio = Instant::now();
                claim.touch_media();
                ctx.metrics.count_packet(LABEL, "in", media.mulaw.len());
                let missing = call
                    .quality
                    .observe(media.chunk, media.timestamp_ms, last_audio);
                for _ in 0..missing {
                    connection.count_dropped("twilio_chunk_missing");
                }
                if let Some(report) = call.quality.report(last_audio) {
                    ctx.metrics.observe_reception_report(
                        LABEL,
                        report.fraction_lost,
                        report.jitter,
                    );
                }
                if call
                    .pipeline
                    .push_samples(&twilio_media::decode(&media.mulaw))
                    > 0
                {
                    connection.count_dropped("provider_queue_full");
                }
                if let Err(ending) = flush(ctx, socket, call).await {
                    return ending;
                }
            }
            Ok(FromTwilio::Mark(name)) => {
                if call.unplayed.remove(&name) {
                    tracing::debug!(session = %claim.session_id, mark = %name, "reply played to the caller");
                }
            }
            Ok(FromTwilio::Dtmf(digit)) => {
                ctx.metrics.count_packet(LABEL, "dtmf", digit.len());
                // Twilio sends one key per message; anything else is not a key.
                let key = digit.chars().next().filter(|c| {
                    digit.len() == 1 && (c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D'))
                });
                let taken = key.is_some_and(|k| call.pipeline.provider.dtmf(k));
                tracing::info!(session = %claim.session_id, %digit, taken, "caller pressed a key");
                if let Err(ending) = flush(ctx, socket, call).await {
                    return ending;
                }
            }
            Ok(FromTwilio::Stop) => return Ending::Refused(STOPPED),
            Ok(FromTwilio::Connected | FromTwilio::Start(_) | FromTwilio::Ignored) => {}
            Err(e) => {
                tracing::info!(session = %claim.session_id, error = %e, "Twilio stream sent a message it cannot use");
                return Ending::Refused(PROTOCOL);
            }
        }
    }
}

/// Twilio sends only text frames.
const BINARY: Verdict = Verdict {
    code: 1003,
    reason: "BinaryUnsupported",
    message: "Twilio Media Streams messages are JSON text frames",
};

/// Twilio ended the stream (the caller hung up, or the TwiML moved on).
const STOPPED: Verdict = Verdict {
    code: 1000,
    reason: "StreamStopped",
    message: "stop received",
};

/// A message that is not Twilio Media Streams.
const PROTOCOL: Verdict = Verdict {
    code: 1002,
    reason: "ProtocolError",
    message: "a message was not Twilio Media Streams JSON",
};
