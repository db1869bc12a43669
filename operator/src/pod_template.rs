//! The worker pod a backend runs, rendered from the backend and its provider.
//!
//! Pure: no API calls. The rendered [`WorkerTemplate`] carries a hash of itself; pods are
//! labelled with it, so the backend controller can tell pods of an older template (rolling
//! update) from current ones without comparing pod specs that the API server has defaulted.
//!
//! Choices worth knowing:
//! - `restartPolicy: Never`. A worker holds live conversations in memory; if its process dies
//!   those sessions are gone. Restarting the container in place would bring back an empty
//!   worker under the same pod name and IP, and the operator could not tell that its sessions
//!   were lost. With `Never` the pod ends `Failed`, the controller sees it, replaces it, and
//!   (with session admission) re-admits its sessions elsewhere.
//! - No `preStop` hook: the worker drains on SIGTERM by itself (stops accepting sessions and
//!   waits for them up to `DRAIN_TIMEOUT_SECONDS`), and `terminationGracePeriodSeconds` is that
//!   timeout plus 30 s so the kubelet does not SIGKILL it mid-drain.
//! - The signing key reaches the worker through `secretKeyRef`; the pipeline JSON only
//!   carries Secret *names* (the `*SecretRef` fields of the spec), never secret values.
//! - The control channel's TLS files (`<backend>-control-tls`) are a Secret *volume* at
//!   [`CONTROL_TLS_DIR`], not environment variables: the kubelet refreshes a mounted Secret
//!   in place, so a renewed certificate or a rotated CA reaches a running worker, which
//!   reloads it without dropping a session.
//! - With `spec.workers.bot`, a second container runs the backend author's bot beside the
//!   worker, without any of the worker's secrets ([`bot`]).
//! - With `spec.liveKit`, the worker gets the LiveKit server's URL and key pair ([`livekit`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, Pod, PodSecurityContext, PodSpec, Probe, SeccompProfile,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;
use voice_crds::{AdvertiseMode, PullPolicy, VoiceBackend, VoiceProvider};

use crate::error::{Error, Result};

/// Port of the worker's WorkerControl gRPC server and grpc.health.v1.
pub const GRPC_PORT: i32 = 50051;
/// Port of the worker's HTTP server (`/healthz`, `/readyz`, `/metrics`).
pub const HTTP_PORT: i32 = 8080;
/// Label: what the pod is.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Label: who manages the pod.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label: the backend a worker pod belongs to.
pub const LABEL_BACKEND: &str = "voicebackends.dev/backend";
/// Label: hash of the template the pod was made from.
pub const LABEL_TEMPLATE_HASH: &str = "voicebackends.dev/template-hash";
/// Label (and annotation key prefix): the pod is draining and will be deleted once empty.
pub const LABEL_DRAINING: &str = "voicebackends.dev/draining";
/// Annotation: when the pod started draining (RFC 3339).
pub const ANNOTATION_DRAINING_SINCE: &str = "voicebackends.dev/draining-since";
/// Where the worker pod mounts its control-channel TLS Secret (`CONTROL_TLS_DIR`).
pub const CONTROL_TLS_DIR: &str = "/var/run/voice/control-tls";
/// Key of the signing key in the backend's signing-key Secret.
pub const SIGNING_KEY_KEY: &str = "signing-key";
/// Where the worker container sees its backend's signing-key Secret (read-only).
pub const SIGNING_KEYS_DIR: &str = "/var/run/voice-operator/signing-keys";
/// Name of the signing-key Secret's volume in the worker pod.
const SIGNING_KEYS_VOLUME: &str = "signing-keys";
/// Extra grace after the drain timeout before the kubelet kills a terminating worker.
const TERMINATION_GRACE_EXTRA_SECONDS: i64 = 30;
/// How often the kubelet probes `/readyz`: short, so a new worker takes sessions quickly.
const READINESS_PERIOD_SECONDS: i32 = 2;
/// The non-root user of the worker image (distroless `nonroot`).
const RUN_AS_USER: i64 = 65532;

