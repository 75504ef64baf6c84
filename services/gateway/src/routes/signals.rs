//! Signals from the OpenID provider:
//! - `POST /oidc/backchannel-logout` (OpenID Connect Back-Channel Logout 1.0): a logout token
//!   ends the person's sessions at the platform (views wiped, tokens revoked; consent kept).
//! - `POST /ssf/events` (RFC 8935 push of RFC 8417 Security Event Tokens, subjects per RFC
//!   9493): CAEP session-revoked ends sessions; CAEP credential-change and RISC
//!   credential-compromise / account-disabled / account-credential-change-required end the
//!   person's consents (reason `provider`); CAEP assurance-level-change below the platform's
//!   level ends sessions; other event types are accepted and logged.
//!
//! Every token is verified against the OP's keys (no `alg: none`), its `jti` recorded in a
//! NATS KV bucket shared by gateway replicas: a replayed logout token is refused, a repeated
//! SET is acknowledged without effect.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use custodian_events::queries::{self, ConsentQuery, ConsentReply};
use custodian_events::{CloudEvent, ConsentRevokedV1, RevokeReason, SessionEndCause, SessionRevokeV1, subjects};
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{SignalError, Verified};

pub const JTI_BUCKET: &str = "custodian_gateway_seen_jti";
const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";

/// The bucket of seen `jti`s, looked up (or created) once per process, not per signal.
async fn jti_store(state: &AppState) -> Result<&async_nats::jetstream::kv::Store, SignalError> {
    state
        .seen_jti
        .get_or_try_init(|| async {
            let js = state.bus.jetstream();
            match js.get_key_value(JTI_BUCKET).await {
                Ok(kv) => Ok(kv),
                Err(_) => js
                    .create_key_value(async_nats::jetstream::kv::Config {
                        bucket: JTI_BUCKET.to_owned(),
                        max_age: custodian_bus::SEEN_JTI_TTL,
                        history: 1,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| SignalError::Unavailable(format!("jti store: {e}"))),
            }
        })
        .await
}

fn jti_key(kind: &str, jti: &str) -> String {
    format!("{kind}.{}", crate::auth::token_digest(jti))
}

/// Whether a signal with this `jti` already had its effect.
async fn already_applied(state: &AppState, kind: &str, jti: &str) -> Result<bool, SignalError> {
    let kv = jti_store(state).await?;
    match kv.get(jti_key(kind, jti)).await {
        Ok(entry) => Ok(entry.is_some()),
        Err(e) => Err(SignalError::Unavailable(format!("jti store: {e}"))),
    }
}

/// Records `jti` once its effect is published, never before: a signal whose effect could not
/// be recorded (503) has its effect when the OP retries it. Two copies racing both publish
/// the same derived event id, which the stream takes once.
async fn mark_applied(state: &AppState, kind: &str, jti: &str) {
    let recorded = match jti_store(state).await {
        Ok(kv) => kv.create(jti_key(kind, jti), Bytes::from_static(b"1")).await.map(|_| ()).or_else(|e| {
            if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists {
                Ok(())
            } else {
                Err(e.to_string())
            }
        }),
        Err(e) => Err(e.description().to_owned()),
    };
    if let Err(e) = recorded {
        // The effect is recorded; a replay would publish it again under the same id.
        tracing::warn!(kind, error = %e, "a signal's jti could not be recorded after its effect");
    }
}

async fn publish_session_revoke(state: &AppState, data: SessionRevokeV1) -> Result<(), SignalError> {
    custodian_events::EventData::validate(&data).map_err(|e| SignalError::InvalidRequest(e.to_string()))?;
    let event = CloudEvent::with_id(
        custodian_events::derived_event_id("session.revoke", &data.cause_id),
        crate::SOURCE,
        state.clock.now(),
        data,
    );
    state
        .bus
        .publish_event(subjects::SESSION_REVOKE, &event)
        .await
        .map_err(|e| SignalError::Unavailable(format!("not recorded: {e}")))
}

fn logout_error(e: &SignalError) -> Response {
    tracing::info!(error = e.code(), description = e.description(), "logout token refused");
    let status = if matches!(e, SignalError::Unavailable(_)) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_REQUEST
    };
    // RFC 6749's code for "try again later", so the OP retries; never invalid_request.
    let error = if status == StatusCode::SERVICE_UNAVAILABLE { "temporarily_unavailable" } else { "invalid_request" };
    let body = json!({"error": error, "error_description": e.description()});
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    retry_after(&mut response);
    response
}

