//! The outbox relay: publishes the events a service committed to its outbox, then marks
//! them. It wakes when the service says it committed, and on a timer — the timer is the
//! reconciler that re-drives any row whose publish failed or was cut short by a crash.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use custodian_store::Store;
use custodian_store::clock::SharedClock;
use custodian_store::outbox;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{Bus, BusError, Outgoing};

const BATCH: u64 = 1000;
const IN_FLIGHT: usize = 1024;

/// Wakes the relay after a commit.
#[derive(Debug, Clone, Default)]
pub struct RelayHandle(Arc<Notify>);

impl RelayHandle {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

#[derive(Debug)]
pub struct OutboxRelay {
    store: Store,
    bus: Bus,
    publisher: String,
    clock: SharedClock,
    handle: RelayHandle,
    /// How often unpublished rows are re-driven without a wake-up.
    pub reconcile_every: Duration,
}

impl OutboxRelay {
    pub fn new(store: Store, bus: Bus, publisher: &str, clock: SharedClock) -> Self {
        Self {
            store,
            bus,
            publisher: publisher.to_owned(),
            clock,
            handle: RelayHandle::default(),
            reconcile_every: Duration::from_secs(5),
        }
    }

    pub fn handle(&self) -> RelayHandle {
        self.handle.clone()
    }

    /// Runs until `shutdown`, then drains what is left (best effort).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BusError> {
        tracing::info!(publisher = %self.publisher, "outbox relay started");
        let mut backoff = Duration::ZERO;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.handle.0.notified() => {}
                () = tokio::time::sleep(self.reconcile_every.max(backoff)) => {}
            }
            match self.drain().await {
                Ok(_) => backoff = Duration::ZERO,
                Err(e) => {
                    backoff = (backoff * 2).clamp(Duration::from_millis(200), Duration::from_secs(30));
                    tracing::warn!(publisher = %self.publisher, error = %e, retry_in = ?backoff, "outbox relay failed; rows stay for the next pass");
                }
            }
        }
        if let Err(e) = self.drain().await {
            tracing::warn!(publisher = %self.publisher, error = %e, "final outbox drain incomplete; rows stay for the next start");
        }
        tracing::info!(publisher = %self.publisher, "outbox relay stopped");
        Ok(())
    }

    /// Publishes every unpublished row of this publisher; returns how many were published.
    pub async fn drain(&self) -> Result<usize, BusError> {
        let mut total = 0;
        loop {
            let rows = outbox::unpublished(self.store.db(), &self.publisher, BATCH).await?;
            if rows.is_empty() {
                return Ok(total);
            }
            let now = self.clock.now();
            // One span per event, a child of the work that wrote it; the event travels with the
            // span's context, so its consumers continue the same trace. The spans end once the
            // stream has acked.
            let mut spans = Vec::with_capacity(rows.len());
            let outgoing: Vec<Outgoing> = rows
                .into_iter()
                .map(|row| {
                    crate::metrics::observe_outbox_age(
                        &self.publisher,
                        (now - row.created_at).to_std().unwrap_or_default().as_secs_f64(),
                    );
                    let span = tracing::info_span!(
                        "outbox_publish",
                        service = %self.publisher,
                        event_id = %row.event_id,
                        messaging.destination.name = %row.subject,
                        otel.kind = "producer",
                    );
                    custodian_telemetry::adopt_remote_parent(&span, row.traceparent.as_deref());
                    let traceparent = span.in_scope(custodian_telemetry::current_traceparent).or(row.traceparent);
                    spans.push(span);
                    Outgoing {
                        subject: row.subject,
                        event_id: row.event_id,
                        payload: Bytes::from(row.payload),
                        traceparent,
                    }
                })
                .collect();
            let results = self.bus.publish_all(&outgoing, IN_FLIGHT).await;
            drop(spans);
            let (mut acked, mut failed, mut first_error, mut in_flight) = (Vec::new(), Vec::new(), None, 0usize);
            for (out, result) in outgoing.into_iter().zip(results) {
                match result {
                    Ok(()) => acked.push(out.event_id),
                    // Being stored from another relay's publish: that one marks it, or the
                    // next pass gets the duplicate ack. Neither a failure nor a reason to wait.
                    Err(BusError::InFlight { .. }) => in_flight += 1,
                    Err(e) => {
                        failed.push(out.event_id);
                        first_error.get_or_insert(e);
                    }
                }
            }
            total += acked.len();
            let progressed = !acked.is_empty();
            outbox::mark_published(self.store.db(), acked, self.clock.now()).await?;
            if let Some(e) = first_error {
                outbox::record_failed_attempt(self.store.db(), failed).await?;
                return Err(e);
            }
            if in_flight > 0 && !progressed {
                // All that is left is being stored by another publish: the next pass finds it
                // marked, or gets its duplicate ack, rather than spin on it now.
                tracing::debug!(publisher = %self.publisher, in_flight, "outbox rows being stored by another relay");
                return Ok(total);
            }
        }
    }
}
