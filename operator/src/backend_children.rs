//! The objects a VoiceBackend owns besides its pods: the headless Service of its workers, the
//! Secret with its session signing key, the Secret with its workers' control-channel TLS
//! files, and the NetworkPolicy that admits the control port only from operator pods (and the
//! port of a bot beside the workers from no other pod).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use voice_crds::VoiceBackend;

use crate::control_ca::ControlCa;
use crate::error::{Error, Result};
use crate::pod_template::{self, GRPC_PORT, HTTP_PORT};
use crate::signing_keys;

/// Field manager for the children the backend controller applies.
use crate::field_managers::BACKEND as FIELD_MANAGER;

fn owned_meta(backend: &VoiceBackend, name: String) -> Result<ObjectMeta> {
    let owner = backend
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("metadata.uid"))?;
    Ok(ObjectMeta {
        name: Some(name),
        namespace: backend.namespace(),
        labels: Some(pod_template::selector_labels(&backend.name_any())),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    })
}

/// The headless Service `<backend>-workers` (gives each worker a DNS name and lets
/// Prometheus discover them); applied only when missing or different.
pub async fn ensure_service(api: &Api<Service>, backend: &VoiceBackend) -> Result<()> {
    let name = pod_template::service_name(&backend.name_any());
    let selector = pod_template::selector_labels(&backend.name_any());
    let ports = service_ports(backend);
    if let Some(existing) = api
        .get_opt(&name)
        .await
        .map_err(Error::kube("get service"))?
    {
        let spec = existing.spec.unwrap_or_default();
        let same_ports = spec.ports.as_ref().is_some_and(|p| {
            p.len() == ports.len()
                && p.iter()
                    .zip(&ports)
                    .all(|(a, b)| a.name == b.name && a.port == b.port && a.protocol == b.protocol)
        });
        if spec.selector.as_ref() == Some(&selector) && same_ports {
            return Ok(());
        }
    }
    let service = Service {
        metadata: owned_meta(backend, name.clone())?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: Some(selector),
            ports: Some(ports),
            // Workers are addressed before they are Ready (the operator checks them itself).
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    let mut value = serde_json::to_value(&service).map_err(|source| Error::Serialize {
        what: "service",
        source,
    })?;
    value["apiVersion"] = "v1".into();
    value["kind"] = "Service".into();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&value),
    )
    .await
    .map_err(Error::kube("apply service"))?;
    Ok(())
}

/// The Service's ports: gRPC, HTTP and, when the workers run it, the ICE-TCP media port
/// (clients reach it at the advertised address; the Service names it for DNS SRV lookups and
/// for whoever writes firewall rules from the Service).
pub fn service_ports(backend: &VoiceBackend) -> Vec<ServicePort> {
    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    };
    let mut ports = vec![port("grpc", GRPC_PORT), port("http", HTTP_PORT)];
    let tcp = crate::pod_network::tcp_media_port(&backend.spec.workers.network);
    ports.extend(tcp.map(|p| port(crate::pod_network::WEBRTC_TCP_PORT_NAME, p)));
    ports
}

