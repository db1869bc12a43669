//! Helpers of the hostile-input suite: a raw WebSocket client that can send what no
//! well-behaved library would (oversize, fragmented, unmasked, binary-as-text frames), and
//! the check every case ends with: the worker is healthy, serves a new session, and holds
//! no slot or connection the hostile client left behind.

#![allow(dead_code)]

pub mod providers;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Mutex, mpsc};
use tokio_tungstenite::tungstenite::Message;
use voice_proto::worker::v1::{ReserveResult, ReserveSessionRequest};

use crate::common::{PATIENCE, Worker, token};

/// WebSocket timing for the suite: a ping every second, a second for its pong, a second
/// per send, so that the cuts happen within the test's patience.
pub const FAST_WS: &[(&str, &str)] = &[
    ("WS_PING_INTERVAL_SECONDS", "1"),
    ("WS_PONG_TIMEOUT_SECONDS", "1"),
    ("WS_SEND_TIMEOUT_SECONDS", "1"),
];

/// One masked client frame.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x13, 0xc7, 0x01];
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    push_length(&mut out, 0x80, payload.len());
    out.extend(mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// An unmasked frame, which a client must never send.
pub fn unmasked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    push_length(&mut out, 0, payload.len());
    out.extend(payload);
    out
}

fn push_length(out: &mut Vec<u8>, mask_bit: u8, len: usize) {
    match len {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend((n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend((n as u64).to_be_bytes());
        }
    }
}

/// Sends the upgrade request for `path` with `headers`; the stream and the response head
/// on `101`, else the whole refusal (head and body).
pub async fn handshake(
    worker: &Worker,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(TcpStream, String), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", worker.http_port))
        .await
        .unwrap_or_else(|e| panic!("connecting: {e}"));
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The response head one byte at a time, so no frame byte is consumed.
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(PATIENCE, stream.read(&mut byte)).await {
            Ok(Ok(1)) => response.push(byte[0]),
            _ => break,
        }
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    if response.starts_with("HTTP/1.1 101") {
        return Ok((stream, response));
    }
    let mut body = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut body)).await;
    Err(format!("{response}{}", String::from_utf8_lossy(&body)))
}

/// A WebSocket client that writes raw frames and reads like a well-behaved one: a task
/// reads every server frame and answers pings.
pub struct RawWs {
    writer: Arc<Mutex<OwnedWriteHalf>>,
    frames: mpsc::UnboundedReceiver<Option<(u8, Vec<u8>)>>,
    reader: tokio::task::JoinHandle<()>,
}

/// What the server sent back until it closed or the wait ended.
#[derive(Debug, Default)]
pub struct Heard {
    /// Binary messages' lengths.
    pub binary: Vec<usize>,
    /// Text messages.
    pub text: Vec<String>,
    /// The close frame's code, if one came.
    pub close: Option<u16>,
    /// Whether the server closed the TCP connection.
    pub eof: bool,
}

impl RawWs {
    /// Upgrades `path`; the client and the response head, or the refusal.
    pub async fn connect(
        worker: &Worker,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(Self, String), String> {
        let (stream, head) = handshake(worker, path, headers).await?;
        let (mut read, write) = stream.into_split();
        let writer = Arc::new(Mutex::new(write));
        let (tx, frames) = mpsc::unbounded_channel();
        let ponger = writer.clone();
        let reader = tokio::spawn(async move {
            loop {
                let received = read_frame(&mut read).await;
                if let Some((0x9, payload)) = &received {
                    let pong = frame(true, 0xA, payload);
                    let _ = ponger.lock().await.write_all(&pong).await;
                }
                let end = received.is_none();
                if tx.send(received).is_err() || end {
                    return;
                }
            }
        });
        Ok((
            Self {
                writer,
                frames,
                reader,
            },
            head,
        ))
    }

    /// Writes raw bytes (whole, never interleaved with a pong).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.writer.lock().await.write_all(bytes).await;
    }

    /// What the server sent within `wait`, stopping at its close or EOF.
    pub async fn listen(&mut self, wait: Duration) -> Heard {
        let mut heard = Heard::default();
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(Some(frame)) = tokio::time::timeout(left, self.frames.recv()).await else {
                break;
            };
            let Some((opcode, payload)) = frame else {
                heard.eof = true;
                break;
            };
            match opcode {
                0x1 => heard
                    .text
                    .push(String::from_utf8_lossy(&payload).into_owned()),
                0x2 => heard.binary.push(payload.len()),
                0x8 => {
                    heard.close = payload
                        .get(..2)
                        .map(|code| u16::from_be_bytes([code[0], code[1]]));
                    break;
                }
                _ => {}
            }
        }
        heard
    }
}

