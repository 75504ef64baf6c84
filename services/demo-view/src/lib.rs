//! A demo view, so the flow can be watched with `make run`: it asks the vault for a person's
//! access token (sealed to it), fetches the person's profile from the OP's userinfo endpoint
//! with it (the stand-in for health data), and holds that in memory through the view SDK —
//! never past the token's expiry, and wiped when the person revokes.
//!
//! `GET /` lists what it holds; `POST /sessions` `{subject}` opens a session and fetches;
//! `GET /sessions/{id}` shows a session's data if still held.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use custodian_bus::Bus;
use custodian_store::clock::SharedClock;
use custodian_view_sdk::View;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// `[demo_view]` in custodian.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoViewConfig {
    /// Run it with `custodian up`.
    pub enabled: bool,
    pub listen: SocketAddr,
    pub view_id: String,
    /// The platform whose tokens it uses.
    pub platform_id: String,
    /// The OP's userinfo endpoint (the data it fetches) and the CA to trust for it.
    pub userinfo_url: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
    /// How long it keeps what it fetched (never past the token).
    pub keep_secs: u64,
    /// Serve HTTPS with this certificate and key (plain HTTP only on loopback, or with
    /// `behind_tls_proxy`).
    pub tls: Option<custodian_web::TlsFiles>,
    pub behind_tls_proxy: bool,
}

