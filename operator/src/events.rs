//! Publishing Kubernetes Events: best effort, because an Event that cannot be written must
//! never fail or delay a reconcile.

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
