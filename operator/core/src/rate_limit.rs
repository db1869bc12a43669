//! Admission rate limits (`admissionRateLimit` on a provider or a backend): how fast sessions
//! may be admitted, as a token bucket in its GCRA form (one number per bucket, the
//! theoretical arrival time, TAT).
//!
//! Pure: time is an argument (Unix milliseconds). The allocator keeps one [`RateLimits`],
//! rebuilt after a restart from the `status.admittedAt` of the sessions the API still has, so
//! the limit holds across operator restarts. `admittedAt` has whole seconds, so a rebuilt
//! admission is placed at the end of its second: the rebuilt buckets are at least as full as
//! the real ones were, and a restart never admits more than the limit allows.

use std::collections::HashMap;

use voice_crds::AdmissionRateLimit;

use crate::ledger::BackendKey;

/// Which bucket: a provider's (across all its backends) or one backend's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bucket {
    /// `VoiceProvider.spec.admissionRateLimit`.
    Provider(String),
    /// `VoiceBackend.spec.admissionRateLimit`.
    Backend(BackendKey),
}

/// The limits in force and each bucket's state.
#[derive(Clone, Debug, Default)]
pub struct RateLimits {
    limits: HashMap<Bucket, AdmissionRateLimit>,
    /// Theoretical arrival time per bucket, Unix milliseconds.
    tat: HashMap<Bucket, i64>,
}

/// Milliseconds between admissions at a sustained `limit`.
fn interval_ms(limit: AdmissionRateLimit) -> i64 {
    (1000 / i64::from(limit.admissions_per_second.max(1))).max(1)
}

/// How far ahead of the TAT an admission may come: the burst beyond the first.
fn tolerance_ms(limit: AdmissionRateLimit) -> i64 {
    i64::from(limit.burst.max(1) - 1) * interval_ms(limit)
}

impl RateLimits {
    /// Sets the limits in force (the specs may change at any time); buckets whose limit is
    /// gone are forgotten.
    pub fn set_limits(&mut self, limits: HashMap<Bucket, AdmissionRateLimit>) {
        self.tat.retain(|b, _| limits.contains_key(b));
        self.limits = limits;
    }

    /// Replays an admission that happened in the second starting at `second_ms` (a
    /// `status.admittedAt`), placed at the end of that second.
    pub fn replay(&mut self, buckets: &[Bucket], second_ms: i64) {
        self.consume(buckets, second_ms + 999);
    }

    /// Whether an admission into every one of `buckets` may happen at `now`; `Err` carries
    /// the earliest time it may.
    pub fn check(&self, buckets: &[Bucket], now: i64) -> Result<(), i64> {
        let mut earliest = now;
        for bucket in buckets {
            let (Some(limit), Some(tat)) = (self.limits.get(bucket), self.tat.get(bucket)) else {
                continue;
            };
            earliest = earliest.max(tat - tolerance_ms(*limit));
        }
        if earliest > now {
            Err(earliest)
        } else {
            Ok(())
        }
    }

    /// Records an admission into `buckets` at `now` (after [`RateLimits::check`] allowed it,
    /// or when replaying).
    pub fn consume(&mut self, buckets: &[Bucket], now: i64) {
        for bucket in buckets {
            let Some(limit) = self.limits.get(bucket) else {
                continue;
            };
            let tat = self.tat.entry(bucket.clone()).or_insert(now);
            *tat = (*tat).max(now) + interval_ms(*limit);
        }
    }

    /// The limit of `bucket`, if one is in force.
    pub fn limit(&self, bucket: &Bucket) -> Option<AdmissionRateLimit> {
        self.limits.get(bucket).copied()
    }
}

/// The limits the specs set: each provider's and each backend's `admissionRateLimit`.
pub fn limits_of<'a>(
    providers: impl IntoIterator<Item = &'a voice_crds::VoiceProvider>,
    backends: impl IntoIterator<Item = &'a voice_crds::VoiceBackend>,
) -> HashMap<Bucket, AdmissionRateLimit> {
    let mut limits = HashMap::new();
    for p in providers {
        if let Some(limit) = p.spec.admission_rate_limit {
            let name = p.metadata.name.clone().unwrap_or_default();
            limits.insert(Bucket::Provider(name), limit);
        }
    }
    for b in backends {
        if let Some(limit) = b.spec.admission_rate_limit {
            let key = BackendKey {
                namespace: b.metadata.namespace.clone().unwrap_or_default(),
                name: b.metadata.name.clone().unwrap_or_default(),
            };
            limits.insert(Bucket::Backend(key), limit);
        }
    }
    limits
}

