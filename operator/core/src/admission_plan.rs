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
use crate::rate_limit::{Bucket, RateLimits};

/// The Namespace annotation that caps the sessions active at once in that namespace, across
/// all its backends (a tenant's quota): a whole number, 0 or absent meaning unlimited. On the
/// Namespace object, which tenants usually cannot edit, so the platform team sets it.
pub const NAMESPACE_QUOTA_ANNOTATION: &str = "voicebackends.dev/max-active-sessions";

/// Caps that span backends: per provider (`maxConcurrentSessions`) and per namespace (the
/// quota annotation); 0 or absent means unlimited.
#[derive(Clone, Debug, Default)]
pub struct Caps {
    /// Provider name → `maxConcurrentSessions`.
    pub providers: HashMap<String, u32>,
    /// Namespace → its quota.
    pub namespaces: HashMap<String, u32>,
}

/// Why a session is not admitted now. Each is the `Admitted=False` condition reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Blocked {
    /// The provider's `maxConcurrentSessions` is reached across all its backends.
    ProviderLimit,
    /// The namespace's session quota (annotation [`NAMESPACE_QUOTA_ANNOTATION`]) is reached
    /// across all its backends.
    NamespaceQuota,
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
    /// The provider's or the backend's `admissionRateLimit` allows no admission yet.
    RateLimited,
    /// The session's `spec.audio` (or its backend's) does not fit its transport, provider
    /// or worker; it waits, outside the queue, until the spec or the provider changes.
    AudioFormatNotSupported,
    /// The session lists `spec.participants` but its provider lacks `multiUserSupport`; it
    /// waits, outside the queue, until the provider gains the capability.
    MultiUserNotSupported,
    /// The session's `spec.transport` is not one its backend serves (`livekit` on a backend
    /// without `spec.liveKit`, or another transport on a backend with it); it waits, outside
    /// the queue, until the backend changes (the transport is immutable).
    TransportNotSupported,
    /// A userID of the session is the identity the agent joins LiveKit rooms with; it waits,
    /// outside the queue (userIDs are immutable).
    UserIDReserved,
    /// The LiveKit room the session would get by default (`<namespace>-<name>`) is longer
    /// than a room name may be; it waits, outside the queue, until `spec.room` names one.
    RoomNameTooLong,
    /// Another session meets in the same room of the same LiveKit server (a held one, or
    /// an older pending one); it waits, outside the queue, until that session ends.
    RoomInUse,
}

impl Blocked {
    /// The stable CamelCase reason used in conditions and Events.
    pub fn reason(self) -> &'static str {
        match self {
            Blocked::ProviderLimit => "ProviderLimit",
            Blocked::NamespaceQuota => "NamespaceQuota",
            Blocked::BackendLimit => "BackendLimit",
            Blocked::NoWorkerCapacity => "NoWorkerCapacity",
            Blocked::BackendNotReady => "BackendNotReady",
            Blocked::BackendNotFound => "BackendNotFound",
            Blocked::BackendNotAccepted => "BackendNotAccepted",
            Blocked::RateLimited => "RateLimited",
            Blocked::AudioFormatNotSupported => crate::reason::AUDIO_FORMAT_NOT_SUPPORTED,
            Blocked::MultiUserNotSupported => crate::reason::MULTI_USER_NOT_SUPPORTED,
            Blocked::TransportNotSupported => crate::reason::TRANSPORT_NOT_SUPPORTED,
            Blocked::UserIDReserved => crate::reason::USER_ID_RESERVED,
            Blocked::RoomNameTooLong => crate::reason::ROOM_NAME_TOO_LONG,
            Blocked::RoomInUse => crate::reason::ROOM_IN_USE,
        }
    }

    /// Whether this is a misfit's reason: the session cannot be served as it is, so it waits
    /// outside the queue and asks for no worker.
    pub fn is_misfit(self) -> bool {
        MISFITS.contains(&self)
    }
}

/// The reasons of [`Misfit`]s.
const MISFITS: [Blocked; 6] = [
    Blocked::AudioFormatNotSupported,
    Blocked::MultiUserNotSupported,
    Blocked::TransportNotSupported,
    Blocked::UserIDReserved,
    Blocked::RoomNameTooLong,
    Blocked::RoomInUse,
];

