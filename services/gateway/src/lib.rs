//! The HTTP front door. Platforms publish events (`POST /v1/events`); people list and revoke
//! their consents; operators query the ledger; probes and Prometheus get `/healthz`,
//! `/readyz`, `/metrics`; `/openapi.json` describes it all.
//!
//! Invariants: the gateway owns no tables — it publishes to JetStream (awaiting the ack)
//! and asks the owning service over NATS request/reply; every error is problem+json; a
//! person is known only from a token verified against the OP's keys.

pub mod auth;
pub mod limits;
pub mod problem;
pub mod registry;
pub mod routes;
pub mod ssf_receiver;
pub mod transmit;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use custodian_bus::Bus;
use custodian_store::Store;
use custodian_store::clock::SharedClock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use auth::{Caller, MachineToken, PersonAuthConfig, Role, token_digest};
pub use routes::login::{LOGIN_COOKIE, SESSION_COOKIE};

pub const SOURCE: &str = "urn:custodian:gateway";
/// The OpenAPI 3.1 description of this API (a test keeps it in step with the router).
pub const OPENAPI: &str = include_str!("../openapi.json");

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid gateway configuration: {0}")]
    Config(String),
    #[error("HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Web(#[from] custodian_web::WebError),
}

/// `[gateway]` in custodian.toml, `CUSTODIAN_GATEWAY__*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// The OP whose ID tokens identify people; without it, person endpoints answer 401.
    pub oidc: Option<PersonAuthConfig>,
    pub machine_tokens: Vec<MachineToken>,
    pub login: LoginConfig,
    /// Push CAEP session-revoked SETs to these receivers when consents or sessions end.
    pub ssf_transmitter: Option<transmit::TransmitterConfig>,
    /// Receive SETs from a transmitter: stream set-up, push or poll.
    pub ssf_receiver: Option<ssf_receiver::SsfReceiverConfig>,
    /// Serve HTTPS with this certificate and key.
    pub tls: Option<custodian_web::TlsFiles>,
    /// Without `tls`, plain HTTP is served only on loopback, unless a proxy in front
    /// terminates TLS and this says so.
    pub behind_tls_proxy: bool,
    /// An event dated more than this far past the gateway's clock is refused; one dated
    /// less far is recorded at the gateway's time, so nothing can be dated beyond a later
    /// revocation.
    pub max_clock_skew_secs: u64,
    /// Rate limits, timeouts and the connection cap.
    pub limits: limits::LimitsConfig,
    /// What the person's portal says of each platform, and its time zone.
    pub portal: registry::PortalConfig,
}

/// `[gateway.login]`: the person's sign-in (the code flow itself runs in the vault).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginConfig {
    /// The gateway's public base URL; cookies are `Secure` when it is https.
    pub public_url: String,
    /// Where the browser lands after sign-in and sign-out.
    pub after_login: String,
}

impl Default for LoginConfig {
    fn default() -> Self {
        Self { public_url: "http://127.0.0.1:8080".into(), after_login: "/".into() }
    }
}

impl LoginConfig {
    pub fn cookie_secure(&self) -> bool {
        self.public_url.starts_with("https://")
    }

    /// The session cookie's name: `__Host-` prefixed over HTTPS, so the browser takes it
    /// only from this host, sent Secure, for the whole site (a plain-HTTP or sibling-domain
    /// page cannot plant one).
    pub fn session_cookie_name(&self) -> &'static str {
        if self.cookie_secure() { "__Host-custodian_session" } else { routes::login::SESSION_COOKIE }
    }

    /// The login cookie is scoped to `/callback`, so `__Secure-` (a `__Host-` cookie's path is `/`).
    pub fn login_cookie_name(&self) -> &'static str {
        if self.cookie_secure() { "__Secure-custodian_login" } else { routes::login::LOGIN_COOKIE }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            oidc: None,
            machine_tokens: Vec::new(),
            login: LoginConfig::default(),
            ssf_transmitter: None,
            ssf_receiver: None,
            tls: None,
            behind_tls_proxy: false,
            max_clock_skew_secs: custodian_events::MAX_CLOCK_SKEW.as_secs(),
            limits: limits::LimitsConfig::default(),
            portal: registry::PortalConfig::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    pub requests: Family<Vec<(String, String)>, Counter>,
    /// Time to answer, per method and route (both bounded label sets).
    pub request_seconds: Histograms,
    pub events_published: Counter,
}

