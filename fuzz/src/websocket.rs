//! The `websocket_frames` target: arbitrary bytes from a WebSocket client, read by the same
//! framing layer (tungstenite, server role) with the worker's limits, then judged by the
//! worker's rules (`voice_worker::transport::ws_rules`).

use std::io::{Cursor, Read, Write};

use tungstenite::protocol::{Message, Role, WebSocket, WebSocketConfig};
use voice_worker::transport::ws_rules::{
    Inbound, MAX_MESSAGE_BYTES, Received, classify, token_from_protocols, verdict_for,
};

/// What the worker does with each thing the client sent, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Audio of this many bytes reached the pipeline.
    Audio(usize),
    /// A pong (answer to our ping) or a ping (answered by the framing layer).
    Control,
    /// The client closed.
    Closed,
    /// The worker closes with this code.
    Close(u16),
    /// The bytes ended (or broke) without a close: nothing more can be sent.
    Gone,
}

/// The client's bytes in, the server's out.
struct Wire {
    input: Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads `data` as a client's byte stream with the worker's limits and returns the
/// outcomes, checking on the way that no message over the limit ever comes out of the
/// framing layer and that every verdict carries one of the documented close codes.
pub fn outcomes(data: &[u8]) -> Vec<Outcome> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let wire = Wire {
        input: Cursor::new(data.to_vec()),
        output: Vec::new(),
    };
    let mut socket = WebSocket::from_raw_socket(wire, Role::Server, Some(config));
    let mut out = Vec::new();
    // Every message consumes at least two bytes, so this bounds the loop.
    for _ in 0..=data.len() {
        let message = match socket.read() {
            Ok(message) => message,
            Err(e) => {
                out.push(verdict_for(&e).map_or(Outcome::Gone, |v| Outcome::Close(v.code)));
                break;
            }
        };
        assert!(
            message.len() <= MAX_MESSAGE_BYTES,
            "a {}-byte message passed the framing layer",
            message.len()
        );
        let inbound = match &message {
            Message::Binary(data) => classify(Received::Binary(data)),
            Message::Text(text) => classify(Received::Text(text.as_str())),
            Message::Ping(_) => classify(Received::Ping),
            Message::Pong(_) => classify(Received::Pong),
            Message::Close(_) => classify(Received::Close),
            Message::Frame(_) => continue,
        };
        let outcome = match inbound {
            Inbound::Audio(audio) => {
                assert!(
                    matches!(message, Message::Binary(_)),
                    "only binary messages are audio"
                );
                Outcome::Audio(audio.len())
            }
            Inbound::Pong | Inbound::Ignore => Outcome::Control,
            Inbound::Closed => Outcome::Closed,
            Inbound::Refuse(verdict) => Outcome::Close(verdict.code),
        };
        let last = matches!(outcome, Outcome::Closed | Outcome::Close(_));
        out.push(outcome);
        if last {
            break;
        }
    }
    for outcome in &out {
        if let Outcome::Close(code) = outcome {
            assert!(
                [1002, 1003, 1007, 1009].contains(code),
                "undocumented close code {code}"
            );
        }
    }
    out
}

/// The fuzz target: framing and rules over arbitrary bytes, plus the same bytes as a
/// `Sec-WebSocket-Protocol` header (a token comes out only beside `voice.v1`, and it is
/// one comma-free entry of the header).
pub fn websocket_frames(data: &[u8]) {
    outcomes(data);
    let header = String::from_utf8_lossy(data);
    if let Ok(Some(token)) = token_from_protocols(&header) {
        assert!(!token.is_empty() && !token.contains(','), "{token:?}");
        assert!(header.split(',').any(|e| e.trim() == "voice.v1"));
        assert!(header.contains(&format!("token.{token}")));
    }
}

/// One client frame (masked, as clients must send them).
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend((n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend((n as u64).to_be_bytes());
        }
    }
    out.extend(mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Seeds, each with the outcomes it must have.
pub fn seeds() -> Vec<(Vec<u8>, Vec<Outcome>)> {
    let audio = vec![7u8; 1_920];
    let mut talk = frame(true, 0x2, &audio);
    talk.extend(frame(true, 0x9, b"hi"));
    talk.extend(frame(true, 0x8, &1000u16.to_be_bytes()));
    let mut fragmented = frame(false, 0x2, &audio[..600]);
    fragmented.extend(frame(false, 0x0, &audio[600..1_200]));
    fragmented.extend(frame(true, 0x0, &audio[1_200..]));
    let mut too_big_in_pieces = frame(false, 0x2, &vec![0u8; 60_000]);
    too_big_in_pieces.extend(frame(true, 0x0, &vec![0u8; 60_000]));
    // A header announcing a 1 GiB frame and no payload: refused from the header alone.
    let mut huge_header = vec![0x82, 0x80 | 127];
    huge_header.extend((1u64 << 30).to_be_bytes());
    huge_header.extend([0, 0, 0, 0]);
    let stray_continuation = frame(true, 0x0, b"abc");
    vec![
        (
            talk,
            vec![Outcome::Audio(1_920), Outcome::Control, Outcome::Closed],
        ),
        (fragmented, vec![Outcome::Audio(1_920), Outcome::Gone]),
        (
            frame(true, 0x1, &[0xFF, 0xFE, 0x00, 0x80]),
            vec![Outcome::Close(1007)],
        ),
        (
            frame(true, 0x1, b"{\"type\":\"hello\"}"),
            vec![Outcome::Close(1003)],
        ),
        (too_big_in_pieces, vec![Outcome::Close(1009)]),
        (huge_header, vec![Outcome::Close(1009)]),
        (stray_continuation, vec![Outcome::Close(1002)]),
        (
            b"voice.v1, token.a.b.c".to_vec(),
            vec![Outcome::Close(1002)],
        ),
    ]
}