/// The Secret `<backend>-session-signing-key` with the backend's join-token keys: created with
/// one key, rotated when the backend's `voicebackends.dev/rotate-signing-key` annotation takes
/// a new value, retired keys pruned after the longest token lifetime (see
/// [`crate::signing_keys`]). Written only when that changes something, with the read
/// `resourceVersion`, so two writers cannot both rotate. A new key is staged for
/// `propagation` before it signs; returns how long until a staged key becomes current, so the
/// reconcile comes back in time.
pub async fn ensure_signing_secret(
    api: &Api<Secret>,
    backend: &VoiceBackend,
    propagation: Duration,
) -> Result<Option<Duration>> {
    let name = pod_template::signing_secret_name(&backend.name_any());
    let existing = api
        .get_opt(&name)
        .await
        .map_err(Error::kube("get secret"))?;
    let now = u64::try_from(k8s_openapi::jiff::Timestamp::now().as_second()).unwrap_or(0);
    let requested = backend.annotations().get(signing_keys::ROTATE_ANNOTATION);
    let labelled = existing.as_ref().is_some_and(|s| {
        s.labels()
            .get(signing_keys::SECRET_LABEL.0)
            .map(String::as_str)
            == Some(signing_keys::SECRET_LABEL.1)
    });
    let desired = signing_keys::desired(
        existing.as_ref(),
        requested.map(String::as_str),
        now,
        propagation.as_secs(),
        &mut || signing_keys::fresh_key(now),
    )?;
    let promotion_in = |keys: &voice_proto::token::KeySet| {
        keys.next_promotion()
            .map(|at| Duration::from_secs(at.saturating_sub(now).max(1)))
    };
    let desired = match (desired, &existing) {
        (Some(d), _) => d,
        (None, Some(secret)) if labelled => {
            return Ok(signing_keys::key_set_of(secret)
                .ok()
                .and_then(|k| promotion_in(&k)));
        }
        // Only the label is missing (a Secret of an older operator): add it.
        (None, Some(secret)) => signing_keys::Desired {
            keys: signing_keys::key_set_of(secret).map_err(Error::SigningKeys)?,
            rotated_for: secret
                .annotations()
                .get(signing_keys::ROTATED_FOR_ANNOTATION)
                .cloned(),
        },
        (None, None) => return Ok(None),
    };
    let next = promotion_in(&desired.keys);
    let mut metadata = owned_meta(backend, name.clone())?;
    metadata.labels.get_or_insert_with(BTreeMap::new).insert(
        signing_keys::SECRET_LABEL.0.to_owned(),
        signing_keys::SECRET_LABEL.1.to_owned(),
    );
    if let Some(r) = &desired.rotated_for {
        metadata.annotations = Some(BTreeMap::from([(
            signing_keys::ROTATED_FOR_ANNOTATION.to_owned(),
            r.clone(),
        )]));
    }
    let rotating = existing
        .as_ref()
        .and_then(|s| signing_keys::key_set_of(s).ok())
        .is_some_and(|old| old.current != desired.keys.current);
    let mut secret = Secret {
        metadata,
        type_: Some("Opaque".to_owned()),
        data: Some(signing_keys::secret_data(&desired.keys)),
        ..Secret::default()
    };
    let written = match existing {
        None => api.create(&PostParams::default(), &secret).await,
        Some(old) => {
            // Optimistic concurrency: a write racing ours makes this one fail with 409.
            secret.metadata.resource_version = old.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &secret).await
        }
    };
    match written {
        Ok(_) => {
            if rotating {
                tracing::info!(secret = %name, kid = %desired.keys.current, "signing key rotated; the previous key verifies for the longest token lifetime");
            } else if let Some(wait) = next {
                tracing::info!(secret = %name, in_seconds = wait.as_secs(), "signing key staged; workers verify with it now and it signs once they have all read it");
            }
            Ok(next)
        }
        // Written by a racing reconcile: the next reconcile reads and decides again.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Some(Duration::from_secs(1))),
        Err(e) => Err(Error::kube("write secret")(e)),
    }
}

/// Applies `object` (a serialisable child) server-side as `kind` in `api_version`.
async fn apply<K>(api: &Api<K>, name: &str, object: &K, api_version: &str, kind: &str) -> Result<()>
where
    K: serde::Serialize + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let mut value = serde_json::to_value(object).map_err(|source| Error::Serialize {
        what: "backend child",
        source,
    })?;
    value["apiVersion"] = api_version.into();
    value["kind"] = kind.into();
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&value),
    )
    .await
    .map_err(Error::kube("apply backend child"))?;
    Ok(())
}

/// The Secret `<backend>-control-tls` the worker pods mount: the CA bundle whose client
/// certificates may call them and a serving certificate for the backend's server name.
/// Re-issued when the CA or its bundle changed or the certificate nears expiry; the workers
/// pick the new files up without a restart.
pub async fn ensure_control_tls_secret(
    api: &Api<Secret>,
    backend: &VoiceBackend,
    ca: &ControlCa,
) -> Result<()> {
    let name = pod_template::control_tls_secret_name(&backend.name_any());
    let now = SystemTime::now();
    if let Some(existing) = api
        .get_opt(&name)
        .await
        .map_err(Error::kube("get secret"))?
        && ca.worker_secret_current(&existing, now)
    {
        return Ok(());
    }
    let server_name = voice_proto::control_tls::worker_server_name(
        &backend.namespace().unwrap_or_default(),
        &backend.name_any(),
    );
    let (data, annotations) = ca.worker_secret(&server_name, now)?;
    let mut metadata = owned_meta(backend, name.clone())?;
    metadata.annotations = Some(annotations);
    let secret = Secret {
        metadata,
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Secret::default()
    };
    apply(api, &name, &secret, "v1", "Secret").await?;
    tracing::info!(backend = %backend.name_any(), secret = %name, "issued the workers' control-channel certificate");
    Ok(())
}