impl Drop for RawWs {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// One server frame (unmasked, unfragmented as our server sends them); `None` at EOF.
async fn read_frame(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.ok()?;
    let len = match head[1] & 0x7F {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).await.ok()?;
            usize::from(u16::from_be_bytes(ext))
        }
        127 => {
            let mut ext = [0u8; 8];
            stream.read_exact(&mut ext).await.ok()?;
            usize::try_from(u64::from_be_bytes(ext)).ok()?
        }
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.ok()?;
    Some((head[0] & 0x0F, payload))
}

/// The WebSocket path of `session` with a bearer-free query token.
pub fn ws_path(session: &str, token: &str) -> String {
    format!("/v1/sessions/{session}/ws?token={token}")
}

/// The value of the first sample of `name` whose labels contain `labels` in `/metrics`.
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Reserves `id` with the session configuration `session_config_json` (overrides only;
/// empty: none) on the worker's own pipeline.
pub async fn reserve_with(worker: &Worker, id: &str, uid: &str, session_config_json: &str) {
    let result = worker
        .client()
        .await
        .reserve_session(ReserveSessionRequest {
            session_id: id.to_owned(),
            uid: uid.to_owned(),
            token_key_id: None,
            session_config_json: session_config_json.to_owned(),
        })
        .await
        .unwrap_or_else(|e| panic!("ReserveSession: {e}"))
        .into_inner()
        .result();
    assert_eq!(result, ReserveResult::Reserved, "reserving {id}");
}

/// Waits until the worker holds no slot and no media connection (what a hostile client
/// leaves behind must be freed), failing with the gauges after [`PATIENCE`].
pub async fn no_slot_held(worker: &Worker) {
    let started = Instant::now();
    loop {
        let text = worker.metrics().await;
        let held = [
            metric(&text, "voice_worker_sessions", "state=\"reserved\""),
            metric(&text, "voice_worker_sessions", "state=\"active\""),
            metric(
                &text,
                "voice_worker_sessions_active",
                "transport=\"websocket\"",
            ),
            metric(
                &text,
                "voice_worker_sessions_active",
                "transport=\"webrtc\"",
            ),
        ];
        if held.iter().all(|v| *v == Some(0.0)) {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "slots still held (reserved, active, websocket, webrtc): {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

static FRESH: AtomicUsize = AtomicUsize::new(0);

/// The end of every case on an echo worker: the worker answers `/healthz`, has freed every
/// slot, and a new session gets its audio back over a WebSocket, after which its slot is
/// freed again.
pub async fn recovered(worker: &Worker) {
    recovered_with(worker, true, &|id, uid| token(id, uid, 600)).await;
}

/// [`recovered`] for a worker that reads a key set: the new session's token is signed with
/// `keys`' current key and names it.
pub async fn recovered_with_keys(worker: &Worker, keys: &voice_proto::token::KeySet) {
    recovered_with(worker, true, &|id, uid| {
        crate::common::token_with_keys(keys, id, uid, 600)
    })
    .await;
}

/// [`recovered`] for a worker whose own pipeline is not the echo (a session cannot choose
/// its pipeline): the new session must connect and be answered with events instead of audio.
pub async fn recovered_serving_events(worker: &Worker) {
    recovered_with(worker, false, &|id, uid| token(id, uid, 600)).await;
}

async fn recovered_with(worker: &Worker, echo: bool, mint: &dyn Fn(&str, &str) -> String) {
    assert!(worker.healthy().await, "/healthz failed");
    no_slot_held(worker).await;
    let n = FRESH.fetch_add(1, Ordering::Relaxed);
    let id = format!("after/check-{n}");
    let uid = format!("uid-after-{n}");
    reserve_with(worker, &id, &uid, "").await;
    let url = format!("ws://127.0.0.1:{}/v1/sessions/{id}/ws", worker.http_port);
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap_or_else(|e| panic!("{e}"));
    let bearer = format!("Bearer {}", mint(&id, &uid));
    request.headers_mut().insert(
        "authorization",
        bearer.parse().unwrap_or_else(|e| panic!("{e}")),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .unwrap_or_else(|e| panic!("a new session could not connect: {e}"));
    let audio = vec![0x11u8; 1_920];
    let (mut echoed, mut events) = (0, 0);
    for _ in 0..60 {
        ws.send(Message::Binary(audio.clone().into()))
            .await
            .unwrap_or_else(|e| panic!("sending audio: {e}"));
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_millis(5), ws.next()).await
        {
            match message {
                Message::Binary(data) => echoed += data.len(),
                Message::Text(_) => events += 1,
                _ => {}
            }
        }
        if (echo && echoed > 0) || (!echo && events > 0) {
            break;
        }
    }
    if echo {
        assert!(echoed > 0, "the new session got no audio back");
    } else {
        assert!(events > 0, "the new session got no event");
    }
    let _ = ws.close(None).await;
    drop(ws);
    no_slot_held(worker).await;
}
