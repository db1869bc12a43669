//! Session join tokens: minted by the operator at admission, verified by the worker on every
//! offer or WebSocket upgrade.
//!
//! An HS256 JWT signed with the backend's signing key (a Secret the operator owns and mounts
//! into the worker pods), bound to one session by namespace/name and uid. The clock is an
//! argument, so the rules are testable without sleeping and the worker's notion of time is
//! explicit.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a join token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClaims {
    /// The session, as `namespace/name`.
    pub sub: String,
    /// The session's `metadata.uid`: a re-created session with the same name gets new tokens.
    pub uid: String,
    /// The backend the session was admitted to.
    pub backend: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
}

/// Why a token is refused. [`TokenError::http_status`] says how the worker answers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a well-formed token of ours (bad encoding, algorithm or claims).
    #[error("malformed join token: {0}")]
    Malformed(String),
    /// The signature does not match the backend's key.
    #[error("join token signature is invalid")]
    BadSignature,
    /// The token expired.
    #[error("join token expired at {exp} (now {now}); fetch the session's current token Secret")]
    Expired {
        /// When it expired.
        exp: u64,
        /// The time it was checked.
        now: u64,
    },
    /// A valid token, but for another session.
    #[error("join token is for session {token_session}, not {requested}")]
    WrongSession {
        /// The session the token names.
        token_session: String,
        /// The session the client asked for.
        requested: String,
    },
}

impl TokenError {
    /// HTTP status for signaling: 403 for a valid token of another session, 401 otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            TokenError::WrongSession { .. } => 403,
            _ => 401,
        }
    }

    /// Stable CamelCase reason for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "TokenMalformed",
            TokenError::BadSignature => "TokenBadSignature",
            TokenError::Expired { .. } => "TokenExpired",
            TokenError::WrongSession { .. } => "TokenWrongSession",
        }
    }
}

/// Signs `claims` with `key`.
pub fn mint(key: &[u8], claims: &JoinClaims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key),
    )
    .expect("HS256 signing of plain claims cannot fail")
}

/// Checks `token` against `key` for session `session` (`namespace/name`) with uid `uid` at
/// time `now` (Unix seconds).
pub fn verify(
    key: &[u8],
    token: &str,
    session: &str,
    uid: &str,
    now: u64,
) -> Result<JoinClaims, TokenError> {
    let mut validation = Validation::new(Algorithm::HS256);
    // Expiry is checked below against the caller's clock, not the library's.
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let data =
        jsonwebtoken::decode::<JoinClaims>(token, &DecodingKey::from_secret(key), &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Malformed(e.to_string()),
            })?;
    let claims = data.claims;
    if claims.sub != session || claims.uid != uid {
        return Err(TokenError::WrongSession {
            token_session: claims.sub,
            requested: session.to_string(),
        });
    }
    if now >= claims.exp {
        return Err(TokenError::Expired {
            exp: claims.exp,
            now,
        });
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims() -> JoinClaims {
        JoinClaims {
            sub: "team-a/call-42".into(),
            uid: "u-1".into(),
            backend: "assistant".into(),
            iat: 1000,
            exp: 1600,
        }
    }

    #[test]
    fn a_minted_token_verifies_for_its_session_until_it_expires() {
        let token = mint(KEY, &claims());
        assert_eq!(
            verify(KEY, &token, "team-a/call-42", "u-1", 1599),
            Ok(claims())
        );
        let err = verify(KEY, &token, "team-a/call-42", "u-1", 1600).unwrap_err();
        assert_eq!((err.reason(), err.http_status()), ("TokenExpired", 401));
    }

    #[test]
    fn another_sessions_token_is_forbidden() {
        let token = mint(KEY, &claims());
        let err = verify(KEY, &token, "team-a/call-43", "u-9", 1100).unwrap_err();
        assert_eq!(
            (err.reason(), err.http_status()),
            ("TokenWrongSession", 403)
        );
        // Same name, re-created session: the old token does not carry over.
        let err = verify(KEY, &token, "team-a/call-42", "u-2", 1100).unwrap_err();
        assert_eq!(err.http_status(), 403);
    }

    #[test]
    fn another_backends_key_or_a_tampered_token_is_refused() {
        let token = mint(KEY, &claims());
        let err = verify(
            b"another key of thirty-two bytes!",
            &token,
            "team-a/call-42",
            "u-1",
            1100,
        )
        .unwrap_err();
        assert_eq!(err, TokenError::BadSignature);
        let mut tampered = token.clone();
        tampered.insert(token.find('.').unwrap() + 3, 'x');
        assert_eq!(
            verify(KEY, &tampered, "team-a/call-42", "u-1", 1100)
                .unwrap_err()
                .http_status(),
            401
        );
    }

    #[test]
    fn an_unsigned_token_is_malformed() {
        // alg "none": a classic forgery.
        let forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ0ZWFtLWEvY2FsbC00MiJ9.";
        assert_eq!(
            verify(KEY, forged, "team-a/call-42", "u-1", 1100)
                .unwrap_err()
                .reason(),
            "TokenMalformed"
        );
    }

    proptest! {
        /// Whatever a client sends as a token, verification answers with an error, never a panic.
        #[test]
        fn arbitrary_input_never_panics(input in ".{0,300}") {
            prop_assert!(verify(KEY, &input, "team-a/call-42", "u-1", 1100).is_err());
        }
    }
}
