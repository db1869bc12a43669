//! What a waiting session's status says about why it waits.

use super::*;

pub(super) fn waiting_message(blocked: admission_plan::Blocked, backend: &str) -> String {
    use admission_plan::Blocked;
    match blocked {
        Blocked::ProviderLimit => {
            "the provider's maxConcurrentSessions is reached; waiting for a session to end".into()
        }
        Blocked::NamespaceQuota => format!(
            "the namespace is at its session quota (annotation {} on the Namespace); waiting for a session to end",
            admission_plan::NAMESPACE_QUOTA_ANNOTATION
        ),
        Blocked::BackendLimit => {
            format!("VoiceBackend {backend} is at spec.maxSessions; waiting for a session to end")
        }
        Blocked::NoWorkerCapacity => format!(
            "every ready worker of VoiceBackend {backend} is full; waiting for a slot or a new worker"
        ),
        Blocked::BackendNotReady => format!("VoiceBackend {backend} has no ready worker yet"),
        Blocked::BackendNotFound => format!(
            "VoiceBackend {backend} does not exist in this namespace: create it or fix spec.backendRef.name"
        ),
        Blocked::BackendNotAccepted => {
            format!("VoiceBackend {backend} is not Accepted: see its Accepted condition")
        }
        Blocked::RateLimited => format!(
            "the admissionRateLimit of VoiceBackend {backend} or its provider allows no admission yet; admitted in queue order as it refills"
        ),
        Blocked::AudioFormatNotSupported => {
            "spec.audio does not fit the session's transport, provider or worker".into()
        }
        Blocked::MultiUserNotSupported => format!(
            "spec.participants needs a provider with capabilities.multiUserSupport, which the provider of VoiceBackend {backend} lacks"
        ),
        Blocked::TransportNotSupported => {
            format!("spec.transport is not one VoiceBackend {backend} serves")
        }
        Blocked::UserIDReserved => {
            "a userID of the session is the one the agent joins LiveKit rooms with".into()
        }
        Blocked::RoomNameTooLong => {
            "the session's LiveKit room name is too long; set spec.room".into()
        }
        Blocked::RoomInUse => {
            "another session meets in the session's LiveKit room; waiting for it to end".into()
        }
    }
}
