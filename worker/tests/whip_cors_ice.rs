//! What a WHIP client on another origin and behind a NAT gets from the real worker binary:
//! CORS for the origins the backend allows (and nothing for others), and the backend's
//! STUN/TURN servers as RFC 9725 `Link` headers and as the demo page's JSON, with static
//! credentials as configured and TURN REST credentials minted for the session.

mod common;

use base64::Engine;
use common::{Worker, token};

/// An offer as a browser would send it, with no candidates (they trickle later).
const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
    a=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n\
    a=mid:0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
    a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
    a=setup:actpass\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n";

const APP: &str = "https://app.example.com";

fn all<'a>(response: &'a common::Response, name: &str) -> Vec<&'a str> {
    response
        .headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[tokio::test]
async fn only_allowed_origins_get_cors_and_the_answer_headers_are_exposed() {
    let worker = Worker::start_with_env(
        2,
        &[(
            "ALLOWED_ORIGINS",
            "https://app.example.com,http://localhost:3000",
        )],
    );
    worker.reserve("team/cors-1", "uid-c1").await;
    worker.reserve("team/cors-2", "uid-c2").await;
    let path = "/v1/sessions/team/cors-1/offer";
    let preflight = |origin: &'static str| {
        let worker = &worker;
        async move {
            worker
                .request(
                    "OPTIONS",
                    path,
                    &[
                        ("Origin", origin),
                        ("Access-Control-Request-Method", "POST"),
                        (
                            "Access-Control-Request-Headers",
                            "authorization,content-type",
                        ),
                    ],
                    b"",
                )
                .await
        }
    };

    let allowed = preflight(APP).await;
    assert!(
        allowed.status < 300,
        "preflight: {} {}",
        allowed.status,
        allowed.body
    );
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some(APP),
        "{:?}",
        allowed.headers
    );
    let methods = allowed
        .header("access-control-allow-methods")
        .unwrap_or_default()
        .to_ascii_uppercase();
    assert!(
        methods.contains("POST") && methods.contains("PATCH") && methods.contains("DELETE"),
        "{methods}"
    );
    let headers = allowed
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        headers.contains("authorization") && headers.contains("content-type"),
        "{headers}"
    );

    let refused = preflight("https://evil.example.net").await;
    assert!(
        !refused
            .headers
            .iter()
            .any(|(n, _)| n.starts_with("access-control-")),
        "a refused origin gets no CORS header: {:?}",
        refused.headers
    );

    // The actual request from the allowed origin: answered, with Location, Link and ETag
    // readable by the page's script.
    let bearer = format!("Bearer {}", token("team/cors-1", "uid-c1", 600));
    let answered = worker
        .request(
            "POST",
            path,
            &[
                ("Origin", APP),
                ("Content-Type", "application/sdp"),
                ("Authorization", &bearer),
            ],
            OFFER.as_bytes(),
        )
        .await;
    assert_eq!(answered.status, 201, "{}", answered.body);
    assert_eq!(answered.header("access-control-allow-origin"), Some(APP));
    let exposed = answered
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for name in ["location", "link", "etag"] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }

    // The same request from another origin is served (a non-browser client has no origin
    // to check) but carries no CORS header, so a browser keeps the answer from the page.
    let bearer2 = format!("Bearer {}", token("team/cors-2", "uid-c2", 600));
    let foreign = worker
        .request(
            "POST",
            "/v1/sessions/team/cors-2/offer",
            &[
                ("Origin", "https://evil.example.net"),
                ("Content-Type", "application/sdp"),
                ("Authorization", &bearer2),
            ],
            OFFER.as_bytes(),
        )
        .await;
    assert!(
        !foreign
            .headers
            .iter()
            .any(|(n, _)| n.starts_with("access-control-")),
        "a refused origin gets no CORS header: {:?}",
        foreign.headers
    );
}