/// A 503 tells the sender when to try again (the signal had no effect and is not recorded).
fn retry_after(response: &mut Response) {
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
}

/// `POST /oidc/backchannel-logout` with `logout_token=<JWT>` (form).
pub async fn backchannel_logout(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let token = url::form_urlencoded::parse(&body).find(|(k, _)| k == "logout_token").map(|(_, v)| v.into_owned());
    let Some(token) = token else {
        return logout_error(&SignalError::InvalidRequest("logout_token is missing".into()));
    };
    match handle_logout(&state, &token).await {
        Ok(()) => {
            let mut response = StatusCode::OK.into_response();
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => logout_error(&e),
    }
}

/// What a valid logout token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutClaims {
    pub subject: String,
    pub sid: Option<String>,
    pub jti: String,
}

/// The checks of Back-Channel Logout 1.0 §2.6 beyond signature, iss, aud, iat. Pure: fuzzed.
pub fn logout_token_claims(typ: Option<&str>, claims: &Value) -> Result<LogoutClaims, SignalError> {
    let bad = |d: &str| SignalError::InvalidRequest(d.to_owned());
    if let Some(typ) = typ
        && !typ.eq_ignore_ascii_case("logout+jwt")
        && !typ.eq_ignore_ascii_case("JWT")
    {
        return Err(bad("typ must be logout+jwt"));
    }
    if claims.get("nonce").is_some() {
        return Err(bad("a logout token must not carry a nonce"));
    }
    if claims["events"].get(BACKCHANNEL_LOGOUT_EVENT).is_none_or(|e| !e.is_object()) {
        return Err(bad("events lacks the back-channel logout event"));
    }
    let sub = claims["sub"].as_str().map(str::to_owned);
    let sid = claims["sid"].as_str().map(str::to_owned);
    if sub.is_none() && sid.is_none() {
        return Err(bad("a logout token needs sub or sid"));
    }
    let jti = claims["jti"].as_str().filter(|j| !j.is_empty()).ok_or_else(|| bad("jti is missing"))?.to_owned();
    if claims["exp"].as_i64().is_none() {
        return Err(bad("exp is missing"));
    }
    // Sessions are tracked per person here; a sid-only token names none we can match.
    let subject = sub.ok_or_else(|| bad("this receiver needs sub in logout tokens"))?;
    Ok(LogoutClaims { subject, sid, jti })
}

async fn handle_logout(state: &AppState, token: &str) -> Result<(), SignalError> {
    let Verified { typ, claims, audience } = state.auth.verify_from_op(token).await?;
    let LogoutClaims { subject, sid, jti } = logout_token_claims(typ.as_deref(), &claims)?;
    let jti = jti.as_str();
    let bad = |d: &str| SignalError::InvalidRequest(d.to_owned());
    if already_applied(state, "logout", jti).await? {
        return Err(bad("logout token replayed (jti already used)"));
    }
    let issuer = claims["iss"].as_str().unwrap_or_default().to_owned();
    tracing::info!(platform_id = %audience, "back-channel logout");
    publish_session_revoke(
        state,
        SessionRevokeV1 {
            issuer,
            subject,
            platform_id: audience,
            sid,
            cause: SessionEndCause::BackchannelLogout,
            cause_id: jti.to_owned(),
        },
    )
    .await?;
    mark_applied(state, "logout", jti).await;
    Ok(())
}

