use serde_json::json;
use voice_crds::{VoiceBackend, VoiceProvider};

use super::*;

fn provider() -> VoiceProvider {
    serde_json::from_value(json!({
        "apiVersion": "voicebackends.dev/v1alpha1",
        "kind": "VoiceProvider",
        "metadata": {"name": "builtin"},
        "spec": {
            "capabilities": {"supportedCodecs": ["opus"]},
            "worker": {"image": "worker:1", "command": ["/voice-worker"], "args": ["--log-json"]}
        }
    }))
    .expect("provider")
}

fn backend(image: Option<&str>) -> VoiceBackend {
    let mut b = json!({
        "apiVersion": "voicebackends.dev/v1alpha1",
        "kind": "VoiceBackend",
        "metadata": {"name": "assistant", "namespace": "ns"},
        "spec": {
            "provider": "builtin",
            "pipeline": {
                "type": "STT_TTS",
                "stt": {"provider": "openai", "credentialsSecretRef": {"name": "openai", "key": "api-key"}},
                "tts": {"provider": "espeak"}
            },
            "agent": {"type": "Echo"},
            "workers": {"sessionsPerWorker": 4, "drainTimeout": "60s"}
        }
    });
    if let Some(image) = image {
        b["spec"]["workers"]["image"] = json!(image);
    }
    serde_json::from_value(b).expect("backend")
}

fn env(t: &WorkerTemplate) -> BTreeMap<String, (Option<String>, Option<EnvVarSource>)> {
    t.spec.containers[0]
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, (e.value, e.value_from)))
        .collect()
}

#[test]
fn hash_is_stable_for_the_same_input() {
    let a = render(&backend(None), &provider()).expect("render");
    let b = render(&backend(None), &provider()).expect("render");
    assert_eq!(a.hash, b.hash);
    assert_eq!(a.hash.len(), 10);
}

#[test]
fn hash_changes_when_the_image_changes() {
    let a = render(&backend(None), &provider()).expect("render");
    let b = render(&backend(Some("worker:2")), &provider()).expect("render");
    assert_ne!(a.hash, b.hash);
    assert_eq!(b.spec.containers[0].image.as_deref(), Some("worker:2"));
    assert_eq!(a.spec.containers[0].image.as_deref(), Some("worker:1"));
}

#[test]
fn env_carries_ports_capacity_drain_pipeline_and_the_key_by_reference() {
    let t = render(&backend(None), &provider()).expect("render");
    let env = env(&t);
    assert_eq!(env["GRPC_PORT"].0.as_deref(), Some("50051"));
    assert_eq!(env["HTTP_PORT"].0.as_deref(), Some("8080"));
    assert_eq!(env["SESSIONS_PER_WORKER"].0.as_deref(), Some("4"));
    assert_eq!(env["DRAIN_TIMEOUT_SECONDS"].0.as_deref(), Some("60"));
    assert_eq!(env["BACKEND_NAME"].0.as_deref(), Some("assistant"));
    let pod_ip = env["POD_IP"].1.as_ref().and_then(|s| s.field_ref.as_ref());
    assert_eq!(pod_ip.map(|f| f.field_path.as_str()), Some("status.podIP"));
    let key = env["SESSION_SIGNING_KEY"]
        .1
        .as_ref()
        .and_then(|s| s.secret_key_ref.as_ref())
        .expect("secretKeyRef");
    assert_eq!(key.name, "assistant-session-signing-key");
    // The key set comes as a file from the mounted Secret, so a rotation reaches the worker.
    assert_eq!(
        env["SESSION_SIGNING_KEYS_FILE"].0.as_deref(),
        Some("/var/run/voice-operator/signing-keys/keys.json")
    );
    let mount = t.spec.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/var/run/voice-operator/signing-keys")
        .expect("the signing keys are mounted");
    assert_eq!(mount.read_only, Some(true));
    let volume = t
        .spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .and_then(|v| v.secret.as_ref())
        .expect("a Secret volume");
    assert_eq!(
        volume.secret_name.as_deref(),
        Some("assistant-session-signing-key")
    );
    let pipeline: serde_json::Value =
        serde_json::from_str(env["VOICE_PIPELINE"].0.as_deref().expect("pipeline")).expect("json");
    assert_eq!(pipeline["pipeline"]["type"], "STT_TTS");
    assert_eq!(pipeline["agent"]["type"], "Echo");
    assert_eq!(pipeline["audio"]["codec"], "opus");
    // Only the Secret's name travels, never a value.
    assert_eq!(
        pipeline["pipeline"]["stt"]["credentialsSecretRef"],
        json!({"name": "openai", "key": "api-key"})
    );
}

#[test]
fn pods_never_restart_in_place_and_get_time_to_drain() {
    let t = render(&backend(None), &provider()).expect("render");
    assert_eq!(t.spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(t.spec.termination_grace_period_seconds, Some(90));
    let c = &t.spec.containers[0];
    assert_eq!(c.command, Some(vec!["/voice-worker".to_owned()]));
    let probe = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("probe");
    assert_eq!(probe.path.as_deref(), Some("/readyz"));
    assert_eq!(probe.port, IntOrString::Int(8080));
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let psc = t
        .spec
        .security_context
        .as_ref()
        .expect("pod securityContext");
    assert_eq!(psc.run_as_user, Some(65532));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
}

#[test]
fn pod_names_use_the_kubernetes_suffix_alphabet() {
    let name = pod_name("assistant", [0, 1, 26, 27, 255]);
    assert_eq!(name.len(), "assistant-".len() + 5);
    assert!(
        name["assistant-".len()..]
            .bytes()
            .all(|b| SUFFIX_ALPHABET.contains(&b))
    );
    assert_ne!(pod_name("a", [0; 5]), pod_name("a", [1; 5]));
}

#[test]
fn selector_string_lists_the_backend_labels() {
    let s = selector_string("assistant");
    assert!(s.contains("voicebackends.dev/backend=assistant"), "{s}");
    assert!(s.contains("app.kubernetes.io/name=voice-worker"), "{s}");
}

#[test]
fn every_referenced_secret_key_reaches_the_worker_by_reference_only() {
    let mut b = backend(None);
    b.spec.agent = serde_json::from_value(json!({
        "type": "Callback",
        "callback": {"url": "https://agent.example.com/turn", "authSecretRef": {"name": "hook", "key": "token"}}
    }))
    .expect("agent");
    let t = render(&b, &provider()).expect("render");
    let env = env(&t);
    for (var, name, key) in [
        ("VOICE_SECRET_OPENAI_API_KEY", "openai", "api-key"),
        ("VOICE_SECRET_HOOK_TOKEN", "hook", "token"),
    ] {
        let (value, from) = &env[var];
        assert!(value.is_none(), "{var} carries no literal value");
        let selector = from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
            .expect(var);
        assert_eq!((selector.name.as_str(), selector.key.as_str()), (name, key));
    }
    assert_eq!(secret_refs(&b.spec).len(), 2);
}

#[test]
fn the_control_tls_secret_is_mounted_read_only_where_control_tls_dir_points() {
    let t = render(&backend(None), &provider()).expect("render");
    assert_eq!(
        env(&t)["CONTROL_TLS_DIR"].0.as_deref(),
        Some("/var/run/voice/control-tls")
    );
    let volume = t
        .spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "control-tls")
        .expect("control-tls volume");
    let secret = volume.secret.as_ref().expect("a Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("assistant-control-tls"));
    let mount = t.spec.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "control-tls")
        .expect("control-tls mount");
    assert_eq!(mount.mount_path, CONTROL_TLS_DIR);
    assert_eq!(mount.read_only, Some(true));
}
