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
fn client_auth_reaches_the_worker_as_settings_and_its_keys_by_reference() {
    let mut b = backend(None);
    b.spec.client_auth = Some(
        serde_json::from_value(json!({"jwt": {
            "issuer": "https://id.example", "audience": "voice", "algorithm": "ES256",
            "keysSecretRef": {"name": "idp", "key": "jwks.json"}
        }}))
        .expect("clientAuth"),
    );
    let env = env(&render(&b, &provider()).expect("render"));
    let settings: serde_json::Value = serde_json::from_str(
        env["VOICE_CLIENT_AUTH"]
            .0
            .as_deref()
            .expect("VOICE_CLIENT_AUTH"),
    )
    .expect("JSON");
    assert_eq!(settings["jwt"]["issuer"], "https://id.example");
    assert_eq!(settings["jwt"]["userClaim"], "sub");
    let keys = env["VOICE_SECRET_IDP_JWKS_JSON"]
        .1
        .as_ref()
        .and_then(|f| f.secret_key_ref.as_ref())
        .expect("the keys by reference");
    assert_eq!(
        (keys.name.as_str(), keys.key.as_str()),
        ("idp", "jwks.json")
    );
    let plain = env_of_plain_backend();
    assert!(!plain.contains_key("VOICE_CLIENT_AUTH"));
}

