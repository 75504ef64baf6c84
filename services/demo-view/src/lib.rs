//! The demo view, a reference for the views platforms build: it asks the vault for the
//! signed-in person's access token (sealed to it), fetches their profile from the OP's
//! userinfo endpoint with it (the stand-in for health data), and holds that in memory through
//! the view SDK — never past the token's expiry, and wiped when the person revokes.
//!
//! It serves only the person signed in at the platform: the platform's session cookie (the
//! gateway sets it for this host) is looked up at the vault, and every page and action is that
//! person's alone. `GET /` shows what it holds of them; `POST /sessions` (CSRF token) fetches
//! their profile; `GET /sessions/{id}` shows it while held. Pages are askama templates in the
//! person's language under the same CSP as the portal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use chrono::{DateTime, Utc};
use custodian_bus::Bus;
use custodian_store::clock::SharedClock;
use custodian_view_sdk::View;
use custodian_web::i18n::{Lang, Tr};
use custodian_web::pages::{LangChoice, html, lang_choices, remember_lang};
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
    /// The platform's portal (the gateway's public URL): where people sign in.
    pub portal_url: String,
    /// The platform's session cookie, as the gateway names it (`__Host-custodian_session`
    /// over HTTPS). Cookies are per host, not per port: the view on the same host gets it.
    pub session_cookie: String,
    /// Times on its pages are shown in this zone.
    pub time_zone: String,
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
            portal_url: "https://127.0.0.1:8080".into(),
            session_cookie: "__Host-custodian_session".into(),
            time_zone: "Europe/Brussels".into(),
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

/// A session this view opened, remembered only while its data may be held: the person it is
/// for, and until when.
#[derive(Debug, Clone)]
struct Opened {
    session_id: String,
    issuer: String,
    subject: String,
    opened_at: DateTime<Utc>,
    held_until: DateTime<Utc>,
}

#[derive(Debug)]
struct AppState {
    view: View,
    config: DemoViewConfig,
    http: custodian_oidc::reqwest::Client,
    clock: SharedClock,
    tz: chrono_tz::Tz,
    opened: std::sync::Mutex<Vec<Opened>>,
    secure_cookies: bool,
}

