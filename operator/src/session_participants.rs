//! Whether a multi-user session can be served: a session with `spec.participants` needs a
//! provider whose workers mix several users into one conversation
//! (`capabilities.multiUserSupport`).
//!
//! Pure: the allocator passes the session, its backend and the provider, and a misfit keeps
//! the session `Pending` with `Admitted=False`, reason `MultiUserNotSupported`, and the
//! message from here, outside the queue and without a slot, until the provider gains the
//! capability. The session is never admitted meanwhile: a worker without the capability
//! would let only `spec.user` in, and the participants' tokens would open nothing.

use kube::ResourceExt;
use voice_crds::{VoiceBackend, VoiceProvider, VoiceSession};

/// The `Admitted=False` reason of a multi-user session whose provider cannot serve it.
pub const REASON: &str = admission_core::reason::MULTI_USER_NOT_SUPPORTED;

/// Why a session with `participants` further users cannot run on `backend_name`, whose
/// provider `provider_name` has `multi_user_support` or not; `None` when it can.
pub fn misfit(
    participants: usize,
    backend_name: &str,
    provider_name: &str,
    multi_user_support: bool,
) -> Option<String> {
    if participants == 0 || multi_user_support {
        return None;
    }
    let listed = match participants {
        1 => "1 participant".to_owned(),
        n => format!("{n} participants"),
    };
    Some(format!(
        "spec.participants lists {listed} beside spec.user, but VoiceProvider {provider_name:?} \
         (of VoiceBackend {backend_name:?}) does not have capabilities.multiUserSupport: \
         create the session on a backend whose provider has multiUserSupport, or without \
         spec.participants (both fields are immutable)"
    ))
}

/// [`misfit`] for API objects: `None` when the backend or provider is missing (the
/// allocator says `BackendNotFound` or `BackendNotAccepted` for those).
pub fn misfit_of(
    session: &VoiceSession,
    backend: Option<&VoiceBackend>,
    provider: Option<&VoiceProvider>,
) -> Option<String> {
    let (backend, provider) = (backend?, provider?);
    misfit(
        session.spec.participants.len(),
        &backend.name_any(),
        &provider.name_any(),
        provider.spec.capabilities.multi_user_support,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_of_one_user_fits_any_provider() {
        assert_eq!(misfit(0, "assistant", "builtin", false), None);
        assert_eq!(misfit(0, "assistant", "builtin", true), None);
    }

    #[test]
    fn participants_fit_a_provider_with_multi_user_support() {
        assert_eq!(misfit(15, "assistant", "conference", true), None);
    }

    #[test]
    fn participants_on_a_provider_without_multi_user_support_are_refused_naming_the_field_and_the_fix()
     {
        let why = misfit(2, "assistant", "builtin", false).unwrap_or_default();
        assert!(
            why.starts_with("spec.participants lists 2 participants beside spec.user"),
            "{why}"
        );
        assert!(
            why.contains("VoiceProvider \"builtin\" (of VoiceBackend \"assistant\")")
                && why.contains("capabilities.multiUserSupport"),
            "{why}"
        );
        assert!(
            why.contains("a backend whose provider has multiUserSupport")
                && why.contains("without spec.participants"),
            "{why}"
        );
        let one = misfit(1, "assistant", "builtin", false).unwrap_or_default();
        assert!(one.contains("lists 1 participant beside"), "{one}");
    }

    fn objects(
        participants: &[&str],
        multi_user: bool,
    ) -> (VoiceSession, VoiceBackend, VoiceProvider) {
        let participants: Vec<_> = participants
            .iter()
            .map(|id| serde_json::json!({ "userID": id }))
            .collect();
        let session = serde_json::from_value(serde_json::json!({
            "apiVersion": "voicebackends.dev/v1alpha1",
            "kind": "VoiceSession",
            "metadata": {"name": "call-1", "namespace": "team"},
            "spec": {
                "backendRef": {"name": "assistant"},
                "user": {"userID": "u-1"},
                "participants": participants,
            }
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let backend = serde_json::from_value(serde_json::json!({
            "apiVersion": "voicebackends.dev/v1alpha1",
            "kind": "VoiceBackend",
            "metadata": {"name": "assistant", "namespace": "team"},
            "spec": {
                "provider": "builtin",
                "pipeline": {"type": "S2S", "s2s": {"provider": "echo"}},
            }
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let provider = serde_json::from_value(serde_json::json!({
            "apiVersion": "voicebackends.dev/v1alpha1",
            "kind": "VoiceProvider",
            "metadata": {"name": "builtin"},
            "spec": {
                "capabilities": {"multiUserSupport": multi_user, "supportedCodecs": ["opus", "pcm"]},
                "worker": {"image": "voice-worker:dev"},
            }
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        (session, backend, provider)
    }

    #[test]
    fn the_api_objects_decide_it_and_a_missing_backend_or_provider_is_left_to_other_reasons() {
        let (session, backend, single) = objects(&["u-2"], false);
        assert!(misfit_of(&session, Some(&backend), Some(&single)).is_some());
        let (_, _, multi) = objects(&["u-2"], true);
        assert_eq!(misfit_of(&session, Some(&backend), Some(&multi)), None);
        assert_eq!(misfit_of(&session, None, Some(&single)), None);
        assert_eq!(misfit_of(&session, Some(&backend), None), None);
        let (alone, _, _) = objects(&[], false);
        assert_eq!(misfit_of(&alone, Some(&backend), Some(&single)), None);
    }
}
