//! Answers `custodian.query.sweeps` (progress of one sweep, or the latest ones) for the gateway and
//! the CLI.

use custodian_events::queries::{self, SweepQuery, SweepReply, SweepView};
use custodian_store::Store;
use custodian_store::entities::sweep;
use futures::StreamExt;
use sea_orm::{EntityTrait, QueryOrder, QuerySelect};
use tokio_util::sync::CancellationToken;

pub async fn serve(
    client: async_nats::Client,
    store: Store,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut requests = client.queue_subscribe(queries::SWEEPS, "sweeper".to_owned()).await?;
    loop {
        let request = tokio::select! {
            () = shutdown.cancelled() => break,
            next = requests.next() => match next { Some(r) => r, None => break },
        };
        let Some(reply_to) = request.reply.clone() else { continue };
        let reply = match serde_json::from_slice::<SweepQuery>(&request.payload) {
            Err(e) => SweepReply::Error(format!("invalid query: {e}")),
            Ok(q) if q.sweep_id.is_empty() && q.recent.is_some() => {
                let newest = sweep::Entity::find()
                    .order_by_desc(sweep::Column::CreatedAt)
                    .limit(q.recent.unwrap_or(20).min(100))
                    .all(store.db())
                    .await;
                match newest {
                    Ok(rows) => SweepReply::Sweeps(rows.into_iter().map(view).collect()),
                    Err(e) => {
                        tracing::warn!(error = %e, "sweep query failed");
                        SweepReply::Error("the sweeper's database is unavailable".into())
                    }
                }
            }
            Ok(q) => match sweep::Entity::find_by_id(q.sweep_id).one(store.db()).await {
                Ok(Some(row)) => SweepReply::Sweep(view(row)),
                Ok(None) => SweepReply::NotFound,
                Err(e) => {
                    tracing::warn!(error = %e, "sweep query failed");
                    SweepReply::Error("the sweeper's database is unavailable".into())
                }
            },
        };
        if let Err(e) = client.publish(reply_to, serde_json::to_vec(&reply).unwrap_or_default().into()).await {
            tracing::warn!(error = %e, "sweep query reply not sent");
        }
    }
    Ok(())
}

fn view(row: sweep::Model) -> SweepView {
    SweepView {
        sweep_id: row.sweep_id,
        platform_id: row.platform_id,
        dry_run: row.dry_run,
        state: row.state,
        idle_before: row.idle_before,
        scanned: row.scanned.max(0) as u64,
        expired: row.expired.max(0) as u64,
        total: row.total.map(|t| t.max(0) as u64),
        requested_by: row.requested_by,
        holder: row.holder,
        created_at: row.created_at,
        started_at: row.started_at,
        finished_at: row.finished_at,
    }
}
