//! Nudges: a core-NATS copy of each event on a revocation's path, sent beside its JetStream
//! publish, so that whoever acts on it next need not wait for the stream.
//!
//! On a JetStream cluster, a node killed while it leads the stream or a consumer leaves that
//! group without a leader until nats-server's raft elects one, 4 to 9 s after the last
//! heartbeat (its election timeouts are constants). Nothing is stored or delivered through
//! the stream meanwhile, while core NATS carries on over the surviving nodes at once. So the
//! revocation path — the person's revocation, the ledger's `consent.ended`, the vault's wipe
//! commands and the views' acks — also travels as nudges on `custodian.nudge.<subject>`,
//! and the consumers of those subjects apply a nudge with the very handler, checks and
//! de-duplication that apply the stream's copy.
//!
//! A nudge is only ever a shortcut: not stored, not acked, and sent again only a little
//! (every second while its event awaits its ack, or once a second after it was stored, for
//! one lost with a dying node's connection); the stream's copy still comes and finds its
//! effect already there (every handler makes a second delivery harmless), or does the work
//! if the nudge was lost or failed. Who may publish and read a nudge is who may publish and
//! read its event: the trust table grants both from the same entries.

use std::time::Duration;

use bytes::Bytes;
use custodian_events::subjects;
use custodian_store::clock::SharedClock;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::consumer::{BatchHandler, ConsumerSpec, Delivery, check_event};
use crate::{Outgoing, publish};

/// Nudges are published on `custodian.nudge.<the event's subject>`: outside the stream's
/// `lifecycle.>`, so never stored.
pub const PREFIX: &str = "custodian.nudge";

/// When an event is nudged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// As soon as it is sent: its publisher keeps it until the stream holds it (an outbox
    /// row, a pending wipe), or it states a fact that is true whether stored or not (a
    /// view's wipe ack).
    Sent,
    /// Once the stream holds it: a fact that enters Custodian here (the gateway's, an
    /// operator's), whose publisher keeps nothing, takes effect only if it is on record.
    Stored,
}

/// The events nudged: `(subject filter, when)`. Every other event goes through the stream
/// only.
pub const NUDGED: &[(&str, When)] = &[
    (subjects::CONSENT_REVOKED, When::Stored),
    (subjects::SESSION_REVOKE, When::Stored),
    (subjects::CONSENT_EXPIRE, When::Sent),
    (subjects::CONSENT_ENDED, When::Sent),
    (subjects::INCIDENT_CONTAIN, When::Sent),
    ("lifecycle.session.wipe.*", When::Sent),
    (subjects::SESSION_WIPED, When::Sent),
    (subjects::SESSION_WIPED_BY_VIEW, When::Sent),
];

/// Is `subject` (an event's subject) nudged, and when?
pub fn when(subject: &str) -> Option<When> {
    NUDGED.iter().find(|(filter, _)| subjects::matches_filter(filter, subject)).map(|(_, when)| *when)
}

/// Are the subjects of the filter `pattern` (a permission, a consumer's filter) nudged? A
/// wildcard token stands for itself, so `lifecycle.session.wipe.*` is and `lifecycle.>` is not.
pub(crate) fn is_nudged_filter(pattern: &str) -> bool {
    when(pattern).is_some()
}

/// The nudge subject of an event's subject, or of a filter.
pub fn subject(of: &str) -> String {
    format!("{PREFIX}.{of}")
}

/// The event's subject of a nudge subject.
fn original(nudge_subject: &str) -> Option<&str> {
    nudge_subject.strip_prefix(PREFIX)?.strip_prefix('.')
}

/// How long a nudge may wait for room in the client's buffer: while the connection is down a
/// nudge would arrive no sooner than the stream's copy, so it is dropped instead.
const SEND_TIMEOUT: Duration = Duration::from_millis(20);

/// Sends the nudge of `out` if its subject is nudged `at` this point of its publish. False
/// if one was due and could not be sent (a batch then sends no more: the client is stuck).
pub(crate) async fn send(client: &async_nats::Client, out: &Outgoing, at: When) -> bool {
    if when(&out.subject) != Some(at) {
        return true;
    }
    let sent = client.publish_with_headers(subject(&out.subject), publish::headers(out), out.payload.clone());
    match tokio::time::timeout(SEND_TIMEOUT, sent).await {
        Ok(Ok(())) => {
            crate::metrics::nudge_sent();
            true
        }
        Ok(Err(e)) => {
            tracing::debug!(subject = %out.subject, error = %e, "nudge not sent; the stream's copy will do");
            false
        }
        Err(_) => {
            tracing::debug!(subject = %out.subject, "nudge not sent (client buffer full); the stream's copy will do");
            false
        }
    }
}

/// How often the nudges of events still waiting for their ack go again: one lost with a
/// dying node's connection (its subscriber's, or its publisher's) is not left to the stream's
/// election. In a normal run acks come long before.
const AGAIN_EVERY: Duration = Duration::from_secs(1);

/// Sends the nudges of those of `events` nudged when sent, again every [`AGAIN_EVERY`], until
/// the returned guard is dropped (their acks are in, or the publish gave up). `None` when
/// none of them is nudged when sent.
pub(crate) fn again_until_acked(client: &async_nats::Client, events: &[Outgoing]) -> Option<AgainGuard> {
    let due: Vec<Outgoing> = events.iter().filter(|out| when(&out.subject) == Some(When::Sent)).cloned().collect();
    if due.is_empty() {
        return None;
    }
    let client = client.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(AGAIN_EVERY).await;
            for out in &due {
                if !send(&client, out, When::Sent).await {
                    break;
                }
            }
        }
    });
    Some(AgainGuard(task.abort_handle()))
}

