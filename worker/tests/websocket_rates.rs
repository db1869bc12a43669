//! A session's `spec.audio` on the real worker's WebSocket: the rate a client gets when it
//! names none is the session's, every PCM16 rate (8/16/24/48 kHz) comes back at its own
//! rate and pitch, and `bufferSize` is the largest message the socket takes.

mod common;

use std::time::Duration;

use common::{PATIENCE, Worker, dominant_frequency, sine, token};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use voice_proto::worker::v1::{ReserveResult, ReserveSessionRequest};

/// Reserves `id` as the operator does for a session with `spec.audio` of `rate` and
/// `buffer_bytes`.
async fn reserve(worker: &Worker, id: &str, rate: u32, buffer_bytes: u32) {
    let config = serde_json::json!({"audio": {"sampleRate": rate, "bufferBytes": buffer_bytes}});
    let result = worker
        .client()
        .await
        .reserve_session(ReserveSessionRequest {
            session_id: id.to_owned(),
            uid: format!("uid-{id}"),
            token_key_id: None,
            session_config_json: config.to_string(),
        })
        .await
        .unwrap_or_else(|e| panic!("ReserveSession: {e}"))
        .into_inner()
        .result();
    assert_eq!(result, ReserveResult::Reserved);
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to `id` with `query` appended, and reads its hello.
async fn connect(worker: &Worker, id: &str, query: &str) -> (Socket, serde_json::Value) {
    let t = token(id, &format!("uid-{id}"), 600);
    let url = format!(
        "ws://127.0.0.1:{}/v1/sessions/{id}/ws?token={t}{query}",
        worker.http_port
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade to {id}: {e}"));
    let hello = tokio::time::timeout(PATIENCE, ws.next()).await;
    let Ok(Some(Ok(Message::Text(hello)))) = hello else {
        panic!("expected a JSON hello from {id}, got {hello:?}")
    };
    (ws, serde_json::from_str(&hello).unwrap_or_default())
}

/// Sends one second of a 1 kHz tone at `rate` in 20 ms messages at real-time pace and
/// returns what came back.
async fn echo_tone(ws: Socket, rate: u32) -> (Vec<i16>, Vec<i16>) {
    let tone = sine(1_000.0, rate, 1.0);
    let (mut sink, mut stream) = ws.split();
    let reader = tokio::spawn(async move {
        let mut pcm = Vec::new();
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_millis(1_500), stream.next()).await
        {
            if let Message::Binary(data) = message {
                pcm.extend(
                    data.chunks_exact(2)
                        .map(|b| i16::from_le_bytes([b[0], b[1]])),
                );
            }
        }
        pcm
    });
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    for chunk in tone.chunks(rate as usize / 50) {
        ticks.tick().await;
        let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        sink.send(Message::Binary(bytes.into()))
            .await
            .unwrap_or_else(|e| panic!("send: {e}"));
    }
    let back = reader.await.unwrap_or_else(|e| panic!("{e}"));
    (tone, back)
}

#[tokio::test]
async fn every_pcm_rate_is_the_sessions_default_and_comes_back_at_its_own_rate_and_pitch() {
    let worker = Worker::start(4);
    for rate in [8_000, 16_000, 24_000, 48_000] {
        let id = format!("team/rate-{rate}");
        reserve(&worker, &id, rate, 96_000).await;
        // No `rate` in the URL: the session's sampleRate is the socket's.
        let (ws, hello) = connect(&worker, &id, "").await;
        assert_eq!(hello["rate"], rate, "{hello}");
        let (sent, back) = echo_tone(ws, rate).await;
        assert!(
            back.len() >= sent.len() * 9 / 10 && back.len() <= sent.len(),
            "{rate} Hz: {} samples back for {}",
            back.len(),
            sent.len()
        );
        // A client at the wrong speed would hear 500 Hz or 2 kHz (or nothing clean).
        let (hz, share) = dominant_frequency(&back[back.len() / 10..], rate);
        println!(
            "{rate} Hz: echo is {hz} Hz ({:.0}% of its energy)",
            share * 100.0
        );
        assert_eq!(hz, 1_000.0, "{rate} Hz client");
        assert!(
            share > 0.8,
            "{rate} Hz: only {share} of the echo is the tone"
        );
    }
    assert!(worker.healthy().await);
}

#[tokio::test]
async fn a_client_may_name_another_rate_and_a_rate_no_socket_serves_is_refused() {
    let worker = Worker::start(2);
    reserve(&worker, "team/asks", 8_000, 96_000).await;
    let (ws, hello) = connect(&worker, "team/asks", "&rate=24000").await;
    assert_eq!(hello["rate"], 24_000, "{hello}");
    let (_, back) = echo_tone(ws, 24_000).await;
    assert_eq!(dominant_frequency(&back[2_400..], 24_000).0, 1_000.0);

    reserve(&worker, "team/odd", 16_000, 96_000).await;
    let t = token("team/odd", "uid-team/odd", 600);
    let url = format!(
        "ws://127.0.0.1:{}/v1/sessions/team/odd/ws?token={t}&rate=44100",
        worker.http_port
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 400);
        }
        other => panic!("expected 400 for rate=44100, got {other:?}"),
    }
}

#[tokio::test]
async fn buffer_size_is_the_largest_message_the_socket_takes() {
    let worker = Worker::start(2);
    // 8 kHz with room for exactly one 20 ms frame (320 bytes).
    reserve(&worker, "team/small", 8_000, 320).await;
    let (mut ws, hello) = connect(&worker, "team/small", "").await;
    assert_eq!(hello["maxMessageBytes"], 320, "{hello}");
    ws.send(Message::Binary(vec![0u8; 320].into()))
        .await
        .unwrap_or_else(|e| panic!("send: {e}"));
    ws.send(Message::Binary(vec![0u8; 321].into()))
        .await
        .unwrap_or_else(|e| panic!("send: {e}"));
    let mut code = None;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(PATIENCE, ws.next()).await {
        if let Message::Close(frame) = message {
            code = frame.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(code, Some(1009), "321 bytes is past a 320-byte bufferSize");

    // A larger bufferSize takes what the default 96000 would refuse.
    reserve(&worker, "team/large", 48_000, 192_000).await;
    let (mut ws, _) = connect(&worker, "team/large", "").await;
    ws.send(Message::Binary(vec![0u8; 150_000].into()))
        .await
        .unwrap_or_else(|e| panic!("send: {e}"));
    let mut audio = 0;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(1_500), ws.next()).await
    {
        match message {
            Message::Binary(data) => audio += data.len(),
            Message::Close(frame) => panic!("closed after a 150000-byte message: {frame:?}"),
            _ => {}
        }
    }
    // The echo sends back what its own queue holds (it drops the rest, counted), so any
    // audio at all means the message reached the pipeline instead of closing the socket.
    assert!(audio > 0, "nothing of the 150000-byte message came back");
}