/// Labels that select every worker pod of `backend` (Service selector, `status.selector`).
pub fn selector_labels(backend: &str) -> BTreeMap<String, String> {
    [
        (LABEL_NAME, "voice-worker"),
        (LABEL_MANAGED_BY, "voice-operator"),
        (LABEL_BACKEND, backend),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// `selector_labels` as a label selector string, for `status.selector` and list calls.
pub fn selector_string(backend: &str) -> String {
    selector_labels(backend)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Name of the headless Service of a backend's workers.
pub fn service_name(backend: &str) -> String {
    format!("{backend}-workers")
}

/// Name of the Secret holding a backend's session signing key.
pub fn signing_secret_name(backend: &str) -> String {
    format!("{backend}-session-signing-key")
}

/// Name of the Secret holding a backend's control-channel CA bundle and serving certificate.
pub fn control_tls_secret_name(backend: &str) -> String {
    format!("{backend}-control-tls")
}

/// A rendered worker pod spec and its hash.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerTemplate {
    /// The pod spec every current worker of the backend runs.
    pub spec: PodSpec,
    /// Short hex hash of `spec`, the `template-hash` label value.
    pub hash: String,
}

/// Renders the worker pod spec of `backend` served by `provider`.
pub fn render(backend: &VoiceBackend, provider: &VoiceProvider) -> Result<WorkerTemplate> {
    let name = backend
        .metadata
        .name
        .as_deref()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    let spec = &backend.spec;
    let worker = &provider.spec.worker;
    let drain_seconds = std::time::Duration::from(spec.workers.drain_timeout)
        .as_secs()
        .max(1);
    let pipeline = serde_json::json!({
        "pipeline": spec.pipeline,
        "agent": spec.agent,
        "audio": spec.audio,
    });
    let pipeline = serde_json::to_string(&pipeline).map_err(|source| Error::Serialize {
        what: "VOICE_PIPELINE",
        source,
    })?;
    let (field, value, from) = (field_ref, env_value, env_from);
    let mut env = vec![
        from("POD_IP", field("status.podIP")),
        from("POD_NAME", field("metadata.name")),
        from("POD_NAMESPACE", field("metadata.namespace")),
        value("GRPC_PORT", GRPC_PORT.to_string()),
        value("HTTP_PORT", HTTP_PORT.to_string()),
        value(
            "SESSIONS_PER_WORKER",
            spec.workers.sessions_per_worker.max(1).to_string(),
        ),
        value("DRAIN_TIMEOUT_SECONDS", drain_seconds.to_string()),
        value("BACKEND_NAME", name.to_owned()),
        value("VOICE_PIPELINE", pipeline),
        // Checked against the provider's configSchema before any pod exists (acceptance.rs);
        // its image reads it (the built-in worker: logLevel, jitterBufferMs).
        value(
            "VOICE_PROVIDER_CONFIG",
            spec.provider_config
                .as_ref()
                .map_or_else(|| "{}".to_owned(), serde_json::Value::to_string),
        ),
        value("CONTROL_TLS_DIR", CONTROL_TLS_DIR.to_owned()),
        // The key set, from the mounted Secret: the worker reloads it when the operator rotates
        // the key. SESSION_SIGNING_KEY (the key current at start) serves until it is readable.
        value(
            "SESSION_SIGNING_KEYS_FILE",
            format!("{SIGNING_KEYS_DIR}/{}", crate::signing_keys::KEYS_FILE_KEY),
        ),
        from(
            "SESSION_SIGNING_KEY",
            EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: signing_secret_name(name),
                    key: SIGNING_KEY_KEY.to_owned(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            },
        ),
    ];
    // Which application JWTs open sessions besides join tokens; its verification keys come
    // from their Secret below, like every other referenced key.
    if let Some(auth) = &spec.client_auth {
        let json = serde_json::to_string(auth).map_err(|source| Error::Serialize {
            what: "VOICE_CLIENT_AUTH",
            source,
        })?;
        env.push(value("VOICE_CLIENT_AUTH", json));
    }
    env.extend(
        crate::pod_network::env(&spec.workers.network).map_err(|source| Error::Serialize {
            what: "ICE_SERVERS",
            source,
        })?,
    );
    // The worker hands each session's audio to the bot beside it (`bot.rs`).
    env.extend(
        spec.workers
            .bot
            .as_ref()
            .map(|b| bot::worker_env(b, &spec.workers.network)),
    );
    // The LiveKit server and key pair of a backend that serves sessions in rooms (`livekit.rs`).
    env.extend(spec.live_kit.iter().flat_map(livekit::worker_env));
    // Every Secret key the spec references (provider API keys, webhook auth, TURN
    // credentials) reaches the worker as an environment variable from the Secret itself:
    // the key never passes through the operator, the pod spec or any status.
    for r in secret_refs(spec) {
        env.push(from(
            &r.env_var(),
            EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: r.name.clone(),
                    key: r.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            },
        ));
    }
    // An operator exporting traces sends its workers to the same collector (docs/observability.md).
    if let Some(endpoint) = crate::telemetry::endpoint() {
        env.push(value(crate::telemetry::ENDPOINT_ENV, endpoint.to_owned()));
    }
    let container = Container {
        name: "worker".to_owned(),
        image: Some(
            spec.workers
                .image
                .clone()
                .unwrap_or_else(|| worker.image.clone()),
        ),
        image_pull_policy: worker.image_pull_policy.map(pull_policy),
        command: (!worker.command.is_empty()).then(|| worker.command.clone()),
        args: (!worker.args.is_empty()).then(|| worker.args.clone()),
        env: Some(env),
        ports: Some(crate::pod_network::ports(&spec.workers.network)),
        resources: spec.workers.resources.clone(),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".to_owned()),
                port: IntOrString::Int(HTTP_PORT),
                // The kubelet does not verify the certificate of an HTTPS probe.
                scheme: crate::pod_network::serves_tls(&spec.workers.network)
                    .then(|| "HTTPS".to_owned()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(READINESS_PERIOD_SECONDS),
            ..Probe::default()
        }),
        security_context: Some(restricted_context()),
        // The root filesystem is read-only; scratch space lives on an emptyDir.
        volume_mounts: Some(
            [
                VolumeMount {
                    name: "tmp".to_owned(),
                    mount_path: "/tmp".to_owned(),
                    ..VolumeMount::default()
                },
                VolumeMount {
                    name: "control-tls".to_owned(),
                    mount_path: CONTROL_TLS_DIR.to_owned(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                },
                VolumeMount {
                    name: SIGNING_KEYS_VOLUME.to_owned(),
                    mount_path: SIGNING_KEYS_DIR.to_owned(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                },
            ]
            .into_iter()
            .chain(crate::pod_network::tls_mount(&spec.workers.network))
            .collect(),
        ),
        ..Container::default()
    };
    let bot = spec.workers.bot.as_ref();
    let pod_spec = PodSpec {
        containers: std::iter::once(container)
            .chain(bot.map(|b| bot::container(name, b, &spec.workers.network)))
            .collect(),
        restart_policy: Some("Never".to_owned()),
        termination_grace_period_seconds: Some(
            i64::try_from(drain_seconds).unwrap_or(i64::MAX / 2) + TERMINATION_GRACE_EXTRA_SECONDS,
        ),
        // Workers talk to no Kubernetes API.
        automount_service_account_token: Some(false),
        host_network: (spec.workers.network.advertise == AdvertiseMode::NodeIP).then_some(true),
        affinity: crate::pod_network::affinity(name, &spec.workers.network),
        node_selector: (!spec.workers.node_selector.is_empty())
            .then(|| spec.workers.node_selector.clone()),
        tolerations: (!spec.workers.tolerations.is_empty())
            .then(|| spec.workers.tolerations.clone()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        volumes: Some(
            [
                Volume {
                    name: "tmp".to_owned(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Volume::default()
                },
                Volume {
                    name: "control-tls".to_owned(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(control_tls_secret_name(name)),
                        default_mode: Some(0o440),
                        optional: Some(false),
                        ..SecretVolumeSource::default()
                    }),
                    ..Volume::default()
                },
                Volume {
                    name: SIGNING_KEYS_VOLUME.to_owned(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(signing_secret_name(name)),
                        optional: Some(false),
                        ..SecretVolumeSource::default()
                    }),
                    ..Volume::default()
                },
            ]
            .into_iter()
            .chain(crate::pod_network::tls_volume(&spec.workers.network))
            .chain(bot.map(|_| bot::tmp_volume()))
            .collect(),
        ),
        ..PodSpec::default()
    };
    let bytes = serde_json::to_vec(&pod_spec).map_err(|source| Error::Serialize {
        what: "worker pod spec",
        source,
    })?;
    Ok(WorkerTemplate {
        spec: pod_spec,
        hash: format!("{:016x}", fnv1a64(&bytes))[..10].to_owned(),
    })
}

/// A variable with a literal value.
fn env_value(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value),
        value_from: None,
    }
}

