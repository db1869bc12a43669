//! The agent's two peer connections to a LiveKit server: the *publisher*, which the agent
//! offers and which carries its voice, and the *subscriber*, which the server offers (again
//! whenever a track is added or removed) and which carries the users' audio.
//!
//! Unlike the worker's own endpoint, the agent is the client here: it binds ephemeral UDP
//! ports on the pod's interfaces and dials the server's candidates, so the shared media
//! port and its mux play no part.

use std::sync::Arc;

use livekit_protocol as lk;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodecParameters, RtpCodecKind};
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceServer, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
    register_default_interceptors,
};

use crate::transport::peer::{agent_track, opus_codec};

/// The payload type the agent's offer gives Opus (the one LiveKit's own clients use).
pub const OPUS_PAYLOAD_TYPE: u8 = 111;

/// Which of the two connections an event or a candidate belongs to (LiveKit's
/// `SignalTarget`: publisher 0, subscriber 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The agent's outgoing audio.
    Publisher,
    /// The users' incoming audio.
    Subscriber,
}

impl Side {
    /// The side a trickled candidate names.
    pub fn of_target(target: i32) -> Self {
        if target == lk::SignalTarget::Subscriber as i32 {
            Side::Subscriber
        } else {
            Side::Publisher
        }
    }
}

/// What a connection's driver reports to the room agent.
pub enum PeerEvent {
    /// The connection's state changed.
    State(Side, RTCPeerConnectionState),
    /// The server sent a track (subscriber only).
    Track(Arc<dyn TrackRemote>),
    /// A local candidate to trickle to the server, in the browser's JSON form.
    Candidate(Side, String),
}

struct Forwarder {
    side: Side,
    events: mpsc::Sender<PeerEvent>,
}

#[tonic::async_trait]
impl PeerConnectionEventHandler for Forwarder {
    // Candidates are trickled as they come rather than waited for in the description: the
    // gathering never reports complete on these sockets, and the server trickles its own.
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let Ok(mut init) = event.candidate.to_json() else {
            return;
        };
        // Bundled: every candidate belongs to the first media section, whose mid is "0".
        init.sdp_mid = Some("0".to_owned());
        if let Ok(json) = serde_json::to_string(&init) {
            let _ = self.events.try_send(PeerEvent::Candidate(self.side, json));
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.events.try_send(PeerEvent::State(self.side, state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.events.try_send(PeerEvent::Track(track));
    }
}

/// One of the two connections.
pub struct RoomPeer {
    /// The connection.
    pub pc: Arc<dyn PeerConnection>,
}

/// Why a connection could not be set up or negotiated.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PeerError(String);

fn failed(what: &str) -> impl FnOnce(webrtc::error::Error) -> PeerError + '_ {
    move |e| PeerError(format!("{what}: {e}"))
}

impl RoomPeer {
    /// A connection for `side` whose events go to `events`; `ice_servers` are the ones the
    /// server's join response offers (TURN for a server behind NAT).
    pub async fn new(
        side: Side,
        ice_servers: &[lk::IceServer],
        events: mpsc::Sender<PeerEvent>,
    ) -> Result<Self, PeerError> {
        let mut media_engine = MediaEngine::default();
        media_engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: opus_codec(),
                    payload_type: OPUS_PAYLOAD_TYPE,
                },
                RtpCodecKind::Audio,
            )
            .map_err(failed("registering Opus"))?;
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)
            .map_err(failed("registering interceptors"))?;
        let servers = ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
            .collect();
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .build();
        let handler = Arc::new(Forwarder { side, events });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_ice_servers(servers)
                    .build(),
            )
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .with_handler(handler)
            // Every non-loopback interface of the pod, ephemeral ports.
            .with_udp_addrs(vec!["0.0.0.0:0".to_owned()])
            .build()
            .await
            .map_err(failed("building the peer connection"))?;
        Ok(Self { pc: Arc::new(pc) })
    }

    /// Adds the agent's audio track (publisher only) and returns it with its SSRC.
    pub async fn add_agent_track(
        &self,
        track_id: &str,
    ) -> Result<(Arc<TrackLocalStaticRTP>, u32), PeerError> {
        let mut bytes = [0u8; 4];
        let _ = getrandom::fill(&mut bytes);
        let ssrc = u32::from_be_bytes(bytes);
        let track = agent_track("agent".to_owned(), track_id.to_owned(), ssrc);
        self.pc
            .add_track(track.clone() as Arc<dyn webrtc::media_stream::track_local::TrackLocal>)
            .await
            .map_err(failed("adding the agent's track"))?;
        Ok((track, ssrc))
    }

    /// The publisher's offer, with its host candidates in it.
    pub async fn offer(&mut self) -> Result<String, PeerError> {
        let offer = self
            .pc
            .create_offer(None)
            .await
            .map_err(failed("creating the offer"))?;
        self.pc
            .set_local_description(offer)
            .await
            .map_err(failed("setting the offer"))?;
        self.local_sdp().await
    }

    /// Applies the server's answer to the publisher's offer.
    pub async fn accept_answer(&self, sdp: String) -> Result<(), PeerError> {
        let answer = RTCSessionDescription::answer(sdp).map_err(failed("reading the answer"))?;
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(failed("applying the answer"))
    }

    /// Answers one of the server's subscriber offers.
    pub async fn answer(&mut self, sdp: String) -> Result<String, PeerError> {
        let offer = RTCSessionDescription::offer(sdp).map_err(failed("reading the offer"))?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(failed("applying the offer"))?;
        let answer = self
            .pc
            .create_answer(None)
            .await
            .map_err(failed("creating the answer"))?;
        self.pc
            .set_local_description(answer)
            .await
            .map_err(failed("setting the answer"))?;
        self.local_sdp().await
    }

    /// Adds a candidate the server trickled (`candidate_init` is the browser's JSON form).
    pub async fn add_candidate(&self, candidate_init: &str) -> Result<(), PeerError> {
        let candidate: RTCIceCandidateInit = serde_json::from_str(candidate_init)
            .map_err(|e| PeerError(format!("reading a trickled candidate: {e}")))?;
        self.pc
            .add_ice_candidate(candidate)
            .await
            .map_err(failed("adding a trickled candidate"))
    }

    async fn local_sdp(&mut self) -> Result<String, PeerError> {
        self.pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| PeerError("no local description after negotiation".to_owned()))
    }

    /// Closes the connection.
    pub async fn close(&self) {
        if let Err(e) = self.pc.close().await {
            tracing::debug!(error = %e, "closing a LiveKit peer connection");
        }
    }
}
