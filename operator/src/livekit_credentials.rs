//! A backend's LiveKit API key pair: the Secret `spec.liveKit.credentialsSecretName` names,
//! keys [`API_KEY_KEY`] and [`API_SECRET_KEY`] (the LiveKit server's `keys:` entry).
//!
//! The operator reads it with a plain `get`, never a watch (it is the user's Secret, with no
//! label to select it by) and never caches it: the backend controller reads it at every
//! reconcile (a missing Secret or key keeps the backend from being Accepted,
//! `backend_livekit`), and each admission of a `livekit` session reads it to sign the user's
//! access tokens (`session_livekit`), so an edited Secret signs the next session's tokens.
//! The workers get the same pair from the Secret itself (`secretKeyRef`), not through the
//! operator. Errors name the Secret and the key, never a value.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use voice_crds::LiveKitServer;
use voice_proto::livekit_token::ApiKey;

/// Key of the LiveKit API key (the token issuer) in the credentials Secret.
pub const API_KEY_KEY: &str = "api-key";
/// Key of the LiveKit API secret (what tokens are signed with) in the credentials Secret.
pub const API_SECRET_KEY: &str = "api-secret";

/// Why a backend's LiveKit key pair cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// The Secret does not exist.
    #[error(
        "Secret {namespace}/{name} does not exist; create it with keys {API_KEY_KEY} and \
         {API_SECRET_KEY} (the LiveKit server's API key and secret), or name another Secret"
    )]
    NotFound {
        /// The backend's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
    /// The Secret lacks one of the two keys.
    #[error(
        "Secret {namespace}/{name} has no key {key}; add it (keys {API_KEY_KEY} and \
         {API_SECRET_KEY}: the LiveKit server's API key and secret)"
    )]
    MissingKey {
        /// The backend's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// The missing key.
        key: &'static str,
    },
    /// A key holds something no LiveKit server would take.
    #[error("Secret {namespace}/{name} key {key} {why}; write the value alone")]
    Unusable {
        /// The backend's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// The key.
        key: &'static str,
        /// What is wrong with its value (never the value).
        why: &'static str,
    },
    /// The API server did not answer the read.
    #[error("reading Secret {namespace}/{name}: {message}")]
    Read {
        /// The backend's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// The client's error.
        message: String,
    },
}

/// The key pair in `secret` (as read from `namespace/name`; `None` when it does not exist).
pub fn api_key_of(
    secret: Option<&Secret>,
    namespace: &str,
    name: &str,
) -> Result<ApiKey, CredentialsError> {
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    let Some(secret) = secret else {
        return Err(CredentialsError::NotFound { namespace, name });
    };
    let value = |key: &'static str| -> Result<String, CredentialsError> {
        let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(key)) else {
            return Err(CredentialsError::MissingKey {
                namespace: namespace.clone(),
                name: name.clone(),
                key,
            });
        };
        let why = match std::str::from_utf8(&bytes.0) {
            Err(_) => Some("is not UTF-8 text"),
            Ok("") => Some("is empty"),
            // Both sides sign with the bytes as they are: a stray newline (`echo` without
            // `-n`) would make every token one the server refuses.
            Ok(text) if text.trim() != text => Some("begins or ends with whitespace"),
            Ok(_) => None,
        };
        match why {
            Some(why) => Err(CredentialsError::Unusable {
                namespace: namespace.clone(),
                name: name.clone(),
                key,
                why,
            }),
            None => Ok(String::from_utf8_lossy(&bytes.0).into_owned()),
        }
    };
    Ok(ApiKey {
        key: value(API_KEY_KEY)?,
        secret: value(API_SECRET_KEY)?,
    })
}

/// Reads the key pair of the backend in `namespace` whose `spec.liveKit` is `server`.
pub async fn read(
    client: &kube::Client,
    namespace: &str,
    server: &LiveKitServer,
) -> Result<ApiKey, CredentialsError> {
    let name = &server.credentials_secret_name;
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| CredentialsError::Read {
            namespace: namespace.to_owned(),
            name: name.clone(),
            message: e.to_string(),
        })?;
    api_key_of(secret.as_ref(), namespace, name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    pub(crate) fn secret(pairs: &[(&str, &[u8])]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    const SECRET: &[u8] = b"a-secret-of-at-least-32-characters!!";

    #[test]
    fn both_keys_make_the_pair() {
        let s = secret(&[("api-key", b"devkey"), ("api-secret", SECRET)]);
        let key = api_key_of(Some(&s), "team", "livekit").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(key.key, "devkey");
        assert_eq!(key.secret.as_bytes(), SECRET);
    }

    #[test]
    fn a_missing_secret_or_key_is_named_and_no_value_is_shown() {
        let missing = api_key_of(None, "team", "livekit").unwrap_err();
        assert!(
            missing.to_string().starts_with(
                "Secret team/livekit does not exist; create it with keys api-key and api-secret"
            ),
            "{missing}"
        );
        let no_secret = secret(&[("api-key", b"devkey")]);
        let why = api_key_of(Some(&no_secret), "team", "livekit").unwrap_err();
        assert_eq!(
            why,
            CredentialsError::MissingKey {
                namespace: "team".into(),
                name: "livekit".into(),
                key: "api-secret"
            }
        );
        assert!(
            why.to_string()
                .starts_with("Secret team/livekit has no key api-secret; add it"),
            "{why}"
        );
        let no_key = secret(&[("api-secret", SECRET)]);
        let why = api_key_of(Some(&no_key), "team", "livekit").unwrap_err();
        assert!(why.to_string().contains("no key api-key"), "{why}");
        assert!(!why.to_string().contains("a-secret-of"), "{why}");
    }

    #[test]
    fn an_empty_binary_or_padded_value_is_refused_without_showing_it() {
        for (value, why) in [
            (&b""[..], "is empty"),
            (&[0xff, 0xfe][..], "is not UTF-8 text"),
            (
                &b"a-secret-of-at-least-32-characters!!\n"[..],
                "begins or ends with whitespace",
            ),
        ] {
            let s = secret(&[("api-key", b"devkey"), ("api-secret", value)]);
            let error = api_key_of(Some(&s), "team", "livekit").unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("Secret team/livekit key api-secret {why}; write the value alone")
            );
        }
    }

    #[test]
    fn the_pair_never_prints_its_secret() {
        let s = secret(&[("api-key", b"devkey"), ("api-secret", SECRET)]);
        let key = api_key_of(Some(&s), "team", "livekit").unwrap_or_else(|e| panic!("{e}"));
        assert!(!format!("{key:?}").contains("a-secret-of"));
    }
}