/// A variable taken from `source` (a field of the pod, a Secret key).
fn env_from(name: &str, source: EnvVarSource) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(source),
    }
}

/// The downward-API source of the pod's field `path`.
fn field_ref(path: &str) -> EnvVarSource {
    EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.to_owned(),
            ..ObjectFieldSelector::default()
        }),
        ..EnvVarSource::default()
    }
}

/// The Kubernetes spelling of a pull policy.
fn pull_policy(policy: PullPolicy) -> String {
    match policy {
        PullPolicy::Always => "Always",
        PullPolicy::IfNotPresent => "IfNotPresent",
        PullPolicy::Never => "Never",
    }
    .to_owned()
}

/// The security context of every container of a worker pod (worker and bot): non-root, no
/// privilege escalation, no capabilities, read-only root filesystem (scratch space on an
/// emptyDir at `/tmp`).
fn restricted_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// FNV-1a: a hash that never changes between Rust releases, unlike `DefaultHasher`, so a
/// restarted operator computes the same template hash and rolls nothing.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Characters of generated name suffixes: Kubernetes' own alphabet (no vowels, so no words;
/// no 0/1/3 that read like letters).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Pod name `<backend>-<5 chars>` from 5 random bytes.
pub fn pod_name(backend: &str, random: [u8; 5]) -> String {
    let suffix: String = random
        .iter()
        .map(|b| char::from(SUFFIX_ALPHABET[usize::from(*b) % SUFFIX_ALPHABET.len()]))
        .collect();
    format!("{backend}-{suffix}")
}

