//! Admission decisions: which pending sessions get a slot now, and why the others wait.
//!
//! Pure: the session controller gathers the views below from its caches, asks [`plan`], then
//! carries out the admissions (reserve on the worker, token Secret, status) and writes the
//! waiting reasons and queue positions. Sessions are considered in creation order and each is
//! admitted if every cap still holds after the ones before it, which is first come, first
//! served for every cap a session needs: a later session never takes a slot an earlier one of
//! the same backend was waiting for.

use std::collections::HashMap;

use voice_crds::Placement;

use crate::ledger::{BackendKey, Ledger, SessionKey, Slot};
use crate::placement::{self, WorkerView};

/// Why a session is not admitted now. Each is the `Admitted=False` condition reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Blocked {
    /// The provider's `maxConcurrentSessions` is reached across all its backends.
    ProviderLimit,
    /// The backend's `maxSessions` is reached.
    BackendLimit,
    /// Every ready, non-draining worker is full.
    NoWorkerCapacity,
    /// The backend has no ready worker yet.
    BackendNotReady,
    /// The backend does not exist.
    BackendNotFound,
    /// The backend exists but is not Accepted.
    BackendNotAccepted,
    /// The session's `spec.audio` (or its backend's) does not fit its transport, provider
    /// or worker; it waits, outside the queue, until the spec or the provider changes.
    AudioFormatNotSupported,
}

impl Blocked {
    /// The stable CamelCase reason used in conditions and Events.
    pub fn reason(self) -> &'static str {
        match self {
            Blocked::ProviderLimit => "ProviderLimit",
            Blocked::BackendLimit => "BackendLimit",
            Blocked::NoWorkerCapacity => "NoWorkerCapacity",
            Blocked::BackendNotReady => "BackendNotReady",
            Blocked::BackendNotFound => "BackendNotFound",
            Blocked::BackendNotAccepted => "BackendNotAccepted",
            Blocked::AudioFormatNotSupported => crate::session_audio::REASON,
        }
    }
}

/// A backend as the allocator sees it.
#[derive(Clone, Debug)]
pub struct BackendView {
    /// VoiceProvider name.
    pub provider: String,
    /// Whether the backend is Accepted.
    pub accepted: bool,
    /// `spec.maxSessions` (0 = unlimited).
    pub max_sessions: u32,
    /// Placement policy.
    pub placement: Placement,
    /// Its workers; `held` is ignored and taken from the ledger.
    pub workers: Vec<WorkerView>,
}

/// A session waiting for admission.
#[derive(Clone, Debug)]
pub struct PendingSession {
    /// The session.
    pub key: SessionKey,
    /// Its backend (same namespace).
    pub backend: BackendKey,
    /// Creation time (any monotone number, e.g. Unix milliseconds): the queue order.
    pub created: i64,
    /// Why its audio format cannot be served (from [`crate::session_audio::misfit`]).
    pub audio_misfit: Option<String>,
}

/// A session that waits, with why and where it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// The session.
    pub key: SessionKey,
    /// The cap or state that holds it back.
    pub blocked: Blocked,
    /// 1-based position among its backend's waiting sessions; `None` for a session that
    /// cannot be admitted as it is, which waits outside the queue.
    pub queue_position: Option<u32>,
    /// The condition message when the generic one for `blocked` would not say enough.
    pub detail: Option<String>,
}

/// The outcome of one admission round.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Sessions to admit now, with their slots, in queue order.
    pub admit: Vec<(SessionKey, Slot)>,
    /// Sessions that keep waiting.
    pub waiting: Vec<Waiting>,
}

/// Decides an admission round. `provider_caps` maps a provider to `maxConcurrentSessions`
/// (0 or absent = unlimited).
pub fn plan(
    ledger: &Ledger,
    pending: &[PendingSession],
    backends: &HashMap<BackendKey, BackendView>,
    provider_caps: &HashMap<String, u32>,
) -> Plan {
    let mut order: Vec<&PendingSession> = pending
        .iter()
        .filter(|p| ledger.slot(&p.key).is_none())
        .collect();
    order.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.key.cmp(&b.key)));

    let mut ledger = ledger.clone();
    let mut plan = Plan::default();
    let mut positions: HashMap<&BackendKey, u32> = HashMap::new();
    for session in order {
        match decide(&ledger, session, backends, provider_caps) {
            Ok(slot) => {
                ledger.hold(session.key.clone(), slot.clone());
                plan.admit.push((session.key.clone(), slot));
            }
            Err(Blocked::AudioFormatNotSupported) => plan.waiting.push(Waiting {
                key: session.key.clone(),
                blocked: Blocked::AudioFormatNotSupported,
                queue_position: None,
                detail: session.audio_misfit.clone(),
            }),
            Err(blocked) => {
                let position = positions.entry(&session.backend).or_default();
                *position += 1;
                plan.waiting.push(Waiting {
                    key: session.key.clone(),
                    blocked,
                    queue_position: Some(*position),
                    detail: None,
                });
            }
        }
    }
    plan
}

fn decide(
    ledger: &Ledger,
    session: &PendingSession,
    backends: &HashMap<BackendKey, BackendView>,
    provider_caps: &HashMap<String, u32>,
) -> Result<Slot, Blocked> {
    let backend = backends
        .get(&session.backend)
        .ok_or(Blocked::BackendNotFound)?;
    if !backend.accepted {
        return Err(Blocked::BackendNotAccepted);
    }
    if session.audio_misfit.is_some() {
        return Err(Blocked::AudioFormatNotSupported);
    }
    let provider_cap = provider_caps.get(&backend.provider).copied().unwrap_or(0);
    if provider_cap > 0 && ledger.provider_count(&backend.provider) >= provider_cap {
        return Err(Blocked::ProviderLimit);
    }
    if backend.max_sessions > 0 && ledger.backend_count(&session.backend) >= backend.max_sessions {
        return Err(Blocked::BackendLimit);
    }
    let workers: Vec<WorkerView> = backend
        .workers
        .iter()
        .map(|w| WorkerView {
            held: ledger.worker_count(&session.backend, &w.name),
            ..w.clone()
        })
        .collect();
    if !workers.iter().any(|w| w.ready && !w.draining) {
        return Err(Blocked::BackendNotReady);
    }
    let worker = placement::pick(backend.placement, &workers).ok_or(Blocked::NoWorkerCapacity)?;
    Ok(Slot {
        provider: backend.provider.clone(),
        backend: session.backend.clone(),
        worker: worker.name.clone(),
    })
}

#[cfg(test)]
mod tests;
