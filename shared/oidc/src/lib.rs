//! The platform's side of OpenID Connect, as a confidential client (`openidconnect` 4):
//! discovery (with the revocation, introspection and end-session endpoints read from the raw
//! document), authorization code + PKCE S256 with state and nonce, ID token validation (iss,
//! aud, exp, signature, nonce, and the minimum `acr`), refresh, RFC 7009 revocation and
//! RFC 7662 introspection.
//!
//! Tokens and the client secret are [`SecretString`]s; no error or log line of this crate
//! carries one (the OP's error bodies are reduced to their `error` code).

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod,
    CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode,
    CoreResponseType, CoreRevocableToken, CoreSubjectIdentifierType,
};
use openidconnect::{
    AccessToken, AdditionalProviderMetadata, AuthenticationContextClass, AuthorizationCode, ClientId, ClientSecret,
    CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IntrospectionUrl, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl, RefreshToken, RequestTokenError, RevocationUrl,
    Scope, TokenIntrospectionResponse, TokenResponse,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub use openidconnect::reqwest;

/// `[oidc]`: the OP and this platform's client registration there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    /// The OP's issuer URL (discovery at `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    /// PEM bundle of CAs to trust for the OP (e.g. the test OP's throwaway CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// This platform's `client_id` (also its `platform_id` in events).
    pub client_id: String,
    pub client_secret: SecretString,
    /// Where the OP sends the person back (the gateway's `/callback`).
    pub redirect_uri: String,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The level of assurance this platform needs (the highest among its applications).
    #[serde(default)]
    pub required_acr: Option<String>,
    /// Known `acr` values from weakest to strongest, to compare levels.
    #[serde(default)]
    pub acr_order: Vec<String>,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "offline_access".into()]
}

fn default_timeout() -> u64 {
    10
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("OIDC configuration: {0}")]
    Config(String),
    #[error("OP discovery failed: {0}")]
    Discovery(String),
    /// Network, timeout, 5xx, unparseable answer: worth retrying.
    #[error("OP unreachable or failing: {0}")]
    Unavailable(String),
    /// The OP said no (e.g. `invalid_grant`): retrying the same request will not help.
    #[error("OP refused: {0}")]
    Refused(String),
    #[error("ID token rejected: {0}")]
    IdToken(String),
}

impl OidcError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Discovery(_))
    }

    /// The OP did not authenticate the client (wrong or rotated secret), as opposed to refusing
    /// the grant or token it was given.
    pub fn is_client_refused(&self) -> bool {
        matches!(self, Self::Refused(code) if code == "invalid_client")
    }
}

/// The end points `openidconnect`'s core metadata type does not keep.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ExtraEndpoints {
    revocation_endpoint: Option<String>,
    introspection_endpoint: Option<String>,
    end_session_endpoint: Option<String>,
}
impl AdditionalProviderMetadata for ExtraEndpoints {}

type Metadata = ProviderMetadata<
    ExtraEndpoints,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type Client = CoreClient<EndpointSet, EndpointNotSet, EndpointSet, EndpointSet, EndpointSet, EndpointMaybeSet>;

/// What to send the person's browser to, and what to keep (server side) for the callback.
#[derive(Debug)]
pub struct AuthorizationRequest {
    pub url: String,
    pub state: SecretString,
    pub nonce: SecretString,
    pub pkce_verifier: SecretString,
}

/// Tokens from the token endpoint, with what the validated ID token says.
#[derive(Debug)]
pub struct Tokens {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub id_token: Option<SecretString>,
    pub access_expires_at: DateTime<Utc>,
    pub scopes: Vec<String>,
    /// From the ID token (code exchange only).
    pub identity: Option<Identity>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub acr: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Access,
    Refresh,
}

impl TokenKind {
    fn hint(self) -> &'static str {
        match self {
            Self::Access => "access_token",
            Self::Refresh => "refresh_token",
        }
    }
}

/// The result of an RFC 8693 exchange.
#[derive(Debug)]
pub struct ExchangedToken {
    pub token: SecretString,
    pub issued_token_type: String,
    pub expires_at: DateTime<Utc>,
}