fn set_error(e: &SignalError) -> Response {
    tracing::info!(error = e.code(), description = e.description(), "security event token refused");
    let status = if matches!(e, SignalError::Unavailable(_)) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_REQUEST
    };
    // RFC 8935 has no error code for an unavailable receiver: a 5xx with Retry-After is its
    // "transmit again", and the body says so rather than naming a client error.
    let body = if status == StatusCode::SERVICE_UNAVAILABLE {
        json!({"description": format!("temporarily unavailable, retry: {}", e.description())})
    } else {
        json!({"err": e.code(), "description": e.description()})
    };
    let mut response = (status, Json(body)).into_response();
    retry_after(&mut response);
    response
}

/// `POST /ssf/events`, body: the SET (`application/secevent+jwt`).
pub async fn security_event(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(expected) = state.auth.person_config().and_then(|c| c.ssf_push_token_sha256.clone()) {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
        match presented {
            None => {
                let mut response = set_error(&SignalError::AuthenticationFailed("a bearer token is required".into()));
                *response.status_mut() = StatusCode::UNAUTHORIZED;
                return response;
            }
            Some(token) if !crate::auth::token_digest(token.trim()).eq_ignore_ascii_case(&expected) => {
                let mut response =
                    set_error(&SignalError::AccessDenied("this token may not push security events".into()));
                *response.status_mut() = StatusCode::FORBIDDEN;
                return response;
            }
            Some(_) => {}
        }
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !content_type.starts_with("application/secevent+jwt") {
        return set_error(&SignalError::InvalidRequest("Content-Type must be application/secevent+jwt".into()));
    }
    let Ok(token) = std::str::from_utf8(&body) else {
        return set_error(&SignalError::InvalidRequest("the body is not a JWT".into()));
    };
    match receive(&state, token.trim()).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => set_error(&e),
    }
}

/// The person an RFC 9493 subject identifier names (formats `iss_sub`, or `opaque` at our OP).
fn person_of(subject: &Value, issuer: &str) -> Option<(String, String)> {
    match subject["format"].as_str()? {
        "iss_sub" => Some((subject["iss"].as_str()?.to_owned(), subject["sub"].as_str()?.to_owned())),
        "opaque" => Some((issuer.to_owned(), subject["id"].as_str()?.to_owned())),
        _ => None,
    }
}

/// What a valid security event token says.
#[derive(Debug, Clone, PartialEq)]
pub struct SetClaims {
    pub jti: String,
    pub event_type: String,
    pub event: Value,
    pub person_issuer: String,
    pub person: String,
}

/// RFC 8417 / 9493 checks beyond signature, iss, aud, iat. Pure: fuzzed.
pub fn security_event_claims(typ: Option<&str>, claims: &Value) -> Result<SetClaims, SignalError> {
    let bad = |d: &str| SignalError::InvalidRequest(d.to_owned());
    match typ {
        Some(t) if t.eq_ignore_ascii_case("secevent+jwt") || t.eq_ignore_ascii_case("application/secevent+jwt") => {}
        _ => return Err(bad("typ must be secevent+jwt (RFC 8417)")),
    }
    let jti = claims["jti"].as_str().filter(|j| !j.is_empty()).ok_or_else(|| bad("jti is missing"))?.to_owned();
    let events = claims["events"].as_object().ok_or_else(|| bad("events is missing"))?;
    if events.len() != 1 {
        return Err(bad("a SET here carries exactly one event"));
    }
    let (event_type, event) =
        events.iter().next().map(|(k, v)| (k.clone(), v.clone())).ok_or_else(|| bad("events is empty"))?;
    let issuer = claims["iss"].as_str().unwrap_or_default().to_owned();
    let subject = claims.get("sub_id").or_else(|| event.get("subject")).cloned().unwrap_or(Value::Null);
    let (person_issuer, person) = person_of(&subject, &issuer)
        .ok_or_else(|| bad("sub_id must be an iss_sub or opaque subject identifier (RFC 9493)"))?;
    Ok(SetClaims { jti, event_type, event, person_issuer, person })
}

