//! The consent ledger as people and operators see it (asked of the consent service over
//! NATS), and a person's revocation.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use custodian_bus::QueryError;
use custodian_events::queries::{self, ConsentQuery, ConsentReply, ConsentView};
use custodian_events::{CloudEvent, ConsentRevokedV1, RevokeReason, subjects};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::problem::Problem;

const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a person's revocation may take to be stored in the stream, over attempts (one
/// lost with a NATS server that died is sent again, under the same id). In a JetStream
/// cluster a dead stream leader's successor is elected 4–9 s later (nats-server's raft
/// election timeout, which it does not let us tune): the budget rides out one election.
pub const PUBLISH_BUDGET: Duration = Duration::from_secs(15);

pub async fn ask_ledger(state: &AppState, query: &ConsentQuery) -> Result<Vec<ConsentView>, Problem> {
    let deadline = tokio::time::Instant::now() + QUERY_TIMEOUT;
    loop {
        let budget = deadline.saturating_duration_since(tokio::time::Instant::now());
        match custodian_bus::query_idempotent::<_, ConsentReply>(state.bus.client(), queries::CONSENTS, query, budget)
            .await
        {
            Ok(ConsentReply::Consents(views)) => return Ok(views),
            Ok(ConsentReply::Error(reason)) => return Err(Problem::bad_request(reason)),
            // Its database restarting: asked again within the same budget.
            Ok(ConsentReply::Unavailable(reason)) => {
                // Another question only if, after the pause, it has time to be answered.
                if tokio::time::Instant::now() + UNAVAILABLE_PAUSE + MIN_ATTEMPT >= deadline {
                    tracing::warn!(%reason, budget_ms = QUERY_TIMEOUT.as_millis() as u64, "consent ledger unavailable for the whole budget");
                    return Err(Problem::unavailable("the consent ledger is unavailable"));
                }
                tokio::time::sleep(UNAVAILABLE_PAUSE).await;
            }
            Err(e @ QueryError::NoAnswer { .. }) | Err(e @ QueryError::Failed { .. }) => {
                tracing::warn!(error = %e, "consent ledger query failed");
                return Err(Problem::unavailable("the consent ledger did not answer"));
            }
        }
    }
}

/// Between two questions to a ledger that could not read its database.
const UNAVAILABLE_PAUSE: Duration = Duration::from_millis(200);
/// The least time a question is given: less would fail as "no answer" however well it went.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);

#[derive(Debug, Serialize)]
pub struct ConsentList {
    pub consents: Vec<ConsentView>,
}

/// `GET /v1/me/consents`: every platform holding this person's consent.
pub async fn mine(State(state): State<Arc<AppState>>, caller: Caller) -> Result<Json<ConsentList>, Problem> {
    let (issuer, subject) = caller.require_person()?;
    let query =
        ConsentQuery { issuer: Some(issuer.to_owned()), subject: Some(subject.to_owned()), ..Default::default() };
    Ok(Json(ConsentList { consents: ask_ledger(&state, &query).await? }))
}

#[derive(Debug, Serialize)]
pub struct RevocationAccepted {
    pub revocation_id: String,
    pub platform_id: String,
}

