use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
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

/// Prometheus text exposition of every registered metric.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &state.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

pub async fn openapi() -> Response {
    let mut response = crate::OPENAPI.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
