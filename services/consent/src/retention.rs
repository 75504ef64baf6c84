//! Retention: on `lifecycle.retention.purge` the consent service deletes its own old
//! records — consent history past the retention and published outbox rows past the
//! stream's reach. The sweeper schedules; each owner purges its own tables.

use custodian_bus::{BatchHandler, Delivery, HandlerError};
use custodian_events::LifecycleEvent;
use custodian_store::{Store, outbox};

use crate::{SERVICE, persistence};

#[derive(Debug, Clone)]
pub struct RetentionHandler {
    pub store: Store,
}

impl BatchHandler for RetentionHandler {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Result<(), HandlerError>> {
        let mut results = Vec::with_capacity(batch.len());
        for delivery in batch {
            let LifecycleEvent::RetentionPurge(event) = &delivery.event else {
                results.push(Err(HandlerError::Permanent(format!("{} is not a purge", delivery.event.event_type()))));
                continue;
            };
            let db = self.store.db();
            let purged = async {
                let history = persistence::purge_history(db, event.data.history_before).await?;
                let outbox = outbox::purge_published(db, SERVICE, event.data.bus_records_before).await?;
                Ok::<_, custodian_store::sea_orm::DbErr>((history, outbox))
            }
            .await;
            results.push(match purged {
                Ok((history, outbox)) => {
                    tracing::info!(purge_id = %event.data.purge_id, history, outbox, "retention purge done");
                    Ok(())
                }
                Err(e) => Err(HandlerError::Transient(e.to_string())),
            });
        }
        results
    }
}
