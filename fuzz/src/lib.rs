//! What must hold for every parser that reads network input, whatever the bytes: each
//! function here is one fuzz target's body (`fuzz_targets/`, run by `cargo xtask fuzz`), and
//! the tests below run the same bodies over the seeds and over random input on every
//! `cargo xtask test`. A panic or a failed assertion is a finding.

use std::net::SocketAddr;

use voice_proto::session_config::{self, SessionConfig};
use voice_proto::token::{JoinClaims, mint, verify};
use voice_worker::pipeline::audio::{encode_wav, parse_wav, resample};
use voice_worker::pipeline::providers::sse::SseParser;
use voice_worker::transport::{sdp, trickle, udp_mux};

pub mod websocket;
pub use websocket::websocket_frames;

/// The fuzz targets, by name.
pub const TARGETS: &[&str] = &[
    "sdp_offer",
    "join_token",
    "trickle_fragment",
    "sse_stream",
    "wav",
    "stun_ufrag",
    "websocket_frames",
    "session_config",
    "twilio_media",
];

/// An SDP offer posted by a client: checking it never panics, and the answer rewrite keeps
/// only host UDP candidates on the advertised address and passive TCP host candidates on
/// the advertised TCP address.
pub fn sdp_offer(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = sdp::check_offer(&text);
    let _ = sdp::ice_credentials(&text);
    let advertised: SocketAddr = ([192, 0, 2, 7], 3478).into();
    let tcp: SocketAddr = ([192, 0, 2, 7], 3479).into();
    let answer = sdp::rewrite_candidates(&text, advertised, Some(tcp));
    for line in answer.lines() {
        if let Some(candidate) = line.strip_prefix("a=candidate:") {
            let fields: Vec<&str> = candidate.split_whitespace().collect();
            assert!(
                fields.len() >= 8 && fields[7] == "host",
                "a non-host candidate survived: {line:?}"
            );
            let expected = if fields[2].eq_ignore_ascii_case("udp") {
                ("192.0.2.7", "3478")
            } else {
                assert!(
                    fields[2].eq_ignore_ascii_case("tcp")
                        && fields.get(8..10) == Some(&["tcptype", "passive"][..]),
                    "a candidate other than UDP or passive TCP survived: {line:?}"
                );
                ("192.0.2.7", "3479")
            };
            assert_eq!(
                (fields[4], fields[5]),
                expected,
                "a candidate kept another address: {line:?}"
            );
        }
    }
}

const KEY: &[u8] = b"fuzz-signing-key-of-32-bytes!!!!";

/// A bearer token from a client: only a token signed with the key for this very session
/// and uid passes, and any claims the operator mints verify back unchanged.
pub fn join_token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(claims) = verify(KEY, &text, "team/call", "uid-1", 1_000) {
        assert_eq!(
            (claims.sub.as_str(), claims.uid.as_str()),
            ("team/call", "uid-1")
        );
        assert!(claims.exp > 1_000, "an expired token passed: {claims:?}");
    }
    // Claims made of arbitrary text round-trip through mint and verify.
    let mut parts = text.splitn(3, '\n');
    let claims = JoinClaims {
        sub: parts.next().unwrap_or_default().to_owned(),
        uid: parts.next().unwrap_or_default().to_owned(),
        backend: parts.next().unwrap_or_default().to_owned(),
        user: String::new(),
        iat: 1,
        exp: u64::from(data.first().copied().unwrap_or(0)) + 2_000,
    };
    let token = mint(KEY, &claims);
    let back = verify(KEY, &token, &claims.sub, &claims.uid, 1_000)
        .unwrap_or_else(|e| panic!("a minted token was refused ({e}): {claims:?}"));
    assert_eq!(back, claims);
    assert!(
        verify(
            b"another-key-of-thirty-two-bytes!",
            &token,
            &claims.sub,
            &claims.uid,
            1_000
        )
        .is_err()
    );
}

