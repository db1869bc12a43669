//! Leader election on a `coordination.k8s.io/v1` Lease: only the holder runs controllers.
//!
//! Why not a crate: `kube-leader-election` depends on kube 4, and `kube-lease-manager` (kube 5)
//! reports whether this process holds the lock, not the Lease's transition count it acquired
//! (this leader's epoch), and judges expiry by the holder's `renewTime` against the local
//! clock (docs/decisions.md, "Fencing a paused leader"). The algorithm is client-go's: the holder renews `renewTime` every
//! `renew_period`; another candidate takes the lease only once it has seen the Lease record
//! unchanged for `leaseDurationSeconds`, timed by its own monotonic clock from when it first
//! saw that record, so no two machines' wall clocks are ever compared. Every write is a
//! `replace` carrying the `resourceVersion` that was read, so two candidates racing for an
//! expired lease cannot both win: the API server refuses the second write with 409.
//!
//! A leader that cannot renew within `renew_deadline` (lease duration minus renew period)
//! stops at once; `main` then exits non-zero and Kubernetes restarts the process clean, which
//! is simpler and safer than stopping controllers mid-reconcile and starting them again. A
//! leader that was paused past its lease cannot rely on noticing in time, so it is fenced
//! twice more: its own [`Fence`] closes by the monotonic clock, and every worker its
//! successor has listed refuses its epoch ([`voice_proto::leader_epoch`]).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use voice_proto::leader_epoch::LeaderEpoch;

use crate::error::{Error, Result};

/// How this process competes for the lease.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This candidate's identity (pod name plus a random suffix).
    pub identity: String,
    /// `leaseDurationSeconds`: how long a lease holds without renewal.
    pub duration: Duration,
    /// How often the holder renews (and a candidate retries).
    pub renew_period: Duration,
}

/// What to do with the lease as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// It is free or expired: take it (counting one more transition).
    Acquire,
    /// Someone else holds it and it has not expired.
    Wait {
        /// The current holder.
        holder: String,
    },
}

/// Decides, from the lease's spec and whether its record has gone unrenewed for a whole lease
/// duration (by [`Observer`]), whether `me` may hold the lease.
pub fn decide(spec: &LeaseSpec, me: &str, expired: bool) -> Decision {
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() || expired {
        return Decision::Acquire;
    }
    Decision::Wait { holder }
}

/// When this process last saw the Lease record change, by its own monotonic clock.
///
/// client-go's `observedTime`: a record that stays the same for `leaseDurationSeconds` of
/// local time has expired, whatever the `renewTime` written by the holder's clock says.
#[derive(Debug, Default)]
pub struct Observer {
    last: Option<(Record, Instant)>,
}

/// The parts of a Lease that change on every renewal or transition.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renewed: Option<MicroTime>,
    acquired: Option<MicroTime>,
    transitions: Option<i32>,
}

impl Observer {
    /// Notes `spec` as seen at `now`; true when the same record has been seen for at least
    /// its lease duration.
    pub fn expired(&mut self, spec: &LeaseSpec, now: Instant) -> bool {
        let record = Record {
            holder: spec.holder_identity.clone(),
            renewed: spec.renew_time.clone(),
            acquired: spec.acquire_time.clone(),
            transitions: spec.lease_transitions,
        };
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        );
        match &self.last {
            Some((seen, since)) if *seen == record => now.duration_since(*since) >= duration,
            _ => {
                self.last = Some((record, now));
                false
            }
        }
    }
}

/// One attempt to take or renew the lease: `Some(leaseTransitions)` when this process holds
/// it afterwards.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observer: &mut Observer,
) -> Result<Option<u64>> {
    // Written for humans reading the Lease; no decision depends on these wall-clock times.
    let now = Timestamp::now();
    let duration_secs = i32::try_from(config.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api
        .get_opt(&config.name)
        .await
        .map_err(Error::kube("get lease"))?
    else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Some(0)),
            // Another candidate created it first.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
            Err(e) => Err(Error::kube("create lease")(e)),
        };
    };
    let mut spec = lease.spec.clone().unwrap_or_default();
    let expired = observer.expired(&spec, Instant::now());
    match decide(&spec, &config.identity, expired) {
        Decision::Wait { .. } => return Ok(None),
        Decision::Renew => {
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = Some(duration_secs);
        }
        Decision::Acquire => {
            spec.holder_identity = Some(config.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = Some(duration_secs);
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
    }
    let transitions = u64::try_from(spec.lease_transitions.unwrap_or(0)).unwrap_or(0);
    lease.spec = Some(spec);
    // `lease` carries the resourceVersion we read: a concurrent writer makes this a 409.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(Some(transitions)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(Error::kube("update lease")(e)),
    }
}

