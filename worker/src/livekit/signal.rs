//! LiveKit's signal connection: one WebSocket to the server's `/rtc` endpoint carrying
//! protobuf `SignalRequest`s out and `SignalResponse`s in, one binary message each.

use futures::{SinkExt, StreamExt};
use livekit_protocol::{SignalRequest, SignalResponse, signal_request, signal_response};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The signal protocol version the worker speaks: the one whose flow (the server offers the
/// subscriber connection, the client offers the publisher) livekit-server 1.x serves.
const PROTOCOL: u32 = 15;

/// Largest signal message accepted from the server; a room's full participant list fits
/// many times over, while a hostile server cannot make the worker buffer without end.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Why the signal connection failed.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The URL is not a `ws://`, `wss://`, `http://` or `https://` URL.
    #[error("LIVEKIT_URL {0:?} must start with ws://, wss://, http:// or https://")]
    BadUrl(String),
    /// The WebSocket could not be opened (refused, TLS, or an HTTP error such as 401).
    #[error("connecting to the LiveKit server: {0}")]
    Connect(String),
    /// The connection broke or carried something that is not a signal message.
    #[error("LiveKit signal connection: {0}")]
    Broken(String),
}

/// An open signal connection.
pub struct Signal {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// The `ws(s)://` form of a LiveKit URL (`http(s)://` is accepted, as LiveKit's SDKs do).
pub fn websocket_base(url: &str) -> Result<String, SignalError> {
    let url = url.trim_end_matches('/');
    for (from, to) in [
        ("wss://", "wss://"),
        ("ws://", "ws://"),
        ("https://", "wss://"),
        ("http://", "ws://"),
    ] {
        if let Some(rest) = url.strip_prefix(from) {
            return Ok(format!("{to}{rest}"));
        }
    }
    Err(SignalError::BadUrl(url.to_owned()))
}

/// The `http(s)://` form of a LiveKit URL, for the room service.
pub fn http_base(url: &str) -> Result<String, SignalError> {
    let ws = websocket_base(url)?;
    Ok(match ws.strip_prefix("wss://") {
        Some(rest) => format!("https://{rest}"),
        None => format!("http://{}", ws.trim_start_matches("ws://")),
    })
}

impl Signal {
    /// Joins with `token` (its grants name the room and identity), subscribing to every
    /// published track; the agent listens only to the session's users'.
    pub async fn connect(url: &str, token: &str) -> Result<Self, SignalError> {
        let url = format!(
            "{}/rtc?access_token={token}&auto_subscribe=1&sdk=rust&version={}&protocol={PROTOCOL}&adaptive_stream=0",
            websocket_base(url)?,
            env!("CARGO_PKG_VERSION"),
        );
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
            .await
            .map_err(|e| SignalError::Connect(redact(&e.to_string())))?;
        Ok(Self { socket })
    }

    /// Sends one request.
    pub async fn send(&mut self, message: signal_request::Message) -> Result<(), SignalError> {
        let bytes = SignalRequest {
            message: Some(message),
        }
        .encode_to_vec();
        self.socket
            .send(Message::Binary(bytes.into()))
            .await
            .map_err(|e| SignalError::Broken(e.to_string()))
    }

    /// The next response; `None` when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Result<signal_response::Message, SignalError>> {
        loop {
            let frame = match self.socket.next().await? {
                Ok(frame) => frame,
                Err(e) => return Some(Err(SignalError::Broken(e.to_string()))),
            };
            match frame {
                Message::Binary(bytes) => match SignalResponse::decode(bytes) {
                    Ok(SignalResponse {
                        message: Some(message),
                    }) => return Some(Ok(message)),
                    // A message kind newer than livekit-protocol: not one the agent needs.
                    Ok(SignalResponse { message: None }) => {}
                    Err(e) => {
                        return Some(Err(SignalError::Broken(format!(
                            "undecodable message: {e}"
                        ))));
                    }
                },
                Message::Close(_) => return None,
                // Pings are answered by tungstenite; text frames are not part of the protocol.
                _ => {}
            }
        }
    }

    /// Closes the WebSocket (after a `Leave`, so the server ends the participant at once).
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// An error text without the access token a failed request's URL would carry.
fn redact(text: &str) -> String {
    match text.find("access_token=") {
        Some(at) => {
            let rest = &text[at + "access_token=".len()..];
            let end = rest.find('&').unwrap_or(rest.len());
            format!("{}access_token=<redacted>{}", &text[..at], &rest[end..])
        }
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_url_form_maps_to_its_websocket_and_http_form() {
        assert_eq!(websocket_base("http://lk:7880/").unwrap(), "ws://lk:7880");
        assert_eq!(
            websocket_base("wss://lk.example").unwrap(),
            "wss://lk.example"
        );
        assert_eq!(http_base("wss://lk.example").unwrap(), "https://lk.example");
        assert_eq!(
            http_base("ws://10.0.0.1:7880").unwrap(),
            "http://10.0.0.1:7880"
        );
        assert!(websocket_base("lk.example:7880").is_err());
    }

    #[test]
    fn a_token_never_reaches_an_error_text() {
        let text = redact("HTTP 401 for ws://lk/rtc?access_token=eyJsecret&sdk=rust");
        assert!(!text.contains("eyJsecret"), "{text}");
        assert!(text.contains("sdk=rust"));
    }
}