/// Sends the nudges of those of `stored` nudged once stored again, [`AGAIN_EVERY`] after the
/// first: their publisher keeps nothing to send them again from, and one lost with a dying
/// node's subscriber would otherwise wait for the stream's copy, behind an election.
pub(crate) fn again_later(client: &async_nats::Client, stored: Vec<Outgoing>) {
    let due: Vec<Outgoing> = stored.into_iter().filter(|out| when(&out.subject) == Some(When::Stored)).collect();
    if due.is_empty() {
        return;
    }
    let client = client.clone();
    tokio::spawn(async move {
        tokio::time::sleep(AGAIN_EVERY).await;
        for out in &due {
            if !send(&client, out, When::Stored).await {
                break;
            }
        }
    });
}

/// Stops [`again_until_acked`]'s re-sends when dropped.
pub(crate) struct AgainGuard(tokio::task::AbortHandle);

impl Drop for AgainGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The filters of `spec` that are nudged: those its consumer also takes as nudges.
pub fn filters(spec: &ConsumerSpec) -> Vec<String> {
    spec.filter_subjects.iter().filter(|f| is_nudged_filter(f)).cloned().collect()
}

/// The queue group a consumer's replicas share its nudges in (one replica applies each).
pub fn queue(durable_base: &str) -> String {
    format!("{durable_base}-nudges")
}

/// Applies the nudges of `spec`'s nudged filters with `handler` until `shutdown`, in the
/// queue group of its replicas, a batch at a time: whatever `handler` answers, nothing is
/// acked, retried or dead-lettered here (the stream's copy is).
pub(crate) async fn listen<H: BatchHandler>(
    client: async_nats::Client,
    spec: ConsumerSpec,
    durable_base: String,
    handler: std::sync::Arc<H>,
    clock: SharedClock,
    shutdown: CancellationToken,
) {
    let filters = filters(&spec);
    if filters.is_empty() {
        return;
    }
    let queue = queue(&durable_base);
    let mut streams = Vec::with_capacity(filters.len());
    for filter in &filters {
        // Subscribing is only a command in the client's buffer: it takes effect when (and
        // every time) the connection is up, so it cannot fail for an outage.
        match client.queue_subscribe(subject(filter), queue.clone()).await {
            Ok(subscriber) => streams.push(subscriber),
            Err(e) => {
                tracing::warn!(durable = %durable_base, filter = %filter, error = %e, "cannot take nudges; the stream's copies only");
                return;
            }
        }
    }
    tracing::debug!(durable = %durable_base, filters = ?filters, "taking nudges");
    let mut nudges = futures::stream::select_all(streams).ready_chunks(spec.batch.max(1));
    loop {
        let batch = tokio::select! {
            () = shutdown.cancelled() => return,
            batch = nudges.next() => match batch {
                Some(batch) => batch,
                None => return,
            },
        };
        let deliveries: Vec<Delivery> =
            batch.into_iter().filter_map(|message| delivery(&spec, &clock, message)).collect();
        if deliveries.is_empty() {
            continue;
        }
        let span = tracing::info_span!("handle_nudges", service = %spec.service, durable = %durable_base, size = deliveries.len(), otel.kind = "consumer");
        for delivery in &deliveries {
            custodian_telemetry::link_remote(&span, delivery.traceparent.as_deref());
        }
        let results = handler.handle(&deliveries).instrument(span).await;
        let applied = results.iter().filter(|r| r.is_ok()).count();
        crate::metrics::nudges_applied(&durable_base, applied as u64, (deliveries.len() - applied) as u64);
        if applied < deliveries.len() {
            tracing::debug!(durable = %durable_base, size = deliveries.len(), applied, "some nudges not applied; the stream's copies will be");
        }
    }
}

/// A nudge as the consumer's handler takes it: strictly decoded against its event's subject,
/// like the stream's copy; what does not pass is dropped (the copy is dead-lettered).
fn delivery(spec: &ConsumerSpec, clock: &SharedClock, message: async_nats::Message) -> Option<Delivery> {
    let subject = original(message.subject.as_str())?.to_owned();
    let raw: Bytes = message.payload;
    let event = check_event(spec, clock, &subject, &raw).ok()?;
    let header_tp =
        message.headers.as_ref().and_then(|h| h.get(custodian_telemetry::TRACEPARENT)).map(|v| v.as_str().to_owned());
    let traceparent = header_tp.or_else(|| event.traceparent().map(str::to_owned));
    Some(Delivery { subject, event, delivered: 1, stream_sequence: 0, traceparent, raw, nudge: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_revocation_path_is_nudged_and_nothing_else() {
        assert_eq!(when(subjects::CONSENT_REVOKED), Some(When::Stored));
        assert_eq!(when(subjects::CONSENT_ENDED), Some(When::Sent));
        assert_eq!(when("lifecycle.session.wipe.view-1"), Some(When::Sent));
        assert_eq!(when("lifecycle.session.wiped.view-1"), Some(When::Sent));
        assert_eq!(when(subjects::SESSION_WIPED), Some(When::Sent));
        assert_eq!(when(subjects::CONSENT_GRANTED), None);
        assert_eq!(when(subjects::TOKEN_REVOKED), None);
        assert_eq!(when("lifecycle.session.wipe.a.b"), None);
        assert_eq!(when("lifecycle.session.opened.view-1"), None);
    }

    #[test]
    fn a_nudge_names_its_events_subject() {
        let nudge = subject("lifecycle.consent.ended");
        assert_eq!(nudge, "custodian.nudge.lifecycle.consent.ended");
        assert_eq!(original(&nudge), Some("lifecycle.consent.ended"));
        assert_eq!(original("lifecycle.consent.ended"), None);
        assert!(!subjects::matches_filter(subjects::ALL, &nudge), "a nudge is never stored in the stream");
    }
}
