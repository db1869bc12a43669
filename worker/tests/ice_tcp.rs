//! ICE-TCP on the worker's one TCP media port (`TCP_MEDIA_PORT`): headless Chromium — a
//! client nobody here wrote, and one that speaks RFC 6544 — first calls with UDP open, then
//! with UDP to the worker dropped, and must connect over TCP and hear its tone back; and hostile TCP clients (silent, slow, garbage, a huge length prefix,
//! a flood) are cut within the first-frame timeout while the worker stays healthy and holds
//! no slot.
//!
//! How UDP is taken away: an iptables rule that drops UDP to 127.0.0.1 at the worker's own
//! UDP port, and nothing else, for the length of the call. The port is held by this test's
//! worker while the rule exists, so no other test (they run in parallel, all on loopback)
//! can have traffic that matches; the rule is deleted on drop. A network namespace would
//! also cut UDP, but every test helper (gRPC control, `/metrics`, DevTools) talks to the
//! worker and to Chromium on 127.0.0.1, which a namespace would split. Needs root and
//! `iptables`, as `explicit_address.rs` does.

mod common;
mod hostile;

use std::time::{Duration, Instant};

use common::browser::Browser;
use common::{IptablesRule, Worker, free_port, free_udp_port, sine, token};
use hostile::{metric, recovered};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use voice_proto::worker::v1::ReleaseSessionRequest;

/// The worker's first-frame timeout (`transport::tcp_mux::FIRST_FRAME_TIMEOUT`).
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(3);

/// An iptables rule dropping UDP to 127.0.0.1:`port`, deleted on drop.
fn udp_dropped(port: u16) -> IptablesRule {
    let port = port.to_string();
    IptablesRule::insert(
        None,
        &[
            "OUTPUT",
            "-d",
            "127.0.0.1",
            "-p",
            "udp",
            "--dport",
            &port,
            "-j",
            "DROP",
        ],
    )
}

/// Opens the demo page for `session`, waits for the tone to come back, hangs up; the page's
/// last state and how long after opening it said `connected`.
async fn call(worker: &Worker, session: &str) -> (serde_json::Value, Duration) {
    let uid = format!("uid-{}", session.replace('/', "-"));
    worker.reserve(session, &uid).await;
    let join = token(session, &uid, 600);
    let url = format!(
        "http://127.0.0.1:{}/demo?session={session}&token={join}",
        worker.http_port
    );
    // A stock browser (as in demo_browser.rs): it reaches the loopback worker from this
    // machine's own address.
    let mut page = Browser::open(&url, &sine(1_000.0, 48_000, 2.0), &[]).await;
    let (state, connected_after) = page
        .watch_demo(Duration::from_secs(40), |s| {
            common::browser::heard_tone_back(s) && !s["localCandidateProtocol"].is_null()
        })
        .await;
    assert!(
        state["errors"].as_array().is_some_and(Vec::is_empty),
        "the page reported errors: {state}"
    );
    assert_eq!(state["connectionState"], "connected", "{state}");
    assert!(
        state["maxAudioLevel"].as_f64().unwrap_or(0.0) > 0.05,
        "the tone never came back: {state}"
    );
    page.evaluate("document.getElementById('hangup').click(); true")
        .await;
    let connected_after = connected_after.unwrap_or_else(|| panic!("never connected: {state}"));
    (state, connected_after)
}

#[tokio::test]
async fn chromium_without_udp_connects_over_the_tcp_media_port_and_hears_its_tone() {
    let (udp_port, tcp_port) = (free_udp_port(), free_port());
    let (udp, tcp) = (udp_port.to_string(), tcp_port.to_string());
    let worker = Worker::start_with_env(
        1,
        &[("UDP_PORT", udp.as_str()), ("TCP_MEDIA_PORT", tcp.as_str())],
    );

    // UDP open: the call works with both candidates in the answer. Which one Chromium
    // selects is its choice: on loopback it has been seen to settle on either.
    let (state, udp_connect) = call(&worker, "team/tcp-udp-open").await;
    println!("chromium, UDP open: connected after {udp_connect:?}; {state}");
    hostile::no_slot_held(&worker).await;

    // UDP to the worker dropped: only the TCP port is left.
    let _dropped = udp_dropped(udp_port);
    let (state, tcp_connect) = call(&worker, "team/tcp-only").await;
    println!("chromium, UDP dropped: connected after {tcp_connect:?}; {state}");
    assert_eq!(
        state["localCandidateProtocol"], "tcp",
        "the call did not go over TCP: {state}"
    );
    assert_eq!(
        state["remoteCandidateAddress"],
        format!("127.0.0.1:{tcp_port}"),
        "the selected pair does not end at the worker's TCP port: {state}"
    );
    // The worker says so too: a stream was routed by its first binding request.
    let text = worker.metrics().await;
    let routed = metric(
        &text,
        "voice_worker_ice_tcp_streams_total",
        "result=\"routed\"",
    );
    assert!(
        routed.unwrap_or(0.0) >= 1.0,
        "no ICE-TCP stream routed: {routed:?}"
    );
    println!(
        "connect time (page opened → connected): UDP open {udp_connect:?}, UDP dropped {tcp_connect:?}"
    );
    hostile::no_slot_held(&worker).await;
    assert!(worker.healthy().await);
}

