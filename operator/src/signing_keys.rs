//! A backend's join-token signing keys: what its Secret holds, and when to rotate them.
//!
//! The Secret `<backend>-session-signing-key` holds `keys.json` (a [`KeySet`]: the current
//! key, which signs, and the retired keys, which still verify) and `signing-key` (the current
//! key alone, for workers started with it as an environment variable). Rotation is asked for
//! with the annotation [`ROTATE_ANNOTATION`] on the VoiceBackend: each new value rotates once
//! (the Secret remembers the value it honoured in [`ROTATED_FOR_ANNOTATION`]). A rotation has
//! two steps. First the new key is *staged*: it is in `keys.json`, so workers verify with it,
//! but tokens are still signed with the old one. After the propagation delay (the operator's
//! `--signing-key-propagation-seconds`, by default [`DEFAULT_PROPAGATION`]: the kubelet updates
//! a mounted Secret after its sync period plus its cache TTL, a minute each by default) it
//! becomes current, so no worker is ever shown a token signed with a key it has not read yet.
//! The retired key stays for [`MAX_TOKEN_LIFETIME`], the longest a token lives, so no token
//! handed out before the rotation stops working early; then it is pruned. Workers re-read
//! `keys.json` from the mounted Secret every second, so they learn new keys without a restart.
//!
//! The decision ([`desired`]) is pure: the Secret as read, the annotation, the time and a key
//! source in, the key set to write (or nothing) out.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use voice_proto::token::KeySet;

/// Data key of the key set's JSON in the Secret (and the file name in the worker).
pub const KEYS_FILE_KEY: &str = "keys.json";
/// Annotation on a VoiceBackend whose every new value rotates the backend's signing key.
pub const ROTATE_ANNOTATION: &str = "voicebackends.dev/rotate-signing-key";
/// Annotation on the Secret: the [`ROTATE_ANNOTATION`] value last honoured.
pub const ROTATED_FOR_ANNOTATION: &str = "voicebackends.dev/rotated-for";
/// Label on signing-key Secrets, which the allocator watches (and no other Secret).
pub const SECRET_LABEL: (&str, &str) = ("voicebackends.dev/secret", "signing-key");
/// The longest a join token lives (its lifetime is the minimum of the session's maxDuration
/// and this), hence how long a retired key keeps verifying.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// How long a staged key waits before it signs, unless the operator is told otherwise.
pub const DEFAULT_PROPAGATION: Duration = Duration::from_secs(150);

/// The key set and annotation the Secret should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// The keys.
    pub keys: KeySet,
    /// The rotation request it answers, if any.
    pub rotated_for: Option<String>,
}

/// What the Secret should hold now, or `None` when it holds it already. `existing` is the
/// Secret as read (`None`: not created yet), `requested` the backend's [`ROTATE_ANNOTATION`],
/// `now` Unix seconds, `propagation` how long (seconds) a new key is staged before it signs,
/// and `fresh` makes a new (key id, key) pair.
pub fn desired(
    existing: Option<&Secret>,
    requested: Option<&str>,
    now: u64,
    propagation: u64,
    fresh: &mut dyn FnMut() -> crate::Result<(String, String)>,
) -> crate::Result<Option<Desired>> {
    let Some(secret) = existing else {
        let (kid, key) = fresh()?;
        return Ok(Some(Desired {
            keys: KeySet::new(kid, key),
            rotated_for: requested.map(str::to_owned),
        }));
    };
    let honoured = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROTATED_FOR_ANNOTATION))
        .map(String::as_str);
    let (mut keys, mut changed) = match key_set_of(secret) {
        Ok(keys) => (keys, false),
        // A Secret from before key ids (only `signing-key`): name its key, keep it.
        Err(_) => match legacy_key(secret) {
            Some(key) => (KeySet::new(format!("legacy-{now}"), key), true),
            None => {
                let (kid, key) = fresh()?;
                (KeySet::new(kid, key), true)
            }
        },
    };
    let mut rotated_for = honoured.map(str::to_owned);
    if let Some(request) = requested
        && Some(request) != honoured
    {
        let (kid, key) = fresh()?;
        keys.stage(kid, key, now.saturating_add(propagation));
        rotated_for = Some(request.to_owned());
        changed = true;
    }
    changed |= keys.promote_due(now);
    changed |= keys.prune(now, MAX_TOKEN_LIFETIME.as_secs());
    Ok(changed.then_some(Desired { keys, rotated_for }))
}

/// The key set in a signing-key Secret.
pub fn key_set_of(secret: &Secret) -> Result<KeySet, String> {
    let json = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KEYS_FILE_KEY))
        .ok_or_else(|| format!("the Secret has no {KEYS_FILE_KEY}"))?;
    KeySet::parse(&json.0).map_err(|e| e.to_string())
}

fn legacy_key(secret: &Secret) -> Option<String> {
    let bytes = &secret
        .data
        .as_ref()?
        .get(crate::pod_template::SIGNING_KEY_KEY)?
        .0;
    String::from_utf8(bytes.clone())
        .ok()
        .filter(|k| k.len() >= 32)
}

/// A new key: 32 random bytes as 64 hex characters, named after `now` and a random suffix.
pub fn fresh_key(now: u64) -> crate::Result<(String, String)> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(crate::Error::Random)?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    Ok((format!("k{now}-{}", &hex[..8]), hex))
}

