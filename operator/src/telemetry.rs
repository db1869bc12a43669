//! Logging and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OpenTelemetry trace export over
//! OTLP/gRPC (tonic). Without the variable no exporter, propagator or extra layer exists.
//!
//! Spans exported: one per reconcile (`reconcile`, from the controllers' `#[instrument]`),
//! one per admission (`admit`, with `voice.session` = `ns/name` and `voice.session.uid`).
//! The admission's W3C trace context rides the `ReserveSession` call's gRPC metadata
//! (`traceparent`), so the worker's reservation span joins the admission's trace.

use std::sync::OnceLock;

use opentelemetry::propagation::Injector;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// The standard OTLP endpoint variable (e.g. `http://collector:4317`).
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The endpoint the operator exports to, once tracing is set up with one.
static ENDPOINT: OnceLock<String> = OnceLock::new();

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

/// Installs the global subscriber: `RUST_LOG` filter (default `info`), text or JSON logs,
/// and the OpenTelemetry layer when `OTEL_EXPORTER_OTLP_ENDPOINT` is set and non-empty.
pub fn init(json: bool, service: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::new();
    layers.push(if json {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    });
    let endpoint = std::env::var(ENDPOINT_ENV).ok().filter(|s| !s.is_empty());
    let mut failed = None;
    let provider = endpoint.and_then(|endpoint| match tracer_provider(service) {
        Ok(provider) => {
            let _ = ENDPOINT.set(endpoint);
            Some(provider)
        }
        Err(e) => {
            failed = Some(e);
            None
        }
    });
    if let Some(provider) = &provider {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(service))
                .boxed(),
        );
    }
    tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .init();
    if let Some(e) = failed {
        tracing::error!(error = %e, "OpenTelemetry export disabled: cannot build the OTLP exporter");
    } else if let Some(endpoint) = ENDPOINT.get() {
        tracing::info!(%endpoint, "exporting traces over OTLP/gRPC");
    }
    Telemetry { provider }
}

fn tracer_provider(
    service: &'static str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (and the other OTEL_* variables) itself.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The endpoint the operator exports to, if any: worker pods get the same one.
pub fn endpoint() -> Option<&'static str> {
    ENDPOINT.get().map(String::as_str)
}

/// Writes the current span's trace context (`traceparent`) into outgoing gRPC metadata;
/// nothing when export is off.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    if ENDPOINT.get().is_none() {
        return;
    }
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&cx, &mut MetadataInjector(metadata));
    });
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}
