//! Logs, traces and the metrics' way out for every service: a `tracing` subscriber (pretty,
//! or JSON with `CUSTODIAN_LOG_FORMAT=json`), OpenTelemetry export over OTLP/HTTP when the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT` is set (spans here, metrics in [`metrics_export`]),
//! and W3C trace context carried in NATS headers so that one trace spans gateway → consent →
//! vault.
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

pub mod metrics_export;

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
    #[error("metrics export: {0}")]
    Metrics(String),
}

/// Keeps the tracer providers alive; flushes spans when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    providers: Vec<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        for provider in &self.providers {
            let _ = provider.shutdown();
        }
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

/// Installs the global subscriber for a process. The log filter comes from `CUSTODIAN_LOG`,
/// else `RUST_LOG`, else [`DEFAULT_FILTER`]; spans are kept from info up whatever the logs
/// show (`CUSTODIAN_TRACE` changes that). Spans are exported under the `service.name` of the
/// service that made them (see [`ServiceTracer`]); `default_service` names the rest.
pub fn init(default_service: &str) -> Result<TelemetryGuard, TelemetryError> {
    init_with(default_service, Export::FromEnv)
}

/// Where spans go.
#[derive(Debug, Clone)]
pub enum Export {
    /// OTLP/HTTP when the standard `OTEL_EXPORTER_OTLP_*` variables say so, else nowhere.
    FromEnv,
    /// OTLP/HTTP to this traces URL, in batches at most `every` apart, and metrics to their
    /// target (tests' receivers).
    To { traces_url: String, every: std::time::Duration, metrics: Option<metrics_export::MetricsTarget> },
}

