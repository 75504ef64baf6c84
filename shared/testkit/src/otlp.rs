//! An OTLP/HTTP receiver (protobuf, `POST /v1/traces` and `POST /v1/metrics`), so that tests
//! assert on the spans and metrics that were actually exported, as a collector would
//! receive them.
//!
//! One receiver serves a whole test process ([`OtlpReceiver::shared`]): the tracer providers
//! are process-wide, so it runs on a thread of its own and outlives each test's runtime.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message as _;

/// The most spans kept; the oldest go first (a test reads its own soon after making them).
const KEEP: usize = 500_000;

/// One exported span, as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The `service.name` of the resource it was exported under.
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root.
    pub parent_span_id: String,
    pub name: String,
    /// Every attribute, its value rendered as text.
    pub attributes: BTreeMap<String, String>,
    /// The spans it links to: (trace id, span id).
    pub links: Vec<(String, String)>,
    /// The messages of its events (log lines inside the span).
    pub events: Vec<String>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// One exported metric of one export, as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedMetric {
    /// The `service.name` of the resource it was exported under.
    pub service: String,
    pub name: String,
    pub unit: String,
    /// `sum` (monotonic), `gauge` or `histogram`.
    pub kind: &'static str,
    /// Each data point: its attributes, and its value (a histogram's: its count).
    pub points: Vec<(BTreeMap<String, String>, f64)>,
}

#[derive(Debug, Clone, Default)]
struct Received {
    spans: VecDeque<ReceivedSpan>,
    metrics: VecDeque<ReceivedMetric>,
}

#[derive(Debug, Clone)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
}

impl OtlpReceiver {
    /// The process's receiver, started on first use.
    pub fn shared() -> &'static OtlpReceiver {
        static SHARED: OnceLock<OtlpReceiver> = OnceLock::new();
        SHARED.get_or_init(Self::start)
    }

    /// A receiver of its own on a loopback port, served from a thread of its own.
    pub fn start() -> OtlpReceiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the OTLP receiver");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("receiver address");
        let received = Arc::new(Mutex::new(Received::default()));
        let receiver = OtlpReceiver { addr, received: received.clone() };
        std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let app = axum::Router::new()
                        .route("/v1/traces", axum::routing::post(receive))
                        .route("/v1/metrics", axum::routing::post(receive_metrics))
                        .with_state(received)
                        .layer(axum::extract::DefaultBodyLimit::max(64 << 20));
                    let _ = axum::serve(listener, app).await;
                });
            })
            .expect("receiver thread");
        receiver
    }

    /// The URL exporters post traces to.
    pub fn traces_url(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// The URL exporters post metrics to.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/v1/metrics", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every span received so far (up to the last [`KEEP`]).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.lock().spans.iter().cloned().collect()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.lock().spans.iter().filter(|s| s.trace_id == trace_id).cloned().collect()
    }

    /// Every metric of every export received so far (up to the last [`KEEP_METRICS`]).
    pub fn metrics(&self) -> Vec<ReceivedMetric> {
        self.lock().metrics.iter().cloned().collect()
    }
}

async fn receive(
    axum::extract::State(all): axum::extract::State<Arc<Mutex<Received>>>,
    body: Bytes,
) -> axum::response::Response {
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not an ExportTraceServiceRequest: {e}")).into_response(),
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
        let service = attributes(&resource).remove("service.name").unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            received.push(ReceivedSpan {
                service: service.clone(),
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                name: span.name,
                attributes: attributes(&span.attributes),
                links: span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                events: span.events.into_iter().map(|e| e.name).collect(),
            });
        }
    }
    {
        let mut all = all.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        all.spans.extend(received);
        while all.spans.len() > KEEP {
            all.spans.pop_front();
        }
    }
    let response = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
    ([(header::CONTENT_TYPE, "application/x-protobuf")], response).into_response()
}

/// The most metrics kept (one per family per export); the oldest go first.
const KEEP_METRICS: usize = 200_000;

async fn receive_metrics(
    axum::extract::State(all): axum::extract::State<Arc<Mutex<Received>>>,
    body: Bytes,
) -> axum::response::Response {
    let request = match ExportMetricsServiceRequest::decode(body) {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not an ExportMetricsServiceRequest: {e}")).into_response(),
    };
    let mut received = Vec::new();
    for resource_metrics in request.resource_metrics {
        let resource = resource_metrics.resource.map(|r| r.attributes).unwrap_or_default();
        let service = attributes(&resource).remove("service.name").unwrap_or_default();
        for metric in resource_metrics.scope_metrics.into_iter().flat_map(|s| s.metrics) {
            use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
            let number = |v: &Option<Value>| match v {
                Some(Value::AsDouble(d)) => *d,
                Some(Value::AsInt(i)) => *i as f64,
                None => f64::NAN,
            };
            let (kind, points) = match &metric.data {
                Some(Data::Sum(sum)) => {
                    ("sum", sum.data_points.iter().map(|p| (attributes(&p.attributes), number(&p.value))).collect())
                }
                Some(Data::Gauge(gauge)) => {
                    ("gauge", gauge.data_points.iter().map(|p| (attributes(&p.attributes), number(&p.value))).collect())
                }
                Some(Data::Histogram(h)) => {
                    ("histogram", h.data_points.iter().map(|p| (attributes(&p.attributes), p.count as f64)).collect())
                }
                _ => ("other", Vec::new()),
            };
            received.push(ReceivedMetric {
                service: service.clone(),
                name: metric.name,
                unit: metric.unit,
                kind,
                points,
            });
        }
    }
    {
        let mut all = all.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        all.metrics.extend(received);
        while all.metrics.len() > KEEP_METRICS {
            all.metrics.pop_front();
        }
    }
    let response = ExportMetricsServiceResponse { partial_success: None }.encode_to_vec();
    ([(header::CONTENT_TYPE, "application/x-protobuf")], response).into_response()
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(render).unwrap_or_default())).collect()
}

fn render(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::ArrayValue(a)) => a.values.iter().map(render).collect::<Vec<_>>().join(","),
        Some(any_value::Value::BytesValue(b)) => hex(b),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
