//! Event ids a consumer has applied. Recorded in the transaction of the effect, so a
//! redelivered event is recognised and skipped.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, TryInsertResult};

use crate::entities::inbox;

/// Records `event_ids` as applied by `consumer` and returns those that were new; the others
/// were applied before (a redelivery). One index-driven statement per chunk, whatever the
/// table's size or statistics.
pub async fn record_new<C: ConnectionTrait>(
    conn: &C,
    consumer: &str,
    event_ids: &[&str],
    now: DateTime<Utc>,
) -> Result<HashSet<String>, sea_orm::DbErr> {
    let mut unique: Vec<&str> = event_ids.to_vec();
    unique.sort_unstable();
    unique.dedup();
    let mut new = HashSet::with_capacity(unique.len());
    if conn.get_database_backend() == sea_orm::DbBackend::Postgres {
        // One array parameter instead of one per row.
        let ids: Vec<String> = unique.iter().map(|s| (*s).to_owned()).collect();
        let statement = sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "INSERT INTO inbox (consumer, event_id, processed_at) SELECT $1, id, $2 FROM unnest($3::text[]) AS id \
             ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id",
            [consumer.into(), now.into(), ids.into()],
        );
        for row in conn.query_all_raw(statement).await? {
            new.insert(row.try_get::<String>("", "event_id")?);
        }
        return Ok(new);
    }
    for chunk in unique.chunks(1000) {
        let rows = chunk.iter().map(|id| inbox::ActiveModel {
            consumer: Set(consumer.to_owned()),
            event_id: Set((*id).to_owned()),
            processed_at: Set(now),
        });
        let inserted = inbox::Entity::insert_many(rows)
            .on_conflict_do_nothing_on([inbox::Column::Consumer, inbox::Column::EventId])
            .exec_with_returning_keys(conn)
            .await?;
        if let TryInsertResult::Inserted(keys) = inserted {
            new.extend(keys.into_iter().map(|(_, event_id)| event_id));
        }
    }
    Ok(new)
}

/// Deletes inbox rows older than `before`: past the stream's retention no redelivery can come.
pub async fn purge<C: ConnectionTrait>(conn: &C, consumer: &str, before: DateTime<Utc>) -> Result<u64, sea_orm::DbErr> {
    let res = inbox::Entity::delete_many()
        .filter(inbox::Column::Consumer.eq(consumer))
        .filter(inbox::Column::ProcessedAt.lt(before))
        .exec(conn)
        .await?;
    Ok(res.rows_affected)
}