/// What introspection says about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introspection {
    pub active: bool,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A discovered OP and this platform's registration there. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OidcClient {
    client: Client,
    http: reqwest::Client,
    settings: ClientSettings,
    end_session: Option<String>,
}

/// Records how an OP call ended on its span (`ok`, `refused`, `unavailable`, `failed`).
fn settled<T>(result: Result<T, OidcError>) -> Result<T, OidcError> {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(OidcError::Refused(_)) => "refused",
        Err(OidcError::Unavailable(_)) => "unavailable",
        Err(_) => "failed",
    };
    tracing::Span::current().record("outcome", outcome);
    result
}

/// The current span's W3C trace context as request headers: the OP (and whatever it logs)
/// joins the trace of the revocation or login that called it.
pub fn trace_headers() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(value) =
        custodian_telemetry::current_traceparent().and_then(|tp| reqwest::header::HeaderValue::from_str(&tp).ok())
    {
        headers.insert(custodian_telemetry::TRACEPARENT, value);
    }
    headers
}

type HttpFuture<'c> = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<openidconnect::HttpResponse, openidconnect::HttpClientError<reqwest::Error>>,
            > + Send
            + Sync
            + 'c,
    >,
>;

/// An HTTP client for the OIDC flows that sends the caller's trace context along.
struct Traced {
    http: reqwest::Client,
    headers: reqwest::header::HeaderMap,
}

impl<'c> openidconnect::AsyncHttpClient<'c> for Traced {
    type Error = openidconnect::HttpClientError<reqwest::Error>;
    type Future = HttpFuture<'c>;

    fn call(&'c self, mut request: openidconnect::HttpRequest) -> Self::Future {
        request.headers_mut().extend(self.headers.clone());
        openidconnect::AsyncHttpClient::call(&self.http, request)
    }
}

