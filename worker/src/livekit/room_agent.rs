//! One session served in a LiveKit room: the worker joins the room as the agent, listens to
//! the session's user, answers through the backend's pipeline, and ends the session when the
//! user leaves, the room ends or the server goes away.
//!
//! Signal messages, peer events, pings and the session's own end all arrive on one task,
//! which owns the signal connection and both peer connections, so no lock is needed and
//! every way out goes through the same leave-and-release path.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use livekit_protocol as lk;
use livekit_protocol::{signal_request::Message as Req, signal_response::Message as Resp};
use tokio::sync::mpsc;
use voice_proto::worker::v1::{Connected, MediaFormat};

use super::room_peers::{OPUS_PAYLOAD_TYPE, PeerEvent, RoomPeer, Side};
use super::room_roster::Roster;
use super::signal::Signal;
use super::{LiveKit, own_room};
use crate::connections::Claim;
use crate::signaling::MediaContext;
use crate::transport::rtp_media::{self, RtpOut};

/// How long the agent's access token admits it (the join itself; a live connection outlasts it).
const TOKEN_TTL: Duration = Duration::from_secs(600);

/// How long the server has to accept the join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Peer events queued before the drivers' callbacks drop them.
const EVENT_QUEUE: usize = 64;

/// Received RTP packets queued for the media loop: a second of 20 ms audio.
const RTP_QUEUE: usize = 50;

/// Ping interval when the server names none.
const DEFAULT_PING: Duration = Duration::from_secs(10);

/// How a room session ended.
#[derive(Debug)]
enum Ending {
    /// The operator released the slot (session deleted, finished, timed out) or the worker
    /// is shutting down: the slot is already gone.
    Released,
    /// The session's user left the room.
    UserLeft,
    /// The room was deleted or closed by someone else.
    RoomEnded,
    /// The server could not be joined or the connection to it broke.
    Unavailable(String),
}

/// Runs the session of `claim` in `room` until it ends, then leaves, deletes the session's
/// own room and releases the slot as the ending says.
pub async fn run(ctx: Arc<MediaContext>, livekit: Arc<LiveKit>, mut claim: Claim, room: String) {
    let user = claim.participant.clone();
    let ending = match serve(&ctx, &livekit, &mut claim, &room, &user).await {
        Ok(ending) => ending,
        Err(why) => Ending::Unavailable(why),
    };
    if room == own_room(&claim.session_id)
        && let Err(e) = super::room_service::delete_room(&livekit.url, &livekit.key, &room).await
    {
        tracing::warn!(session = %claim.session_id, %room, error = %e, "deleting the session's LiveKit room failed");
    }
    let now = SystemTime::now();
    let released = match &ending {
        Ending::Released => None,
        Ending::UserLeft => ctx
            .sessions
            .connection_ended(&mut claim, "ParticipantLeft", now),
        Ending::RoomEnded => ctx.sessions.connection_ended(&mut claim, "RoomEnded", now),
        Ending::Unavailable(why) => {
            claim.leave();
            Some(
                ctx.sessions
                    .release_because(
                        &claim.session_id,
                        &claim.uid,
                        "LiveKitUnavailable",
                        why,
                        now,
                    )
                    .0,
            )
        }
    };
    tracing::info!(session = %claim.session_id, %room, ?ending, ?released, "LiveKit session ended");
}

