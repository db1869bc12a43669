//! The objects a VoiceBackend owns besides its pods: the headless Service of its workers and
//! the Secret with its session signing keys.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use voice_crds::VoiceBackend;

use crate::error::{Error, Result};
use crate::pod_template::{self, GRPC_PORT, HTTP_PORT};
use crate::signing_keys;

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

/// The Secret `<backend>-session-signing-key` with the backend's join-token keys: created with
/// one key, rotated when the backend's `voicebackends.dev/rotate-signing-key` annotation takes
/// a new value, retired keys pruned after the longest token lifetime (see
/// [`crate::signing_keys`]). Written only when that changes something, with the read
/// `resourceVersion`, so two writers cannot both rotate.
pub async fn ensure_signing_secret(api: &Api<Secret>, backend: &VoiceBackend) -> Result<()> {
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
        &mut || signing_keys::fresh_key(now),
    )?;
    let desired = match (desired, &existing) {
        (Some(d), _) => d,
        (None, Some(_)) if labelled => return Ok(()),
        // Only the label is missing (a Secret of an older operator): add it.
        (None, Some(secret)) => signing_keys::Desired {
            keys: signing_keys::key_set_of(secret).map_err(Error::SigningKeys)?,
            rotated_for: secret
                .annotations()
                .get(signing_keys::ROTATED_FOR_ANNOTATION)
                .cloned(),
        },
        (None, None) => return Ok(()),
    };
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
            }
            Ok(())
        }
        // Written by a racing reconcile: the next reconcile reads and decides again.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube("write secret")(e)),
    }
}
