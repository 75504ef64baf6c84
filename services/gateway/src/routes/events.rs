//! `POST /v1/events`: a platform publishes one CloudEvent, under the same strict rules as NATS.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use custodian_bus::Outgoing;
use custodian_events::LifecycleEvent;
use serde::Serialize;
use tracing::Instrument;

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::problem::Problem;

#[derive(Debug, Serialize)]
pub struct Accepted {
    pub id: String,
    pub subject: String,
}

/// Events only Custodian itself emits (or operators ask for through their own endpoints);
/// a platform publishing them could forge outcomes.
fn emitted_by_custodian_only(event: &LifecycleEvent) -> bool {
    matches!(
        event,
        LifecycleEvent::ConsentEnded(_)
            | LifecycleEvent::ConsentExpire(_)
            | LifecycleEvent::SessionWipe(_)
            | LifecycleEvent::TokenRevoked(_)
            | LifecycleEvent::CredentialRotated(_)
            | LifecycleEvent::DpoNotified(_)
            | LifecycleEvent::DeadLetter(_)
            | LifecycleEvent::SweepRequested(_)
            | LifecycleEvent::IncidentContain(_)
            | LifecycleEvent::SessionRevoke(_)
            | LifecycleEvent::SweepFinished(_)
            | LifecycleEvent::RetentionPurge(_)
    )
}

pub async fn publish(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    caller.require_role(Role::Platform)?;
    let event = LifecycleEvent::decode(None, &body).map_err(|e| Problem::bad_request(e.to_string()))?;
    if emitted_by_custodian_only(&event) {
        return Err(Problem::forbidden(format!("{} is emitted by Custodian only", event.event_type())));
    }
    let subject =
        event.fixed_subject().ok_or_else(|| Problem::bad_request("routed commands cannot be published here"))?;
    let out = Outgoing {
        subject: subject.to_owned(),
        event_id: event.id().to_owned(),
        payload: body,
        traceparent: event.traceparent().map(str::to_owned).or_else(custodian_telemetry::current_traceparent),
    };
    let span = tracing::info_span!("publish_event", event_id = event.id(), subject);
    state.bus.publish(&out).instrument(span).await.map_err(|e| {
        tracing::warn!(error = %e, "event not published");
        Problem::unavailable("the event bus did not accept the event; retry with the same id")
    })?;
    state.metrics.events_published.inc();
    Ok((StatusCode::ACCEPTED, Json(Accepted { id: out.event_id, subject: out.subject })))
}