/// Why a session cannot be served as it is, with the condition message naming the field and
/// the fix. Such a session waits outside the queue: it takes no slot, holds back no later
/// session and asks for no worker, since no amount of capacity would admit it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Misfit {
    /// From the operator's `session_audio::misfit`.
    AudioFormat(String),
    /// From the operator's `session_participants::misfit`.
    MultiUser(String),
    /// From the operator's `session_livekit::misfit`: the transport does not fit the backend.
    Transport(String),
    /// From the operator's `session_livekit::misfit`: a userID is the agent's.
    UserIdReserved(String),
    /// From the operator's `session_livekit::misfit`: the default room name is too long.
    RoomNameTooLong(String),
    /// From the operator's `session_livekit::RoomClaims`: another session meets in the room.
    RoomInUse(String),
}

impl Misfit {
    /// The reason the session waits with.
    pub fn blocked(&self) -> Blocked {
        match self {
            Misfit::AudioFormat(_) => Blocked::AudioFormatNotSupported,
            Misfit::MultiUser(_) => Blocked::MultiUserNotSupported,
            Misfit::Transport(_) => Blocked::TransportNotSupported,
            Misfit::UserIdReserved(_) => Blocked::UserIDReserved,
            Misfit::RoomNameTooLong(_) => Blocked::RoomNameTooLong,
            Misfit::RoomInUse(_) => Blocked::RoomInUse,
        }
    }

    /// The condition message.
    pub fn detail(&self) -> &str {
        match self {
            Misfit::AudioFormat(d)
            | Misfit::MultiUser(d)
            | Misfit::Transport(d)
            | Misfit::UserIdReserved(d)
            | Misfit::RoomNameTooLong(d)
            | Misfit::RoomInUse(d) => d,
        }
    }

    /// Whether an `Admitted=False` reason is one of a misfit's: such a session needs no worker.
    pub fn is_reason(reason: &str) -> bool {
        MISFITS.iter().any(|b| b.reason() == reason)
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
    /// Why it cannot be served as it is, if it cannot.
    pub misfit: Option<Misfit>,
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
    /// The rate limits' buckets after this round's admissions.
    pub rates: RateLimits,
    /// When a rate-limited session may next be admitted (Unix milliseconds), if one waits.
    pub next_due: Option<i64>,
}

/// Decides an admission round at `now_ms` (Unix milliseconds) within `caps`; `rates` holds
/// the admission rate limits, which every admission of the round consumes in queue order.
pub fn plan(
    ledger: &Ledger,
    pending: &[PendingSession],
    backends: &HashMap<BackendKey, BackendView>,
    caps: &Caps,
    rates: &RateLimits,
    now_ms: i64,
) -> Plan {
    let mut order: Vec<&PendingSession> = pending
        .iter()
        .filter(|p| ledger.slot(&p.key).is_none())
        .collect();
    order.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.key.cmp(&b.key)));

    // Every session in `order` holds no slot, so the counts are all the plan reads.
    let mut ledger = ledger.counts_only();
    let mut plan = Plan {
        rates: rates.clone(),
        ..Plan::default()
    };
    let mut positions: HashMap<&BackendKey, u32> = HashMap::new();
    for session in order {
        let decided = decide(&ledger, session, backends, caps).and_then(|slot| {
            let buckets = [
                Bucket::Provider(slot.provider.clone()),
                Bucket::Backend(slot.backend.clone()),
            ];
            match plan.rates.check(&buckets, now_ms) {
                Ok(()) => {
                    plan.rates.consume(&buckets, now_ms);
                    Ok(slot)
                }
                Err(due) => {
                    plan.next_due = Some(plan.next_due.map_or(due, |d| d.min(due)));
                    Err(Blocked::RateLimited)
                }
            }
        });
        match decided {
            Ok(slot) => {
                ledger.hold(session.key.clone(), slot.clone());
                plan.admit.push((session.key.clone(), slot));
            }
            Err(blocked) if blocked.is_misfit() => plan.waiting.push(Waiting {
                key: session.key.clone(),
                blocked,
                queue_position: None,
                detail: session.misfit.as_ref().map(|m| m.detail().to_owned()),
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
    caps: &Caps,
) -> Result<Slot, Blocked> {
    let backend = backends
        .get(&session.backend)
        .ok_or(Blocked::BackendNotFound)?;
    if !backend.accepted {
        return Err(Blocked::BackendNotAccepted);
    }
    if let Some(misfit) = &session.misfit {
        return Err(misfit.blocked());
    }
    let provider_cap = caps.providers.get(&backend.provider).copied().unwrap_or(0);
    if provider_cap > 0 && ledger.provider_count(&backend.provider) >= provider_cap {
        return Err(Blocked::ProviderLimit);
    }
    let namespace = &session.backend.namespace;
    let quota = caps.namespaces.get(namespace).copied().unwrap_or(0);
    if quota > 0 && ledger.namespace_count(namespace) >= quota {
        return Err(Blocked::NamespaceQuota);
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
