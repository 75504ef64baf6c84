//! Metrics over OTLP/HTTP, beside the Prometheus text that `/metrics` serves: the process's
//! registry is read every `OTEL_METRIC_EXPORT_INTERVAL` (60 s unless set) and sent as one
//! `ExportMetricsServiceRequest` (protobuf) to `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, else
//! `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/metrics`, with `OTEL_EXPORTER_OTLP_(METRICS_)HEADERS`,
//! as the OpenTelemetry specification names them. `OTEL_METRICS_EXPORTER=none` turns it off;
//! only the `http/protobuf` protocol is spoken.
//!
//! The registry is prometheus-client's (one set of metrics, two ways out): its OpenMetrics
//! text is translated family by family — a counter to a cumulative monotonic sum, a gauge
//! (or info, or unknown) to a gauge, a histogram to a cumulative explicit-bucket histogram —
//! with the labels as attributes and the unit from `# UNIT`.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus_client::registry::Registry;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

/// Where and how often metrics go.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsTarget {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub every: Duration,
    pub timeout: Duration,
}

impl MetricsTarget {
    /// From the standard variables, read through `var`; `None` when nothing asks for export.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        if var("OTEL_METRICS_EXPORTER").is_some_and(|v| v.trim() == "none") {
            return Ok(None);
        }
        let url = match (var("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"), var("OTEL_EXPORTER_OTLP_ENDPOINT")) {
            (Some(url), _) => url,
            (None, Some(base)) => format!("{}/v1/metrics", base.trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        let protocol = var("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
        if let Some(protocol) = protocol.filter(|p| p.trim() != "http/protobuf") {
            return Err(format!("OTLP protocol {protocol:?} is not spoken for metrics: only http/protobuf"));
        }
        let headers = var("OTEL_EXPORTER_OTLP_METRICS_HEADERS").or_else(|| var("OTEL_EXPORTER_OTLP_HEADERS"));
        let headers = headers.map(|h| parse_headers(&h)).transpose()?.unwrap_or_default();
        let millis = |name: &str, default: u64| -> Result<Duration, String> {
            match var(name) {
                None => Ok(Duration::from_millis(default)),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .map(Duration::from_millis)
                    .ok_or_else(|| format!("{name}={v:?} is not a positive number of milliseconds")),
            }
        };
        Ok(Some(Self {
            url,
            headers,
            every: millis("OTEL_METRIC_EXPORT_INTERVAL", 60_000)?,
            timeout: millis("OTEL_METRIC_EXPORT_TIMEOUT", 30_000)?,
        }))
    }
}

/// `key1=value1,key2=value2`, values percent-decoded (the specification's format).
fn parse_headers(list: &str) -> Result<Vec<(String, String)>, String> {
    list.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').ok_or_else(|| format!("OTLP header {pair:?} has no '='"))?;
            Ok((key.trim().to_owned(), percent_decode(value.trim())))
        })
        .collect()
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) =
                (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

static TARGET: OnceLock<Option<MetricsTarget>> = OnceLock::new();
static SERVICE: OnceLock<String> = OnceLock::new();

/// Set once by [`crate::init_with`].
pub(crate) fn configure(service: &str, target: Option<MetricsTarget>) {
    let _ = SERVICE.set(service.to_owned());
    let _ = TARGET.set(target);
}

/// Where this process sends its metrics, if anywhere.
pub fn target() -> Option<&'static MetricsTarget> {
    TARGET.get().and_then(Option::as_ref)
}

/// Sends `registry` every interval until `shutdown`, then once more; `None` when export is
/// not configured. A failed send is logged and the next one tries again (the values are
/// cumulative: nothing is lost but resolution).
pub fn spawn_export(registry: Arc<Registry>, shutdown: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let target = target()?.clone();
    let service = SERVICE.get().cloned().unwrap_or_else(|| "custodian".to_owned());
    Some(tokio::spawn(async move {
        let client = match reqwest::Client::builder().timeout(target.timeout).build() {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %e, "metrics not exported: no HTTP client");
                return;
            }
        };
        let started = SystemTime::now();
        let mut failing = false;
        loop {
            let stopping = tokio::select! {
                () = shutdown.cancelled() => true,
                () = tokio::time::sleep(target.every) => false,
            };
            match send(&client, &target, &registry, &service, started).await {
                Ok(()) if failing => {
                    tracing::info!("metrics exported again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "metrics not exported; trying again at the next interval");
                    failing = true;
                }
                Err(_) => {}
            }
            if stopping {
                return;
            }
        }
    }))
}

async fn send(
    client: &reqwest::Client,
    target: &MetricsTarget,
    registry: &Registry,
    service: &str,
    started: SystemTime,
) -> Result<(), String> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).map_err(|e| e.to_string())?;
    let body = to_request(&text, service, started, SystemTime::now()).encode_to_vec();
    let mut request = client.post(&target.url).header("content-type", "application/x-protobuf").body(body);
    for (name, value) in &target.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("the collector answered {}", response.status()));
    }
    Ok(())
}

