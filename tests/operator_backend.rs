//! The operator against the real API server, as a real process: acceptance, owned objects,
//! the scale subresource, quiet status and deletion. None of these needs a running worker.

mod operator_common;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use operator_common::*;
use serde_json::json;
use voice_crds::{VoiceBackend, VoiceProvider};
use voice_tests::{OperatorProcess, TestNamespace, install_crds, kubectl_ok};

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn rejected_backends_say_why_with_an_event_and_get_no_pods() {
    install_crds();
    let ns = TestNamespace::new("op-reject").await;
    let (provider, manifest) = provider_manifest(&ns, "p", json!({}));
    let _cleanup = ProviderCleanup(vec![provider.clone()]);
    apply(&ns, &[&manifest]);
    let _operator = OperatorProcess::start(ns.name(), "a");

    let missing = backend_manifest(
        "missing",
        &format!("{}-nope", ns.name()),
        json!({"scaling": {"minWorkers": 2}}),
    );
    let bad_config = backend_manifest(
        "bad-config",
        &provider,
        json!({"scaling": {"minWorkers": 2}, "providerConfig": {"jitterBufferMs": 5}}),
    );
    let s2s = backend_manifest(
        "s2s",
        &provider,
        json!({"scaling": {"minWorkers": 1}, "agent": null, "pipeline": {"type": "S2S", "stt": null, "tts": null, "s2s": {"provider": "echo"}}}),
    );
    apply(&ns, &[&missing, &bad_config, &s2s]);

    let (reason, message) = wait_condition(&ns, "missing", "Accepted", "False", T).await;
    assert_eq!(reason, "ProviderNotFound");
    assert!(message.contains("spec.provider"), "{message}");
    let (reason, message) = wait_condition(&ns, "bad-config", "Accepted", "False", T).await;
    assert_eq!(reason, "InvalidProviderConfig");
    assert!(message.contains("/jitterBufferMs"), "{message}");
    let (reason, message) = wait_condition(&ns, "s2s", "Accepted", "False", T).await;
    assert_eq!(reason, "S2SNotSupported");
    assert!(message.contains("s2sSupport"), "{message}");

    for (name, reason) in [
        ("missing", "ProviderNotFound"),
        ("bad-config", "InvalidProviderConfig"),
        ("s2s", "S2SNotSupported"),
    ] {
        wait_event(&ns, name, reason, T).await;
        let b = ns.api::<VoiceBackend>().get(name).await.expect("backend");
        let status = b.status.expect("status");
        assert_eq!(
            status.connection_state,
            voice_crds::ConnectionState::Error,
            "{name}"
        );
        assert!(live_pods(&ns, name).await.is_empty(), "{name} got pods");
    }
}