/// Waits until this process holds the lease (or `cancel` fires: then `false`).
pub async fn acquire(
    client: Client,
    config: &LeaseConfig,
    fence: &Fence,
    cancel: &CancellationToken,
) -> bool {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut observer = Observer::default();
    loop {
        let attempt = Instant::now();
        match try_acquire_or_renew(&api, config, &mut observer).await {
            Ok(Some(transitions)) => {
                fence.lead(LeaderEpoch {
                    epoch: transitions,
                    leader: config.identity.clone(),
                });
                fence.renewed(attempt, config);
                return true;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
        }
        tokio::select! {
            () = cancel.cancelled() => return false,
            () = tokio::time::sleep(config.renew_period) => {}
        }
    }
}

/// Whether this process may still write as the leader, and as which epoch.
///
/// The process exits when it loses the lease, but between the renew deadline passing and the
/// exit there is a window in which a stalled leader could still be mid-admission while another
/// replica already leads. Every admission write checks the fence first: it is open only until
/// the renew deadline after the last successful renewal (counted from when that renewal was
/// sent), which ends before any other candidate can take the lease. A check can still pass
/// just before a pause, so every call to a worker also carries the epoch, which the worker
/// refuses once a newer leader has spoken to it; such a refusal deposes this process.
#[derive(Clone, Debug, Default)]
pub struct Fence {
    valid_until: Arc<Mutex<Option<Instant>>>,
    epoch: Arc<OnceLock<LeaderEpoch>>,
    deposed: CancellationToken,
}

impl Fence {
    /// A closed fence (not leading yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// A fence that is always open, for a single process without election (tests, `dev`);
    /// its calls carry no epoch.
    pub fn always_open() -> Self {
        let fence = Self::default();
        *fence.lock() = Some(Instant::now() + Duration::from_secs(100 * 365 * 86_400));
        fence
    }

    /// Whether writes are still allowed now.
    pub fn is_open(&self) -> bool {
        !self.deposed.is_cancelled() && self.lock().is_some_and(|until| Instant::now() < until)
    }

    /// The epoch this process leads in, once it has acquired the lease.
    pub fn epoch(&self) -> Option<&LeaderEpoch> {
        self.epoch.get()
    }

    /// Closes the fence for good: a worker has followed a newer leader.
    pub fn depose(&self, why: &str) {
        if !self.deposed.is_cancelled() {
            tracing::error!(%why, "a newer leader exists; no more writes");
        }
        *self.lock() = None;
        self.deposed.cancel();
    }

    /// Fires once [`Fence::depose`] has been called.
    pub fn deposed(&self) -> CancellationToken {
        self.deposed.clone()
    }

    fn lead(&self, epoch: LeaderEpoch) {
        let _ = self.epoch.set(epoch);
    }

    fn renewed(&self, attempt: Instant, config: &LeaseConfig) {
        let deadline = config.duration.saturating_sub(config.renew_period);
        *self.lock() = Some(attempt + deadline);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.valid_until.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Renews the lease until `cancel` fires (returns `Ok`) or leadership is lost (returns `Err`
/// with why). Lost means: another holder took it, or no renewal succeeded within the renew
/// deadline.
pub async fn hold(
    client: Client,
    config: &LeaseConfig,
    fence: &Fence,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let deadline = config.duration.saturating_sub(config.renew_period);
    let mut last_renewal = Instant::now();
    let mut observer = Observer::default();
    let deposed = fence.deposed();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = deposed.cancelled() => {
                return Err("a worker follows a newer leader epoch".to_owned());
            }
            () = tokio::time::sleep(config.renew_period) => {}
        }
        let attempt = Instant::now();
        match try_acquire_or_renew(&api, config, &mut observer).await {
            Ok(Some(_)) => {
                last_renewal = Instant::now();
                fence.renewed(attempt, config);
            }
            Ok(None) => {
                return Err(format!(
                    "lease {} is held by another candidate",
                    config.name
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed");
                if last_renewal.elapsed() >= deadline {
                    return Err(format!("lease not renewed within {deadline:?}: {e}"));
                }
            }
        }
    }
}

/// Gives the lease up on a clean shutdown, so a standby takes over at once instead of after
/// the lease duration. Best effort: an error only delays the takeover.
pub async fn release(client: Client, config: &LeaseConfig) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    if let Err(e) = api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        tracing::warn!(error = %e, "could not release the lease");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).expect("time"))),
            lease_duration_seconds: Some(secs),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn the_holder_renews() {
        assert_eq!(decide(&spec("me", 0, 15), "me", false), Decision::Renew);
    }

    #[test]
    fn a_live_lease_of_another_is_waited_for() {
        assert_eq!(
            decide(&spec("other", 100, 15), "me", false),
            Decision::Wait {
                holder: "other".to_owned()
            }
        );
    }

    #[test]
    fn an_expired_or_released_lease_is_taken() {
        assert_eq!(
            decide(&spec("other", 100, 15), "me", true),
            Decision::Acquire
        );
        assert_eq!(decide(&spec("", 100, 15), "me", false), Decision::Acquire);
        assert_eq!(
            decide(&LeaseSpec::default(), "me", false),
            Decision::Acquire
        );
    }

    #[test]
    fn expiry_is_timed_from_when_the_record_was_seen_not_from_its_renew_time() {
        let mut observer = Observer::default();
        let start = Instant::now();
        // Renewed "long ago" by the holder's clock: a skewed clock must not make it expired.
        let old = spec("other", 0, 15);
        assert!(!observer.expired(&old, start));
        assert!(!observer.expired(&old, start + Duration::from_secs(14)));
        // A renewal resets the local timer.
        let renewed = spec("other", 1, 15);
        assert!(!observer.expired(&renewed, start + Duration::from_secs(14)));
        assert!(!observer.expired(&renewed, start + Duration::from_secs(28)));
        assert!(observer.expired(&renewed, start + Duration::from_secs(29)));
    }

    #[test]
    fn a_deposed_fence_stays_closed() {
        let fence = Fence::always_open();
        assert!(fence.is_open());
        fence.depose("test");
        assert!(!fence.is_open());
        assert!(fence.deposed().is_cancelled());
    }
}
