//! Session join tokens: minted by the operator at admission, verified by the worker on every
//! offer or WebSocket upgrade.
//!
//! An HS256 JWT signed with the backend's signing key (a Secret the operator owns and mounts
//! into the worker pods), bound to one session by namespace/name and uid. The header's `kid`
//! names the key: a backend's keys rotate, and a [`KeySet`] holds the current key and the
//! retired ones still accepted. The clock is an argument, so the rules are testable without
//! sleeping and the worker's notion of time is explicit.

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
    /// The participant this token admits: `spec.user.userID` or a `spec.participants`
    /// userID. Empty in tokens minted before sessions had participants (the session's user).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
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
    /// The token names a key (`kid`) the worker does not hold: retired longer ago than the
    /// longest token lifetime, or another backend's.
    #[error(
        "join token key {kid:?} is unknown (rotated out or another backend's); fetch the session's current token Secret"
    )]
    UnknownKey {
        /// The key id the token names (empty when it names none).
        kid: String,
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
            TokenError::UnknownKey { .. } => "TokenUnknownKey",
            TokenError::WrongSession { .. } => "TokenWrongSession",
        }
    }
}

/// Signs `claims` with `key`, without a key id (for a worker given one key, see
/// [`KeySet::single`]).
pub fn mint(key: &[u8], claims: &JoinClaims) -> String {
    sign(Header::new(Algorithm::HS256), key, claims)
}

/// Signs `claims` with the key set's current key and names it in the `kid` header.
pub fn mint_current(keys: &KeySet, claims: &JoinClaims) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(keys.current.clone());
    sign(header, keys.current_key(), claims)
}

fn sign(header: Header, key: &[u8], claims: &JoinClaims) -> String {
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(key))
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
    verify_with(&KeySet::single(key.to_vec()), token, session, uid, now)
}

/// Checks `token` against the key its `kid` names in `keys` (see [`KeySet`] for a set of one
/// key), for session `session` with uid `uid` at time `now` (Unix seconds).
pub fn verify_with(
    keys: &KeySet,
    token: &str,
    session: &str,
    uid: &str,
    now: u64,
) -> Result<JoinClaims, TokenError> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
    let key = keys
        .key_for(header.kid.as_deref())
        .ok_or_else(|| TokenError::UnknownKey {
            kid: header.kid.clone().unwrap_or_default(),
        })?;
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

/// The key id a token's header names (`None` when it names none), without verifying it.
pub fn key_id(token: &str) -> Result<Option<String>, TokenError> {
    jsonwebtoken::decode_header(token)
        .map(|h| h.kid)
        .map_err(|e| TokenError::Malformed(e.to_string()))
}

/// Why a key set could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeySetError {
    /// Not the JSON of a [`KeySet`].
    #[error("signing key set is not valid JSON of the expected shape: {0}")]
    Malformed(String),
    /// `current` names no key of the set.
    #[error("signing key set's current key {0:?} is not among its keys")]
    NoCurrentKey(String),
    /// A key is shorter than 32 bytes (HS256 needs at least the hash size).
    #[error("signing key {0:?} is shorter than 32 bytes")]
    ShortKey(String),
}

/// One key of a [`KeySet`], as stored in the backend's signing-key Secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SigningKey {
    /// Key id, put in the `kid` header of the tokens it signs.
    pub kid: String,
    /// The key material (the operator writes 64 hex characters; their bytes are the key).
    pub key: String,
    /// When the key stopped being current, Unix seconds; the operator drops it from the set
    /// once the longest token lifetime has passed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<u64>,
    /// Set on a key staged by a rotation: it verifies at once and signs from this time, Unix
    /// seconds, by when every worker has read it from its mounted Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_from: Option<u64>,
}

/// A backend's signing keys: the current one (which signs) and the retired ones whose tokens
/// may still be live (which only verify). Serialised as the JSON in the Secret's
/// `keys.json`, which workers read from a mounted file and reload when it changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySet {
    /// Key id of the key that signs new tokens.
    pub current: String,
    /// Every key, current first by convention.
    pub keys: Vec<SigningKey>,
    /// Set only by [`KeySet::single`]: the one key verifies whatever `kid` a token names.
    #[serde(skip)]
    any_kid: bool,
}