#[tokio::test]
async fn a_provider_with_an_invalid_config_schema_is_not_accepted() {
    install_crds();
    let ns = TestNamespace::new("op-schema").await;
    let (good, good_manifest) = provider_manifest(&ns, "good", json!({}));
    let (bad, bad_manifest) = provider_manifest(
        &ns,
        "bad",
        json!({"configSchema": {"type": "no-such-type", "additionalProperties": null, "properties": null}}),
    );
    let _cleanup = ProviderCleanup(vec![good.clone(), bad.clone()]);
    apply(&ns, &[&good_manifest, &bad_manifest]);
    let _operator = OperatorProcess::start(ns.name(), "a");
    let api = kube::Api::<VoiceProvider>::all(ns.client());
    let (reason, message) = wait_for(T, "bad provider Accepted=False", || async {
        let p = api.get(&bad).await.map_err(|e| e.to_string())?;
        match provider_condition(&p, "Accepted") {
            Some((s, r, m)) if s == "False" => Ok((r, m)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(reason, "InvalidConfigSchema");
    assert!(message.contains("spec.configSchema"), "{message}");
    let p = api.get(&good).await.expect("good provider");
    // The good one is accepted and counts its backends.
    let accepted = wait_for(T, "good provider Accepted=True", || async {
        let p = api.get(&good).await.map_err(|e| e.to_string())?;
        match provider_condition(&p, "Accepted") {
            Some((s, r, _)) if s == "True" => Ok(r),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(accepted, "Valid", "{p:?}");
    apply(&ns, &[&backend_manifest("uses-good", &good, json!({}))]);
    wait_for(T, "status.backends = 1", || async {
        let p = api.get(&good).await.map_err(|e| e.to_string())?;
        let n = p.status.map(|s| s.backends).unwrap_or_default();
        if n == 1 {
            Ok(())
        } else {
            Err(format!("backends = {n}"))
        }
    })
    .await;
    // A backend on the rejected provider is rejected too, naming the provider's problem.
    apply(&ns, &[&backend_manifest("uses-bad", &bad, json!({}))]);
    let (reason, _) = wait_condition(&ns, "uses-bad", "Accepted", "False", T).await;
    assert_eq!(reason, "ProviderNotAccepted");
}

#[tokio::test]
async fn a_valid_backend_gets_its_pods_service_and_secret_and_follows_kubectl_scale() {
    install_crds();
    let ns = TestNamespace::new("op-pods").await;
    let (provider, manifest) = provider_manifest(&ns, "p", json!({}));
    let _cleanup = ProviderCleanup(vec![provider.clone()]);
    apply(&ns, &[&manifest]);
    let _operator = OperatorProcess::start(ns.name(), "a");
    apply(
        &ns,
        &[&backend_manifest(
            "assistant",
            &provider,
            json!({"scaling": {"minWorkers": 2}, "healthCheck": {"interval": "2s"}}),
        )],
    );

    let (reason, _) = wait_condition(&ns, "assistant", "Accepted", "True", T).await;
    assert_eq!(reason, "Valid");
    let pods = wait_for(T, "2 worker pods", || async {
        let pods = live_pods(&ns, "assistant").await;
        if pods.len() == 2 {
            Ok(pods)
        } else {
            Err(format!("{} pods", pods.len()))
        }
    })
    .await;
    let backend = ns
        .api::<VoiceBackend>()
        .get("assistant")
        .await
        .expect("backend");
    let uid = backend.metadata.uid.clone().expect("uid");
    for pod in &pods {
        let owner = &pod.metadata.owner_references.as_ref().expect("owner refs")[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            (uid.as_str(), Some(true))
        );
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get("app.kubernetes.io/name").map(String::as_str),
            Some("voice-worker")
        );
        assert!(labels.contains_key("voicebackends.dev/template-hash"));
        let spec = pod.spec.as_ref().expect("pod spec");
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.termination_grace_period_seconds, Some(60));
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("voice-operator/worker:0.1.0"));
        let env: BTreeMap<_, _> = c
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect();
        for (k, v) in [
            ("GRPC_PORT", "50051"),
            ("HTTP_PORT", "8080"),
            ("SESSIONS_PER_WORKER", "2"),
            ("DRAIN_TIMEOUT_SECONDS", "30"),
            ("BACKEND_NAME", "assistant"),
        ] {
            assert_eq!(env[k].value.as_deref(), Some(v), "{k}");
        }
        let pod_ip = env["POD_IP"]
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .expect("POD_IP fieldRef");
        assert_eq!(pod_ip.field_path, "status.podIP");
        let key = env["SESSION_SIGNING_KEY"]
            .value_from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
            .expect("secretKeyRef");
        assert_eq!(key.name, "assistant-session-signing-key");
        let pipeline: serde_json::Value = serde_json::from_str(
            env["VOICE_PIPELINE"]
                .value
                .as_deref()
                .expect("VOICE_PIPELINE"),
        )
        .expect("JSON");
        assert_eq!(pipeline["pipeline"]["type"], "STT_TTS");
        let probe = c
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("readiness probe");
        assert_eq!(probe.path.as_deref(), Some("/readyz"));
        let sc = c.security_context.as_ref().expect("securityContext");
        assert_eq!(
            (sc.read_only_root_filesystem, sc.allow_privilege_escalation),
            (Some(true), Some(false))
        );
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_owned()])
        );
        let psc = spec.security_context.as_ref().expect("pod securityContext");
        assert_eq!(
            (psc.run_as_non_root, psc.run_as_user),
            (Some(true), Some(65532))
        );
    }

    let service = ns
        .api::<Service>()
        .get("assistant-workers")
        .await
        .expect("service");
    let spec = service.spec.expect("service spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    let ports: Vec<_> = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name.unwrap_or_default(), p.port))
        .collect();
    assert_eq!(
        ports,
        vec![
            ("grpc".to_owned(), 50051),
            ("http".to_owned(), 8080),
            ("webrtc-tcp".to_owned(), 50000)
        ]
    );
    assert_eq!(
        spec.selector
            .unwrap_or_default()
            .get("voicebackends.dev/backend")
            .map(String::as_str),
        Some("assistant")
    );
    let secret = ns
        .api::<Secret>()
        .get("assistant-session-signing-key")
        .await
        .expect("secret");
    let key = secret.data.expect("data")["signing-key"].0.clone();
    assert_eq!(key.len(), 64);
    assert!(key.iter().all(u8::is_ascii_hexdigit));
    for owned in [
        service.metadata.owner_references,
        secret.metadata.owner_references,
    ] {
        assert_eq!(owned.expect("owner refs")[0].uid, uid);
    }

    kubectl_ok(&[
        "scale",
        "voicebackend/assistant",
        "-n",
        ns.name(),
        "--replicas=4",
    ]);
    wait_for(T, "4 worker pods after kubectl scale", || async {
        let n = live_pods(&ns, "assistant").await.len();
        if n == 4 {
            Ok(())
        } else {
            Err(format!("{n} pods"))
        }
    })
    .await;
    let status = wait_for(T, "status.workers.desired = 4", || async {
        let b = ns
            .api::<VoiceBackend>()
            .get("assistant")
            .await
            .map_err(|e| e.to_string())?;
        let s = b.status.unwrap_or_default();
        if s.workers.desired == 4 && s.replicas == 4 {
            Ok(s)
        } else {
            Err(format!("{:?} replicas {}", s.workers, s.replicas))
        }
    })
    .await;
    assert!(
        status
            .selector
            .unwrap_or_default()
            .contains("voicebackends.dev/backend=assistant")
    );
    // The key is created once, never rotated by later reconciles.
    let again = ns
        .api::<Secret>()
        .get("assistant-session-signing-key")
        .await
        .expect("secret");
    assert_eq!(again.data.expect("data")["signing-key"].0, key);
}

#[tokio::test]
async fn status_is_not_rewritten_when_nothing_changes() {
    install_crds();
    let ns = TestNamespace::new("op-quiet").await;
    let (provider, manifest) = provider_manifest(&ns, "p", json!({}));
    let _cleanup = ProviderCleanup(vec![provider.clone()]);
    apply(&ns, &[&manifest]);
    let _operator = OperatorProcess::start(ns.name(), "a");
    // No pods wanted, health interval 1 s: the periodic reconcile runs every second.
    apply(
        &ns,
        &[&backend_manifest(
            "idle",
            &provider,
            json!({"scaling": {"minWorkers": 0}, "healthCheck": {"interval": "1s"}}),
        )],
    );
    wait_condition(&ns, "idle", "Accepted", "True", T).await;
    let api = ns.api::<VoiceBackend>();
    // Let the first writes settle (status, finalizer).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = api
        .get("idle")
        .await
        .expect("backend")
        .metadata
        .resource_version;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = api.get("idle").await.expect("backend");
    assert_eq!(
        before, after.metadata.resource_version,
        "status was rewritten: {:?}",
        after.status
    );
    let status = after.status.expect("status");
    assert_eq!(
        status.connection_state,
        voice_crds::ConnectionState::Disconnected
    );
    assert_eq!(status.observed_generation, after.metadata.generation);
}

#[tokio::test]
async fn deleting_a_backend_removes_its_pods() {
    install_crds();
    let ns = TestNamespace::new("op-delete").await;
    let (provider, manifest) = provider_manifest(&ns, "p", json!({}));
    let _cleanup = ProviderCleanup(vec![provider.clone()]);
    apply(&ns, &[&manifest]);
    let _operator = OperatorProcess::start(ns.name(), "a");
    apply(
        &ns,
        &[&backend_manifest(
            "doomed",
            &provider,
            json!({"scaling": {"minWorkers": 2}}),
        )],
    );
    wait_for(T, "2 pods", || async {
        let n = live_pods(&ns, "doomed").await.len();
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n} pods"))
        }
    })
    .await;
    let b = ns
        .api::<VoiceBackend>()
        .get("doomed")
        .await
        .expect("backend");
    assert!(
        b.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"voicebackends.dev/cleanup".to_owned())
    );
    kubectl_ok(&[
        "delete",
        "voicebackend",
        "doomed",
        "-n",
        ns.name(),
        "--wait=false",
    ]);
    wait_for(T, "backend and pods gone", || async {
        let n = live_pods(&ns, "doomed").await.len();
        let gone = ns
            .api::<VoiceBackend>()
            .get_opt("doomed")
            .await
            .map_err(|e| e.to_string())?
            .is_none();
        if n == 0 && gone {
            Ok(())
        } else {
            Err(format!("{n} pods, backend gone: {gone}"))
        }
    })
    .await;
}