pub fn init_with(default_service: &str, export: Export) -> Result<TelemetryGuard, TelemetryError> {
    let filter = std::env::var("CUSTODIAN_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| DEFAULT_OVERRIDE.get().cloned().unwrap_or_else(|| DEFAULT_FILTER.to_owned()));
    let filter = EnvFilter::builder().parse(filter).map_err(TelemetryError::Filter)?;
    let trace_filter = std::env::var("CUSTODIAN_TRACE").unwrap_or_else(|_| DEFAULT_TRACE_FILTER.to_owned());
    let trace_filter = EnvFilter::builder().parse(trace_filter).map_err(TelemetryError::Filter)?;
    let metrics = match &export {
        Export::FromEnv => metrics_export::MetricsTarget::from_vars(|name| std::env::var(name).ok())
            .map_err(TelemetryError::Metrics)?,
        Export::To { metrics, .. } => metrics.clone(),
    };
    metrics_export::configure(default_service, metrics);
    let (tracer, providers) = ServiceTracer::new(default_service, &export)?;
    // Spans carry what operators search by, not where in the code they were made.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_filter(trace_filter);
    let fmt = match LogFormat::from_env() {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_current_span(true).boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_target(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if let Some(provider) = providers.first() {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    Ok(TelemetryGuard { providers })
}

/// Spans from info up, but none from dependencies (their spans say nothing an operator
/// searches by, and some would carry SQL).
const DEFAULT_TRACE_FILTER: &str = "info,sqlx=off,sea_orm=off,sea_orm_migration=off,async_nats=off,hyper=off,\
                                    hyper_util=off,reqwest=off,h2=off,tower=off,tower_http=off,opentelemetry=off";

static TEST_GUARD: std::sync::OnceLock<Option<TelemetryGuard>> = std::sync::OnceLock::new();

/// For tests: like [`init`] but a second call is harmless; logs from warn up.
pub fn init_for_tests() {
    init_for_tests_with(Export::FromEnv);
}

/// For tests that read the spans back: the first call in the process decides where they go.
pub fn init_for_tests_with(export: Export) {
    TEST_GUARD.get_or_init(|| {
        set_default_filter("warn");
        init_with("custodian-tests", export).ok()
    });
}

/// Sends the spans ended so far to the exporter (a test reads them right after).
pub fn flush() {
    if let Some(Some(guard)) = TEST_GUARD.get() {
        for provider in &guard.providers {
            let _ = provider.force_flush();
        }
    }
}

/// The services whose spans are exported under a `service.name` of their own; a span is
/// theirs when made in their crate, or under one of their spans in this process, or when it
/// carries a `service` field naming them (for spans that shared code starts for a service).
pub const SERVICES: [&str; 7] = ["gateway", "consent", "vault", "audit", "incident", "sweeper", "view"];

/// `custodian-<service>`, the `service.name` of one of [`SERVICES`].
pub fn service_name(service: &str) -> Option<&'static str> {
    Some(match service {
        "gateway" => "custodian-gateway",
        "consent" => "custodian-consent",
        "vault" => "custodian-vault",
        "audit" => "custodian-audit",
        "incident" => "custodian-incident",
        "sweeper" => "custodian-sweeper",
        "view" => "custodian-view",
        // Each view's own consumer (`view-<id>`).
        view if view.starts_with("view-") => "custodian-view",
        _ => return None,
    })
}

/// The service a crate's code works for, from a `tracing` target (`custodian_vault::driver`).
fn service_of_target(target: &str) -> Option<&'static str> {
    let krate = target.split("::").next()?;
    let service = match krate {
        "custodian_demo_view" | "custodian_view_sdk" => "view",
        other => other.strip_prefix("custodian_")?,
    };
    service_name(service)
}

/// A tracer that starts each span with the tracer provider of the service that made it, so
/// that `custodian up` (every service in one process) exports each span under its own
/// service's `service.name`, as separate processes would.
#[derive(Debug, Clone)]
pub struct ServiceTracer {
    tracers: std::sync::Arc<Vec<(&'static str, opentelemetry_sdk::trace::SdkTracer)>>,
    default: usize,
    /// The service of recently started spans, so that a span of shared code (the bus, the
    /// store) belongs to the service of its parent. Two generations: bounded, and a parent
    /// is found as long as it started fewer than `GENERATION` spans ago.
    recent: std::sync::Arc<std::sync::Mutex<[HashMap<opentelemetry::trace::SpanId, usize>; 2]>>,
}

const GENERATION: usize = 65_536;

impl ServiceTracer {
    fn new(default_service: &str, export: &Export) -> Result<(Self, Vec<SdkTracerProvider>), TelemetryError> {
        let mut names: Vec<&'static str> = SERVICES.iter().filter_map(|s| service_name(s)).collect();
        let default = match names.iter().position(|n| *n == default_service) {
            Some(at) => at,
            None => {
                names.push(Box::leak(default_service.to_owned().into_boxed_str()));
                names.len() - 1
            }
        };
        let mut providers = Vec::with_capacity(names.len());
        let mut tracers = Vec::with_capacity(names.len());
        for name in names {
            let provider = tracer_provider(name, export)?;
            tracers.push((name, provider.tracer("custodian")));
            providers.push(provider);
        }
        // The default's provider first: it is the global one.
        providers.swap(0, default);
        let recent = std::sync::Arc::new(std::sync::Mutex::new([HashMap::new(), HashMap::new()]));
        Ok((Self { tracers: std::sync::Arc::new(tracers), default, recent }, providers))
    }

    fn choose(&self, builder: &opentelemetry::trace::SpanBuilder, parent_cx: &opentelemetry::Context) -> usize {
        use opentelemetry::trace::TraceContextExt as _;
        let attribute = |key: &str| {
            builder.attributes.as_ref()?.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.as_str())
        };
        let by_name = |name: &str| self.tracers.iter().position(|(n, _)| *n == name);
        if let Some(at) = attribute("service").and_then(|s| service_name(&s)).and_then(by_name) {
            return at;
        }
        if let Some(at) = attribute("target").and_then(|t| service_of_target(&t)).and_then(by_name) {
            return at;
        }
        let parent = parent_cx.span().span_context().clone();
        if parent.is_valid() && !parent.is_remote() {
            let recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(at) = recent.iter().find_map(|generation| generation.get(&parent.span_id())) {
                return *at;
            }
        }
        self.default
    }

    fn remember(&self, span_id: opentelemetry::trace::SpanId, service: usize) {
        let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent[0].len() >= GENERATION {
            recent.swap(0, 1);
            recent[0].clear();
        }
        recent[0].insert(span_id, service);
    }
}

impl opentelemetry::trace::Tracer for ServiceTracer {
    type Span = opentelemetry_sdk::trace::Span;

    fn build_with_context(
        &self,
        builder: opentelemetry::trace::SpanBuilder,
        parent_cx: &opentelemetry::Context,
    ) -> Self::Span {
        use opentelemetry::trace::Span as _;
        let at = self.choose(&builder, parent_cx);
        let span = self.tracers[at].1.build_with_context(builder, parent_cx);
        self.remember(span.span_context().span_id(), at);
        span
    }
}

fn tracer_provider(service_name: &'static str, export: &Export) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name).build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    // Spans always get ids (so trace context propagates); they leave the process only when
    // an OTLP endpoint is configured (the standard OTEL_EXPORTER_OTLP_* variables; the
    // sampler from OTEL_TRACES_SAMPLER, read by the SDK).
    let exporting = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    let builder = match export {
        Export::FromEnv if exporting => {
            let exporter =
                opentelemetry_otlp::SpanExporter::builder().with_http().build().map_err(TelemetryError::Exporter)?;
            builder.with_batch_exporter(exporter)
        }
        Export::FromEnv => builder,
        Export::To { traces_url, every, .. } => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(traces_url.clone())
                .with_headers(HashMap::new())
                .build()
                .map_err(TelemetryError::Exporter)?;
            let config = opentelemetry_sdk::trace::BatchConfigBuilder::default().with_scheduled_delay(*every).build();
            let processor =
                opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter).with_batch_config(config).build();
            builder.with_span_processor(processor)
        }
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

/// Adds a link from `span` to the remote span named by `traceparent` (a batch to each event
/// it applies). A malformed value is ignored.
pub fn link_remote(span: &tracing::Span, traceparent: Option<&str>) {
    use opentelemetry::trace::TraceContextExt as _;
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let remote = context.span().span_context().clone();
    if remote.is_valid() {
        span.add_link(remote);
    }
}

static DEFAULT_OVERRIDE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Changes the filter used when neither `CUSTODIAN_LOG` nor `RUST_LOG` is set (call before
/// [`init`]); one-shot CLI commands use `warn`.
pub fn set_default_filter(filter: &str) {
    let _ = DEFAULT_OVERRIDE.set(filter.to_owned());
}