fn env_of_plain_backend() -> BTreeMap<String, (Option<String>, Option<EnvVarSource>)> {
    env(&render(&backend(None), &provider()).expect("render"))
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

fn backend_with_network(network: serde_json::Value) -> VoiceBackend {
    let mut b = serde_json::to_value(backend(None)).expect("json");
    b["spec"]["workers"]["network"] = network;
    serde_json::from_value(b).expect("backend")
}

fn ports(t: &WorkerTemplate) -> Vec<(String, i32, Option<i32>, String)> {
    t.spec.containers[0]
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            (
                p.name.unwrap_or_default(),
                p.container_port,
                p.host_port,
                p.protocol.unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn every_network_field_reaches_the_worker_environment() {
    let t = render(
        &backend_with_network(json!({
            "advertise": "Explicit",
            "address": "203.0.113.7",
            "udpPort": 40000,
            "iceServers": [
                {"urls": ["stun:stun.example.com:3478"]},
                {"urls": ["turn:turn.example.com:3478"], "authSecretRef": {"name": "turn", "key": "shared"}},
                {"urls": ["turns:turn.example.com:5349"],
                 "usernameSecretRef": {"name": "turn-static", "key": "user"},
                 "credentialSecretRef": {"name": "turn-static", "key": "pass"}}
            ],
            "allowedOrigins": ["https://app.example.com", "http://localhost:3000"],
            "allowPrivateCandidates": true
        })),
        &provider(),
    )
    .expect("render");
    let env = env(&t);
    assert_eq!(env["UDP_PORT"].0.as_deref(), Some("40000"));
    assert_eq!(env["ADVERTISE_IP"].0.as_deref(), Some("203.0.113.7"));
    assert_eq!(
        env["ALLOWED_ORIGINS"].0.as_deref(),
        Some("https://app.example.com,http://localhost:3000")
    );
    assert_eq!(env["ALLOW_PRIVATE_CANDIDATES"].0.as_deref(), Some("true"));
    let ice: serde_json::Value =
        serde_json::from_str(env["ICE_SERVERS"].0.as_deref().expect("ICE_SERVERS")).expect("json");
    assert_eq!(ice[1]["authSecretRef"]["name"], "turn");
    assert_eq!(ice[2]["usernameSecretRef"]["key"], "user");
    // The TURN secrets come from their Secrets, by reference, under the worker's naming rule.
    for (var, secret, key) in [
        ("VOICE_SECRET_TURN_SHARED", "turn", "shared"),
        ("VOICE_SECRET_TURN_STATIC_USER", "turn-static", "user"),
        ("VOICE_SECRET_TURN_STATIC_PASS", "turn-static", "pass"),
    ] {
        let (value, from) = &env[var];
        assert!(value.is_none(), "{var} must not carry a value");
        let r = from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
            .expect(var);
        assert_eq!((r.name.as_str(), r.key.as_str()), (secret, key));
    }
    // The UDP port is a container port; no host ports off the host network.
    assert!(ports(&t).contains(&("webrtc".to_owned(), 40000, None, "UDP".to_owned())));
    assert!(t.spec.affinity.is_none());
    assert!(t.spec.host_network.is_none());
}

#[test]
fn defaults_advertise_the_pod_ip_on_udp_50000_with_private_candidates_refused() {
    let env = env(&render(&backend(None), &provider()).expect("render"));
    assert_eq!(env["UDP_PORT"].0.as_deref(), Some("50000"));
    assert!(!env.contains_key("ADVERTISE_IP"));
    assert!(!env.contains_key("ICE_SERVERS"));
    assert!(!env.contains_key("ALLOWED_ORIGINS"));
    assert_eq!(env["ALLOW_PRIVATE_CANDIDATES"].0.as_deref(), Some("false"));
}

#[test]
fn node_ip_workers_hold_host_ports_and_never_share_a_node() {
    let t = render(
        &backend_with_network(json!({"advertise": "NodeIP", "udpPort": 41000})),
        &provider(),
    )
    .expect("render");
    assert_eq!(t.spec.host_network, Some(true));
    let advertise = env(&t)["ADVERTISE_IP"]
        .1
        .as_ref()
        .and_then(|s| s.field_ref.as_ref())
        .map(|f| f.field_path.clone());
    assert_eq!(advertise.as_deref(), Some("status.hostIP"));
    assert_eq!(
        ports(&t),
        vec![
            (
                "grpc".to_owned(),
                GRPC_PORT,
                Some(GRPC_PORT),
                "TCP".to_owned()
            ),
            (
                "http".to_owned(),
                HTTP_PORT,
                Some(HTTP_PORT),
                "TCP".to_owned()
            ),
            ("webrtc".to_owned(), 41000, Some(41000), "UDP".to_owned()),
            (
                "webrtc-tcp".to_owned(),
                41000,
                Some(41000),
                "TCP".to_owned()
            ),
        ]
    );
    let terms = t
        .spec
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .clone()
        })
        .expect("required anti-affinity");
    assert_eq!(terms.len(), 1);
    assert_eq!(terms[0].topology_key, "kubernetes.io/hostname");
    // The term selects exactly the labels every worker pod of this backend carries.
    let pod = pod(
        "assistant",
        "ns",
        "assistant-bcdfg".into(),
        &t,
        OwnerReference::default(),
    );
    let labels = pod.metadata.labels.unwrap_or_default();
    let wanted = terms[0]
        .label_selector
        .as_ref()
        .and_then(|s| s.match_labels.clone())
        .expect("match labels");
    assert!(!wanted.is_empty());
    assert!(
        wanted.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "{wanted:?} vs {labels:?}"
    );
    // Another backend's workers are not selected: they are kept apart by host ports only.
    assert_eq!(
        wanted.get(LABEL_BACKEND).map(String::as_str),
        Some("assistant")
    );
}

#[test]
fn a_tls_secret_is_mounted_where_the_worker_reads_its_certificate_and_probes_speak_https() {
    let plain = render(&backend(None), &provider()).expect("render");
    assert!(!env(&plain).contains_key("TLS_CERT_FILE"));
    assert!(!env(&plain).contains_key("TLS_KEY_FILE"));
    assert!(
        !plain
            .spec
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name == "signaling-tls")
    );
    let probe = |t: &WorkerTemplate| {
        t.spec.containers[0]
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|g| g.scheme.clone())
    };
    assert_eq!(probe(&plain), None, "plain HTTP stays the default");

    let t = render(
        &backend_with_network(json!({"tls": {"secretName": "assistant-cert"}})),
        &provider(),
    )
    .expect("render");
    assert_ne!(t.hash, plain.hash, "turning TLS on rolls the workers");
    let env = env(&t);
    assert_eq!(
        env["TLS_CERT_FILE"].0.as_deref(),
        Some("/var/run/voice/signaling-tls/tls.crt")
    );
    assert_eq!(
        env["TLS_KEY_FILE"].0.as_deref(),
        Some("/var/run/voice/signaling-tls/tls.key")
    );
    let volume = t
        .spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "signaling-tls")
        .expect("signaling-tls volume");
    let secret = volume.secret.as_ref().expect("a Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("assistant-cert"));
    assert_eq!(secret.optional, Some(false), "a missing Secret must show");
    let mount = t.spec.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "signaling-tls")
        .expect("signaling-tls mount");
    assert_eq!(mount.mount_path, crate::pod_network::SIGNALING_TLS_DIR);
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(probe(&t).as_deref(), Some("HTTPS"));
}