/// A worker pod named `name` from `template`, owned by the backend `owner`.
pub fn pod(
    backend: &str,
    namespace: &str,
    name: String,
    template: &WorkerTemplate,
    owner: OwnerReference,
) -> Pod {
    let mut labels = selector_labels(backend);
    labels.insert(LABEL_TEMPLATE_HASH.to_owned(), template.hash.clone());
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(template.spec.clone()),
        status: None,
    }
}

/// Every `*SecretRef` in the backend's spec (but for the bot's own environment), once each,
/// in a stable order.
pub fn secret_refs(spec: &voice_crds::VoiceBackendSpec) -> Vec<voice_crds::SecretKeyRef> {
    fn walk(value: &serde_json::Value, out: &mut std::collections::BTreeSet<(String, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if k.ends_with("SecretRef")
                        && let (Some(name), Some(key)) = (
                            v.get("name").and_then(|n| n.as_str()),
                            v.get("key").and_then(|n| n.as_str()),
                        )
                    {
                        out.insert((name.to_owned(), key.to_owned()));
                    } else {
                        walk(v, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut found = std::collections::BTreeSet::new();
    if let Ok(mut value) = serde_json::to_value(spec) {
        // The bot's environment is the bot's: its Secret keys go to the bot container alone.
        if let Some(workers) = value.get_mut("workers").and_then(|w| w.as_object_mut()) {
            workers.remove("bot");
        }
        walk(&value, &mut found);
    }
    found
        .into_iter()
        .map(|(name, key)| voice_crds::SecretKeyRef { name, key })
        .collect()
}

pub mod bot;
pub mod livekit;
#[cfg(test)]
mod tests;