/// Handles one SET, pushed (RFC 8935) or polled (RFC 8936).
pub async fn receive(state: &AppState, token: &str) -> Result<(), SignalError> {
    let Verified { typ, claims, audience } = state.auth.verify_from_op(token).await?;
    let SetClaims { jti, event_type, event, person_issuer, person } = security_event_claims(typ.as_deref(), &claims)?;
    if already_applied(state, "set", &jti).await? {
        tracing::info!(event_type = %event_type, "security event already received; acknowledged again");
        return Ok(());
    }
    apply_security_event(state, &event_type, &event, person_issuer, person, audience, &jti).await?;
    mark_applied(state, "set", &jti).await;
    Ok(())
}

async fn apply_security_event(
    state: &AppState,
    event_type: &str,
    event: &Value,
    person_issuer: String,
    person: String,
    audience: String,
    jti: &str,
) -> Result<(), SignalError> {
    if event_type == "https://schemas.openid.net/secevent/ssf/event-type/verification" {
        tracing::info!(state = %event["state"], "SSF verification event received");
        return Ok(());
    }
    let name = event_type
        .strip_prefix(CAEP)
        .map(|n| ("caep", n))
        .or_else(|| event_type.strip_prefix(RISC).map(|n| ("risc", n)));
    match name {
        Some(("caep", "session-revoked")) => {
            publish_session_revoke(
                state,
                SessionRevokeV1 {
                    issuer: person_issuer,
                    subject: person,
                    platform_id: audience,
                    sid: None,
                    cause: SessionEndCause::CaepSessionRevoked,
                    cause_id: jti.to_owned(),
                },
            )
            .await
        }
        Some(("caep", "credential-change"))
        | Some(("risc", "credential-compromise"))
        | Some(("risc", "account-disabled"))
        | Some(("risc", "account-credential-change-required")) => {
            end_consents(state, &person_issuer, &person, event_type, jti).await
        }
        Some(("caep", "assurance-level-change")) => {
            let current = event["current_level"].as_str().unwrap_or_default();
            let below = state.auth.person_config().and_then(|c| {
                c.required_acr
                    .as_ref()
                    .map(|required| !custodian_oidc::acr_satisfies(&c.acr_order, required, Some(current)))
            });
            if below == Some(true) {
                publish_session_revoke(
                    state,
                    SessionRevokeV1 {
                        issuer: person_issuer,
                        subject: person,
                        platform_id: audience,
                        sid: None,
                        cause: SessionEndCause::AssuranceDropped,
                        cause_id: jti.to_owned(),
                    },
                )
                .await
            } else {
                tracing::info!(current_level = %current, "assurance level change that still meets the requirement");
                Ok(())
            }
        }
        _ => {
            tracing::info!(event_type = %event_type, "security event of a type we do not act on; accepted");
            Ok(())
        }
    }
}