#[test]
fn provider_config_reaches_the_worker_and_changes_the_template_hash() {
    let plain = render(&backend(None), &provider()).expect("render");
    assert_eq!(
        env(&plain)["VOICE_PROVIDER_CONFIG"].0.as_deref(),
        Some("{}")
    );
    let mut tuned = backend(None);
    tuned.spec.provider_config = Some(json!({"logLevel": "debug", "jitterBufferMs": 120}));
    let tuned = render(&tuned, &provider()).expect("render");
    let config: serde_json::Value = serde_json::from_str(
        env(&tuned)["VOICE_PROVIDER_CONFIG"]
            .0
            .as_deref()
            .expect("a value"),
    )
    .expect("json");
    assert_eq!(config, json!({"logLevel": "debug", "jitterBufferMs": 120}));
    // A changed providerConfig is a new template: the workers roll to it.
    assert_ne!(plain.hash, tuned.hash);
}

fn backend_with_bot(bot: serde_json::Value) -> VoiceBackend {
    let mut b = serde_json::to_value(backend(None)).expect("json");
    b["spec"]["workers"]["bot"] = bot;
    serde_json::from_value(b).expect("backend")
}

fn pipecat_bot() -> serde_json::Value {
    json!({
        "image": "registry.example.com/pipecat-bot:1",
        "imagePullPolicy": "IfNotPresent",
        "command": ["python"],
        "args": ["bot.py", "--port", "$(VOICE_BOT_PORT)"],
        "env": [
            {"name": "LOG_LEVEL", "value": "debug"},
            {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "bot-keys", "key": "openai"}}}
        ],
        "port": 9000,
        "resources": {"limits": {"cpu": "1", "memory": "512Mi"}}
    })
}

fn bot_container(t: &WorkerTemplate) -> &Container {
    t.spec
        .containers
        .iter()
        .find(|c| c.name == "bot")
        .expect("a bot container")
}

#[test]
fn a_bot_runs_beside_the_worker_with_its_pod_facts_first_and_a_tcp_readiness_probe() {
    let t = render(&backend_with_bot(pipecat_bot()), &provider()).expect("render");
    let names: Vec<_> = t.spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["worker", "bot"]);
    let bot = bot_container(&t);
    assert_eq!(
        bot.image.as_deref(),
        Some("registry.example.com/pipecat-bot:1")
    );
    assert_eq!(bot.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(bot.command, Some(vec!["python".to_owned()]));
    assert_eq!(
        bot.args.as_deref().map(|a| a.join(" ")).as_deref(),
        Some("bot.py --port $(VOICE_BOT_PORT)")
    );
    let env = bot.env.clone().unwrap_or_default();
    let names: Vec<_> = env.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "VOICE_BOT_HOST",
            "VOICE_BOT_PORT",
            "POD_NAME",
            "POD_NAMESPACE",
            "BACKEND_NAME",
            "LOG_LEVEL",
            "OPENAI_API_KEY"
        ]
    );
    let field = |i: usize| {
        env[i]
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.as_str())
    };
    assert_eq!(field(0), Some("status.podIP"));
    assert_eq!(env[1].value.as_deref(), Some("9000"));
    assert_eq!(field(2), Some("metadata.name"));
    assert_eq!(field(3), Some("metadata.namespace"));
    assert_eq!(env[4].value.as_deref(), Some("assistant"));
    assert_eq!(env[5].value.as_deref(), Some("debug"));
    let ports = bot.ports.clone().unwrap_or_default();
    assert_eq!(ports.len(), 1);
    assert_eq!(
        (
            ports[0].name.as_deref(),
            ports[0].container_port,
            ports[0].host_port,
            ports[0].protocol.as_deref()
        ),
        (Some("bot"), 9000, None, Some("TCP"))
    );
    let probe = bot.readiness_probe.as_ref().expect("a readiness probe");
    assert_eq!(
        probe.tcp_socket.as_ref().map(|s| &s.port),
        Some(&IntOrString::Int(9000))
    );
    assert_eq!(probe.period_seconds, Some(READINESS_PERIOD_SECONDS));
    assert_eq!(
        bot.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .map(|q| q.0.as_str()),
        Some("512Mi")
    );
    // As locked down as the worker, with a writable /tmp of its own.
    assert_eq!(bot.security_context, t.spec.containers[0].security_context);
    let context = bot.security_context.as_ref().expect("security context");
    assert_eq!(context.read_only_root_filesystem, Some(true));
    assert_eq!(context.allow_privilege_escalation, Some(false));
    let mounts: Vec<_> = bot
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert_eq!(mounts, [(bot::TMP_VOLUME, "/tmp")]);
    let volume = t
        .spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == bot::TMP_VOLUME)
        .expect("the bot's scratch volume");
    assert!(volume.empty_dir.is_some());
}

