//! Who is calling. People present a bearer ID token (or JWT access token) from the OP,
//! verified against its JWKS (signature, iss, aud, exp) — never a plain header. Machines
//! present an opaque bearer token whose SHA-256 is configured with a role.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::AppState;
use crate::problem::Problem;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Platform,
    Ops,
    Responder,
    Dpo,
}

/// A machine caller: `sha256` is the hex SHA-256 of its bearer token (the token itself is
/// never configured or stored).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineToken {
    pub name: String,
    pub role: Role,
    pub sha256: String,
    /// The platform role only: the platforms (OIDC client ids) this token speaks for, and no
    /// other. Required for that role, refused for the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platform_ids: Vec<String>,
}

impl MachineToken {
    fn check(&self) -> Result<(), String> {
        match (self.role, self.platform_ids.is_empty()) {
            (Role::Platform, true) => Err(format!(
                "machine token {} has the platform role but names no platform_ids: a platform token speaks \
                 for the platforms it lists, never for all",
                self.name
            )),
            (Role::Platform, false) => Ok(()),
            (role, false) => Err(format!(
                "machine token {} has the {} role: platform_ids are for platform tokens only",
                self.name,
                role.label()
            )),
            (_, true) => Ok(()),
        }
    }
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Platform => "platform",
            Role::Ops => "ops",
            Role::Responder => "responder",
            Role::Dpo => "dpo",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Person { issuer: String, subject: String },
    Machine { name: String, role: Role, platform_ids: Arc<[String]> },
}

impl Caller {
    pub fn require_role(&self, role: Role) -> Result<(), Problem> {
        match self {
            Caller::Machine { role: r, .. } if *r == role => Ok(()),
            _ => Err(Problem::forbidden(format!("requires the {} role", role.label()))),
        }
    }

    /// A platform caller's name and the platforms it speaks for.
    pub fn require_platform(&self) -> Result<(&str, &[String]), Problem> {
        match self {
            Caller::Machine { name, role: Role::Platform, platform_ids } => Ok((name, platform_ids)),
            _ => Err(Problem::forbidden("requires the platform role")),
        }
    }

    pub fn require_person(&self) -> Result<(&str, &str), Problem> {
        match self {
            Caller::Person { issuer, subject } => Ok((issuer, subject)),
            Caller::Machine { .. } => {
                Err(Problem::forbidden("this endpoint is for people signed in at the OpenID provider"))
            }
        }
    }
}

/// The OP whose tokens identify people.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonAuthConfig {
    pub issuer: String,
    /// Our client_id: the token's `aud` must contain it.
    pub audience: String,
    /// Extra CA (PEM) to trust for the OP's TLS (the test OP's throwaway CA).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Other client ids (platforms) whose logout tokens and security events are accepted.
    #[serde(default)]
    pub extra_audiences: Vec<String>,
    /// The level of assurance the platform requires; a CAEP assurance-level-change below it
    /// ends the person's sessions.
    #[serde(default)]
    pub required_acr: Option<String>,
    /// Known levels, weakest first.
    #[serde(default)]
    pub acr_order: Vec<String>,
    /// SHA-256 (hex) of the bearer token a transmitter must present on `POST /ssf/events`
    /// (RFC 8935 §2.3); when unset, the SET's signature is the only authentication.
    #[serde(default)]
    pub ssf_push_token_sha256: Option<String>,
}

/// Why a signed token from the OP (logout token, security event token) was refused; the codes
/// are RFC 8935's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalError {
    InvalidRequest(String),
    InvalidKey(String),
    InvalidIssuer(String),
    InvalidAudience(String),
    /// The push came without the credentials this receiver requires (RFC 8935 §2.3).
    AuthenticationFailed(String),
    /// The credentials are valid but not allowed to push here.
    AccessDenied(String),
    Unavailable(String),
}

