//! The consent ledger. Consumes `consent.granted`, `consent.revoked`, `activity.seen` and
//! `consent.expire`; keeps one row per (issuer, subject, platform) in `consents` and its
//! trail in `consent_history`; publishes `consent.ended` through the outbox when a consent
//! that was honoured stops being so. Answers ledger queries on `custodian.query.consents`.
//!
//! Invariants: state is decided by event time, never arrival order (see [`ledger`]); a
//! fact joined twice changes nothing, so a redelivered event leaves no trace; `consent.ended`
//! has an id derived from its cause, so it is published once however often the cause is
//! replayed. Replicas take turns on the ledger consumer by a lease (`custodian_bus::lease`);
//! all of them answer queries.

pub mod handler;
pub mod ledger;
mod metrics;
pub mod persistence;
mod queries;
mod retention;

use custodian_bus::{Bus, ConsumerSpec, OutboxRelay, Supervisor, SupervisorError};
use custodian_events::subjects;
use custodian_store::Store;
use custodian_store::clock::SharedClock;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use metrics::ConsentMetrics;

pub const SERVICE: &str = "consent";
pub const SOURCE: &str = "urn:custodian:consent";

/// Settings of the consent service (`[consent]` in custodian.toml, `CUSTODIAN_CONSENT__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsentConfig {
    /// Messages fetched and applied per transaction.
    pub batch: usize,
    /// Attempts (backed off, up to a minute apart) before a transiently failing event is
    /// dead-lettered; permanent failures are dead-lettered at once.
    pub max_deliver: i64,
    /// Seconds between outbox re-drives when nothing wakes the relay.
    pub reconcile_every_secs: u64,
    /// Seconds JetStream waits for an ack before redelivering a batch still in hand.
    pub ack_wait_secs: u64,
    /// Batches applied side by side by the replica that leads the ledger consumer.
    pub workers: usize,
}

impl Default for ConsentConfig {
    fn default() -> Self {
        Self { batch: 2000, max_deliver: 50, reconcile_every_secs: 5, ack_wait_secs: 30, workers: 3 }
    }
}

/// What the service is given: its connections and the clock.
#[derive(Debug, Clone)]
pub struct Deps {
    pub store: Store,
    pub bus: Bus,
    pub clock: SharedClock,
    pub metrics: ConsentMetrics,
}

/// Runs the ledger consumer, the outbox relay and the query responder until `shutdown`.
pub async fn run(deps: Deps, config: ConsentConfig, shutdown: CancellationToken) -> Result<(), SupervisorError> {
    let mut relay = OutboxRelay::new(deps.store.clone(), deps.bus.clone(), SERVICE, deps.clock.clone());
    relay.reconcile_every = std::time::Duration::from_secs(config.reconcile_every_secs.max(1));
    let handler = handler::LedgerHandler {
        store: deps.store.clone(),
        clock: deps.clock.clone(),
        relay: relay.handle(),
        metrics: deps.metrics.clone(),
    };
    let mut spec = ConsumerSpec::new(
        SERVICE,
        "ledger",
        &[subjects::CONSENT_GRANTED, subjects::CONSENT_REVOKED, subjects::ACTIVITY_SEEN, subjects::CONSENT_EXPIRE],
    );
    spec.batch = config.batch.max(1);
    spec.max_deliver = config.max_deliver.max(1);
    spec.ack_wait = std::time::Duration::from_secs(config.ack_wait_secs.max(1));

    // One replica at a time consumes (a lease), one puller with `workers` batches applied
    // side by side and one ack per batch: the per-message ack cost nats-server and the
    // client a sixth of the ingest, and the ledger's outcome does not depend on the order
    // batches are applied in (facts join; a replay after a takeover changes nothing).
    spec.exclusive = true;
    spec.appliers = config.workers.max(1);
    spec.leading = Some(deps.metrics.leading.clone());
    // Facts are ordered by their time: one dated far ahead would outrank every later one.
    spec.future_skew = Some(custodian_events::MAX_CLOCK_SKEW);
    spec.replay = true;
    // A revocation reaches the ledger as a nudge too, on any replica (rows are locked in key
    // order, so replicas applying side by side never deadlock), leading or not.
    spec.nudged = true;

    let mut tasks = Supervisor::new(shutdown.clone());
    tasks.spawn("consent-relay", relay.run(shutdown.clone()));
    {
        let (bus, clock, token) = (deps.bus.clone(), deps.clock.clone(), shutdown.clone());
        let handler = handler.clone();
        tasks.spawn(
            "consent-ledger",
            async move { custodian_bus::run_consumer(&bus, spec, handler, clock, token).await },
        );
    }
    let mut retention_spec = ConsumerSpec::new(SERVICE, "retention", &[subjects::RETENTION_PURGE]);
    retention_spec.batch = 10;
    retention_spec.replay = true;
    let (bus, clock, token) = (deps.bus.clone(), deps.clock.clone(), shutdown.clone());
    let retention = retention::RetentionHandler { store: deps.store.clone() };
    tasks.spawn("consent-retention", async move {
        custodian_bus::run_consumer(&bus, retention_spec, retention, clock, token).await
    });
    tasks.spawn("consent-queries", queries::serve(deps.bus.client().clone(), deps.store.clone(), shutdown));
    tasks.wait().await
}