#[test]
fn the_worker_finds_the_bot_on_its_pod_ip() {
    let t = render(&backend_with_bot(pipecat_bot()), &provider()).expect("render");
    let worker = &t.spec.containers[0];
    let vars = worker.env.clone().unwrap_or_default();
    // The kubelet expands $(POD_IP) only from a variable defined before.
    assert_eq!(vars[0].name, "POD_IP");
    let url = vars
        .iter()
        .find(|e| e.name == bot::BOT_URL_ENV)
        .expect("VOICE_BOT_URL");
    assert_eq!(url.value.as_deref(), Some("ws://$(POD_IP):9000/session"));
    // The bot's port is the bot's: the worker declares no such port.
    assert!(
        worker
            .ports
            .iter()
            .flatten()
            .all(|p| p.container_port != 9000)
    );
    let defaulted = backend_with_bot(json!({"image": "bot:1"}));
    let defaulted = env(&render(&defaulted, &provider()).expect("render"));
    assert_eq!(
        defaulted[bot::BOT_URL_ENV].0.as_deref(),
        Some("ws://$(POD_IP):8765/session")
    );
}

#[test]
fn no_bot_container_without_a_bot() {
    let t = render(&backend(None), &provider()).expect("render");
    assert_eq!(t.spec.containers.len(), 1);
    assert!(!env(&t).contains_key(bot::BOT_URL_ENV));
    assert!(
        t.spec
            .volumes
            .iter()
            .flatten()
            .all(|v| v.name != bot::TMP_VOLUME)
    );
}

#[test]
fn the_bot_gets_no_secret_of_the_worker_and_the_worker_none_of_the_bot() {
    let t = render(&backend_with_bot(pipecat_bot()), &provider()).expect("render");
    let bot = bot_container(&t);
    let secrets: Vec<_> = bot
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            let s = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
            Some((e.name.as_str(), s.name.as_str(), s.key.as_str()))
        })
        .collect();
    // Only the key the backend author gave the bot: no signing key, no provider credentials.
    assert_eq!(secrets, [("OPENAI_API_KEY", "bot-keys", "openai")]);
    assert!(bot.env_from.is_none());
    assert!(
        bot.volume_mounts
            .iter()
            .flatten()
            .all(|m| m.name == bot::TMP_VOLUME),
        "no control TLS, signing-key or signaling TLS mount"
    );
    // The worker still has its own, and nothing of the bot's.
    let worker = env(&t);
    assert!(worker.contains_key("SESSION_SIGNING_KEY"));
    assert!(worker.contains_key("VOICE_SECRET_OPENAI_API_KEY"));
    assert!(!worker.contains_key("OPENAI_API_KEY"));
    assert!(
        !worker.values().any(|(_, from)| from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
            .is_some_and(|s| s.name == "bot-keys")),
        "the bot's Secret does not reach the worker"
    );
}

#[test]
fn hash_changes_when_the_bot_changes() {
    let plain = render(&backend(None), &provider()).expect("render");
    let with_bot = render(&backend_with_bot(pipecat_bot()), &provider()).expect("render");
    let mut other = pipecat_bot();
    other["image"] = json!("registry.example.com/pipecat-bot:2");
    let other = render(&backend_with_bot(other), &provider()).expect("render");
    assert_ne!(plain.hash, with_bot.hash);
    assert_ne!(with_bot.hash, other.hash);
}

#[test]
fn on_the_host_network_the_bot_listens_on_loopback_not_on_the_nodes_address() {
    let mut b = serde_json::to_value(backend_with_bot(pipecat_bot())).expect("json");
    b["spec"]["workers"]["network"] = json!({"advertise": "NodeIP"});
    let b: VoiceBackend = serde_json::from_value(b).expect("backend");
    let t = render(&b, &provider()).expect("render");
    let bot = bot_container(&t);
    let port = &bot.ports.clone().unwrap_or_default()[0];
    assert_eq!((port.container_port, port.host_port), (9000, None));
    let env = bot.env.clone().unwrap_or_default();
    let host = env
        .iter()
        .find(|e| e.name == "VOICE_BOT_HOST")
        .expect("VOICE_BOT_HOST");
    assert_eq!(host.value.as_deref(), Some("127.0.0.1"));
    let probe = bot
        .readiness_probe
        .clone()
        .and_then(|p| p.tcp_socket)
        .expect("tcp probe");
    assert_eq!(probe.host.as_deref(), Some("127.0.0.1"));
    let worker = &t.spec.containers[0];
    let url = worker
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "VOICE_BOT_URL")
        .and_then(|e| e.value.clone());
    assert_eq!(url.as_deref(), Some("ws://127.0.0.1:9000/session"));
}