fn nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or_default()
}

fn text_value(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_owned())) }),
        ..Default::default()
    }
}

/// A sample's labels, in order.
type Labels = Vec<(String, String)>;
/// One sample line: its name, labels and value.
type Sample = (String, Labels, f64);

/// One family of the OpenMetrics text.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: String,
    unit: String,
    /// (sample name, labels, value), in order.
    samples: Vec<Sample>,
}

/// The OpenMetrics text of a registry as one OTLP request under `service`'s resource.
pub fn to_request(
    openmetrics: &str,
    service: &str,
    started: SystemTime,
    now: SystemTime,
) -> ExportMetricsServiceRequest {
    let (start, time) = (nanos(started), nanos(now));
    let metrics =
        families(openmetrics).into_iter().filter_map(|(name, family)| to_metric(&name, family, start, time)).collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![text_value("service.name", service)],
                dropped_attributes_count: 0,
                entity_refs: Vec::new(),
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "custodian".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    attributes: Vec::new(),
                    dropped_attributes_count: 0,
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The families of the text, each with the samples that follow its metadata (OpenMetrics
/// keeps a family's samples together, after its `# TYPE`).
fn families(openmetrics: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in openmetrics.lines() {
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (Some(what), Some(name)) = (parts.next(), parts.next()) else { continue };
            let rest = parts.next().unwrap_or_default().to_owned();
            let family = families.entry(name.to_owned()).or_default();
            match what {
                "TYPE" => family.kind = rest,
                "HELP" => family.help = rest.replace("\\n", "\n").replace("\\\\", "\\"),
                "UNIT" => family.unit = rest,
                _ => {}
            }
            current = Some(name.to_owned());
            continue;
        }
        let (Some(name), Some((sample_name, labels, value))) = (current.as_ref(), sample(line)) else { continue };
        if let Some(family) = families.get_mut(name) {
            family.samples.push((sample_name, labels, value));
        }
    }
    families
}

/// `name{a="x",b="y"} value [timestamp] [# exemplar]`.
fn sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 1);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next().map(|(_, q)| q) != Some('"') {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
        rest = &inner[end?..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some((name, labels, value))
}

fn attributes(labels: &[(String, String)]) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| text_value(k, v)).collect()
}

fn number(labels: &[(String, String)], value: f64, start: u64, time: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: start,
        time_unix_nano: time,
        exemplars: Vec::new(),
        flags: 0,
        value: Some(number_data_point::Value::AsDouble(value)),
    }
}

