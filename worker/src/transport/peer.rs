//! One WebRTC session: answer the offer, wait for ICE and DTLS, run the echo media loop,
//! report connected and ended, release the slot when the peer goes away.
//!
//! The peer connection's callbacks run on its driver, so they only forward events into
//! a bounded queue; the session task does the work (ledger, events, media) and a full
//! queue is counted, never waited on.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use tokio::sync::{mpsc, watch};
use voice_proto::worker::v1::Connected;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
    Registry, SettingEngineBuilder, register_default_interceptors,
};

use super::candidate_policy::FilteredOffer;
use super::mux_runtime::MuxRuntime;
use super::peers::{Listed, LivePeer};
use super::rtcp_reports;
use super::rtp_media::{self, RtpOut};
use super::sdp::{OfferInfo, ice_credentials, rewrite_candidates};
use crate::connections::{Claim, random_id};
use crate::pipeline::wiring::Described;
use crate::signaling::{MediaContext, SignalingError};

/// Events forwarded from the driver to the session task.
enum PeerEvent {
    State(RTCPeerConnectionState),
    Track(Arc<dyn TrackRemote>),
    DataChannel(Arc<dyn DataChannel>),
}

/// Peer events queued before the driver's callbacks start dropping (and counting) them.
const EVENT_QUEUE: usize = 64;

/// Received RTP packets queued for the media loop: a second of 20 ms audio.
const RTP_QUEUE: usize = 50;

/// How long the answer waits for local ICE gathering (host candidates are immediate).
const GATHER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

struct Forwarder {
    events: mpsc::Sender<PeerEvent>,
    gathered: watch::Sender<bool>,
    metrics: crate::metrics::MediaMetrics,
}

impl Forwarder {
    fn forward(&self, event: PeerEvent) {
        if self.events.try_send(event).is_err() {
            self.metrics.count_dropped("peer_event_queue_full");
        }
    }
}

#[tonic::async_trait]
impl PeerConnectionEventHandler for Forwarder {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.forward(PeerEvent::State(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        self.forward(PeerEvent::Track(track));
    }

    async fn on_data_channel(&self, data_channel: Arc<dyn DataChannel>) {
        self.forward(PeerEvent::DataChannel(data_channel));
    }
}

/// Opus as WebRTC signals it; the only codec the worker's peers negotiate.
pub(crate) fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        // SDP always signals Opus as two channels (RFC 7587 §7); we send mono in it.
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// The agent's outgoing audio: one Opus stream with SSRC `ssrc` (also the LiveKit agent's).
pub(crate) fn agent_track(
    stream_id: String,
    track_id: String,
    ssrc: u32,
) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        stream_id,
        track_id,
        "agent".to_owned(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: opus_codec(),
            ..Default::default()
        }],
    )))
}

fn negotiation(e: impl std::fmt::Display) -> SignalingError {
    SignalingError::Negotiation(e.to_string())
}

fn internal(e: impl std::fmt::Display) -> SignalingError {
    SignalingError::Internal(e.to_string())
}

/// What the client gets back for its offer.
#[derive(Debug)]
pub struct Answered {
    /// The SDP answer, whose candidates name the UDP mux.
    pub sdp: String,
    /// The strong entity-tag of the ICE session, for `ETag` and trickle `If-Match`.
    pub etag: String,
}

