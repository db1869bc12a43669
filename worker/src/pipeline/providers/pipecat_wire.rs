//! The WebSocket to a Pipecat bot: Pipecat's own protobuf frames (`ProtobufFrameSerializer`,
//! `pipecat/frames/frames.proto` in the `pipecat-ai` wheel) after one JSON text message that
//! describes the session (`sdk/pipecat`, docs/pipecat.md).
//!
//! Only what the bridge uses is declared: audio both ways, the interruption that drops queued
//! reply audio, and transport messages, whose JSON carries RTVI (the messages a Pipecat
//! `PipelineTask` sends by default) and the SDK's own `voice-operator` messages.

use futures::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{ErrorKind, MAX_REALTIME_MESSAGE_BYTES, ProviderError};
use crate::media::SAMPLE_RATE;
use crate::pipeline::audio::Resampler;

pub(super) const NAME: &str = "pipecat";

/// Rate of the caller's audio on the socket: what Pipecat's STT and VAD expect by default.
pub(super) const BOT_INPUT_RATE: u32 = 16_000;

/// The SDK's `protocol` version this worker speaks.
pub(super) const PROTOCOL: u32 = 1;

/// Pipecat's `pipecat.Frame` (a oneof of the frames below).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    /// Which frame.
    #[prost(oneof = "Kind", tags = "2, 4, 5")]
    pub kind: Option<Kind>,
}

/// The `frame` oneof; text and transcription frames (tags 1 and 3) are not used here.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    /// Raw PCM.
    #[prost(message, tag = "2")]
    Audio(AudioRawFrame),
    /// A JSON transport message.
    #[prost(message, tag = "4")]
    Message(MessageFrame),
    /// Drop the audio queued for playout.
    #[prost(message, tag = "5")]
    Interruption(InterruptionFrame),
}

/// `pipecat.AudioRawFrame`: little-endian 16-bit PCM.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AudioRawFrame {
    /// Frame id (unused).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Frame name (unused).
    #[prost(string, tag = "2")]
    pub name: String,
    /// The samples.
    #[prost(bytes = "vec", tag = "3")]
    pub audio: Vec<u8>,
    /// Samples per second.
    #[prost(uint32, tag = "4")]
    pub sample_rate: u32,
    /// Interleaved channels.
    #[prost(uint32, tag = "5")]
    pub num_channels: u32,
}

/// `pipecat.MessageFrame`: a JSON document.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MessageFrame {
    /// The JSON text.
    #[prost(string, tag = "1")]
    pub data: String,
}

/// `pipecat.InterruptionFrame`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InterruptionFrame {
    /// Frame id (unused).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Frame name (unused).
    #[prost(string, tag = "2")]
    pub name: String,
}

