//! The STUN/TURN servers a worker hands to its clients, with their credentials.
//!
//! The backend's `spec.workers.network.iceServers` reaches the worker as `ICE_SERVERS` (the
//! spec's JSON: URLs and Secret *references*); the referenced keys come from the pod's
//! Secrets by the worker's usual rule (`pipeline::providers::credentials`). Per server:
//! - no credentials: the URLs alone (STUN);
//! - `usernameSecretRef` + `credentialSecretRef`: a static TURN account, as given;
//! - `authSecretRef`: coturn's `use-auth-secret` (the TURN REST convention): for each
//!   session the worker mints username `<expiry-unix>:<namespace>/<name>` and credential
//!   base64(HMAC-SHA1(secret, username)), expiring with the session's join token, so the
//!   shared secret and no long-lived password ever reach a browser.
//!
//! WHIP clients get them as `Link: <url>; rel="ice-server"` headers (RFC 9725 §4.6), the
//! demo page as `RTCIceServer` JSON.

use base64::Engine;
use serde::Serialize;
use voice_crds::{IceServer, SecretKeyRef};

use crate::pipeline::providers::credentials;

/// A secret value whose `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How one server's clients authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// None (STUN, or a TURN server that needs none).
    None,
    /// A fixed username and password.
    Static {
        /// The TURN username.
        username: Secret,
        /// The TURN password.
        credential: Secret,
    },
    /// Time-limited credentials derived from a secret shared with the TURN server.
    SharedSecret(Secret),
}

/// One configured server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfiguredServer {
    /// `stun:`/`turn:`/`turns:` URLs.
    pub urls: Vec<String>,
    /// How clients authenticate to it.
    pub credentials: Credentials,
}

/// Every server of the worker, credentials loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IceServers(Vec<ConfiguredServer>);

/// Why the configured servers cannot be used; the worker refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum IceConfigError {
    /// A referenced Secret key is not available to the worker.
    #[error("ICE_SERVERS[{index}]: {message}")]
    MissingSecret {
        /// Which server.
        index: usize,
        /// What is missing and where it was looked for.
        message: String,
    },
    /// Both kinds of credentials, or half of the static pair.
    #[error(
        "ICE_SERVERS[{0}]: give authSecretRef alone, or usernameSecretRef with credentialSecretRef"
    )]
    Ambiguous(usize),
}

/// One server as a client gets it: `RTCIceServer` in JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClientIceServer {
    /// The server's URLs.
    pub urls: Vec<String>,
    /// The TURN username, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The TURN password, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl IceServers {
    /// Servers from the spec's JSON entries, their Secret keys read with `load`
    /// (`credentials::load` in the worker, a map in tests).
    pub fn load_with(
        specs: &[IceServer],
        mut load: impl FnMut(&SecretKeyRef) -> Result<String, String>,
    ) -> Result<Self, IceConfigError> {
        let mut servers = Vec::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            let mut read = |r: &SecretKeyRef| {
                load(r)
                    .map(Secret)
                    .map_err(|message| IceConfigError::MissingSecret { index, message })
            };
            let credentials = match (
                &spec.auth_secret_ref,
                &spec.username_secret_ref,
                &spec.credential_secret_ref,
            ) {
                (None, None, None) => Credentials::None,
                (Some(secret), None, None) => Credentials::SharedSecret(read(secret)?),
                (None, Some(username), Some(credential)) => Credentials::Static {
                    username: read(username)?,
                    credential: read(credential)?,
                },
                _ => return Err(IceConfigError::Ambiguous(index)),
            };
            servers.push(ConfiguredServer {
                urls: spec.urls.clone(),
                credentials,
            });
        }
        Ok(Self(servers))
    }

    /// Servers from the spec's entries, Secret keys from the pod (`VOICE_SECRETS_DIR` files
    /// or `VOICE_SECRET_*` variables).
    pub fn load(specs: &[IceServer]) -> Result<Self, IceConfigError> {
        Self::load_with(specs, |r| {
            credentials::load("iceServers", Some(r))
                .map_err(|e| e.to_string())?
                .map(|key| key.expose().to_owned())
                .ok_or_else(|| format!("no Secret key {}/{}", r.name, r.key))
        })
    }

    /// Whether no server is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The servers for the client of `session` (`namespace/name`), with credentials valid
    /// until `expires` (Unix seconds; the session's join token expiry).
    pub fn for_session(&self, session: &str, expires: u64) -> Vec<ClientIceServer> {
        self.0
            .iter()
            .map(|server| {
                let (username, credential) = match &server.credentials {
                    Credentials::None => (None, None),
                    Credentials::Static {
                        username,
                        credential,
                    } => (Some(username.0.clone()), Some(credential.0.clone())),
                    Credentials::SharedSecret(secret) => {
                        let username = rest_username(expires, session);
                        let credential = rest_credential(secret.0.as_bytes(), &username);
                        (Some(username), Some(credential))
                    }
                };
                ClientIceServer {
                    urls: server.urls.clone(),
                    username,
                    credential,
                }
            })
            .collect()
    }
}

