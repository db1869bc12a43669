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