/// A trickle-ICE `PATCH` body and its `If-Match` header: parsing never panics.
pub fn trickle_fragment(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = trickle::parse(&text);
    let _ = trickle::if_match(&text, "\"abc\"");
}

/// A provider's server-sent event stream: how the bytes are split across reads never
/// changes the events, and no event grows past the limit.
pub fn sse_stream(data: &[u8]) {
    let mut whole = SseParser::default();
    let at_once = whole.push(data);
    let cut = usize::from(data.first().copied().unwrap_or(0)).min(data.len());
    let mut split = SseParser::default();
    let first = split.push(&data[..cut]);
    let in_two = first.and_then(|mut events| {
        events.extend(split.push(&data[cut..])?);
        Ok(events)
    });
    match (&at_once, &in_two) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "events depend on where the stream was cut at {cut}"),
        (Err(_), Err(_)) => {}
        _ => panic!("cutting at {cut} changed the outcome: {at_once:?} vs {in_two:?}"),
    }
}

/// Audio from a provider or a client as WAV: parsing never panics, what parses survives a
/// round trip, and resampling it to the pipeline's rate gives the expected length.
pub fn wav(data: &[u8]) {
    let Ok(pcm) = parse_wav(data) else {
        return;
    };
    assert_eq!(
        parse_wav(&encode_wav(&pcm)).as_ref(),
        Ok(&pcm),
        "round trip"
    );
    if pcm.rate > 0 && pcm.samples.len() < 100_000 {
        let out = resample(&pcm, 48_000);
        let expected = pcm.samples.len() as u64 * 48_000 / u64::from(pcm.rate);
        assert!(
            (out.len() as u64).abs_diff(expected) <= 2 + expected / 100,
            "{} samples at {} Hz became {} at 48 kHz",
            pcm.samples.len(),
            pcm.rate,
            out.len()
        );
    }
}

/// A datagram on the shared UDP port: a ufrag read from it is non-empty, has no colon and
/// is bytes of the datagram itself.
pub fn stun_ufrag(data: &[u8]) {
    if let Some(ufrag) = udp_mux::binding_request_ufrag(data) {
        assert!(!ufrag.is_empty() && !ufrag.contains(':'), "{ufrag:?}");
        assert!(
            data.windows(ufrag.len()).any(|w| w == ufrag.as_bytes()),
            "{ufrag:?} is not in the datagram"
        );
    }
}

/// The backend configuration the `session_config` target applies sessions to: network
/// providers with endpoints and Secret names that no session may change.
const BACKEND: &str = r#"{"pipeline": {"type": "STT_TTS",
    "stt": {"provider": "openai", "endpoint": "https://stt.example/v1", "credentialsSecretRef": {"name": "k", "key": "stt"}},
    "tts": {"provider": "openai", "endpoint": "https://tts.example/v1", "credentialsSecretRef": {"name": "k", "key": "tts"}}},
    "agent": {"type": "Llm", "llm": {"endpoint": "https://llm.example/v1", "model": "m", "systemPrompt": "p"}}}"#;

