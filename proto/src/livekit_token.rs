//! LiveKit access tokens: the user's (minted by the operator into the session's join-token
//! Secret) and the agent's (minted by the worker when it joins the room), both signed with
//! the backend's LiveKit API key, so the two sides agree on room, identity and grants.

use std::time::Duration;

use livekit_api::access_token::{AccessToken, VideoGrants};

/// The identity the worker joins a session's room with; a user may not take it.
pub const AGENT_IDENTITY: &str = "voice-agent";

/// Why a token could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("signing a LiveKit access token: {0}")]
pub struct TokenError(String);

/// The backend's LiveKit API key pair (the server's `keys:` entry).
#[derive(Clone)]
pub struct ApiKey {
    /// The key id (`iss` of every token).
    pub key: String,
    /// The shared secret tokens are signed with.
    pub secret: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log line.
        f.debug_struct("ApiKey")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    /// A user's token: joins `room` as `identity`, publishes and subscribes to audio, for `ttl`.
    pub fn user_token(
        &self,
        room: &str,
        identity: &str,
        ttl: Duration,
    ) -> Result<String, TokenError> {
        self.sign(identity, ttl, join_grants(room))
    }

    /// The agent's token: joins `room` as [`AGENT_IDENTITY`] with the agent participant kind.
    pub fn agent_token(&self, room: &str, ttl: Duration) -> Result<String, TokenError> {
        AccessToken::with_api_key(&self.key, &self.secret)
            .with_identity(AGENT_IDENTITY)
            .with_name("agent")
            .with_kind("agent")
            .with_ttl(ttl)
            .with_grants(VideoGrants {
                agent: true,
                ..join_grants(room)
            })
            .to_jwt()
            .map_err(|e| TokenError(e.to_string()))
    }

    /// A token for the room service (`DeleteRoom`) on `room` only.
    pub fn admin_token(&self, room: &str, ttl: Duration) -> Result<String, TokenError> {
        self.sign(
            AGENT_IDENTITY,
            ttl,
            VideoGrants {
                room_admin: true,
                room_create: true,
                room: room.to_owned(),
                ..VideoGrants::default()
            },
        )
    }

    fn sign(
        &self,
        identity: &str,
        ttl: Duration,
        grants: VideoGrants,
    ) -> Result<String, TokenError> {
        AccessToken::with_api_key(&self.key, &self.secret)
            .with_identity(identity)
            .with_ttl(ttl)
            .with_grants(grants)
            .to_jwt()
            .map_err(|e| TokenError(e.to_string()))
    }
}

fn join_grants(room: &str) -> VideoGrants {
    VideoGrants {
        room_join: true,
        room: room.to_owned(),
        can_publish: Some(true),
        can_subscribe: Some(true),
        can_publish_data: Some(true),
        ..VideoGrants::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use livekit_api::access_token::TokenVerifier;

    fn key() -> ApiKey {
        ApiKey {
            key: "devkey".into(),
            secret: "a-secret-of-at-least-32-characters!!".into(),
        }
    }

    #[test]
    fn a_user_token_joins_only_its_room_as_its_user() {
        let token = key()
            .user_token("team-a-call", "alice", Duration::from_secs(600))
            .unwrap();
        let claims = TokenVerifier::with_api_key("devkey", "a-secret-of-at-least-32-characters!!")
            .verify(&token)
            .unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.video.room, "team-a-call");
        assert!(
            claims.video.room_join && claims.video.can_publish() && claims.video.can_subscribe()
        );
        assert!(!claims.video.room_admin && !claims.video.agent);
    }

    #[test]
    fn another_secret_does_not_verify() {
        let token = key().agent_token("r", Duration::from_secs(60)).unwrap();
        assert!(
            TokenVerifier::with_api_key("devkey", "another-secret-of-32-characters!!!!")
                .verify(&token)
                .is_err()
        );
    }

    #[test]
    fn the_agent_token_names_the_agent() {
        let token = key().agent_token("r", Duration::from_secs(60)).unwrap();
        let claims = TokenVerifier::with_api_key("devkey", "a-secret-of-at-least-32-characters!!")
            .verify(&token)
            .unwrap();
        assert_eq!(claims.sub, AGENT_IDENTITY);
        assert!(claims.video.agent && claims.video.room_join);
        assert_eq!(claims.kind, "agent");
    }
}
