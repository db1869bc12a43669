//! Whether a session's audio format can be served: its codec against its transport and its
//! provider's `supportedCodecs`, its rate against the transport, its channels against the
//! worker (mono), and its `bufferSize` against what a WebSocket can honour.
//!
//! Pure: the allocator passes the session, its backend and the provider, and a misfit
//! keeps the session `Pending` with `Admitted=False`, reason `AudioFormatNotSupported`, and
//! the message from here; the admission hands the fitted format to the worker and puts the
//! WebSocket's rate in the endpoint.

use kube::ResourceExt;
use voice_crds::{AudioFormat, Codec, Transport, VoiceBackend, VoiceProvider, VoiceSession};
use voice_proto::session_audio::{self, MAX_BUFFER_BYTES, PCM_RATES, SessionAudio};

/// The `Admitted=False` reason of a session whose audio does not fit.
pub const REASON: &str = admission_core::reason::AUDIO_FORMAT_NOT_SUPPORTED;

/// The codec and only rate a WebRTC session carries, and a LiveKit room's (also WebRTC, to
/// the LiveKit server).
const WEBRTC: (Codec, i32) = (Codec::Opus, 48_000);

/// The codec and only rate of a Twilio Media Stream.
const TWILIO: (Codec, i32) = (Codec::Pcmu, 8_000);

/// The format a session runs with: its own `spec.audio`, or else its backend's with the
/// codec its transport carries. A backend serves both transports, so its codec can only be a
/// default for the transport that carries it: WebRTC (and a LiveKit room) is always opus at
/// 48000 Hz, and a WebSocket is PCM16 at the backend's rate (48000 for an opus backend, as
/// before).
pub fn effective(
    session: Option<&AudioFormat>,
    backend: &AudioFormat,
    transport: Transport,
) -> AudioFormat {
    if let Some(own) = session {
        return own.clone();
    }
    match transport {
        Transport::WebRtc | Transport::LiveKit => AudioFormat {
            codec: WEBRTC.0,
            sample_rate: WEBRTC.1,
            ..backend.clone()
        },
        Transport::WebSocket => AudioFormat {
            codec: Codec::Pcm,
            ..backend.clone()
        },
        Transport::Twilio => AudioFormat {
            codec: TWILIO.0,
            sample_rate: TWILIO.1,
            ..backend.clone()
        },
    }
}

