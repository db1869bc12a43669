use serde_json::{Value, json};
use voice_crds::{VoiceBackendSpec, VoiceProvider};

use super::{Acceptance, Rejection, check};

fn provider(patch: Value) -> VoiceProvider {
    let mut v = json!({
        "apiVersion": "voicebackends.dev/v1alpha1",
        "kind": "VoiceProvider",
        "metadata": {"name": "builtin"},
        "spec": {
            "capabilities": {"s2sSupport": false, "supportedCodecs": ["opus"], "minLatency": "200ms"},
            "worker": {"image": "worker:1"},
            "stages": {
                "stt": ["pocketsphinx"], "tts": ["espeak"], "vad": ["webrtc"],
                "turnDetection": ["silence"], "customProcessors": ["gain"]
            },
            "configSchema": {
                "type": "object",
                "additionalProperties": false,
                "properties": {"jitterBufferMs": {"type": "integer", "minimum": 20}}
            }
        }
    });
    merge(&mut v["spec"], patch);
    serde_json::from_value(v).expect("test provider deserialises")
}

fn backend(patch: Value) -> VoiceBackendSpec {
    let mut v = json!({
        "provider": "builtin",
        "pipeline": {
            "type": "STT_TTS",
            "stt": {"provider": "pocketsphinx"},
            "tts": {"provider": "espeak"},
            "vad": {"provider": "webrtc"},
            "customProcessors": [{"name": "boost", "processor": "gain"}]
        },
        "agent": {"type": "Echo"},
        "providerConfig": {"jitterBufferMs": 40}
    });
    merge(&mut v, patch);
    serde_json::from_value(v).expect("test backend deserialises")
}

/// JSON merge patch (RFC 7386), enough for test fixtures.
fn merge(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(map) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (k, v) in map {
                if v.is_null() {
                    target.as_object_mut().map(|o| o.remove(&k));
                } else {
                    merge(&mut target[k.as_str()], v);
                }
            }
        }
        other => *target = other,
    }
}

fn rejected(a: &Acceptance) -> (Rejection, &str) {
    match a {
        Acceptance::Rejected { rejection, message } => (*rejection, message),
        Acceptance::Accepted => panic!("expected a rejection, got Accepted"),
    }
}

#[test]
fn a_matching_backend_is_accepted() {
    let outcome = check(&backend(json!({})), Some(&provider(json!({}))));
    assert_eq!(outcome, Acceptance::Accepted);
    assert_eq!(outcome.reason(), "Valid");
}

#[test]
fn a_missing_provider_is_provider_not_found_naming_the_field() {
    let outcome = check(&backend(json!({})), None);
    let (r, msg) = rejected(&outcome);
    assert_eq!(r, Rejection::ProviderNotFound);
    assert_eq!(outcome.reason(), "ProviderNotFound");
    assert!(
        msg.contains("spec.provider") && msg.contains("builtin"),
        "{msg}"
    );
}

#[test]
fn a_provider_that_is_not_accepted_rejects_its_backends() {
    let mut p = provider(json!({}));
    let mut conditions = Vec::new();
    voice_crds::conditions::set_condition(
        &mut conditions,
        "Accepted",
        false,
        "InvalidConfigSchema",
        "configSchema is broken",
        Some(1),
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ),
    );
    p.status = Some(voice_crds::VoiceProviderStatus {
        conditions,
        ..Default::default()
    });
    let outcome = check(&backend(json!({})), Some(&p));
    let (r, msg) = rejected(&outcome);
    assert_eq!(r, Rejection::ProviderNotAccepted);
    assert!(msg.contains("configSchema is broken"), "{msg}");
}

#[test]
fn s2s_needs_s2s_support() {
    let spec = backend(json!({
        "pipeline": {"type": "S2S", "stt": null, "tts": null, "s2s": {"provider": "echo"}},
        "agent": null
    }));
    let outcome = check(&spec, Some(&provider(json!({}))));
    let (r, msg) = rejected(&outcome);
    assert_eq!(r, Rejection::S2SNotSupported);
    assert!(
        msg.contains("s2sSupport") && msg.contains("spec.pipeline.type"),
        "{msg}"
    );
}

