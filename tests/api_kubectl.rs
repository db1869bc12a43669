//! What a user meets first: `kubectl apply -f examples/`, `kubectl get voice`,
//! `kubectl explain` and `kubectl scale`, with the real kubectl against the real API server.

use voice_tests::{TestNamespace, install_crds, kubectl_ok};

fn examples_dir() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .display()
        .to_string()
}

#[tokio::test]
async fn examples_apply_and_show_up_in_kubectl_get_voice() {
    install_crds();
    let ns = TestNamespace::new("examples").await;
    let applied = kubectl_ok(&[
        "apply",
        "--server-side",
        "-n",
        ns.name(),
        "-f",
        &examples_dir(),
    ]);
    for object in [
        "voiceprovider.voicebackends.dev/voice-operator",
        "voicebackend.voicebackends.dev/assistant",
        "voicebackend.voicebackends.dev/echo",
        "voicesession.voicebackends.dev/call-42",
    ] {
        assert!(
            applied.contains(object),
            "apply output lacks {object}:\n{applied}"
        );
    }

    // The category lists every kind, with the printer columns a user scans for.
    let listed = kubectl_ok(&["get", "voice", "-n", ns.name()]);
    for column in [
        "PROVIDER",
        "TYPE",
        "READY",
        "DESIRED",
        "SESSIONS",
        "MAX",
        "HEALTH",
        "CONNECTION",
        "S2S",
        "MAX-SESSIONS",
        "IN-USE",
        "BACKEND",
        "PHASE",
        "PIPELINE",
        "WORKER",
    ] {
        assert!(
            listed.contains(column),
            "kubectl get voice lacks column {column}:\n{listed}"
        );
    }
    assert!(
        listed.contains("assistant") && listed.contains("STT_TTS") && listed.contains("S2S"),
        "{listed}"
    );
    assert!(listed.contains("call-42"), "{listed}");

    // Short names work.
    for short in ["vp", "vb", "vs"] {
        kubectl_ok(&["get", short, "-n", ns.name()]);
    }

    // Defaults are filled in by the API server, so `get -o yaml` shows the effective spec.
    let spw = kubectl_ok(&[
        "get",
        "vb",
        "echo",
        "-n",
        ns.name(),
        "-o",
        "jsonpath={.spec.workers.drainTimeout} {.spec.healthCheck.interval} {.spec.audio.codec}",
    ]);
    assert_eq!(spw.trim(), "300s 10s opus");
    let ttl = kubectl_ok(&[
        "get",
        "vs",
        "call-42",
        "-n",
        ns.name(),
        "-o",
        "jsonpath={.spec.ttlSecondsAfterFinished}",
    ]);
    assert_eq!(ttl.trim(), "300");

    // Sessions can be selected by backend on the server (selectable field).
    let by_backend = kubectl_ok(&[
        "get",
        "vs",
        "-n",
        ns.name(),
        "--field-selector",
        "spec.backendRef.name=assistant",
        "-o",
        "name",
    ]);
    assert_eq!(by_backend.trim(), "voicesession.voicebackends.dev/call-42");
    let none = kubectl_ok(&[
        "get",
        "vs",
        "-n",
        ns.name(),
        "--field-selector",
        "spec.backendRef.name=echo",
        "-o",
        "name",
    ]);
    assert_eq!(none.trim(), "");
}

#[tokio::test]
async fn kubectl_scale_sets_replicas_through_the_scale_subresource() {
    install_crds();
    let ns = TestNamespace::new("scale").await;
    kubectl_ok(&[
        "apply",
        "--server-side",
        "-n",
        ns.name(),
        "-f",
        &format!("{}/00-provider-builtin.yaml", examples_dir()),
        "-f",
        &format!("{}/10-backend-stt-tts.yaml", examples_dir()),
    ]);
    let out = kubectl_ok(&[
        "scale",
        "voicebackend/assistant",
        "-n",
        ns.name(),
        "--replicas=3",
    ]);
    assert!(out.contains("scaled"), "{out}");
    let replicas = kubectl_ok(&[
        "get",
        "vb",
        "assistant",
        "-n",
        ns.name(),
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas.trim(), "3");
    // The scale subresource is what HPA and KEDA read and write.
    let scale = kubectl_ok(&[
        "get",
        "--raw",
        &format!(
            "/apis/voicebackends.dev/v1alpha1/namespaces/{}/voicebackends/assistant/scale",
            ns.name()
        ),
    ]);
    let scale: serde_json::Value = serde_json::from_str(&scale).unwrap();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 3);
}

/// `kubectl explain` reads the OpenAPI v3 document, which the API server republishes a few
/// seconds after a CRD is established; wait for it as a user who just installed would.
fn explain(path: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = voice_tests::kubectl(&["explain", path]);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl explain {path} still fails: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[tokio::test]
async fn kubectl_explain_teaches_the_pipeline() {
    install_crds();
    let text = explain("voicebackend.spec.pipeline");
    for needle in [
        "STT_TTS",
        "S2S",
        "processingOrder",
        "latencyTarget",
        "customProcessors",
        "Speech-to-text stage",
    ] {
        assert!(
            text.contains(needle),
            "kubectl explain lacks {needle}:\n{text}"
        );
    }
    let text = kubectl_ok(&[
        "explain",
        "voiceprovider.spec.capabilities.maxConcurrentSessions",
    ]);
    assert!(text.contains("0 means unlimited"), "{text}");
    let text = explain("voicesession.status.pipelineState");
    assert!(text.contains("Pipeline state"), "{text}");
}
