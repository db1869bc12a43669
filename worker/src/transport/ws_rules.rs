//! The rules of the WebSocket transport, apart from any I/O: size limits, what each
//! inbound message means, the close code for each broken rule, and where a browser puts
//! its join token. `websocket.rs` applies them to a live socket; the fuzz target
//! `websocket_frames` applies them to arbitrary client bytes.

use std::time::Duration;

/// Largest message (and frame) accepted when the session does not say, in bytes: a second
/// of 48 kHz PCM16 (`spec.audio.bufferSize`'s default). A session's own limit is set on the
/// upgrade too, so the framing layer refuses a larger message while reading its header
/// instead of buffering it (axum's default is 64 MiB).
pub const MAX_MESSAGE_BYTES: usize = 96_000;

/// The subprotocol a client names beside its token (`Sec-WebSocket-Protocol: voice.v1,
/// token.<jwt>`); the server echoes only this one, never the token.
pub const SUBPROTOCOL: &str = "voice.v1";

/// The prefix of the subprotocol entry that carries the join token.
pub const TOKEN_PROTOCOL_PREFIX: &str = "token.";

/// Timing limits of one WebSocket connection (configured by `WS_*` variables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long one send may take; a client that stops reading is cut after it.
    pub send_timeout: Duration,
    /// How often the server pings.
    pub ping_interval: Duration,
    /// How long a ping may go without a pong before the connection is closed.
    pub pong_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            send_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(15),
            pong_timeout: Duration::from_secs(10),
        }
    }
}

/// The join token a client sent as a subprotocol (`Sec-WebSocket-Protocol: voice.v1,
/// token.<jwt>`), the way browsers can send one (they cannot set `Authorization`).
/// `Err` names what is wrong when the header carries a token but not [`SUBPROTOCOL`]: the
/// server can only echo that one, and a browser fails a handshake whose answer names none.
pub fn token_from_protocols(header: &str) -> Result<Option<&str>, &'static str> {
    let mut token = None;
    let mut versioned = false;
    for entry in header.split(',').map(str::trim) {
        if entry == SUBPROTOCOL {
            versioned = true;
        } else if let Some(t) = entry.strip_prefix(TOKEN_PROTOCOL_PREFIX) {
            token = Some(t).filter(|t| !t.is_empty());
        }
    }
    match token {
        Some(_) if !versioned => Err(
            "Sec-WebSocket-Protocol carries a token but not voice.v1; offer [\"voice.v1\", \"token.<jwt>\"]",
        ),
        token => Ok(token),
    }
}

/// Why the server ends a connection: the close code sent, the `Ended` reason reported to
/// the operator, and the close frame's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// RFC 6455 §7.4.1 status code.
    pub code: u16,
    /// Stable CamelCase reason (the session's `Ended` reason and the metric label).
    pub reason: &'static str,
    /// What the client should do differently.
    pub message: &'static str,
}

/// A message larger than the session's limit (one frame or fragments together).
pub const TOO_BIG: Verdict = Verdict {
    code: 1009,
    reason: "MessageTooBig",
    message: "a message exceeded the session's spec.audio.bufferSize (96000 bytes unless set); send 20 ms frames",
};

/// A text frame whose payload is not UTF-8: binary audio sent as text.
pub const INVALID_TEXT: Verdict = Verdict {
    code: 1007,
    reason: "InvalidText",
    message: "a text frame was not UTF-8; send audio as binary frames",
};

/// A text frame: clients send audio only, as binary frames.
pub const TEXT_UNSUPPORTED: Verdict = Verdict {
    code: 1003,
    reason: "TextUnsupported",
    message: "clients send PCM16 audio as binary frames; text frames are not accepted",
};

/// Broken framing (bad fragmentation, unmasked or reserved-bit frames, a fragmented or
/// oversized control frame).
pub const PROTOCOL_ERROR: Verdict = Verdict {
    code: 1002,
    reason: "ProtocolError",
    message: "the WebSocket framing was invalid",
};

/// No pong within the pong timeout.
pub const PONG_TIMEOUT: Verdict = Verdict {
    code: 1001,
    reason: "PongTimeout",
    message: "no pong to the server's ping in time",
};

/// One inbound message, as the session sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// PCM16 LE bytes.
    Audio(&'a [u8]),
    /// The answer to our ping.
    Pong,
    /// Nothing to do (a ping, answered by the framing layer).
    Ignore,
    /// The client closed.
    Closed,
    /// The connection must be closed with this verdict.
    Refuse(Verdict),
}