impl KeySet {
    /// A set of one key that verifies tokens whatever key id they name (or none): a worker
    /// given a bare key (`SESSION_SIGNING_KEY`) has nothing to choose between.
    pub fn single(key: Vec<u8>) -> KeySet {
        KeySet {
            current: String::new(),
            keys: vec![SigningKey {
                kid: String::new(),
                key: String::from_utf8_lossy(&key).into_owned(),
                retired_at: None,
                current_from: None,
            }],
            any_kid: true,
        }
    }

    /// A set whose only key is `key`, named `kid`, current.
    pub fn new(kid: String, key: String) -> KeySet {
        KeySet {
            current: kid.clone(),
            keys: vec![SigningKey {
                kid,
                key,
                retired_at: None,
                current_from: None,
            }],
            any_kid: false,
        }
    }

    /// Reads the JSON of a key set, checking that it can sign and verify.
    pub fn parse(json: &[u8]) -> Result<KeySet, KeySetError> {
        let set: KeySet =
            serde_json::from_slice(json).map_err(|e| KeySetError::Malformed(e.to_string()))?;
        if !set.keys.iter().any(|k| k.kid == set.current) {
            return Err(KeySetError::NoCurrentKey(set.current));
        }
        if let Some(short) = set.keys.iter().find(|k| k.key.len() < 32) {
            return Err(KeySetError::ShortKey(short.kid.clone()));
        }
        Ok(set)
    }