/// An HTTP client for talking to the OP: its CA trusted, no redirects (the OAuth security BCP).
pub fn http_client(ca_file: Option<&std::path::Path>, timeout: Duration) -> Result<reqwest::Client, OidcError> {
    let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(timeout);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| OidcError::Config(format!("ca_file {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| OidcError::Config(format!("ca_file {}: {e}", path.display())))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| OidcError::Config(format!("HTTP client: {e}")))
}

impl OidcClient {
    /// The HTTP client, with the trace context of the span that calls it on every request.
    fn traced(&self) -> Traced {
        Traced { http: self.http.clone(), headers: trace_headers() }
    }

    /// Fetches the OP's discovery document and keys.
    pub async fn discover(settings: ClientSettings) -> Result<Self, OidcError> {
        let http = http_client(settings.ca_file.as_deref(), Duration::from_secs(settings.timeout_secs.max(1)))?;
        let issuer = IssuerUrl::new(settings.issuer.clone()).map_err(|e| OidcError::Config(format!("issuer: {e}")))?;
        let metadata = Metadata::discover_async(issuer, &http).await.map_err(|e| OidcError::Discovery(describe(&e)))?;
        let extra = metadata.additional_metadata().clone();
        let token_url = metadata
            .token_endpoint()
            .cloned()
            .ok_or_else(|| OidcError::Discovery("no token_endpoint in the discovery document".into()))?;
        let revocation = extra
            .revocation_endpoint
            .ok_or_else(|| OidcError::Discovery("no revocation_endpoint (RFC 7009) at the OP".into()))?;
        let introspection = extra
            .introspection_endpoint
            .ok_or_else(|| OidcError::Discovery("no introspection_endpoint (RFC 7662) at the OP".into()))?;
        let redirect = RedirectUrl::new(settings.redirect_uri.clone())
            .map_err(|e| OidcError::Config(format!("redirect_uri: {e}")))?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(settings.client_id.clone()),
            Some(ClientSecret::new(settings.client_secret.expose_secret().to_owned())),
        )
        .set_redirect_uri(redirect)
        .set_token_uri(token_url)
        .set_revocation_url(
            RevocationUrl::new(revocation).map_err(|e| OidcError::Discovery(format!("revocation_endpoint: {e}")))?,
        )
        .set_introspection_url(
            IntrospectionUrl::new(introspection)
                .map_err(|e| OidcError::Discovery(format!("introspection_endpoint: {e}")))?,
        );
        Ok(Self { client, http, settings, end_session: extra.end_session_endpoint })
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    pub fn client_id(&self) -> &str {
        &self.settings.client_id
    }

    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// A new client with another secret (after a rotation), same discovery.
    pub fn with_secret(&self, secret: SecretString) -> Self {
        let mut next = self.clone();
        next.client = next.client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
        next.settings.client_secret = secret;
        next
    }

    /// Authorization code + PKCE S256, fresh state and nonce, the platform's `acr` requested.
    pub fn authorization_request(&self) -> AuthorizationRequest {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = self.client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in self.settings.scopes.iter().filter(|s| s.as_str() != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        if let Some(acr) = &self.settings.required_acr {
            request = request.add_auth_context_value(AuthenticationContextClass::new(acr.clone()));
        }
        // offline_access (a refresh token) needs an explicit consent prompt at the OP.
        if self.settings.scopes.iter().any(|s| s == "offline_access") {
            request = request.add_prompt(openidconnect::core::CoreAuthPrompt::Consent);
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        AuthorizationRequest {
            url: url.to_string(),
            state: SecretString::from(state.secret().clone()),
            nonce: SecretString::from(nonce.secret().clone()),
            pkce_verifier: SecretString::from(verifier.secret().clone()),
        }
    }

    /// Redeems an authorization code and validates the ID token (signature, iss, aud, exp,
    /// nonce, minimum acr).
    #[tracing::instrument(name = "oidc_code_exchange", skip_all, fields(otel.kind = "client", outcome = tracing::field::Empty))]
    pub async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &SecretString,
        nonce: &SecretString,
    ) -> Result<Tokens, OidcError> {
        settled(
            async {
                let response = self
                    .client
                    .exchange_code(AuthorizationCode::new(code.to_owned()))
                    .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.expose_secret().to_owned()))
                    .request_async(&self.traced())
                    .await
                    .map_err(token_error)?;
                let id_token =
                    response.id_token().ok_or_else(|| OidcError::IdToken("the OP returned no ID token".into()))?;
                let claims = id_token
                    .claims(&self.client.id_token_verifier(), &Nonce::new(nonce.expose_secret().to_owned()))
                    .map_err(|e| OidcError::IdToken(e.to_string()))?;
                let acr = claims.auth_context_ref().map(|a| a.as_str().to_owned());
                if let Err(refused) = self.check_acr(acr.as_deref()) {
                    // Not kept, and not left alive at the OP either.
                    let access = SecretString::from(response.access_token().secret().clone());
                    let _ = self.revoke(&access, TokenKind::Access).await;
                    if let Some(refresh) = response.refresh_token() {
                        let _ = self.revoke(&SecretString::from(refresh.secret().clone()), TokenKind::Refresh).await;
                    }
                    return Err(refused);
                }
                let identity = Identity {
                    issuer: claims.issuer().as_str().to_owned(),
                    subject: claims.subject().as_str().to_owned(),
                    acr,
                };
                Ok(Tokens {
                    access_token: SecretString::from(response.access_token().secret().clone()),
                    refresh_token: response.refresh_token().map(|t| SecretString::from(t.secret().clone())),
                    id_token: Some(SecretString::from(id_token.to_string())),
                    access_expires_at: expires_at(response.expires_in()),
                    scopes: response.scopes().map(|s| s.iter().map(|s| s.to_string()).collect()).unwrap_or_default(),
                    identity: Some(identity),
                })
            }
            .await,
        )
    }

    /// Refuses an `acr` below the platform's requirement (seed §1.2).
    pub fn check_acr(&self, acr: Option<&str>) -> Result<(), OidcError> {
        let Some(required) = &self.settings.required_acr else { return Ok(()) };
        if acr_satisfies(&self.settings.acr_order, required, acr) {
            Ok(())
        } else {
            Err(OidcError::IdToken(format!("acr {:?} is below the required {required:?}", acr.unwrap_or("none"))))
        }
    }

    #[tracing::instrument(name = "oidc_refresh", skip_all, fields(otel.kind = "client", outcome = tracing::field::Empty))]
    pub async fn refresh(&self, refresh_token: &SecretString) -> Result<Tokens, OidcError> {
        settled(
            async {
                let token = RefreshToken::new(refresh_token.expose_secret().to_owned());
                let response = self
                    .client
                    .exchange_refresh_token(&token)
                    .request_async(&self.traced())
                    .await
                    .map_err(token_error)?;
                Ok(Tokens {
                    access_token: SecretString::from(response.access_token().secret().clone()),
                    refresh_token: response.refresh_token().map(|t| SecretString::from(t.secret().clone())),
                    id_token: response.id_token().map(|t| SecretString::from(t.to_string())),
                    access_expires_at: expires_at(response.expires_in()),
                    scopes: response.scopes().map(|s| s.iter().map(|s| s.to_string()).collect()).unwrap_or_default(),
                    identity: None,
                })
            }
            .await,
        )
    }

    /// RFC 7009. The OP answers 200 for a token it no longer knows: that counts as done.
    pub async fn revoke(&self, token: &SecretString, kind: TokenKind) -> Result<(), OidcError> {
        let secret = token.expose_secret().to_owned();
        let revocable = match kind {
            TokenKind::Access => CoreRevocableToken::AccessToken(AccessToken::new(secret)),
            TokenKind::Refresh => CoreRevocableToken::RefreshToken(RefreshToken::new(secret)),
        };
        self.client
            .revoke_token(revocable)
            .map_err(|e| OidcError::Config(e.to_string()))?
            .request_async(&self.traced())
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => OidcError::Refused(r.error().to_string()),
                other => OidcError::Unavailable(request_error_kind(&other)),
            })
    }

    /// RFC 7662, authenticated as this client.
    #[tracing::instrument(name = "oidc_introspect", skip_all, fields(otel.kind = "client", token_kind = kind.hint(), outcome = tracing::field::Empty))]
    pub async fn introspect(&self, token: &SecretString, kind: TokenKind) -> Result<Introspection, OidcError> {
        settled(
            async {
                let token = AccessToken::new(token.expose_secret().to_owned());
                let response = self
                    .client
                    .introspect(&token)
                    .set_token_type_hint(kind.hint())
                    .request_async(&self.traced())
                    .await
                    .map_err(|e| match e {
                        RequestTokenError::ServerResponse(r) => OidcError::Refused(r.error().to_string()),
                        other => OidcError::Unavailable(request_error_kind(&other)),
                    })?;
                Ok(Introspection { active: response.active(), expires_at: response.exp() })
            }
            .await,
        )
    }

    /// RFC 8693 token exchange at the token endpoint, authenticated as this client: the
    /// person's access token for a token of `requested_token_type` (e.g. a SAML assertion).
    #[tracing::instrument(name = "oidc_token_exchange", skip_all, fields(otel.kind = "client", requested_token_type = requested_token_type, outcome = tracing::field::Empty))]
    pub async fn exchange_token(
        &self,
        subject_token: &SecretString,
        requested_token_type: &str,
    ) -> Result<ExchangedToken, OidcError> {
        settled(
            async {
                #[derive(Deserialize)]
                struct Answer {
                    access_token: String,
                    issued_token_type: Option<String>,
                    expires_in: Option<u64>,
                }
                #[derive(Deserialize)]
                struct ErrorAnswer {
                    error: String,
                }
                let response = self
                    .http
                    .post(self.client.token_uri().as_str())
                    .headers(trace_headers())
                    .basic_auth(&self.settings.client_id, Some(self.settings.client_secret.expose_secret()))
                    .form(&[
                        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                        ("subject_token", subject_token.expose_secret()),
                        ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
                        ("requested_token_type", requested_token_type),
                    ])
                    .send()
                    .await
                    .map_err(|e| OidcError::Unavailable(format!("token exchange: {}", describe(&e))))?;
                let status = response.status();
                let body =
                    response.bytes().await.map_err(|e| OidcError::Unavailable(format!("token exchange: {e}")))?;
                if !status.is_success() {
                    let code = serde_json::from_slice::<ErrorAnswer>(&body)
                        .map(|e| e.error)
                        .unwrap_or_else(|_| status.to_string());
                    return Err(if status.is_server_error() {
                        OidcError::Unavailable(code)
                    } else {
                        OidcError::Refused(code)
                    });
                }
                let answer: Answer = serde_json::from_slice(&body)
                    .map_err(|_| OidcError::Unavailable("token exchange: unparseable response".into()))?;
                Ok(ExchangedToken {
                    token: SecretString::from(answer.access_token),
                    issued_token_type: answer.issued_token_type.unwrap_or_else(|| requested_token_type.to_owned()),
                    expires_at: expires_at(answer.expires_in.map(Duration::from_secs)),
                })
            }
            .await,
        )
    }

    /// RP-initiated logout at the OP (OpenID Connect RP-Initiated Logout 1.0), if it offers it.
    pub fn end_session_url(&self, post_logout_redirect_uri: Option<&str>) -> Option<String> {
        let mut url = url::Url::parse(self.end_session.as_deref()?).ok()?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("client_id", &self.settings.client_id);
            if let Some(uri) = post_logout_redirect_uri {
                query.append_pair("post_logout_redirect_uri", uri);
            }
        }
        Some(url.to_string())
    }
}

