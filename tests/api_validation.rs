//! The API server itself rejects every invalid object with a message that names the field.
//!
//! Each case starts from a valid example manifest, breaks one thing, and asks the real
//! kube-apiserver (server-side dry run) to create it. The case passes only if the create fails
//! and the error names the offending field and says what is allowed.

use serde_json::{Value, json};
use voice_tests::{TestNamespace, install_crds, kubectl_with_stdin};

/// A broken manifest and what the API server must say about it.
struct Case {
    name: &'static str,
    example: &'static str,
    mutate: fn(&mut Value),
    /// Every fragment must appear in the error (field path first, then the rule's words).
    expect: &'static [&'static str],
}

fn example(file: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(file);
    serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn remove(v: &mut Value, path: &[&str]) {
    let (last, parents) = path.split_last().unwrap();
    let mut cur = v;
    for p in parents {
        cur = &mut cur[*p];
    }
    cur.as_object_mut().unwrap().remove(*last);
}

const PROVIDER: &str = "00-provider-builtin.yaml";
const STT_TTS: &str = "10-backend-stt-tts.yaml";
const S2S: &str = "20-backend-s2s.yaml";
const SESSION: &str = "30-session.yaml";

fn cases() -> Vec<Case> {
    vec![
        // VoiceProvider (seed BackendProvider, ProviderCapabilities)
        Case {
            name: "provider without capabilities",
            example: PROVIDER,
            mutate: |v| remove(v, &["spec", "capabilities"]),
            expect: &["spec.capabilities", "Required value"],
        },
        Case {
            name: "provider without worker (seed: Factory must not be nil)",
            example: PROVIDER,
            mutate: |v| remove(v, &["spec", "worker"]),
            expect: &["spec.worker", "Required value"],
        },
        Case {
            name: "provider with empty worker image",
            example: PROVIDER,
            mutate: |v| v["spec"]["worker"]["image"] = json!(""),
            expect: &["spec.worker.image", "at least 1 chars"],
        },
        Case {
            name: "provider with no codecs",
            example: PROVIDER,
            mutate: |v| v["spec"]["capabilities"]["supportedCodecs"] = json!([]),
            expect: &["spec.capabilities.supportedCodecs", "at least 1 items"],
        },
        Case {
            name: "provider with unknown codec",
            example: PROVIDER,
            mutate: |v| v["spec"]["capabilities"]["supportedCodecs"] = json!(["mp3"]),
            expect: &[
                "spec.capabilities.supportedCodecs[0]",
                "Unsupported value: \"mp3\"",
                "\"opus\"",
                "\"pcm\"",
            ],
        },
        Case {
            name: "provider with duplicate codecs",
            example: PROVIDER,
            mutate: |v| v["spec"]["capabilities"]["supportedCodecs"] = json!(["opus", "opus"]),
            expect: &["spec.capabilities.supportedCodecs[1]", "Duplicate value"],
        },
        Case {
            name: "provider with negative session cap",
            example: PROVIDER,
            mutate: |v| v["spec"]["capabilities"]["maxConcurrentSessions"] = json!(-1),
            expect: &[
                "spec.capabilities.maxConcurrentSessions",
                "greater than or equal to 0",
            ],
        },
        Case {
            name: "provider with a string session cap",
            example: PROVIDER,
            mutate: |v| v["spec"]["capabilities"]["maxConcurrentSessions"] = json!("ten"),
            expect: &[
                "spec.capabilities.maxConcurrentSessions",
                "must be of type integer",
            ],
        },
        Case {
            name: "provider with negative minLatency",
            example: PROVIDER,
            mutate: |v| v["spec"]["capabilities"]["minLatency"] = json!("-5ms"),
            expect: &[
                "spec.capabilities.minLatency",
                "minLatency must not be negative",
            ],
        },
        Case {
            name: "provider listing s2s stages without s2sSupport",
            example: PROVIDER,
            mutate: |v| v["spec"]["capabilities"]["s2sSupport"] = json!(false),
            expect: &["spec", "capabilities.s2sSupport is false"],
        },
        Case {
            name: "provider rate limit without customRateLimiting",
            example: PROVIDER,
            mutate: |v| {
                v["spec"]["capabilities"]["customRateLimiting"] = json!(false);
                v["spec"]["admissionRateLimit"] = json!({"admissionsPerSecond": 5});
            },
            expect: &[
                "spec",
                "admissionRateLimit needs capabilities.customRateLimiting",
            ],
        },
        Case {
            name: "provider rate limit of zero",
            example: PROVIDER,
            mutate: |v| {
                v["spec"]["capabilities"]["customRateLimiting"] = json!(true);
                v["spec"]["admissionRateLimit"] = json!({"admissionsPerSecond": 0});
            },
            expect: &["spec.admissionRateLimit.admissionsPerSecond"],
        },
        // VoiceBackend: pipeline (seed PipelineConfiguration)
        Case {
            name: "backend without provider",
            example: STT_TTS,
            mutate: |v| remove(v, &["spec", "provider"]),
            expect: &["spec.provider", "Required value"],
        },
        Case {
            name: "backend with unknown pipeline type",
            example: STT_TTS,
            mutate: |v| v["spec"]["pipeline"]["type"] = json!("VOICE"),
            expect: &[
                "spec.pipeline.type",
                "Unsupported value: \"VOICE\"",
                "\"STT_TTS\"",
                "\"S2S\"",
            ],
        },
        Case {
            name: "STT_TTS without tts",
            example: STT_TTS,
            mutate: |v| {
                remove(v, &["spec", "pipeline", "tts"]);
                remove(v, &["spec", "pipeline", "processingOrder"]);
            },
            expect: &[
                "spec.pipeline",
                "STT_TTS needs both pipeline.stt and pipeline.tts",
            ],
        },
        Case {
            name: "STT_TTS with an s2s stage",
            example: STT_TTS,
            mutate: |v| {
                v["spec"]["pipeline"]["s2s"] = json!({"provider": "echo"});
                remove(v, &["spec", "pipeline", "processingOrder"]);
            },
            expect: &["spec.pipeline", "pipeline.s2s is only used by type S2S"],
        },
        Case {
            name: "S2S without s2s",
            example: S2S,
            mutate: |v| remove(v, &["spec", "pipeline", "s2s"]),
            expect: &["spec.pipeline", "S2S needs pipeline.s2s"],
        },
        Case {
            name: "S2S with an stt stage",
            example: S2S,
            mutate: |v| v["spec"]["pipeline"]["stt"] = json!({"provider": "pocketsphinx"}),
            expect: &["spec.pipeline", "S2S bypasses transcription"],
        },
        Case {
            name: "zero latencyTarget",
            example: STT_TTS,
            mutate: |v| v["spec"]["pipeline"]["latencyTarget"] = json!("0s"),
            expect: &[
                "spec.pipeline.latencyTarget",
                "latencyTarget must be a positive duration",
            ],
        },
        Case {
            name: "zero silenceTimeout",
            example: STT_TTS,
            mutate: |v| v["spec"]["pipeline"]["turnDetection"]["silenceTimeout"] = json!("0ms"),
            expect: &[
                "spec.pipeline.turnDetection.silenceTimeout",
                "silenceTimeout must be a positive duration",
            ],
        },
        Case {
            name: "duplicate custom processor names",
            example: S2S,
            mutate: |v| v["spec"]["pipeline"]["customProcessors"] = json!([{"name": "boost", "processor": "gain"}, {"name": "boost", "processor": "gain", "order": 1}]),
            expect: &["spec.pipeline.customProcessors", "Duplicate value"],
        },
        Case {
            name: "negative custom processor order",
            example: S2S,
            mutate: |v| {
                v["spec"]["pipeline"]["customProcessors"] =
                    json!([{"name": "boost", "processor": "gain", "order": -1}])
            },
            expect: &[
                "spec.pipeline.customProcessors[0].order",
                "greater than or equal to 0",
            ],
        },
        Case {
            name: "processingOrder missing an enabled component",
            example: STT_TTS,
            mutate: |v| {
                v["spec"]["pipeline"]["processingOrder"] =
                    json!(["turnDetection", "stt", "agent", "tts"])
            },
            expect: &[
                "spec.pipeline",
                "processingOrder must list every enabled component",
            ],
        },
        Case {
            name: "processingOrder naming an unconfigured component",
            example: STT_TTS,
            mutate: |v| {
                // The example configures noise cancellation: unconfigure it, keep it listed.
                if let Some(pipeline) = v["spec"]["pipeline"].as_object_mut() {
                    pipeline.remove("noiseCancellation");
                }
                v["spec"]["pipeline"]["processingOrder"] = json!([
                    "noiseCancellation",
                    "vad",
                    "turnDetection",
                    "stt",
                    "agent",
                    "tts"
                ])
            },
            expect: &[
                "spec.pipeline",
                "processingOrder lists a component that is not configured",
            ],
        },
        Case {
            name: "processingOrder with an unknown component",
            example: STT_TTS,
            mutate: |v| v["spec"]["pipeline"]["processingOrder"] = json!(["mixer"]),
            expect: &[
                "spec.pipeline.processingOrder[0]",
                "Unsupported value: \"mixer\"",
            ],
        },
        Case {
            name: "processingOrder with tts before stt",
            example: STT_TTS,
            mutate: |v| {
                v["spec"]["pipeline"]["processingOrder"] =
                    json!(["vad", "turnDetection", "tts", "agent", "stt"])
            },
            expect: &["spec", "stt before agent before tts"],
        },
        Case {
            name: "stage provider name with capitals",
            example: STT_TTS,
            mutate: |v| v["spec"]["pipeline"]["stt"]["provider"] = json!("Pocket_Sphinx"),
            expect: &["spec.pipeline.stt.provider", "should match"],
        },
        Case {
            name: "vad aggressiveness out of range",
            example: STT_TTS,
            mutate: |v| v["spec"]["pipeline"]["vad"]["aggressiveness"] = json!(4),
            expect: &[
                "spec.pipeline.vad.aggressiveness",
                "less than or equal to 3",
            ],
        },
        Case {
            name: "stage endpoint that is not a URL",
            example: STT_TTS,
            mutate: |v| v["spec"]["pipeline"]["stt"]["endpoint"] = json!("whisper.local"),
            expect: &[
                "spec.pipeline.stt.endpoint",
                "endpoint must be an absolute http, https, ws or wss URL",
            ],
        },
        // VoiceBackend: agent (seed AgentIntegration: callback or instance must be set)
        Case {
            name: "STT_TTS without agent",
            example: STT_TTS,
            mutate: |v| {
                remove(v, &["spec", "agent"]);
                remove(v, &["spec", "pipeline", "processingOrder"]);
            },
            expect: &[
                "spec",
                "STT_TTS needs spec.agent with exactly one agent mode",
            ],
        },
        Case {
            name: "agent type Callback without callback",
            example: STT_TTS,
            mutate: |v| v["spec"]["agent"]["type"] = json!("Callback"),
            expect: &[
                "spec.agent",
                "agent.callback is required when agent.type is Callback",
            ],
        },
        Case {
            name: "Echo agent with an llm block too",
            example: STT_TTS,
            mutate: |v| {
                v["spec"]["agent"]["llm"] =
                    json!({"endpoint": "https://api.example.com/v1", "model": "m"})
            },
            expect: &[
                "spec.agent",
                "agent.llm is required when agent.type is Llm and must be omitted otherwise",
            ],
        },
        Case {
            name: "unknown agent type",
            example: STT_TTS,
            mutate: |v| v["spec"]["agent"]["type"] = json!("Magic"),
            expect: &[
                "spec.agent.type",
                "Unsupported value: \"Magic\"",
                "\"Echo\"",
            ],
        },
        Case {
            name: "callback URL that is not a URL",
            example: STT_TTS,
            mutate: |v| {
                v["spec"]["agent"] =
                    json!({"type": "Callback", "callback": {"url": "agent-service"}});
            },
            expect: &[
                "spec.agent.callback.url",
                "callback.url must be an absolute http or https URL",
            ],
        },
        Case {
            name: "grpc agent without port",
            example: STT_TTS,
            mutate: |v| {
                v["spec"]["agent"] = json!({"type": "Grpc", "grpc": {"endpoint": "http://agent"}});
            },
            expect: &[
                "spec.agent.grpc.endpoint",
                "grpc.endpoint must be http://host:port",
            ],
        },
        Case {
            name: "grpc agent CA without TLS",
            example: STT_TTS,
            mutate: |v| {
                v["spec"]["agent"] = json!({"type": "Grpc", "grpc": {
                    "endpoint": "http://agent:50051",
                    "caSecretRef": {"name": "agent-ca", "key": "ca.crt"},
                }});
            },
            expect: &[
                "spec.agent.grpc",
                "grpc.caSecretRef needs an https:// endpoint",
            ],
        },
        // VoiceBackend: workers, scaling, caps, audio
        Case {
            name: "minWorkers above maxWorkers",
            example: STT_TTS,
            mutate: |v| {
                v["spec"]["scaling"]["minWorkers"] = json!(5);
                v["spec"]["scaling"]["maxWorkers"] = json!(2);
            },
            expect: &[
                "spec.scaling",
                "scaling.minWorkers must not exceed scaling.maxWorkers",
            ],
        },
        Case {
            name: "zero sessions per worker",
            example: STT_TTS,
            mutate: |v| v["spec"]["workers"]["sessionsPerWorker"] = json!(0),
            expect: &[
                "spec.workers.sessionsPerWorker",
                "greater than or equal to 1",
            ],
        },
        Case {
            name: "negative maxSessions",
            example: STT_TTS,
            mutate: |v| v["spec"]["maxSessions"] = json!(-1),
            expect: &["spec.maxSessions", "greater than or equal to 0"],
        },
        Case {
            name: "negative replicas",
            example: STT_TTS,
            mutate: |v| v["spec"]["replicas"] = json!(-1),
            expect: &["spec.replicas", "greater than or equal to 0"],
        },
        Case {
            name: "zero drainTimeout",
            example: STT_TTS,
            mutate: |v| v["spec"]["workers"]["drainTimeout"] = json!("0s"),
            expect: &[
                "spec.workers.drainTimeout",
                "drainTimeout must be a positive duration",
            ],
        },
        Case {
            name: "opus at 16 kHz",
            example: STT_TTS,
            mutate: |v| v["spec"]["audio"] = json!({"codec": "opus", "sampleRate": 16000}),
            expect: &["spec.audio", "codec opus runs at sampleRate 48000"],
        },
        Case {
            name: "pcmu at 16 kHz",
            example: STT_TTS,
            mutate: |v| v["spec"]["audio"] = json!({"codec": "pcmu", "sampleRate": 16000}),
            expect: &[
                "spec.audio",
                "codec pcmu (G.711 μ-law) runs at sampleRate 8000",
            ],
        },
        Case {
            name: "unsupported sample rate",
            example: STT_TTS,
            mutate: |v| v["spec"]["audio"] = json!({"codec": "pcm", "sampleRate": 44100}),
            expect: &[
                "spec.audio.sampleRate",
                "sampleRate must be one of 8000, 16000, 24000 or 48000",
            ],
        },
        Case {
            name: "zero audio buffer size (seed: BufferSize > 0)",
            example: STT_TTS,
            mutate: |v| v["spec"]["audio"] = json!({"bufferSize": 0}),
            expect: &["spec.audio.bufferSize", "greater than or equal to 1"],
        },
        Case {
            name: "explicit advertise without address",
            example: STT_TTS,
            mutate: |v| v["spec"]["workers"]["network"] = json!({"advertise": "Explicit"}),
            expect: &[
                "spec.workers.network",
                "network.address is required when network.advertise is Explicit",
            ],
        },
        Case {
            name: "advertised address that is not an IP",
            example: STT_TTS,
            mutate: |v| {
                v["spec"]["workers"]["network"] =
                    json!({"advertise": "Explicit", "address": "voice.example.com"})
            },
            expect: &[
                "spec.workers.network.address",
                "network.address must be an IPv4 or IPv6 address",
            ],
        },
        Case {
            name: "ICE server with an http URL",
            example: STT_TTS,
            mutate: |v| {
                v["spec"]["workers"]["network"] =
                    json!({"iceServers": [{"urls": ["http://stun.example.com"]}]})
            },
            expect: &[
                "spec.workers.network.iceServers[0].urls",
                "must start with stun:, stuns:, turn: or turns:",
            ],
        },
        Case {
            name: "ICE server with a TURN shared secret and static credentials",
            example: STT_TTS,
            mutate: |v| {
                let r = json!({"name": "turn", "key": "k"});
                v["spec"]["workers"]["network"] = json!({"iceServers": [{
                    "urls": ["turn:127.0.0.1:3478"],
                    "authSecretRef": r, "usernameSecretRef": r, "credentialSecretRef": r,
                }]})
            },
            expect: &[
                "spec.workers.network.iceServers[0]",
                "authSecretRef (time-limited TURN REST credentials) excludes usernameSecretRef/credentialSecretRef",
            ],
        },
        Case {
            name: "ICE server with a username but no credential",
            example: STT_TTS,
            mutate: |v| {
                v["spec"]["workers"]["network"] = json!({"iceServers": [{
                    "urls": ["turn:127.0.0.1:3478"],
                    "usernameSecretRef": {"name": "turn", "key": "user"},
                }]})
            },
            expect: &[
                "spec.workers.network.iceServers[0]",
                "usernameSecretRef and credentialSecretRef go together",
            ],
        },
        Case {
            name: "allowed origin with a path",
            example: STT_TTS,
            mutate: |v| {
                v["spec"]["workers"]["network"] =
                    json!({"allowedOrigins": ["https://app.example.com/voice"]})
            },
            expect: &[
                "spec.workers.network.allowedOrigins",
                "network.allowedOrigins entries must be origins",
            ],
        },
        Case {
            name: "unknown placement",
            example: STT_TTS,
            mutate: |v| v["spec"]["placement"] = json!("Random"),
            expect: &[
                "spec.placement",
                "Unsupported value: \"Random\"",
                "\"Packed\"",
            ],
        },
        // VoiceSession (seed VoiceSession, UserConnection)
        Case {
            name: "session without backendRef",
            example: SESSION,
            mutate: |v| remove(v, &["spec", "backendRef"]),
            expect: &["spec.backendRef", "Required value"],
        },
        Case {
            name: "session with empty userID",
            example: SESSION,
            mutate: |v| v["spec"]["user"]["userID"] = json!(""),
            expect: &["spec.user.userID", "at least 1 chars"],
        },
        Case {
            name: "session without user",
            example: SESSION,
            mutate: |v| remove(v, &["spec", "user"]),
            expect: &["spec.user", "Required value"],
        },
        Case {
            name: "session with unknown transport",
            example: SESSION,
            mutate: |v| v["spec"]["transport"] = json!("sip"),
            expect: &[
                "spec.transport",
                "Unsupported value: \"sip\"",
                "\"webrtc\"",
                "\"websocket\"",
            ],
        },
        Case {
            name: "session with zero pendingTimeout",
            example: SESSION,
            mutate: |v| v["spec"]["pendingTimeout"] = json!("0s"),
            expect: &[
                "spec.pendingTimeout",
                "pendingTimeout must be a positive duration",
            ],
        },
        Case {
            name: "session with negative TTL",
            example: SESSION,
            mutate: |v| v["spec"]["ttlSecondsAfterFinished"] = json!(-1),
            expect: &["spec.ttlSecondsAfterFinished", "greater than or equal to 0"],
        },
        Case {
            name: "session with zero silenceTimeout override",
            example: SESSION,
            mutate: |v| v["spec"]["turnDetection"] = json!({"silenceTimeout": "0s"}),
            expect: &[
                "spec.turnDetection.silenceTimeout",
                "silenceTimeout must be a positive duration",
            ],
        },
        Case {
            name: "session listing a participant twice",
            example: SESSION,
            mutate: |v| v["spec"]["participants"] = json!([{"userID": "u-2"}, {"userID": "u-2"}]),
            expect: &["spec.participants", "participants[].userID must be unique"],
        },
        Case {
            name: "session listing its own user as a participant",
            example: SESSION,
            mutate: |v| v["spec"]["participants"] = json!([{"userID": "user-42"}]),
            expect: &[
                "spec.participants",
                "participants[].userID must differ from user.userID",
            ],
        },
        Case {
            name: "session with 16 participants",
            example: SESSION,
            mutate: |v| {
                v["spec"]["participants"] = (0..16)
                    .map(|i| json!({"userID": format!("u-{i}")}))
                    .collect();
            },
            expect: &["spec.participants", "must have at most 15 items"],
        },
        Case {
            name: "session participant whose userID cannot name a Secret key",
            example: SESSION,
            mutate: |v| v["spec"]["participants"] = json!([{"userID": "team/alice"}]),
            expect: &["spec.participants[0].userID", "should match"],
        },
    ]
}

#[tokio::test]
async fn api_server_rejects_each_invalid_manifest_naming_the_field() {
    install_crds();
    let ns = TestNamespace::new("invalid").await;
    let cases = cases();
    assert!(
        cases.len() >= 25,
        "the table must cover at least 25 invalid manifests"
    );
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let mut obj = example(case.example);
        // Cluster-scoped providers share one name space: give each case its own name.
        obj["metadata"]["name"] = json!(format!("invalid-{i}"));
        (case.mutate)(&mut obj);
        let out = kubectl_with_stdin(
            &["create", "--dry-run=server", "-n", ns.name(), "-f", "-"],
            &obj.to_string(),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!("{}: accepted, but must be rejected", case.name));
            continue;
        }
        let missing: Vec<_> = case
            .expect
            .iter()
            .filter(|f| !stderr.contains(**f))
            .collect();
        if !missing.is_empty() {
            failures.push(format!(
                "{}: error lacks {missing:?}; API server said: {}",
                case.name,
                stderr.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn valid_examples_are_accepted() {
    install_crds();
    let ns = TestNamespace::new("valid").await;
    for file in [STT_TTS, S2S, SESSION] {
        let out = kubectl_with_stdin(
            &["create", "--dry-run=server", "-n", ns.name(), "-f", "-"],
            &example(file).to_string(),
        );
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut provider = example(PROVIDER);
    provider["metadata"]["name"] = json!("valid-provider-dry-run");
    let out = kubectl_with_stdin(
        &["create", "--dry-run=server", "-f", "-"],
        &provider.to_string(),
    );
    assert!(
        out.status.success(),
        "provider: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Immutable fields: an update that changes them is refused, other updates go through.
#[tokio::test]
async fn session_backend_ref_and_transport_are_immutable() {
    install_crds();
    let ns = TestNamespace::new("immutable").await;
    let session = example(SESSION);
    let out = kubectl_with_stdin(&["apply", "-n", ns.name(), "-f", "-"], &session.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut moved = session.clone();
    moved["spec"]["backendRef"]["name"] = json!("other");
    let out = kubectl_with_stdin(&["apply", "-n", ns.name(), "-f", "-"], &moved.to_string());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "changing backendRef must fail");
    assert!(
        err.contains("spec.backendRef") && err.contains("backendRef is immutable"),
        "{err}"
    );

    let mut switched = session.clone();
    switched["spec"]["transport"] = json!("websocket");
    let out = kubectl_with_stdin(
        &["apply", "-n", ns.name(), "-f", "-"],
        &switched.to_string(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "changing transport must fail");
    assert!(
        err.contains("spec.transport") && err.contains("transport is immutable"),
        "{err}"
    );

    let mut relabelled = session.clone();
    relabelled["spec"]["maxDuration"] = json!("45m");
    let out = kubectl_with_stdin(
        &["apply", "-n", ns.name(), "-f", "-"],
        &relabelled.to_string(),
    );
    assert!(
        out.status.success(),
        "a mutable field must still update: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Who may join is fixed at creation: adding, removing or changing a participant is refused,
/// while other fields of a multi-user session still update.
#[tokio::test]
async fn session_participants_are_immutable() {
    install_crds();
    let ns = TestNamespace::new("participants").await;
    let apply =
        |v: &Value| kubectl_with_stdin(&["apply", "-n", ns.name(), "-f", "-"], &v.to_string());
    let mut session = example(SESSION);
    session["spec"]["participants"] = json!([{"userID": "u-2"}, {"userID": "u-3"}]);
    let out = apply(&session);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut added = session.clone();
    added["spec"]["participants"] =
        json!([{"userID": "u-2"}, {"userID": "u-3"}, {"userID": "u-4"}]);
    let mut swapped = session.clone();
    swapped["spec"]["participants"] = json!([{"userID": "u-2"}, {"userID": "u-5"}]);
    let mut relabelled = session.clone();
    relabelled["spec"]["participants"][0]["metadata"] = json!({"seat": "1"});
    let mut dropped = session.clone();
    remove(&mut dropped, &["spec", "participants"]);
    for (changed, what) in [
        (&added, "adding a participant"),
        (&swapped, "replacing a participant"),
        (&relabelled, "editing a participant's metadata"),
        (&dropped, "removing the participants"),
    ] {
        let out = apply(changed);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} must fail");
        assert!(
            err.contains("spec.participants") && err.contains("participants is immutable"),
            "{what}: {err}"
        );
    }

    let mut longer = session.clone();
    longer["spec"]["maxDuration"] = json!("45m");
    let out = apply(&longer);
    assert!(
        out.status.success(),
        "a mutable field of a multi-user session must still update: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