/// Where the operator's own pods run, for the NetworkPolicy's `from`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OperatorPods {
    /// The operator's namespace.
    pub namespace: String,
    /// Labels every operator pod carries (the chart's selector labels).
    pub labels: BTreeMap<String, String>,
}

/// The NetworkPolicy `<backend>-workers`: the control port (TCP 50051) only from operator
/// pods; the port of the backend's bot (`spec.workers.bot.port`) from no other pod (the
/// worker reaches it on its own pod IP, which stays inside the pod's network namespace and
/// never meets the policy); every other port (signaling and WebSocket on HTTP, the WebRTC UDP
/// port, whatever media port the backend configures) from anywhere.
pub fn network_policy(backend: &VoiceBackend, operator: &OperatorPods) -> Result<NetworkPolicy> {
    let name = pod_template::service_name(&backend.name_any());
    let port = |protocol: &str, from: i32, to: Option<i32>| NetworkPolicyPort {
        protocol: Some(protocol.to_owned()),
        port: Some(IntOrString::Int(from)),
        end_port: to,
    };
    let selector = |labels: BTreeMap<String, String>| LabelSelector {
        match_labels: Some(labels),
        match_expressions: None,
    };
    let bot_port = backend.spec.workers.bot.as_ref().map(|b| b.port);
    let closed: Vec<i32> = std::iter::once(GRPC_PORT).chain(bot_port).collect();
    Ok(NetworkPolicy {
        metadata: owned_meta(backend, name)?,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(pod_template::selector_labels(&backend.name_any()))),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    ports: Some(vec![port("TCP", GRPC_PORT, None)]),
                    from: Some(vec![NetworkPolicyPeer {
                        namespace_selector: Some(selector(BTreeMap::from([(
                            "kubernetes.io/metadata.name".to_owned(),
                            operator.namespace.clone(),
                        )]))),
                        pod_selector: Some(selector(operator.labels.clone())),
                        ip_block: None,
                    }]),
                },
                NetworkPolicyIngressRule {
                    ports: Some(
                        open_tcp_ranges(&closed)
                            .into_iter()
                            .map(|(from, to)| port("TCP", from, Some(to)))
                            .chain([port("UDP", 1, Some(65_535))])
                            .collect(),
                    ),
                    from: None,
                },
            ]),
            egress: None,
        }),
    })
}

/// The TCP port ranges `(from, to)` of 1..=65535 without the `closed` ports, in order; each
/// range has `from <= to`. Closed ports may come in any order, repeated or out of range.
fn open_tcp_ranges(closed: &[i32]) -> Vec<(i32, i32)> {
    const LAST: i32 = 65_535;
    let mut closed: Vec<i32> = closed
        .iter()
        .copied()
        .filter(|p| (1..=LAST).contains(p))
        .collect();
    closed.sort_unstable();
    closed.dedup();
    let mut ranges = Vec::with_capacity(closed.len() + 1);
    let mut from = 1;
    for port in closed {
        if from < port {
            ranges.push((from, port - 1));
        }
        from = port + 1;
    }
    if from <= LAST {
        ranges.push((from, LAST));
    }
    ranges
}

/// Applies [`network_policy`] when it is missing or different.
pub async fn ensure_network_policy(
    api: &Api<NetworkPolicy>,
    backend: &VoiceBackend,
    operator: &OperatorPods,
) -> Result<()> {
    let wanted = network_policy(backend, operator)?;
    let name = wanted.metadata.name.clone().unwrap_or_default();
    if let Some(existing) = api
        .get_opt(&name)
        .await
        .map_err(Error::kube("get networkpolicy"))?
        && existing.spec == wanted.spec
    {
        return Ok(());
    }
    apply(api, &name, &wanted, "networking.k8s.io/v1", "NetworkPolicy").await
}

#[cfg(test)]
mod tests;
