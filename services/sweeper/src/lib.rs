//! The sweeper: inactivity sweeps on cron schedules and on demand, run once across
//! replicas (a lease in NATS KV, a fenced checkpoint in `sweeps`), expiring idle consents by
//! `consent.expire` commands the consent service re-checks; and the retention schedule that
//! tells every service to purge its old records.
//!
//! Invariants: a sweep never reads the consent tables (it asks the consent service for
//! keyset pages); each expire command's id derives from (sweep, consent), so a resumed or
//! repeated sweep publishes nothing twice; memory is one page, whatever the ledger's size.

pub mod config;
pub mod lease;
mod queries;
mod schedule;
pub mod sweep;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use custodian_bus::{
    BatchHandler, Bus, ConsumerSpec, Delivery, HandlerError, OutboxRelay, RelayHandle, Supervisor, SupervisorError,
};
use custodian_events::{LifecycleEvent, subjects};
use custodian_store::Store;
use custodian_store::clock::SharedClock;
use custodian_store::entities::sweep as sweep_entity;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{ConfigError, RetentionConfig, SweepSchedule, SweeperConfig};

pub const SERVICE: &str = "sweeper";
pub const SOURCE: &str = "urn:custodian:sweeper";

#[derive(Debug, Clone, Default)]
pub struct SweeperMetrics {
    pub scanned: Counter,
    pub expired: Counter,
    pub finished: Counter,
}

impl SweeperMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("custodian_sweep_consents_scanned", "Idle consents examined by sweeps", self.scanned.clone());
        registry.register("custodian_sweep_consents_expired", "consent.expire commands issued", self.expired.clone());
        registry.register("custodian_sweeps_finished", "Sweeps completed", self.finished.clone());
    }
}

#[derive(Debug, Clone)]
pub struct Deps {
    pub store: Store,
    pub bus: Bus,
    pub clock: SharedClock,
    pub metrics: SweeperMetrics,
    /// This replica's name in leases and in `sweeps.holder` (e.g. the pod name).
    pub replica: String,
}

/// Shared by the tasks of one replica.
#[derive(Debug)]
pub struct Sweeper {
    pub store: Store,
    pub bus: Bus,
    pub clock: SharedClock,
    pub config: SweeperConfig,
    pub replica: String,
    pub relay: RelayHandle,
    pub metrics: SweeperMetrics,
    wake: Notify,
    running: Mutex<HashSet<String>>,
}

