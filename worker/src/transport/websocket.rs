//! WebSocket sessions for telephony bridges and server-to-server clients: binary frames
//! of PCM16 little-endian mono in and out at 16 or 48 kHz, text frames of JSON events.
//!
//! Audio goes through the same speech-to-speech provider as WebRTC (`echo`), at 48 kHz;
//! a 16 kHz client is resampled on the way in and out. Replies are sent as soon as the
//! provider has a frame: the client paces what it sends, and the socket's own
//! back-pressure paces what we send.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::ws::{Message, WebSocket};
use voice_proto::worker::v1::Connected;

use crate::connections::Claim;
use crate::media::echo::SpeechToSpeech;
use crate::media::resample::{Downsample3, Upsample3};
use crate::media::{FRAME_SAMPLES, Frame};
use crate::signaling::MediaContext;

/// Frames the echo holds before dropping the oldest: two seconds, since a WebSocket
/// client may send faster than real time.
#[cfg(test)]
const ECHO_FRAMES: usize = 100;

/// Largest binary message accepted: a second of 48 kHz PCM16.
const MAX_MESSAGE_BYTES: usize = 96_000;

/// The client's sample rate, chosen by the `rate` query parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    /// Wideband telephony.
    Hz16000,
    /// The pipeline's own rate: no resampling.
    Hz48000,
}

impl Rate {
    fn hz(self) -> u32 {
        match self {
            Rate::Hz16000 => 16_000,
            Rate::Hz48000 => 48_000,
        }
    }
}

/// Serves one upgraded WebSocket until either side ends it, then frees the slot.
pub async fn serve(
    ctx: Arc<MediaContext>,
    mut claim: Claim,
    mut socket: WebSocket,
    rate: Rate,
    remote: SocketAddr,
) {
    let connected = Connected {
        transport: claim.transport.to_proto().into(),
        remote_address: remote.to_string(),
        connection_id: claim.connection_id.clone(),
    };
    if !ctx
        .sessions
        .connect(&claim.session_id, &claim.uid, connected, SystemTime::now())
    {
        let _ = socket.send(Message::Close(None)).await;
        return;
    }
    claim.set_active();
    tracing::info!(session = %claim.session_id, connection = %claim.connection_id, %remote, rate = rate.hz(), "WebSocket client connected");
    let hello = serde_json::json!({
        "type": "connected",
        "session": claim.session_id,
        "connection_id": claim.connection_id,
        "transport": "websocket",
        "rate": rate.hz(),
        "format": "pcm16le",
    });
    // The pipeline the session's configuration asks for (the diagnostic `echo` by default).
    let mut provider =
        crate::pipeline::wiring::for_session(&ctx.sessions, &claim.session_id, &claim.uid);
    provider.connected();
    let state =
        serde_json::json!({ "type": "state", "state": "LISTENING", "provider": provider.name() });
    let mut reason = "HungUp";
    for message in [hello, state] {
        if socket
            .send(Message::Text(message.to_string().into()))
            .await
            .is_err()
        {
            reason = "PeerClosed";
        }
    }
    let mut pipeline = Pipeline::with_provider(rate, provider);
    while reason == "HungUp" {
        let message = tokio::select! {
            () = claim.cancel.cancelled() => break,
            message = socket.recv() => message,
        };
        match message {
            Some(Ok(Message::Binary(data))) => {
                if data.len() > MAX_MESSAGE_BYTES {
                    ctx.metrics.count_dropped("ws_message_too_large");
                    continue;
                }
                ctx.metrics.count_packet("websocket", "in", data.len());
                if pipeline.push_bytes(&data) > 0 {
                    ctx.metrics.count_dropped("provider_queue_full");
                }
                while let Some(reply) = pipeline.pull_bytes() {
                    ctx.metrics.count_packet("websocket", "out", reply.len());
                    if socket.send(Message::Binary(reply.into())).await.is_err() {
                        reason = "PeerClosed";
                        break;
                    }
                }
                // Pipeline events (state changes, transcripts) as text frames.
                while let Some(event) = pipeline.provider.next_event() {
                    if socket.send(Message::Text(event.into())).await.is_err() {
                        reason = "PeerClosed";
                        break;
                    }
                }
            }
            Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(_))) | None => reason = "PeerClosed",
            Some(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket receive failed");
                reason = "PeerClosed";
            }
        }
    }
    if reason == "HungUp" {
        let bye = serde_json::json!({ "type": "ended", "reason": "HungUp" });
        let _ = socket.send(Message::Text(bye.to_string().into())).await;
        let _ = socket.send(Message::Close(None)).await;
    }
    let (released, _) =
        ctx.sessions
            .release(&claim.session_id, &claim.uid, reason, SystemTime::now());
    tracing::info!(session = %claim.session_id, connection = %claim.connection_id, reason, ?released, "WebSocket session ended");
}

/// Client PCM → 48 kHz frames → provider → client PCM.
struct Pipeline {
    rate: Rate,
    provider: Box<dyn SpeechToSpeech>,
    /// An odd trailing byte of the last message (frames may split samples).
    carry: Option<u8>,
    samples: Vec<i16>,
    wide: Vec<i16>,
    up: Upsample3,
    down: Downsample3,
}

impl Pipeline {
    #[cfg(test)]
    fn new(rate: Rate) -> Self {
        Self::with_provider(rate, Box::new(crate::media::echo::Echo::new(ECHO_FRAMES)))
    }

    fn with_provider(rate: Rate, provider: Box<dyn SpeechToSpeech>) -> Self {
        Self {
            rate,
            provider,
            carry: None,
            samples: Vec::new(),
            wide: Vec::with_capacity(4 * FRAME_SAMPLES),
            up: Upsample3::default(),
            down: Downsample3::default(),
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
        match self.rate {
            Rate::Hz48000 => self.wide.extend_from_slice(&self.samples),
            Rate::Hz16000 => self.up.process(&self.samples, &mut self.wide),
        }
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
        let mut frame: Frame = [0; FRAME_SAMPLES];
        if !self.provider.pull(&mut frame) {
            return None;
        }
        let mut narrow = Vec::new();
        let samples: &[i16] = match self.rate {
            Rate::Hz48000 => &frame,
            Rate::Hz16000 => {
                self.down.process(&frame, &mut narrow);
                &narrow
            }
        };
        Some(samples.iter().flat_map(|s| s.to_le_bytes()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(samples: impl Iterator<Item = i16>) -> Vec<u8> {
        samples.flat_map(|s| s.to_le_bytes()).collect()
    }

    #[test]
    fn samples_split_across_messages_are_joined() {
        let mut pipeline = Pipeline::new(Rate::Hz48000);
        let data = bytes((0..FRAME_SAMPLES as i16).map(|i| i * 3));
        // Split in the middle of a sample.
        pipeline.push_bytes(&data[..101]);
        assert!(
            pipeline.pull_bytes().is_none(),
            "half a frame is not a frame"
        );
        pipeline.push_bytes(&data[101..]);
        assert_eq!(pipeline.pull_bytes(), Some(data));
    }

    #[test]
    fn a_16_khz_client_gets_16_khz_back() {
        let mut pipeline = Pipeline::new(Rate::Hz16000);
        // 20 ms at 16 kHz is 320 samples → one 48 kHz frame → 320 samples back.
        pipeline.push_bytes(&bytes(std::iter::repeat_n(1_000, 320)));
        let reply = pipeline.pull_bytes().unwrap_or_default();
        assert_eq!(reply.len(), 640);
    }
}