/// A received message in the framing layer's terms, independent of its types.
#[derive(Debug)]
pub enum Received<'a> {
    /// A binary message.
    Binary(&'a [u8]),
    /// A text message (valid UTF-8: the framing layer checked).
    Text(&'a str),
    /// A ping.
    Ping,
    /// A pong.
    Pong,
    /// A close frame.
    Close,
}

/// What a session with the default limit does with `message` ([`classify_within`]).
pub fn classify<'a>(message: Received<'a>) -> Inbound<'a> {
    classify_within(message, MAX_MESSAGE_BYTES)
}

/// What the session does with `message` when its messages may hold `max_bytes`. Sizes are
/// checked again here, so the rule holds even if a framing layer let a larger message through.
pub fn classify_within<'a>(message: Received<'a>, max_bytes: usize) -> Inbound<'a> {
    match message {
        Received::Binary(data) if data.len() > max_bytes => Inbound::Refuse(TOO_BIG),
        Received::Binary(data) => Inbound::Audio(data),
        Received::Text(text) if text.len() > max_bytes => Inbound::Refuse(TOO_BIG),
        Received::Text(_) => Inbound::Refuse(TEXT_UNSUPPORTED),
        Received::Ping => Inbound::Ignore,
        Received::Pong => Inbound::Pong,
        Received::Close => Inbound::Closed,
    }
}

/// The verdict for a read error of the framing layer; `None` when the connection is gone
/// (I/O error, reset) and nothing can be sent.
pub fn verdict_for(error: &tungstenite::Error) -> Option<Verdict> {
    match error {
        tungstenite::Error::Capacity(_) => Some(TOO_BIG),
        tungstenite::Error::Utf8(..) => Some(INVALID_TEXT),
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => None,
        tungstenite::Error::Protocol(_) => Some(PROTOCOL_ERROR),
        _ => None,
    }
}

/// [`verdict_for`] of an axum WebSocket error (which wraps the framing layer's).
pub fn verdict_for_axum(error: &axum::Error) -> Option<Verdict> {
    let source = std::error::Error::source(error)?;
    verdict_for(source.downcast_ref::<tungstenite::Error>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_oversize_and_control_messages_get_their_verdicts() {
        let audio = vec![0u8; 1_920];
        assert_eq!(classify(Received::Binary(&audio)), Inbound::Audio(&audio));
        let big = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert_eq!(classify(Received::Binary(&big)), Inbound::Refuse(TOO_BIG));
        assert_eq!(
            classify(Received::Text("{}")),
            Inbound::Refuse(TEXT_UNSUPPORTED)
        );
        assert_eq!(classify(Received::Pong), Inbound::Pong);
        // A session's own bufferSize moves the limit both ways.
        let frame_8k = vec![0u8; 320];
        assert_eq!(
            classify_within(Received::Binary(&frame_8k), 320),
            Inbound::Audio(&frame_8k)
        );
        assert_eq!(
            classify_within(Received::Binary(&audio), 320),
            Inbound::Refuse(TOO_BIG)
        );
        assert_eq!(
            classify_within(Received::Binary(&big), 960_000),
            Inbound::Audio(&big)
        );
        assert_eq!(classify(Received::Ping), Inbound::Ignore);
        assert_eq!(classify(Received::Close), Inbound::Closed);
        let capacity =
            tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong {
                size: 100_000,
                max_size: MAX_MESSAGE_BYTES,
            });
        assert_eq!(verdict_for(&capacity), Some(TOO_BIG));
        let fragment = tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::UnexpectedContinueFrame,
        );
        assert_eq!(verdict_for(&fragment), Some(PROTOCOL_ERROR));
        assert_eq!(verdict_for(&tungstenite::Error::ConnectionClosed), None);
    }

    #[test]
    fn the_token_is_read_from_the_subprotocols_only_beside_voice_v1() {
        assert_eq!(
            token_from_protocols("voice.v1, token.a.b.c"),
            Ok(Some("a.b.c"))
        );
        assert_eq!(
            token_from_protocols("token.a.b.c,voice.v1"),
            Ok(Some("a.b.c"))
        );
        assert_eq!(token_from_protocols("voice.v1"), Ok(None));
        assert_eq!(token_from_protocols("chat"), Ok(None));
        assert!(token_from_protocols("token.a.b.c").is_err());
        assert_eq!(token_from_protocols("voice.v1, token."), Ok(None));
    }
}
