//! An application's identity provider for `spec.clientAuth` tests (also used by
//! `tests/operator_participants.rs`): an ES256 key, its published JWK Set, and the JWTs it
//! issues for issuer `https://id.example` and audience `voice`.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

/// The issuer the tokens name.
pub const ISSUER: &str = "https://id.example";
/// The audience the tokens name.
pub const AUDIENCE: &str = "voice";

/// A signing key and its JWK Set (key id `idp-1`).
pub struct IdentityProvider {
    key: EncodingKey,
    /// The JWK Set, as JSON text.
    pub jwks: String,
}

impl IdentityProvider {
    /// A new key pair.
    pub fn new() -> Self {
        let pair = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let point = pair.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "idp-1", "use": "sig",
                                    "x": b64(&point[1..33]), "y": b64(&point[33..65])}]});
        Self {
            key: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwks: jwks.to_string(),
        }
    }

    /// A token for `user` (its `sub`), valid for five minutes.
    pub fn token(&self, user: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("idp-1".into());
        let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": user, "exp": now + 300});
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `spec.clientAuth` trusting this provider, its keys in Secret `secret` key `jwks.json`.
    pub fn client_auth(secret: &str) -> serde_json::Value {
        json!({"jwt": {"issuer": ISSUER, "audience": AUDIENCE, "algorithm": "ES256",
                       "keysSecretRef": {"name": secret, "key": "jwks.json"}}})
    }
}
