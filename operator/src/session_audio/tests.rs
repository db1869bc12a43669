use voice_crds::{AudioFormat, Codec, Transport};

use voice_crds::{VoiceBackend, VoiceSession};
use voice_proto::session_audio::SessionAudio;

use super::{effective, for_worker, misfit, websocket_rate};

const BOTH: &[Codec] = &[Codec::Opus, Codec::Pcm];

fn pcm(rate: i32) -> AudioFormat {
    AudioFormat {
        codec: Codec::Pcm,
        sample_rate: rate,
        ..AudioFormat::default()
    }
}

/// The misfit of a session that sets `own` on a backend with the default format.
fn of(own: Option<&AudioFormat>, transport: Transport, supported: &[Codec]) -> Option<String> {
    misfit(
        own,
        "assistant",
        &AudioFormat::default(),
        transport,
        "builtin",
        supported,
    )
}

#[test]
fn every_pcm_rate_fits_a_websocket_and_opus_fits_webrtc() {
    for rate in [8_000, 16_000, 24_000, 48_000] {
        assert_eq!(
            of(Some(&pcm(rate)), Transport::WebSocket, BOTH),
            None,
            "{rate}"
        );
    }
    let opus = AudioFormat::default();
    assert_eq!(of(Some(&opus), Transport::WebRtc, BOTH), None);
}

#[test]
fn a_codec_the_transport_does_not_carry_is_refused_naming_the_field() {
    let why = of(Some(&pcm(16_000)), Transport::WebRtc, BOTH).unwrap_or_default();
    assert!(
        why.starts_with("spec.audio.codec: pcm does not fit spec.transport (webrtc carries opus")
            && why.contains("set codec opus"),
        "{why}"
    );
    let opus = AudioFormat::default();
    let why = of(Some(&opus), Transport::WebSocket, BOTH).unwrap_or_default();
    assert!(
        why.starts_with("spec.audio.codec: opus does not fit") && why.contains("set codec pcm"),
        "{why}"
    );
}

#[test]
fn a_codec_the_provider_lacks_is_refused_listing_what_it_has() {
    let why = of(Some(&pcm(8_000)), Transport::WebSocket, &[Codec::Opus]).unwrap_or_default();
    assert!(
        why.starts_with("spec.audio.codec: pcm is not supported by VoiceProvider \"builtin\" (supportedCodecs: opus)"),
        "{why}"
    );
    // Without spec.audio the transport picks the codec, and the backend's field is named.
    let why = of(None, Transport::WebRtc, &[Codec::Pcm]).unwrap_or_default();
    assert!(
        why.starts_with("VoiceBackend \"assistant\" spec.audio.codec (this session sets no spec.audio): opus is not supported"),
        "{why}"
    );
}

#[test]
fn a_rate_the_transport_does_not_carry_is_refused() {
    // The schema already refuses these; the check stands on its own for any caller.
    let why = of(Some(&pcm(44_100)), Transport::WebSocket, BOTH).unwrap_or_default();
    assert!(
        why.starts_with("spec.audio.sampleRate: 44100 Hz does not fit"),
        "{why}"
    );
    let slow_opus = AudioFormat {
        sample_rate: 16_000,
        ..AudioFormat::default()
    };
    let why = of(Some(&slow_opus), Transport::WebRtc, BOTH).unwrap_or_default();
    assert!(why.starts_with("spec.audio.sampleRate: 16000 Hz"), "{why}");
}

#[test]
fn stereo_is_refused_because_the_pipeline_is_mono() {
    let stereo = AudioFormat {
        channels: 2,
        ..pcm(16_000)
    };
    let why = of(Some(&stereo), Transport::WebSocket, BOTH).unwrap_or_default();
    assert!(
        why.starts_with("spec.audio.channels: 2 channels are not served")
            && why.contains("mono")
            && why.contains("set channels 1"),
        "{why}"
    );
}

#[test]
fn a_websocket_buffer_must_hold_a_frame_and_stay_bounded() {
    let tiny = AudioFormat {
        buffer_size: 319,
        ..pcm(8_000)
    };
    let why = of(Some(&tiny), Transport::WebSocket, BOTH).unwrap_or_default();
    assert!(
        why.starts_with("spec.audio.bufferSize: 319 bytes") && why.contains("320..=960000"),
        "{why}"
    );
    let frame = AudioFormat {
        buffer_size: 320,
        ..pcm(8_000)
    };
    assert_eq!(of(Some(&frame), Transport::WebSocket, BOTH), None);
    let huge = AudioFormat {
        buffer_size: 16_777_216,
        ..pcm(48_000)
    };
    assert!(of(Some(&huge), Transport::WebSocket, BOTH).is_some());
    // WebRTC has no buffer that bufferSize names, so it is not judged there.
    let tiny_opus = AudioFormat {
        buffer_size: 1,
        ..AudioFormat::default()
    };
    assert_eq!(of(Some(&tiny_opus), Transport::WebRtc, BOTH), None);
}

#[test]
fn without_spec_audio_a_session_takes_the_backends_format_with_its_transports_codec() {
    let backend = pcm(24_000);
    let ws = effective(None, &backend, Transport::WebSocket);
    assert_eq!((ws.codec, ws.sample_rate), (Codec::Pcm, 24_000));
    let rtc = effective(None, &backend, Transport::WebRtc);
    assert_eq!((rtc.codec, rtc.sample_rate), (Codec::Opus, 48_000));
    assert_eq!(
        misfit(None, "b", &backend, Transport::WebRtc, "p", BOTH),
        None
    );
    // An opus backend (48000 by its schema) gives a WebSocket 48 kHz PCM, as before.
    let ws = effective(None, &AudioFormat::default(), Transport::WebSocket);
    assert_eq!((ws.codec, ws.sample_rate), (Codec::Pcm, 48_000));
    assert_eq!(of(None, Transport::WebSocket, BOTH), None);
    assert_eq!(of(None, Transport::WebRtc, BOTH), None);
    // A session's own format wins.
    let own = pcm(8_000);
    assert_eq!(effective(Some(&own), &backend, Transport::WebSocket), own);
}