/// What the bot said, decoded.
#[derive(Debug, PartialEq)]
pub(super) enum BotEvent {
    /// The user's turn began (RTVI `user-started-speaking`).
    UserStarted,
    /// The user's turn ended (RTVI `user-stopped-speaking`).
    UserStopped,
    /// Reply audio at 48 kHz.
    Audio(Vec<i16>),
    /// Drop queued reply audio (an `InterruptionFrame` or RTVI `bot-interrupted`).
    Interrupted,
    /// The bot finished speaking (RTVI `bot-stopped-speaking`).
    BotStopped,
    /// A final transcript: `user` (RTVI `user-transcription`) or `agent` (`bot-output`).
    Transcript(&'static str, String),
    /// Conversation state to persist with the session.
    Context(String),
    /// The bot hung up.
    Hangup(String),
    /// The connection failed or the bot broke the protocol.
    Failed(ProviderError),
}

fn error(kind: ErrorKind, message: impl Into<String>) -> ProviderError {
    ProviderError::new(NAME, kind, message)
}

/// Decodes one binary message; `up` turns the bot's audio into 48 kHz (rebuilt when the
/// bot's rate changes). Unknown message kinds are ignored, as Pipecat's clients do.
pub(super) fn decode(
    bytes: &[u8],
    up: &mut Option<(u32, Resampler)>,
) -> Result<Vec<BotEvent>, ProviderError> {
    let frame = Frame::decode(bytes)
        .map_err(|e| error(ErrorKind::Malformed, format!("not a Pipecat frame: {e}")))?;
    Ok(match frame.kind {
        None => Vec::new(),
        Some(Kind::Interruption(_)) => vec![BotEvent::Interrupted],
        Some(Kind::Audio(audio)) => {
            if audio.num_channels > 1 {
                return Err(error(
                    ErrorKind::Malformed,
                    format!("{} audio channels: send mono", audio.num_channels),
                ));
            }
            if !(8_000..=48_000).contains(&audio.sample_rate) {
                return Err(error(
                    ErrorKind::Malformed,
                    format!("sample rate {} is outside 8000-48000", audio.sample_rate),
                ));
            }
            let samples = crate::pipeline::audio::samples_from_le(&audio.audio);
            let resampler = match up {
                Some((rate, r)) if *rate == audio.sample_rate => r,
                _ => {
                    &mut up
                        .insert((
                            audio.sample_rate,
                            Resampler::new(audio.sample_rate, SAMPLE_RATE),
                        ))
                        .1
                }
            };
            let mut wide = Vec::with_capacity(samples.len() * 6 + 2);
            resampler.process(&samples, &mut wide);
            vec![BotEvent::Audio(wide)]
        }
        Some(Kind::Message(message)) => message_event(&message.data).into_iter().collect(),
    })
}

/// Maps one transport message's JSON to an event.
fn message_event(data: &str) -> Option<BotEvent> {
    let value: serde_json::Value = serde_json::from_str(data).ok()?;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().trim().to_owned();
    match (value["label"].as_str()?, value["type"].as_str()?) {
        ("rtvi-ai", "user-started-speaking") => Some(BotEvent::UserStarted),
        ("rtvi-ai", "user-stopped-speaking") => Some(BotEvent::UserStopped),
        ("rtvi-ai", "bot-interrupted") => Some(BotEvent::Interrupted),
        ("rtvi-ai", "bot-stopped-speaking") => Some(BotEvent::BotStopped),
        ("rtvi-ai", "user-transcription") if value["data"]["final"] == true => {
            Some(BotEvent::Transcript("user", text(&value["data"]["text"])))
        }
        // Text as it is spoken, a sentence at a time.
        ("rtvi-ai", "bot-output") if value["data"]["spoken"] == true => {
            Some(BotEvent::Transcript("agent", text(&value["data"]["text"])))
        }
        ("voice-operator", "context") => Some(BotEvent::Context(value["context"].to_string())),
        ("voice-operator", "hangup") => Some(BotEvent::Hangup(text(&value["reason"]))),
        _ => None,
    }
}

/// The caller's audio (16 kHz) as a binary message.
pub(super) fn encode_audio(samples: &[i16]) -> Vec<u8> {
    Frame {
        kind: Some(Kind::Audio(AudioRawFrame {
            audio: samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
            sample_rate: BOT_INPUT_RATE,
            num_channels: 1,
            ..AudioRawFrame::default()
        })),
    }
    .encode_to_vec()
}

/// Connects, sends `hello`, then relays audio out and events in until either side ends.
pub(super) async fn converse(
    url: &str,
    hello: &serde_json::Value,
    audio: &mut mpsc::Receiver<Vec<i16>>,
    events: &mpsc::Sender<BotEvent>,
) -> Result<(), ProviderError> {
    let request = url
        .into_client_request()
        .map_err(|e| error(ErrorKind::Config, format!("bad bot URL {url:?}: {e}")))?;
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_REALTIME_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_REALTIME_MESSAGE_BYTES));
    let (socket, _) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio_tungstenite::connect_async_with_config(request, Some(config), false),
    )
    .await
    .map_err(|_| {
        error(
            ErrorKind::Timeout,
            "the bot did not answer the WebSocket handshake in 10 s",
        )
    })?
    .map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => error(
            ErrorKind::Status(r.status().as_u16()),
            format!("the bot refused the session: HTTP {}", r.status()),
        ),
        other => error(
            ErrorKind::Unavailable,
            format!("cannot reach the bot at {url}: {other}"),
        ),
    })?;
    let (mut tx, mut rx) = socket.split();
    let broken = |e: tokio_tungstenite::tungstenite::Error| {
        error(
            ErrorKind::Unavailable,
            format!("the bot connection broke: {e}"),
        )
    };
    tx.send(Message::Text(hello.to_string().into()))
        .await
        .map_err(broken)?;
    let mut up = None;
    loop {
        tokio::select! {
            chunk = audio.recv() => {
                let Some(chunk) = chunk else { return Ok(()) };
                tx.send(Message::Binary(encode_audio(&chunk).into())).await.map_err(broken)?;
            }
            message = rx.next() => {
                let decoded = match message {
                    Some(Ok(Message::Binary(bytes))) => decode(&bytes, &mut up)?,
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                        return Err(error(ErrorKind::Unavailable, format!("the bot closed the session {why}").trim_end().to_owned()));
                    }
                    None => return Err(error(ErrorKind::Unavailable, "the bot closed the session")),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(broken(e)),
                };
                for event in decoded {
                    if events.send(event).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_round_trips_through_the_frame_and_is_widened_to_48k() {
        let tone: Vec<i16> = (0..320).map(|i| ((i % 40) * 500 - 10_000) as i16).collect();
        let bytes = encode_audio(&tone);
        let Some(Kind::Audio(audio)) = Frame::decode(bytes.as_slice()).unwrap().kind else {
            panic!("not audio");
        };
        assert_eq!((audio.sample_rate, audio.num_channels), (16_000, 1));
        assert_eq!(audio.audio.len(), 640);
        let mut up = None;
        let events = decode(&bytes, &mut up).unwrap();
        let [BotEvent::Audio(wide)] = events.as_slice() else {
            panic!("{events:?}");
        };
        // Three times the samples, less the resampler's filter delay held back.
        assert!((900..=960).contains(&wide.len()), "{}", wide.len());
    }

    #[test]
    fn rtvi_messages_become_turns_and_transcripts() {
        let message = |json: &str| {
            Frame {
                kind: Some(Kind::Message(MessageFrame { data: json.into() })),
            }
            .encode_to_vec()
        };
        let mut up = None;
        let mut one = |json: &str| decode(&message(json), &mut up).unwrap();
        assert_eq!(
            one(r#"{"label":"rtvi-ai","type":"user-started-speaking"}"#),
            [BotEvent::UserStarted]
        );
        assert_eq!(
            one(r#"{"label":"rtvi-ai","type":"user-stopped-speaking"}"#),
            [BotEvent::UserStopped]
        );
        assert_eq!(
            one(
                r#"{"label":"rtvi-ai","type":"user-transcription","data":{"text":" hi there ","final":true}}"#
            ),
            [BotEvent::Transcript("user", "hi there".into())]
        );
        assert!(one(r#"{"label":"rtvi-ai","type":"user-transcription","data":{"text":"hi","final":false}}"#).is_empty());
        assert_eq!(
            one(
                r#"{"label":"rtvi-ai","type":"bot-output","data":{"text":"Hello.","spoken":true}}"#
            ),
            [BotEvent::Transcript("agent", "Hello.".into())]
        );
        assert_eq!(
            one(r#"{"label":"voice-operator","type":"hangup","reason":"done"}"#),
            [BotEvent::Hangup("done".into())]
        );
        assert_eq!(
            one(r#"{"label":"voice-operator","type":"context","context":{"n":1}}"#),
            [BotEvent::Context(r#"{"n":1}"#.into())]
        );
        // Not JSON, no label, or someone else's protocol: ignored, not fatal.
        assert!(one("not json").is_empty());
        assert!(one(r#"{"type":"user-started-speaking"}"#).is_empty());
        assert!(one(r#"{"label":"other","type":"x"}"#).is_empty());
    }

    #[test]
    fn hostile_frames_are_errors_not_panics() {
        let mut up = None;
        assert!(decode(&[0xff, 0xff, 0xff], &mut up).is_err());
        let stereo = Frame {
            kind: Some(Kind::Audio(AudioRawFrame {
                audio: vec![0; 8],
                sample_rate: 16_000,
                num_channels: 2,
                ..AudioRawFrame::default()
            })),
        }
        .encode_to_vec();
        assert!(
            decode(&stereo, &mut up)
                .unwrap_err()
                .message
                .contains("mono")
        );
        let absurd = Frame {
            kind: Some(Kind::Audio(AudioRawFrame {
                audio: vec![0; 8],
                sample_rate: 1,
                num_channels: 1,
                ..AudioRawFrame::default()
            })),
        }
        .encode_to_vec();
        assert!(decode(&absurd, &mut up).is_err());
        // An odd byte count is not a crash either.
        let odd = Frame {
            kind: Some(Kind::Audio(AudioRawFrame {
                audio: vec![1; 7],
                sample_rate: 24_000,
                num_channels: 1,
                ..AudioRawFrame::default()
            })),
        }
        .encode_to_vec();
        assert!(decode(&odd, &mut up).is_ok());
    }
}