impl SignalError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) | Self::Unavailable(_) => "invalid_request",
            Self::InvalidKey(_) => "invalid_key",
            Self::InvalidIssuer(_) => "invalid_issuer",
            Self::InvalidAudience(_) => "invalid_audience",
            Self::AuthenticationFailed(_) => "authentication_failed",
            Self::AccessDenied(_) => "access_denied",
        }
    }

    pub fn description(&self) -> &str {
        match self {
            Self::InvalidRequest(d)
            | Self::InvalidKey(d)
            | Self::InvalidIssuer(d)
            | Self::InvalidAudience(d)
            | Self::AuthenticationFailed(d)
            | Self::AccessDenied(d) => d,
            Self::Unavailable(d) => d,
        }
    }
}

/// A verified token's header `typ` and claims.
#[derive(Debug, Clone)]
pub struct Verified {
    pub typ: Option<String>,
    pub claims: serde_json::Value,
    /// The accepted audience it was addressed to (a platform's client id).
    pub audience: String,
}

#[derive(Debug)]
pub struct Authenticator {
    machines: HashMap<String, (String, Role, Arc<[String]>)>,
    person: Option<PersonVerifier>,
}

#[derive(Debug)]
struct PersonVerifier {
    config: PersonAuthConfig,
    http: reqwest::Client,
    keys: RwLock<Option<(JwkSet, Instant)>>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
}

const ALGORITHMS: [Algorithm; 7] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];
/// Don't refetch the JWKS more often than this on an unknown key id.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);

impl Authenticator {
    pub fn new(machines: &[MachineToken], person: Option<PersonAuthConfig>) -> Result<Self, crate::GatewayError> {
        for machine in machines {
            machine.check().map_err(crate::GatewayError::Config)?;
        }
        let machines = machines
            .iter()
            .map(|m| (m.sha256.to_ascii_lowercase(), (m.name.clone(), m.role, Arc::from(m.platform_ids.clone()))))
            .collect();
        let person = match person {
            None => None,
            Some(config) => {
                let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
                if let Some(ca) = &config.ca_file {
                    let pem = std::fs::read(ca).map_err(|e| {
                        crate::GatewayError::Config(format!("cannot read oidc.ca_file {}: {e}", ca.display()))
                    })?;
                    let cert = reqwest::Certificate::from_pem(&pem)
                        .map_err(|e| crate::GatewayError::Config(format!("oidc.ca_file is not PEM: {e}")))?;
                    builder = builder.tls_certs_merge([cert]);
                }
                let http = builder.build().map_err(|e| crate::GatewayError::Config(format!("HTTP client: {e}")))?;
                Some(PersonVerifier { config, http, keys: RwLock::new(None) })
            }
        };
        Ok(Self { machines, person })
    }

    /// The OP whose people this gateway accepts, if configured.
    pub fn person_issuer(&self) -> Option<&str> {
        self.person.as_ref().map(|p| p.config.issuer.as_str())
    }

    /// Verifies a token the OP signed (signature by its JWKS, `iss`, `aud`, `iat`, `exp` if
    /// present), classifying failures with RFC 8935's codes.
    pub async fn verify_from_op(&self, token: &str) -> Result<Verified, SignalError> {
        let person =
            self.person.as_ref().ok_or_else(|| SignalError::Unavailable("no OpenID provider configured".into()))?;
        person.verify_signal(token).await
    }

    /// The person verifier's settings, when configured.
    pub fn person_config(&self) -> Option<&PersonAuthConfig> {
        self.person.as_ref().map(|p| &p.config)
    }

    pub async fn authenticate(&self, bearer: &str) -> Result<Caller, Problem> {
        let digest = token_digest(bearer);
        if let Some((name, role, platform_ids)) = self.machines.get(&digest) {
            return Ok(Caller::Machine { name: name.clone(), role: *role, platform_ids: Arc::clone(platform_ids) });
        }
        let Some(person) = &self.person else {
            return Err(Problem::unauthorized("unknown bearer token"));
        };
        person.verify(bearer).await
    }
}