/// Answers `offer` for the session of `claim` and starts the session task.
pub async fn answer(
    ctx: Arc<MediaContext>,
    claim: Claim,
    offer: FilteredOffer,
    info: OfferInfo,
) -> Result<Answered, SignalingError> {
    let FilteredOffer {
        sdp: offer,
        signalled,
        ..
    } = offer;
    let remote_credentials = ice_credentials(&offer);
    let ufrag = random_id(16);
    let runtime = Arc::new(MuxRuntime::new(
        ctx.mux.clone(),
        ctx.tcp_mux.clone(),
        ufrag.clone(),
    ));

    let mut media_engine = MediaEngine::default();
    media_engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus_codec(),
                payload_type: info.opus_payload_type,
            },
            RtpCodecKind::Audio,
        )
        .map_err(internal)?;
    let registry = register_default_interceptors(Registry::new(), &mut media_engine)
        .map_err(internal)?
        .with(
            rtcp_reports::METER_SLOT.into(),
            rtcp_reports::ReceptionReportMeter::new(ctx.metrics.clone()),
        );
    let settings = SettingEngineBuilder::new()
        .with_ice_credentials(ufrag.clone(), random_id(32))
        // The mux may be bound to loopback (tests, a single-host demo).
        .with_include_loopback_candidate(true)
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .build();
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    let (gathered_tx, mut gathered) = watch::channel(false);
    let handler = Arc::new(Forwarder {
        events: events_tx,
        gathered: gathered_tx,
        metrics: ctx.metrics.clone(),
    });
    let bind = std::net::SocketAddr::new(ctx.mux.local_addr().map_err(internal)?.ip(), 0);
    let pc: Arc<dyn PeerConnection> = Arc::new(
        PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .with_handler(handler)
            .with_runtime(runtime.clone())
            .with_udp_addrs(vec![bind])
            // A throwaway listener the runtime swaps for the shared ICE-TCP port, if any.
            .with_tcp_addrs(ctx.tcp_mux.iter().map(|_| bind).collect())
            .build()
            .await
            .map_err(internal)?,
    );

    let ssrc = u32::from_be_bytes(random_id(4).as_bytes().try_into().unwrap_or([7; 4]));
    let track = agent_track(
        format!("voice-{}", claim.connection_id),
        format!("agent-{}", claim.connection_id),
        ssrc,
    );

    let negotiated = async {
        pc.add_track(track.clone() as Arc<dyn TrackLocal>)
            .await
            .map_err(internal)?;
        let offer = RTCSessionDescription::offer(offer).map_err(negotiation)?;
        pc.set_remote_description(offer)
            .await
            .map_err(negotiation)?;
        let answer = pc.create_answer(None).await.map_err(negotiation)?;
        pc.set_local_description(answer)
            .await
            .map_err(negotiation)?;
        let _ = tokio::time::timeout(GATHER_WAIT, gathered.wait_for(|done| *done)).await;
        let local = pc
            .local_description()
            .await
            .ok_or_else(|| internal("no local description after negotiation"))?;
        Ok::<_, SignalingError>(rewrite_candidates(
            &local.sdp,
            ctx.advertised,
            ctx.advertised_tcp,
        ))
    }
    .await;
    let answer = match negotiated {
        Ok(answer) => answer,
        Err(e) => {
            let _ = pc.close().await;
            return Err(e);
        }
    };
    let etag = format!("\"{}\"", random_id(16));
    let listed = ctx.peers.list(
        &claim.connection_id,
        LivePeer {
            session_id: claim.session_id.clone(),
            pc: pc.clone(),
            remote_credentials,
            etag: etag.clone(),
            signalled: std::sync::atomic::AtomicUsize::new(signalled),
        },
    );
    let out = RtpOut {
        track,
        ssrc,
        payload_type: info.opus_payload_type,
    };
    tokio::spawn(run_session(ctx, claim, pc, events, out, ufrag, listed));
    Ok(Answered { sdp: answer, etag })
}