#[test]
fn a_backend_rate_limit_needs_custom_rate_limiting() {
    let spec = backend(json!({"admissionRateLimit": {"admissionsPerSecond": 5}}));
    let outcome = check(&spec, Some(&provider(json!({}))));
    let (r, msg) = rejected(&outcome);
    assert_eq!(r, Rejection::RateLimitNotSupported);
    assert!(msg.contains("spec.admissionRateLimit"), "{msg}");
    let able = provider(json!({"capabilities": {"customRateLimiting": true}}));
    assert_eq!(check(&spec, Some(&able)), Acceptance::Accepted);
}

#[test]
fn client_auth_needs_custom_auth() {
    let spec = backend(json!({"clientAuth": {"jwt": {
        "issuer": "https://id.example", "audience": "voice", "algorithm": "ES256",
        "keysSecretRef": {"name": "idp", "key": "jwks.json"}
    }}}));
    let outcome = check(&spec, Some(&provider(json!({}))));
    let (r, msg) = rejected(&outcome);
    assert_eq!(r, Rejection::CustomAuthNotSupported);
    assert!(msg.contains("spec.clientAuth"), "{msg}");
    let able = provider(json!({"capabilities": {"customAuth": true}}));
    assert_eq!(check(&spec, Some(&able)), Acceptance::Accepted);
}

#[test]
fn a_stereo_backend_is_rejected_naming_the_field_and_the_fix() {
    let spec = backend(json!({"audio": {"channels": 2}}));
    let outcome = check(&spec, Some(&provider(json!({}))));
    let (r, msg) = rejected(&outcome);
    assert_eq!(r, Rejection::AudioChannelsNotSupported);
    assert!(
        msg.contains("spec.audio.channels") && msg.contains("channels 1"),
        "{msg}"
    );
}

#[test]
fn s2s_with_an_agent_is_rejected_naming_spec_agent_and_both_fixes() {
    let s2s = json!({"type": "S2S", "stt": null, "tts": null, "s2s": {"provider": "echo"}});
    let with_s2s =
        provider(json!({"capabilities": {"s2sSupport": true}, "stages": {"s2s": ["echo"]}}));
    let outcome = check(&backend(json!({"pipeline": s2s.clone()})), Some(&with_s2s));
    let (r, msg) = rejected(&outcome);
    assert_eq!(r, Rejection::AgentWithSpeechToSpeech);
    assert_eq!(outcome.reason(), "AgentWithSpeechToSpeech");
    assert!(
        msg.starts_with("spec.agent:")
            && msg.contains("remove spec.agent")
            && msg.contains("STT_TTS"),
        "{msg}"
    );
    let without_agent = backend(json!({"pipeline": s2s, "agent": null}));
    assert_eq!(check(&without_agent, Some(&with_s2s)), Acceptance::Accepted);
}

#[test]
fn an_unsupported_codec_is_rejected_listing_the_supported_ones() {
    let spec = backend(json!({"audio": {"codec": "pcm", "sampleRate": 16000}}));
    let outcome = check(&spec, Some(&provider(json!({}))));
    let (r, msg) = rejected(&outcome);
    assert_eq!(r, Rejection::CodecNotSupported);
    assert!(
        msg.contains("spec.audio.codec") && msg.contains("opus"),
        "{msg}"
    );
}

#[test]
fn provider_config_failing_the_schema_names_the_json_pointer() {
    let spec = backend(json!({"providerConfig": {"jitterBufferMs": 5}}));
    let outcome = check(&spec, Some(&provider(json!({}))));
    let (r, msg) = rejected(&outcome);
    assert_eq!(r, Rejection::InvalidProviderConfig);
    assert!(msg.contains("/jitterBufferMs"), "{msg}");
    assert!(msg.contains("spec.providerConfig"), "{msg}");
}