/// Connects to the TCP media port, sends `bytes` (paced by `pause` between them when set),
/// and returns how long the worker took to close the stream.
async fn cut_after(port: u16, bytes: &[u8], pause: Option<Duration>) -> Duration {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("connecting to the TCP media port: {e}"));
    let started = Instant::now();
    let closed = async {
        for chunk in bytes.chunks(if pause.is_some() {
            1
        } else {
            bytes.len().max(1)
        }) {
            // A write may fail once the worker has cut us: that is the point.
            if stream.write_all(chunk).await.is_err() {
                break;
            }
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
        }
        let mut buf = [0u8; 64];
        let read = stream.read(&mut buf).await;
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "the worker sent bytes to an unrouted stream"
        );
    };
    tokio::time::timeout(FIRST_FRAME_TIMEOUT + Duration::from_secs(3), closed)
        .await
        .unwrap_or_else(|_| panic!("the worker kept the stream open past the first-frame timeout"));
    started.elapsed()
}

/// An RFC 4571 frame holding a STUN binding request with USERNAME `user`.
fn framed_binding_request(user: &str) -> Vec<u8> {
    let mut attr = vec![0x00, 0x06];
    attr.extend_from_slice(&u16::try_from(user.len()).unwrap_or(0).to_be_bytes());
    attr.extend_from_slice(user.as_bytes());
    while attr.len() % 4 != 0 {
        attr.push(0);
    }
    let mut msg = vec![0x00, 0x01];
    msg.extend_from_slice(&u16::try_from(attr.len()).unwrap_or(0).to_be_bytes());
    msg.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    msg.extend_from_slice(&[7; 12]);
    msg.extend_from_slice(&attr);
    let mut frame = u16::try_from(msg.len()).unwrap_or(0).to_be_bytes().to_vec();
    frame.extend_from_slice(&msg);
    frame
}

#[tokio::test]
async fn hostile_tcp_clients_are_cut_within_the_first_frame_timeout_and_hold_nothing() {
    let tcp_port = free_port();
    let tcp = tcp_port.to_string();
    let worker = Worker::start_with_env(1, &[("TCP_MEDIA_PORT", tcp.as_str())]);
    // A reserved session whose slot no TCP client may touch.
    worker.reserve("team/tcp-hostile", "uid-th").await;
    let quick = Duration::from_secs(1);

    // Silent: cut at the timeout, not before.
    let silent = cut_after(tcp_port, b"", None).await;
    assert!(
        silent >= FIRST_FRAME_TIMEOUT - Duration::from_millis(300),
        "{silent:?}"
    );
    // Slow: a byte every half second is still cut at the timeout, however busy it looks.
    let slow = cut_after(tcp_port, &framed_binding_request("x:y"), Some(quick / 2)).await;
    assert!(slow < FIRST_FRAME_TIMEOUT + quick, "{slow:?}");
    // A 65535-byte length prefix is refused before any body is read.
    let huge = cut_after(tcp_port, &[0xff, 0xff, 0, 1, 2, 3], None).await;
    assert!(huge < quick, "{huge:?}");
    // Garbage in a well-sized frame, and a binding request for no connection: cut at once.
    let mut garbage = vec![0x00, 0x40];
    garbage.extend_from_slice(&[0xab; 64]);
    assert!(cut_after(tcp_port, &garbage, None).await < quick);
    assert!(cut_after(tcp_port, &framed_binding_request("nobody:client"), None).await < quick);

    // A flood of silent streams: past the handshake cap new ones are closed at accept, and
    // every one is gone after the timeout.
    let mut flood = Vec::new();
    for _ in 0..300 {
        if let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", tcp_port)).await {
            flood.push(stream);
        }
    }
    tokio::time::sleep(FIRST_FRAME_TIMEOUT + quick).await;
    let text = worker.metrics().await;
    let count = |result: &str| {
        metric(
            &text,
            "voice_worker_ice_tcp_streams_total",
            &format!("result=\"{result}\""),
        )
        .unwrap_or(0.0)
    };
    println!(
        "ICE-TCP refusals: timeout {}, too large {}, not STUN {}, unknown ufrag {}, cap {}",
        count("first_frame_timeout"),
        count("first_frame_too_large"),
        count("not_binding_request"),
        count("unknown_ufrag"),
        count("handshakes_full")
    );
    assert!(count("first_frame_timeout") >= 2.0);
    assert_eq!(count("first_frame_too_large"), 1.0);
    assert_eq!(count("not_binding_request"), 1.0);
    assert_eq!(count("unknown_ufrag"), 1.0);
    assert!(
        count("handshakes_full") >= 1.0,
        "the flood never hit the cap"
    );
    assert_eq!(count("routed"), 0.0);
    assert_eq!(
        metric(&text, "voice_worker_ice_tcp_handshakes", ""),
        Some(0.0),
        "a stream still holds a handshake"
    );
    assert_eq!(
        metric(&text, "voice_worker_sessions", "state=\"reserved\""),
        Some(1.0),
        "the reservation must be untouched"
    );
    drop(flood);

    // The reservation is the test's own; release it, then the usual recovery check.
    worker
        .client()
        .await
        .release_session(ReleaseSessionRequest {
            session_id: "team/tcp-hostile".to_owned(),
            uid: "uid-th".to_owned(),
            reason: "Deleted".to_owned(),
        })
        .await
        .unwrap_or_else(|e| panic!("ReleaseSession: {e}"));
    recovered(&worker).await;
}
