//! The worker's LiveKit settings, for a backend with `spec.liveKit`: the server it dials
//! ([`URL_ENV`]: `workerURL`, else `url`) and the API key pair it signs its own agent tokens
//! with, taken by the kubelet from the backend's credentials Secret (`secretKeyRef`), so the
//! pair never passes through the operator, the pod spec or any status. A backend without
//! `spec.liveKit` gets none of these variables.
//!
//! Only the worker container gets them; a bot beside it gets none of the worker's secrets
//! (`bot.rs`). An edit of the Secret reaches workers started after it (a variable from a
//! Secret is read when the container starts).

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, SecretKeySelector};
use voice_crds::LiveKitServer;

use super::{env_from, env_value};
use crate::livekit_credentials::{API_KEY_KEY, API_SECRET_KEY};

/// The LiveKit server's URL as the workers reach it.
pub const URL_ENV: &str = "LIVEKIT_URL";
/// The API key (from the Secret's `api-key`).
pub const API_KEY_ENV: &str = "LIVEKIT_API_KEY";
/// The API secret (from the Secret's `api-secret`).
pub const API_SECRET_ENV: &str = "LIVEKIT_API_SECRET";

/// The worker's variables for `server`.
pub fn worker_env(server: &LiveKitServer) -> [EnvVar; 3] {
    let from_secret = |name: &str, key: &str| {
        env_from(
            name,
            EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: server.credentials_secret_name.clone(),
                    key: key.to_owned(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            },
        )
    };
    [
        env_value(
            URL_ENV,
            server
                .worker_url
                .clone()
                .unwrap_or_else(|| server.url.clone()),
        ),
        from_secret(API_KEY_ENV, API_KEY_KEY),
        from_secret(API_SECRET_ENV, API_SECRET_KEY),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_template::render;
    use serde_json::json;
    use voice_crds::{VoiceBackend, VoiceProvider};

    fn backend(live_kit: Option<serde_json::Value>, bot: bool) -> VoiceBackend {
        let mut spec = json!({
            "provider": "livekit",
            "pipeline": {"type": "S2S", "s2s": {"provider": "echo"}},
        });
        if let Some(live_kit) = live_kit {
            spec["liveKit"] = live_kit;
        }
        if bot {
            spec["workers"] = json!({"bot": {"image": "bot:1", "port": 8765}});
        }
        serde_json::from_value(json!({
            "apiVersion": "voicebackends.dev/v1alpha1",
            "kind": "VoiceBackend",
            "metadata": {"name": "echo", "namespace": "team", "uid": "u-1"},
            "spec": spec,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn provider() -> VoiceProvider {
        serde_json::from_value(json!({
            "apiVersion": "voicebackends.dev/v1alpha1",
            "kind": "VoiceProvider",
            "metadata": {"name": "livekit"},
            "spec": {
                "capabilities": {"s2sSupport": true, "supportedCodecs": ["opus"]},
                "worker": {"image": "worker:1", "allowLiveKit": true, "allowBot": true},
            }
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The LIVEKIT_* variables of each container of the rendered pod, by container name.
    fn livekit_env(b: &VoiceBackend) -> Vec<(String, Vec<EnvVar>)> {
        let t = render(b, &provider()).unwrap_or_else(|e| panic!("{e}"));
        t.spec
            .containers
            .iter()
            .map(|c| {
                let env = c.env.clone().unwrap_or_default();
                let ours = env
                    .into_iter()
                    .filter(|e| e.name.starts_with("LIVEKIT_"))
                    .collect();
                (c.name.clone(), ours)
            })
            .collect()
    }

    fn secret_ref(e: &EnvVar) -> Option<(&str, &str)> {
        let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
        Some((r.name.as_str(), r.key.as_str()))
    }

    #[test]
    fn the_worker_dials_the_servers_url_with_the_key_pair_from_the_secret() {
        let b = backend(
            Some(json!({"url": "wss://livekit.example.com", "credentialsSecretName": "lk-keys"})),
            false,
        );
        let containers = livekit_env(&b);
        let (name, env) = &containers[0];
        assert_eq!(name, "worker");
        let names: Vec<_> = env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"]
        );
        assert_eq!(env[0].value.as_deref(), Some("wss://livekit.example.com"));
        assert_eq!(secret_ref(&env[1]), Some(("lk-keys", "api-key")));
        assert_eq!(secret_ref(&env[2]), Some(("lk-keys", "api-secret")));
        // The values never sit in the pod spec.
        assert!(env[1].value.is_none() && env[2].value.is_none());
    }

    #[test]
    fn a_worker_url_takes_the_place_of_the_users_url() {
        let b = backend(
            Some(json!({
                "url": "wss://livekit.example.com",
                "workerURL": "ws://livekit.livekit.svc:7880",
                "credentialsSecretName": "lk-keys"
            })),
            false,
        );
        let env = &livekit_env(&b)[0].1;
        assert_eq!(
            env[0].value.as_deref(),
            Some("ws://livekit.livekit.svc:7880")
        );
    }

    #[test]
    fn a_backend_without_live_kit_gets_no_livekit_variables_and_a_bot_never_does() {
        assert!(livekit_env(&backend(None, false))[0].1.is_empty());
        let with_bot = backend(
            Some(json!({"url": "ws://livekit.example:7880", "credentialsSecretName": "lk-keys"})),
            true,
        );
        let containers = livekit_env(&with_bot);
        assert_eq!(containers.len(), 2);
        assert_eq!(containers[0].1.len(), 3);
        assert_eq!(containers[1].0, "bot");
        assert!(containers[1].1.is_empty(), "{:?}", containers[1].1);
    }
}
