//! `spec.clientAuth` on the real worker process: a client holding a JWT from the
//! application's identity provider (ES256, keys as a JWK Set) joins the session of the
//! user the token names, without the session's join token; a valid token for another user
//! is refused with 403, a forged or foreign one with 401 naming both checks, and the join
//! token keeps working beside it.

mod common;

use common::identity_provider::IdentityProvider;
use common::{Worker, token};
use serde_json::json;
use voice_proto::worker::v1::{ReserveResult, ReserveSessionRequest};

const ID: &str = "team/call";
const UID: &str = "uid-call";

/// The status and `code` of an upgrade to session `id` with `token` (101 when taken).
async fn upgrade(worker: &Worker, id: &str, token: &str) -> (u16, String) {
    let url = format!(
        "ws://127.0.0.1:{}/v1/sessions/{id}/ws?rate=16000&token={token}",
        worker.http_port
    );
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => (101, String::new()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned))
                .unwrap_or_default();
            (response.status().as_u16(), code)
        }
        Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
    }
}

#[tokio::test]
async fn an_application_jwt_opens_its_users_session_and_nothing_else() {
    let idp = IdentityProvider::new();
    let settings = IdentityProvider::client_auth("idp");
    let worker = Worker::start_with_env(
        2,
        &[
            ("VOICE_CLIENT_AUTH", &settings.to_string()),
            ("VOICE_SECRET_IDP_JWKS_JSON", &idp.jwks),
        ],
    );
    for (id, uid, user) in [(ID, UID, "alice"), ("team/other", "uid-other", "bob")] {
        let reply = worker
            .client()
            .await
            .reserve_session(ReserveSessionRequest {
                session_id: id.into(),
                uid: uid.into(),
                token_key_id: None,
                session_config_json: json!({"userId": user}).to_string(),
            })
            .await
            .unwrap_or_else(|e| panic!("ReserveSession: {e}"))
            .into_inner();
        assert_eq!(reply.result(), ReserveResult::Reserved);
    }

    let alice = idp.token("alice");
    assert_eq!(
        upgrade(&worker, ID, &idp.token("mallory")).await.0,
        403,
        "mallory's own token"
    );
    assert_eq!(
        upgrade(&worker, "team/other", &alice).await.0,
        403,
        "alice's token for bob's session"
    );
    let forger = IdentityProvider::new();
    let (status, code) = upgrade(&worker, ID, &forger.token("alice")).await;
    assert_eq!(
        (status, code.as_str()),
        (401, "TokenRefused"),
        "a token the IdP never signed"
    );
    assert_eq!(
        upgrade(&worker, ID, &alice).await.0,
        101,
        "alice's IdP token"
    );
    // The session's own join token keeps working beside application tokens.
    let join = token("team/other", "uid-other", 600);
    assert_eq!(
        upgrade(&worker, "team/other", &join).await.0,
        101,
        "bob's join token"
    );
}
