//! An OTLP/HTTP trace receiver (protobuf, `POST /v1/traces`), so that tests assert on the
//! spans that were actually exported, as a collector would receive them.
//!
//! One receiver serves a whole test process ([`OtlpReceiver::shared`]): the tracer providers
//! are process-wide, so it runs on a thread of its own and outlives each test's runtime.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
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

#[derive(Debug, Clone)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Arc<Mutex<VecDeque<ReceivedSpan>>>,
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
        let spans = Arc::new(Mutex::new(VecDeque::new()));
        let receiver = OtlpReceiver { addr, spans: spans.clone() };
        std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let app = axum::Router::new()
                        .route("/v1/traces", axum::routing::post(receive))
                        .with_state(spans)
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

    /// Every span received so far (up to the last [`KEEP`]).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned().collect()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        let spans = self.spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        spans.iter().filter(|s| s.trace_id == trace_id).cloned().collect()
    }
}

async fn receive(
    axum::extract::State(spans): axum::extract::State<Arc<Mutex<VecDeque<ReceivedSpan>>>>,
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
        let mut spans = spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        spans.extend(received);
        while spans.len() > KEEP {
            spans.pop_front();
        }
    }
    let response = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
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