/// A `ReserveSession` configuration from the control channel: what parses is in range,
/// round-trips, holds no key besides the overrides, and applied to a backend changes no
/// provider, endpoint, model or Secret name.
pub fn session_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(config) = SessionConfig::parse(&text) else {
        return;
    };
    assert_eq!(
        SessionConfig::parse(&config.to_json()).as_ref(),
        Ok(&config),
        "round trip"
    );
    if let Some(ms) = config.silence_timeout_ms {
        assert!(
            (1..=session_config::MAX_SILENCE_TIMEOUT_MS).contains(&ms),
            "{ms}"
        );
    }
    let value: serde_json::Value =
        serde_json::from_str(&config.to_json()).unwrap_or_else(|e| panic!("{e}"));
    let allowed = ["agent", "silenceTimeoutMs", "userId", "metadata", "context"];
    for key in value.as_object().map(|m| m.keys()).into_iter().flatten() {
        assert!(allowed.contains(&key.as_str()), "key {key:?} survived");
    }
    let backend = voice_worker::pipeline::spec::PipelineSpec::parse(BACKEND)
        .unwrap_or_else(|e| panic!("{e}"));
    let before = (
        serde_json::to_value(&backend.pipeline).ok(),
        backend
            .agent
            .as_ref()
            .and_then(|a| a.llm.as_ref())
            .map(|l| (l.endpoint.clone(), l.model.clone())),
    );
    let applied = backend.with_session(&config);
    let mut pipeline = serde_json::to_value(&applied.pipeline).ok();
    let mut expected = before.0;
    // Only the silence timeout may differ in the pipeline.
    for v in [&mut pipeline, &mut expected].into_iter().flatten() {
        if let Some(p) = v.as_object_mut() {
            p.remove("turnDetection");
        }
    }
    assert_eq!(pipeline, expected, "a session changed the backend's stages");
    let llm = applied.agent.as_ref().and_then(|a| a.llm.as_ref());
    assert_eq!(
        llm.map(|l| (l.endpoint.clone(), l.model.clone())),
        before.1,
        "a session changed the agent's endpoint or model"
    );
}

/// A Twilio Media Streams message from whoever opened the stream: reading it never panics,
/// a `start` that is accepted is μ-law at 8 kHz with a stream id, and `media` decodes to
/// one sample per μ-law byte.
pub fn twilio_media(data: &[u8]) {
    use voice_worker::transport::twilio_media::{FromTwilio, decode, encode, parse};
    let text = String::from_utf8_lossy(data);
    match parse(&text) {
        Ok(FromTwilio::Start(start)) => assert!(!start.stream_sid.is_empty(), "an empty streamSid"),
        Ok(FromTwilio::Media(media)) => {
            let samples = decode(&media.mulaw);
            assert_eq!(samples.len(), media.mulaw.len());
            assert_eq!(decode(&encode(&samples)), samples, "μ-law codes round trip");
        }
        _ => {}
    }
}

/// Runs target `name` on `data`; false for an unknown name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "sdp_offer" => sdp_offer(data),
        "join_token" => join_token(data),
        "trickle_fragment" => trickle_fragment(data),
        "sse_stream" => sse_stream(data),
        "wav" => wav(data),
        "stun_ufrag" => stun_ufrag(data),
        "websocket_frames" => websocket_frames(data),
        "session_config" => session_config(data),
        "twilio_media" => twilio_media(data),
        _ => return false,
    }
    true
}

