//! `POST /v1/events`: a platform publishes CloudEvents (structured, binary or batched mode),
//! under the same strict rules as NATS, and only for the platforms its token speaks for.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
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

/// At most this many events in one batched request.
pub const MAX_BATCH: usize = 100;

/// The events a request carries, in whichever CloudEvents HTTP mode it uses: binary (`ce-*`
/// headers, the body the data), batched (`application/cloudevents-batch+json`) or
/// structured (`application/cloudevents+json`, `application/json`, or no Content-Type).
fn decode_request(headers: &HeaderMap, body: &[u8]) -> Result<(Vec<LifecycleEvent>, bool), Problem> {
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("(not text)"));
    if headers.contains_key("ce-specversion") {
        let mut attributes: Vec<(&str, &str)> = headers
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("ce-"))
            .map(|(name, value)| (name.as_str(), value.to_str().unwrap_or("\u{fffd}")))
            .collect();
        // The distributed-tracing extension travels as the W3C headers themselves.
        for (header, attribute) in [("traceparent", "ce-traceparent"), ("tracestate", "ce-tracestate")] {
            if let Some(value) = headers.get(header).and_then(|v| v.to_str().ok())
                && !headers.contains_key(attribute)
            {
                attributes.push((attribute, value));
            }
        }
        let structured =
            custodian_events::structured_from_binary(attributes, content_type, body).map_err(|e| match e {
                custodian_events::DecodeError::DataContentType(t) => {
                    unsupported(&format!("binary-mode data must be JSON (Content-Type application/json), not {t}"))
                }
                e => Problem::bad_request(format!("binary mode: {e}")),
            })?;
        let event = LifecycleEvent::decode(None, &structured).map_err(|e| Problem::bad_request(e.to_string()))?;
        return Ok((vec![event], false));
    }
    let essence = content_type.map(|t| t.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    match essence.as_deref() {
        None | Some(custodian_events::CONTENT_TYPE) | Some(custodian_events::DATA_CONTENT_TYPE) => {
            let event = LifecycleEvent::decode(None, body).map_err(|e| Problem::bad_request(e.to_string()))?;
            Ok((vec![event], false))
        }
        Some(custodian_events::BATCH_CONTENT_TYPE) => {
            let events = LifecycleEvent::decode_batch(body).map_err(|(at, e)| match at {
                Some(i) => Problem::bad_request(format!("event {i} of the batch: {e}")),
                None => Problem::bad_request(format!("a batch is a JSON array of CloudEvents: {e}")),
            })?;
            if events.is_empty() || events.len() > MAX_BATCH {
                return Err(Problem::bad_request(format!("a batch holds 1 to {MAX_BATCH} events")));
            }
            Ok((events, true))
        }
        Some(other) => Err(unsupported(&format!(
            "Content-Type {other} is not a CloudEvents mode: use application/cloudevents+json, \
             application/cloudevents-batch+json, or ce-* headers with application/json data"
        ))),
    }
}

fn unsupported(detail: &str) -> Problem {
    Problem::rejected(StatusCode::UNSUPPORTED_MEDIA_TYPE, detail)
}

/// Checks one event against what the caller may say, and readies it for the stream.
fn admit(
    state: &AppState,
    name: &str,
    speaks_for: &[String],
    mut event: LifecycleEvent,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(Outgoing, String, tracing::Span), Problem> {
    let platform_id = platform_named(&event)?.to_owned();
    if !speaks_for.contains(&platform_id) {
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
    // The event's own trace context (the CloudEvents distributed-tracing extension) is its
    // span's parent, else the request's; it travels on with this span's, so the consumers'
    // work continues the caller's trace through the gateway.
    let span = tracing::info_span!(
        "publish_event",
        otel.kind = "producer",
        event_id = %event.id(),
        event_type = %event.event_type(),
        platform_id = %platform_id,
    );
    custodian_telemetry::adopt_remote_parent(&span, event.traceparent());
    let traceparent = span.in_scope(custodian_telemetry::current_traceparent);
    if traceparent.is_some() {
        event.set_traceparent(traceparent.clone());
    }
    let out = Outgoing {
        subject: subject.to_owned(),
        event_id: event.id().to_owned(),
        payload: Bytes::from(event.to_json()),
        traceparent: traceparent.or_else(|| event.traceparent().map(str::to_owned)),
    };
    Ok((out, source_id, span))
}

/// Names the event of a batch a refusal is about.
fn in_batch(problem: Problem, at: usize) -> Problem {
    let detail = problem.detail.clone().unwrap_or_default();
    problem.detail(format!("event {at} of the batch: {detail}"))
}

pub async fn publish(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let (name, speaks_for) = caller.require_platform()?;
    let (events, batched) = decode_request(&headers, &body)?;
    let now = state.clock.now();
    // Every event is checked before any is published: one refusal refuses the batch.
    let mut admitted = Vec::with_capacity(events.len());
    for (at, event) in events.into_iter().enumerate() {
        let checked = admit(&state, name, speaks_for, event, now);
        admitted.push(if batched { checked.map_err(|p| in_batch(p, at))? } else { checked? });
    }
    let outgoing: Vec<Outgoing> = admitted.iter().map(|(out, _, _)| out.clone()).collect();
    let span = tracing::info_span!("publish_events", events = outgoing.len());
    let results = state.bus.publish_all(&outgoing, 32).instrument(span).await;
    if let Some(e) = results.iter().find_map(|r| r.as_ref().err()) {
        tracing::warn!(error = %e, "event not published");
        return Err(Problem::unavailable("the event bus did not accept the event; retry with the same id"));
    }
    state.metrics.events_published.inc_by(outgoing.len() as u64);
    let accepted: Vec<Accepted> = admitted
        .into_iter()
        .map(|(out, source_id, _span)| Accepted { id: out.event_id, subject: out.subject, source_id })
        .collect();
    Ok(if batched {
        (StatusCode::ACCEPTED, Json(BatchAccepted { events: accepted })).into_response()
    } else {
        let one = accepted.into_iter().next().ok_or_else(|| Problem::internal("no event decoded"))?;
        (StatusCode::ACCEPTED, Json(one)).into_response()
    })
}

#[derive(Debug, Serialize)]
pub struct BatchAccepted {
    /// In the batch's order.
    pub events: Vec<Accepted>,
}