#[tokio::test]
async fn a_backend_is_accepted_once_its_missing_provider_appears() {
    install_crds();
    let ns = TestNamespace::new("op-late").await;
    let _operator = OperatorProcess::start(ns.name(), "a");
    let (provider, manifest) = provider_manifest(&ns, "late", json!({}));
    let _cleanup = ProviderCleanup(vec![provider.clone()]);
    apply(
        &ns,
        &[&backend_manifest(
            "early",
            &provider,
            json!({"scaling": {"minWorkers": 1}}),
        )],
    );
    let (reason, _) = wait_condition(&ns, "early", "Accepted", "False", T).await;
    assert_eq!(reason, "ProviderNotFound");
    // The provider watch wakes the backend: no edit of the backend is needed.
    apply(&ns, &[&manifest]);
    let (reason, _) = wait_condition(&ns, "early", "Accepted", "True", T).await;
    assert_eq!(reason, "Valid");
    wait_for(T, "a worker pod", || async {
        let n = live_pods(&ns, "early").await.len();
        if n == 1 {
            Ok(())
        } else {
            Err(format!("{n} pods"))
        }
    })
    .await;
}

#[tokio::test]
async fn a_backend_gets_a_control_tls_secret_and_a_network_policy_closing_its_control_port() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    install_crds();
    let ns = TestNamespace::new("op-ctl-tls").await;
    let (provider, manifest) = provider_manifest(&ns, "p", json!({}));
    let _cleanup = ProviderCleanup(vec![provider.clone()]);
    apply(&ns, &[&manifest]);
    let _operator = OperatorProcess::start(ns.name(), "a");
    apply(
        &ns,
        &[&backend_manifest(
            "assistant",
            &provider,
            json!({"scaling": {"minWorkers": 1}}),
        )],
    );

    // The CA lives in the operator's namespace (its Lease namespace here); the backend's
    // Secret carries that CA as the trust bundle and a serving certificate.
    let secrets = ns.api::<Secret>();
    let tls = wait_for(T, "Secret assistant-control-tls", || async {
        secrets
            .get("assistant-control-tls")
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let ca = secrets
        .get("voice-operator-control-ca")
        .await
        .expect("the operator's CA Secret");
    let text = |s: &Secret, k: &str| {
        String::from_utf8(s.data.as_ref().expect("data")[k].0.clone()).expect("PEM")
    };
    assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(text(&tls, "ca.crt").trim(), text(&ca, "ca.crt").trim());
    assert!(text(&tls, "tls.crt").starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(text(&tls, "tls.key").contains("PRIVATE KEY"));
    assert!(
        !text(&tls, "ca.crt").contains("PRIVATE KEY"),
        "the CA key never leaves the operator's namespace"
    );
    let owner = &tls.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(owner.kind, "VoiceBackend");

    // Worker pods mount it where CONTROL_TLS_DIR points.
    let pod = wait_for(T, "a worker pod", || async {
        live_pods(&ns, "assistant")
            .await
            .into_iter()
            .next()
            .ok_or_else(|| "no pod".to_owned())
    })
    .await;
    let spec = pod.spec.expect("pod spec");
    let volume = spec
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == "control-tls")
        .expect("control-tls volume");
    assert_eq!(
        volume.secret.and_then(|s| s.secret_name).as_deref(),
        Some("assistant-control-tls")
    );

    // The NetworkPolicy admits TCP 50051 only from operator pods in the operator's namespace
    // and leaves every other port open.
    let policy = wait_for(T, "NetworkPolicy assistant-workers", || async {
        ns.api::<NetworkPolicy>()
            .get("assistant-workers")
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let spec = serde_json::to_value(policy.spec.expect("spec")).expect("JSON");
    assert_eq!(
        spec["podSelector"]["matchLabels"]["voicebackends.dev/backend"],
        "assistant"
    );
    assert_eq!(spec["policyTypes"], json!(["Ingress"]));
    let control = &spec["ingress"][0];
    assert_eq!(
        control["ports"],
        json!([{"port": 50051, "protocol": "TCP"}])
    );
    assert_eq!(
        control["from"],
        json!([{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name()}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "voice-operator"}}
        }])
    );
    let open = &spec["ingress"][1];
    assert!(
        open.get("from").is_none(),
        "media and signaling are open: {open}"
    );
    let ranges = open["ports"].as_array().expect("ports");
    for range in ranges {
        let (from, to) = (
            range["port"].as_i64().unwrap_or(0),
            range["endPort"].as_i64().unwrap_or(0),
        );
        if range["protocol"] == "TCP" {
            assert!(
                !(from..=to).contains(&50051),
                "50051 is open to all: {range}"
            );
        }
    }
    assert!(
        ranges.iter().any(|r| r["protocol"] == "UDP"),
        "the WebRTC UDP port stays open"
    );

    // A deleted Secret comes back from the same CA.
    secrets
        .delete("assistant-control-tls", &Default::default())
        .await
        .expect("delete");
    let again = wait_for(T, "the Secret re-created", || async {
        match secrets.get("assistant-control-tls").await {
            Ok(s) if s.metadata.uid != tls.metadata.uid => Ok(s),
            Ok(_) => Err("not yet deleted".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    assert_eq!(text(&again, "ca.crt").trim(), text(&ca, "ca.crt").trim());
}
