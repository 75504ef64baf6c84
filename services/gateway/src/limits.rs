//! Request bounds: per-address and per-caller rate limits on the routes anyone can reach or
//! that write (sign-in, the OP's signals, event publishing), and a time limit on handling.
//! Every refusal is a problem+json answer (429 with `Retry-After`, 503 on a request that ran
//! out of time).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Response, StatusCode, header};
use axum::middleware::Next;
use axum::response::IntoResponse;
use governor::middleware::NoOpMiddleware;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tower_governor::GovernorError;
use tower_governor::GovernorLayer;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;

use crate::GatewayError;
use crate::problem::Problem;

/// A token bucket: `burst` requests at once, one more every `replenish_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub burst: u32,
    pub replenish_ms: u64,
}

/// `[gateway.limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Per client address, on `/login`, `/callback`, `/ssf/events`,
    /// `/oidc/backchannel-logout` and `/v1/events`.
    pub per_address: Rate,
    /// Per bearer token (per address without one), on `/v1/events`.
    pub per_caller: Rate,
    /// A request not answered by then gets 503.
    pub request_timeout_ms: u64,
    /// The connection's bounds: request-head timeout, connection cap.
    #[serde(flatten)]
    pub serve: custodian_web::ServeLimits,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            per_address: Rate { burst: 60, replenish_ms: 100 },
            per_caller: Rate { burst: 500, replenish_ms: 2 },
            request_timeout_ms: 30_000,
            serve: custodian_web::ServeLimits::default(),
        }
    }
}

/// The peer's address (set by [`custodian_web::serve`] on every request).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddress;

impl KeyExtractor for PeerAddress {
    type Key = IpAddr;

    fn extract<T>(&self, request: &axum::http::Request<T>) -> Result<Self::Key, GovernorError> {
        peer(request).ok_or(GovernorError::UnableToExtractKey)
    }
}

/// The caller: the digest of its bearer token, or its address when it shows none.
#[derive(Debug, Clone, Copy)]
pub struct BearerOrAddress;

impl KeyExtractor for BearerOrAddress {
    type Key = String;

    fn extract<T>(&self, request: &axum::http::Request<T>) -> Result<Self::Key, GovernorError> {
        let bearer = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
        match bearer {
            Some(token) => Ok(format!("token:{}", crate::auth::token_digest(token.trim()))),
            None => peer(request).map(|ip| format!("address:{ip}")).ok_or(GovernorError::UnableToExtractKey),
        }
    }
}

fn peer<T>(request: &axum::http::Request<T>) -> Option<IpAddr> {
    request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip())
}

fn config<K: KeyExtractor>(
    rate: Rate,
    key: K,
    what: &str,
) -> Result<Arc<GovernorConfig<K, NoOpMiddleware>>, GatewayError> {
    GovernorConfigBuilder::default()
        .key_extractor(key)
        .per_millisecond(rate.replenish_ms.max(1))
        .burst_size(rate.burst.max(1))
        .finish()
        .map(Arc::new)
        .ok_or_else(|| GatewayError::Config(format!("limits.{what}: burst and replenish_ms must be positive")))
}

fn refused(error: GovernorError) -> Response<Body> {
    match error {
        GovernorError::TooManyRequests { wait_time, .. } => {
            let wait = wait_time.max(1);
            let mut response = Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests")
                .detail(format!("retry in {wait} s"))
                .into_response();
            if let Ok(value) = HeaderValue::from_str(&wait.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        GovernorError::UnableToExtractKey | GovernorError::Other { .. } => {
            Problem::internal("the caller could not be told apart for rate limiting").into_response()
        }
    }
}

/// The layers, built once per gateway; their limiters forget idle keys every minute until
/// `shutdown`.
#[derive(Clone)]
pub struct RateLimiters {
    pub per_address: GovernorLayer<PeerAddress, NoOpMiddleware, Body>,
    pub per_caller: GovernorLayer<BearerOrAddress, NoOpMiddleware, Body>,
}

impl std::fmt::Debug for RateLimiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimiters")
    }
}

impl RateLimiters {
    pub fn new(limits: &LimitsConfig, shutdown: CancellationToken) -> Result<Self, GatewayError> {
        let per_address = config(limits.per_address, PeerAddress, "per_address")?;
        let per_caller = config(limits.per_caller, BearerOrAddress, "per_caller")?;
        let (a, c) = (Arc::clone(&per_address), Arc::clone(&per_caller));
        // Keys whose bucket is full again take no memory: the limiters hold the callers of
        // about the last minute, however many came before.
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = every.tick() => {
                        a.limiter().retain_recent();
                        c.limiter().retain_recent();
                    }
                }
            }
        });
        Ok(Self {
            per_address: GovernorLayer::new(per_address).error_handler(refused),
            per_caller: GovernorLayer::new(per_caller).error_handler(refused),
        })
    }
}

/// The largest request body the gateway reads (axum's own default for a body extractor).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Reads the whole request body, up to [`MAX_BODY_BYTES`], before anything answers. A refusal
/// sent while the client is still sending (a 429, a 401) would close the connection on its
/// unread bytes, which the kernel turns into a reset: the client loses the answer (over TLS it
/// sees "EOF in violation of protocol"). Read first, the answer arrives and the connection
/// stays usable. Runs inside [`time_limit`], so a body that trickles is bounded too.
pub async fn read_body_first(request: Request, next: Next) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Err(e) if is_too_large(&e) => {
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Payload Too Large")
                .detail(format!("at most {MAX_BODY_BYTES} bytes"))
                .into_response()
        }
        Err(_) => Problem::bad_request("the request body could not be read to its end").into_response(),
    }
}

fn is_too_large(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Bounds the handling of a request in time.
pub async fn time_limit(State(timeout): State<Duration>, request: Request, next: Next) -> axum::response::Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            Problem::unavailable(format!("the request was not answered within {} ms; retry", timeout.as_millis()))
                .into_response()
        }
    }
}
