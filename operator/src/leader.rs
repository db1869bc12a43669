//! Leader election on a `coordination.k8s.io/v1` Lease: only the holder runs controllers.
//!
//! Why not a crate: the maintained Lease crate (`kube-leader-election`) depends on kube 4,
//! and this workspace is on kube 5, whose runtime has no Lease helper. The algorithm is
//! client-go's: the holder renews `renewTime` every `renew_period`; another candidate takes
//! the lease only after `renewTime + leaseDurationSeconds` has passed. Every write is a
//! `replace` carrying the `resourceVersion` that was read, so two candidates racing for an
//! expired lease cannot both win: the API server refuses the second write with 409.
//!
//! A leader that cannot renew within `renew_deadline` (lease duration minus renew period)
//! stops at once; `main` then exits non-zero and Kubernetes restarts the process clean, which
//! is simpler and safer than stopping controllers mid-reconcile and starting them again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

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

/// Decides, from the lease's spec, whether `me` may hold the lease at `now`.
pub fn decide(spec: &LeaseSpec, me: &str, now: Timestamp) -> Decision {
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Acquire;
    }
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref());
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    match renewed {
        Some(MicroTime(at)) if at.saturating_add(duration).is_ok_and(|end| end > now) => {
            Decision::Wait { holder }
        }
        _ => Decision::Acquire,
    }
}

/// One attempt to take or renew the lease; true when this process holds it afterwards.
pub async fn try_acquire_or_renew(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool> {
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
            Ok(_) => Ok(true),
            // Another candidate created it first.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(Error::kube("create lease")(e)),
        };
    };
    let mut spec = lease.spec.clone().unwrap_or_default();
    match decide(&spec, &config.identity, now) {
        Decision::Wait { .. } => return Ok(false),
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
    lease.spec = Some(spec);
    // `lease` carries the resourceVersion we read: a concurrent writer makes this a 409.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
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
    loop {
        let attempt = tokio::time::Instant::now();
        match try_acquire_or_renew(&api, config).await {
            Ok(true) => {
                fence.renewed(attempt, config);
                return true;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
        }
        tokio::select! {
            () = cancel.cancelled() => return false,
            () = tokio::time::sleep(config.renew_period) => {}
        }
    }
}

/// Whether this process may still write as the leader.
///
/// The process exits when it loses the lease, but between the renew deadline passing and the
/// exit there is a window in which a stalled leader could still be mid-admission while another
/// replica already leads. Every admission write checks the fence first: it is open only until
/// the renew deadline after the last successful renewal (counted from when that renewal was
/// sent), which ends before any other candidate can take the lease. This is what keeps two
/// replicas from admitting at once.
#[derive(Clone, Debug, Default)]
pub struct Fence {
    valid_until: Arc<Mutex<Option<tokio::time::Instant>>>,
}

impl Fence {
    /// A closed fence (not leading yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// A fence that is always open, for a single process without election (tests, `dev`).
    pub fn always_open() -> Self {
        let fence = Self::default();
        *fence.lock() = Some(tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86_400));
        fence
    }

    /// Whether writes are still allowed now.
    pub fn is_open(&self) -> bool {
        self.lock()
            .is_some_and(|until| tokio::time::Instant::now() < until)
    }

    fn renewed(&self, attempt: tokio::time::Instant, config: &LeaseConfig) {
        let deadline = config.duration.saturating_sub(config.renew_period);
        *self.lock() = Some(attempt + deadline);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<tokio::time::Instant>> {
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
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(config.renew_period) => {}
        }
        let attempt = tokio::time::Instant::now();
        match try_acquire_or_renew(&api, config).await {
            Ok(true) => {
                last_renewal = tokio::time::Instant::now();
                fence.renewed(attempt, config);
            }
            Ok(false) => {
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

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("time")
    }

    #[test]
    fn the_holder_renews() {
        assert_eq!(decide(&spec("me", 0, 15), "me", at(100)), Decision::Renew);
    }

    #[test]
    fn a_live_lease_of_another_is_waited_for() {
        assert_eq!(
            decide(&spec("other", 100, 15), "me", at(110)),
            Decision::Wait {
                holder: "other".to_owned()
            }
        );
    }

    #[test]
    fn an_expired_or_released_lease_is_taken() {
        assert_eq!(
            decide(&spec("other", 100, 15), "me", at(116)),
            Decision::Acquire
        );
        assert_eq!(decide(&spec("", 100, 15), "me", at(101)), Decision::Acquire);
        assert_eq!(
            decide(&LeaseSpec::default(), "me", at(0)),
            Decision::Acquire
        );
    }
}
