//! Trickle ICE over `PATCH` (RFC 9725 §4.3) against the real worker binary: every refusal
//! has its status and JSON code, a candidate that is accepted really reaches the ICE
//! agent — the worker starts connectivity checks towards it — unless it names a private
//! address the backend does not allow, and a connection's candidates are capped.

mod common;

use std::time::Duration;

use common::{Worker, token};

/// An offer as a browser would send it, with no candidates (they trickle later).
const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
    a=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n\
    a=mid:0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
    a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
    a=setup:actpass\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n";

const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

struct Call<'a> {
    worker: &'a Worker,
    location: String,
    etag: String,
    bearer: String,
}

impl Call<'_> {
    async fn patch(&self, headers: &[(&str, &str)], body: &str) -> common::Response {
        let mut all = vec![("Authorization", self.bearer.as_str())];
        all.extend_from_slice(headers);
        self.worker
            .request("PATCH", &self.location, &all, body.as_bytes())
            .await
    }
}

/// A fragment with the offer's credentials and `lines` in its one media section.
fn fragment(lines: &[&str]) -> String {
    let mut body = String::from("a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n");
    body.push_str("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n");
    for line in lines {
        body.push_str(line);
        body.push_str("\r\n");
    }
    body
}

/// The USERNAME of a STUN binding request, if `datagram` is one.
fn binding_username(datagram: &[u8]) -> Option<String> {
    if datagram.len() < 20 || datagram[0..2] != [0, 1] || datagram[4..8] != [0x21, 0x12, 0xa4, 0x42]
    {
        return None;
    }
    let mut at = 20;
    while at + 4 <= datagram.len() {
        let kind = u16::from_be_bytes([datagram[at], datagram[at + 1]]);
        let len = usize::from(u16::from_be_bytes([datagram[at + 2], datagram[at + 3]]));
        let value = datagram.get(at + 4..at + 4 + len)?;
        if kind == 0x0006 {
            return String::from_utf8(value.to_vec()).ok();
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[tokio::test]
async fn trickled_candidates_are_checked_and_every_bad_patch_gets_its_error() {
    // The test's candidates are on loopback, which the worker checks only when allowed.
    let worker = Worker::start_with(2, &[("ALLOW_PRIVATE_CANDIDATES", "true")]);
    worker.reserve("team/trickle-1", "uid-t1").await;
    worker.reserve("team/trickle-2", "uid-t2").await;
    let bearer = format!("Bearer {}", token("team/trickle-1", "uid-t1", 600));
    let answered = worker
        .request(
            "POST",
            "/v1/sessions/team/trickle-1/offer",
            &[
                ("Content-Type", "application/sdp"),
                ("Authorization", &bearer),
            ],
            OFFER.as_bytes(),
        )
        .await;
    assert_eq!(answered.status, 201, "{}", answered.body);
    let call = Call {
        worker: &worker,
        location: answered
            .header("location")
            .unwrap_or_else(|| panic!("no Location"))
            .to_owned(),
        etag: answered
            .header("etag")
            .unwrap_or_else(|| panic!("no ETag: RFC 9725 §4.3.1"))
            .to_owned(),
        bearer: bearer.clone(),
    };
    assert!(
        call.etag.starts_with('"') && call.etag.ends_with('"') && call.etag.len() > 2,
        "a strong entity-tag: {}",
        call.etag
    );

    // A client's candidate: a socket of this test, so we can see the worker's checks arrive.
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = client.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
    let candidate = format!("a=candidate:1 1 udp 2122260223 127.0.0.1 {port} typ host");
    let good = fragment(&[&candidate]);

    let foreign = format!("Bearer {}", token("team/trickle-2", "uid-t2", 600));
    let unknown = call.location.replace("/connections/", "/connections/x");
    let cases: Vec<(&str, common::Response, u16, &str)> = vec![
        (
            "wrong media type",
            call.patch(&[("Content-Type", "application/sdp")], &good)
                .await,
            415,
            "UnsupportedMediaType",
        ),
        (
            "no token",
            worker
                .request(
                    "PATCH",
                    &call.location,
                    &[("Content-Type", SDPFRAG)],
                    good.as_bytes(),
                )
                .await,
            401,
            "TokenMissing",
        ),
        (
            "another session's token",
            worker
                .request(
                    "PATCH",
                    &call.location,
                    &[("Content-Type", SDPFRAG), ("Authorization", &foreign)],
                    good.as_bytes(),
                )
                .await,
            403,
            "TokenWrongSession",
        ),
        (
            "unknown connection",
            worker
                .request(
                    "PATCH",
                    &unknown,
                    &[("Content-Type", SDPFRAG), ("Authorization", &bearer)],
                    good.as_bytes(),
                )
                .await,
            404,
            "ConnectionNotFound",
        ),
        (
            "stale entity-tag",
            call.patch(
                &[("Content-Type", SDPFRAG), ("If-Match", "\"not-this-one\"")],
                &good,
            )
            .await,
            412,
            "PreconditionFailed",
        ),
        (
            "unparsable candidate",
            call.patch(
                &[("Content-Type", SDPFRAG)],
                &fragment(&["a=candidate:this is no candidate"]),
            )
            .await,
            400,
            "BadCandidate",
        ),
        (
            "an SDP line a fragment may not carry",
            call.patch(&[("Content-Type", SDPFRAG)], "v=0\r\n").await,
            400,
            "MalformedSdpFrag",
        ),
        (
            "an ICE restart (new credentials)",
            call.patch(
                &[("Content-Type", SDPFRAG)],
                &good.replace("ice-ufrag:abcd", "ice-ufrag:wxyz"),
            )
            .await,
            422,
            "IceRestartUnsupported",
        ),
        (
            "oversized fragment",
            call.patch(&[("Content-Type", SDPFRAG)], &"a".repeat(70_000))
                .await,
            413,
            "BodyTooLarge",
        ),
    ];
    for (what, response, status, code) in &cases {
        assert_eq!(response.status, *status, "{what}: {}", response.body);
        assert_eq!(response.code(), *code, "{what}");
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{what}"
        );
    }
    let bad_line = &cases[5].1;
    assert!(
        bad_line.body.contains("line 5"),
        "the error names the line: {}",
        bad_line.body
    );

    // PATCH is for the session resource, not the endpoint (RFC 9725 §4.3).
    let on_endpoint = worker
        .request(
            "PATCH",
            "/v1/sessions/team/trickle-1/offer",
            &[("Content-Type", SDPFRAG), ("Authorization", &bearer)],
            good.as_bytes(),
        )
        .await;
    assert_eq!(on_endpoint.status, 405);
    assert!(
        on_endpoint
            .header("allow")
            .is_some_and(|allow| allow.contains("POST")),
        "{:?}",
        on_endpoint.headers
    );

    // The good fragment, with and without the current entity-tag, then end-of-candidates.
    let accepted = call
        .patch(
            &[("Content-Type", SDPFRAG), ("If-Match", &call.etag)],
            &good,
        )
        .await;
    assert_eq!(accepted.status, 204, "{}", accepted.body);
    let without_tag = call
        .patch(
            &[(
                "Content-Type",
                "application/trickle-ice-sdpfrag; charset=utf-8",
            )],
            &good,
        )
        .await;
    assert_eq!(without_tag.status, 204, "{}", without_tag.body);
    let end = call
        .patch(
            &[("Content-Type", SDPFRAG)],
            &fragment(&["a=end-of-candidates"]),
        )
        .await;
    assert_eq!(end.status, 204, "{}", end.body);

    // The worker's ICE agent checks the trickled candidate: binding requests for the
    // offer's ufrag (USERNAME = remote:local, RFC 8445 §7.2.2) arrive at our socket.
    let mut buf = [0u8; 1_500];
    let username = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (len, _) = client
                .recv_from(&mut buf)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            if let Some(username) = binding_username(&buf[..len]) {
                return username;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the worker never checked the trickled candidate"));
    assert!(username.starts_with("abcd:"), "USERNAME {username}");

    // Once the connection is hung up, its resource is gone.
    let hung_up = worker
        .request("DELETE", &call.location, &[("Authorization", &bearer)], b"")
        .await;
    assert_eq!(hung_up.status, 200, "{}", hung_up.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gone = call.patch(&[("Content-Type", SDPFRAG)], &good).await;
    assert_eq!(gone.status, 404, "{}", gone.body);

    let metrics = worker.metrics().await;
    for line in [
        r#"voice_worker_trickle_patches_total{result="accepted"} 3"#,
        r#"voice_worker_trickle_patches_total{result="PreconditionFailed"} 1"#,
        r#"voice_worker_trickle_patches_total{result="IceRestartUnsupported"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(worker.healthy().await);
}

#[tokio::test]
async fn private_candidates_get_no_checks_unless_allowed_and_a_flood_is_refused() {
    let worker = Worker::start(1);
    worker.reserve("team/private-1", "uid-p1").await;
    let bearer = format!("Bearer {}", token("team/private-1", "uid-p1", 600));
    let answered = worker
        .request(
            "POST",
            "/v1/sessions/team/private-1/offer",
            &[
                ("Content-Type", "application/sdp"),
                ("Authorization", &bearer),
            ],
            OFFER.as_bytes(),
        )
        .await;
    assert_eq!(answered.status, 201, "{}", answered.body);
    let call = Call {
        worker: &worker,
        location: answered.header("location").unwrap_or_default().to_owned(),
        etag: String::new(),
        bearer,
    };
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = client.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
    let loopback = format!("a=candidate:1 1 udp 2122260223 127.0.0.1 {port} typ host");
    let accepted = call
        .patch(&[("Content-Type", SDPFRAG)], &fragment(&[&loopback]))
        .await;
    assert_eq!(
        accepted.status, 204,
        "a skipped candidate is no error: {}",
        accepted.body
    );
    // The worker checked the same candidate within a second when allowed (test above);
    // here nothing arrives in five.
    let mut buf = [0u8; 1_500];
    let heard = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf)).await;
    assert!(
        heard.is_err(),
        "the worker sent {:?} to a loopback candidate it must not check",
        heard.map(|r| r.map(|(n, _)| n))
    );
    let metrics = worker.metrics().await;
    assert!(
        metrics.contains(r#"reason="candidate_private"} 1"#),
        "the skipped candidate is counted:\n{metrics}"
    );

    // One connection signals at most 32 candidates, used or skipped (loopback ones here, so
    // no check leaves this host); the 33rd is refused with a clear 400.
    let more: Vec<String> = (0..31)
        .map(|i| {
            format!(
                "a=candidate:{i} 1 udp 2122260223 127.0.0.1 {} typ host",
                6000 + i
            )
        })
        .collect();
    let more: Vec<&str> = more.iter().map(String::as_str).collect();
    let up_to_the_cap = call
        .patch(&[("Content-Type", SDPFRAG)], &fragment(&more))
        .await;
    assert_eq!(up_to_the_cap.status, 204, "{}", up_to_the_cap.body);
    let one_more = call
        .patch(&[("Content-Type", SDPFRAG)], &fragment(&[&loopback]))
        .await;
    assert_eq!(one_more.status, 400, "{}", one_more.body);
    assert_eq!(one_more.code(), "TooManyCandidates");
    assert!(one_more.body.contains("at most 32"), "{}", one_more.body);
    assert!(worker.healthy().await);
}