/// Histograms per label set, each made with [`request_buckets`].
pub type Histograms = Family<Vec<(String, String)>, Histogram, fn() -> Histogram>;

fn request_buckets() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(request_buckets as fn() -> Histogram),
            events_published: Counter::default(),
        }
    }
}

#[derive(Debug)]
pub struct AppState {
    pub bus: Bus,
    pub store: Option<Store>,
    pub auth: auth::Authenticator,
    pub clock: SharedClock,
    pub registry: Arc<Registry>,
    pub metrics: GatewayMetrics,
    pub login: LoginConfig,
    pub transmitter: Option<transmit::Transmitter>,
    /// The NATS KV bucket of seen logout-token and SET `jti`s (opened on first use).
    pub seen_jti: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    /// See [`GatewayConfig::max_clock_skew_secs`].
    pub max_clock_skew: chrono::Duration,
    pub rate_limiters: limits::RateLimiters,
    pub request_timeout: std::time::Duration,
    pub portal: registry::PortalConfig,
}

#[derive(Debug)]
pub struct Deps {
    pub bus: Bus,
    /// For readiness only: the gateway owns no tables.
    pub store: Option<Store>,
    pub clock: SharedClock,
    pub listener: tokio::net::TcpListener,
    /// Metrics of the services in this process, to which the gateway adds its own.
    pub registry: Registry,
}

pub fn router(state: Arc<AppState>) -> Router {
    let limiters = &state.rate_limiters;
    // Reachable by anyone, or writing: limited per client address (and per caller).
    let per_address = Router::new()
        .route("/login", get(routes::login::login))
        .route("/callback", get(routes::login::callback))
        .route("/oidc/backchannel-logout", post(routes::signals::backchannel_logout))
        .route("/console/login", post(routes::console::login))
        .route("/console/dead-letters/replay", post(routes::console::replay))
        .route("/ssf/events", post(routes::signals::security_event))
        .route_layer(limiters.per_address.clone());
    let events = Router::new()
        .route("/v1/events", post(routes::events::publish))
        .route_layer(limiters.per_caller.clone())
        .route_layer(limiters.per_address.clone());
    Router::new()
        .merge(per_address)
        .merge(events)
        .route("/v1/consents", get(routes::consents::ledger))
        .route("/v1/me/consents", get(routes::consents::mine))
        .route("/v1/me/consents/{platform_id}", delete(routes::consents::revoke_mine))
        .route("/v1/sweeps", post(routes::sweeps::start))
        .route("/v1/sweeps/{sweep_id}", get(routes::sweeps::show))
        .route("/v1/revocations/{revocation_id}", get(routes::revocations::show))
        .route("/v1/privacy-log", get(routes::privacy::read))
        .route("/v1/privacy-log/reads", get(routes::privacy::reads))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/v1/incidents", post(routes::incidents::report))
        .route("/v1/incidents/{incident_id}", get(routes::incidents::show))
        .route("/", get(routes::portal::portal))
        .route("/consents/revoke", get(routes::portal::confirm).post(routes::portal::revoke))
        .route("/receipts/{revocation_id}", get(routes::portal::receipt))
        .route("/logout", post(routes::login::logout))
        .route("/assets/custodian.css", get(custodian_web::pages::stylesheet))
        .route("/assets/live.js", get(custodian_web::pages::live_script))
        .route("/console", get(routes::console::console))
        .route("/console/logout", post(routes::console::logout))
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(routes::health::metrics))
        .route("/openapi.json", get(routes::health::openapi))
        .fallback(|| async { problem::Problem::not_found("no such endpoint") })
        .layer(middleware::from_fn(limits::read_body_first))
        .layer(middleware::from_fn_with_state(state.request_timeout, limits::time_limit))
        .layer(middleware::map_response(problem::bare_errors_as_problems))
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

