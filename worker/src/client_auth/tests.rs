use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::*;

fn auth(algorithm: &str) -> ClientAuth {
    serde_json::from_value(json!({"jwt": {
        "issuer": "https://id.example", "audience": "voice", "algorithm": algorithm,
        "keysSecretRef": {"name": "idp", "key": "jwks.json"}
    }}))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// An ES256 signing key and its public JWK, as an identity provider would publish it.
fn es256() -> (EncodingKey, serde_json::Value) {
    let pair = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let point = pair.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
                     "x": b64(&point[1..33]), "y": b64(&point[33..65])});
    (EncodingKey::from_ec_der(&pair.serialize_der()), jwk)
}

fn sign(key: &EncodingKey, alg: Algorithm, kid: Option<&str>, claims: serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, key).unwrap_or_else(|e| panic!("{e}"))
}

fn claims(sub: &str) -> serde_json::Value {
    json!({"iss": "https://id.example", "aud": "voice", "sub": sub, "exp": now() + 300})
}

#[test]
fn a_token_from_the_identity_provider_names_its_user() {
    let (key, jwk) = es256();
    let tokens = AppTokens::new(&auth("ES256"), &json!({"keys": [jwk]}).to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let user = tokens
        .verify(&sign(&key, Algorithm::ES256, Some("k1"), claims("alice")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(user.user, "alice");
    assert!(user.exp > now());
}

#[test]
fn wrong_issuer_audience_expiry_key_or_algorithm_is_refused() {
    let (key, jwk) = es256();
    let tokens = AppTokens::new(&auth("ES256"), &jwk.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let mut bad = Vec::new();
    for (field, value) in [
        ("iss", json!("https://evil.example")),
        ("aud", json!("other")),
        ("exp", json!(now() - 3_600)),
    ] {
        let mut c = claims("alice");
        c[field] = value;
        bad.push((field, sign(&key, Algorithm::ES256, None, c)));
    }
    let (other, _) = es256();
    bad.push((
        "another key",
        sign(&other, Algorithm::ES256, None, claims("alice")),
    ));
    let hmac = EncodingKey::from_secret(b"guessable");
    bad.push((
        "HS256",
        sign(&hmac, Algorithm::HS256, None, claims("alice")),
    ));
    let mut no_sub = claims("alice");
    no_sub.as_object_mut().map(|c| c.remove("sub"));
    bad.push(("no sub", sign(&key, Algorithm::ES256, None, no_sub)));
    for (what, token) in bad {
        assert!(tokens.verify(&token).is_err(), "{what}: accepted");
    }
}

#[test]
fn a_shared_secret_works_as_an_oct_jwk_and_the_user_claim_is_configurable() {
    let mut auth = auth("HS256");
    auth.jwt.user_claim = "uid".into();
    let secret = b"a long shared secret of the application";
    let jwk =
        json!({"kty": "oct", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)});
    let tokens = AppTokens::new(&auth, &jwk.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let mut c = claims("ignored");
    c["uid"] = json!("bob");
    let token = sign(&EncodingKey::from_secret(secret), Algorithm::HS256, None, c);
    assert_eq!(tokens.verify(&token).map(|u| u.user), Ok("bob".to_owned()));
}

#[test]
fn unusable_keys_are_a_configuration_error_naming_the_secret() {
    let error = AppTokens::new(&auth("ES256"), "not json")
        .map(|_| ())
        .unwrap_err();
    assert!(
        error.contains("spec.clientAuth.jwt.keysSecretRef") && error.contains("idp/jwks.json"),
        "{error}"
    );
}
