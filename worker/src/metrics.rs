//! The worker's Prometheus metrics: one registry per process, rendered by `/metrics`.

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the worker exports, registered in one private registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    sessions: IntGaugeVec,
    capacity: IntGauge,
    draining: IntGauge,
    reservations: IntCounterVec,
    events_lagged: IntCounter,
}

/// The error of building the registry: only a programming error (a duplicate or
/// malformed metric name) can cause it.
pub type MetricsError = prometheus::Error;

impl Metrics {
    /// Builds and registers the worker's metrics.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let sessions = IntGaugeVec::new(
            Opts::new(
                "voice_worker_sessions",
                "Sessions holding a slot on this worker, by state.",
            ),
            &["state"],
        )?;
        let capacity = IntGauge::new(
            "voice_worker_capacity",
            "Most sessions this worker holds at once.",
        )?;
        let draining = IntGauge::new(
            "voice_worker_draining",
            "1 while the worker drains and refuses new sessions.",
        )?;
        let reservations = IntCounterVec::new(
            Opts::new(
                "voice_worker_reservations_total",
                "ReserveSession calls, by result.",
            ),
            &["result"],
        )?;
        let events_lagged = IntCounter::new(
            "voice_worker_events_lagged_total",
            "Session events missed by WatchEvents subscribers that fell behind.",
        )?;
        registry.register(Box::new(sessions.clone()))?;
        registry.register(Box::new(capacity.clone()))?;
        registry.register(Box::new(draining.clone()))?;
        registry.register(Box::new(reservations.clone()))?;
        registry.register(Box::new(events_lagged.clone()))?;
        // Both states exist from the start so dashboards see 0, not "no data".
        sessions.with_label_values(&["reserved"]).set(0);
        sessions.with_label_values(&["active"]).set(0);
        Ok(Self {
            registry,
            sessions,
            capacity,
            draining,
            reservations,
            events_lagged,
        })
    }

    /// Mirrors the ledger's occupancy into the gauges.
    pub fn set_occupancy(&self, capacity: u32, reserved: u32, active: u32, draining: bool) {
        self.capacity.set(i64::from(capacity));
        self.sessions
            .with_label_values(&["reserved"])
            .set(i64::from(reserved));
        self.sessions
            .with_label_values(&["active"])
            .set(i64::from(active));
        self.draining.set(i64::from(draining));
    }

    /// Counts one ReserveSession call by its result label (`reserved`, `already_reserved`,
    /// `full`, `draining`, `conflict`).
    pub fn count_reservation(&self, result: &str) {
        self.reservations.with_label_values(&[result]).inc();
    }

    /// Counts events a slow subscriber missed.
    pub fn count_lagged_events(&self, missed: u64) {
        self.events_lagged.inc_by(missed);
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}