impl Default for DemoViewConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            view_id: "demo".into(),
            platform_id: String::new(),
            userinfo_url: None,
            ca_file: None,
            keep_secs: 300,
            tls: None,
            behind_tls_proxy: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoViewError {
    #[error("demo view: {0}")]
    Setup(String),
    #[error("demo view HTTP server: {0}")]
    Serve(#[from] std::io::Error),
    #[error("demo view: {0}")]
    Web(#[from] custodian_web::WebError),
}

#[derive(Debug)]
pub struct Deps {
    pub bus: Bus,
    pub clock: SharedClock,
    pub listener: tokio::net::TcpListener,
}

#[derive(Debug)]
struct AppState {
    view: View,
    config: DemoViewConfig,
    http: custodian_oidc::reqwest::Client,
    clock: SharedClock,
    held: std::sync::Mutex<Vec<(String, String)>>,
}

pub async fn run(deps: Deps, config: DemoViewConfig, shutdown: CancellationToken) -> Result<(), DemoViewError> {
    let view =
        View::new(&config.view_id, deps.bus, deps.clock.clone()).map_err(|e| DemoViewError::Setup(e.to_string()))?;
    let http = custodian_oidc::http_client(config.ca_file.as_deref(), Duration::from_secs(10))
        .map_err(|e| DemoViewError::Setup(e.to_string()))?;
    let (tls, behind_tls_proxy) = (config.tls.clone(), config.behind_tls_proxy);
    let state =
        Arc::new(AppState { view: view.clone(), config, http, clock: deps.clock, held: std::sync::Mutex::default() });
    let listener_view = view.clone();
    let wipe_shutdown = shutdown.clone();
    let wipes = tokio::spawn(async move { listener_view.run(wipe_shutdown).await });
    let app = Router::new()
        .route("/", get(home))
        .route("/sessions", post(open))
        .route("/sessions/{session_id}", get(show))
        .with_state(state);
    tracing::info!(addr = ?deps.listener.local_addr().ok(), view_id = %view.view_id(), "demo view listening");
    let stopped = async move { shutdown.cancelled().await };
    match tls {
        Some(files) => {
            let listener = custodian_web::TlsListener::new(deps.listener, files.server_config()?)?;
            custodian_web::serve(listener, app, &custodian_web::ServeLimits::default(), stopped).await?;
        }
        None => {
            custodian_web::check_plaintext(deps.listener.local_addr()?, behind_tls_proxy)?;
            custodian_web::serve(deps.listener, app, &custodian_web::ServeLimits::default(), stopped).await?;
        }
    }
    wipes.abort();
    Ok(())
}

#[derive(Debug, Deserialize)]
struct OpenRequest {
    subject: String,
}

#[derive(Debug, Serialize)]
struct Opened {
    session_id: String,
    token_expires_at: chrono::DateTime<chrono::Utc>,
    held_until: chrono::DateTime<chrono::Utc>,
}

fn problem(status: StatusCode, detail: String) -> Response {
    let body = serde_json::json!({"type": "about:blank", "title": status.canonical_reason(), "status": status.as_u16(), "detail": detail});
    (status, [("content-type", "application/problem+json")], body.to_string()).into_response()
}

async fn open(State(state): State<Arc<AppState>>, Form(request): Form<OpenRequest>) -> Response {
    // The session is on record at the vault before any data is fetched.
    let started = match state
        .view
        .start_session(None, &request.subject, &state.config.platform_id, Duration::from_secs(10))
        .await
    {
        Ok(started) => started,
        Err(e @ custodian_view_sdk::ViewError::NoToken(_)) => return problem(StatusCode::FORBIDDEN, e.to_string()),
        Err(e) => return problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let (session_id, token) = (started.session_id, started.token);
    let fetched = match &state.config.userinfo_url {
        Some(url) => match state.http.get(url).bearer_auth(token.token.expose_secret()).send().await {
            Ok(r) if r.status().is_success() => Ok(r.bytes().await.map(|b| b.to_vec()).unwrap_or_default()),
            Ok(r) => Err(format!("userinfo answered {}", r.status())),
            Err(e) => Err(format!("userinfo unreachable: {e}")),
        },
        None => Ok(format!("{{\"fetched_at\":\"{}\"}}", state.clock.now()).into_bytes()),
    };
    let data = match fetched {
        Ok(data) => data,
        Err(reason) => {
            // Nothing held: the session ends here (a failure to say so leaves it to expire).
            if let Err(e) = state.view.close_session(&session_id).await {
                tracing::warn!(error = %e, "session not closed");
            }
            return problem(StatusCode::BAD_GATEWAY, reason);
        }
    };
    let until_token = (token.expires_at - state.clock.now()).to_std().unwrap_or_default();
    let keep = Duration::from_secs(state.config.keep_secs).min(until_token);
    let held_until = match state.view.store().put(&session_id, "profile", data, keep) {
        Ok(at) => at,
        Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    if let Ok(mut held) = state.held.lock() {
        held.push((session_id.clone(), request.subject.clone()));
    }
    (StatusCode::CREATED, Json(Opened { session_id, token_expires_at: token.expires_at, held_until })).into_response()
}

async fn show(State(state): State<Arc<AppState>>, Path(session_id): Path<String>) -> Response {
    match state.view.store().get(&session_id, "profile") {
        Some(data) => {
            let value: serde_json::Value = serde_json::from_slice(&data).unwrap_or(serde_json::Value::Null);
            Json(serde_json::json!({"session_id": session_id, "held": true, "data": value})).into_response()
        }
        None => Json(serde_json::json!({"session_id": session_id, "held": false})).into_response(),
    }
}

async fn home(State(state): State<Arc<AppState>>) -> Html<String> {
    let (sessions, entries) = state.view.store().counts();
    let held = state.held.lock().map(|h| h.clone()).unwrap_or_default();
    let rows: String = held
        .iter()
        .map(|(id, subject)| {
            let status = if state.view.store().has_session(id) { "held" } else { "wiped or expired" };
            format!(
                "<tr><td><a href=\"/sessions/{id}\">{id}</a></td><td>{}</td><td>{status}</td></tr>",
                escape(subject)
            )
        })
        .collect();
    Html(format!(
        "<!doctype html><title>Custodian demo view</title><h1>View <code>{}</code></h1>\
         <p>{sessions} session(s), {entries} entry(ies) in memory.</p>\
         <form method=post action=/sessions>Subject: <input name=subject> <button>Open a session and fetch</button></form>\
         <table border=1 cellpadding=4><tr><th>session</th><th>subject</th><th>status</th></tr>{rows}</table>",
        escape(state.view.view_id())
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