/// Why `session`'s audio cannot be served, naming the field and the fix; `None` when it can.
/// `backend_name` and the backend's format stand in when the session sets no `spec.audio`.
pub fn misfit(
    session: Option<&AudioFormat>,
    backend_name: &str,
    backend: &AudioFormat,
    transport: Transport,
    provider_name: &str,
    supported: &[Codec],
) -> Option<String> {
    let format = effective(session, backend, transport);
    // The field as the user finds it: the session's own, or the backend's it inherited.
    let field = |name: &str| match session {
        Some(_) => format!("spec.audio.{name}"),
        None => format!(
            "VoiceBackend {backend_name:?} spec.audio.{name} (this session sets no spec.audio)"
        ),
    };
    let carried = match transport {
        Transport::WebRtc => "webrtc carries opus at 48000 Hz",
        Transport::LiveKit => "livekit carries opus at 48000 Hz",
        Transport::WebSocket => "websocket carries pcm (PCM16) at 8000, 16000, 24000 or 48000 Hz",
        Transport::Twilio => "twilio carries pcmu (G.711 μ-law) at 8000 Hz",
    };
    let transport_codec = match transport {
        Transport::WebRtc | Transport::LiveKit => WEBRTC.0,
        Transport::WebSocket => Codec::Pcm,
        Transport::Twilio => TWILIO.0,
    };
    if format.codec != transport_codec {
        return Some(format!(
            "{}: {} does not fit spec.transport ({carried}); set codec {}, or use the transport that carries {}",
            field("codec"),
            format.codec.as_str(),
            transport_codec.as_str(),
            format.codec.as_str(),
        ));
    }
    if !supported.contains(&format.codec) {
        let listed: Vec<_> = supported.iter().map(|c| c.as_str()).collect();
        return Some(format!(
            "{}: {} is not supported by VoiceProvider {provider_name:?} (supportedCodecs: {}); use a transport whose codec the provider lists (spec.transport: {carried})",
            field("codec"),
            format.codec.as_str(),
            listed.join(", "),
        ));
    }
    let rate_fits = match transport {
        Transport::WebRtc | Transport::LiveKit => format.sample_rate == WEBRTC.1,
        Transport::WebSocket => {
            u32::try_from(format.sample_rate).is_ok_and(|r| PCM_RATES.contains(&r))
        }
        Transport::Twilio => format.sample_rate == TWILIO.1,
    };
    if !rate_fits {
        return Some(format!(
            "{}: {} Hz does not fit spec.transport ({carried}); use one of those rates",
            field("sampleRate"),
            format.sample_rate,
        ));
    }
    if format.channels != 1 {
        return Some(format!(
            "{}: {} channels are not served: the worker's pipeline is mono (one channel in, one out); set channels 1 and mix down on the client",
            field("channels"),
            format.channels,
        ));
    }
    // Only a WebSocket has a buffer bufferSize names (its largest inbound message); a WebRTC
    // session's buffering is the jitter buffer, sized by the provider config.
    if transport == Transport::WebSocket {
        let min = session_audio::frame_bytes(u32::try_from(format.sample_rate).unwrap_or(0));
        let fits =
            u32::try_from(format.buffer_size).is_ok_and(|b| (min..=MAX_BUFFER_BYTES).contains(&b));
        if !fits {
            return Some(format!(
                "{}: {} bytes cannot be a WebSocket's largest message: it must hold one 20 ms frame at {} Hz ({min} bytes) and at most {MAX_BUFFER_BYTES} (ten seconds at 48 kHz); set bufferSize within {min}..={MAX_BUFFER_BYTES}",
                field("bufferSize"),
                format.buffer_size,
                format.sample_rate,
            ));
        }
    }
    None
}

/// [`misfit`] for API objects: `None` when the backend or provider is missing (the
/// allocator says `BackendNotFound` or `BackendNotAccepted` for those).
pub fn misfit_of(
    session: &VoiceSession,
    backend: Option<&VoiceBackend>,
    provider: Option<&VoiceProvider>,
) -> Option<String> {
    let (backend, provider) = (backend?, provider?);
    misfit(
        session.spec.audio.as_ref(),
        &backend.name_any(),
        &backend.spec.audio,
        session.spec.transport,
        &backend.spec.provider,
        &provider.spec.capabilities.supported_codecs,
    )
}

/// What the worker needs of a fitted format: the WebSocket's rate and message limit. `None`
/// for WebRTC (nothing to say) and for a WebSocket that matches what workers did before the
/// field existed, so a worker older than the operator still takes default sessions.
pub fn for_worker(session: &VoiceSession, backend: &VoiceBackend) -> Option<SessionAudio> {
    let format = effective(
        session.spec.audio.as_ref(),
        &backend.spec.audio,
        session.spec.transport,
    );
    let audio = websocket_audio(session.spec.transport, &format)?;
    (audio != session_audio::DEFAULT).then_some(audio)
}

/// The WebSocket rate of a session, for its endpoint URL; `None` for WebRTC.
pub fn websocket_rate(session: &VoiceSession, backend: &VoiceBackend) -> Option<u32> {
    let format = effective(
        session.spec.audio.as_ref(),
        &backend.spec.audio,
        session.spec.transport,
    );
    websocket_audio(session.spec.transport, &format).map(|a| a.sample_rate)
}

fn websocket_audio(transport: Transport, format: &AudioFormat) -> Option<SessionAudio> {
    (transport == Transport::WebSocket).then(|| SessionAudio {
        sample_rate: u32::try_from(format.sample_rate).unwrap_or(0),
        buffer_bytes: u32::try_from(format.buffer_size).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests;