/// Custodian's public keys (the SSF transmitter's SET signing key).
async fn jwks(State(state): State<Arc<AppState>>) -> axum::Json<serde_json::Value> {
    axum::Json(state.transmitter.as_ref().map_or_else(|| serde_json::json!({"keys": []}), transmit::Transmitter::jwks))
}

async fn count_requests(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched".to_owned(), |p| p.as_str().to_owned());
    // Methods anyone can make up fold into one value, so no caller can add series.
    let method = match *request.method() {
        Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::DELETE | Method::PATCH | Method::OPTIONS => {
            request.method().as_str().to_owned()
        }
        _ => "other".to_owned(),
    };
    // The caller's trace continues here (W3C `traceparent`); no path, query or header value
    // goes into the span, only the route's template.
    let span = tracing::info_span!(
        "http_request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let traceparent = request.headers().get(custodian_telemetry::TRACEPARENT).and_then(|v| v.to_str().ok());
    custodian_telemetry::adopt_remote_parent(&span, traceparent);
    let started = std::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    let timing = vec![("method".to_owned(), method.clone()), ("route".to_owned(), route.clone())];
    state.metrics.request_seconds.get_or_create(&timing).observe(started.elapsed().as_secs_f64());
    let labels = vec![
        ("method".to_owned(), method),
        ("route".to_owned(), route),
        ("status".to_owned(), response.status().as_u16().to_string()),
    ];
    state.metrics.requests.get_or_create(&labels).inc();
    response
}

/// `GET /metrics` of this process's services, for a process that runs no gateway.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), std::io::Error> {
    let registry = std::sync::Arc::new(registry);
    let exporting = custodian_telemetry::metrics_export::spawn_export(registry.clone(), shutdown.clone());
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let registry = registry.clone();
            async move { routes::health::render_metrics(&registry, &headers) }
        }),
    );
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    let served = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
    finish_export(exporting).await;
    served
}

/// Exports `registry` over OTLP, when configured, for a process that serves no `/metrics`.
pub async fn export_metrics(registry: Registry, shutdown: CancellationToken) -> Result<(), std::io::Error> {
    let exporting = custodian_telemetry::metrics_export::spawn_export(Arc::new(registry), shutdown.clone());
    shutdown.cancelled().await;
    finish_export(exporting).await;
    Ok(())
}