/// The TURN REST username: `<expiry>:<user>`, the form coturn's `use-auth-secret` checks
/// (it refuses the allocation once `expiry` has passed).
pub fn rest_username(expires: u64, user: &str) -> String {
    // coturn splits at the first ':'; a session id never has one, but be sure.
    format!("{expires}:{}", user.replace(':', "_"))
}

/// The TURN REST credential: base64(HMAC-SHA1(shared secret, username)).
pub fn rest_credential(secret: &[u8], username: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = ring::hmac::sign(&key, username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// The `Link` header values of RFC 9725 §4.6, one per URL. A value that cannot be sent as
/// a header (a control character in a static credential) is left out.
pub fn link_headers(servers: &[ClientIceServer]) -> Vec<String> {
    let mut values = Vec::new();
    for server in servers {
        for url in &server.urls {
            let mut value = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(username), Some(credential)) = (&server.username, &server.credential) {
                value.push_str(&format!(
                    "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                    quoted(username),
                    quoted(credential)
                ));
            }
            if value.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
                values.push(value);
            } else {
                tracing::warn!(%url, "an ICE server credential has characters a header cannot carry; not sent");
            }
        }
    }
    values
}

/// `text` escaped for an HTTP quoted-string (RFC 9110 §5.6.4).
fn quoted(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Vec<IceServer> {
        serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"))
    }

    fn secrets(r: &SecretKeyRef) -> Result<String, String> {
        match (r.name.as_str(), r.key.as_str()) {
            ("turn", "shared") => Ok("north-wind".into()),
            ("static", "user") => Ok("alice".into()),
            ("static", "pass") => Ok("pa\"ss".into()),
            _ => Err(format!("no {}/{}", r.name, r.key)),
        }
    }

    #[test]
    fn the_rest_credential_is_coturns_hmac_sha1() {
        // Computed independently: printf %s '1700000000:team/call-1' |
        //   openssl dgst -sha1 -hmac north-wind -binary | base64
        assert_eq!(
            rest_credential(b"north-wind", "1700000000:team/call-1"),
            "1Dv5YhoEX4lkHWsFMX45P7tdrew="
        );
        assert_eq!(
            rest_username(1_700_000_000, "team/call-1"),
            "1700000000:team/call-1"
        );
    }

    #[test]
    fn each_kind_of_server_gets_its_credentials() {
        let servers = IceServers::load_with(
            &spec(serde_json::json!([
                {"urls": ["stun:stun.example.com"]},
                {"urls": ["turn:t.example.com?transport=udp", "turn:t.example.com?transport=tcp"],
                 "authSecretRef": {"name": "turn", "key": "shared"}},
                {"urls": ["turns:s.example.com"],
                 "usernameSecretRef": {"name": "static", "key": "user"},
                 "credentialSecretRef": {"name": "static", "key": "pass"}},
            ])),
            secrets,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let client = servers.for_session("team/call-1", 1_700_000_000);
        assert_eq!(client[0].username, None);
        assert_eq!(
            client[1].username.as_deref(),
            Some("1700000000:team/call-1")
        );
        assert_eq!(
            client[1].credential.as_deref(),
            Some("1Dv5YhoEX4lkHWsFMX45P7tdrew=")
        );
        assert_eq!(client[2].username.as_deref(), Some("alice"));
        let links = link_headers(&client);
        assert_eq!(
            links,
            vec![
                "<stun:stun.example.com>; rel=\"ice-server\"".to_owned(),
                "<turn:t.example.com?transport=udp>; rel=\"ice-server\"; username=\"1700000000:team/call-1\"; credential=\"1Dv5YhoEX4lkHWsFMX45P7tdrew=\"; credential-type=\"password\"".to_owned(),
                "<turn:t.example.com?transport=tcp>; rel=\"ice-server\"; username=\"1700000000:team/call-1\"; credential=\"1Dv5YhoEX4lkHWsFMX45P7tdrew=\"; credential-type=\"password\"".to_owned(),
                "<turns:s.example.com>; rel=\"ice-server\"; username=\"alice\"; credential=\"pa\\\"ss\"; credential-type=\"password\"".to_owned(),
            ]
        );
        // The shared secret itself is never handed out, and never printed.
        assert!(!links.iter().any(|l| l.contains("north-wind")));
        assert!(!format!("{servers:?}").contains("north-wind"));
    }

    #[test]
    fn a_missing_secret_or_a_mixed_server_is_refused_by_index() {
        let missing = IceServers::load_with(
            &spec(serde_json::json!([{"urls": ["turn:x"], "authSecretRef": {"name": "nope", "key": "k"}}])),
            secrets,
        )
        .map(|_| ())
        .unwrap_err();
        assert!(
            missing.to_string().contains("ICE_SERVERS[0]: no nope/k"),
            "{missing}"
        );
        let half = IceServers::load_with(
            &spec(serde_json::json!([{"urls": ["stun:x"]}, {"urls": ["turn:x"], "usernameSecretRef": {"name": "static", "key": "user"}}])),
            secrets,
        )
        .map(|_| ())
        .unwrap_err();
        assert!(half.to_string().starts_with("ICE_SERVERS[1]"), "{half}");
    }
}
