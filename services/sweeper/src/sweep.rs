//! Running one sweep: keyset pages of idle consents (asked of the consent service), one
//! transaction per page that writes the `consent.expire` commands to the outbox and moves
//! the checkpoint. Fenced by the `holder` column: a replica that lost its lease cannot
//! write another page.

use std::time::Duration;

use chrono::{DateTime, Utc};
use custodian_events::queries::{self, IdleCursor, IdleQuery, IdleReply};
use custodian_events::{CloudEvent, ConsentExpireV1, SweepFinishedV1, derived_event_id, subjects};
use custodian_store::entities::sweep;
use custodian_store::outbox;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};
use tracing::Instrument;

use crate::{SERVICE, SOURCE, Sweeper};

const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("the consent service did not answer: {0}")]
    Ledger(String),
    #[error("sweep {0} is held by another replica now")]
    Fenced(String),
    #[error("no sweep {0}")]
    Missing(String),
}

/// A sweep to run, as requested or scheduled.
#[derive(Debug, Clone)]
pub struct NewSweep {
    pub sweep_id: String,
    pub platform_id: Option<String>,
    pub dry_run: bool,
    pub idle_before: DateTime<Utc>,
    pub requested_by: String,
    /// The trace context of its request: the run, on whichever replica, continues it.
    pub traceparent: Option<String>,
}

/// Creates the sweep row unless it exists (every replica may call this for the same id).
pub async fn ensure<C: ConnectionTrait>(conn: &C, new: NewSweep, now: DateTime<Utc>) -> Result<(), DbErr> {
    let row = sweep::ActiveModel {
        sweep_id: Set(new.sweep_id),
        platform_id: Set(new.platform_id),
        dry_run: Set(new.dry_run),
        state: Set("pending".into()),
        idle_before: Set(new.idle_before),
        requested_by: Set(new.requested_by),
        holder: Set(None),
        scanned: Set(0),
        expired: Set(0),
        total: Set(None),
        cursor_platform: Set(None),
        cursor_last_seen: Set(None),
        cursor_key: Set(None),
        created_at: Set(now),
        started_at: Set(None),
        finished_at: Set(None),
        updated_at: Set(now),
        traceparent: Set(new.traceparent),
    };
    sweep::Entity::insert(row).on_conflict_do_nothing_on([sweep::Column::SweepId]).exec_without_returning(conn).await?;
    Ok(())
}

async fn ask(sweeper: &Sweeper, subject: &str, query: &IdleQuery) -> Result<IdleReply, SweepError> {
    custodian_bus::query(sweeper.bus.client(), subject, query, QUERY_TIMEOUT)
        .await
        .map_err(|e| SweepError::Ledger(e.to_string()))
}

async fn platforms(sweeper: &Sweeper, row: &sweep::Model) -> Result<Vec<String>, SweepError> {
    if let Some(p) = &row.platform_id {
        return Ok(vec![p.clone()]);
    }
    let any = IdleQuery {
        platform_id: String::new(),
        idle_before: row.idle_before,
        after: None,
        limit: 1,
        with_total: false,
    };
    match ask(sweeper, queries::PLATFORMS, &any).await? {
        IdleReply::Platforms(list) => Ok(list),
        IdleReply::Error(e) => Err(SweepError::Ledger(e)),
        IdleReply::Page { .. } => Err(SweepError::Ledger("unexpected answer".into())),
    }
}

async fn page(sweeper: &Sweeper, query: &IdleQuery) -> Result<(Vec<queries::IdleConsent>, Option<u64>), SweepError> {
    match ask(sweeper, queries::IDLE_CONSENTS, query).await? {
        IdleReply::Page { consents, total } => Ok((consents, total)),
        IdleReply::Error(e) => Err(SweepError::Ledger(e)),
        IdleReply::Platforms(_) => Err(SweepError::Ledger("unexpected answer".into())),
    }
}

