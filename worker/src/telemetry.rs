//! Logging and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OpenTelemetry trace export over
//! OTLP/gRPC (tonic). Without the variable no exporter, propagator or extra layer exists,
//! and the functions below return at once.
//!
//! Spans exported: `reserve_session`, a child of the operator's admission span (its W3C
//! `traceparent` arrives in the `ReserveSession` call's gRPC metadata), and one `turn` span
//! per session turn (end of the user's speech → first reply packet) with `voice.session`,
//! `voice.session.uid`, the turn id and each stage's milliseconds; the turn links to the
//! admission's span, so a trace viewer goes from any turn to how its session was admitted.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{Link, SpanContext, TraceContextExt as _, Tracer as _};
use opentelemetry::trace::{Span as _, TracerProvider as _};
use opentelemetry::{KeyValue, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};
use voice_proto::worker::v1::TurnLatency;

/// The standard OTLP endpoint variable (the operator passes its own to worker pods).
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

const SERVICE: &str = "voice-worker";
/// Admission contexts remembered at most (a worker holds a few dozen sessions).
const MAX_ADMISSIONS: usize = 4096;

/// Set once export is on.
static EXPORT: OnceLock<Export> = OnceLock::new();

struct Export {
    tracer: Tracer,
    /// The operator's admission span of each reserved session, by session uid.
    admissions: Mutex<HashMap<String, SpanContext>>,
}

/// Keeps the exporter alive; dropping it flushes the spans still batched.
#[must_use = "dropping the guard shuts the exporter down"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flushing OpenTelemetry spans: {e}");
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` filter (default `default_level`, else `info`),
/// text or JSON logs on stderr, and the OpenTelemetry layer when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// is set.
pub fn init(json: bool, default_level: Option<&str>) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_level.unwrap_or("info")));
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::new();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    layers.push(if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    });
    let endpoint = std::env::var(ENDPOINT_ENV).ok().filter(|s| !s.is_empty());
    let built = endpoint.map(|endpoint| tracer_provider().map(|p| (endpoint, p)));
    let mut provider = None;
    let mut failed = None;
    match built {
        Some(Ok((endpoint, p))) => {
            global::set_text_map_propagator(TraceContextPropagator::new());
            layers.push(
                tracing_opentelemetry::layer()
                    .with_tracer(p.tracer(SERVICE))
                    .boxed(),
            );
            let _ = EXPORT.set(Export {
                tracer: p.tracer(SERVICE),
                admissions: Mutex::new(HashMap::new()),
            });
            provider = Some((endpoint, p));
        }
        Some(Err(e)) => failed = Some(e),
        None => {}
    }
    tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .init();
    if let Some(e) = failed {
        tracing::error!(error = %e, "OpenTelemetry export disabled: cannot build the OTLP exporter");
    }
    if let Some((endpoint, _)) = &provider {
        tracing::info!(%endpoint, "exporting traces over OTLP/gRPC");
    }
    Telemetry {
        provider: provider.map(|(_, p)| p),
    }
}

fn tracer_provider() -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(SERVICE)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Makes `span` a child of the caller's trace context in `metadata` (`traceparent`) and
/// remembers that context for the session `uid`'s turn spans to link to.
pub fn join_remote(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap, uid: &str) {
    let Some(export) = EXPORT.get() else {
        return;
    };
    let cx = global::get_text_map_propagator(|p| p.extract(&MetadataExtractor(metadata)));
    let remote = cx.span().span_context().clone();
    if !remote.is_valid() {
        return;
    }
    let _ = span.set_parent(cx);
    let mut admissions = export.admissions.lock().unwrap_or_else(|e| e.into_inner());
    if admissions.len() < MAX_ADMISSIONS || admissions.contains_key(uid) {
        admissions.insert(uid.to_owned(), remote);
    }
}

/// Forgets the admission context of the session `uid` (released or ended).
pub fn forget(uid: &str) {
    if let Some(export) = EXPORT.get() {
        export
            .admissions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }
}

/// Exports one `turn` span for a finished turn of `session` (`ns/name`): from the end of
/// the user's speech to the first reply packet (`latency.total_ms` ending now), linked to
/// the session's admission span when the operator sent one.
pub fn turn(session: &str, uid: &str, latency: &TurnLatency) {
    let Some(export) = EXPORT.get() else {
        return;
    };
    let end = SystemTime::now();
    let start = end
        .checked_sub(Duration::try_from_secs_f64(latency.total_ms / 1e3).unwrap_or_default())
        .unwrap_or(end);
    let mut attributes = vec![
        KeyValue::new("voice.session", session.to_owned()),
        KeyValue::new("voice.session.uid", uid.to_owned()),
        KeyValue::new("voice.turn.id", latency.turn_id.clone()),
        KeyValue::new("voice.turn.total_ms", latency.total_ms),
    ];
    for (key, value) in [
        ("voice.turn.turn_detect_ms", latency.turn_detect_ms),
        ("voice.turn.stt_ms", latency.stt_ms),
        (
            "voice.turn.agent_first_token_ms",
            latency.agent_first_token_ms,
        ),
        ("voice.turn.tts_first_audio_ms", latency.tts_first_audio_ms),
        ("voice.turn.first_packet_ms", latency.first_packet_ms),
    ] {
        if let Some(ms) = value {
            attributes.push(KeyValue::new(key, ms));
        }
    }
    let links = export
        .admissions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(uid)
        .map(|admission| vec![Link::with_context(admission.clone())])
        .unwrap_or_default();
    let mut span = export
        .tracer
        .span_builder("turn")
        .with_start_time(start)
        .with_attributes(attributes)
        .with_links(links)
        .start(&export.tracer);
    span.end_with_timestamp(end);
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}
