//! Application JWTs: the backend's `spec.clientAuth` (the seed's CustomAuth), accepted by
//! signaling besides the session's own join token.
//!
//! A token from the application's identity provider opens the sessions of the user it
//! names: signed by one of the configured keys with the one configured algorithm, issued by
//! the configured issuer for the configured audience, not expired, its user claim equal to
//! the session's `spec.user.userID` or one of its participants. The check of the user
//! against the session is the caller's ([`crate::sessions::Sessions::participant`]); this
//! module only says who the token is for and until when.

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use voice_crds::{ClientAuth, JwtAlgorithm};

/// The environment variable the operator sets from `spec.clientAuth` (JSON).
pub const ENV: &str = "VOICE_CLIENT_AUTH";

/// Verifies application JWTs.
#[derive(Clone)]
pub struct AppTokens {
    keys: JwkSet,
    validation: Validation,
    user_claim: String,
}

impl std::fmt::Debug for AppTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppTokens")
            .field("keys", &self.keys.keys.len())
            .field("user_claim", &self.user_claim)
            .finish_non_exhaustive()
    }
}

/// Who a valid application token is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppUser {
    /// The user id (the configured claim).
    pub user: String,
    /// When the token expires, Unix seconds.
    pub exp: u64,
}

impl AppTokens {
    /// The backend's `clientAuth` as the operator set it, with its keys read like every other
    /// referenced Secret key; `None` when the backend has none, `Some(Err)` with what is
    /// wrong when it cannot be used (every application token is then refused, saying why).
    pub fn from_env() -> Option<Result<Self, String>> {
        let json = std::env::var(ENV).ok()?;
        Some(Self::configured(&json))
    }

    fn configured(json: &str) -> Result<Self, String> {
        let auth: ClientAuth = serde_json::from_str(json)
            .map_err(|e| format!("{ENV} is not a valid spec.clientAuth: {e}"))?;
        let r = &auth.jwt.keys_secret_ref;
        let keys = crate::pipeline::providers::credentials::load("clientAuth", Some(r))
            .map_err(|e| e.to_string())?
            .map(|key| key.expose().to_owned())
            .unwrap_or_default();
        Self::new(&auth, &keys)
    }

    /// Verifies tokens as `auth` says, with the JWK Set (or single JWK) `keys_json`.
    pub fn new(auth: &ClientAuth, keys_json: &str) -> Result<Self, String> {
        let jwt = &auth.jwt;
        let keys = serde_json::from_str::<JwkSet>(keys_json)
            .or_else(|_| serde_json::from_str::<Jwk>(keys_json).map(|k| JwkSet { keys: vec![k] }))
            .map_err(|e| {
                format!(
                    "spec.clientAuth.jwt.keysSecretRef: Secret {}/{} holds neither a JWK Set nor a JWK: {e}",
                    jwt.keys_secret_ref.name, jwt.keys_secret_ref.key
                )
            })?;
        if keys.keys.is_empty() {
            return Err("spec.clientAuth.jwt.keysSecretRef: the JWK Set has no keys".to_owned());
        }
        let mut validation = Validation::new(match jwt.algorithm {
            JwtAlgorithm::ES256 => Algorithm::ES256,
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::EdDSA => Algorithm::EdDSA,
            JwtAlgorithm::HS256 => Algorithm::HS256,
        });
        validation.set_issuer(&[&jwt.issuer]);
        validation.set_audience(&[&jwt.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = 30;
        Ok(Self {
            keys,
            validation,
            user_claim: jwt.user_claim.clone(),
        })
    }

    /// Who `token` is for, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<AppUser, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("malformed: {e}"))?;
        let jwk = match (&header.kid, self.keys.keys.as_slice()) {
            (Some(kid), _) => self
                .keys
                .find(kid)
                .ok_or_else(|| format!("no key {kid:?} among the configured keys"))?,
            (None, [only]) => only,
            (None, _) => {
                return Err("the token names no key (kid) and several are configured".into());
            }
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| format!("the configured key is unusable: {e}"))?;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key,
            &self.validation,
        )
        .map_err(|e| e.to_string())?;
        let user = data
            .claims
            .get(&self.user_claim)
            .and_then(|v| v.as_str())
            .filter(|u| !u.is_empty())
            .ok_or_else(|| format!("the token has no string claim {:?}", self.user_claim))?;
        let exp = data
            .claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_default();
        Ok(AppUser {
            user: user.to_owned(),
            exp,
        })
    }
}

#[cfg(test)]
mod tests;