/// Rebuilds the buckets from the admissions the API remembers: `(admittedAt in Unix
/// milliseconds, provider, backend)` of every session, in any order.
pub fn rebuild(
    limits: HashMap<Bucket, AdmissionRateLimit>,
    mut admitted: Vec<(i64, String, BackendKey)>,
) -> RateLimits {
    let mut rates = RateLimits::default();
    rates.set_limits(limits);
    admitted.sort();
    for (at, provider, backend) in admitted {
        rates.replay(&[Bucket::Provider(provider), Bucket::Backend(backend)], at);
    }
    rates
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: i32, burst: i32) -> AdmissionRateLimit {
        AdmissionRateLimit {
            admissions_per_second: per_second,
            burst,
        }
    }

    fn limits(entries: &[(Bucket, AdmissionRateLimit)]) -> RateLimits {
        let mut r = RateLimits::default();
        r.set_limits(entries.iter().cloned().collect());
        r
    }

    /// Admits greedily at each millisecond from 0 to `until`; returns the admission times.
    fn greedy(r: &mut RateLimits, buckets: &[Bucket], until: i64) -> Vec<i64> {
        let mut times = Vec::new();
        for now in 0..=until {
            while r.check(buckets, now).is_ok() {
                r.consume(buckets, now);
                times.push(now);
            }
        }
        times
    }

    #[test]
    fn a_burst_then_the_sustained_rate_and_never_more_in_any_second() {
        let p = Bucket::Provider("p".into());
        let mut r = limits(&[(p.clone(), limit(5, 3))]);
        let times = greedy(&mut r, std::slice::from_ref(&p), 3_000);
        assert_eq!(&times[..3], &[0, 0, 0], "the burst at once");
        assert_eq!(times[3], 200, "then one per interval");
        // Any window of one second holds at most burst + rate - 1 admissions.
        for start in 0..2_000 {
            let inside = times
                .iter()
                .filter(|t| (start..start + 1_000).contains(*t))
                .count();
            assert!(
                inside <= 7,
                "{inside} in [{start}, {start}+1000): {times:?}"
            );
        }
        assert_eq!(times.len(), 3 + 15, "3 at once, then 5/s for 3 s");
        assert_eq!(r.check(std::slice::from_ref(&p), 3_000), Err(3_200));
    }

    #[test]
    fn the_tightest_of_provider_and_backend_limits_holds_and_unlimited_buckets_pass() {
        let p = Bucket::Provider("p".into());
        let b = Bucket::Backend(BackendKey {
            namespace: "ns".into(),
            name: "b".into(),
        });
        let mut r = limits(&[(p.clone(), limit(10, 1)), (b.clone(), limit(2, 1))]);
        let both = [p.clone(), b.clone()];
        let times = greedy(&mut r, &both, 1_999);
        assert_eq!(times, [0, 500, 1_000, 1_500]);
        // Another backend of the provider only meets the provider's bucket.
        let other = [
            p,
            Bucket::Backend(BackendKey {
                namespace: "ns".into(),
                name: "c".into(),
            }),
        ];
        assert_eq!(r.check(&other, 2_000), Ok(()));
        let free = [Bucket::Provider("unlimited".into())];
        assert_eq!(r.check(&free, 0), Ok(()));
    }

    #[test]
    fn a_rebuilt_bucket_is_never_emptier_than_the_real_one() {
        let p = Bucket::Provider("p".into());
        let mut real = limits(&[(p.clone(), limit(4, 2))]);
        let times = greedy(&mut real, std::slice::from_ref(&p), 2_600);
        let mut rebuilt = limits(&[(p.clone(), limit(4, 2))]);
        for t in &times {
            rebuilt.replay(std::slice::from_ref(&p), t - t.rem_euclid(1_000));
        }
        for now in 2_600..4_000 {
            if rebuilt.check(std::slice::from_ref(&p), now).is_ok() {
                assert!(
                    real.check(std::slice::from_ref(&p), now).is_ok(),
                    "at {now}"
                );
            }
        }
        // A limit removed from the spec forgets its bucket.
        rebuilt.set_limits(HashMap::new());
        assert_eq!(rebuilt.check(std::slice::from_ref(&p), 0), Ok(()));
    }
}
