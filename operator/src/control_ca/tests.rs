//! The CA Secret's round trip, the renewal decisions and the rotation's trust rules.

use super::*;

fn at(days: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000 + days * 86_400)
}

fn ca() -> ControlCa {
    ControlCa::generate(at(0)).unwrap_or_else(|e| panic!("{e}"))
}

fn worker_secret(ca: &ControlCa, now: SystemTime) -> Secret {
    let (data, annotations) = ca
        .worker_secret("b-workers.ns.svc", now)
        .unwrap_or_else(|e| panic!("{e}"));
    Secret {
        metadata: ObjectMeta {
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..Secret::default()
    }
}

#[test]
fn the_ca_secret_round_trips_and_names_a_missing_key() {
    let ca = ca();
    assert_eq!(ControlCa::from_data(&ca.to_data()).ok(), Some(ca.clone()));
    let mut data = ca.to_data();
    data.remove(CA_KEY);
    let err = ControlCa::from_data(&data)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("ca.key") && err.contains(CA_SECRET), "{err}");
}

#[test]
fn a_worker_secret_is_kept_until_renewal_time_or_a_ca_change() {
    let ca = ca();
    let secret = worker_secret(&ca, at(0));
    assert!(ca.worker_secret_current(&secret, at(1)));
    assert!(ca.worker_secret_current(&secret, at(59)));
    assert!(
        !ca.worker_secret_current(&secret, at(61)),
        "30 days before expiry it renews"
    );
    let other = ControlCa::generate(at(0)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !other.worker_secret_current(&secret, at(1)),
        "another CA re-issues"
    );
    assert!(!ca.worker_secret_current(&Secret::default(), at(1)));
}

#[test]
fn during_a_rotation_both_cas_are_trusted_and_the_client_stays_on_the_old_one() {
    let old = ca();
    let new = ControlCa::generate(at(0)).unwrap_or_else(|e| panic!("{e}"));
    let rotating = ControlCa {
        current: new.current.clone(),
        previous: Some(old.current.clone()),
    };
    let bundle = rotating.trust_bundle();
    assert!(bundle.contains(old.current.cert_pem.trim()));
    assert!(bundle.contains(new.current.cert_pem.trim()));
    let round = ControlCa::from_data(&rotating.to_data()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(round, rotating);
    // Step 1 re-issues every worker Secret (new bundle, serving cert from the new CA).
    assert!(!rotating.worker_secret_current(&worker_secret(&old, at(0)), at(1)));

    let trust = ControlTrust::new(old.clone(), at(0)).unwrap_or_else(|e| panic!("{e}"));
    let before = trust.current().client.clone();
    assert_eq!(trust.refresh(old.clone(), at(1)).ok(), Some(false));
    assert_eq!(trust.refresh(rotating.clone(), at(1)).ok(), Some(true));
    assert_ne!(
        trust.current().client,
        before,
        "a new CA set gets a new client certificate"
    );
    assert_eq!(trust.current().ca, rotating);
    // The client certificate is renewed before it expires even when the CA stays.
    assert_eq!(trust.refresh(rotating.clone(), at(2)).ok(), Some(false));
    assert_eq!(trust.refresh(rotating, at(61)).ok(), Some(true));
}