/// Valid inputs each target starts from (the fuzzer mutates them; the tests replay them).
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    let text = |s: &str| s.as_bytes().to_vec();
    match name {
        "sdp_offer" => vec![text(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
             a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\n\
             a=fingerprint:sha-256 AA:BB\r\na=setup:actpass\r\na=sendrecv\r\n\
             a=rtpmap:111 opus/48000/2\r\n\
             a=candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host\r\n\
             a=candidate:2 1 tcp 1518280447 10.0.0.1 9 typ host tcptype passive\r\n",
        )],
        "join_token" => {
            let claims = JoinClaims {
                sub: "team/call".into(),
                uid: "uid-1".into(),
                backend: "b".into(),
                user: String::new(),
                iat: 1,
                exp: 5_000,
            };
            vec![mint(KEY, &claims).into_bytes(), text("team/call\nuid-1\nb")]
        }
        "trickle_fragment" => vec![text(
            "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n\
             a=mid:0\r\na=candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host\r\na=end-of-candidates\r\n",
        )],
        "sse_stream" => vec![text(
            "\x10event: delta\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n: keep-alive\n\ndata: [DONE]\n\n",
        )],
        "wav" => {
            let pcm = voice_worker::pipeline::audio::Pcm {
                rate: 16_000,
                samples: (0..320).map(|i| (i * 100) as i16).collect(),
            };
            vec![encode_wav(&pcm)]
        }
        "stun_ufrag" => {
            let user = b"local:remote";
            let mut d = vec![0x00, 0x01, 0x00, 0x10, 0x21, 0x12, 0xa4, 0x42];
            d.extend([7u8; 12]);
            d.extend([0x00, 0x06, 0x00, 0x0c]);
            d.extend(user);
            vec![d]
        }
        "websocket_frames" => websocket::seeds().into_iter().map(|(s, _)| s).collect(),
        "session_config" => vec![
            text(
                r#"{"agent":{"streamingMode":false,"systemPrompt":"be brief"},"silenceTimeoutMs":700,"userId":"u","metadata":{"plan":"gold"},"context":{"turns":1,"transcript":[{"speaker":"User","text":"hi"},{"speaker":"Agent","text":"hello"}]}}"#,
            ),
            text(r#"{"agent":{"endpoint":"http://evil"}}"#),
        ],
        "twilio_media" => vec![
            text(
                r#"{"event":"start","sequenceNumber":"1","streamSid":"MZ1","start":{"streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{"token":"a.b.c"}}}"#,
            ),
            text(
                r#"{"event":"media","streamSid":"MZ1","media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"/35/fw=="}}"#,
            ),
            text(
                r#"{"event":"dtmf","streamSid":"MZ1","dtmf":{"track":"inbound_track","digit":"1"}}"#,
            ),
            text(r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"reply-1"}}"#),
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_target_runs_its_seeds() {
        for target in TARGETS {
            let seeds = seeds(target);
            assert!(!seeds.is_empty(), "{target} has no seeds");
            for seed in seeds {
                assert!(run(target, &seed), "{target} is not wired");
            }
        }
        assert!(!run("nope", b""));
    }

    #[test]
    fn every_target_has_a_fuzz_binary() {
        let manifest = include_str!("../Cargo.toml");
        for target in TARGETS {
            assert!(
                manifest.contains(&format!(
                    "name = \"{target}\"\npath = \"fuzz_targets/{target}.rs\""
                )),
                "{target} has no [[bin]] in fuzz/Cargo.toml"
            );
            assert!(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join(format!("fuzz_targets/{target}.rs"))
                    .is_file()
            );
        }
    }

    #[test]
    fn the_seeds_are_real_inputs() {
        let offer = String::from_utf8(seeds("sdp_offer").remove(0)).unwrap();
        assert!(sdp::check_offer(&offer).is_ok());
        assert!(
            trickle::parse(&String::from_utf8(seeds("trickle_fragment").remove(0)).unwrap())
                .is_ok()
        );
        assert!(parse_wav(&seeds("wav").remove(0)).is_ok());
        assert_eq!(
            udp_mux::binding_request_ufrag(&seeds("stun_ufrag").remove(0)),
            Some("local")
        );
        let token = String::from_utf8(seeds("join_token").remove(0)).unwrap();
        assert!(verify(KEY, &token, "team/call", "uid-1", 1_000).is_ok());
        let configs = seeds("session_config");
        assert!(SessionConfig::parse(&String::from_utf8_lossy(&configs[0])).is_ok());
        assert!(SessionConfig::parse(&String::from_utf8_lossy(&configs[1])).is_err());
    }

    #[test]
    fn websocket_seeds_get_their_exact_outcomes() {
        for (seed, expected) in websocket::seeds() {
            assert_eq!(
                websocket::outcomes(&seed),
                expected,
                "{:?}",
                &seed[..seed.len().min(16)]
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_break_no_parser(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            for target in TARGETS {
                run(target, &data);
            }
        }

        #[test]
        fn mutated_seeds_break_no_parser(target in 0..TARGETS.len(), at in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
            let name = TARGETS[target];
            for mut seed in seeds(name) {
                if !seed.is_empty() {
                    let i = at % seed.len();
                    seed[i] = byte;
                    seed.truncate(cut % (seed.len() + 1));
                }
                run(name, &seed);
            }
        }
    }
}