/// The Secret's data for `keys`.
pub fn secret_data(keys: &KeySet) -> BTreeMap<String, k8s_openapi::ByteString> {
    BTreeMap::from([
        (
            KEYS_FILE_KEY.to_owned(),
            k8s_openapi::ByteString(keys.to_json().into_bytes()),
        ),
        (
            crate::pod_template::SIGNING_KEY_KEY.to_owned(),
            k8s_openapi::ByteString(keys.current_key().to_vec()),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn counter() -> impl FnMut() -> crate::Result<(String, String)> {
        let mut n = 0;
        move || {
            n += 1;
            Ok((format!("k{n}"), format!("{n:0>64}")))
        }
    }

    fn secret_of(d: &Desired) -> Secret {
        Secret {
            metadata: ObjectMeta {
                annotations: d
                    .rotated_for
                    .clone()
                    .map(|r| BTreeMap::from([(ROTATED_FOR_ANNOTATION.to_owned(), r)])),
                ..ObjectMeta::default()
            },
            data: Some(secret_data(&d.keys)),
            ..Secret::default()
        }
    }

    #[test]
    fn a_new_backend_gets_one_named_key_and_nothing_changes_without_a_request() {
        let mut fresh = counter();
        let first = desired(None, None, 100, 0, &mut fresh).unwrap().unwrap();
        assert_eq!(first.keys.current, "k1");
        assert_eq!(first.keys.keys.len(), 1);
        assert_eq!(
            desired(Some(&secret_of(&first)), None, 200, 0, &mut fresh).unwrap(),
            None
        );
    }

    #[test]
    fn each_new_annotation_value_rotates_once_and_the_old_key_stays_for_the_token_lifetime() {
        let mut fresh = counter();
        let first = desired(None, None, 100, 0, &mut fresh).unwrap().unwrap();
        let rotated = desired(
            Some(&secret_of(&first)),
            Some("2026-12-06"),
            200,
            0,
            &mut fresh,
        )
        .unwrap()
        .unwrap();
        assert_eq!(rotated.keys.current, "k2");
        assert_eq!(rotated.rotated_for.as_deref(), Some("2026-12-06"));
        let kids: Vec<(&str, Option<u64>)> = rotated
            .keys
            .keys
            .iter()
            .map(|k| (k.kid.as_str(), k.retired_at))
            .collect();
        assert_eq!(kids, vec![("k2", None), ("k1", Some(200))]);
        let secret = secret_of(&rotated);
        // The same value again is no new request.
        let lifetime = MAX_TOKEN_LIFETIME.as_secs();
        assert_eq!(
            desired(
                Some(&secret),
                Some("2026-12-06"),
                200 + lifetime - 1,
                0,
                &mut fresh
            )
            .unwrap(),
            None
        );
        // Once every token the old key signed has expired, it goes.
        let pruned = desired(
            Some(&secret),
            Some("2026-12-06"),
            200 + lifetime,
            0,
            &mut fresh,
        )
        .unwrap()
        .unwrap();
        assert_eq!(pruned.keys.keys.len(), 1);
        assert_eq!(pruned.keys.current, "k2");
    }

    #[test]
    fn a_rotation_stages_the_new_key_until_workers_can_have_read_it() {
        let mut fresh = counter();
        let first = desired(None, None, 100, 90, &mut fresh).unwrap().unwrap();
        let staged = desired(Some(&secret_of(&first)), Some("r1"), 200, 90, &mut fresh)
            .unwrap()
            .unwrap();
        assert_eq!(staged.keys.current, "k1", "the old key still signs");
        assert_eq!(staged.keys.next_promotion(), Some(290));
        assert!(
            staged.keys.key_for(Some("k2")).is_some(),
            "k2 verifies already"
        );
        let secret = secret_of(&staged);
        assert_eq!(
            desired(Some(&secret), Some("r1"), 289, 90, &mut fresh).unwrap(),
            None
        );
        let promoted = desired(Some(&secret), Some("r1"), 290, 90, &mut fresh)
            .unwrap()
            .unwrap();
        assert_eq!(promoted.keys.current, "k2");
        assert_eq!(promoted.keys.next_promotion(), None);
        let retired: Vec<_> = promoted.keys.keys.iter().map(|k| k.retired_at).collect();
        assert_eq!(
            retired,
            vec![None, Some(290)],
            "k1 retires when k2 starts signing"
        );
    }

    #[test]
    fn a_secret_from_before_key_ids_keeps_its_key_under_a_name() {
        let legacy = Secret {
            data: Some(BTreeMap::from([(
                crate::pod_template::SIGNING_KEY_KEY.to_owned(),
                k8s_openapi::ByteString(b"ab".repeat(32)),
            )])),
            ..Secret::default()
        };
        let mut fresh = counter();
        let named = desired(Some(&legacy), None, 300, 0, &mut fresh)
            .unwrap()
            .unwrap();
        assert_eq!(named.keys.current, "legacy-300");
        assert_eq!(named.keys.current_key(), "ab".repeat(32).as_bytes());
    }

    #[test]
    fn fresh_keys_are_64_hex_characters_with_distinct_ids() {
        let (a, key) = fresh_key(5).unwrap();
        let (b, _) = fresh_key(5).unwrap();
        assert_eq!(key.len(), 64);
        assert!(key.bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(a.starts_with("k5-"));
        assert_ne!(a, b);
    }
}