/// Serves until `shutdown`, then finishes in-flight requests.
pub async fn run(deps: Deps, config: GatewayConfig, shutdown: CancellationToken) -> Result<(), GatewayError> {
    let auth = auth::Authenticator::new(&config.machine_tokens, config.oidc.clone())?;
    config.portal.validate().map_err(GatewayError::Config)?;
    let metrics = GatewayMetrics::default();
    let mut registry = deps.registry;
    registry.register("custodian_http_requests", "HTTP requests by method, route and status", metrics.requests.clone());
    registry.register_with_unit(
        "custodian_http_request_duration",
        "Time to answer an HTTP request, by method and route",
        Unit::Seconds,
        metrics.request_seconds.clone(),
    );
    registry.register(
        "custodian_gateway_events_published",
        "Events accepted on POST /v1/events",
        metrics.events_published.clone(),
    );
    let registry = Arc::new(registry);
    // Also over OTLP when the standard variables say so.
    let exporting = custodian_telemetry::metrics_export::spawn_export(registry.clone(), shutdown.clone());
    let state = Arc::new(AppState {
        bus: deps.bus,
        store: deps.store,
        auth,
        clock: deps.clock,
        registry,
        metrics,
        login: config.login.clone(),
        transmitter: config.ssf_transmitter.clone().map(transmit::Transmitter::new).transpose()?,
        seen_jti: tokio::sync::OnceCell::new(),
        max_clock_skew: i64::try_from(config.max_clock_skew_secs)
            .ok()
            .and_then(chrono::Duration::try_seconds)
            .ok_or_else(|| {
                GatewayError::Config(format!("max_clock_skew_secs {} is too large", config.max_clock_skew_secs))
            })?,
        rate_limiters: limits::RateLimiters::new(&config.limits, shutdown.clone())?,
        request_timeout: std::time::Duration::from_millis(config.limits.request_timeout_ms.max(1)),
        portal: config.portal.clone(),
    });
    // SETs out to subscribed receivers, on a durable consumer (retries with backoff).
    let transmitting = match (&state.transmitter, &config.ssf_transmitter) {
        (Some(t), Some(c)) if !c.receivers.is_empty() => {
            let mut spec = custodian_bus::ConsumerSpec::new(
                "gateway",
                "ssf-transmit",
                &[custodian_events::subjects::CONSENT_ENDED, custodian_events::subjects::SESSION_REVOKE],
            );
            spec.batch = 50;
            spec.linger = std::time::Duration::ZERO;
            spec.nak_delay = std::time::Duration::from_millis(200);
            let (bus, clock, token) = (state.bus.clone(), state.clock.clone(), shutdown.clone());
            let handler = transmit::TransmitHandler { transmitter: t.clone() };
            Some(tokio::spawn(async move {
                if let Err(e) = custodian_bus::run_consumer(&bus, spec, handler, clock, token).await {
                    tracing::error!(error = %e, "SSF transmitter stopped");
                }
            }))
        }
        _ => None,
    };
    let addr = deps.listener.local_addr().map_err(GatewayError::Serve)?;
    tracing::info!(%addr, "gateway listening");
    let receiving =
        config.ssf_receiver.clone().map(|c| tokio::spawn(ssf_receiver::run(state.clone(), c, shutdown.clone())));
    let app = router(state);
    let stopped = async move { shutdown.cancelled().await };
    let served = match &config.tls {
        Some(files) => {
            let listener = custodian_web::TlsListener::new(deps.listener, files.server_config()?)?;
            custodian_web::serve(listener, app, &config.limits.serve, stopped).await
        }
        None => {
            custodian_web::check_plaintext(addr, config.behind_tls_proxy)?;
            custodian_web::serve(deps.listener, app, &config.limits.serve, stopped).await
        }
    }
    .map_err(GatewayError::Serve);
    for task in [transmitting, receiving].into_iter().flatten() {
        task.abort();
    }
    finish_export(exporting).await;
    served
}

/// The last export, sent once the process stops (briefly: a collector that is down does not
/// hold up the stop).
async fn finish_export(exporting: Option<tokio::task::JoinHandle<()>>) {
    if let Some(task) = exporting
        && tokio::time::timeout(std::time::Duration::from_secs(2), task).await.is_err()
    {
        tracing::debug!("the last metrics export did not finish in time");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_documents_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        for (method, path) in [
            ("post", "/v1/events"),
            ("get", "/v1/consents"),
            ("get", "/v1/me/consents"),
            ("delete", "/v1/me/consents/{platform_id}"),
            ("post", "/v1/sweeps"),
            ("get", "/v1/sweeps/{sweep_id}"),
            ("get", "/v1/revocations/{revocation_id}"),
            ("get", "/v1/privacy-log"),
            ("get", "/v1/privacy-log/reads"),
            ("post", "/v1/incidents"),
            ("post", "/oidc/backchannel-logout"),
            ("post", "/ssf/events"),
            ("get", "/.well-known/jwks.json"),
            ("get", "/v1/incidents/{incident_id}"),
            ("get", "/"),
            ("get", "/consents/revoke"),
            ("post", "/consents/revoke"),
            ("get", "/receipts/{revocation_id}"),
            ("get", "/assets/custodian.css"),
            ("get", "/assets/live.js"),
            ("get", "/console"),
            ("post", "/console/login"),
            ("post", "/console/logout"),
            ("post", "/console/dead-letters/replay"),
            ("get", "/login"),
            ("get", "/callback"),
            ("post", "/logout"),
            ("get", "/healthz"),
            ("get", "/readyz"),
            ("get", "/metrics"),
            ("get", "/openapi.json"),
        ] {
            assert!(doc["paths"][path][method].is_object(), "{method} {path} missing from openapi.json");
        }
    }
}
