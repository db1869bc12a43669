//! Sessions served in LiveKit rooms: `transport: livekit` on a backend with `spec.liveKit`.
//!
//! - **Which sessions fit** ([`misfit_of`], pure, asked by the allocator every round beside
//!   the audio and participant checks): a backend with `spec.liveKit` serves only `livekit`
//!   sessions and `livekit` needs such a backend (else `TransportNotSupported`); no userID
//!   may be [`AGENT_IDENTITY`], the identity the worker joins the room with
//!   (`UserIDReserved`); and the room must have a usable name (`RoomNameTooLong`). A misfit
//!   waits `Pending` outside the queue, without a slot, with a message naming the field.
//!   One room serves one session at a time ([`crate::room_claims`], `RoomInUse`).
//! - **The room** ([`room`]): `spec.room`, or `<namespace>-<name>`. It goes to the worker in
//!   `SessionConfig.room` and to the user in `status.endpoint.room` and the token Secret.
//! - **The admission** ([`prepare`], then [`endpoint_and_tokens`]): the backend's key pair
//!   is read from its Secret before the worker is asked for a slot, so a Secret that cannot
//!   be read leaves nothing behind: no reservation, no status, and the session waits with
//!   `Admitted=False`, reason `LiveKitCredentialsMissing`, saying why. The endpoint is the
//!   LiveKit server's `url` and the room (no ICE servers: the server does media), and the
//!   token Secret holds each person's LiveKit access token (`token`, `token-<userID>`),
//!   signed with the pair, for the same lifetime as a join token.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::ResourceExt;
use voice_crds::{LiveKitServer, SessionEndpoint, Transport, VoiceBackend, VoiceSession};
use voice_proto::livekit_token::{AGENT_IDENTITY, ApiKey, TokenError};
use voice_proto::session_config::is_room_name;

use crate::admission_plan::Misfit;
use crate::livekit_credentials::{self, CredentialsError};
use crate::room_claims::RoomKey;
use crate::session_tokens::{TOKEN_KEY, participant_key, token_secret_name};

/// The `Admitted=False` reason of a `livekit` session whose backend's key pair could not be
/// read at admission (also the backend's `Accepted=False` reason for it).
pub const CREDENTIALS_REASON: &str = "LiveKitCredentialsMissing";

/// End reason the worker reports when the user left the room: a normal end, as a hang-up.
pub const PARTICIPANT_LEFT: &str = "ParticipantLeft";
/// End reason the worker reports when someone else closed the room: a normal end.
pub const ROOM_ENDED: &str = "RoomEnded";
/// End reason the worker reports when it could not join the room or lost the LiveKit server:
/// the session ends `Failed` (`allocator/endings.rs`), and the worker is not replaced for it.
pub const LIVEKIT_UNAVAILABLE: &str = "LiveKitUnavailable";

/// The room `session` meets in: `spec.room`, or `<namespace>-<name>`.
pub fn room(session: &VoiceSession) -> String {
    session.spec.room.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            session.namespace().unwrap_or_default(),
            session.name_any()
        )
    })
}

/// The room handed to the worker in `SessionConfig.room`: only for a `livekit` session.
pub fn worker_room(session: &VoiceSession) -> Option<String> {
    (session.spec.transport == Transport::LiveKit).then(|| room(session))
}

/// The room `session` meets in on `backend`'s LiveKit server; `None` unless it is a
/// `livekit` session on a backend with `spec.liveKit`.
pub fn room_key(session: &VoiceSession, backend: &VoiceBackend) -> Option<RoomKey> {
    let server = backend.spec.live_kit.as_ref()?;
    (session.spec.transport == Transport::LiveKit).then(|| RoomKey {
        server: server.url.clone(),
        room: room(session),
    })
}

/// Why `session` cannot be served by `backend` as it is, as far as LiveKit goes; `None`
/// when it can, or when there is no backend (the allocator says `BackendNotFound`).
pub fn misfit_of(session: &VoiceSession, backend: Option<&VoiceBackend>) -> Option<Misfit> {
    let backend = backend?;
    let name = backend.name_any();
    let transport = session.spec.transport;
    match (transport, &backend.spec.live_kit) {
        (Transport::LiveKit, Some(_)) => {}
        (Transport::LiveKit, None) => {
            return Some(Misfit::Transport(format!(
                "spec.transport: livekit needs a backend with spec.liveKit (a LiveKit server to meet in), and VoiceBackend {name:?} has none; create the session with transport webrtc or websocket, or on a backend with spec.liveKit (spec.transport is immutable)"
            )));
        }
        (_, Some(server)) => {
            return Some(Misfit::Transport(format!(
                "spec.transport: {} is not served by VoiceBackend {name:?}: it has spec.liveKit, so its sessions meet in rooms of {}; create the session with transport: livekit (spec.transport is immutable), or on a backend without spec.liveKit",
                transport.as_str(),
                server.url
            )));
        }
        (_, None) => return None,
    }
    let user = &session.spec.user.user_id;
    if user == AGENT_IDENTITY {
        return Some(Misfit::UserIdReserved(format!(
            "spec.user.userID: {AGENT_IDENTITY:?} is the identity the agent joins LiveKit rooms with; create the session with another userID (spec.user is immutable)"
        )));
    }
    if session
        .spec
        .participants
        .iter()
        .any(|p| p.user_id == AGENT_IDENTITY)
    {
        return Some(Misfit::UserIdReserved(format!(
            "spec.participants[userID={AGENT_IDENTITY}]: {AGENT_IDENTITY:?} is the identity the agent joins LiveKit rooms with; create the session with another userID for that participant (spec.participants is immutable)"
        )));
    }
    let room = room(session);
    if !is_room_name(&room) {
        return Some(Misfit::RoomNameTooLong(format!(
            "spec.room: unset, so the session's LiveKit room would be {room:?} (<namespace>-<name>), {} characters, more than the 128 a room name may have; set spec.room to a name of at most 128 letters, digits, '-', '.' or '_'",
            room.len()
        )));
    }
    None
}

