//! Replays of dead letters, asked for by an operator through the console.
//!
//! A consumer with [`ConsumerSpec::replay`] answers `custodian.command.replay.<durable>` in
//! the queue group of its durable while it consumes: one replica answers (an exclusive
//! consumer's leader). The console finds the durable from the dead letter's service and
//! original subject in the trust table ([`crate::trust::replaying_durable`]). The consumer
//! reads the dead letter from the audit chain — `custodian.query.dead_letter.<service>`, its
//! service's own dead letters only — never from the request: whoever may ask for a replay
//! cannot make a service apply what was not sent to it. It runs the message through the same
//! checks and the same handler as a delivery (the handler's inbox keeps a second replay from
//! doubling anything), records what came of it on `lifecycle.replayed.<service>`, which the
//! audit chains, and answers.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use custodian_events::payloads::{DeadLetterReplayedV1, DeadLetterV1, ReplayOutcome};
use custodian_events::replay::{
    DeadLetterQuery, DeadLetterReply, ReplayReply, ReplayRequest, dead_letter_subject, replay_subject,
};
use custodian_events::{CloudEvent, subjects};
use custodian_store::clock::SharedClock;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::Bus;
use crate::consumer::{BatchHandler, ConsumerSpec, Delivery, HandlerError, check_event, durable_base};

/// How long a replay waits for the audit chain's copy of the dead letter, and for the
/// record of the replay to be accepted by the stream.
const STEP_BUDGET: Duration = Duration::from_secs(5);

/// Answers replay requests for `spec`'s durable until `stop`.
pub(crate) async fn serve<H: BatchHandler>(
    bus: Bus,
    spec: ConsumerSpec,
    handler: Arc<H>,
    clock: SharedClock,
    stop: CancellationToken,
) {
    let queue = durable_base(&spec).to_owned();
    let Some(subject) = replay_subject(&queue) else { return };
    let mut requests = match bus.client().queue_subscribe(subject.clone(), queue).await {
        Ok(requests) => requests,
        Err(e) => {
            tracing::warn!(durable = %spec.durable, error = %e, "replays of dead letters not answered");
            return;
        }
    };
    loop {
        let request = tokio::select! {
            () = stop.cancelled() => break,
            next = requests.next() => match next { Some(request) => request, None => break },
        };
        let Some(reply_to) = request.reply.clone() else { continue };
        let (bus, spec, handler, clock) = (bus.clone(), spec.clone(), handler.clone(), clock.clone());
        tokio::spawn(async move {
            let answer = match serde_json::from_slice::<ReplayRequest>(&request.payload) {
                Ok(asked) => replay(&bus, &spec, handler.as_ref(), &clock, &asked).await,
                Err(e) => ReplayReply::Error(format!("invalid request: {e}")),
            };
            let body = serde_json::to_vec(&answer).unwrap_or_default();
            if let Err(e) = bus.client().publish(reply_to, body.into()).await {
                tracing::warn!(durable = %spec.durable, error = %e, "replay answer not sent");
            }
        });
    }
}

async fn replay<H: BatchHandler>(
    bus: &Bus,
    spec: &ConsumerSpec,
    handler: &H,
    clock: &SharedClock,
    asked: &ReplayRequest,
) -> ReplayReply {
    let Some(lookup) = dead_letter_subject(&spec.service) else {
        return ReplayReply::Error(format!("{:?} is not a service name", spec.service));
    };
    let query = DeadLetterQuery { id: asked.dead_letter_id.clone() };
    let letter = match crate::query_idempotent(bus.client(), &lookup, &query, STEP_BUDGET).await {
        Ok(DeadLetterReply::Found(letter)) => letter,
        Ok(DeadLetterReply::NotFound) => return ReplayReply::NotFound,
        Ok(DeadLetterReply::Error(e)) => return ReplayReply::Error(e),
        Err(e) => return ReplayReply::Error(format!("the audit chain was not read: {e}")),
    };
    if !spec.filter_subjects.iter().any(|filter| subjects::matches_filter(filter, &letter.original_subject)) {
        // Another consumer of the service refused it.
        return ReplayReply::NotFound;
    }
    let (outcome, reason) = apply(spec, handler, clock, &letter).await;
    tracing::info!(
        durable = %spec.durable,
        dead_letter_id = %asked.dead_letter_id,
        subject = %letter.original_subject,
        ?outcome,
        "dead letter replayed"
    );
    let record = DeadLetterReplayedV1 {
        dead_letter_id: asked.dead_letter_id.clone(),
        original_subject: letter.original_subject.clone(),
        original_id: letter.original_id.clone(),
        operator: asked.operator.clone(),
        outcome,
        reason: reason.clone(),
    };
    let Some(record_subject) = subjects::replayed(&spec.service) else {
        return ReplayReply::Error(format!("{:?} is not a service name", spec.service));
    };
    let event = CloudEvent::new(format!("urn:custodian:{}", spec.service), clock.now(), record);
    if let Err(e) = bus.publish_event_retrying(&record_subject, &event, STEP_BUDGET).await {
        // What was applied stays applied (a replay again changes nothing); the operator is
        // told that the chain lacks its record.
        tracing::error!(durable = %spec.durable, error = %e, "the record of a replay was not published");
        return ReplayReply::Error(format!("replayed ({outcome:?}), but its record was not published: {e}"));
    }
    ReplayReply::Replayed { outcome, reason }
}

/// The dead letter's message through the consumer's checks and handler, as one delivery.
async fn apply<H: BatchHandler>(
    spec: &ConsumerSpec,
    handler: &H,
    clock: &SharedClock,
    letter: &DeadLetterV1,
) -> (ReplayOutcome, Option<String>) {
    let payload = match base64::engine::general_purpose::STANDARD.decode(&letter.payload_base64) {
        Ok(payload) => Bytes::from(payload),
        Err(e) => return (ReplayOutcome::Refused, Some(format!("the dead letter's payload is not base64: {e}"))),
    };
    let event = match check_event(spec, clock, &letter.original_subject, &payload) {
        Ok(event) => event,
        Err((_, reason)) => return (ReplayOutcome::Refused, Some(reason)),
    };
    let traceparent = event.traceparent().map(str::to_owned);
    let delivery = Delivery {
        subject: letter.original_subject.clone(),
        event,
        delivered: 1,
        stream_sequence: 0,
        traceparent,
        raw: payload,
        nudge: false,
    };
    let span = tracing::info_span!("replay_dead_letter", service = %spec.service, durable = %durable_base(spec));
    let results = tracing::Instrument::instrument(handler.handle(std::slice::from_ref(&delivery)), span).await;
    match results.into_iter().next() {
        Some(Ok(())) => (ReplayOutcome::Applied, None),
        Some(Err(HandlerError::Permanent(reason))) => (ReplayOutcome::Refused, Some(reason)),
        Some(Err(HandlerError::Transient(reason))) => (ReplayOutcome::NotNow, Some(reason)),
        None => (ReplayOutcome::NotNow, Some("the handler gave no result".to_owned())),
    }
}
