//! The session's join-token Secret: one token per person who may join, in one Secret owned by
//! the session.
//!
//! Key `token` admits `spec.user` (where it always was, so single-user clients are unchanged)
//! and key `token-<userID>` admits each of `spec.participants`. Every token carries the same
//! claims but `user`, so the worker knows who connected and no participant can join as
//! another. One Secret rather than one per participant: the session owns it, it goes with
//! the session, and an application reads a session's tokens with one get; participants are
//! immutable, so its keys never change while the session lives.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use voice_crds::{SessionEndpoint, VoiceSession};
use voice_proto::token::{self, JoinClaims, KeySet};

use crate::context::Context;
use crate::field_managers::SESSION as FIELD_MANAGER;

/// Key of `spec.user`'s join token in the token Secret.
pub const TOKEN_KEY: &str = "token";
/// Key of the endpoint URL in the token Secret.
pub const URL_KEY: &str = "url";
/// Key of the LiveKit room in the token Secret of a `livekit` session.
pub const ROOM_KEY: &str = "room";

/// The `type` of every join-token Secret (listed by type when a leader starts).
pub const SECRET_TYPE: &str = "voicebackends.dev/join-token";

/// The Secret's name: `<session>-join-token`.
pub fn token_secret_name(session: &str) -> String {
    format!("{session}-join-token")
}

/// Key of a participant's join token: `token-<userID>` (the CRD's userID pattern is a
/// Secret key's, so the key is always valid).
pub fn participant_key(user_id: &str) -> String {
    format!("{TOKEN_KEY}-{user_id}")
}

/// Every join token of `session`, by Secret key, signed with the current key of `keys`:
/// `claims` as given (its `user` set to `spec.user.userID`) under [`TOKEN_KEY`], and the same
/// claims for each participant under [`participant_key`].
pub fn mint_all(
    keys: &KeySet,
    claims: &JoinClaims,
    session: &VoiceSession,
) -> BTreeMap<String, String> {
    let user = &session.spec.user.user_id;
    let people = std::iter::once((TOKEN_KEY.to_owned(), user)).chain(
        session
            .spec
            .participants
            .iter()
            .map(|p| (participant_key(&p.user_id), &p.user_id)),
    );
    people
        .map(|(key, user_id)| {
            let claims = JoinClaims {
                user: user_id.clone(),
                ..claims.clone()
            };
            (key, token::mint_current(keys, &claims))
        })
        .collect()
}

/// The token Secret of `session`: its `tokens` (from [`mint_all`], or a `livekit` session's
/// LiveKit access tokens), the endpoint URL and, for a `livekit` session, its room; owned by
/// the session so it goes with it.
pub fn secret(
    session: &VoiceSession,
    endpoint: &SessionEndpoint,
    tokens: &BTreeMap<String, String>,
) -> Secret {
    let owner = OwnerReference {
        api_version: VoiceSession::api_version(&()).into_owned(),
        kind: VoiceSession::kind(&()).into_owned(),
        name: session.name_any(),
        uid: session.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let mut data: BTreeMap<String, ByteString> = tokens
        .iter()
        .map(|(key, token)| (key.clone(), ByteString(token.as_bytes().to_vec())))
        .collect();
    data.insert(
        URL_KEY.to_owned(),
        ByteString(endpoint.url.as_bytes().to_vec()),
    );
    if let Some(room) = &endpoint.room {
        data.insert(ROOM_KEY.to_owned(), ByteString(room.as_bytes().to_vec()));
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(token_secret_name(&session.name_any())),
            namespace: session.namespace(),
            owner_references: Some(vec![owner]),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "voice-operator".to_owned(),
                ),
                ("voicebackends.dev/session".to_owned(), session.name_any()),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some(SECRET_TYPE.to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// Writes the token Secret of `session`: created when it does not exist (a create costs
/// the API server far less than a server-side apply, and the first admission of a session
/// is by far the common case), applied over it when it does (a re-admission replaces the
/// tokens in place; the same field manager owns both).
pub async fn apply_token_secret(
    ctx: &Context,
    session: &VoiceSession,
    endpoint: &SessionEndpoint,
    tokens: &BTreeMap<String, String>,
) -> Result<(), kube::Error> {
    let ns = session.namespace().unwrap_or_default();
    let secret = secret(session, endpoint, tokens);
    let name = secret.name_any();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let create = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    match api.create(&create, &secret).await {
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        other => return other.map(|_| ()),
    }
    let mut body = serde_json::to_value(&secret).map_err(kube::Error::SerdeError)?;
    body["apiVersion"] = "v1".into();
    body["kind"] = "Secret".into();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn session(participants: &[&str]) -> VoiceSession {
        let participants: Vec<_> = participants
            .iter()
            .map(|id| serde_json::json!({ "userID": id }))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "voicebackends.dev/v1alpha1",
            "kind": "VoiceSession",
            "metadata": {"name": "call-1", "namespace": "team", "uid": "uid-1"},
            "spec": {
                "backendRef": {"name": "assistant"},
                "user": {"userID": "u-1"},
                "participants": participants,
            }
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn claims() -> JoinClaims {
        JoinClaims {
            sub: "team/call-1".into(),
            uid: "uid-1".into(),
            backend: "assistant".into(),
            user: "u-1".into(),
            iat: 1_000,
            exp: 1_600,
        }
    }

    fn keys() -> KeySet {
        KeySet::new("k1".into(), KEY.into())
    }

    #[test]
    fn a_session_of_one_user_keeps_its_single_token_key() {
        let tokens = mint_all(&keys(), &claims(), &session(&[]));
        assert_eq!(tokens.keys().collect::<Vec<_>>(), ["token"]);
        let verified = token::verify_with(&keys(), &tokens["token"], "team/call-1", "uid-1", 1_100)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(verified, claims());
    }

    #[test]
    fn each_participant_gets_a_token_of_their_own_with_otherwise_the_same_claims() {
        let tokens = mint_all(&keys(), &claims(), &session(&["u-2", "guest.3"]));
        assert_eq!(
            tokens.keys().collect::<Vec<_>>(),
            ["token", "token-guest.3", "token-u-2"]
        );
        for (key, user) in [
            ("token", "u-1"),
            ("token-u-2", "u-2"),
            ("token-guest.3", "guest.3"),
        ] {
            let verified = token::verify_with(&keys(), &tokens[key], "team/call-1", "uid-1", 1_100)
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(
                verified,
                JoinClaims {
                    user: user.into(),
                    ..claims()
                },
                "{key}"
            );
        }
    }

    #[test]
    fn the_secret_holds_every_token_and_the_url_and_belongs_to_the_session() {
        let s = session(&["u-2"]);
        let tokens = mint_all(&keys(), &claims(), &s);
        let endpoint = SessionEndpoint {
            url: "http://10.0.0.5:8080/v1/sessions/team/call-1/offer".into(),
            token_secret_name: token_secret_name("call-1"),
            ice_servers: Vec::new(),
            room: None,
        };
        let secret = secret(&s, &endpoint, &tokens);
        assert_eq!(secret.name_any(), "call-1-join-token");
        assert_eq!(secret.namespace().as_deref(), Some("team"));
        let data = secret.data.unwrap_or_default();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["token", "token-u-2", "url"]
        );
        assert_eq!(data["token-u-2"].0, tokens["token-u-2"].as_bytes());
        assert_eq!(data["url"].0, endpoint.url.as_bytes());
        let owner = &secret.metadata.owner_references.unwrap_or_default()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("VoiceSession", "call-1", "uid-1")
        );
    }
}