    /// The JSON stored in the Secret.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a key set serialises")
    }

    /// The key that signs new tokens.
    pub fn current_key(&self) -> &[u8] {
        self.keys
            .iter()
            .find(|k| k.kid == self.current)
            .or(self.keys.first())
            .map_or(&[][..], |k| k.key.as_bytes())
    }

    /// The key a token naming `kid` is checked with.
    pub fn key_for(&self, kid: Option<&str>) -> Option<&[u8]> {
        if self.any_kid {
            return self.keys.first().map(|k| k.key.as_bytes());
        }
        let kid = kid?;
        self.keys
            .iter()
            .find(|k| k.kid == kid)
            .map(|k| k.key.as_bytes())
    }

    /// Makes `key` (named `kid`) current at `now`; the previous current key is retired at
    /// `now` and keeps verifying.
    pub fn rotate(&mut self, kid: String, key: String, now: u64) {
        for k in &mut self.keys {
            if k.kid == self.current && k.retired_at.is_none() {
                k.retired_at = Some(now);
            }
        }
        self.keys.retain(|k| k.kid != kid);
        self.keys.insert(
            0,
            SigningKey {
                kid: kid.clone(),
                key,
                retired_at: None,
                current_from: None,
            },
        );
        self.current = kid;
    }

    /// Adds `key` (named `kid`) to verify from now and to sign from `current_from` (see
    /// [`KeySet::promote_due`]), so that verifiers reading the set with a delay hold the key
    /// before any token names it. A key staged earlier and not yet current is replaced: no
    /// token was signed with it.
    pub fn stage(&mut self, kid: String, key: String, current_from: u64) {
        self.keys.retain(|k| k.current_from.is_none());
        self.keys.push(SigningKey {
            kid,
            key,
            retired_at: None,
            current_from: Some(current_from),
        });
    }

    /// Makes a staged key current once its time has come (the previous current key is retired
    /// now). Returns whether the current key changed.
    pub fn promote_due(&mut self, now: u64) -> bool {
        let Some(due) = self
            .keys
            .iter()
            .find(|k| k.current_from.is_some_and(|at| at <= now))
            .cloned()
        else {
            return false;
        };
        self.rotate(due.kid, due.key, now);
        true
    }

    /// When the staged key (if any) becomes current, Unix seconds.
    pub fn next_promotion(&self) -> Option<u64> {
        self.keys.iter().filter_map(|k| k.current_from).min()
    }

    /// Drops retired keys whose tokens have all expired: retired at least `overlap` before
    /// `now`, where `overlap` is the longest token lifetime. Returns whether any went.
    pub fn prune(&mut self, now: u64, overlap: u64) -> bool {
        let before = self.keys.len();
        self.keys.retain(|k| {
            k.retired_at
                .is_none_or(|at| now < at.saturating_add(overlap))
        });
        self.keys.len() != before
    }
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
            user: String::new(),
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

    fn set(kid: &str, key: &str) -> KeySet {
        KeySet::new(kid.into(), key.into())
    }

    const KEY2: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn a_token_names_its_key_and_verifies_with_it() {
        let keys = set("k1", std::str::from_utf8(KEY).unwrap());
        let token = mint_current(&keys, &claims());
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some("k1"));
        assert_eq!(
            verify_with(&keys, &token, "team-a/call-42", "u-1", 1100),
            Ok(claims())
        );
    }

    #[test]
    fn after_a_rotation_old_tokens_verify_until_the_old_key_is_pruned() {
        let mut keys = set("k1", std::str::from_utf8(KEY).unwrap());
        let old = mint_current(&keys, &claims());
        keys.rotate("k2".into(), KEY2.into(), 1200);
        let new = mint_current(&keys, &claims());
        assert_eq!(
            jsonwebtoken::decode_header(&new).unwrap().kid.as_deref(),
            Some("k2")
        );
        assert!(verify_with(&keys, &old, "team-a/call-42", "u-1", 1300).is_ok());
        assert!(verify_with(&keys, &new, "team-a/call-42", "u-1", 1300).is_ok());
        // Within the overlap nothing goes; after it, the old key does and its tokens fail.
        assert!(!keys.prune(1200 + 3599, 3600));
        assert!(keys.prune(1200 + 3600, 3600));
        let err = verify_with(&keys, &old, "team-a/call-42", "u-1", 1300).unwrap_err();
        assert_eq!(err, TokenError::UnknownKey { kid: "k1".into() });
        assert_eq!((err.reason(), err.http_status()), ("TokenUnknownKey", 401));
        assert!(verify_with(&keys, &new, "team-a/call-42", "u-1", 1300).is_ok());
    }

    #[test]
    fn a_staged_key_verifies_at_once_and_signs_only_from_its_time() {
        let mut keys = set("k1", std::str::from_utf8(KEY).unwrap());
        keys.stage("k2".into(), KEY2.into(), 1300);
        keys.stage("k3".into(), KEY2.into(), 1400);
        assert_eq!(
            keys.next_promotion(),
            Some(1400),
            "a newer request replaces k2"
        );
        assert_eq!(keys.current, "k1");
        assert!(!keys.promote_due(1399));
        let staged = mint_current(&set("k3", KEY2), &claims());
        assert!(verify_with(&keys, &staged, "team-a/call-42", "u-1", 1300).is_ok());
        assert!(keys.promote_due(1400));
        assert_eq!(keys.current, "k3");
        assert_eq!(keys.next_promotion(), None);
        let kids: Vec<(&str, Option<u64>)> = keys
            .keys
            .iter()
            .map(|k| (k.kid.as_str(), k.retired_at))
            .collect();
        assert_eq!(kids, vec![("k3", None), ("k1", Some(1400))]);
        assert!(!keys.promote_due(1500));
    }

    #[test]
    fn a_key_set_refuses_tokens_without_a_kid_or_signed_by_a_foreign_key_under_its_kid() {
        let keys = set("k1", std::str::from_utf8(KEY).unwrap());
        let bare = mint(KEY, &claims());
        assert_eq!(
            verify_with(&keys, &bare, "team-a/call-42", "u-1", 1100).unwrap_err(),
            TokenError::UnknownKey { kid: String::new() }
        );
        let forged = mint_current(&set("k1", KEY2), &claims());
        assert_eq!(
            verify_with(&keys, &forged, "team-a/call-42", "u-1", 1100).unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn a_key_set_round_trips_through_its_json_and_bad_sets_are_refused() {
        let mut keys = set("k1", std::str::from_utf8(KEY).unwrap());
        keys.rotate("k2".into(), KEY2.into(), 1200);
        assert_eq!(KeySet::parse(keys.to_json().as_bytes()), Ok(keys));
        assert!(matches!(
            KeySet::parse(b"{}"),
            Err(KeySetError::Malformed(_))
        ));
        assert_eq!(
            KeySet::parse(br#"{"current":"k9","keys":[]}"#),
            Err(KeySetError::NoCurrentKey("k9".into()))
        );
        assert_eq!(
            KeySet::parse(br#"{"current":"k1","keys":[{"kid":"k1","key":"short"}]}"#),
            Err(KeySetError::ShortKey("k1".into()))
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
