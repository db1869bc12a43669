//! The Twilio Media Streams protocol, apart from any I/O: what each message from Twilio
//! means, the messages we send back, and G.711 μ-law to and from PCM16.
//!
//! A TwiML `<Connect><Stream url="wss://…/v1/sessions/{ns}/{name}/twilio">` opens a
//! bidirectional stream. Twilio sends JSON text frames: `connected`, then `start` (the
//! stream and call ids, the media format, and the `<Parameter>`s of the `<Stream>` as
//! `customParameters`), then `media` every 20 ms (base64 μ-law at 8 kHz, 160 bytes),
//! `dtmf` for a key press, `mark` when audio we sent before a mark has played, and `stop`
//! when the stream or the call ends. We send `media` (base64 μ-law), `mark` (a label
//! Twilio echoes once the audio before it has played) and `clear` (drop the audio Twilio
//! has buffered but not played: barge-in).
//!
//! Twilio cannot put a token in the URL of a `<Stream>` (it refuses query strings) or in a
//! header, so the join token travels as the `<Parameter name="token">` of the `<Stream>`.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;

/// The `<Parameter>` of the `<Stream>` that carries the session's join token.
pub const TOKEN_PARAMETER: &str = "token";

/// The only media format Twilio streams: μ-law at 8 kHz, mono.
pub const ENCODING: &str = "audio/x-mulaw";

/// Twilio's sample rate.
pub const SAMPLE_RATE: u32 = 8_000;

/// Why a message from Twilio cannot be used. The text names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Not a JSON object with an `event`.
    #[error("a Twilio Media Streams message must be a JSON object with an \"event\": {0}")]
    NotJson(String),
    /// A known event without a field it needs.
    #[error("{0} is missing or not a string")]
    Missing(&'static str),
    /// `media.payload` is not base64.
    #[error("media.payload is not base64: {0}")]
    BadPayload(String),
    /// The stream does not carry μ-law at 8 kHz mono.
    #[error(
        "start.mediaFormat is {encoding} at {rate} Hz with {channels} channel(s); only audio/x-mulaw at 8000 Hz mono is served"
    )]
    Format {
        /// `start.mediaFormat.encoding`.
        encoding: String,
        /// `start.mediaFormat.sampleRate`.
        rate: u32,
        /// `start.mediaFormat.channels`.
        channels: u32,
    },
}

/// The stream, as the `start` message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// `streamSid`: named in every message we send.
    pub stream_sid: String,
    /// `start.callSid`: the call, for logs.
    pub call_sid: String,
    /// `start.customParameters`: the `<Parameter>`s of the `<Stream>`.
    pub parameters: BTreeMap<String, String>,
}

impl Start {
    /// The join token the TwiML passed as `<Parameter name="token">`.
    pub fn token(&self) -> Option<&str> {
        self.parameters
            .get(TOKEN_PARAMETER)
            .map(String::as_str)
            .filter(|t| !t.is_empty())
    }
}

/// One `media` message's audio and where it sits in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// μ-law bytes at 8 kHz.
    pub mulaw: Vec<u8>,
    /// `media.chunk`: counts the stream's media messages from 1.
    pub chunk: Option<u64>,
    /// `media.timestamp`: milliseconds since the stream started.
    pub timestamp_ms: Option<u64>,
}

