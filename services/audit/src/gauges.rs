//! What the whole deployment looks like now, as gauges (the bus and the outboxes belong to no
//! one service; the audit service, which reads the whole stream anyway, reports them): each
//! durable consumer's backlog and whether a replica leads it, the dead letters the stream
//! keeps, and the outboxes' unpublished events. Read every [`EVERY`] from JetStream and the
//! database, as `custodian status` reads them, but without any message's content.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;

use custodian_bus::Bus;
use custodian_store::Store;
use custodian_store::clock::SharedClock;

/// How often the gauges are read (a scrape interval's worth).
pub const EVERY: Duration = Duration::from_secs(5);

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Default)]
pub struct SystemGauges {
    /// Messages a durable has not acknowledged yet (undelivered + in flight), per consumer.
    pub consumer_pending: Family<Labels, Gauge>,
    /// For consumers whose replicas take turns: 1 while a replica leads, 0 while none does.
    pub consumer_led: Family<Labels, Gauge>,
    /// Dead letters the stream holds, per subject.
    pub dead_letters: Family<Labels, Gauge>,
    /// Events written to an outbox and not yet published, per publisher.
    pub outbox_unpublished: Family<Labels, Gauge>,
    /// Age of the oldest of those, per publisher (0 when none waits).
    pub outbox_oldest_seconds: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// 1 after a read that succeeded, 0 after one that failed (the rest then keep their last values).
    pub up: Gauge,
    /// The last complete read, as the operators' console shows it (`custodian.query.health`).
    pub latest: Arc<std::sync::Mutex<Option<custodian_events::queries::HealthView>>>,
}

impl SystemGauges {
    /// The answer to `custodian.query.health`.
    pub fn health(&self) -> custodian_events::queries::HealthReply {
        use custodian_events::queries::HealthReply;
        match self.latest.lock().map(|l| l.clone()) {
            Ok(Some(view)) => HealthReply::Health(view),
            _ => HealthReply::Unavailable("the deployment's health has not been read yet".into()),
        }
    }
}

impl SystemGauges {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "custodian_consumer_pending_messages",
            "Messages a durable consumer has not acknowledged yet (undelivered and in flight)",
            self.consumer_pending.clone(),
        );
        registry.register(
            "custodian_consumer_led",
            "1 while a replica leads a consumer whose replicas take turns, 0 while none does",
            self.consumer_led.clone(),
        );
        registry.register(
            "custodian_dead_letters_messages",
            "Dead letters the stream holds, per subject",
            self.dead_letters.clone(),
        );
        registry.register(
            "custodian_outbox_unpublished_events",
            "Events written to an outbox and not yet published, per publisher",
            self.outbox_unpublished.clone(),
        );
        registry.register_with_unit(
            "custodian_outbox_oldest_unpublished_age",
            "Age of the oldest unpublished outbox event, per publisher",
            Unit::Seconds,
            self.outbox_oldest_seconds.clone(),
        );
        registry.register(
            "custodian_system_gauges_up",
            "1 if the last read of the bus and outbox gauges succeeded",
            self.up.clone(),
        );
    }
}