impl PersonVerifier {
    async fn verify(&self, token: &str) -> Result<Caller, Problem> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Problem::unauthorized("unknown bearer token"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(Problem::unauthorized("unsupported token algorithm"));
        }
        let jwk = self.key_for(header.kid.as_deref()).await?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| Problem::unauthorized("the provider's key is unusable"))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| Problem::unauthorized(format!("token rejected: {}", token_error(&e))))?;
        Ok(Caller::Person { issuer: data.claims.iss, subject: data.claims.sub })
    }

    async fn verify_signal(&self, token: &str) -> Result<Verified, SignalError> {
        let bad = |d: &str| SignalError::InvalidRequest(d.to_owned());
        let alg = signed_alg(token)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad("unreadable JOSE header"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(SignalError::InvalidKey(format!("algorithm {alg} is not accepted")));
        }
        let jwk = self.key_for(header.kid.as_deref()).await.map_err(|p| {
            if p.status == 503 {
                SignalError::Unavailable("cannot reach the OpenID provider for its keys".into())
            } else {
                SignalError::InvalidKey("signed by a key the OpenID provider does not publish".into())
            }
        })?;
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|_| SignalError::InvalidKey("the provider's key is unusable".into()))?;
        let mut validation = Validation::new(header.alg);
        validation.validate_aud = false;
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|_| SignalError::InvalidKey("the signature does not verify".into()))?;
        let claims = data.claims;
        let accepted: Vec<&str> = std::iter::once(self.config.audience.as_str())
            .chain(self.config.extra_audiences.iter().map(String::as_str))
            .collect();
        #[allow(clippy::disallowed_methods)] // token times are checked against the wall clock
        let now = chrono::Utc::now().timestamp();
        let audience = check_standard_claims(&claims, &self.config.issuer, &accepted, now)?;
        Ok(Verified { typ: header.typ, claims, audience })
    }

    async fn key_for(&self, kid: Option<&str>) -> Result<jsonwebtoken::jwk::Jwk, Problem> {
        let find = |set: &JwkSet| match kid {
            Some(kid) => set.find(kid).cloned(),
            None => set.keys.first().cloned(),
        };
        if let Some((set, _)) = self.keys.read().await.as_ref()
            && let Some(jwk) = find(set)
        {
            return Ok(jwk);
        }
        let mut guard = self.keys.write().await;
        let fresh_enough = guard.as_ref().is_some_and(|(_, at)| at.elapsed() < JWKS_MIN_REFRESH);
        if !fresh_enough || guard.is_none() {
            let set = self.fetch_jwks().await?;
            *guard = Some((set, Instant::now()));
        }
        guard
            .as_ref()
            .and_then(|(set, _)| find(set))
            .ok_or_else(|| Problem::unauthorized("token signed by an unknown key"))
    }

    async fn fetch_jwks(&self) -> Result<JwkSet, Problem> {
        #[derive(Deserialize)]
        struct Discovery {
            jwks_uri: String,
        }
        let unavailable = |e: reqwest::Error| {
            tracing::warn!(error = %e, "cannot reach the OpenID provider for its keys");
            Problem::unavailable("cannot reach the OpenID provider to verify the token")
        };
        let discovery: Discovery = self
            .http
            .get(format!("{}/.well-known/openid-configuration", self.config.issuer.trim_end_matches('/')))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)?;
        self.http
            .get(discovery.jwks_uri)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)
    }
}

/// The `alg` of a compact JWS, refusing unsigned ones (`alg: none`). Pure: fuzzed.
pub fn signed_alg(token: &str) -> Result<String, SignalError> {
    use base64::Engine as _;
    let bad = |d: &str| SignalError::InvalidRequest(d.to_owned());
    let mut parts = token.split('.');
    let header_b64 = parts.next().ok_or_else(|| bad("not a JWS"))?;
    if parts.count() != 2 {
        return Err(bad("not a compact JWS (three parts)"));
    }
    let raw_header: serde_json::Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header_b64.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("unreadable JOSE header"))?;
    let alg = raw_header["alg"].as_str().unwrap_or_default();
    if alg.eq_ignore_ascii_case("none") || alg.is_empty() {
        return Err(SignalError::InvalidKey("unsigned tokens (alg none) are refused".into()));
    }
    Ok(alg.to_owned())
}