async fn serve(
    ctx: &Arc<MediaContext>,
    livekit: &LiveKit,
    claim: &mut Claim,
    room: &str,
    user: &str,
) -> Result<Ending, String> {
    let token = livekit
        .key
        .agent_token(room, TOKEN_TTL)
        .map_err(|e| e.to_string())?;
    let mut signal = tokio::select! {
        () = claim.cancel.cancelled() => return Ok(Ending::Released),
        joined = Signal::connect(&livekit.url, &token) => joined.map_err(|e| e.to_string())?,
    };
    let join = tokio::select! {
        () = claim.cancel.cancelled() => return Ok(Ending::Released),
        join = tokio::time::timeout(JOIN_TIMEOUT, first_join(&mut signal)) => {
            join.map_err(|_| format!("the LiveKit server did not accept the join within {JOIN_TIMEOUT:?}"))??
        }
    };
    let mut roster = Roster::default();
    for participant in &join.other_participants {
        roster.learn(participant);
    }
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let mut publisher = RoomPeer::new(Side::Publisher, &join.ice_servers, events_tx.clone())
        .await
        .map_err(|e| e.to_string())?;
    let mut subscriber = match RoomPeer::new(Side::Subscriber, &join.ice_servers, events_tx).await {
        Ok(peer) => peer,
        Err(e) => {
            publisher.close().await;
            return Err(e.to_string());
        }
    };
    let outcome = in_room(
        ctx,
        claim,
        user,
        &mut signal,
        &mut publisher,
        &mut subscriber,
        &mut events,
        &mut roster,
        &join,
    )
    .await;
    let _ = signal
        .send(Req::Leave(lk::LeaveRequest {
            reason: lk::DisconnectReason::ClientInitiated as i32,
            action: lk::leave_request::Action::Disconnect as i32,
            ..Default::default()
        }))
        .await;
    signal.close().await;
    publisher.close().await;
    subscriber.close().await;
    outcome
}

async fn first_join(signal: &mut Signal) -> Result<lk::JoinResponse, String> {
    loop {
        match signal.recv().await {
            Some(Ok(Resp::Join(join))) => return Ok(join),
            Some(Ok(Resp::Leave(leave))) => {
                return Err(format!(
                    "the LiveKit server refused the join: {}",
                    leave_reason(&leave)
                ));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the LiveKit server closed the connection before the join".into()),
        }
    }
}

/// How the session ends when its user is disconnected: with the room, or by leaving.
fn user_gone(participant: &lk::ParticipantInfo) -> Ending {
    tracing::debug!(
        user = %participant.identity,
        reason = participant.disconnect_reason,
        "the session's user was disconnected"
    );
    match lk::DisconnectReason::try_from(participant.disconnect_reason) {
        Ok(lk::DisconnectReason::RoomDeleted | lk::DisconnectReason::RoomClosed) => {
            Ending::RoomEnded
        }
        _ => Ending::UserLeft,
    }
}

fn leave_reason(leave: &lk::LeaveRequest) -> &'static str {
    lk::DisconnectReason::try_from(leave.reason)
        .map(|r| r.as_str_name())
        .unwrap_or("UNKNOWN_REASON")
}

