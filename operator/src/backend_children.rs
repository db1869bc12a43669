//! The objects a VoiceBackend owns besides its pods: the headless Service of its workers and
//! the Secret with its session signing key.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use voice_crds::VoiceBackend;

use crate::error::{Error, Result};
use crate::pod_template::{self, GRPC_PORT, HTTP_PORT, SIGNING_KEY_KEY};

/// Field manager for the children the backend controller applies.
const FIELD_MANAGER: &str = "voice-operator/backend";

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
    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    };
    let ports = vec![port("grpc", GRPC_PORT), port("http", HTTP_PORT)];
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
                    .all(|(a, b)| a.name == b.name && a.port == b.port)
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

/// The Secret `<backend>-session-signing-key`: created once with 32 random bytes (as 64 hex
/// characters, so it can travel as an environment variable) and never rotated here, because
/// rotating it would invalidate every join token already handed out.
pub async fn ensure_signing_secret(api: &Api<Secret>, backend: &VoiceBackend) -> Result<()> {
    let name = pod_template::signing_secret_name(&backend.name_any());
    if api
        .get_opt(&name)
        .await
        .map_err(Error::kube("get secret"))?
        .is_some()
    {
        return Ok(());
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(Error::Random)?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let secret = Secret {
        metadata: owned_meta(backend, name)?,
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            SIGNING_KEY_KEY.to_owned(),
            ByteString(hex.into_bytes()),
        )])),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        // Created by an earlier, interrupted reconcile: keep that key.
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube("create secret")(e)),
    }
}
