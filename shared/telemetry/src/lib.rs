//! Logs and traces for every service: a `tracing` subscriber (pretty, or JSON with
//! `CUSTODIAN_LOG_FORMAT=json`), OpenTelemetry export over OTLP/HTTP when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and W3C trace context carried in NATS headers so
//! that one trace spans gateway → consent → vault.
//!
//! Invariant: nothing here logs message payloads; callers put identifiers only in span fields.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub const TRACEPARENT: &str = "traceparent";

/// Default filter: our crates at info, chatty dependencies (sqlx logs every statement) down.
const DEFAULT_FILTER: &str =
    "info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn,async_nats=warn,hyper=warn,reqwest=warn,opentelemetry=warn";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP exporter for OTEL_EXPORTER_OTLP_ENDPOINT: {0}")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    #[error("invalid log filter in CUSTODIAN_LOG / RUST_LOG: {0}")]
    Filter(#[source] tracing_subscriber::filter::ParseError),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps the tracer provider alive; flushes spans when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

impl LogFormat {
    pub fn from_env() -> Self {
        match std::env::var("CUSTODIAN_LOG_FORMAT").as_deref() {
            Ok("json") => Self::Json,
            _ => Self::Pretty,
        }
    }
}

/// Installs the global subscriber for a process. The filter comes from `CUSTODIAN_LOG`,
/// else `RUST_LOG`, else [`DEFAULT_FILTER`].
pub fn init(service_name: &str) -> Result<TelemetryGuard, TelemetryError> {
    let filter = std::env::var("CUSTODIAN_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| DEFAULT_OVERRIDE.get().cloned().unwrap_or_else(|| DEFAULT_FILTER.to_owned()));
    let filter = EnvFilter::builder().parse(filter).map_err(TelemetryError::Filter)?;
    let provider = tracer_provider(service_name)?;
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("custodian"));
    let fmt = match LogFormat::from_env() {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_current_span(true).boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_target(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(TelemetryGuard { provider })
}

/// For tests: like [`init`] but a second call is harmless.
pub fn init_for_tests() {
    static ONCE: std::sync::OnceLock<Option<TelemetryGuard>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        set_default_filter("warn");
        init("custodian-tests").ok()
    });
}

fn tracer_provider(service_name: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name.to_owned()).build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    // Spans always get ids (so trace context propagates); they leave the process only when
    // an OTLP endpoint is configured.
    let builder = if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let exporter =
            opentelemetry_otlp::SpanExporter::builder().with_http().build().map_err(TelemetryError::Exporter)?;
        builder.with_batch_exporter(exporter)
    } else {
        builder
    };
    Ok(builder.build())
}

/// The W3C `traceparent` of the current span, if it belongs to a trace.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the remote span named by `traceparent` (from a NATS header or
/// the CloudEvent attribute). A malformed value is ignored: tracing never fails work.
pub fn adopt_remote_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(context);
}

static DEFAULT_OVERRIDE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Changes the filter used when neither `CUSTODIAN_LOG` nor `RUST_LOG` is set (call before
/// [`init`]); one-shot CLI commands use `warn`.
pub fn set_default_filter(filter: &str) {
    let _ = DEFAULT_OVERRIDE.set(filter.to_owned());
}