#[allow(clippy::too_many_arguments)]
async fn in_room(
    ctx: &Arc<MediaContext>,
    claim: &mut Claim,
    user: &str,
    signal: &mut Signal,
    publisher: &mut RoomPeer,
    subscriber: &mut RoomPeer,
    events: &mut mpsc::Receiver<PeerEvent>,
    roster: &mut Roster,
    join: &lk::JoinResponse,
) -> Result<Ending, String> {
    let track_cid = format!("agent-{}", claim.connection_id);
    let (track, ssrc) = publisher
        .add_agent_track(&track_cid)
        .await
        .map_err(|e| e.to_string())?;
    signal
        .send(Req::AddTrack(lk::AddTrackRequest {
            cid: track_cid.clone(),
            name: "agent".into(),
            r#type: lk::TrackType::Audio as i32,
            source: lk::TrackSource::Microphone as i32,
            ..Default::default()
        }))
        .await
        .map_err(|e| e.to_string())?;

    let (rtp_tx, rtp_rx) = mpsc::channel::<(u16, Bytes)>(RTP_QUEUE);
    let mut media = Some((
        rtp_rx,
        RtpOut {
            track,
            ssrc,
            payload_type: OPUS_PAYLOAD_TYPE,
        },
    ));
    let media_stop = claim.cancel.child_token();
    let _stop_media = media_stop.clone().drop_guard();
    let mut publisher_up = false;
    let mut hearing_user = false;
    let mut pending_tracks: Vec<Arc<dyn webrtc::media_stream::track_remote::TrackRemote>> =
        Vec::new();
    let ping_every = u64::try_from(join.ping_interval)
        .ok()
        .filter(|s| *s > 0)
        .map_or(DEFAULT_PING, Duration::from_secs);
    let mut ping = tokio::time::interval(ping_every);

    loop {
        tokio::select! {
            () = claim.cancel.cancelled() => return Ok(Ending::Released),
            _ = ping.tick() => {
                let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                let ping = lk::Ping { timestamp: i64::try_from(now.as_millis()).unwrap_or(i64::MAX), rtt: 0 };
                signal.send(Req::PingReq(ping)).await.map_err(|e| e.to_string())?;
            }
            message = signal.recv() => match message {
                None => return Err("the LiveKit server closed the signal connection".into()),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(Resp::Offer(offer))) => {
                    let sdp = subscriber.answer(offer.sdp).await.map_err(|e| e.to_string())?;
                    signal.send(Req::Answer(lk::SessionDescription {
                        r#type: "answer".into(),
                        sdp,
                        id: offer.id,
                        ..Default::default()
                    })).await.map_err(|e| e.to_string())?;
                }
                Some(Ok(Resp::TrackPublished(published))) if published.cid == track_cid => {
                    let sdp = publisher.offer().await.map_err(|e| e.to_string())?;
                    signal.send(Req::Offer(lk::SessionDescription {
                        r#type: "offer".into(),
                        sdp,
                        ..Default::default()
                    })).await.map_err(|e| e.to_string())?;
                }
                Some(Ok(Resp::Answer(answer))) => {
                    publisher.accept_answer(answer.sdp).await.map_err(|e| e.to_string())?;
                }
                Some(Ok(Resp::Trickle(trickle))) => {
                    let peer = match Side::of_target(trickle.target) {
                        Side::Publisher => &*publisher,
                        Side::Subscriber => &*subscriber,
                    };
                    if let Err(e) = peer.add_candidate(&trickle.candidate_init).await {
                        tracing::debug!(session = %claim.session_id, error = %e, "ignoring a trickled candidate");
                    }
                }
                Some(Ok(Resp::Update(update))) => {
                    for participant in &update.participants {
                        roster.learn(participant);
                        if participant.identity == user
                            && participant.state == lk::participant_info::State::Disconnected as i32
                        {
                            // A deleted room disconnects everyone, and the user's update can
                            // come before the agent's own Leave: its reason tells them apart.
                            return Ok(user_gone(participant));
                        }
                    }
                    for track in std::mem::take(&mut pending_tracks) {
                        claim_track(track, roster, user, &rtp_tx, ctx, claim, &mut hearing_user, &mut pending_tracks).await;
                    }
                }
                Some(Ok(Resp::Leave(leave))) => {
                    let reason = lk::DisconnectReason::try_from(leave.reason).unwrap_or(lk::DisconnectReason::UnknownReason);
                    return match reason {
                        lk::DisconnectReason::RoomDeleted | lk::DisconnectReason::RoomClosed => Ok(Ending::RoomEnded),
                        _ => Err(format!("the LiveKit server disconnected the agent: {}", leave_reason(&leave))),
                    };
                }
                Some(Ok(_)) => {}
            },
            event = events.recv() => match event {
                None => return Err("the peer connections' drivers stopped".into()),
                Some(PeerEvent::State(side, state)) => {
                    tracing::debug!(session = %claim.session_id, ?side, %state, "LiveKit peer connection state");
                    match state {
                        webrtc::peer_connection::RTCPeerConnectionState::Failed => {
                            return Err(format!("the {side:?} connection to the LiveKit server failed (ICE)"));
                        }
                        webrtc::peer_connection::RTCPeerConnectionState::Connected if side == Side::Publisher => {
                            publisher_up = true;
                        }
                        _ => {}
                    }
                }
                Some(PeerEvent::Candidate(side, candidate_init)) => {
                    let target = match side {
                        Side::Publisher => lk::SignalTarget::Publisher,
                        Side::Subscriber => lk::SignalTarget::Subscriber,
                    };
                    signal.send(Req::Trickle(lk::TrickleRequest {
                        candidate_init,
                        target: target as i32,
                        r#final: false,
                    })).await.map_err(|e| e.to_string())?;
                }
                Some(PeerEvent::Track(track)) => {
                    claim_track(track, roster, user, &rtp_tx, ctx, claim, &mut hearing_user, &mut pending_tracks).await;
                }
            },
        }
        if publisher_up
            && hearing_user
            && let Some((rtp_rx, out)) = media.take()
        {
            if !connected(ctx, claim) {
                return Ok(Ending::Released);
            }
            let provider = crate::pipeline::wiring::for_session(
                &ctx.sessions,
                &claim.session_id,
                &claim.uid,
                &claim.participant,
            );
            let metrics = ctx.metrics.for_connection(claim.media.dropped.clone());
            tokio::spawn(rtp_media::run(
                rtp_rx,
                out,
                ctx.jitter_packets,
                metrics,
                media_stop.clone(),
                provider,
                None,
            ));
        }
    }
}

