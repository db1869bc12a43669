//! How end users may prove who they are besides the session's join token: the seed's
//! `CustomAuth` capability. A backend on a provider with `capabilities.customAuth` may accept
//! JWTs from the application's own identity provider, so a client that already holds one
//! needs no token from the session's Secret.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::pipeline::SecretKeyRef;

/// Client authentication accepted besides the session's join token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientAuth {
    /// JWTs issued by the application's identity provider.
    pub jwt: JwtClientAuth,
}

/// Signature algorithms accepted on application JWTs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum JwtAlgorithm {
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// Ed25519.
    EdDSA,
    /// HMAC with SHA-256 (a shared secret).
    HS256,
}

/// An application JWT admits the user it names to the sessions of that user: a token whose
/// `userClaim` is a session's `spec.user.userID` (or one of its `spec.participants`) opens
/// that session, within the token's `exp`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtClientAuth {
    /// Required `iss` claim.
    #[schemars(length(min = 1, max = 2048))]
    pub issuer: String,
    /// Required `aud` claim (a token may list several audiences; this one must be among them).
    #[schemars(length(min = 1, max = 2048))]
    pub audience: String,
    /// The only algorithm accepted (a token naming another is refused).
    pub algorithm: JwtAlgorithm,
    /// Secret key holding the verification keys as a JWK Set (`{"keys": [...]}`, as an
    /// identity provider publishes at its jwks_uri) or a single JWK; the token's `kid` picks
    /// the key from a set.
    pub keys_secret_ref: SecretKeyRef,
    /// Claim holding the user id; defaults to `sub`.
    #[serde(default = "default_user_claim")]
    #[schemars(length(min = 1, max = 256))]
    pub user_claim: String,
}

fn default_user_claim() -> String {
    "sub".to_owned()
}
