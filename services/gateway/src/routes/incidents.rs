//! `POST /v1/incidents` (responder): report an incident; `GET /v1/incidents/{id}` (responder,
//! dpo): its workflow, steps and times (asked of the incident service).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use custodian_events::incident::{INCIDENTS, IncidentQuery, IncidentReply, IncidentView};
use custodian_events::{CloudEvent, EventData, IncidentKind, IncidentReportedV1, subjects};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::problem::Problem;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Optional: the reporter's own id for the incident (idempotent re-reports).
    pub incident_id: Option<String>,
    pub kind: IncidentKind,
    pub platform_id: String,
    pub subject: Option<String>,
    pub issuer: Option<String>,
    pub summary: String,
    /// Default: now.
    pub detected_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
pub struct Reported {
    pub incident_id: String,
}

pub async fn report(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Reported>), Problem> {
    caller.require_role(Role::Responder)?;
    let report: Report = crate::problem::json_object(body)?;
    let reporter = match &caller {
        Caller::Machine { name, .. } => name.clone(),
        Caller::Person { subject, .. } => subject.clone(),
    };
    let now = state.clock.now();
    let data = IncidentReportedV1 {
        incident_id: report.incident_id.unwrap_or_else(|| format!("inc-{}", uuid::Uuid::new_v4())),
        kind: report.kind,
        platform_id: report.platform_id,
        subject: report.subject,
        issuer: report.issuer,
        summary: report.summary,
        detected_at: report.detected_at.unwrap_or(now),
        reporter,
    };
    data.validate().map_err(|e| Problem::bad_request(e.to_string()))?;
    // The incident id keys the event: a re-report within the window is the same message.
    let event = CloudEvent::with_id(
        custodian_events::derived_event_id("incident.reported", &data.incident_id),
        crate::SOURCE,
        now,
        data,
    );
    let out = custodian_bus::Outgoing::event(subjects::INCIDENT_REPORTED, &event);
    state.bus.publish_retrying(&out, crate::routes::consents::PUBLISH_BUDGET).await.map_err(|e| {
        tracing::error!(error = %e, "incident report not published");
        Problem::unavailable("the incident could not be recorded; please retry (or report by phone to the DPO)")
    })?;
    tracing::warn!(incident_id = %event.data.incident_id, kind = ?event.data.kind, "incident reported");
    Ok((StatusCode::ACCEPTED, Json(Reported { incident_id: event.data.incident_id })))
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(incident_id): Path<String>,
) -> Result<Json<IncidentView>, Problem> {
    if caller.require_role(Role::Responder).is_err() {
        caller.require_role(Role::Dpo).map_err(|_| Problem::forbidden("requires the responder or dpo role"))?;
    }
    let query = IncidentQuery { incident_id: incident_id.clone(), ..Default::default() };
    match custodian_bus::query_idempotent::<_, IncidentReply>(
        state.bus.client(),
        INCIDENTS,
        &query,
        Duration::from_secs(5),
    )
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "incident query failed");
        Problem::unavailable("the incident service did not answer")
    })? {
        IncidentReply::Incident(view) => Ok(Json(*view)),
        IncidentReply::NotFound => Err(Problem::not_found(format!("no incident {incident_id} (yet)"))),
        IncidentReply::Error(e) => Err(Problem::unavailable(e)),
        IncidentReply::Incidents(_) => Err(Problem::unavailable("the incident service answered a list")),
    }
}