#[test]
fn missing_provider_config_is_checked_as_an_empty_object() {
    let p =
        provider(json!({"configSchema": {"additionalProperties": null, "required": ["region"]}}));
    let outcome = check(&backend(json!({"providerConfig": null})), Some(&p));
    assert_eq!(rejected(&outcome).0, Rejection::InvalidProviderConfig);
    let outcome = check(
        &backend(json!({"providerConfig": {"region": "eu"}})),
        Some(&p),
    );
    assert!(outcome.is_accepted(), "{outcome:?}");
}

#[test]
fn an_unlisted_stage_implementation_is_rejected() {
    let spec = backend(json!({"pipeline": {"tts": {"provider": "openai"}}}));
    let outcome = check(&spec, Some(&provider(json!({}))));
    let (r, msg) = rejected(&outcome);
    assert_eq!(r, Rejection::StageNotSupported);
    assert!(
        msg.contains("spec.pipeline.tts.provider") && msg.contains("espeak"),
        "{msg}"
    );
}

#[test]
fn an_unlisted_custom_processor_is_rejected() {
    let spec = backend(json!({
        "pipeline": {"customProcessors": [{"name": "hp", "processor": "highpass"}]}
    }));
    let outcome = check(&spec, Some(&provider(json!({}))));
    let (r, msg) = rejected(&outcome);
    assert_eq!(r, Rejection::StageNotSupported);
    assert!(
        msg.contains("customProcessors") && msg.contains("highpass"),
        "{msg}"
    );
}

#[test]
fn a_provider_without_stages_does_not_restrict_them() {
    let outcome = check(
        &backend(json!({"pipeline": {"tts": {"provider": "anything"}}})),
        Some(&provider(json!({"stages": null}))),
    );
    assert!(outcome.is_accepted(), "{outcome:?}");
}

#[test]
fn a_latency_target_below_the_provider_minimum_is_rejected() {
    let spec = backend(json!({"pipeline": {"latencyTarget": "100ms"}}));
    let outcome = check(&spec, Some(&provider(json!({}))));
    let (r, msg) = rejected(&outcome);
    assert_eq!(r, Rejection::LatencyTargetBelowProviderMinimum);
    assert!(
        msg.contains("latencyTarget") && msg.contains("200ms"),
        "{msg}"
    );
}

/// The manifests a newcomer applies first must be accepted by the operator, not just the
/// API server.
#[test]
fn the_examples_are_accepted() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let read = |file: &str| -> Value {
        let text =
            std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
    };
    let provider: VoiceProvider =
        serde_json::from_value(read("00-provider-builtin.yaml")).expect("provider example");
    assert_eq!(
        crate::provider_controller::check_config_schema(provider.spec.config_schema.as_ref()),
        Ok(())
    );
    for file in ["10-backend-stt-tts.yaml", "20-backend-s2s.yaml"] {
        let backend: voice_crds::VoiceBackend =
            serde_json::from_value(read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let outcome = check(&backend.spec, Some(&provider));
        assert!(outcome.is_accepted(), "{file}: {outcome:?}");
    }
}

#[test]
fn an_image_override_needs_the_providers_permission() {
    let spec = backend(json!({"workers": {"image": "registry.example.com/mine:1"}}));
    let outcome = check(&spec, Some(&provider(json!({}))));
    let (r, msg) = rejected(&outcome);
    assert_eq!(r, Rejection::ImageOverrideNotAllowed);
    assert_eq!(outcome.reason(), "ImageOverrideNotAllowed");
    assert_eq!(
        msg,
        "spec.workers.image: \"registry.example.com/mine:1\" replaces the worker image, and VoiceProvider \"builtin\" does not allow that (spec.worker.allowImageOverride is false); remove spec.workers.image to run \"worker:1\", or have the provider's owner set allowImageOverride: true"
    );
    let allowing = provider(json!({"worker": {"image": "worker:1", "allowImageOverride": true}}));
    assert_eq!(check(&spec, Some(&allowing)), Acceptance::Accepted);
}

