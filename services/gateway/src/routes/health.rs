use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::problem::Problem;

/// Liveness: the process answers.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: NATS connected and the database answering.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Result<&'static str, Problem> {
    if !state.bus.is_connected() {
        return Err(Problem::unavailable("not connected to NATS"));
    }
    if let Some(store) = &state.store {
        store.ping().await.map_err(|_| Problem::unavailable("the database does not answer"))?;
    }
    Ok("ready")
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every registered metric, as OpenMetrics to a scraper that asks for it and as Prometheus
/// text 0.0.4 to any other (the format every Prometheus tool reads).
pub async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    render_metrics(&state.registry, &headers)
}

/// `registry` as [`metrics`] answers it (for a process's own metrics listener too).
pub fn render_metrics(registry: &prometheus_client::registry::Registry, headers: &HeaderMap) -> Response {
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let (body, content_type) = if accept.contains("application/openmetrics-text") {
        (body, OPENMETRICS)
    } else {
        (openmetrics_to_prometheus_text(&body), PROMETHEUS_TEXT)
    };
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Rewrites prometheus-client's OpenMetrics into the 0.0.4 text format: a counter's family
/// is named with its `_total` suffix, `info` becomes a gauge named `_info`, `unknown` is
/// `untyped`, and the `# UNIT`/`# EOF` lines and `_created` samples go.
fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let mut renamed: std::collections::HashMap<&str, (String, &str)> = std::collections::HashMap::new();
    let mut created: std::collections::HashSet<String> = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let Some((name, kind)) = rest.split_once(' ') else { continue };
        let (family, kind) = match kind {
            "counter" => (format!("{name}_total"), "counter"),
            "info" => (format!("{name}_info"), "gauge"),
            "unknown" | "stateset" | "gaugehistogram" => (name.to_owned(), "untyped"),
            other => (name.to_owned(), other),
        };
        if kind == "counter" {
            created.insert(format!("{name}_created"));
        }
        renamed.insert(name, (family, kind));
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_once(' ').map_or(rest, |(n, _)| n);
            if let Some((family, kind)) = renamed.get(name) {
                out.push_str(&format!("# TYPE {family} {kind}\n"));
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Some((family, _)) = renamed.get(name) {
                out.push_str(&format!("# HELP {family} {help}\n"));
                continue;
            }
        }
        let sample_name = line.split(['{', ' ']).next().unwrap_or_default();
        if !line.starts_with('#') && created.contains(sample_name) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

pub async fn openapi() -> Response {
    let mut response = crate::OPENAPI.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::openmetrics_to_prometheus_text;

    #[test]
    fn openmetrics_becomes_prometheus_text_with_counter_families_named_as_their_samples() {
        let openmetrics = "# HELP custodian_http_requests Requests.\n# TYPE custodian_http_requests counter\n\
            custodian_http_requests_total{method=\"GET\"} 3\ncustodian_http_requests_created 1.0\n\
            # HELP up_seconds Up.\n# TYPE up_seconds gauge\n# UNIT up_seconds seconds\nup_seconds 2\n\
            # TYPE build info\nbuild_info{v=\"1\"} 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus_text(openmetrics),
            "# HELP custodian_http_requests_total Requests.\n# TYPE custodian_http_requests_total counter\n\
             custodian_http_requests_total{method=\"GET\"} 3\n# HELP up_seconds Up.\n# TYPE up_seconds gauge\n\
             up_seconds 2\n# TYPE build_info gauge\nbuild_info{v=\"1\"} 1\n"
        );
    }
}