/// Reads the gauges every [`EVERY`] until `shutdown`.
pub async fn run(gauges: Arc<SystemGauges>, bus: Bus, store: Store, clock: SharedClock, shutdown: CancellationToken) {
    loop {
        let ok = read(&gauges, &bus, &store, &clock).await;
        gauges.up.set(i64::from(ok));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}

async fn read(gauges: &SystemGauges, bus: &Bus, store: &Store, clock: &SharedClock) -> bool {
    let label = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
    let bus = match custodian_bus::status::bus_counts(bus).await {
        Ok(bus) => bus,
        Err(e) => {
            tracing::debug!(error = %e, "bus gauges not read");
            if let Ok(mut latest) = gauges.latest.lock() {
                *latest = None;
            }
            return false;
        }
    };
    // Cleared first: a consumer or subject gone since is no series of its own any more.
    gauges.consumer_pending.clear();
    gauges.consumer_led.clear();
    for c in &bus.consumers {
        let pending = c.pending.saturating_add(c.unacknowledged as u64);
        let labels = label("consumer", &c.name);
        // A term's durable and its predecessor may both still exist: the consumer's backlog is the live one's.
        let gauge = gauges.consumer_pending.get_or_create(&labels);
        gauge.set(gauge.get().max(i64::try_from(pending).unwrap_or(i64::MAX)));
        if c.takes_turns {
            gauges.consumer_led.get_or_create(&labels).set(i64::from(c.leader.is_some()));
        }
    }
    gauges.dead_letters.clear();
    // Every service's subject, at 0 when it holds none: an alert sees a rise from 0, not a
    // series appearing.
    for service in custodian_bus::trust::Service::ALL {
        let subject = format!("{}.{}", custodian_events::subjects::DEADLETTER_PREFIX, service.name());
        gauges.dead_letters.get_or_create(&label("subject", &subject)).set(0);
    }
    for (subject, n) in &bus.dead_letters {
        gauges.dead_letters.get_or_create(&label("subject", subject)).set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    match custodian_store::outbox::backlog(store.db()).await {
        Ok(backlog) => {
            let now = clock.now();
            gauges.outbox_unpublished.clear();
            gauges.outbox_oldest_seconds.clear();
            // Every service at 0 unless it has something waiting (as for dead letters).
            for service in custodian_bus::trust::Service::ALL {
                let labels = label("publisher", service.name());
                gauges.outbox_unpublished.get_or_create(&labels).set(0);
                gauges.outbox_oldest_seconds.get_or_create(&labels).set(0.0);
            }
            let health = custodian_events::queries::HealthView {
                read_at: now,
                consumers: bus
                    .consumers
                    .iter()
                    .map(|c| custodian_events::queries::ConsumerHealth {
                        name: c.name.clone(),
                        leader: c.leader.clone(),
                        takes_turns: c.takes_turns,
                        pending: c.pending,
                        unacknowledged: c.unacknowledged as u64,
                    })
                    .collect(),
                dead_letters: bus.dead_letters.clone(),
                recent_dead_letters: recent_dead_letters(store).await,
                outboxes: backlog
                    .iter()
                    .map(|b| custodian_events::queries::OutboxHealth {
                        publisher: b.publisher.clone(),
                        waiting: b.waiting,
                        oldest: b.oldest,
                    })
                    .collect(),
            };
            if let Ok(mut latest) = gauges.latest.lock() {
                *latest = Some(health);
            }
            for b in backlog {
                let labels = label("publisher", &b.publisher);
                gauges.outbox_unpublished.get_or_create(&labels).set(i64::try_from(b.waiting).unwrap_or(i64::MAX));
                let age = (now - b.oldest).to_std().unwrap_or_default().as_secs_f64();
                gauges.outbox_oldest_seconds.get_or_create(&labels).set(age);
            }
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "outbox gauges not read");
            false
        }
    }
}

/// How many of the latest dead letters the console lists.
const RECENT_DEAD_LETTERS: u64 = 20;

/// The latest dead letters with their reasons and the operators' replays of each, read from
/// the audit chain (which records every event of the stream, dead letters included). Only
/// where each went and why: not its payload.
async fn recent_dead_letters(store: &Store) -> Vec<custodian_events::queries::DeadLetterSummary> {
    use custodian_events::queries::{DeadLetterSummary, ReplaySummary};
    let rows = match latest_entries(store, custodian_events::subjects::DEADLETTER_PREFIX, RECENT_DEAD_LETTERS).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::debug!(error = %e, "dead letters not read");
            return Vec::new();
        }
    };
    let replays = latest_entries(store, custodian_events::subjects::REPLAYED_PREFIX, RECENT_REPLAYS).await;
    let replays: Vec<(String, ReplaySummary)> = replays
        .unwrap_or_default()
        .into_iter()
        .rev()
        .filter_map(|row| {
            let event: serde_json::Value = serde_json::from_str(&row.payload).ok()?;
            let data: custodian_events::DeadLetterReplayedV1 = serde_json::from_value(event["data"].clone()).ok()?;
            let summary = ReplaySummary {
                recorded_at: row.recorded_at,
                operator: data.operator,
                outcome: data.outcome,
                reason: data.reason,
            };
            Some((data.dead_letter_id, summary))
        })
        .collect();
    rows.into_iter()
        .map(|row| {
            let event: serde_json::Value = serde_json::from_str(&row.payload).unwrap_or_default();
            let data = &event["data"];
            let text = |key: &str| data.get(key).and_then(serde_json::Value::as_str).map(str::to_owned);
            DeadLetterSummary {
                replays: replays.iter().filter(|(id, _)| *id == row.event_id).map(|(_, r)| r.clone()).collect(),
                id: row.event_id,
                recorded_at: row.recorded_at,
                subject: row.subject,
                original_subject: text("original_subject").unwrap_or_default(),
                original_id: text("original_id"),
                reason: text("reason").unwrap_or_default(),
            }
        })
        .collect()
}

/// How many of the latest replays are matched to the dead letters listed.
const RECENT_REPLAYS: u64 = 200;

/// The newest `limit` entries of the chain on `<prefix>.<token>` subjects, newest first.
async fn latest_entries(
    store: &Store,
    prefix: &str,
    limit: u64,
) -> Result<Vec<custodian_store::entities::audit_entry::Model>, sea_orm::DbErr> {
    use custodian_store::entities::audit_entry;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
    audit_entry::Entity::find()
        .filter(audit_entry::Column::Subject.starts_with(format!("{prefix}.").as_str()))
        .order_by_desc(audit_entry::Column::Seq)
        .limit(limit)
        .all(store.db())
        .await
}

/// The dead letter `id` of `service` as the chain recorded it, for that service's replay. Only
/// from `lifecycle.deadletter.<service>`: a service cannot replay another's.
pub async fn dead_letter(store: &Store, service: &str, id: &str) -> custodian_events::replay::DeadLetterReply {
    use custodian_events::replay::DeadLetterReply;
    use custodian_store::entities::audit_entry;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let Some(subject) = custodian_events::subjects::deadletter(service) else {
        return DeadLetterReply::Error(format!("{service:?} is not a service name"));
    };
    let row = audit_entry::Entity::find()
        .filter(audit_entry::Column::Subject.eq(subject.as_str()))
        .filter(audit_entry::Column::EventId.eq(id))
        .one(store.db())
        .await;
    match row {
        Ok(None) => DeadLetterReply::NotFound,
        Ok(Some(row)) => {
            let data = serde_json::from_str::<serde_json::Value>(&row.payload)
                .map_err(|e| e.to_string())
                .and_then(|event| serde_json::from_value(event["data"].clone()).map_err(|e| e.to_string()));
            match data {
                Ok(letter) => DeadLetterReply::Found(letter),
                Err(e) => DeadLetterReply::Error(format!("the recorded dead letter does not read: {e}")),
            }
        }
        Err(e) => DeadLetterReply::Error(format!("the audit chain could not be read: {e}")),
    }
}
