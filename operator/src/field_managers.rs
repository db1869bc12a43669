//! The server-side-apply field managers, one per writer: who owns which status field.
//!
//! Kept apart from the controllers so that the shared [`crate::context::Context`] (which names
//! them on its event recorders) and each controller can import them without importing each
//! other.
//!
//! | manager | writes |
//! |---|---|
//! | [`PROVIDER`] | `VoiceProvider.status` except the counts |
//! | [`BACKEND`] | `VoiceBackend.status` except `pendingSessions`; the backend's children |
//! | [`SESSION_COUNTS`] | `VoiceProvider.status.sessionsInUse`/`sessionsPending`, `VoiceBackend.status.pendingSessions` |
//! | [`SESSION`] | `VoiceSession.status` lifecycle fields (phase, worker, endpoint, queue position, `Admitted`), the join-token Secrets |
//! | [`SESSION_LIVE`] | `VoiceSession.status` live fields (`connection`, `connections`, pipeline state, last activity, context, `Connected`/`Ready`) |

/// The provider controller.
pub const PROVIDER: &str = "voice-operator/provider";
/// The backend controller and the children it applies.
pub const BACKEND: &str = "voice-operator/backend";
/// The allocator's session counts on backends and providers.
pub const SESSION_COUNTS: &str = "voice-operator/session-counts";
/// The allocator's admission writes on sessions.
pub const SESSION: &str = "voice-operator/session";
/// The live-state writer (worker events) on sessions.
pub const SESSION_LIVE: &str = "voice-operator/session-live";
