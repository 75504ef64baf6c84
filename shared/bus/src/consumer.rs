//! Durable pull consumers: fetch in batches, decode strictly, hand the batch to the
//! service, then ack, nak with delay, or dead-letter each message.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message, consumer::pull};
use base64::Engine as _;
use bytes::Bytes;
use custodian_events::{CloudEvent, DeadLetterV1, LifecycleEvent, derived_event_id, subjects};
use custodian_store::clock::SharedClock;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{Bus, BusError, Outgoing};

/// Outcome of handling one event that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// May succeed later (database busy, a dependency down): nak with delay.
    #[error("transient: {0}")]
    Transient(String),
    /// Will never succeed: dead-letter with this reason.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// One decoded message handed to a service.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subject: String,
    pub event: LifecycleEvent,
    /// How many times the server has delivered this message (1 the first time).
    pub delivered: i64,
    pub stream_sequence: u64,
    /// W3C trace context from the NATS header, else from the CloudEvent attribute.
    pub traceparent: Option<String>,
    /// The message exactly as it was on the wire (the audit chain digests these bytes).
    pub raw: Bytes,
}

/// A service's event handler. It gets whole batches so it can apply them in one database
/// transaction; it answers one result per delivery, in order.
pub trait BatchHandler: Send + Sync + 'static {
    fn handle(&self, batch: &[Delivery]) -> impl Future<Output = Vec<Result<(), HandlerError>>> + Send;
}

/// A chunk at least this big (tokio's budget caps one poll at 128) suggests more is queued.
const LINGER_THRESHOLD: usize = 32;

/// A durable pull consumer, named `<service>-<purpose>`.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub service: String,
    pub durable: String,
    pub filter_subjects: Vec<String>,
    /// After this many deliveries a transient failure becomes a dead letter (poison).
    pub max_deliver: i64,
    pub ack_wait: Duration,
    pub batch: usize,
    /// Delay before a transiently failed message comes back (doubles per delivery).
    pub nak_delay: Duration,
    /// How long to wait for more messages to fill a batch once the first has arrived.
    pub linger: Duration,
    /// A new durable starts at messages published from now on, not at the start of the
    /// stream (e.g. a view: commands from before it existed are not for it).
    pub deliver_new: bool,
}

impl ConsumerSpec {
    pub fn new(service: &str, purpose: &str, filter_subjects: &[&str]) -> Self {
        Self {
            service: service.to_owned(),
            durable: format!("{service}-{purpose}"),
            filter_subjects: filter_subjects.iter().map(|s| (*s).to_owned()).collect(),
            // ~45 minutes of backed-off retries before a transient failure is dead-lettered.
            max_deliver: 50,
            ack_wait: Duration::from_secs(30),
            batch: 1000,
            nak_delay: Duration::from_millis(500),
            linger: Duration::from_millis(5),
            deliver_new: false,
        }
    }
}

