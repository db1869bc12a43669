//! A client's view of a session's join token: the Secret named by `status.endpoint`.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

/// How long a client waits for the Secret after it sees the session Active. The operator
/// writes it beside the Active status, so it normally exists already or a few milliseconds
/// later; a failed write is retried within a second or so.
const WAIT: Duration = Duration::from_secs(15);

/// The session's token Secret `name`, waiting for it as a client does.
pub async fn token_secret(secrets: &Api<Secret>, name: &str) -> Secret {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match secrets.get_opt(name).await {
            Ok(Some(secret)) => return secret,
            Ok(None) if tokio::time::Instant::now() < deadline => {}
            Ok(None) => panic!("the join-token Secret {name} did not appear within {WAIT:?}"),
            Err(e) => panic!("reading the join-token Secret {name}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The user's token (key `token`) from the session's token Secret `name`.
pub async fn join_token(secrets: &Api<Secret>, name: &str) -> String {
    let secret = token_secret(secrets, name).await;
    let data = secret.data.unwrap_or_default();
    let token = data
        .get("token")
        .unwrap_or_else(|| panic!("the join-token Secret {name} has no key token"));
    String::from_utf8(token.0.clone()).expect("a UTF-8 token")
}
