//! What every reconcile shares: the client, the Event recorders, metrics, the worker client
//! and the scope this operator instance manages.

use std::sync::Arc;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::backend_children::OperatorPods;
use crate::control_ca::ControlTrust;
use crate::leader::Fence;
use crate::metrics::Metrics;
use crate::session_counts::SessionCounts;
use crate::turn_latency::TurnLatencies;
use crate::worker_client::WorkerClients;

/// Which objects this operator instance manages.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Only VoiceBackends (and their pods) in this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Only VoiceProviders matching this label selector; all when `None`.
    pub provider_selector: Option<String>,
}

/// Shared state of the controllers, handed to each reconcile in an `Arc`.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Publishes Events as `voice-operator/provider`.
    pub provider_recorder: Recorder,
    /// Publishes Events as `voice-operator/backend`.
    pub backend_recorder: Recorder,
    /// Publishes Events about sessions as `voice-operator/session`.
    pub session_recorder: Recorder,
    /// Process metrics.
    pub metrics: Metrics,
    /// gRPC channels to workers (mutual TLS).
    pub workers: WorkerClients,
    /// The control channel's CA and the operator's client certificate.
    pub control_trust: Arc<ControlTrust>,
    /// The operator's own pods, which each backend's NetworkPolicy admits to the control port.
    pub operator_pods: OperatorPods,
    /// What this instance manages.
    pub scope: Scope,
    /// Open while this process may write as the leader.
    pub fence: Fence,
    /// Session counts per backend, published by the allocator for scaling.
    pub session_counts: SessionCounts,
    /// Recent turn latencies per backend, from the workers' events.
    pub turn_latencies: TurnLatencies,
    /// How long a rotated signing key is staged (verifying only) before it signs.
    pub signing_key_propagation: std::time::Duration,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Builds the context; `instance` names this process in Events (its pod name). Settings
    /// without an argument take their defaults; set them with struct update syntax.
    pub fn new(
        client: Client,
        metrics: Metrics,
        scope: Scope,
        instance: Option<String>,
        fence: Fence,
        control_trust: Arc<ControlTrust>,
        operator_pods: OperatorPods,
    ) -> Self {
        let reporter = |controller: &str| Reporter {
            controller: controller.to_owned(),
            instance: instance.clone(),
        };
        Context {
            provider_recorder: Recorder::new(
                client.clone(),
                reporter(crate::field_managers::PROVIDER),
            ),
            backend_recorder: Recorder::new(
                client.clone(),
                reporter(crate::field_managers::BACKEND),
            ),
            session_recorder: Recorder::new(
                client.clone(),
                reporter(crate::field_managers::SESSION),
            ),
            client,
            metrics,
            workers: WorkerClients::new(control_trust.clone(), fence.clone()),
            control_trust,
            operator_pods,
            scope,
            fence,
            session_counts: SessionCounts::default(),
            turn_latencies: TurnLatencies::default(),
            signing_key_propagation: crate::signing_keys::DEFAULT_PROPAGATION,
        }
    }
}