#[tokio::test]
async fn without_allowed_origins_no_cors_header_is_ever_sent() {
    let worker = Worker::start(1);
    worker.reserve("team/nocors-1", "uid-n1").await;
    let preflight = worker
        .request(
            "OPTIONS",
            "/v1/sessions/team/nocors-1/offer",
            &[("Origin", APP), ("Access-Control-Request-Method", "POST")],
            b"",
        )
        .await;
    assert_eq!(preflight.status, 405, "{}", preflight.body);
    assert_eq!(preflight.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn ice_servers_reach_clients_with_static_and_session_bound_turn_credentials() {
    let ice = serde_json::json!([
        {"urls": ["stun:stun.example.com:3478"]},
        {"urls": ["turn:turn.example.com:3478?transport=udp"], "authSecretRef": {"name": "turn-rest", "key": "secret"}},
        {"urls": ["turns:turn.example.com:5349"],
         "usernameSecretRef": {"name": "turn-static", "key": "username"},
         "credentialSecretRef": {"name": "turn-static", "key": "password"}},
    ])
    .to_string();
    let worker = Worker::start_with_env(
        1,
        &[
            ("ICE_SERVERS", ice.as_str()),
            // How the operator's pod template passes the Secrets' keys.
            ("VOICE_SECRET_TURN_REST_SECRET", "north-wind"),
            ("VOICE_SECRET_TURN_STATIC_USERNAME", "alice"),
            ("VOICE_SECRET_TURN_STATIC_PASSWORD", "s3cret"),
        ],
    );
    worker.reserve("team/ice-1", "uid-i1").await;
    let join = token("team/ice-1", "uid-i1", 900);
    let exp: u64 = serde_json::from_slice::<serde_json::Value>(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(join.split('.').nth(1).unwrap_or_default())
            .unwrap_or_default(),
    )
    .ok()
    .and_then(|claims| claims["exp"].as_u64())
    .unwrap_or_else(|| panic!("no exp in the token"));
    let username = format!("{exp}:team/ice-1");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"north-wind");
    let credential = base64::engine::general_purpose::STANDARD
        .encode(ring::hmac::sign(&key, username.as_bytes()).as_ref());

    let bearer = format!("Bearer {join}");
    let answered = worker
        .request(
            "POST",
            "/v1/sessions/team/ice-1/offer",
            &[
                ("Content-Type", "application/sdp"),
                ("Authorization", &bearer),
            ],
            OFFER.as_bytes(),
        )
        .await;
    assert_eq!(answered.status, 201, "{}", answered.body);
    assert_eq!(
        all(&answered, "link"),
        vec![
            "<stun:stun.example.com:3478>; rel=\"ice-server\"".to_owned(),
            format!("<turn:turn.example.com:3478?transport=udp>; rel=\"ice-server\"; username=\"{username}\"; credential=\"{credential}\"; credential-type=\"password\""),
            "<turns:turn.example.com:5349>; rel=\"ice-server\"; username=\"alice\"; credential=\"s3cret\"; credential-type=\"password\"".to_owned(),
        ]
    );
    assert!(
        !answered
            .headers
            .iter()
            .any(|(_, v)| v.contains("north-wind"))
    );

    // The demo page's source: the same servers as RTCIceServer JSON, behind the same token.
    let json = worker
        .request(
            "GET",
            "/v1/sessions/team/ice-1/ice-servers",
            &[("Authorization", &bearer)],
            b"",
        )
        .await;
    assert_eq!(json.status, 200, "{}", json.body);
    assert_eq!(json.header("cache-control"), Some("no-store"));
    let body: serde_json::Value =
        serde_json::from_str(&json.body).unwrap_or_else(|e| panic!("{e}: {}", json.body));
    assert_eq!(
        body,
        serde_json::json!({"iceServers": [
            {"urls": ["stun:stun.example.com:3478"]},
            {"urls": ["turn:turn.example.com:3478?transport=udp"], "username": username, "credential": credential},
            {"urls": ["turns:turn.example.com:5349"], "username": "alice", "credential": "s3cret"},
        ]})
    );
    let anonymous = worker
        .request("GET", "/v1/sessions/team/ice-1/ice-servers", &[], b"")
        .await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(anonymous.code(), "TokenMissing");
}

#[tokio::test]
async fn a_worker_without_its_turn_secret_refuses_to_start_and_names_it() {
    let ice = r#"[{"urls":["turn:127.0.0.1:3478"],"authSecretRef":{"name":"turn-missing","key":"secret"}}]"#;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_voice-worker"))
        .env("ICE_SERVERS", ice)
        .env(
            "VOICE_SECRETS_DIR",
            std::env::temp_dir().join("voice-no-secrets-here"),
        )
        .env("POD_IP", "127.0.0.1")
        .env("UDP_PORT", "0")
        .args(["--grpc-port", &common::free_port().to_string()])
        .args(["--http-port", &common::free_port().to_string()])
        .output()
        .unwrap_or_else(|e| panic!("running voice-worker: {e}"));
    assert!(!output.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("VOICE_SECRET_TURN_MISSING_SECRET"), "{text}");
}