/// `DELETE /v1/me/consents/{platform_id}`: the person revokes; 202 with the revocation id.
pub async fn revoke_mine(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(platform_id): Path<String>,
) -> Result<(StatusCode, Json<RevocationAccepted>), Problem> {
    let (issuer, subject) = caller.require_person()?;
    let accepted = revoke_for_person(&state, issuer, subject, platform_id).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// The id of the person's revocation of one grant: derived from the grant, so that asking
/// twice is one revocation, and so that the portal knows its own receipt before the ledger
/// has applied it.
pub fn person_revocation_id(issuer: &str, subject: &str, platform_id: &str, granted_at: DateTime<Utc>) -> String {
    custodian_events::derived_event_id(
        "person-revocation",
        &format!(
            "{issuer}\n{subject}\n{platform_id}\n{}",
            granted_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        ),
    )
}

/// The person's revocation of their consent at `platform_id`, published as `consent.revoked`
/// (the API's DELETE and the dashboard's form).
///
/// Idempotent for the grant it ends: the revocation's id is derived from that grant (issuer,
/// subject, platform, when it was granted), so a DELETE sent again — by a person whose first
/// answer was lost with a gateway that died — publishes the same event (dropped by the
/// stream's de-duplication within its window, or by the ledger, which applies an event id
/// once) or, once the ledger applied it, finds it in the consent's history; either way it
/// answers with the same revocation id, whose receipt exists. A consent that ended otherwise
/// (an expiry, an incident), or whose history retention has purged, answers 404.
///
/// The event is dated no earlier than the grant it ends: the grant's time comes from another
/// clock (the vault's), and the ledger lets a grant win over an earlier-dated revocation.
pub async fn revoke_for_person(
    state: &AppState,
    issuer: &str,
    subject: &str,
    platform_id: String,
) -> Result<RevocationAccepted, Problem> {
    let query = ConsentQuery {
        issuer: Some(issuer.to_owned()),
        subject: Some(subject.to_owned()),
        platform_id: Some(platform_id.clone()),
        with_history: true,
        ..Default::default()
    };
    let Some(consent) = ask_ledger(state, &query).await?.into_iter().next() else {
        return Err(Problem::not_found(format!("no consent for platform {platform_id}")));
    };
    let derived = consent.granted_at.map(|granted_at| person_revocation_id(issuer, subject, &platform_id, granted_at));
    let applied = derived.as_ref().is_some_and(|id| consent.history.iter().any(|h| &h.event_id == id));
    if consent.state != "granted" {
        // This very revocation, already applied: the same answer as the first time.
        if let (true, Some(id)) = (applied, derived) {
            return Ok(RevocationAccepted { revocation_id: id, platform_id });
        }
        return Err(Problem::not_found(format!("no consent in force for platform {platform_id}")));
    }
    // Still granted although this grant's revocation was applied: it was dated before the
    // grant and lost to it. Sending that id again would be dropped as a repeat, so this one
    // gets an id of its own.
    let derived = derived.filter(|_| !applied);
    let data = ConsentRevokedV1 {
        issuer: issuer.to_owned(),
        subject: subject.to_owned(),
        platform_id: platform_id.clone(),
        reason: RevokeReason::User,
        actor: Some("person".to_owned()),
    };
    let at = consent.granted_at.map_or_else(|| state.clock.now(), |granted_at| state.clock.now().max(granted_at));
    let mut event = CloudEvent::new(crate::SOURCE, at, data);
    if let Some(id) = derived {
        event.id = id;
    }
    let span = tracing::info_span!("person_revocation", otel.kind = "producer", revocation_id = %event.id, platform_id = %platform_id);
    event.traceparent = span.in_scope(custodian_telemetry::current_traceparent);
    let _span = span;
    let out = custodian_bus::Outgoing::event(subjects::CONSENT_REVOKED, &event);
    state.bus.publish_retrying(&out, PUBLISH_BUDGET).await.map_err(|e| {
        tracing::warn!(error = %e, "revocation not published");
        Problem::unavailable("the revocation could not be recorded; nothing changed, please retry")
    })?;
    tracing::info!(revocation_id = %event.id, platform_id = %platform_id, "person revoked a consent");
    Ok(RevocationAccepted { revocation_id: event.id, platform_id })
}

/// The most consents one ledger query answers with.
pub const MAX_LIMIT: u64 = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerFilter {
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub platform_id: Option<String>,
    pub state: Option<String>,
    pub limit: Option<u64>,
}

/// `GET /v1/consents?issuer=&subject=&platform_id=&state=`: operators query the ledger.
pub async fn ledger(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    filter: Result<Query<LedgerFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ConsentList>, Problem> {
    caller.require_role(Role::Ops)?;
    let Query(filter) = filter.map_err(|e| Problem::bad_request(e.body_text()))?;
    if let Some(s) = &filter.state
        && !["granted", "revoked", "expired"].contains(&s.as_str())
    {
        return Err(Problem::bad_request("state must be granted, revoked or expired"));
    }
    if filter.limit.is_some_and(|l| !(1..=MAX_LIMIT).contains(&l)) {
        return Err(Problem::bad_request(format!("limit must be 1 to {MAX_LIMIT}")));
    }
    let query = ConsentQuery {
        issuer: filter.issuer,
        subject: filter.subject,
        platform_id: filter.platform_id,
        state: filter.state,
        with_history: false,
        limit: filter.limit,
    };
    Ok(Json(ConsentList { consents: ask_ledger(&state, &query).await? }))
}