#[test]
fn a_bot_needs_the_providers_permission() {
    let spec = backend(json!({"workers": {"bot": {"image": "registry.example.com/bot:1"}}}));
    let outcome = check(&spec, Some(&provider(json!({}))));
    let (r, msg) = rejected(&outcome);
    assert_eq!(r, Rejection::BotNotAllowed);
    assert_eq!(outcome.reason(), "BotNotAllowed");
    assert_eq!(
        msg,
        "spec.workers.bot: \"registry.example.com/bot:1\" would run beside each worker, and VoiceProvider \"builtin\" does not allow a bot container (spec.worker.allowBot is false); remove spec.workers.bot, or have the provider's owner set allowBot: true"
    );
    let allowing = provider(json!({"worker": {"image": "worker:1", "allowBot": true}}));
    assert_eq!(check(&spec, Some(&allowing)), Acceptance::Accepted);
    // Allowing an image override does not allow a bot.
    let other = provider(json!({"worker": {"image": "worker:1", "allowImageOverride": true}}));
    assert_eq!(
        rejected(&check(&spec, Some(&other))).0,
        Rejection::BotNotAllowed
    );
}

#[test]
fn a_bot_port_the_worker_listens_on_is_a_conflict() {
    let allowing = provider(json!({"worker": {"image": "worker:1", "allowBot": true}}));
    let bot = |port: i32, network: Value| {
        backend(json!({"workers": {
            "bot": {"image": "bot:1", "port": port},
            "network": network
        }}))
    };
    for (port, network, name) in [
        (50051, json!({}), "grpc"),
        (8080, json!({}), "http"),
        // The ICE-TCP media port: the UDP port's number over TCP.
        (50000, json!({}), "webrtc-tcp"),
        (40000, json!({"udpPort": 40000}), "webrtc-tcp"),
    ] {
        let outcome = check(&bot(port, network), Some(&allowing));
        let (r, msg) = rejected(&outcome);
        assert_eq!(r, Rejection::BotPortConflict, "{port}");
        assert_eq!(outcome.reason(), "BotPortConflict");
        assert!(
            msg.starts_with(&format!(
                "spec.workers.bot.port: {port} is the worker's own {name} port"
            )) && msg.contains("choose another port for the bot"),
            "{msg}"
        );
    }
    // Free ports, and the default, are fine; so is 50000 once the media port moved away.
    for (port, network) in [
        (8765, json!({})),
        (9000, json!({})),
        (50000, json!({"udpPort": 40000})),
    ] {
        assert_eq!(
            check(&bot(port, network), Some(&allowing)),
            Acceptance::Accepted,
            "{port}"
        );
    }
    let defaulted = backend(json!({"workers": {"bot": {"image": "bot:1"}}}));
    assert_eq!(defaulted.workers.bot.as_ref().map(|b| b.port), Some(8765));
    assert_eq!(check(&defaulted, Some(&allowing)), Acceptance::Accepted);
}

#[test]
fn host_networking_needs_the_providers_permission() {
    let spec = backend(json!({"workers": {"network": {"advertise": "NodeIP"}}}));
    let outcome = check(&spec, Some(&provider(json!({}))));
    let (r, msg) = rejected(&outcome);
    assert_eq!(r, Rejection::HostNetworkNotAllowed);
    assert_eq!(outcome.reason(), "HostNetworkNotAllowed");
    assert!(
        msg.starts_with("spec.workers.network.advertise: NodeIP")
            && msg.contains("spec.worker.allowHostNetwork is false")
            && msg.contains("use advertise PodIP or Explicit"),
        "{msg}"
    );
    let allowing = provider(json!({"worker": {"image": "worker:1", "allowHostNetwork": true}}));
    assert_eq!(check(&spec, Some(&allowing)), Acceptance::Accepted);
    // The other modes never need it.
    for advertise in [
        json!({"advertise": "PodIP"}),
        json!({"advertise": "Explicit", "address": "203.0.113.7"}),
    ] {
        let spec = backend(json!({"workers": {"network": advertise}}));
        assert_eq!(
            check(&spec, Some(&provider(json!({})))),
            Acceptance::Accepted
        );
    }
}

#[test]
fn the_permissions_are_off_when_a_provider_does_not_mention_them() {
    let p = provider(json!({}));
    assert!(!p.spec.worker.allow_image_override);
    assert!(!p.spec.worker.allow_host_network);
    assert!(!p.spec.worker.allow_bot);
}