/// Claims the row for this replica (takes over from a dead holder).
async fn claim(sweeper: &Sweeper, sweep_id: &str) -> Result<sweep::Model, SweepError> {
    let now = sweeper.clock.now();
    let row = sweep::Entity::find_by_id(sweep_id.to_owned())
        .one(sweeper.store.db())
        .await?
        .ok_or_else(|| SweepError::Missing(sweep_id.to_owned()))?;
    sweep::Entity::update_many()
        .col_expr(sweep::Column::Holder, Expr::value(sweeper.replica.clone()))
        .col_expr(sweep::Column::State, Expr::value(if row.state == "finished" { "finished" } else { "running" }))
        .col_expr(sweep::Column::StartedAt, Expr::value(row.started_at.unwrap_or(now)))
        .col_expr(sweep::Column::UpdatedAt, Expr::value(now))
        .filter(sweep::Column::SweepId.eq(sweep_id))
        .exec(sweeper.store.db())
        .await?;
    if row.holder.as_deref().is_some_and(|h| h != sweeper.replica) && row.state != "finished" {
        tracing::info!(sweep_id, previous = ?row.holder, "resuming a sweep from its checkpoint");
    }
    sweep::Entity::find_by_id(sweep_id.to_owned())
        .one(sweeper.store.db())
        .await?
        .ok_or_else(|| SweepError::Missing(sweep_id.to_owned()))
}