/// The OP says the person's credentials are not to be trusted: every consent of theirs ends.
async fn end_consents(
    state: &AppState,
    issuer: &str,
    subject: &str,
    event_type: &str,
    jti: &str,
) -> Result<(), SignalError> {
    let query = ConsentQuery {
        issuer: Some(issuer.to_owned()),
        subject: Some(subject.to_owned()),
        state: Some("granted".into()),
        ..Default::default()
    };
    let consents = match custodian_bus::query_idempotent::<_, ConsentReply>(
        state.bus.client(),
        queries::CONSENTS,
        &query,
        Duration::from_secs(5),
    )
    .await
    {
        Ok(ConsentReply::Consents(list)) => list,
        Ok(ConsentReply::Error(e) | ConsentReply::Unavailable(e)) => return Err(SignalError::Unavailable(e)),
        Err(e) => return Err(SignalError::Unavailable(e.to_string())),
    };
    tracing::info!(event_type = %event_type, consents = consents.len(), "the OP distrusts a person's credentials; ending their consents");
    for consent in consents {
        let data = ConsentRevokedV1 {
            issuer: consent.issuer.clone(),
            subject: consent.subject.clone(),
            platform_id: consent.platform_id.clone(),
            reason: RevokeReason::Provider,
            actor: Some("ssf".into()),
        };
        let id = custodian_events::derived_event_id("ssf.consent.revoked", &format!("{jti}:{}", consent.platform_id));
        let event = CloudEvent::with_id(id, crate::SOURCE, state.clock.now(), data);
        state
            .bus
            .publish_event(subjects::CONSENT_REVOKED, &event)
            .await
            .map_err(|e| SignalError::Unavailable(format!("not recorded: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn logout_tokens_are_checked_per_back_channel_logout_1_0() {
        let good = json!({"sub": "p", "sid": "s", "jti": "j", "exp": 1, "events": {BACKCHANNEL_LOGOUT_EVENT: {}}});
        let ok = logout_token_claims(Some("logout+jwt"), &good).unwrap();
        assert_eq!((ok.subject.as_str(), ok.sid.as_deref(), ok.jti.as_str()), ("p", Some("s"), "j"));
        let mut with_nonce = good.clone();
        with_nonce["nonce"] = json!("n");
        for (typ, claims) in [
            (Some("JWT"), with_nonce),
            (Some("secevent+jwt"), good.clone()),
            (None, json!({"sub": "p", "jti": "j", "exp": 1, "events": {}})),
            (None, json!({"sub": "p", "jti": "j", "exp": 1, "events": {BACKCHANNEL_LOGOUT_EVENT: "x"}})),
            (None, json!({"jti": "j", "exp": 1, "events": {BACKCHANNEL_LOGOUT_EVENT: {}}})),
            (None, json!({"sub": "p", "exp": 1, "events": {BACKCHANNEL_LOGOUT_EVENT: {}}})),
            (None, json!({"sub": "p", "jti": "j", "events": {BACKCHANNEL_LOGOUT_EVENT: {}}})),
        ] {
            assert!(logout_token_claims(typ, &claims).is_err(), "{typ:?} {claims}");
        }
    }

    #[test]
    fn security_events_need_one_event_and_a_known_subject_format() {
        let good = json!({"iss": "https://op", "jti": "j", "sub_id": {"format": "iss_sub", "iss": "https://op", "sub": "p"},
                          "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {}}});
        let ok = security_event_claims(Some("secevent+jwt"), &good).unwrap();
        assert_eq!(ok.person, "p");
        let opaque =
            json!({"iss": "https://op", "jti": "j", "sub_id": {"format": "opaque", "id": "p2"}, "events": {"x": {}}});
        assert_eq!(security_event_claims(Some("secevent+jwt"), &opaque).unwrap().person_issuer, "https://op");
        let two = json!({"iss": "https://op", "jti": "j", "sub_id": good["sub_id"], "events": {"a": {}, "b": {}}});
        assert!(security_event_claims(Some("secevent+jwt"), &two).is_err());
        let email = json!({"iss": "https://op", "jti": "j", "sub_id": {"format": "email", "email": "a@b"}, "events": {"a": {}}});
        assert!(security_event_claims(Some("secevent+jwt"), &email).is_err());
        assert!(security_event_claims(None, &good).is_err());
    }

    proptest::proptest! {
        // The quick in-CI cousin of the fuzz target (`make fuzz`): no input makes them panic.
        #[test]
        fn arbitrary_tokens_and_claims_never_panic(text in ".{0,300}", json in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = crate::auth::signed_alg(&text);
            let _ = crate::auth::signed_alg(&format!("{text}.{text}.{text}"));
            if let Ok(claims) = serde_json::from_slice::<Value>(&json) {
                let _ = crate::auth::check_standard_claims(&claims, "https://op", &["tp"], i64::MAX);
                let _ = logout_token_claims(Some("logout+jwt"), &claims);
                let _ = security_event_claims(Some("secevent+jwt"), &claims);
            }
        }
    }
}