impl Sweeper {
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Runs until `shutdown`: schedules, the request consumer, the lease-taking worker, the
/// progress responder and the outbox relay.
pub async fn run(deps: Deps, config: SweeperConfig, shutdown: CancellationToken) -> Result<(), SupervisorError> {
    config.validate().map_err(|e| SupervisorError { task: "sweeper-config".into(), reason: e.to_string() })?;
    let ttl = Duration::from_secs(config.lease_ttl_secs);
    let kv = lease::bucket(deps.bus.jetstream(), ttl, deps.bus.replicas())
        .await
        .map_err(|e| SupervisorError { task: "sweeper-leases".into(), reason: e.to_string() })?;
    let relay = OutboxRelay::new(deps.store.clone(), deps.bus.clone(), SERVICE, deps.clock.clone());
    let sweeper = Arc::new(Sweeper {
        store: deps.store.clone(),
        bus: deps.bus.clone(),
        clock: deps.clock.clone(),
        config,
        replica: deps.replica.clone(),
        relay: relay.handle(),
        metrics: deps.metrics.clone(),
        wake: Notify::new(),
        running: Mutex::new(HashSet::new()),
    });

    let mut tasks = Supervisor::new(shutdown.clone());
    tasks.spawn("sweeper-relay", relay.run(shutdown.clone()));
    let (s, t) = (sweeper.clone(), shutdown.clone());
    tasks.spawn("sweeper-worker", async move { worker(s, kv, t).await });
    let (s, t) = (sweeper.clone(), shutdown.clone());
    tasks.spawn("sweeper-schedule", async move { schedule::run(s, t).await });
    let mut spec = ConsumerSpec::new(SERVICE, "requests", &[subjects::SWEEP_REQUESTED]);
    spec.replay = true;
    let (bus, clock, t) = (deps.bus.clone(), deps.clock.clone(), shutdown.clone());
    let handler = RequestHandler(sweeper.clone());
    tasks.spawn("sweeper-requests", async move { custodian_bus::run_consumer(&bus, spec, handler, clock, t).await });
    tasks.spawn("sweeper-queries", queries::serve(deps.bus.client().clone(), deps.store.clone(), shutdown));
    tasks.wait().await
}

/// Takes the lease of every unfinished sweep it can and runs it; retries the others, so a
/// sweep whose holder died is resumed once its lease ages out.
async fn worker(
    sweeper: Arc<Sweeper>,
    kv: async_nats::jetstream::kv::Store,
    shutdown: CancellationToken,
) -> Result<(), sea_orm::DbErr> {
    let ttl = Duration::from_secs(sweeper.config.lease_ttl_secs);
    let mut running: JoinSet<()> = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = sweeper.wake.notified() => {}
            () = tokio::time::sleep(ttl / 3) => {}
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
        let open = sweep_entity::Entity::find()
            .filter(sweep_entity::Column::State.ne("finished"))
            .all(sweeper.store.db())
            .await?;
        for row in open {
            let already = sweeper.running.lock().map(|r| r.contains(&row.sweep_id)).unwrap_or(true);
            if already {
                continue;
            }
            let mut lease = match lease::Lease::try_acquire(&kv, &row.sweep_id, &sweeper.replica).await {
                Ok(Some(lease)) => lease,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(sweep_id = %row.sweep_id, error = %e, "cannot take the sweep's lease; will retry");
                    continue;
                }
            };
            if let Ok(mut r) = sweeper.running.lock() {
                r.insert(row.sweep_id.clone());
            }
            let (s, stop) = (sweeper.clone(), shutdown.child_token());
            running.spawn(async move {
                let id = row.sweep_id.clone();
                let outcome = tokio::select! {
                    outcome = sweep::run(&s, &id, &stop) => outcome.map_err(|e| e.to_string()),
                    lost = lease.keep_alive(ttl / 3) => Err(lost.to_string()),
                };
                match outcome {
                    Ok(()) => lease.release().await,
                    // The lease ages out and another replica (or this one) resumes.
                    Err(reason) => {
                        tracing::warn!(sweep_id = %id, %reason, "sweep interrupted; it will resume from its checkpoint")
                    }
                }
                if let Ok(mut r) = s.running.lock() {
                    r.remove(&id);
                }
            });
        }
    }
    running.shutdown().await;
    Ok(())
}

/// `lifecycle.sweep.requested` → a pending sweep row.
#[derive(Debug, Clone)]
struct RequestHandler(Arc<Sweeper>);

impl BatchHandler for RequestHandler {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Result<(), HandlerError>> {
        let mut results = Vec::with_capacity(batch.len());
        for delivery in batch {
            let LifecycleEvent::SweepRequested(event) = &delivery.event else {
                results.push(Err(HandlerError::Permanent("not a sweep request".into())));
                continue;
            };
            let d = &event.data;
            let idle_before = event.time - chrono::Duration::days(i64::from(d.inactivity_days));
            let new = sweep::NewSweep {
                sweep_id: d.sweep_id.clone(),
                platform_id: d.platform_id.clone(),
                dry_run: d.dry_run,
                idle_before,
                requested_by: d.requested_by.clone(),
                traceparent: delivery.traceparent.clone(),
            };
            let created = sweep::ensure(self.0.store.db(), new, self.0.clock.now()).await;
            results.push(created.map_err(|e| HandlerError::Transient(e.to_string())));
        }
        self.0.wake();
        results
    }
}
