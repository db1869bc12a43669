//! Hostile inputs against a real worker process: every case asserts the exact outcome,
//! then that the worker is healthy, serves a new session and holds no slot the hostile
//! party left behind (`hostile::recovered`). docs/security.md lists which limit each case
//! proves.

mod common;
mod hostile;
/// Join-token keys rotating under the running worker.
#[path = "hostile/key_cases.rs"]
mod key_cases;
/// The malicious-provider cases (their own file to keep each under 400 lines).
#[path = "hostile/provider_cases.rs"]
mod provider_cases;

use std::time::{Duration, Instant};

use common::{PATIENCE, Worker, token};
use futures::StreamExt;
use hostile::{
    FAST_WS, RawWs, frame, handshake, metric, recovered, reserve_with, unmasked_frame, ws_path,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use voice_proto::worker::v1::{WatchEventsRequest, session_event::Event};

/// No session overrides: the worker's own pipeline, the diagnostic echo.
const ECHO: &str = "";

/// A worker with fast WebSocket timing and one reserved echo session `team/<name>`, and
/// the raw client connected to it.
async fn connected(name: &str) -> (Worker, RawWs) {
    let worker = Worker::start_with_env(2, FAST_WS);
    let id = format!("team/{name}");
    reserve_with(&worker, &id, "uid-1", ECHO).await;
    let (ws, _) = RawWs::connect(&worker, &ws_path(&id, &token(&id, "uid-1", 600)), &[])
        .await
        .unwrap_or_else(|e| panic!("upgrade refused: {e}"));
    (worker, ws)
}

/// How many WebSocket sessions ended for `reason`.
async fn ended_count(worker: &Worker, reason: &str) -> f64 {
    let text = worker.metrics().await;
    metric(
        &text,
        "voice_worker_websocket_ended_total",
        &format!("reason=\"{reason}\""),
    )
    .unwrap_or(0.0)
}

/// Waits until `expected` WebSocket sessions ended for `reason` (the count follows the close
/// frame by a moment), failing with the count after [`PATIENCE`].
async fn ended(worker: &Worker, reason: &str, expected: f64) {
    let started = Instant::now();
    loop {
        let n = ended_count(worker, reason).await;
        if n == expected {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{n} sessions ended {reason}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_oversize_binary_message_is_closed_with_1009() {
    let (worker, mut ws) = connected("big").await;
    ws.send(&frame(true, 0x2, &vec![0u8; 96_001])).await;
    let heard = ws.listen(PATIENCE).await;
    assert_eq!(heard.close, Some(1009), "{heard:?}");
    ended(&worker, "MessageTooBig", 1.0).await;
    recovered(&worker).await;
}

#[tokio::test]
async fn fragments_adding_up_past_the_limit_are_closed_with_1009() {
    let (worker, mut ws) = connected("fragments").await;
    ws.send(&frame(false, 0x2, &vec![0u8; 60_000])).await;
    ws.send(&frame(true, 0x0, &vec![0u8; 60_000])).await;
    let heard = ws.listen(PATIENCE).await;
    assert_eq!(heard.close, Some(1009), "{heard:?}");
    assert!(
        heard.binary.is_empty(),
        "no part of the message reached the pipeline"
    );
    recovered(&worker).await;
}

#[tokio::test]
async fn a_frame_announcing_a_gigabyte_is_refused_from_its_header_alone() {
    let (worker, mut ws) = connected("gigabyte").await;
    let mut header = vec![0x82, 0x80 | 127];
    header.extend((1u64 << 30).to_be_bytes());
    header.extend([1, 2, 3, 4]);
    // No payload follows: the close must come from the header.
    ws.send(&header).await;
    let heard = ws.listen(PATIENCE).await;
    assert_eq!(heard.close, Some(1009), "{heard:?}");
    recovered(&worker).await;
}

#[tokio::test]
async fn a_fragmented_message_within_the_limit_is_one_audio_message() {
    let (worker, mut ws) = connected("pieces").await;
    let audio = vec![0x21u8; 1_920];
    for _ in 0..30 {
        ws.send(&frame(false, 0x2, &audio[..700])).await;
        ws.send(&frame(false, 0x0, &audio[700..1_400])).await;
        ws.send(&frame(true, 0x0, &audio[1_400..])).await;
    }
    let heard = ws.listen(Duration::from_millis(1_500)).await;
    assert_eq!(heard.close, None, "{heard:?}");
    assert!(
        !heard.binary.is_empty() && heard.binary.iter().all(|&n| n == 1_920),
        "echoed 20 ms frames: {:?}",
        heard.binary
    );
    drop(ws);
    recovered(&worker).await;
}

#[tokio::test]
async fn binary_audio_sent_as_text_is_closed_with_1007() {
    let (worker, mut ws) = connected("as-text").await;
    let pcm: Vec<u8> = (0..1_920u32).map(|i| (i * 37 % 256) as u8).collect();
    ws.send(&frame(true, 0x1, &pcm)).await;
    let heard = ws.listen(PATIENCE).await;
    assert_eq!(heard.close, Some(1007), "{heard:?}");
    ended(&worker, "InvalidText", 1.0).await;
    recovered(&worker).await;
}

#[tokio::test]
async fn a_text_frame_is_closed_with_1003() {
    let (worker, mut ws) = connected("text").await;
    ws.send(&frame(true, 0x1, br#"{"type":"hello"}"#)).await;
    let heard = ws.listen(PATIENCE).await;
    assert_eq!(heard.close, Some(1003), "{heard:?}");
    recovered(&worker).await;
}

#[tokio::test]
async fn broken_framing_is_closed_with_1002() {
    let (worker, mut ws) = connected("stray").await;
    ws.send(&frame(true, 0x0, b"continuation of nothing")).await;
    let heard = ws.listen(PATIENCE).await;
    assert_eq!(heard.close, Some(1002), "{heard:?}");
    // An unmasked frame from a client is a protocol error too.
    let id = "team/unmasked";
    reserve_with(&worker, id, "uid-2", ECHO).await;
    let (mut ws, _) = RawWs::connect(&worker, &ws_path(id, &token(id, "uid-2", 600)), &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ws.send(&unmasked_frame(0x2, &[0u8; 320])).await;
    let heard = ws.listen(PATIENCE).await;
    assert_eq!(heard.close, Some(1002), "{heard:?}");
    ended(&worker, "ProtocolError", 2.0).await;
    recovered(&worker).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_and_its_slot_freed() {
    // Pings far apart, so the send deadline is what cuts this client.
    let worker = Worker::start_with_env(
        1,
        &[
            ("WS_PING_INTERVAL_SECONDS", "600"),
            ("WS_SEND_TIMEOUT_SECONDS", "1"),
        ],
    );
    let id = "team/deaf";
    reserve_with(&worker, id, "uid-1", ECHO).await;
    let (mut stream, _) = handshake(&worker, &ws_path(id, &token(id, "uid-1", 600)), &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Keep sending audio (every message is echoed) and never read a byte back. Whole
    // frames only: the writer blocks once the worker stops reading.
    let writer = tokio::spawn(async move {
        let audio = frame(true, 0x2, &vec![0x33u8; 96_000]);
        while stream.write_all(&audio).await.is_ok() {}
    });
    let started = Instant::now();
    while ended_count(&worker, "SendTimeout").await < 1.0 {
        assert!(
            started.elapsed() < PATIENCE,
            "the worker kept a client that reads nothing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    writer.abort();
    ended(&worker, "SendTimeout", 1.0).await;
    ended(&worker, "PeerClosed", 0.0).await;
    recovered(&worker).await;
}

#[tokio::test]
async fn a_silent_client_that_answers_no_ping_is_closed_with_1001() {
    let worker = Worker::start_with_env(2, FAST_WS);
    let id = "team/half-open";
    reserve_with(&worker, id, "uid-1", ECHO).await;
    let (mut stream, _) = handshake(&worker, &ws_path(id, &token(id, "uid-1", 600)), &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    // Read nothing for three seconds (no pong goes back), then look at what came.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut raw)).await;
    // The server's frames: JSON text, a ping (0x89 0x00), then a close (0x88) with 1001.
    let close = raw
        .windows(4)
        .position(|w| w[0] == 0x88)
        .map(|i| u16::from_be_bytes([raw[i + 2], raw[i + 3]]));
    assert_eq!(close, Some(1001), "{raw:02x?}");
    assert!(started.elapsed() < Duration::from_secs(6));
    ended(&worker, "PongTimeout", 1.0).await;
    recovered(&worker).await;
}

/// Ping events (the operator's `lastActivity`) on `events` within `wait`.
async fn count_pings(
    events: &mut tonic::Streaming<voice_proto::worker::v1::SessionEvent>,
    wait: Duration,
) -> usize {
    let mut n = 0;
    let deadline = Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, events.next()).await {
            Ok(Some(Ok(e))) if matches!(e.event, Some(Event::Ping(_))) => n += 1,
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    n
}

#[tokio::test]
async fn an_open_connection_without_media_is_not_activity() {
    let worker = Worker::start_with_env(2, FAST_WS);
    let id = "team/idle";
    reserve_with(&worker, id, "uid-1", ECHO).await;
    let mut events = worker
        .client()
        .await
        .watch_events(WatchEventsRequest {})
        .await
        .unwrap_or_else(|e| panic!("WatchEvents: {e}"))
        .into_inner();
    let (mut ws, _) = RawWs::connect(&worker, &ws_path(id, &token(id, "uid-1", 600)), &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // 11 s (the worker reports activity every 10 s) answering the server's pings (one a
    // second) but sending no audio.
    let (heard, idle_pings) = tokio::join!(
        ws.listen(Duration::from_secs(11)),
        count_pings(&mut events, Duration::from_secs(11))
    );
    assert_eq!(
        heard.close, None,
        "a client that answers pings stays connected"
    );
    assert_eq!(idle_pings, 0, "pongs alone reported the session alive");
    // 11 s of audio: the session is reported alive.
    let audio = frame(true, 0x2, &[0u8; 1_920]);
    let talker = async {
        for _ in 0..550 {
            ws.send(&audio).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let ((), talking_pings) =
        tokio::join!(talker, count_pings(&mut events, Duration::from_secs(11)));
    assert!(talking_pings >= 1, "media did not count as activity");
    assert_eq!(ws.listen(Duration::from_millis(100)).await.close, None);
    drop(ws);
    recovered(&worker).await;
}

#[tokio::test]
async fn expired_foreign_and_forged_tokens_are_refused_before_the_upgrade() {
    let worker = Worker::start_with_env(2, FAST_WS);
    let id = "team/guarded";
    reserve_with(&worker, id, "uid-1", ECHO).await;
    let forged = voice_proto::token::mint(
        b"another-key-of-thirty-two-bytes!",
        &voice_proto::token::JoinClaims {
            sub: id.into(),
            uid: "uid-1".into(),
            backend: "b".into(),
            user: String::new(),
            iat: 1,
            exp: u64::MAX / 2,
        },
    );
    for (token, status, code) in [
        (token(id, "uid-1", -60), "401", "TokenExpired"),
        (
            token("team/other", "uid-1", 600),
            "403",
            "TokenWrongSession",
        ),
        (
            token(id, "uid-of-a-deleted-session", 600),
            "403",
            "TokenWrongSession",
        ),
        (forged, "401", "TokenBadSignature"),
    ] {
        let refused = RawWs::connect(&worker, &ws_path(id, &token), &[])
            .await
            .map(|_| ());
        let answer = refused.err().unwrap_or_default();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{code}: {answer}"
        );
        assert!(answer.contains(&format!("\"code\":\"{code}\"")), "{answer}");
    }
    // The refusals cost the session nothing: its own token still connects (and the
    // hang-up frees its slot).
    let (mut ws, _) = RawWs::connect(&worker, &ws_path(id, &token(id, "uid-1", 600)), &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let heard = ws.listen(Duration::from_millis(500)).await;
    assert!(
        heard
            .text
            .iter()
            .any(|t| t.contains("\"type\":\"connected\"")),
        "{heard:?}"
    );
    drop(ws);
    recovered(&worker).await;
}

#[tokio::test]
async fn a_browser_token_in_the_subprotocol_works_and_is_never_echoed() {
    let worker = Worker::start_with_env(2, FAST_WS);
    let id = "team/browser";
    reserve_with(&worker, id, "uid-1", ECHO).await;
    let jwt = token(id, "uid-1", 600);
    let offered = format!("voice.v1, token.{jwt}");
    let path = format!("/v1/sessions/{id}/ws");
    let (mut ws, head) = RawWs::connect(&worker, &path, &[("Sec-WebSocket-Protocol", &offered)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let protocol = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("sec-websocket-protocol: ")
                .or_else(|| l.strip_prefix("Sec-WebSocket-Protocol: "))
        })
        .unwrap_or_default();
    assert_eq!(protocol, "voice.v1", "{head}");
    assert!(!head.contains(&jwt), "the token was echoed: {head}");
    let heard = ws.listen(Duration::from_millis(500)).await;
    assert!(
        heard
            .text
            .iter()
            .any(|t| t.contains("\"type\":\"connected\"")),
        "{heard:?}"
    );
    drop(ws);
    // A token without voice.v1 cannot be answered in a way a browser accepts: 400.
    let refused = RawWs::connect(
        &worker,
        &path,
        &[("Sec-WebSocket-Protocol", &format!("token.{jwt}"))],
    )
    .await
    .map(|_| ());
    let answer = refused.err().unwrap_or_default();
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("voice.v1"),
        "{answer}"
    );
    recovered(&worker).await;
}

#[tokio::test]
async fn a_half_open_tcp_connection_is_cut_by_the_header_timeout() {
    let worker = Worker::start(1);
    let _listening = worker.client().await;
    assert!(worker.healthy().await);
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", worker.http_port))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut partial = tokio::net::TcpStream::connect(("127.0.0.1", worker.http_port))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // A keep-alive connection that goes idle after one request.
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", worker.http_port))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for (name, stream) in [
        ("silent", &mut silent),
        ("partial", &mut partial),
        ("idle", &mut idle),
    ] {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the {name} connection was never closed");
        let answer = String::from_utf8_lossy(&buf);
        if name == "idle" {
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        } else {
            assert!(!answer.contains("200 OK"), "{name}: {answer}");
        }
    }
    // HTTP_REQUEST_TIMEOUT_SECONDS is 2 in the tests.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1_500) && took < Duration::from_secs(8),
        "{took:?}"
    );
    recovered(&worker).await;
}

#[tokio::test]
async fn hundreds_of_connections_from_one_address_hit_the_per_address_cap() {
    // Defaults: 256 per address. A long header timeout keeps the idle connections open.
    let worker = Worker::start_with_env(1, &[("HTTP_REQUEST_TIMEOUT_SECONDS", "30")]);
    let _listening = worker.client().await;
    assert!(worker.healthy().await);
    let mut open = Vec::new();
    for _ in 0..300 {
        open.push(
            tokio::net::TcpStream::connect(("127.0.0.1", worker.http_port))
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    // Every connection past the 256th got a 503 and was closed; the others wait.
    let reads = open.iter_mut().map(|stream| async move {
        let mut buf = Vec::new();
        match tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut buf)).await {
            Ok(Ok(_)) => Some(String::from_utf8_lossy(&buf).into_owned()),
            _ => None,
        }
    });
    let answers = futures::future::join_all(reads).await;
    let refused = answers.iter().flatten().count();
    for answer in answers.iter().flatten() {
        assert!(
            answer.starts_with("HTTP/1.1 503") && answer.contains("TooManyConnections"),
            "{answer}"
        );
    }
    assert_eq!(refused, 300 - 256);
    // Another address is not held back by the flood, and sees the exact count.
    let health = get_from([127, 0, 0, 2], worker.http_port, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = get_from([127, 0, 0, 2], worker.http_port, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "voice_worker_http_connections_refused_total",
            "cap=\"per_address\""
        ),
        Some(44.0)
    );
    assert_eq!(
        metric(&metrics, "voice_worker_http_connections", ""),
        Some(257.0)
    );
    drop(open);
    let started = Instant::now();
    loop {
        let metrics = get_from([127, 0, 0, 2], worker.http_port, "/metrics").await;
        if metric(&metrics, "voice_worker_http_connections", "") == Some(1.0) {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "connections not freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    recovered(&worker).await;
}

/// `GET path` from the local address `ip` (another loopback address than the flood's).
async fn get_from(ip: [u8; 4], port: u16, path: &str) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
    socket
        .bind((ip, 0).into())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut stream = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn upgrades_for_sessions_this_worker_does_not_hold_are_404_and_hold_nothing() {
    let worker = Worker::start_with_env(2, FAST_WS);
    reserve_with(&worker, "team/held", "uid-held", ECHO).await;
    // Valid tokens all, for sessions another worker (or nobody) holds, and for a held
    // session under another incarnation's uid.
    for (id, uid, status, code) in [
        ("team/elsewhere", "uid-1", "404", "SessionNotFound"),
        ("kube-system/ghost", "uid-1", "404", "SessionNotFound"),
        ("team/held", "uid-old", "403", "TokenWrongSession"),
    ] {
        let refused = RawWs::connect(&worker, &ws_path(id, &token(id, uid, 600)), &[])
            .await
            .map(|_| ());
        let answer = refused.err().unwrap_or_default();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}"))
                && answer.contains(&format!("\"code\":\"{code}\"")),
            "{id}: {answer}"
        );
    }
    // The held session's own token still connects; its hang-up frees the slot.
    let (ws, _) = RawWs::connect(
        &worker,
        &ws_path("team/held", &token("team/held", "uid-held", 600)),
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    drop(ws);
    recovered(&worker).await;
}