/// One message from Twilio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromTwilio {
    /// The WebSocket is up; `start` follows.
    Connected,
    /// The stream starts.
    Start(Start),
    /// Caller audio (`track` `inbound`); other tracks are [`Ignored`](Self::Ignored).
    Media(Media),
    /// Audio sent before our mark of this name has played.
    Mark(String),
    /// The caller pressed a key.
    Dtmf(String),
    /// The stream or the call ended.
    Stop,
    /// An event this worker does not act on (another track's media, a future event).
    Ignored,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    event: String,
    #[serde(default)]
    stream_sid: Option<String>,
    #[serde(default)]
    start: Option<WireStart>,
    #[serde(default)]
    media: Option<WireMedia>,
    #[serde(default)]
    mark: Option<WireMark>,
    #[serde(default)]
    dtmf: Option<WireDtmf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireStart {
    #[serde(default)]
    stream_sid: Option<String>,
    #[serde(default)]
    call_sid: Option<String>,
    #[serde(default)]
    media_format: Option<WireFormat>,
    #[serde(default)]
    custom_parameters: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireFormat {
    encoding: String,
    sample_rate: u32,
    channels: u32,
}

#[derive(Deserialize)]
struct WireMedia {
    #[serde(default)]
    track: Option<String>,
    #[serde(default)]
    chunk: Option<serde_json::Value>,
    #[serde(default)]
    timestamp: Option<serde_json::Value>,
    payload: Option<String>,
}

#[derive(Deserialize)]
struct WireMark {
    name: Option<String>,
}

#[derive(Deserialize)]
struct WireDtmf {
    digit: Option<String>,
}

/// Reads one text frame from Twilio.
pub fn parse(text: &str) -> Result<FromTwilio, ProtocolError> {
    let wire: Wire =
        serde_json::from_str(text).map_err(|e| ProtocolError::NotJson(e.to_string()))?;
    Ok(match wire.event.as_str() {
        "connected" => FromTwilio::Connected,
        "start" => {
            let start = wire.start.ok_or(ProtocolError::Missing("start"))?;
            let format = start
                .media_format
                .ok_or(ProtocolError::Missing("start.mediaFormat"))?;
            if format.encoding != ENCODING
                || format.sample_rate != SAMPLE_RATE
                || format.channels != 1
            {
                return Err(ProtocolError::Format {
                    encoding: format.encoding,
                    rate: format.sample_rate,
                    channels: format.channels,
                });
            }
            let stream_sid = start
                .stream_sid
                .or(wire.stream_sid)
                .filter(|s| !s.is_empty())
                .ok_or(ProtocolError::Missing("start.streamSid"))?;
            // Twilio sends parameter values as strings; anything else is kept as its JSON.
            let parameters = start
                .custom_parameters
                .into_iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => (k, s),
                    other => (k, other.to_string()),
                })
                .collect();
            FromTwilio::Start(Start {
                stream_sid,
                call_sid: start.call_sid.unwrap_or_default(),
                parameters,
            })
        }
        "media" => {
            let media = wire.media.ok_or(ProtocolError::Missing("media"))?;
            // A bidirectional stream carries only the caller's track; an `outbound` track
            // (a unidirectional `<Start><Stream track="both_tracks">`) is our own voice.
            if media.track.as_deref().is_some_and(|t| t != "inbound") {
                return Ok(FromTwilio::Ignored);
            }
            let payload = media
                .payload
                .ok_or(ProtocolError::Missing("media.payload"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(payload)
                .map_err(|e| ProtocolError::BadPayload(e.to_string()))?;
            FromTwilio::Media(Media {
                mulaw: bytes,
                chunk: media.chunk.as_ref().and_then(count),
                timestamp_ms: media.timestamp.as_ref().and_then(count),
            })
        }
        "mark" => FromTwilio::Mark(
            wire.mark
                .and_then(|m| m.name)
                .ok_or(ProtocolError::Missing("mark.name"))?,
        ),
        "dtmf" => FromTwilio::Dtmf(
            wire.dtmf
                .and_then(|d| d.digit)
                .ok_or(ProtocolError::Missing("dtmf.digit"))?,
        ),
        "stop" => FromTwilio::Stop,
        _ => FromTwilio::Ignored,
    })
}

/// A count Twilio sends as a decimal string (or, leniently, a JSON number).
fn count(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::String(s) => s.parse().ok(),
        other => other.as_u64(),
    }
}

/// A `media` message carrying `mulaw` to the caller.
pub fn media(stream_sid: &str, mulaw: &[u8]) -> String {
    let payload = base64::engine::general_purpose::STANDARD.encode(mulaw);
    serde_json::json!({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})
        .to_string()
}

/// A `mark` message: Twilio echoes it once the audio sent before it has played.
pub fn mark(stream_sid: &str, name: &str) -> String {
    serde_json::json!({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})
        .to_string()
}

/// A `clear` message: Twilio drops the audio it has buffered, and echoes every pending mark.
pub fn clear(stream_sid: &str) -> String {
    serde_json::json!({"event": "clear", "streamSid": stream_sid}).to_string()
}

/// μ-law bytes to PCM16 samples.
pub fn decode(mulaw: &[u8]) -> Vec<i16> {
    mulaw
        .iter()
        .map(|b| audio_codec_algorithms::decode_ulaw(*b))
        .collect()
}

/// PCM16 samples to μ-law bytes.
pub fn encode(samples: &[i16]) -> Vec<u8> {
    samples
        .iter()
        .map(|s| audio_codec_algorithms::encode_ulaw(*s))
        .collect()
}

#[cfg(test)]
mod tests;
