//! The schema's CEL rules, evaluated client-side (kube's `cel` feature) for fast feedback.
//! The same rules are exercised against the real API server in `tests/api_validation.rs`.

use kube::core::cel::validate_cel;
use voice_crds::{VoiceBackend, VoiceProvider, VoiceSession};

fn example<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(file);
    serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn backend(yaml_patch: impl FnOnce(&mut serde_json::Value)) -> VoiceBackend {
    let mut v = serde_json::to_value(example::<VoiceBackend>("10-backend-stt-tts.yaml")).unwrap();
    yaml_patch(&mut v);
    serde_json::from_value(v).unwrap()
}

fn errors_of(b: &VoiceBackend) -> String {
    match validate_cel(b) {
        Ok(()) => String::new(),
        Err(e) => format!("{e:?}"),
    }
}

#[test]
fn examples_pass_every_rule() {
    validate_cel(&example::<VoiceProvider>("00-provider-builtin.yaml")).unwrap();
    validate_cel(&example::<VoiceBackend>("10-backend-stt-tts.yaml")).unwrap();
    validate_cel(&example::<VoiceBackend>("20-backend-s2s.yaml")).unwrap();
    validate_cel(&example::<VoiceSession>("30-session.yaml")).unwrap();
}

#[test]
fn stt_tts_without_tts_is_rejected() {
    let b = backend(|v| {
        v["spec"]["pipeline"].as_object_mut().unwrap().remove("tts");
        v["spec"]["pipeline"]["processingOrder"] =
            serde_json::json!(["vad", "turnDetection", "stt", "agent"]);
    });
    assert!(
        errors_of(&b).contains("needs both pipeline.stt and pipeline.tts"),
        "{}",
        errors_of(&b)
    );
}

#[test]
fn processing_order_must_list_every_enabled_component() {
    let b = backend(|v| {
        v["spec"]["pipeline"]["processingOrder"] = serde_json::json!(["stt", "agent", "tts"])
    });
    assert!(
        errors_of(&b).contains("must list every enabled component"),
        "{}",
        errors_of(&b)
    );
}

#[test]
fn processing_order_keeps_stt_agent_tts_in_sequence() {
    let b = backend(|v| {
        v["spec"]["pipeline"]["processingOrder"] =
            serde_json::json!(["vad", "turnDetection", "tts", "agent", "stt"])
    });
    assert!(
        errors_of(&b).contains("stt before agent before tts"),
        "{}",
        errors_of(&b)
    );
}

#[test]
fn min_workers_above_max_is_rejected() {
    let b = backend(|v| {
        v["spec"]["scaling"]["minWorkers"] = 5.into();
        v["spec"]["scaling"]["maxWorkers"] = 2.into();
    });
    assert!(
        errors_of(&b).contains("scaling.minWorkers must not exceed scaling.maxWorkers"),
        "{}",
        errors_of(&b)
    );
}

#[test]
fn zero_latency_target_is_rejected() {
    let b = backend(|v| v["spec"]["pipeline"]["latencyTarget"] = "0s".into());
    assert!(
        errors_of(&b).contains("latencyTarget must be a positive duration"),
        "{}",
        errors_of(&b)
    );
}

#[test]
fn backend_ref_is_immutable() {
    let old: VoiceSession = example("30-session.yaml");
    let mut new = old.clone();
    new.spec.backend_ref.name = "other".into();
    let err = format!(
        "{:?}",
        kube::core::cel::validate_cel_update(&new, &old).unwrap_err()
    );
    assert!(err.contains("backendRef is immutable"), "{err}");
}

fn session_with(participants: serde_json::Value) -> VoiceSession {
    let mut v = serde_json::to_value(example::<VoiceSession>("30-session.yaml")).unwrap();
    v["spec"]["participants"] = participants;
    serde_json::from_value(v).unwrap()
}

fn create_errors(s: &VoiceSession) -> String {
    match validate_cel(s) {
        Ok(()) => String::new(),
        Err(e) => format!("{e:?}"),
    }
}

fn update_errors(new: &VoiceSession, old: &VoiceSession) -> String {
    match kube::core::cel::validate_cel_update(new, old) {
        Ok(()) => String::new(),
        Err(e) => format!("{e:?}"),
    }
}

#[test]
fn participants_with_distinct_user_ids_pass() {
    let s = session_with(serde_json::json!([{"userID": "u-2"}, {"userID": "u-3"}]));
    assert_eq!(create_errors(&s), "");
}

#[test]
fn a_participant_listed_twice_is_rejected() {
    let s = session_with(serde_json::json!([{"userID": "u-2"}, {"userID": "u-2"}]));
    let err = create_errors(&s);
    assert!(
        err.contains("participants[].userID must be unique"),
        "{err}"
    );
}

#[test]
fn a_participant_who_is_the_sessions_user_is_rejected() {
    // 30-session.yaml's user is user-42.
    let s = session_with(serde_json::json!([{"userID": "u-2"}, {"userID": "user-42"}]));
    let err = create_errors(&s);
    assert!(
        err.contains("participants[].userID must differ from user.userID"),
        "{err}"
    );
}

#[test]
fn participants_cannot_be_added_removed_or_changed_after_creation() {
    let none: VoiceSession = example("30-session.yaml");
    let two = session_with(serde_json::json!([{"userID": "u-2"}, {"userID": "u-3"}]));
    let swapped = session_with(serde_json::json!([{"userID": "u-2"}, {"userID": "u-4"}]));
    let relabelled = session_with(
        serde_json::json!([{"userID": "u-2", "metadata": {"seat": "1"}}, {"userID": "u-3"}]),
    );
    for (new, old, what) in [
        (&two, &none, "adding participants"),
        (&none, &two, "removing participants"),
        (&swapped, &two, "replacing a participant"),
        (&relabelled, &two, "editing a participant's metadata"),
    ] {
        let err = update_errors(new, old);
        assert!(err.contains("participants is immutable"), "{what}: {err:?}");
    }
    let mut longer = two.clone();
    longer.spec.max_duration = Some("45m".parse().unwrap());
    assert_eq!(
        update_errors(&longer, &two),
        "",
        "other fields of a multi-user session still update"
    );
    assert_eq!(
        update_errors(&none, &none),
        "",
        "a session without participants updates"
    );
}

#[test]
fn the_user_cannot_change_after_creation() {
    let old: VoiceSession = example("30-session.yaml");
    let mut renamed = old.clone();
    renamed.spec.user.user_id = "someone-else".into();
    let mut relabelled = old.clone();
    relabelled
        .spec
        .user
        .metadata
        .insert("tier".into(), "gold".into());
    for (new, what) in [(&renamed, "userID"), (&relabelled, "metadata")] {
        let err = update_errors(new, &old);
        assert!(err.contains("user is immutable"), "{what}: {err:?}");
    }
}