/// Whether `got` is at least `required` in `order` (weakest first); an unknown required value
/// must match exactly, an unknown or missing `got` never satisfies.
pub fn acr_satisfies(order: &[String], required: &str, got: Option<&str>) -> bool {
    let rank = |value: &str| order.iter().position(|a| a == value);
    match (got, rank(required)) {
        (Some(got), Some(needed)) => rank(got).is_some_and(|r| r >= needed),
        (Some(got), None) => got == required,
        (None, _) => false,
    }
}

fn expires_at(expires_in: Option<Duration>) -> DateTime<Utc> {
    // Without `expires_in`, assume the shortest sensible life rather than forever.
    let secs = expires_in.map_or(300, |d| d.as_secs()) as i64;
    #[allow(clippy::disallowed_methods)] // an OP's relative expiry is anchored on the wall clock
    let now = Utc::now();
    now + chrono::Duration::seconds(secs)
}

fn token_error<RE: std::error::Error + 'static>(
    e: RequestTokenError<RE, openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>>,
) -> OidcError {
    match e {
        RequestTokenError::ServerResponse(r) => OidcError::Refused(r.error().to_string()),
        other => OidcError::Unavailable(request_error_kind(&other)),
    }
}

/// The kind of a failed request, never its body (which could echo a token).
fn request_error_kind<RE: std::error::Error + 'static, T: openidconnect::ErrorResponse + 'static>(
    e: &RequestTokenError<RE, T>,
) -> String {
    match e {
        RequestTokenError::ServerResponse(_) => "error response".into(),
        RequestTokenError::Request(inner) => format!("request failed: {}", describe(inner)),
        RequestTokenError::Parse(_, _) => "unparseable response".into(),
        RequestTokenError::Other(s) => s.chars().take(200).collect(),
    }
}

fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings(required: Option<&str>) -> ClientSettings {
        ClientSettings {
            issuer: "https://op.example".into(),
            ca_file: None,
            client_id: "tp".into(),
            client_secret: "s3cret-value".into(),
            redirect_uri: "https://tp.example/callback".into(),
            scopes: default_scopes(),
            required_acr: required.map(str::to_owned),
            acr_order: vec!["low".into(), "substantial".into(), "high".into()],
            timeout_secs: 5,
        }
    }

    #[test]
    fn debug_of_settings_hides_the_secret() {
        let text = format!("{:?}", settings(None));
        assert!(!text.contains("s3cret-value"), "{text}");
    }

    #[test]
    fn acr_is_compared_by_rank() {
        let order = settings(None).acr_order;
        let rank_ok = |required: Option<&str>, got: Option<&str>| match required {
            None => true,
            Some(required) => acr_satisfies(&order, required, got),
        };
        assert!(rank_ok(Some("substantial"), Some("high")));
        assert!(rank_ok(Some("exotic"), Some("exotic")));
        assert!(rank_ok(Some("substantial"), Some("substantial")));
        assert!(!rank_ok(Some("substantial"), Some("low")));
        assert!(!rank_ok(Some("substantial"), None));
        assert!(!rank_ok(Some("substantial"), Some("unknown")));
    }
}
