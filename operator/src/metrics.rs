//! The operator's Prometheus metrics: one registry, names per Prometheus conventions.

use std::time::Instant;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric of the operator process.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `voice_operator_reconciles_total{controller,result}`.
    pub reconciles: IntCounterVec,
    /// `voice_operator_reconcile_duration_seconds{controller}`.
    pub reconcile_duration: HistogramVec,
    /// `voice_workers{backend,state}`: worker pods by state (ready, draining, total, desired).
    pub workers: IntGaugeVec,
    /// `voice_health_checks_total{result}`.
    pub health_checks: IntCounterVec,
    /// `voice_health_check_duration_seconds`.
    pub health_check_duration: Histogram,
    /// `voice_operator_leader`: 1 while this process holds the lease.
    pub leader: IntGauge,
    /// `voice_session_admissions_total{result}`: admission attempts by outcome.
    pub admissions: IntCounterVec,
    /// `voice_session_admission_latency_seconds`: session creation to Active.
    pub admission_latency: Histogram,
    /// `voice_session_admission_duration_seconds`: one admission's steps (status, gRPC, Secret).
    pub admission_step_duration: Histogram,
    /// `voice_allocator_round_duration_seconds`: one allocation round, API writes included.
    pub allocator_round_duration: Histogram,
    /// `voice_operator_status_writes_dropped_total`: writes refused by a full status writer.
    pub status_writes_dropped: IntCounter,
    /// `voice_session_admissions_in_flight`.
    pub admissions_in_flight: IntGauge,
    /// `voice_sessions_ledger`: sessions holding a slot in the allocator's ledger.
    pub ledger_sessions: IntGauge,
    /// `voice_provider_sessions{provider,state}`: in_use and pending per provider.
    pub provider_sessions: IntGaugeVec,
    /// `voice_sessions_ended_total{reason}`.
    pub sessions_ended: IntCounterVec,
    /// `voice_sessions_worker_lost_total`: sessions whose worker died while they held it.
    pub sessions_lost: IntCounter,
    /// `voice_session_orphans_released_total`: worker reservations the API did not know.
    pub orphans_released: IntCounter,
    /// `voice_session_live_status_writes_total`: coalesced live-status writes.
    pub live_status_writes: IntCounter,
    /// `voice_session_events_dropped_total{reason}`: worker events for sessions that worker
    /// does not hold, or naming a participant the session does not list.
    pub session_events_dropped: IntCounterVec,
    /// `voice_provider_session_limit{provider}`: `maxConcurrentSessions` (0 = unlimited).
    pub provider_session_limit: IntGaugeVec,
    /// `voice_sessions_waiting{backend,reason}`: pending sessions by what blocks them.
    pub sessions_waiting: IntGaugeVec,
    /// `voice_backend_health{backend,status}`: 1 for the backend's current health status.
    pub backend_health: IntGaugeVec,
    /// `voice_backend_latency_target_seconds{backend}`: `pipeline.latencyTarget`.
    pub backend_latency_target: GaugeVec,
    /// `voice_session_waits_total{reason}`: sessions that started waiting, by reason (a
    /// counter, so a wait shorter than a scrape interval still leaves a trace).
    pub session_waits: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "voice_operator_reconciles_total",
                "Reconciles by controller and result.",
            ),
            &["controller", "result"],
        )
        .expect("valid metric");
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "voice_operator_reconcile_duration_seconds",
                "Time one reconcile took.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["controller"],
        )
        .expect("valid metric");
        let workers = IntGaugeVec::new(
            Opts::new("voice_workers", "Worker pods of a backend by state."),
            &["backend", "state"],
        )
        .expect("valid metric");
        let health_checks = IntCounterVec::new(
            Opts::new(
                "voice_health_checks_total",
                "Worker health checks by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let health_check_duration = Histogram::with_opts(
            HistogramOpts::new(
                "voice_health_check_duration_seconds",
                "Time one worker health check (Health/Check + GetStats) took.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("valid metric");
        let leader = IntGauge::new("voice_operator_leader", "1 while this process leads.")
            .expect("valid metric");
        let admissions = IntCounterVec::new(
            Opts::new(
                "voice_session_admissions_total",
                "Session admission attempts by result (admitted, refused, retry, not_started, held).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let admission_latency = Histogram::with_opts(
            HistogramOpts::new(
                "voice_session_admission_latency_seconds",
                "Time from a VoiceSession's creation to its admission (queueing included).",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        )
        .expect("valid metric");
        let admission_step_duration = Histogram::with_opts(
            HistogramOpts::new(
                "voice_session_admission_duration_seconds",
                "Time one admission's steps took (reservation, then the Active status beside the token Secret).",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        let allocator_round_duration = Histogram::with_opts(
            HistogramOpts::new(
                "voice_allocator_round_duration_seconds",
                "One allocation round (planning, and the status writes it waits for).",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("valid metric");
        let status_writes_dropped = IntCounter::new(
            "voice_operator_status_writes_dropped_total",
            "Session status and count writes the allocator's status writer refused because its queue was full (asked again later).",
        )
        .expect("valid metric");
        let admissions_in_flight = IntGauge::new(
            "voice_session_admissions_in_flight",
            "Admissions running now.",
        )
        .expect("valid metric");
        let ledger_sessions = IntGauge::new(
            "voice_sessions_ledger",
            "Sessions holding a slot in the allocator's ledger.",
        )
        .expect("valid metric");
        let provider_sessions = IntGaugeVec::new(
            Opts::new(
                "voice_provider_sessions",
                "Sessions of a provider by state (in_use, pending).",
            ),
            &["provider", "state"],
        )
        .expect("valid metric");
        let sessions_ended = IntCounterVec::new(
            Opts::new("voice_sessions_ended_total", "Sessions ended by reason."),
            &["reason"],
        )
        .expect("valid metric");
        let sessions_lost = IntCounter::new(
            "voice_sessions_worker_lost_total",
            "Sessions whose worker died while holding them.",
        )
        .expect("valid metric");
        let orphans_released = IntCounter::new(
            "voice_session_orphans_released_total",
            "Worker reservations released because no session in the API held them.",
        )
        .expect("valid metric");
        let live_status_writes = IntCounter::new(
            "voice_session_live_status_writes_total",
            "Coalesced writes of sessions' live status (connection, pipeline state, context).",
        )
        .expect("valid metric");
        let provider_session_limit = IntGaugeVec::new(
            Opts::new(
                "voice_provider_session_limit",
                "A provider's maxConcurrentSessions (0 means unlimited).",
            ),
            &["provider"],
        )
        .expect("valid metric");
        let sessions_waiting = IntGaugeVec::new(
            Opts::new(
                "voice_sessions_waiting",
                "Pending sessions by backend and the reason they wait (ProviderLimit, BackendLimit, ...).",
            ),
            &["backend", "reason"],
        )
        .expect("valid metric");
        let backend_health = IntGaugeVec::new(
            Opts::new(
                "voice_backend_health",
                "1 for a backend's current health status (Unknown, Healthy, Degraded, Unhealthy), 0 for the others.",
            ),
            &["backend", "status"],
        )
        .expect("valid metric");
        let backend_latency_target = GaugeVec::new(
            Opts::new(
                "voice_backend_latency_target_seconds",
                "A backend's pipeline.latencyTarget.",
            ),
            &["backend"],
        )
        .expect("valid metric");
        let session_waits = IntCounterVec::new(
            Opts::new(
                "voice_session_waits_total",
                "Sessions that started waiting for admission, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let session_events_dropped = IntCounterVec::new(
            Opts::new(
                "voice_session_events_dropped_total",
                "Session events dropped because the sending worker does not hold the session or names a participant the session does not list, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for c in [
            Box::new(session_waits.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(session_events_dropped.clone()),
            Box::new(provider_session_limit.clone()),
            Box::new(sessions_waiting.clone()),
            Box::new(backend_health.clone()),
            Box::new(backend_latency_target.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        for c in [
            Box::new(admissions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(admission_latency.clone()),
            Box::new(admission_step_duration.clone()),
            Box::new(allocator_round_duration.clone()),
            Box::new(status_writes_dropped.clone()),
            Box::new(admissions_in_flight.clone()),
            Box::new(ledger_sessions.clone()),
            Box::new(provider_sessions.clone()),
            Box::new(sessions_ended.clone()),
            Box::new(sessions_lost.clone()),
            Box::new(orphans_released.clone()),
            Box::new(live_status_writes.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_duration.clone()),
            Box::new(workers.clone()),
            Box::new(health_checks.clone()),
            Box::new(health_check_duration.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            reconciles,
            reconcile_duration,
            workers,
            health_checks,
            health_check_duration,
            leader,
            admissions,
            admission_latency,
            admission_step_duration,
            allocator_round_duration,
            status_writes_dropped,
            admissions_in_flight,
            ledger_sessions,
            provider_sessions,
            sessions_ended,
            sessions_lost,
            orphans_released,
            live_status_writes,
            session_events_dropped,
            provider_session_limit,
            sessions_waiting,
            backend_health,
            backend_latency_target,
            session_waits,
        }
    }

    /// Starts timing a reconcile of `controller`; the duration is recorded when the guard
    /// drops, so early returns and errors are timed too.
    pub fn reconcile_timer(&self, controller: &'static str) -> ReconcileTimer {
        ReconcileTimer {
            histogram: self.reconcile_duration.with_label_values(&[controller]),
            start: Instant::now(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Records a reconcile's duration on drop.
pub struct ReconcileTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_records_on_drop_and_names_render() {
        let m = Metrics::new();
        drop(m.reconcile_timer("backend"));
        m.reconciles.with_label_values(&["backend", "ok"]).inc();
        m.health_checks.with_label_values(&["ok"]).inc();
        m.workers.with_label_values(&["ns/b", "ready"]).set(2);
        let text = m.render();
        for name in [
            "voice_operator_reconciles_total{controller=\"backend\",result=\"ok\"} 1",
            "voice_operator_reconcile_duration_seconds_count{controller=\"backend\"} 1",
            "voice_workers{backend=\"ns/b\",state=\"ready\"} 2",
            "voice_health_checks_total{result=\"ok\"} 1",
            "voice_operator_leader 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
