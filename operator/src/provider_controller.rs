//! The VoiceProvider controller: checks the provider itself and counts its backends.
//!
//! `Accepted` is `True`/`Valid` when the provider is well-formed and `False`/
//! `InvalidConfigSchema` when `spec.configSchema` is not a valid JSON Schema (the worker image
//! is required by the CRD schema, so the API server already refuses a provider without one).
//! `status.backends` counts the VoiceBackends naming it (within this instance's namespace
//! when it watches one). `sessionsInUse`/`sessionsPending` belong to the session allocator:
//! this controller never writes them, so server-side apply leaves them to their owner.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use voice_crds::conditions::{ACCEPTED, set_condition};
use voice_crds::{VoiceBackend, VoiceProvider};

use crate::context::Context;
use crate::controller_stop;
use crate::error::{Error, Result};

/// Field manager of the provider status and reporter of its Events.
use crate::field_managers::PROVIDER as FIELD_MANAGER;

/// Checks a provider's `configSchema`: `Err` carries the message for `Accepted=False`.
pub fn check_config_schema(schema: Option<&serde_json::Value>) -> Result<(), String> {
    let Some(schema) = schema else { return Ok(()) };
    if let Err(e) = jsonschema::meta::validate(schema) {
        let at = e.instance_path().to_string();
        let at = if at.is_empty() {
            String::new()
        } else {
            format!(" at {at}")
        };
        return Err(format!(
            "spec.configSchema is not a valid JSON Schema{at}: {e}; fix the schema (draft 2020-12 unless $schema says otherwise)"
        ));
    }
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|e| format!("spec.configSchema cannot be compiled: {e}; fix the schema"))
}

/// Reconciles one provider.
#[tracing::instrument(skip(provider, ctx), fields(provider = %provider.name_any()))]
pub async fn reconcile(provider: Arc<VoiceProvider>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer("provider");
    crate::fault_injection::panic_if_asked("provider-controller", provider.annotations());
    let name = provider.name_any();
    let generation = provider.metadata.generation;
    let outcome = check_config_schema(provider.spec.config_schema.as_ref());

    let backends: Api<VoiceBackend> = match &ctx.scope.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let count = backends
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("list backends"))?
        .items
        .iter()
        // A backend being deleted no longer counts: its deletion is the last event we see of
        // it through the predicate in `run`.
        .filter(|b| b.spec.provider == name && b.metadata.deletion_timestamp.is_none())
        .count();
    let count = i32::try_from(count).unwrap_or(i32::MAX);

    let current = provider.status.clone().unwrap_or_default();
    let mut conditions = current.conditions.clone();
    let now = Time(Timestamp::now());
    let (ok, reason, message) = match &outcome {
        Ok(()) => (true, "Valid", "the provider is well-formed".to_owned()),
        Err(message) => (false, "InvalidConfigSchema", message.clone()),
    };
    set_condition(
        &mut conditions,
        ACCEPTED,
        ok,
        reason,
        message.clone(),
        generation,
        now,
    );

    let unchanged = conditions == current.conditions
        && current.observed_generation == generation
        && current.backends == count;
    if unchanged {
        return Ok(Action::await_change());
    }
    let was = current
        .conditions
        .iter()
        .find(|c| c.type_ == ACCEPTED)
        .cloned();
    write_status(&ctx, &name, generation, &conditions, count).await?;
    if !ok
        && was.as_ref().map(|c| (c.status.as_str(), c.reason.as_str())) != Some(("False", reason))
    {
        publish(&ctx, &provider, EventType::Warning, reason, &message).await;
    }
    Ok(Action::await_change())
}

async fn write_status(
    ctx: &Context,
    name: &str,
    generation: Option<i64>,
    conditions: &[Condition],
    backends: i32,
) -> Result<()> {
    let api: Api<VoiceProvider> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({
        "apiVersion": VoiceProvider::api_version(&()),
        "kind": VoiceProvider::kind(&()),
        "status": {
            "observedGeneration": generation,
            "conditions": conditions,
            "backends": backends,
        }
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube("patch provider status"))?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    provider: &VoiceProvider,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    crate::events::publish(
        &ctx.provider_recorder,
        provider,
        type_,
        reason,
        "Validate",
        note,
    )
    .await;
}

/// Retries a failed reconcile with a short backoff and counts the failure.
pub fn error_policy(_provider: Arc<VoiceProvider>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(reason = error.reason(), error = %error, "provider reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the provider controller until `cancel` fires.
pub async fn run(ctx: Arc<Context>, cancel: CancellationToken) {
    let providers: Api<VoiceProvider> = Api::all(ctx.client.clone());
    let mut config = watcher::Config::default();
    if let Some(selector) = &ctx.scope.provider_selector {
        config = config.labels(selector);
    }
    let backends: Api<VoiceBackend> = match &ctx.scope.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    // Backend counts change when a backend is created, starts deleting or renames its
    // provider; status-only writes of backends do not wake us.
    let backend_changes = watcher(backends, watcher::Config::default())
        .default_backoff()
        .touched_objects()
        .predicate_filter(
            crate::predicates::generation_or_deletion,
            Default::default(),
        );
    // Our own status writes do not bump the generation, so they do not wake us either.
    let (reader, writer) = kube::runtime::reflector::store();
    let listed = CancellationToken::new();
    let provider_changes = watcher(providers, config).default_backoff().reflect(writer);
    let provider_changes = controller_stop::mark_listed(provider_changes, listed.clone())
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let metrics = ctx.metrics.clone();
    let stop = cancel.clone();
    let controller = Controller::for_stream(provider_changes, reader)
        .with_config(kube::runtime::controller::Config::default().concurrency(2))
        .watches_stream(backend_changes, |b: VoiceBackend| {
            Some(ObjectRef::<VoiceProvider>::new(&b.spec.provider))
        })
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            let outcome = if result.is_ok() { "ok" } else { "error" };
            metrics
                .reconciles
                .with_label_values(&["provider", outcome])
                .inc();
            futures::future::ready(())
        });
    let grace = controller_stop::STOP_GRACE;
    if !controller_stop::run_until_stopped(controller, &cancel, &listed, grace).await {
        tracing::warn!(
            ?grace,
            "provider controller had not stopped a grace after the shutdown; leaving it"
        );
    }
}
