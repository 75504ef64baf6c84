//! Cron: at each scheduled time every replica creates the same sweep row (its id is the
//! schedule name and the time), so exactly one sweep exists and one replica runs it; the
//! retention schedule puts one `retention.purge` (deterministic id) in the outbox.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use custodian_events::{CloudEvent, RetentionPurgeV1, derived_event_id, subjects};
use custodian_store::outbox;
use tokio_util::sync::CancellationToken;

use crate::config::parse_cron;
use crate::{SERVICE, SOURCE, Sweeper, sweep};

enum Job {
    Sweep(usize),
    Retention,
}

pub async fn run(sweeper: Arc<Sweeper>, shutdown: CancellationToken) -> Result<(), String> {
    let mut jobs = Vec::new();
    for (i, s) in sweeper.config.schedules.iter().enumerate() {
        jobs.push((Job::Sweep(i), parse_cron("sweeper.schedules.cron", &s.cron).map_err(|e| e.to_string())?));
    }
    if !sweeper.config.retention.cron.is_empty() {
        jobs.push((
            Job::Retention,
            parse_cron("sweeper.retention.cron", &sweeper.config.retention.cron).map_err(|e| e.to_string())?,
        ));
    }
    if jobs.is_empty() {
        shutdown.cancelled().await;
        return Ok(());
    }
    let mut after = sweeper.clock.now();
    loop {
        let Some(next) = jobs.iter().filter_map(|(_, s)| s.after(&after).next()).min() else { return Ok(()) };
        let wait = (next - sweeper.clock.now()).to_std().unwrap_or_default();
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
        for (job, schedule) in &jobs {
            if schedule.after(&after).next() != Some(next) {
                continue;
            }
            if let Err(e) = fire(&sweeper, job, next).await {
                tracing::error!(error = %e, "scheduled job not recorded; the next tick retries nothing, check the database");
            }
        }
        after = next;
    }
}

async fn fire(sweeper: &Sweeper, job: &Job, at: DateTime<Utc>) -> Result<(), sea_orm::DbErr> {
    let now = sweeper.clock.now();
    match job {
        Job::Sweep(i) => {
            let s = &sweeper.config.schedules[*i];
            let id = format!("{}-{}", s.name, at.format("%Y%m%dT%H%M%SZ"));
            let idle_before = at - chrono::Duration::days(i64::from(s.inactivity_days));
            let new = sweep::NewSweep {
                sweep_id: id,
                platform_id: s.platform_id.clone(),
                dry_run: false,
                idle_before,
                requested_by: format!("schedule:{}", s.name),
                traceparent: None,
            };
            sweep::ensure(sweeper.store.db(), new, now).await?;
            sweeper.wake();
        }
        Job::Retention => {
            let r = &sweeper.config.retention;
            let data = RetentionPurgeV1 {
                purge_id: format!("retention-{}", at.format("%Y%m%dT%H%M%SZ")),
                history_before: at - chrono::Duration::days(i64::from(r.history_days)),
                bus_records_before: at - chrono::Duration::days(i64::from(r.bus_records_days)),
            };
            let event = CloudEvent::with_id(derived_event_id("retention.purge", &data.purge_id), SOURCE, at, data);
            let out = custodian_bus::outbox_row(subjects::RETENTION_PURGE, &event);
            outbox::enqueue(sweeper.store.db(), SERVICE, vec![out], now).await?;
            sweeper.relay.wake();
        }
    }
    Ok(())
}