/// What an admission of a `livekit` session needs beyond the others: where and with which
/// key pair its users join.
#[derive(Clone, Debug)]
pub struct LiveKitRoom {
    /// The server's URL as users reach it (`spec.liveKit.url`).
    pub url: String,
    /// The room.
    pub room: String,
    /// The backend's key pair (its `Debug` hides the secret).
    pub key: ApiKey,
}

/// Why an admission stops before the worker is asked: the `Admitted=False` reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The condition reason.
    pub reason: &'static str,
    /// The condition message.
    pub message: String,
}

/// The room of `session` with its backend's key pair read from the API; `None` for a
/// session that is not `livekit`. Refused as the allocator's plan would refuse it when the
/// backend changed since, and with [`CREDENTIALS_REASON`] when the Secret cannot be read.
pub async fn prepare(
    client: &kube::Client,
    session: &VoiceSession,
    backend: &VoiceBackend,
) -> Result<Option<LiveKitRoom>, Held> {
    if let Some(misfit) = misfit_of(session, Some(backend)) {
        return Err(Held {
            reason: misfit.blocked().reason(),
            message: misfit.detail().to_owned(),
        });
    }
    let Some(server) = backend.spec.live_kit.as_ref() else {
        return Ok(None);
    };
    let namespace = backend.namespace().unwrap_or_default();
    let key = livekit_credentials::read(client, &namespace, server)
        .await
        .map_err(|e| credentials_held(backend, &e))?;
    Ok(Some(LiveKitRoom {
        url: server.url.clone(),
        room: room(session),
        key,
    }))
}

/// The condition of a session whose backend's key pair could not be read.
pub fn credentials_held(backend: &VoiceBackend, error: &CredentialsError) -> Held {
    Held {
        reason: CREDENTIALS_REASON,
        message: format!(
            "VoiceBackend {:?} spec.liveKit.credentialsSecretName: {error}; the session is admitted once the key pair can be read",
            backend.name_any()
        ),
    }
}

/// The endpoint of a `livekit` session and its token Secret's tokens.
pub fn endpoint_and_tokens(
    session: &VoiceSession,
    room: &LiveKitRoom,
) -> Result<(SessionEndpoint, BTreeMap<String, String>), TokenError> {
    let endpoint = SessionEndpoint {
        url: room.url.clone(),
        token_secret_name: token_secret_name(&session.name_any()),
        ice_servers: Vec::new(),
        room: Some(room.room.clone()),
    };
    Ok((endpoint, mint_tokens(session, &room.key, &room.room)?))
}

/// Each person's access token to `room`, keyed as the token Secret holds them: `token` for
/// `spec.user`, `token-<userID>` for each participant, each with their userID as identity.
pub fn mint_tokens(
    session: &VoiceSession,
    key: &ApiKey,
    room: &str,
) -> Result<BTreeMap<String, String>, TokenError> {
    let ttl = crate::admission_steps::token_lifetime(session.spec.max_duration.map(Duration::from));
    let user = &session.spec.user.user_id;
    std::iter::once((TOKEN_KEY.to_owned(), user))
        .chain(
            session
                .spec
                .participants
                .iter()
                .map(|p| (participant_key(&p.user_id), &p.user_id)),
        )
        .map(|(k, identity)| Ok((k, key.user_token(room, identity, ttl)?)))
        .collect()
}

/// The tokens of an Active `livekit` session whose Secret is still to be written: the key
/// pair read again, the room from its endpoint.
pub async fn tokens_again(
    client: &kube::Client,
    session: &VoiceSession,
    backend: &VoiceBackend,
    room: &str,
) -> Result<BTreeMap<String, String>, String> {
    let server: &LiveKitServer = backend.spec.live_kit.as_ref().ok_or_else(|| {
        format!(
            "VoiceBackend {:?} no longer has spec.liveKit",
            backend.name_any()
        )
    })?;
    let namespace = backend.namespace().unwrap_or_default();
    let key = livekit_credentials::read(client, &namespace, server)
        .await
        .map_err(|e| credentials_held(backend, &e).message)?;
    mint_tokens(session, &key, room).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
