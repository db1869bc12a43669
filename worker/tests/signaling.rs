//! Signaling against the real worker binary: every bad input gets its JSON error and
//! the worker stays healthy; PCM over WebSocket comes back as sent.

mod common;

use std::time::{Duration, Instant};

use common::{PATIENCE, Worker, dominant_frequency, rms, sine, token};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use voice_proto::worker::v1::DrainRequest;

/// An offer as a browser would send it, minus ICE details the checks do not read.
const OPUS_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
    a=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n\
    a=mid:0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
    a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
    a=setup:actpass\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n";

async fn offer(worker: &Worker, id: &str, bearer: &str, body: &str) -> common::Response {
    let auth = format!("Bearer {bearer}");
    worker
        .request(
            "POST",
            &format!("/v1/sessions/{id}/offer"),
            &[
                ("Content-Type", "application/sdp"),
                ("Authorization", &auth),
            ],
            body.as_bytes(),
        )
        .await
}

#[tokio::test]
async fn every_bad_offer_gets_its_error_and_the_worker_stays_healthy() {
    let worker = Worker::start(3);
    worker.reserve("team/call-1", "uid-1").await;
    worker.reserve("team/call-2", "uid-2").await;
    let good = token("team/call-1", "uid-1", 600);

    let cases: Vec<(&str, common::Response, u16, &str)> = vec![
        (
            "garbage SDP",
            offer(&worker, "team/call-1", &good, "this is not SDP").await,
            400,
            "MalformedSdp",
        ),
        (
            "SDP without audio",
            offer(
                &worker,
                "team/call-1",
                &good,
                "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n",
            )
            .await,
            400,
            "NoAudio",
        ),
        (
            "audio without Opus",
            offer(
                &worker,
                "team/call-1",
                &good,
                "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n",
            )
            .await,
            400,
            "NoOpus",
        ),
        (
            "expired token",
            offer(
                &worker,
                "team/call-1",
                &token("team/call-1", "uid-1", -5),
                OPUS_OFFER,
            )
            .await,
            401,
            "TokenExpired",
        ),
        (
            "forged token",
            offer(
                &worker,
                "team/call-1",
                "eyJhbGciOiJub25lIn0.e30.",
                OPUS_OFFER,
            )
            .await,
            401,
            "TokenMalformed",
        ),
        (
            "another session's token",
            offer(
                &worker,
                "team/call-1",
                &token("team/call-2", "uid-2", 600),
                OPUS_OFFER,
            )
            .await,
            403,
            "TokenWrongSession",
        ),
        (
            "unknown session",
            offer(&worker, "team/nobody", &good, OPUS_OFFER).await,
            404,
            "SessionNotFound",
        ),
        (
            "oversized body",
            offer(&worker, "team/call-1", &good, &"a".repeat(70_000)).await,
            413,
            "BodyTooLarge",
        ),
        (
            "no token",
            worker
                .request(
                    "POST",
                    "/v1/sessions/team/call-1/offer",
                    &[("Content-Type", "application/sdp")],
                    OPUS_OFFER.as_bytes(),
                )
                .await,
            401,
            "TokenMissing",
        ),
    ];
    for (what, response, status, code) in cases {
        assert_eq!(
            (response.status, response.code().as_str()),
            (status, code),
            "{what}: {response:?}"
        );
        assert!(worker.healthy().await, "unhealthy after: {what}");
    }

    let metrics = worker.metrics().await;
    assert!(
        metrics.contains(r#"voice_worker_offers_total{result="MalformedSdp"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_second_offer_for_a_session_with_a_connection_is_a_conflict() {
    let worker = Worker::start(2);
    worker.reserve("team/call-1", "uid-1").await;
    let good = token("team/call-1", "uid-1", 600);
    let first = offer(&worker, "team/call-1", &good, OPUS_OFFER).await;
    assert_eq!(first.status, 201, "{first:?}");
    assert!(first.body.starts_with("v=0"), "{}", first.body);
    assert!(first.body.contains(" typ host"), "{}", first.body);
    let location = first
        .header("location")
        .unwrap_or_else(|| panic!("no Location: {first:?}"))
        .to_owned();
    assert!(location.starts_with("/v1/sessions/team/call-1/connections/"));

    let second = offer(&worker, "team/call-1", &good, OPUS_OFFER).await;
    assert_eq!(
        (second.status, second.code().as_str()),
        (409, "AlreadyConnected")
    );

    // Hanging up needs the session's token, then frees the session for a new offer.
    let auth = format!("Bearer {}", token("team/call-2", "uid-2", 600));
    let refused = worker
        .request("DELETE", &location, &[("Authorization", &auth)], b"")
        .await;
    assert_ne!(refused.status, 200);
    let auth = format!("Bearer {good}");
    let hung_up = worker
        .request("DELETE", &location, &[("Authorization", &auth)], b"")
        .await;
    assert_eq!(hung_up.status, 200, "{hung_up:?}");
    assert!(worker.healthy().await);
}

#[tokio::test]
async fn a_draining_worker_refuses_offers_with_503() {
    let worker = Worker::start(1);
    worker.reserve("team/call-1", "uid-1").await;
    worker
        .client()
        .await
        .drain(DrainRequest {
            deadline_seconds: 60,
        })
        .await
        .unwrap_or_else(|e| panic!("Drain: {e}"));
    let response = offer(
        &worker,
        "team/call-1",
        &token("team/call-1", "uid-1", 600),
        OPUS_OFFER,
    )
    .await;
    assert_eq!(
        (response.status, response.code().as_str()),
        (503, "Draining")
    );
    assert!(worker.healthy().await);
}

#[tokio::test]
async fn a_slow_loris_client_is_cut_off_and_others_are_still_served() {
    let worker = Worker::start(1);
    worker.reserve("team/call-1", "uid-1").await;
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", worker.http_port))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    slow.write_all(b"POST /v1/sessions/team/call-1/offer HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(worker.healthy().await, "others are served meanwhile");
    // The worker runs with a 2 s header timeout: the connection is closed by then.
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "the slow client was still connected after 10 s"
    );
    println!("slow-loris connection closed after {:?}", started.elapsed());
    assert!(worker.healthy().await);
}

#[tokio::test]
async fn websocket_pcm_comes_back_as_the_same_tone() {
    let worker = Worker::start(1);
    worker.reserve("team/ws-1", "uid-ws").await;
    let _ready = worker.client().await;
    let mut events = worker
        .client()
        .await
        .watch_events(voice_proto::worker::v1::WatchEventsRequest {})
        .await
        .unwrap_or_else(|e| panic!("WatchEvents: {e}"))
        .into_inner();

    // Wrong token first: the upgrade is refused with 403 before any socket exists.
    let wrong = token("team/other", "uid-x", 600);
    let url = |t: &str| {
        format!(
            "ws://127.0.0.1:{}/v1/sessions/team/ws-1/ws?token={t}&rate=16000",
            worker.http_port
        )
    };
    match tokio_tungstenite::connect_async(url(&wrong)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 403)
        }
        other => panic!("expected 403, got {other:?}"),
    }

    let (mut ws, _) = tokio_tungstenite::connect_async(url(&token("team/ws-1", "uid-ws", 600)))
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade: {e}"));
    let hello = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .unwrap_or_else(|_| panic!("no hello"))
        .and_then(Result::ok);
    let Some(Message::Text(hello)) = hello else {
        panic!("expected a JSON hello, got {hello:?}")
    };
    assert!(hello.contains(r#""type":"connected""#), "{hello}");

    // 1 s of 1 kHz at 16 kHz, in 20 ms messages at real-time pace.
    let tone = sine(1_000.0, 16_000, 1.0);
    let mut received: Vec<i16> = Vec::new();
    let mut first_sent = None;
    let mut first_back = None;
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let (mut sink, mut stream) = ws.split();
    let reader = tokio::spawn(async move {
        let mut pcm = Vec::new();
        let mut first = None;
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_millis(1_500), stream.next()).await
        {
            if let Message::Binary(data) = message {
                first.get_or_insert_with(Instant::now);
                pcm.extend(
                    data.chunks_exact(2)
                        .map(|b| i16::from_le_bytes([b[0], b[1]])),
                );
            }
        }
        (pcm, first)
    });
    for chunk in tone.chunks(320) {
        ticks.tick().await;
        let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        first_sent.get_or_insert_with(Instant::now);
        sink.send(Message::Binary(bytes.into()))
            .await
            .unwrap_or_else(|e| panic!("send: {e}"));
    }
    let (pcm, first) = reader.await.unwrap_or_else(|e| panic!("{e}"));
    received.extend(pcm);
    first_back = first_back.or(first);
    let delay = first_back
        .zip(first_sent)
        .map(|(back, sent)| back.duration_since(sent));
    println!(
        "websocket echo: sent {} samples, received {}, first reply after {:?}",
        tone.len(),
        received.len(),
        delay
    );
    assert!(
        received.len() >= tone.len() * 9 / 10,
        "only {} of {} samples came back",
        received.len(),
        tone.len()
    );
    let (hz, share) = dominant_frequency(&received[320..], 16_000);
    println!(
        "websocket echo: dominant frequency {hz} Hz ({:.0}% of the energy)",
        share * 100.0
    );
    assert_eq!(hz, 1_000.0);
    assert!(
        rms(&received[320..]) > 5_000.0,
        "too quiet: {}",
        rms(&received)
    );

    // The operator saw the connection.
    let mut saw_connected = false;
    while let Ok(Some(Ok(event))) =
        tokio::time::timeout(Duration::from_secs(2), events.next()).await
    {
        if let Some(voice_proto::worker::v1::session_event::Event::Connected(c)) = event.event {
            assert_eq!(c.transport(), voice_proto::worker::v1::Transport::Websocket);
            assert!(c.remote_address.starts_with("127.0.0.1:"));
            saw_connected = true;
            break;
        }
    }
    assert!(saw_connected, "no Connected event on WatchEvents");
    let metrics = worker.metrics().await;
    assert!(
        metrics
            .contains(r#"voice_worker_media_packets_total{direction="in",transport="websocket"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_active_websocket_session_goes_on_while_draining_and_ends_at_the_deadline() {
    let worker = Worker::start(1);
    worker.reserve("team/ws-2", "uid-ws2").await;
    let url = format!(
        "ws://127.0.0.1:{}/v1/sessions/team/ws-2/ws?token={}",
        worker.http_port,
        token("team/ws-2", "uid-ws2", 600)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade: {e}"));
    let drained_at = Instant::now();
    worker
        .client()
        .await
        .drain(DrainRequest {
            deadline_seconds: 2,
        })
        .await
        .unwrap_or_else(|e| panic!("Drain: {e}"));
    // Still served while draining: a 48 kHz frame comes back.
    let frame: Vec<u8> = sine(1_000.0, 48_000, 0.02)
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    ws.send(Message::Binary(frame.into()))
        .await
        .unwrap_or_else(|e| panic!("send: {e}"));
    let mut echoed = false;
    let mut ended = None;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(PATIENCE, ws.next()).await {
        match message {
            Message::Binary(_) => echoed = true,
            Message::Text(text) if text.contains(r#""type":"ended""#) => {
                ended = Some(drained_at.elapsed());
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert!(echoed, "no echo while draining");
    let ended = ended.unwrap_or_else(|| panic!("no ended event before the close"));
    println!("drain: the active session ended {ended:?} after a 2 s drain");
    assert!(
        ended >= Duration::from_millis(1_500),
        "ended before the drain deadline: {ended:?}"
    );
    assert!(worker.healthy().await);
}