pub async fn run(deps: Deps, config: DemoViewConfig, shutdown: CancellationToken) -> Result<(), DemoViewError> {
    let view =
        View::new(&config.view_id, deps.bus, deps.clock.clone()).map_err(|e| DemoViewError::Setup(e.to_string()))?;
    let http = custodian_oidc::http_client(config.ca_file.as_deref(), Duration::from_secs(10))
        .map_err(|e| DemoViewError::Setup(e.to_string()))?;
    let tz = custodian_web::i18n::time_zone(&config.time_zone).map_err(DemoViewError::Setup)?;
    let (tls, behind_tls_proxy) = (config.tls.clone(), config.behind_tls_proxy);
    let state = Arc::new(AppState {
        view: view.clone(),
        secure_cookies: tls.is_some() || behind_tls_proxy,
        config,
        http,
        clock: deps.clock,
        tz,
        opened: std::sync::Mutex::default(),
    });
    let listener_view = view.clone();
    let wipe_shutdown = shutdown.clone();
    let wipes = tokio::spawn(async move { listener_view.run(wipe_shutdown).await });
    let app = Router::new()
        .route("/", get(home))
        .route("/sessions", axum::routing::post(open))
        .route("/sessions/{session_id}", get(show))
        .route("/assets/custodian.css", get(custodian_web::pages::stylesheet))
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

/// The person signed in at the platform, and the token their forms carry.
#[derive(Debug, Clone)]
struct Person {
    issuer: String,
    subject: String,
    csrf: String,
}

#[derive(Debug)]
struct Frame {
    tr: Tr,
    langs: Vec<LangChoice>,
    portal_url: String,
    person: Option<Person>,
}

#[derive(Debug, Default, Deserialize)]
struct LangQuery {
    lang: Option<String>,
}

fn csrf_token(cookie: &str) -> String {
    custodian_crypto::sha256_hex(&format!("custodian-demo-view-csrf\u{0}{cookie}"))
}

/// Who the platform's session cookie belongs to, asked of the vault. `Err` when the vault
/// did not answer (the page says so; nothing is shown as if signed out).
async fn person(state: &AppState, headers: &HeaderMap) -> Result<Option<Person>, String> {
    let Some(cookie) = custodian_web::pages::cookie(headers, &state.config.session_cookie) else { return Ok(None) };
    let signed_in = state.view.signed_in(&cookie, Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
    Ok(signed_in.map(|p| Person { issuer: p.issuer, subject: p.subject, csrf: csrf_token(&cookie) }))
}

async fn frame(state: &AppState, headers: &HeaderMap, lang: Option<&str>, path: &str) -> Result<Frame, Frame> {
    let tr = Tr::new(Lang::negotiate(lang, headers), state.tz);
    let mut frame =
        Frame { tr, langs: lang_choices(tr.lang, path), portal_url: state.config.portal_url.clone(), person: None };
    match person(state, headers).await {
        Ok(person) => {
            frame.person = person;
            Ok(frame)
        }
        Err(e) => {
            tracing::warn!(error = %e, "the vault did not say who is signed in");
            Err(frame)
        }
    }
}

/// A session of the person's, as the home page lists it.
#[derive(Debug)]
struct SessionLine {
    href: String,
    opened: String,
    held_until: String,
    state: String,
    held: bool,
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    page: Frame,
    unavailable: bool,
    message: Option<String>,
    sessions: Vec<SessionLine>,
}

#[derive(Template)]
#[template(path = "session.html")]
struct SessionPage {
    page: Frame,
    held: bool,
    fields: Vec<(String, String)>,
    opened: String,
    held_until: String,
}

fn respond(state: &AppState, status: StatusCode, rendered: askama::Result<String>, lang: Option<&str>) -> Response {
    let mut response = html(status, rendered);
    remember_lang(&mut response, lang, state.secure_cookies);
    response
}

/// The sessions of `person` still remembered; the memory of older ones is dropped here.
fn sessions_of(state: &AppState, person: &Person) -> Vec<Opened> {
    let now = state.clock.now();
    let Ok(mut opened) = state.opened.lock() else { return Vec::new() };
    opened.retain(|o| o.held_until > now);
    opened.iter().filter(|o| o.issuer == person.issuer && o.subject == person.subject).cloned().collect()
}

async fn home(State(state): State<Arc<AppState>>, headers: HeaderMap, Query(q): Query<LangQuery>) -> Response {
    let (frame, unavailable) = match frame(&state, &headers, q.lang.as_deref(), "/").await {
        Ok(frame) => (frame, false),
        Err(frame) => (frame, true),
    };
    let tr = frame.tr;
    let sessions = frame
        .person
        .as_ref()
        .map(|person| {
            let mut list = sessions_of(&state, person);
            list.sort_by_key(|o| std::cmp::Reverse(o.opened_at));
            list.into_iter()
                .map(|o| {
                    let held = state.view.store().has_session(&o.session_id);
                    let key = if held {
                        "view-state-held"
                    } else if state.view.store().was_wiped(&o.session_id) {
                        "view-state-wiped"
                    } else {
                        "view-state-expired"
                    };
                    SessionLine {
                        href: format!("/sessions/{}", o.session_id),
                        opened: tr.t1("view-session-opened", "time", &tr.datetime(&o.opened_at)),
                        held_until: tr.t1("view-held-until", "time", &tr.datetime(&o.held_until)),
                        state: tr.t(key),
                        held,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let status = if unavailable { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let page = HomePage { page: frame, unavailable, message: None, sessions };
    respond(&state, status, page.render(), q.lang.as_deref())
}

#[derive(Debug, Deserialize)]
struct OpenForm {
    #[serde(default)]
    csrf: String,
}

/// A page of the home's kind with one message, e.g. why nothing was fetched.
fn home_with(state: &AppState, frame: Frame, status: StatusCode, key: &str) -> Response {
    let message = Some(frame.tr.t(key));
    let page = HomePage { page: frame, unavailable: false, message, sessions: Vec::new() };
    respond(state, status, page.render(), None)
}

/// `POST /sessions`: fetches the signed-in person's profile into a new session.
async fn open(State(state): State<Arc<AppState>>, headers: HeaderMap, Form(form): Form<OpenForm>) -> Response {
    let frame = match frame(&state, &headers, None, "/").await {
        Ok(frame) => frame,
        Err(frame) => return home_with(&state, frame, StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    let Some(person) = frame.person.clone() else {
        return home_with(&state, frame, StatusCode::UNAUTHORIZED, "view-signed-out");
    };
    let ours = custodian_web::pages::sent_from_this_site(&headers);
    if !ours || custodian_crypto::sha256_hex(&form.csrf) != custodian_crypto::sha256_hex(&person.csrf) {
        return home_with(&state, frame, StatusCode::FORBIDDEN, "view-forged");
    }
    // The session is on record at the vault before any data is fetched.
    let started = match state
        .view
        .start_session(Some(&person.issuer), &person.subject, &state.config.platform_id, Duration::from_secs(10))
        .await
    {
        Ok(started) => started,
        Err(custodian_view_sdk::ViewError::NoToken(_)) => {
            return home_with(&state, frame, StatusCode::FORBIDDEN, "view-no-token");
        }
        Err(e) => {
            tracing::warn!(error = %e, "no session started");
            return home_with(&state, frame, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        }
    };
    let (session_id, token) = (started.session_id, started.token);
    let fetched = match &state.config.userinfo_url {
        Some(url) => match state.http.get(url).bearer_auth(token.token.expose_secret()).send().await {
            Ok(r) if r.status().is_success() => Ok(r.bytes().await.map(|b| b.to_vec()).unwrap_or_default()),
            Ok(r) => Err(format!("userinfo answered {}", r.status())),
            Err(e) => Err(format!("userinfo unreachable: {e}")),
        },
        None => Ok(serde_json::json!({"fetched_at": state.clock.now()}).to_string().into_bytes()),
    };
    let data = match fetched {
        Ok(data) => data,
        Err(reason) => {
            tracing::warn!(%reason, "nothing fetched");
            // Nothing held: the session ends here (a failure to say so leaves it to expire).
            if let Err(e) = state.view.close_session(&session_id).await {
                tracing::warn!(error = %e, "session not closed");
            }
            return home_with(&state, frame, StatusCode::BAD_GATEWAY, "view-failed");
        }
    };
    let until_token = (token.expires_at - state.clock.now()).to_std().unwrap_or_default();
    let keep = Duration::from_secs(state.config.keep_secs).min(until_token);
    let held_until = match state.view.store().put(&session_id, "profile", data, keep) {
        Ok(at) => at,
        Err(e) => {
            tracing::warn!(error = %e, "not held");
            return home_with(&state, frame, StatusCode::UNPROCESSABLE_ENTITY, "view-failed");
        }
    };
    if let Ok(mut opened) = state.opened.lock() {
        opened.push(Opened {
            session_id: session_id.clone(),
            issuer: person.issuer,
            subject: person.subject,
            opened_at: state.clock.now(),
            held_until,
        });
    }
    Redirect::to(&format!("/sessions/{session_id}")).into_response()
}

/// The profile as label and value, in the order the OP gave it: text, not JSON.
fn fields(data: &[u8]) -> Vec<(String, String)> {
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Array(items) => items
                        .into_iter()
                        .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join(", "),
                    other => other.to_string(),
                };
                (k, text)
            })
            .collect(),
        _ => vec![("data".into(), String::from_utf8_lossy(data).into_owned())],
    }
}

/// `GET /sessions/{id}`: one of the person's sessions; another's is the same as none.
async fn show(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(session_id): Path<String>,
    Query(q): Query<LangQuery>,
) -> Response {
    let path = format!("/sessions/{}", uuid::Uuid::parse_str(&session_id).map(|u| u.to_string()).unwrap_or_default());
    let frame = match frame(&state, &headers, q.lang.as_deref(), &path).await {
        Ok(frame) => frame,
        Err(frame) => return home_with(&state, frame, StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    let Some(person) = frame.person.clone() else {
        return home_with(&state, frame, StatusCode::UNAUTHORIZED, "view-signed-out");
    };
    let Some(opened) = sessions_of(&state, &person).into_iter().find(|o| o.session_id == session_id) else {
        return home_with(&state, frame, StatusCode::NOT_FOUND, "view-data-gone");
    };
    let tr = frame.tr;
    let data = state.view.store().get(&session_id, "profile");
    let page = SessionPage {
        held: data.is_some(),
        fields: data.as_deref().map(|d| fields(d)).unwrap_or_default(),
        opened: tr.t1("view-session-opened", "time", &tr.datetime(&opened.opened_at)),
        held_until: tr.t1("view-held-until", "time", &tr.datetime(&opened.held_until)),
        page: frame,
    };
    respond(&state, StatusCode::OK, page.render(), q.lang.as_deref())
}