fn to_metric(name: &str, family: Family, start: u64, time: u64) -> Option<Metric> {
    let sample_named = |suffix: &str| {
        let wanted = format!("{name}{suffix}");
        family.samples.iter().filter(move |(n, _, _)| *n == wanted)
    };
    let data = match family.kind.as_str() {
        "counter" => metric::Data::Sum(Sum {
            data_points: sample_named("_total").map(|(_, l, v)| number(l, *v, start, time)).collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        "gauge" | "unknown" => metric::Data::Gauge(Gauge {
            data_points: sample_named("").map(|(_, l, v)| number(l, *v, start, time)).collect(),
        }),
        "info" => metric::Data::Gauge(Gauge {
            data_points: sample_named("_info").map(|(_, l, v)| number(l, *v, start, time)).collect(),
        }),
        "histogram" => metric::Data::Histogram(Histogram {
            data_points: histogram_points(name, &family, start, time),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        }),
        // Not made by this project's registries.
        _ => return None,
    };
    let name = if family.kind == "info" { format!("{name}_info") } else { name.to_owned() };
    Some(Metric { name, description: family.help, unit: family.unit, metadata: Vec::new(), data: Some(data) })
}

/// One point per label set: the cumulative `_bucket`s turned into per-bucket counts.
fn histogram_points(name: &str, family: &Family, start: u64, time: u64) -> Vec<HistogramDataPoint> {
    /// (upper bound, cumulative count) per bucket, the sum, the count.
    type Point = (Vec<(f64, f64)>, f64, f64);
    let mut points: BTreeMap<Labels, Point> = BTreeMap::new();
    for (sample, labels, value) in &family.samples {
        let suffix = sample.strip_prefix(name).unwrap_or_default();
        let key: Labels = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
        let point = points.entry(key).or_default();
        match suffix {
            "_bucket" => {
                let bound = labels.iter().find(|(k, _)| k == "le").map(|(_, v)| v.as_str()).unwrap_or("+Inf");
                let bound = if bound == "+Inf" { f64::INFINITY } else { bound.parse().unwrap_or(f64::INFINITY) };
                point.0.push((bound, *value));
            }
            "_sum" => point.1 = *value,
            "_count" => point.2 = *value,
            _ => {}
        }
    }
    points
        .into_iter()
        .map(|(labels, (mut buckets, sum, count))| {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut previous = 0.0;
            let bucket_counts = buckets
                .iter()
                .map(|(_, cumulative)| {
                    let here = (cumulative - previous).max(0.0);
                    previous = *cumulative;
                    here as u64
                })
                .collect();
            HistogramDataPoint {
                attributes: attributes(&labels),
                start_time_unix_nano: start,
                time_unix_nano: time,
                count: count as u64,
                sum: Some(sum),
                bucket_counts,
                explicit_bounds: buckets.iter().map(|(b, _)| *b).filter(|b| b.is_finite()).collect(),
                exemplars: Vec::new(),
                flags: 0,
                min: None,
                max: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family as Labelled;
    use prometheus_client::metrics::gauge::Gauge as PromGauge;
    use prometheus_client::metrics::histogram::Histogram as PromHistogram;
    use prometheus_client::registry::Unit;

    fn registry() -> Registry {
        let mut registry = Registry::default();
        let requests = Labelled::<Vec<(String, String)>, Counter>::default();
        requests.get_or_create(&vec![("route".into(), "/v1/\"events\"".into())]).inc_by(3);
        registry.register("custodian_http_requests", "HTTP requests", requests);
        let lag = PromGauge::<i64>::default();
        lag.set(7);
        registry.register("custodian_consumer_pending", "Pending messages", lag);
        let latency = PromHistogram::new([0.1, 1.0]);
        for seconds in [0.05, 0.5, 0.7, 3.0] {
            latency.observe(seconds);
        }
        registry.register_with_unit("custodian_revocation", "Accepted to done", Unit::Seconds, latency);
        registry
    }

    fn metric<'a>(request: &'a ExportMetricsServiceRequest, name: &str) -> &'a Metric {
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{name} not exported: {metrics:#?}"))
    }

    #[test]
    fn a_registry_becomes_sums_gauges_and_histograms_under_the_services_resource() {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry()).unwrap();
        let request = to_request(&text, "custodian-vault", UNIX_EPOCH, UNIX_EPOCH + Duration::from_secs(60));
        let resource = request.resource_metrics[0].resource.as_ref().unwrap();
        assert_eq!(resource.attributes, vec![text_value("service.name", "custodian-vault")]);

        let Some(metric::Data::Sum(sum)) = &metric(&request, "custodian_http_requests").data else { panic!("a sum") };
        assert!(sum.is_monotonic);
        assert_eq!(sum.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        assert_eq!(sum.data_points.len(), 1);
        assert_eq!(sum.data_points[0].value, Some(number_data_point::Value::AsDouble(3.0)));
        assert_eq!(sum.data_points[0].attributes, vec![text_value("route", "/v1/\"events\"")], "labels unescaped");
        assert_eq!(sum.data_points[0].time_unix_nano, 60_000_000_000);

        let Some(metric::Data::Gauge(gauge)) = &metric(&request, "custodian_consumer_pending").data else {
            panic!("a gauge")
        };
        assert_eq!(gauge.data_points[0].value, Some(number_data_point::Value::AsDouble(7.0)));

        let revocation = metric(&request, "custodian_revocation_seconds");
        assert_eq!(revocation.unit, "seconds");
        let Some(metric::Data::Histogram(histogram)) = &revocation.data else { panic!("a histogram") };
        let point = &histogram.data_points[0];
        assert_eq!(point.explicit_bounds, vec![0.1, 1.0]);
        assert_eq!(point.bucket_counts, vec![1, 2, 1], "per bucket, not cumulative");
        assert_eq!(point.count, 4);
        assert!((point.sum.unwrap() - 4.25).abs() < 1e-9);
    }

    #[test]
    fn the_standard_variables_say_where_and_how_often() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        assert_eq!(MetricsTarget::from_vars(vars(&[])), Ok(None));
        let base = MetricsTarget::from_vars(vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]))
            .unwrap()
            .unwrap();
        assert_eq!(base.url, "http://collector:4318/v1/metrics");
        assert_eq!(base.every, Duration::from_secs(60));
        let own = MetricsTarget::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4318/custom"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20abc, x-tenant=t1"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(own.url, "http://m:4318/custom");
        assert_eq!(own.every, Duration::from_secs(5));
        assert_eq!(
            own.headers,
            vec![("authorization".to_owned(), "Bearer abc".to_owned()), ("x-tenant".to_owned(), "t1".to_owned())]
        );
        let off = vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_METRICS_EXPORTER", "none")]);
        assert_eq!(MetricsTarget::from_vars(off), Ok(None));
        let grpc = vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        assert!(MetricsTarget::from_vars(grpc).unwrap_err().contains("http/protobuf"));
        let bad = vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_METRIC_EXPORT_INTERVAL", "soon")]);
        assert!(MetricsTarget::from_vars(bad).unwrap_err().contains("OTEL_METRIC_EXPORT_INTERVAL"));
    }
}