/// Runs (or resumes) the sweep until done, or until `stop` (shutdown, lost lease).
pub async fn run(
    sweeper: &Sweeper,
    sweep_id: &str,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<(), SweepError> {
    let row = claim(sweeper, sweep_id).await?;
    if row.state == "finished" {
        return Ok(());
    }
    // One span per run (a resumed sweep has one per replica that ran it), in its request's
    // trace; each page's commands continue it.
    let span = tracing::info_span!(
        "sweep",
        sweep_id,
        platform_id = row.platform_id.as_deref().unwrap_or("*"),
        dry_run = row.dry_run
    );
    custodian_telemetry::adopt_remote_parent(&span, row.traceparent.as_deref());
    run_claimed(sweeper, row, stop).instrument(span).await
}

async fn run_claimed(
    sweeper: &Sweeper,
    mut row: sweep::Model,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<(), SweepError> {
    let sweep_id = row.sweep_id.clone();
    let sweep_id = sweep_id.as_str();
    let platforms = platforms(sweeper, &row).await?;
    if row.total.is_none() {
        let mut total = 0;
        for p in &platforms {
            let q = IdleQuery {
                platform_id: p.clone(),
                idle_before: row.idle_before,
                after: None,
                limit: 1,
                with_total: true,
            };
            total += page(sweeper, &q).await?.1.unwrap_or(0);
        }
        sweep::Entity::update_many()
            .col_expr(sweep::Column::Total, Expr::value(total as i64))
            .filter(sweep::Column::SweepId.eq(sweep_id))
            .exec(sweeper.store.db())
            .await?;
        row.total = Some(total as i64);
    }
    tracing::info!(sweep_id, platforms = platforms.len(), total = ?row.total, dry_run = row.dry_run, "sweep running");
    for platform in platforms.iter().filter(|p| row.cursor_platform.as_ref().is_none_or(|c| *p >= c)) {
        let mut after = match (&row.cursor_platform, row.cursor_last_seen, &row.cursor_key) {
            (Some(cp), Some(last_seen_at), Some(key)) if cp == platform => {
                Some(IdleCursor { last_seen_at, consent_key: key.clone() })
            }
            _ => None,
        };
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let query = IdleQuery {
                platform_id: platform.clone(),
                idle_before: row.idle_before,
                after: after.clone(),
                limit: sweeper.config.batch,
                with_total: false,
            };
            let (consents, _) = page(sweeper, &query).await?;
            let Some(last) = consents.last() else { break };
            let cursor = IdleCursor { last_seen_at: last.last_seen_at, consent_key: last.consent_key.clone() };
            let span = tracing::info_span!("sweep_page", sweep_id, platform_id = %platform, size = consents.len());
            write_page(sweeper, &row, platform, &consents, &cursor).instrument(span).await?;
            sweeper.metrics.scanned.inc_by(consents.len() as u64);
            if !row.dry_run {
                sweeper.metrics.expired.inc_by(consents.len() as u64);
            }
            let full = consents.len() as u64 >= sweeper.config.batch;
            after = Some(cursor);
            if !full {
                break;
            }
        }
    }
    finish(sweeper, sweep_id).await
}

async fn write_page(
    sweeper: &Sweeper,
    row: &sweep::Model,
    platform: &str,
    consents: &[queries::IdleConsent],
    cursor: &IdleCursor,
) -> Result<(), SweepError> {
    let now = sweeper.clock.now();
    let n = consents.len() as i64;
    let txn = sweeper.store.begin().await?;
    // Fence first (a write, so SQLite takes its lock at once): only the holder moves on.
    let moved = sweep::Entity::update_many()
        .col_expr(sweep::Column::Scanned, Expr::col(sweep::Column::Scanned).add(n))
        .col_expr(sweep::Column::Expired, Expr::col(sweep::Column::Expired).add(if row.dry_run { 0 } else { n }))
        .col_expr(sweep::Column::CursorPlatform, Expr::value(platform.to_owned()))
        .col_expr(sweep::Column::CursorLastSeen, Expr::value(cursor.last_seen_at))
        .col_expr(sweep::Column::CursorKey, Expr::value(cursor.consent_key.clone()))
        .col_expr(sweep::Column::UpdatedAt, Expr::value(now))
        .filter(sweep::Column::SweepId.eq(row.sweep_id.as_str()))
        .filter(sweep::Column::Holder.eq(sweeper.replica.as_str()))
        .exec(&txn)
        .await?;
    if moved.rows_affected != 1 {
        return Err(SweepError::Fenced(row.sweep_id.clone()));
    }
    if !row.dry_run {
        let events = consents
            .iter()
            .map(|c| {
                let data = ConsentExpireV1 {
                    issuer: c.issuer.clone(),
                    subject: c.subject.clone(),
                    platform_id: c.platform_id.clone(),
                    sweep_id: row.sweep_id.clone(),
                    idle_since: c.last_seen_at,
                };
                // Derived from (sweep, consent): a resumed or repeated page publishes nothing new.
                let id = derived_event_id("consent.expire", &format!("{}:{}", row.sweep_id, c.consent_key));
                let event = CloudEvent::with_id(id, SOURCE, now, data);
                custodian_bus::outbox_row(subjects::CONSENT_EXPIRE, &event)
            })
            .collect();
        outbox::enqueue(&txn, SERVICE, events, now).await?;
    }
    txn.commit().await?;
    sweeper.relay.wake();
    Ok(())
}

async fn finish(sweeper: &Sweeper, sweep_id: &str) -> Result<(), SweepError> {
    let now = sweeper.clock.now();
    let txn = sweeper.store.begin().await?;
    let moved = sweep::Entity::update_many()
        .col_expr(sweep::Column::State, Expr::value("finished"))
        .col_expr(sweep::Column::FinishedAt, Expr::value(now))
        .col_expr(sweep::Column::UpdatedAt, Expr::value(now))
        .filter(sweep::Column::SweepId.eq(sweep_id))
        .filter(sweep::Column::Holder.eq(sweeper.replica.as_str()))
        .exec(&txn)
        .await?;
    if moved.rows_affected != 1 {
        return Err(SweepError::Fenced(sweep_id.to_owned()));
    }
    let row = sweep::Entity::find_by_id(sweep_id.to_owned())
        .one(&txn)
        .await?
        .ok_or_else(|| SweepError::Missing(sweep_id.to_owned()))?;
    let data = SweepFinishedV1 {
        sweep_id: sweep_id.to_owned(),
        platform_id: row.platform_id.clone(),
        dry_run: row.dry_run,
        scanned: u64::try_from(row.scanned).unwrap_or(0),
        expired: u64::try_from(row.expired).unwrap_or(0),
    };
    let event = CloudEvent::with_id(derived_event_id("sweep.finished", sweep_id), SOURCE, now, data);
    let out = custodian_bus::outbox_row(subjects::SWEEP_FINISHED, &event);
    outbox::enqueue(&txn, SERVICE, vec![out], now).await?;
    txn.commit().await?;
    sweeper.relay.wake();
    sweeper.metrics.finished.inc();
    tracing::info!(sweep_id, scanned = row.scanned, expired = row.expired, dry_run = row.dry_run, "sweep finished");
    Ok(())
}
