//! Event ids a consumer has applied. Recorded in the transaction of the effect, so a
//! redelivered event is recognised and skipped.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};

use crate::entities::inbox;

/// Which of `event_ids` has `consumer` already applied?
pub async fn already_applied<C: ConnectionTrait>(
    conn: &C,
    consumer: &str,
    event_ids: &[&str],
) -> Result<HashSet<String>, sea_orm::DbErr> {
    if event_ids.is_empty() {
        return Ok(HashSet::new());
    }
    let rows: Vec<String> = inbox::Entity::find()
        .select_only()
        .column(inbox::Column::EventId)
        .filter(inbox::Column::Consumer.eq(consumer))
        .filter(inbox::Column::EventId.is_in(event_ids.iter().copied()))
        .into_tuple()
        .all(conn)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Records `event_ids` as applied by `consumer` (ids must be new: check first).
pub async fn record<C: ConnectionTrait>(
    conn: &C,
    consumer: &str,
    event_ids: impl IntoIterator<Item = &str>,
    now: DateTime<Utc>,
) -> Result<(), sea_orm::DbErr> {
    let rows: Vec<inbox::ActiveModel> = event_ids
        .into_iter()
        .map(|id| inbox::ActiveModel {
            consumer: Set(consumer.to_owned()),
            event_id: Set(id.to_owned()),
            processed_at: Set(now),
        })
        .collect();
    for chunk in rows.chunks(1000) {
        inbox::Entity::insert_many(chunk.to_vec()).exec_without_returning(conn).await?;
    }
    Ok(())
}