/// Feeds the user's audio track to the media loop; keeps a track whose owner is not known
/// yet for the next roster update, and ignores everyone else's.
#[allow(clippy::too_many_arguments)]
async fn claim_track(
    track: Arc<dyn webrtc::media_stream::track_remote::TrackRemote>,
    roster: &Roster,
    user: &str,
    rtp: &mpsc::Sender<(u16, Bytes)>,
    ctx: &Arc<MediaContext>,
    claim: &Claim,
    hearing_user: &mut bool,
    pending: &mut Vec<Arc<dyn webrtc::media_stream::track_remote::TrackRemote>>,
) {
    let (stream_id, track_id) = (track.stream_id().await, track.track_id().await);
    match roster.owner(&stream_id, &track_id) {
        Some(owner) if owner == user && !*hearing_user => {
            *hearing_user = true;
            tokio::spawn(crate::transport::peer::receive(
                track,
                rtp.clone(),
                ctx.metrics.clone(),
                claim.cancel.clone(),
                claim.media.clone(),
            ));
        }
        Some(_) => {}
        None => pending.push(track),
    }
}

/// Records the user's connection; false when the slot was released meanwhile.
fn connected(ctx: &MediaContext, claim: &mut Claim) -> bool {
    let event = Connected {
        participant: claim.participant.clone(),
        transport: claim.transport.to_proto().into(),
        remote_address: String::new(),
        connection_id: claim.connection_id.clone(),
        format: Some(MediaFormat {
            codec: "opus".to_owned(),
            sample_rate: 48_000,
            channels: 1,
            buffer_bytes: u32::try_from(ctx.jitter_packets * crate::media::FRAME_SAMPLES * 2)
                .unwrap_or(u32::MAX),
        }),
    };
    if !ctx
        .sessions
        .connect(&claim.session_id, &claim.uid, event, SystemTime::now())
    {
        return false;
    }
    claim.set_active();
    tracing::info!(session = %claim.session_id, connection = %claim.connection_id, user = %claim.participant, "LiveKit user connected");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disconnected(reason: lk::DisconnectReason) -> lk::ParticipantInfo {
        lk::ParticipantInfo {
            identity: "alice".into(),
            state: lk::participant_info::State::Disconnected as i32,
            disconnect_reason: reason as i32,
            ..Default::default()
        }
    }

    #[test]
    fn a_user_disconnected_with_the_room_ends_it_as_room_ended_else_as_left() {
        for (reason, room_ended) in [
            (lk::DisconnectReason::RoomDeleted, true),
            (lk::DisconnectReason::RoomClosed, true),
            (lk::DisconnectReason::ClientInitiated, false),
            (lk::DisconnectReason::ParticipantRemoved, false),
            (lk::DisconnectReason::UnknownReason, false),
        ] {
            let ending = user_gone(&disconnected(reason));
            assert_eq!(
                matches!(ending, Ending::RoomEnded),
                room_ended,
                "{reason:?}"
            );
            assert_eq!(
                matches!(ending, Ending::UserLeft),
                !room_ended,
                "{reason:?}"
            );
        }
    }
}
