//! `POST /v1/events`: a platform publishes one CloudEvent, under the same strict rules as NATS,
//! and only for the platforms its token speaks for.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use custodian_bus::Outgoing;
use custodian_events::{LifecycleEvent, RevokeReason};
use serde::Serialize;
use tracing::Instrument;

use crate::AppState;
use crate::auth::Caller;
use crate::problem::Problem;

#[derive(Debug, Serialize)]
pub struct Accepted {
    /// The id Custodian keeps the event under (derived from the caller and `source_id`).
    pub id: String,
    pub subject: String,
    /// The id the caller gave it.
    pub source_id: String,
}

/// What a platform may say, and about which platform. Everything else is refused by name:
/// outcomes are Custodian's own, session events come from views over NATS under their own
/// identity, incidents through `POST /v1/incidents` with the responder role.
fn platform_named(event: &LifecycleEvent) -> Result<&str, Problem> {
    match event {
        LifecycleEvent::ConsentGranted(e) => Ok(&e.data.platform_id),
        LifecycleEvent::ConsentRevoked(e) => Ok(&e.data.platform_id),
        LifecycleEvent::ActivitySeen(e) => Ok(&e.data.platform_id),
        LifecycleEvent::TokenHokUsed(e) => Ok(&e.data.platform_id),
        LifecycleEvent::SessionOpened(_) | LifecycleEvent::SessionClosed(_) | LifecycleEvent::SessionWiped(_) => {
            Err(Problem::forbidden(format!(
                "{} comes from views only, over NATS under their own identity",
                event.event_type()
            )))
        }
        LifecycleEvent::IncidentReported(_) => {
            Err(Problem::forbidden("incidents are reported through POST /v1/incidents, with the responder role"))
        }
        _ => Err(Problem::forbidden(format!("{} is emitted by Custodian only", event.event_type()))),
    }
}

pub async fn publish(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    let (name, speaks_for) = caller.require_platform()?;
    let mut event = LifecycleEvent::decode(None, &body).map_err(|e| Problem::bad_request(e.to_string()))?;
    let platform_id = platform_named(&event)?;
    if !speaks_for.iter().any(|p| p == platform_id) {
        return Err(Problem::forbidden(format!(
            "this token speaks for {}, not for platform {platform_id}",
            speaks_for.join(", ")
        )));
    }
    if let LifecycleEvent::ConsentRevoked(e) = &mut event {
        if e.data.reason != RevokeReason::Platform {
            return Err(Problem::forbidden(
                "a platform revokes in its own name (reason \"platform\"): the person's own revocation comes \
                 from the person signed in, the provider's from its signals",
            ));
        }
        e.data.actor = Some(format!("platform:{name}"));
    }
    let now = state.clock.now();
    if event.time() > now + state.max_clock_skew {
        return Err(Problem::bad_request(format!(
            "time {} is more than {}s past the gateway's clock ({})",
            event.time().to_rfc3339(),
            state.max_clock_skew.num_seconds(),
            now.to_rfc3339()
        )));
    }
    // Within the skew the fact is dated no later than its arrival, so the person's revocation,
    // dated at the gateway after what the person was shown, always comes after it.
    event.set_time(event.time().min(now));
    let subject =
        event.fixed_subject().ok_or_else(|| Problem::bad_request("routed commands cannot be published here"))?;
    // The caller's id goes no further than this: the event is kept under one of the outside
    // namespace, which no event of Custodian's can have. Its source names the caller.
    let source_id = event.id().to_owned();
    event.set_id(custodian_events::outside_event_id(&format!("platform:{name}"), &source_id));
    event.set_source(format!("{}/platform/{name}", crate::SOURCE));
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
