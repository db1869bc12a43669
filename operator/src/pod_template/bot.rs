//! The bot container beside each worker (`spec.workers.bot`, e.g. a Pipecat bot): the
//! backend author's program, to which the worker hands each session's audio over a WebSocket
//! at [`BOT_URL_ENV`] on the pod IP.
//!
//! The bot is code the provider did not choose, so it gets none of the worker's secrets: no
//! signing key, no control-channel TLS files, no provider credentials from the spec's
//! `*SecretRef`s; only the environment the backend author wrote, after a few facts of its pod.
//! Its scratch space is an emptyDir of its own, so it cannot read or swap the worker's
//! temporary files (session audio, the speech process's socket). It runs under the worker's
//! restrictive security context, and the pod is not Ready until it listens.

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, Probe, TCPSocketAction, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use voice_crds::{AdvertiseMode, BotContainer, WorkerNetwork};

use super::{
    READINESS_PERIOD_SECONDS, env_from, env_value, field_ref, pull_policy, restricted_context,
};

/// Name of the bot container, and of its port.
pub const CONTAINER_NAME: &str = "bot";
/// The worker's variable with the bot's WebSocket URL.
pub const BOT_URL_ENV: &str = "VOICE_BOT_URL";
/// Name of the bot's scratch volume, at `/tmp` in the bot container.
pub const TMP_VOLUME: &str = "bot-tmp";

/// `VOICE_BOT_URL` for the worker: the bot's port on the pod IP (`$(POD_IP)` is expanded by
/// the kubelet, as `POD_IP` is defined before it), or on loopback with host networking.
pub fn worker_env(bot: &BotContainer, network: &WorkerNetwork) -> EnvVar {
    let host = if on_host_network(network) {
        "127.0.0.1"
    } else {
        "$(POD_IP)"
    };
    env_value(BOT_URL_ENV, format!("ws://{host}:{}/session", bot.port))
}

/// With `advertise: NodeIP` the pod shares the node's network namespace: the pod IP is the
/// node's address, which no NetworkPolicy guards, so the bot listens on loopback instead.
fn on_host_network(network: &WorkerNetwork) -> bool {
    network.advertise == AdvertiseMode::NodeIP
}

/// The bot container of `backend`'s worker pods; with host networking (`advertise: NodeIP`)
/// it listens on the node's loopback, never on the node's address.
pub fn container(backend: &str, bot: &BotContainer, network: &WorkerNetwork) -> Container {
    let host = if on_host_network(network) {
        env_value("VOICE_BOT_HOST", "127.0.0.1".to_owned())
    } else {
        env_from("VOICE_BOT_HOST", field_ref("status.podIP"))
    };
    let env = [
        host,
        env_value("VOICE_BOT_PORT", bot.port.to_string()),
        env_from("POD_NAME", field_ref("metadata.name")),
        env_from("POD_NAMESPACE", field_ref("metadata.namespace")),
        env_value("BACKEND_NAME", backend.to_owned()),
    ]
    .into_iter()
    .chain(bot.env.iter().cloned())
    .collect();
    Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(bot.image.clone()),
        image_pull_policy: bot.image_pull_policy.map(pull_policy),
        command: (!bot.command.is_empty()).then(|| bot.command.clone()),
        args: (!bot.args.is_empty()).then(|| bot.args.clone()),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(CONTAINER_NAME.to_owned()),
            container_port: bot.port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        resources: bot.resources.clone(),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(bot.port),
                // The kubelet runs in the node's namespace, so loopback reaches the bot there.
                host: on_host_network(network).then(|| "127.0.0.1".to_owned()),
            }),
            period_seconds: Some(READINESS_PERIOD_SECONDS),
            ..Probe::default()
        }),
        security_context: Some(restricted_context()),
        volume_mounts: Some(vec![VolumeMount {
            name: TMP_VOLUME.to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

/// The bot's scratch volume.
pub fn tmp_volume() -> Volume {
    Volume {
        name: TMP_VOLUME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}
