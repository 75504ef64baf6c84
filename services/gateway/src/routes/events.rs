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
    /// The id Custodian keeps the event under (derived from the caller and `source_id`).
    pub id: String,
    pub subject: String,
    /// The id the caller gave it.
    pub source_id: String,
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

/// Session events come from views, each over NATS under its own identity and subject; over
/// HTTP nothing binds them to the view they name.
fn from_views_only(event: &LifecycleEvent) -> bool {
    matches!(
        event,
        LifecycleEvent::SessionOpened(_) | LifecycleEvent::SessionClosed(_) | LifecycleEvent::SessionWiped(_)
    )
}

pub async fn publish(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    caller.require_role(Role::Platform)?;
    let Caller::Machine { name, .. } = &caller else {
        return Err(Problem::forbidden("requires the platform role"));
    };
    let mut event = LifecycleEvent::decode(None, &body).map_err(|e| Problem::bad_request(e.to_string()))?;
    if emitted_by_custodian_only(&event) {
        return Err(Problem::forbidden(format!("{} is emitted by Custodian only", event.event_type())));
    }
    if from_views_only(&event) {
        return Err(Problem::forbidden(format!(
            "{} comes from views only, over NATS under their own identity",
            event.event_type()
        )));
    }
    let subject =
        event.fixed_subject().ok_or_else(|| Problem::bad_request("routed commands cannot be published here"))?;
    // The caller's id goes no further than this: the event is kept under one of the outside
    // namespace, which no event of Custodian's can have.
    let source_id = event.id().to_owned();
    event.set_id(custodian_events::outside_event_id(&format!("platform:{name}"), &source_id));
    let out = Outgoing {
        subject: subject.to_owned(),
        event_id: event.id().to_owned(),
        payload: Bytes::from(event.to_json()),
        traceparent: event.traceparent().map(str::to_owned).or_else(custodian_telemetry::current_traceparent),
    };
    let span = tracing::info_span!("publish_event", event_id = event.id(), subject);
    state.bus.publish(&out).instrument(span).await.map_err(|e| {
        tracing::warn!(error = %e, "event not published");
        Problem::unavailable("the event bus did not accept the event; retry with the same id")
    })?;
    state.metrics.events_published.inc();
    Ok((StatusCode::ACCEPTED, Json(Accepted { id: out.event_id, subject: out.subject, source_id })))
}