#[test]
fn a_stereo_backend_default_names_the_backends_field() {
    let backend = AudioFormat {
        channels: 2,
        ..AudioFormat::default()
    };
    let why = misfit(
        None,
        "assistant",
        &backend,
        Transport::WebRtc,
        "builtin",
        BOTH,
    )
    .unwrap_or_default();
    assert!(
        why.starts_with("VoiceBackend \"assistant\" spec.audio.channels"),
        "{why}"
    );
}

fn objects(
    backend_audio: serde_json::Value,
    session: serde_json::Value,
) -> (VoiceSession, VoiceBackend) {
    let backend = serde_json::from_value(serde_json::json!({
        "apiVersion": "voicebackends.dev/v1alpha1",
        "kind": "VoiceBackend",
        "metadata": {"name": "assistant", "namespace": "team"},
        "spec": {"provider": "p", "pipeline": {"type": "S2S", "s2s": {"provider": "echo"}}, "audio": backend_audio}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let mut spec =
        serde_json::json!({"backendRef": {"name": "assistant"}, "user": {"userID": "u1"}});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), session.as_object()) {
        spec.extend(extra.clone());
    }
    let session = serde_json::from_value(serde_json::json!({
        "apiVersion": "voicebackends.dev/v1alpha1",
        "kind": "VoiceSession",
        "metadata": {"name": "call-1", "namespace": "team"},
        "spec": spec
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    (session, backend)
}

#[test]
fn the_worker_and_the_endpoint_get_the_websockets_rate_and_buffer() {
    let opus = serde_json::json!({"codec": "opus", "sampleRate": 48000});
    let own = serde_json::json!({"transport": "websocket", "audio": {"codec": "pcm", "sampleRate": 8000, "bufferSize": 3200}});
    let (session, backend) = objects(opus.clone(), own);
    assert_eq!(websocket_rate(&session, &backend), Some(8_000));
    assert_eq!(
        for_worker(&session, &backend),
        Some(SessionAudio {
            sample_rate: 8_000,
            buffer_bytes: 3_200
        })
    );
    // A default WebSocket session is what every worker served before: nothing to send.
    let (session, backend) = objects(opus.clone(), serde_json::json!({"transport": "websocket"}));
    assert_eq!(websocket_rate(&session, &backend), Some(48_000));
    assert_eq!(for_worker(&session, &backend), None);
    // The backend's PCM rate is its WebSocket sessions' default.
    let pcm24 = serde_json::json!({"codec": "pcm", "sampleRate": 24000});
    let (session, backend) = objects(pcm24.clone(), serde_json::json!({"transport": "websocket"}));
    assert_eq!(websocket_rate(&session, &backend), Some(24_000));
    assert_eq!(
        for_worker(&session, &backend).map(|a| a.sample_rate),
        Some(24_000)
    );
    // WebRTC has no rate to state and nothing for the worker.
    let (session, backend) = objects(pcm24, serde_json::json!({}));
    assert_eq!(websocket_rate(&session, &backend), None);
    assert_eq!(for_worker(&session, &backend), None);
}

#[test]
fn a_livekit_room_carries_opus_at_48_khz_mono_like_webrtc() {
    let room = effective(None, &pcm(24_000), Transport::LiveKit);
    assert_eq!(
        (room.codec, room.sample_rate, room.channels),
        (Codec::Opus, 48_000, 1)
    );
    assert_eq!(of(None, Transport::LiveKit, BOTH), None);
    let why = of(Some(&pcm(16_000)), Transport::LiveKit, BOTH).unwrap_or_default();
    assert!(
        why.starts_with(
            "spec.audio.codec: pcm does not fit spec.transport (livekit carries opus at 48000 Hz)"
        ),
        "{why}"
    );
    let why = of(None, Transport::LiveKit, &[Codec::Pcm]).unwrap_or_default();
    assert!(why.contains("is not supported by VoiceProvider"), "{why}");
    // No WebSocket rate and nothing for the worker to be told.
    let opus = serde_json::json!({"codec": "opus", "sampleRate": 48000});
    let (session, backend) = objects(opus, serde_json::json!({"transport": "livekit"}));
    assert_eq!(websocket_rate(&session, &backend), None);
    assert_eq!(for_worker(&session, &backend), None);
}

#[test]
fn a_phone_call_is_pcmu_at_8_khz_and_needs_a_provider_that_lists_pcmu() {
    // With no spec.audio, a twilio session takes pcmu at 8000 Hz whatever the backend's
    // format, as a webrtc one takes opus at 48000.
    let format = effective(None, &pcm(16_000), Transport::Twilio);
    assert_eq!((format.codec, format.sample_rate), (Codec::Pcmu, 8_000));
    let with_pcmu = &[Codec::Opus, Codec::Pcm, Codec::Pcmu];
    assert_eq!(of(None, Transport::Twilio, with_pcmu), None);
    let why = of(None, Transport::Twilio, BOTH).unwrap_or_default();
    assert!(
        why.contains(
            "pcmu is not supported by VoiceProvider \"builtin\" (supportedCodecs: opus, pcm)"
        ),
        "{why}"
    );
    let why = of(Some(&pcm(8_000)), Transport::Twilio, with_pcmu).unwrap_or_default();
    assert!(
        why.starts_with("spec.audio.codec: pcm does not fit spec.transport (twilio carries pcmu")
            && why.contains("set codec pcmu"),
        "{why}"
    );
}
