//! Publishing Kubernetes Events: best effort, because an Event that cannot be written must
//! never fail or delay a reconcile.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};

/// Most characters of an Event note (the API server refuses notes over 1 KiB).
const MAX_NOTE: usize = 1000;

/// Publishes an Event about `object` with `recorder`, logging (not returning) a failure.
pub async fn publish<K>(
    recorder: &Recorder,
    object: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(MAX_NOTE).collect()),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "could not publish event");
    }
}

/// Publishes a Warning Event about the VoiceSession `namespace/name` (uid `uid`) when the
/// caller holds only its identity, not the object.
pub async fn publish_session_warning(
    recorder: &Recorder,
    namespace: &str,
    name: &str,
    uid: &str,
    reason: &str,
    note: &str,
) {
    publish_session_event(
        recorder,
        namespace,
        name,
        uid,
        EventType::Warning,
        reason,
        note,
    )
    .await;
}

/// Publishes an Event of `type_` about the VoiceSession `namespace/name` (uid `uid`) when
/// the caller holds only its identity, not the object.
pub async fn publish_session_event(
    recorder: &Recorder,
    namespace: &str,
    name: &str,
    uid: &str,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let reference = ObjectReference {
        api_version: Some(voice_crds::VoiceSession::api_version(&()).into_owned()),
        kind: Some(voice_crds::VoiceSession::kind(&()).into_owned()),
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        uid: Some(uid.to_owned()),
        ..ObjectReference::default()
    };
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(MAX_NOTE).collect()),
        action: reason.to_owned(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &reference).await {
        tracing::warn!(error = %e, reason, "could not publish event");
    }
}