/// How a session ended, and whether its slot goes with it.
enum Ending {
    /// The peer hung up, ICE failed or the client asked by `DELETE`: free the slot.
    Release(&'static str),
    /// The client never connected: drop the attempt, keep the reservation so it can retry.
    Abandon(&'static str),
}

/// Pipeline events queued for the data channel; beyond that they are dropped (counted).
const PIPELINE_EVENTS: usize = 64;

/// What a WebRTC connection carries: Opus at 48 kHz mono, its inbound buffer the jitter
/// buffer's target in decoded PCM16 bytes.
fn opus_format(jitter_packets: usize) -> voice_proto::worker::v1::MediaFormat {
    let frame_bytes = crate::media::FRAME_SAMPLES * 2;
    voice_proto::worker::v1::MediaFormat {
        codec: "opus".to_owned(),
        sample_rate: 48_000,
        channels: 1,
        buffer_bytes: u32::try_from(jitter_packets * frame_bytes).unwrap_or(u32::MAX),
    }
}

async fn run_session(
    ctx: Arc<MediaContext>,
    mut claim: Claim,
    pc: Arc<dyn PeerConnection>,
    mut events: mpsc::Receiver<PeerEvent>,
    out: RtpOut,
    ufrag: String,
    listed: Listed,
) {
    let offered = Instant::now();
    let deadline = tokio::time::sleep(ctx.connect_timeout);
    tokio::pin!(deadline);
    let (rtp_tx, rtp_rx) = mpsc::channel::<(u16, Bytes)>(RTP_QUEUE);
    let mut rtp_rx = Some(rtp_rx);
    let mut out = Some(out);
    let mut connected = false;
    let (phase, _) = watch::channel(Phase::Connecting);
    // Pipeline events (states, transcripts) for the first events data channel.
    let (pipeline_tx, pipeline_rx) = mpsc::channel::<String>(PIPELINE_EVENTS);
    let mut pipeline_rx = Some(pipeline_rx);
    let mut pipeline_tx = Some(pipeline_tx);
    let media_stop = claim.cancel.child_token();
    let ending = loop {
        tokio::select! {
            () = claim.cancel.cancelled() => break Ending::Release("HungUp"),
            () = &mut deadline, if !connected => break Ending::Abandon("ConnectTimeout"),
            event = events.recv() => match event {
                None => break Ending::Release("PeerClosed"),
                Some(PeerEvent::State(RTCPeerConnectionState::Connected)) if !connected => {
                    connected = true;
                    ctx.metrics.observe_connect(offered.elapsed());
                    let remote = ctx.mux.peer_of(&ufrag)
                        .or_else(|| ctx.tcp_mux.as_ref()?.peer_of(&ufrag))
                        .map(|a| a.to_string()).unwrap_or_default();
                    let event = Connected {
                        participant: claim.participant.clone(),
                        transport: claim.transport.to_proto().into(),
                        remote_address: remote.clone(),
                        connection_id: claim.connection_id.clone(),
                        format: Some(opus_format(ctx.jitter_packets)),
                    };
                    if !ctx.sessions.connect(&claim.session_id, &claim.uid, event, SystemTime::now()) {
                        break Ending::Abandon("SessionReleased");
                    }
                    claim.set_active();
                    tracing::info!(session = %claim.session_id, connection = %claim.connection_id, %remote,
                        connect_ms = offered.elapsed().as_millis(), "WebRTC peer connected");
                    if let (Some(rx), Some(out)) = (rtp_rx.take(), out.take()) {
                        let provider = crate::pipeline::wiring::for_session(&ctx.sessions, &claim.session_id, &claim.uid, &claim.participant);
                        let metrics = ctx.metrics.for_connection(claim.media.dropped.clone());
                        tokio::spawn(rtp_media::run(rx, out, ctx.jitter_packets, metrics, media_stop.clone(), provider, pipeline_tx.take()));
                    }
                    phase.send_replace(Phase::Connected {
                        session: claim.session_id.clone(),
                        connection_id: claim.connection_id.clone(),
                        described: crate::pipeline::wiring::describe(ctx.sessions.pipeline_config().as_deref()),
                    });
                }
                Some(PeerEvent::State(RTCPeerConnectionState::Failed)) => break Ending::Release("IceFailed"),
                Some(PeerEvent::State(RTCPeerConnectionState::Closed)) => break Ending::Release("PeerClosed"),
                Some(PeerEvent::State(state)) => {
                    tracing::debug!(session = %claim.session_id, %state, "peer connection state");
                }
                Some(PeerEvent::Track(track)) => {
                    tokio::spawn(receive(track, rtp_tx.clone(), ctx.metrics.clone(), media_stop.clone(), claim.media.clone()));
                }
                Some(PeerEvent::DataChannel(channel)) => {
                    tokio::spawn(session_events(channel, phase.subscribe(), pipeline_rx.take()));
                }
            },
        }
    };
    media_stop.cancel();
    // No trickle PATCH may reach a connection that is going away.
    drop(listed);
    let reason = match ending {
        Ending::Release(reason) | Ending::Abandon(reason) => reason,
    };
    phase.send_replace(Phase::Ended(reason));
    // Let the events channel carry `ended` before the connection closes under it.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    if let Err(e) = pc.close().await {
        tracing::debug!(error = %e, "closing the peer connection");
    }
    match ending {
        Ending::Release(reason) => {
            let released = ctx
                .sessions
                .connection_ended(&mut claim, reason, SystemTime::now());
            tracing::info!(session = %claim.session_id, connection = %claim.connection_id, reason, ?released, "WebRTC session ended");
        }
        Ending::Abandon(reason) => {
            tracing::info!(session = %claim.session_id, connection = %claim.connection_id, reason, "WebRTC connection attempt abandoned; the reservation stays");
        }
    }
}

/// Where a session is, as the `events` data channel reports it.
#[derive(Clone, Debug)]
enum Phase {
    Connecting,
    Connected {
        session: String,
        connection_id: String,
        described: Described,
    },
    Ended(&'static str),
}

/// Feeds one client-created data channel with the session's events as JSON messages
/// (`connected`, `state`, `ended`) once it is open.
async fn session_events(
    channel: Arc<dyn DataChannel>,
    mut phase: watch::Receiver<Phase>,
    mut pipeline: Option<mpsc::Receiver<String>>,
) {
    loop {
        match channel.poll().await {
            Some(DataChannelEvent::OnOpen) => break,
            Some(DataChannelEvent::OnClose) | None => return,
            Some(_) => {}
        }
    }
    let mut told_connected = false;
    loop {
        let current = phase.borrow_and_update().clone();
        let messages = match current {
            Phase::Connecting => Vec::new(),
            Phase::Connected { .. } if told_connected => Vec::new(),
            Phase::Connected {
                session,
                connection_id,
                described,
            } => {
                told_connected = true;
                connected_events(&session, &connection_id, &described).to_vec()
            }
            Phase::Ended(reason) => vec![serde_json::json!({ "type": "ended", "reason": reason })],
        };
        for message in messages {
            if let Err(e) = channel.send_text(&message.to_string()).await {
                tracing::debug!(error = %e, "events data channel send failed");
                return;
            }
        }
        if matches!(*phase.borrow(), Phase::Ended(_)) {
            return;
        }
        // Pipeline events go out as they come, between phase changes.
        let changed = loop {
            let event = match pipeline.as_mut() {
                Some(rx) => tokio::select! {
                    changed = phase.changed() => break changed,
                    event = rx.recv() => event,
                },
                None => break phase.changed().await,
            };
            match event {
                Some(event) => {
                    if let Err(e) = channel.send_text(&event).await {
                        tracing::debug!(error = %e, "events data channel send failed");
                        return;
                    }
                }
                None => pipeline = None,
            }
        };
        if changed.is_err() {
            return;
        }
    }
}

/// What the events channel says once the call is up: `connected`, then the `state` it
/// starts in; both name the backend's pipeline and providers (not the transport's echo).
fn connected_events(
    session: &str,
    connection_id: &str,
    described: &Described,
) -> [serde_json::Value; 2] {
    [
        serde_json::json!({
            "type": "connected",
            "session": session,
            "connection_id": connection_id,
            "transport": "webrtc",
            "pipeline": described.pipeline,
            "provider": described.provider,
        }),
        serde_json::json!({ "type": "state", "state": "LISTENING", "provider": described.provider }),
    ]
}

/// Forwards a remote track's RTP payloads to the media loop until it ends.
pub(crate) async fn receive(
    track: Arc<dyn TrackRemote>,
    rtp: mpsc::Sender<(u16, Bytes)>,
    metrics: crate::metrics::MediaMetrics,
    stop: tokio_util::sync::CancellationToken,
    media: crate::connections::MediaActivity,
) {
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = track.poll() => event,
        };
        match event {
            None => return,
            Some(TrackRemoteEvent::OnRtpPacket(packet)) => {
                media.touch();
                metrics.count_packet("webrtc", "in", packet.payload.len());
                if rtp
                    .try_send((packet.header.sequence_number, packet.payload))
                    .is_err()
                {
                    metrics.count_dropped("rtp_in_queue_full");
                }
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connected_events_name_the_configured_pipeline() {
        let described = crate::pipeline::wiring::describe(Some(
            r#"{"pipeline": {"type": "STT_TTS", "stt": "pocketsphinx", "tts": "espeak"},
                "agent": {"type": "Echo"}}"#,
        ));
        let [connected, state] = connected_events("team/a", "c1", &described);
        assert_eq!(connected["type"], "connected");
        assert_eq!(connected["session"], "team/a");
        assert_eq!(connected["pipeline"], "STT_TTS");
        assert_eq!(connected["provider"], "pocketsphinx/echo/espeak");
        assert_eq!(state["state"], "LISTENING");
        assert_eq!(state["provider"], "pocketsphinx/echo/espeak");
    }
}