/// How old a logout token or SET may be (by `iat`); its `jti` is remembered this long, so
/// no signal can be replayed once its `jti` is forgotten.
pub const SIGNAL_MAX_AGE_SECS: i64 = custodian_bus::SEEN_JTI_TTL.as_secs() as i64;

/// `iss`, `aud` (one of `accepted`, returned), `iat`, `exp` if present. Pure: fuzzed.
pub fn check_standard_claims(
    claims: &serde_json::Value,
    issuer: &str,
    accepted: &[&str],
    now: i64,
) -> Result<String, SignalError> {
    let bad = |d: &str| SignalError::InvalidRequest(d.to_owned());
    if claims["iss"].as_str().map(|i| i.trim_end_matches('/')) != Some(issuer.trim_end_matches('/')) {
        return Err(SignalError::InvalidIssuer("iss is not our OpenID provider".into()));
    }
    let audiences: Vec<&str> = match &claims["aud"] {
        serde_json::Value::String(a) => vec![a.as_str()],
        serde_json::Value::Array(list) => list.iter().filter_map(|v| v.as_str()).collect(),
        _ => Vec::new(),
    };
    let audience = audiences
        .iter()
        .find(|a| accepted.contains(a))
        .ok_or_else(|| SignalError::InvalidAudience("aud does not name this receiver".into()))?
        .to_string();
    let iat = claims["iat"].as_i64().ok_or_else(|| bad("iat is missing"))?;
    if iat > now.saturating_add(60) {
        return Err(bad("iat is in the future"));
    }
    if iat < now.saturating_sub(SIGNAL_MAX_AGE_SECS) {
        return Err(bad("iat is older than the replay window (7 days)"));
    }
    if let Some(exp) = claims.get("exp") {
        let exp = exp.as_i64().ok_or_else(|| bad("exp is not a number"))?;
        if exp.saturating_add(30) < now {
            return Err(bad("the token has expired"));
        }
    }
    Ok(audience)
}

fn token_error(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::MissingRequiredClaim(_) => "missing claim",
        _ => "invalid token",
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        // A person signed in through /login carries a session cookie instead.
        if header.is_none()
            && let Some(cookie) = crate::routes::login::session_cookie(&state.login, &parts.headers)
        {
            return crate::routes::login::person_of_cookie(state, &cookie).await;
        }
        let value =
            header.ok_or_else(|| Problem::unauthorized("missing Authorization: Bearer header or session cookie"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Problem::unauthorized("Authorization must be a Bearer token"))?;
        state.auth.authenticate(token).await
    }
}

/// Hex SHA-256 of a machine token, as configured in `machine_tokens`.
pub fn token_digest(token: &str) -> String {
    custodian_crypto::sha256_hex(token)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn token(role: Role, platform_ids: &[&str]) -> MachineToken {
        MachineToken {
            name: "t".into(),
            role,
            sha256: "0".repeat(64),
            platform_ids: platform_ids.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    #[test]
    fn a_platform_token_must_name_its_platforms_and_only_it_may() {
        assert!(token(Role::Platform, &[]).check().unwrap_err().contains("names no platform_ids"));
        assert!(token(Role::Platform, &["tp"]).check().is_ok());
        assert!(token(Role::Ops, &["tp"]).check().unwrap_err().contains("platform tokens only"));
        assert!(token(Role::Responder, &[]).check().is_ok());
    }

    #[test]
    fn a_signal_is_taken_only_within_the_window_its_jti_is_remembered() {
        let now = 1_800_000_000;
        let claims = |iat: i64| json!({"iss": "https://op", "aud": "tp", "iat": iat});
        let check = |iat| check_standard_claims(&claims(iat), "https://op", &["tp"], now);
        assert!(check(now).is_ok());
        assert!(check(now - SIGNAL_MAX_AGE_SECS).is_ok());
        assert!(check(now - SIGNAL_MAX_AGE_SECS - 1).unwrap_err().description().contains("replay window"));
        assert!(check(now + 61).unwrap_err().description().contains("future"));
    }
}
