//! The worker's Prometheus metrics: one registry per process, rendered by `/metrics`.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
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
    media: MediaMetrics,
    pipeline: crate::pipeline::PipelineMetrics,
}

/// The data plane's metrics: transports, offers, packets and codec time. Cheap to clone
/// (every field is an `Arc` inside), so each media task holds its own copy.
#[derive(Clone, Debug)]
pub struct MediaMetrics {
    sessions_active: IntGaugeVec,
    offers: IntCounterVec,
    connect_duration: Histogram,
    packets: IntCounterVec,
    bytes: IntCounterVec,
    codec_duration: HistogramVec,
    dropped: IntCounterVec,
    late_ticks: IntCounter,
    jitter_target: prometheus::Gauge,
    rtcp_fraction_lost: HistogramVec,
    rtcp_jitter: HistogramVec,
    trickle: IntCounterVec,
    http_connections: IntGauge,
    http_refused: IntCounterVec,
    websocket_ended: IntCounterVec,
    ice_tcp_streams: IntCounterVec,
    ice_tcp_handshakes: IntGauge,
    /// One connection's own drop count besides the worker's counter (see
    /// [`MediaMetrics::for_connection`]); `None` on the worker-wide handle.
    connection_drops: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
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
        let media = MediaMetrics::register(&registry)?;
        let pipeline = crate::pipeline::PipelineMetrics::register(&registry)?;
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
            media,
            pipeline,
        })
    }

    /// The data plane's metrics.
    pub fn media(&self) -> &MediaMetrics {
        &self.media
    }

    /// The voice pipeline's metrics (stage latencies, turns, provider errors).
    pub fn pipeline(&self) -> &crate::pipeline::PipelineMetrics {
        &self.pipeline
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

impl MediaMetrics {
    fn register(registry: &Registry) -> Result<Self, MetricsError> {
        let sessions_active = IntGaugeVec::new(
            Opts::new(
                "voice_worker_sessions_active",
                "Media connections open on this worker, by transport.",
            ),
            &["transport"],
        )?;
        let offers = IntCounterVec::new(
            Opts::new(
                "voice_worker_offers_total",
                "WebRTC offers and WebSocket upgrades, by result (answered, or the error code).",
            ),
            &["result"],
        )?;
        let connect_duration = Histogram::with_opts(
            HistogramOpts::new(
                "voice_worker_connect_duration_seconds",
                "From an accepted offer to a connected peer (ICE and DTLS).",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )?;
        let packets = IntCounterVec::new(
            Opts::new(
                "voice_worker_media_packets_total",
                "Media packets (RTP or WebSocket frames), by transport and direction.",
            ),
            &["transport", "direction"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "voice_worker_media_bytes_total",
                "Media payload bytes, by transport and direction.",
            ),
            &["transport", "direction"],
        )?;
        let codec_duration = HistogramVec::new(
            HistogramOpts::new(
                "voice_worker_codec_duration_seconds",
                "Time to encode or decode one 20 ms Opus frame.",
            )
            .buckets(vec![
                0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005,
            ]),
            &["op"],
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "voice_worker_media_dropped_total",
                "Packets or frames dropped on purpose, by where (a full queue, an unknown sender, a late frame), or missing from a stream (a chunk a Twilio stream never sent).",
            ),
            &["reason"],
        )?;
        let late_ticks = IntCounter::new(
            "voice_worker_media_late_ticks_total",
            "20 ms send ticks that fired a whole frame late and were skipped.",
        )?;
        let jitter_target = prometheus::Gauge::new(
            "voice_worker_jitter_buffer_target_seconds",
            "Audio the receive-side jitter buffer holds before playout (providerConfig jitterBufferMs, rounded up to 20 ms packets).",
        )?;
        let rtcp_fraction_lost = HistogramVec::new(
            HistogramOpts::new(
                "voice_worker_rtcp_fraction_lost",
                "Fraction of packets lost (0 to 1): of our stream, as each RTCP reception report from a client says; on transport twilio, of Twilio's media chunks, measured every 5 s.",
            )
            .buckets(vec![0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]),
            &["transport"],
        )?;
        let rtcp_jitter = HistogramVec::new(
            HistogramOpts::new(
                "voice_worker_rtcp_jitter_seconds",
                "Interarrival jitter: of our stream, as each RTCP reception report from a client says; on transport twilio, of Twilio's media chunks (RFC 3550 from media.timestamp), measured every 5 s.",
            )
            .buckets(vec![
                0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25,
            ]),
            &["transport"],
        )?;
        let trickle = IntCounterVec::new(
            Opts::new(
                "voice_worker_trickle_patches_total",
                "Trickle ICE PATCH requests, by result (accepted, or the error code).",
            ),
            &["result"],
        )?;
        let http_connections = IntGauge::new(
            "voice_worker_http_connections",
            "HTTP connections open on this worker (WebSocket media included).",
        )?;
        let http_refused = IntCounterVec::new(
            Opts::new(
                "voice_worker_http_connections_refused_total",
                "HTTP connections answered 503 and closed at accept, by which cap was full (total, per_address).",
            ),
            &["cap"],
        )?;
        let websocket_ended = IntCounterVec::new(
            Opts::new(
                "voice_worker_websocket_ended_total",
                "WebSocket media connections ended, by reason (PeerClosed, HungUp, SendTimeout, PongTimeout, MessageTooBig, InvalidText, TextUnsupported, ProtocolError).",
            ),
            &["reason"],
        )?;
        let ice_tcp_streams = IntCounterVec::new(
            Opts::new(
                "voice_worker_ice_tcp_streams_total",
                "TCP streams accepted on the ICE-TCP port, by result (routed, or why they were closed before routing).",
            ),
            &["result"],
        )?;
        let ice_tcp_handshakes = IntGauge::new(
            "voice_worker_ice_tcp_handshakes",
            "ICE-TCP streams accepted and still waiting for their first frame.",
        )?;
        registry.register(Box::new(ice_tcp_streams.clone()))?;
        registry.register(Box::new(ice_tcp_handshakes.clone()))?;
        registry.register(Box::new(http_connections.clone()))?;
        registry.register(Box::new(http_refused.clone()))?;
        registry.register(Box::new(websocket_ended.clone()))?;
        registry.register(Box::new(rtcp_fraction_lost.clone()))?;
        registry.register(Box::new(rtcp_jitter.clone()))?;
        registry.register(Box::new(trickle.clone()))?;
        registry.register(Box::new(sessions_active.clone()))?;
        registry.register(Box::new(offers.clone()))?;
        registry.register(Box::new(connect_duration.clone()))?;
        registry.register(Box::new(packets.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(codec_duration.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(late_ticks.clone()))?;
        registry.register(Box::new(jitter_target.clone()))?;
        for transport in ["webrtc", "websocket"] {
            sessions_active.with_label_values(&[transport]).set(0);
        }
        Ok(Self {
            sessions_active,
            offers,
            connect_duration,
            packets,
            bytes,
            codec_duration,
            dropped,
            late_ticks,
            jitter_target,
            rtcp_fraction_lost,
            rtcp_jitter,
            trickle,
            http_connections,
            http_refused,
            websocket_ended,
            ice_tcp_streams,
            ice_tcp_handshakes,
            connection_drops: None,
        })
    }

    /// Counts one stream accepted on the ICE-TCP port by `result`.
    pub fn count_ice_tcp_stream(&self, result: &str) {
        self.ice_tcp_streams.with_label_values(&[result]).inc();
    }

    /// One more (or, with -1, one fewer) ICE-TCP stream waiting for its first frame.
    pub fn add_ice_tcp_handshake(&self, delta: i64) {
        self.ice_tcp_handshakes.add(delta);
    }

    /// One more (or one fewer, with `delta` -1) open connection on `transport`.
    pub fn add_active(&self, transport: &str, delta: i64) {
        self.sessions_active
            .with_label_values(&[transport])
            .add(delta);
    }

    /// Counts one offer or upgrade by its result.
    pub fn count_offer(&self, result: &str) {
        self.offers.with_label_values(&[result]).inc();
    }

    /// Records how long ICE and DTLS took.
    pub fn observe_connect(&self, took: Duration) {
        self.connect_duration.observe(took.as_secs_f64());
    }

    /// Counts one packet of `len` bytes on `transport` in `direction` (`in` or `out`).
    pub fn count_packet(&self, transport: &str, direction: &str, len: usize) {
        self.packets
            .with_label_values(&[transport, direction])
            .inc();
        self.bytes
            .with_label_values(&[transport, direction])
            .inc_by(u64::try_from(len).unwrap_or(u64::MAX));
    }

    /// Records the time of one codec call (`op` is `encode` or `decode`).
    pub fn observe_codec(&self, op: &str, took: Duration) {
        self.codec_duration
            .with_label_values(&[op])
            .observe(took.as_secs_f64());
    }

    /// Counts a packet or frame dropped for `reason`, so that no loss is silent.
    pub fn count_dropped(&self, reason: &str) {
        self.dropped.with_label_values(&[reason]).inc();
        if let Some(drops) = &self.connection_drops {
            drops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A handle that also counts drops into `drops`, one connection's own count (reported
    /// in the session's `status.audioBuffers.droppedFrames`).
    pub fn for_connection(&self, drops: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        Self {
            connection_drops: Some(drops),
            ..self.clone()
        }
    }

    /// Records the jitter buffer depth every WebRTC connection uses, in 20 ms packets.
    pub fn set_jitter_target(&self, packets: usize) {
        self.jitter_target.set(packets as f64 * 0.020);
    }

    /// Counts send ticks skipped because the media task ran late.
    pub fn count_late_ticks(&self, ticks: u64) {
        self.late_ticks.inc_by(ticks);
    }

    /// Records one RTCP reception report about our stream on `transport`: the fraction of
    /// packets lost since the previous report and the interarrival jitter.
    pub fn observe_reception_report(&self, transport: &str, fraction_lost: f64, jitter: Duration) {
        self.rtcp_fraction_lost
            .with_label_values(&[transport])
            .observe(fraction_lost);
        self.rtcp_jitter
            .with_label_values(&[transport])
            .observe(jitter.as_secs_f64());
    }

    /// Counts one trickle ICE `PATCH` by its result.
    pub fn count_trickle(&self, result: &str) {
        self.trickle.with_label_values(&[result]).inc();
    }

    /// One more (or one fewer, with `delta` -1) open HTTP connection.
    pub fn add_http_connection(&self, delta: i64) {
        self.http_connections.add(delta);
    }

    /// Counts a connection refused at accept because `cap` (`total`, `per_address`) was full.
    pub fn count_http_refused(&self, cap: &str) {
        self.http_refused.with_label_values(&[cap]).inc();
    }

    /// Counts a WebSocket media connection that ended for `reason`.
    pub fn count_websocket_end(&self, reason: &str) {
        self.websocket_ended.with_label_values(&[reason]).inc();
    }
}