/// Consumes until `shutdown`, finishing the batch in hand first.
pub async fn run_consumer<H: BatchHandler>(
    bus: &Bus,
    spec: ConsumerSpec,
    handler: H,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let consumer_error =
        |e: &dyn std::fmt::Display| BusError::Consumer { durable: spec.durable.clone(), reason: e.to_string() };
    let config = pull::Config {
        durable_name: Some(spec.durable.clone()),
        filter_subjects: spec.filter_subjects.clone(),
        ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
        max_deliver: spec.max_deliver,
        ack_wait: spec.ack_wait,
        max_ack_pending: (spec.batch as i64 * 4).max(1000),
        deliver_policy: if spec.deliver_new {
            async_nats::jetstream::consumer::DeliverPolicy::New
        } else {
            async_nats::jetstream::consumer::DeliverPolicy::All
        },
        ..Default::default()
    };
    // A busy or restarting server can refuse the set-up for a while: retry rather than take
    // the whole service down with it.
    let mut attempt = 0u32;
    let messages = loop {
        let started = async {
            let stream = bus.jetstream().get_stream(subjects::STREAM).await.map_err(|e| consumer_error(&e))?;
            let consumer = stream
                .get_or_create_consumer::<pull::Config>(&spec.durable, config.clone())
                .await
                .map_err(|e| consumer_error(&e))?;
            consumer
                .stream()
                .max_messages_per_batch(spec.batch)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
                .map_err(|e| consumer_error(&e))
        }
        .await;
        match started {
            Ok(messages) => break messages,
            Err(e) => {
                attempt += 1;
                tracing::warn!(durable = %spec.durable, error = %e, attempt, "consumer not started; will retry");
                let wait = Duration::from_millis(200u64.saturating_mul(1 << attempt.min(5)));
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    };
    let mut chunks = messages.ready_chunks(spec.batch);
    tracing::info!(durable = %spec.durable, "consumer started");
    let mut previous_batch_full = false;
    loop {
        let chunk = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            chunk = chunks.next() => match chunk {
                Some(chunk) => chunk,
                None => return Err(consumer_error(&"message stream ended")),
            },
        };
        // A chunk holds what was ready at one poll (tokio's co-operative budget caps it at
        // 128); linger briefly to fill the batch, since one transaction per batch is the
        // cost that matters.
        let mut chunk = chunk;
        let linger_until = tokio::time::Instant::now() + spec.linger;
        // A small chunk means nothing else was buffered: a lone event (a person's
        // revocation) goes through at once; lingering pays off only under load. A small
        // chunk right after a full batch is the tail of one pull while the next is on its
        // way (draining a backlog): it waits for that one rather than cost a transaction.
        let under_load = chunk.len() >= LINGER_THRESHOLD || previous_batch_full;
        while under_load && chunk.len() < spec.batch {
            match tokio::time::timeout_at(linger_until, chunks.next()).await {
                Ok(Some(more)) => chunk.extend(more),
                _ => break,
            }
        }
        previous_batch_full = chunk.len() >= spec.batch;
        let mut messages = Vec::with_capacity(chunk.len());
        for item in chunk {
            match item {
                Ok(message) => messages.push(message),
                // Missed heartbeats and the like: the stream reconnects by itself.
                Err(e) => {
                    tracing::warn!(durable = %spec.durable, error = %e, "pull consumer hiccup")
                }
            }
        }
        let (decoded, decoded_messages) = decode_batch(bus, &spec, &clock, messages).await;
        if !decoded.is_empty() {
            handle_batch(bus, &spec, &handler, &clock, decoded, decoded_messages).await;
        }
    }
    tracing::info!(durable = %spec.durable, "consumer stopped");
    Ok(())
}

/// Decodes strictly; what does not decode is dead-lettered at once.
async fn decode_batch(
    bus: &Bus,
    spec: &ConsumerSpec,
    clock: &SharedClock,
    messages: Vec<Message>,
) -> (Vec<Delivery>, Vec<Message>) {
    let mut decoded = Vec::with_capacity(messages.len());
    let mut decoded_messages = Vec::with_capacity(messages.len());
    for message in messages {
        let (delivered, stream_sequence) = match message.info() {
            Ok(info) => (info.delivered, info.stream_sequence),
            Err(_) => (1, 0),
        };
        let subject = message.subject.to_string();
        match LifecycleEvent::decode(Some(&subject), &message.payload) {
            Ok(event) => {
                let header_tp = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(custodian_telemetry::TRACEPARENT))
                    .map(|v| v.as_str().to_owned());
                let traceparent = header_tp.or_else(|| event.traceparent().map(str::to_owned));
                let raw = message.payload.clone();
                decoded.push(Delivery { subject, event, raw, delivered, stream_sequence, traceparent });
                decoded_messages.push(message);
            }
            Err(e) => dead_letter(bus, spec, clock, &message, None, stream_sequence, &e.to_string()).await,
        }
    }
    (decoded, decoded_messages)
}

