//! Sessions served in LiveKit rooms (a backend with `spec.liveKit`): for every session the
//! operator reserves with a room, the worker joins that room as the agent participant and
//! runs the backend's pipeline on the user's audio (see [`room_agent`]).
//!
//! The worker's own WHIP and WebSocket endpoints keep serving; a LiveKit session simply has
//! no client connecting to them. Its "connection" is the agent's presence in the room, held
//! as a [`crate::connections::Claim`] like any other, so release, drain, shutdown and the
//! reaper end it the same way.

pub mod room_agent;
pub mod room_peers;
pub mod room_roster;
pub mod room_service;
pub mod signal;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use voice_proto::livekit_token::ApiKey;

use crate::connections::Transport;
use crate::signaling::MediaContext;

/// The server the worker dials (`LIVEKIT_URL`: the backend's `workerURL`, else its `url`).
pub const URL_ENV: &str = "LIVEKIT_URL";
/// The API key id (`LIVEKIT_API_KEY`, from the backend's credentials Secret).
pub const KEY_ENV: &str = "LIVEKIT_API_KEY";
/// The API secret (`LIVEKIT_API_SECRET`, from the same Secret).
pub const SECRET_ENV: &str = "LIVEKIT_API_SECRET";

/// The LiveKit server of this worker's backend.
#[derive(Debug)]
pub struct LiveKit {
    /// Where the agent dials.
    pub url: String,
    /// What it signs its tokens with.
    pub key: ApiKey,
}

impl LiveKit {
    /// The server from the environment: `None` without `LIVEKIT_URL` (the backend has no
    /// `spec.liveKit`), an error naming the variable when the URL or a key is unusable.
    pub fn from_env() -> Option<Result<Self, String>> {
        let url = std::env::var(URL_ENV).ok().filter(|u| !u.is_empty())?;
        Some(Self::new(
            url,
            std::env::var(KEY_ENV).unwrap_or_default(),
            std::env::var(SECRET_ENV).unwrap_or_default(),
        ))
    }

    /// Checks and keeps a server's URL and key.
    pub fn new(url: String, key: String, secret: String) -> Result<Self, String> {
        signal::websocket_base(&url).map_err(|e| e.to_string())?;
        if key.is_empty() || secret.is_empty() {
            return Err(format!(
                "{KEY_ENV} and {SECRET_ENV} must both be set (keys api-key and api-secret of the backend's spec.liveKit.credentialsSecretName)"
            ));
        }
        Ok(Self {
            url,
            key: ApiKey { key, secret },
        })
    }
}

/// The room a session gets when it names none: `<namespace>-<name>` (the operator's rule),
/// which the worker deletes when the session ends.
pub fn own_room(session_id: &str) -> String {
    session_id.replacen('/', "-", 1)
}

/// Starts a room agent for every held session with a room and no agent yet, on every
/// occupancy change, until `stop` fires.
pub async fn dispatch(livekit: Arc<LiveKit>, ctx: Arc<MediaContext>, stop: CancellationToken) {
    let mut occupancy = ctx.sessions.watch();
    loop {
        for session in ctx.sessions.snapshot().sessions {
            let request = &session.request;
            let Some(room) = request.config.room.clone() else {
                continue;
            };
            let user = request.config.user_id.clone().unwrap_or_default();
            // The claim is the guard: a session whose agent is running is already claimed.
            let Ok(claim) =
                ctx.connections
                    .claim(&request.session_id, &request.uid, &user, Transport::LiveKit)
            else {
                continue;
            };
            tracing::info!(session = %request.session_id, %room, "joining the session's LiveKit room");
            tokio::spawn(room_agent::run(ctx.clone(), livekit.clone(), claim, room));
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = occupancy.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_s_own_room_is_namespace_dash_name() {
        assert_eq!(own_room("team-a/call-1"), "team-a-call-1");
    }

    #[test]
    fn a_server_without_its_key_is_refused_naming_the_variables() {
        let why = LiveKit::new("ws://lk:7880".into(), "devkey".into(), String::new()).unwrap_err();
        assert!(why.contains(SECRET_ENV), "{why}");
        let why = LiveKit::new("lk:7880".into(), "k".into(), "s".into()).unwrap_err();
        assert!(why.contains("ws://"), "{why}");
    }
}