/// Hands the batch to the service, then acks, naks or dead-letters each message.
async fn handle_batch<H: BatchHandler>(
    bus: &Bus,
    spec: &ConsumerSpec,
    handler: &H,
    clock: &SharedClock,
    decoded: Vec<Delivery>,
    decoded_messages: Vec<Message>,
) {
    let span = tracing::info_span!("handle_batch", durable = %spec.durable, size = decoded.len());
    let started = std::time::Instant::now();
    let results = handler.handle(&decoded).instrument(span).await;
    tracing::debug!(durable = %spec.durable, size = decoded.len(), elapsed_ms = started.elapsed().as_millis() as u64, "batch handled");
    for (i, (delivery, message)) in decoded.iter().zip(decoded_messages.iter()).enumerate() {
        let result =
            results.get(i).cloned().unwrap_or_else(|| Err(HandlerError::Transient("handler gave no result".into())));
        match result {
            Ok(()) => ack(message, AckKind::Ack).await,
            Err(HandlerError::Transient(reason)) if delivery.delivered >= spec.max_deliver => {
                let reason = format!("gave up after {} deliveries: {reason}", delivery.delivered);
                dead_letter(bus, spec, clock, message, Some(delivery.event.id()), delivery.stream_sequence, &reason)
                    .await;
            }
            Err(HandlerError::Transient(reason)) => {
                let delay = backoff(spec.nak_delay, delivery.delivered);
                tracing::debug!(event_id = delivery.event.id(), subject = %delivery.subject, %reason, ?delay, "transient failure, will retry");
                ack(message, AckKind::Nak(Some(delay))).await;
            }
            Err(HandlerError::Permanent(reason)) => {
                dead_letter(bus, spec, clock, message, Some(delivery.event.id()), delivery.stream_sequence, &reason)
                    .await;
            }
        }
    }
}

/// Redelivery delay after the `delivered`-th failed attempt: doubles from `base`, capped at
/// a minute, so a database outage is waited out instead of dead-lettering good events.
fn backoff(base: Duration, delivered: i64) -> Duration {
    let exponent = u32::try_from(delivered.clamp(1, 16) - 1).unwrap_or(0);
    base.saturating_mul(2u32.saturating_pow(exponent)).min(Duration::from_secs(60))
}

async fn ack(message: &Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        // The server will redeliver after ack_wait; the inbox makes that harmless.
        tracing::warn!(error = %e, "ack not sent");
    }
}

/// Publishes the message to `lifecycle.deadletter.<service>` and terminates it. If the
/// dead letter cannot be published the message is nak'ed, so it is never lost.
async fn dead_letter(
    bus: &Bus,
    spec: &ConsumerSpec,
    clock: &SharedClock,
    message: &Message,
    original_id: Option<&str>,
    stream_sequence: u64,
    reason: &str,
) {
    let subject = message.subject.to_string();
    tracing::warn!(durable = %spec.durable, %subject, original_id, stream_sequence, %reason, "dead-lettering message");
    let Some(dl_subject) = subjects::deadletter(&spec.service) else {
        tracing::error!(service = %spec.service, "service name is not a valid subject token");
        return ack(message, AckKind::Nak(Some(spec.nak_delay))).await;
    };
    let data = DeadLetterV1 {
        original_subject: subject,
        original_id: original_id.map(str::to_owned),
        reason: reason.to_owned(),
        payload_base64: base64::engine::general_purpose::STANDARD.encode(&message.payload),
    };
    // Deterministic id: a retried dead-letter publish is de-duplicated by the stream.
    let id = derived_event_id("deadletter", &format!("{}:{stream_sequence}", spec.durable));
    let event = CloudEvent::with_id(id, format!("urn:custodian:{}", spec.service), clock.now(), data);
    let out = Outgoing {
        subject: dl_subject,
        event_id: event.id.clone(),
        payload: Bytes::from(event.to_json()),
        traceparent: None,
    };
    match bus.publish(&out).await {
        Ok(()) => ack(message, AckKind::Term).await,
        Err(e) => {
            tracing::error!(error = %e, "dead letter not published; message will be redelivered");
            ack(message, AckKind::Nak(Some(spec.nak_delay))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redelivery_backs_off_exponentially_up_to_a_minute() {
        let base = Duration::from_millis(500);
        assert_eq!(backoff(base, 1), Duration::from_millis(500));
        assert_eq!(backoff(base, 2), Duration::from_secs(1));
        assert_eq!(backoff(base, 4), Duration::from_secs(4));
        assert_eq!(backoff(base, 10), Duration::from_secs(60));
        assert_eq!(backoff(base, 10_000), Duration::from_secs(60));
    }
}
