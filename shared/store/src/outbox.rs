//! Events waiting to be published. A service inserts them in the transaction of the state
//! change that causes them; the bus relay publishes and marks them.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement,
};

use crate::entities::outbox;

/// One event to publish: the subject and the encoded CloudEvent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingEvent {
    pub event_id: String,
    pub subject: String,
    pub payload: String,
    pub traceparent: Option<String>,
}

/// Inserts `events` for `publisher`. An event id already present is left as it is (a
/// deterministic id produced twice is one event).
///
/// On PostgreSQL the events travel as one array per column: one statement text whatever
/// their number (planned once per connection), instead of a `VALUES` list of thousands of
/// parameters parsed and planned anew for every batch size.
pub async fn enqueue<C: ConnectionTrait>(
    conn: &C,
    publisher: &str,
    events: Vec<OutgoingEvent>,
    now: DateTime<Utc>,
) -> Result<(), sea_orm::DbErr> {
    if events.is_empty() {
        return Ok(());
    }
    if conn.get_database_backend() == DbBackend::Postgres {
        let (mut ids, mut subjects, mut payloads, mut traceparents) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for e in events {
            ids.push(e.event_id);
            subjects.push(e.subject);
            payloads.push(e.payload);
            // Arrays carry no NULLs here; a traceparent is never empty, so '' stands for none.
            traceparents.push(e.traceparent.unwrap_or_default());
        }
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO outbox (event_id, publisher, subject, payload, traceparent, created_at, published_at, attempts) \
             SELECT r.event_id, $5, r.subject, r.payload, NULLIF(r.traceparent, ''), $6, NULL, 0 \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS r(event_id, subject, payload, traceparent) \
             ON CONFLICT (event_id) DO NOTHING",
            [ids.into(), subjects.into(), payloads.into(), traceparents.into(), publisher.into(), now.into()],
        ))
        .await?;
        return Ok(());
    }
    let rows: Vec<outbox::ActiveModel> = events
        .into_iter()
        .map(|e| outbox::ActiveModel {
            event_id: Set(e.event_id),
            publisher: Set(publisher.to_owned()),
            subject: Set(e.subject),
            payload: Set(e.payload),
            traceparent: Set(e.traceparent),
            created_at: Set(now),
            published_at: Set(None),
            attempts: Set(0),
        })
        .collect();
    for chunk in rows.chunks(500) {
        outbox::Entity::insert_many(chunk.to_vec())
            .on_conflict_do_nothing_on([outbox::Column::EventId])
            .exec_without_returning(conn)
            .await?;
    }
    Ok(())
}

/// The oldest `limit` events of `publisher` not yet published.
pub async fn unpublished<C: ConnectionTrait>(
    conn: &C,
    publisher: &str,
    limit: u64,
) -> Result<Vec<outbox::Model>, sea_orm::DbErr> {
    outbox::Entity::find()
        .filter(outbox::Column::Publisher.eq(publisher))
        .filter(outbox::Column::PublishedAt.is_null())
        .order_by_asc(outbox::Column::CreatedAt)
        .order_by_asc(outbox::Column::EventId)
        .limit(limit)
        .all(conn)
        .await
}

pub async fn mark_published<C: ConnectionTrait>(
    conn: &C,
    event_ids: Vec<String>,
    now: DateTime<Utc>,
) -> Result<(), sea_orm::DbErr> {
    if conn.get_database_backend() == DbBackend::Postgres {
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE outbox SET published_at = $1 WHERE event_id = ANY($2::text[])",
            [now.into(), event_ids.into()],
        ))
        .await?;
        return Ok(());
    }
    for chunk in event_ids.chunks(1000) {
        outbox::Entity::update_many()
            .col_expr(outbox::Column::PublishedAt, Expr::value(now))
            .filter(outbox::Column::EventId.is_in(chunk.iter().cloned()))
            .exec(conn)
            .await?;
    }
    Ok(())
}

pub async fn record_failed_attempt<C: ConnectionTrait>(conn: &C, event_ids: Vec<String>) -> Result<(), sea_orm::DbErr> {
    if conn.get_database_backend() == DbBackend::Postgres {
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE outbox SET attempts = attempts + 1 WHERE event_id = ANY($1::text[])",
            [event_ids.into()],
        ))
        .await?;
        return Ok(());
    }
    for chunk in event_ids.chunks(1000) {
        outbox::Entity::update_many()
            .col_expr(outbox::Column::Attempts, Expr::col(outbox::Column::Attempts).add(1))
            .filter(outbox::Column::EventId.is_in(chunk.iter().cloned()))
            .exec(conn)
            .await?;
    }
    Ok(())
}

/// Deletes `publisher`'s published events older than `before` (they live on in the stream
/// and the audit chain).
pub async fn purge_published<C: ConnectionTrait>(
    conn: &C,
    publisher: &str,
    before: DateTime<Utc>,
) -> Result<u64, sea_orm::DbErr> {
    let res = outbox::Entity::delete_many()
        .filter(outbox::Column::Publisher.eq(publisher))
        .filter(outbox::Column::PublishedAt.lt(before))
        .exec(conn)
        .await?;
    Ok(res.rows_affected)
}

/// Per publisher, the events written and not yet published: how many, and since when.
pub async fn backlog<C: ConnectionTrait>(conn: &C) -> Result<Vec<Backlog>, sea_orm::DbErr> {
    let rows = outbox::Entity::find()
        .select_only()
        .column(outbox::Column::Publisher)
        .column_as(outbox::Column::EventId.count(), "waiting")
        .column_as(outbox::Column::CreatedAt.min(), "oldest")
        .filter(outbox::Column::PublishedAt.is_null())
        .group_by(outbox::Column::Publisher)
        .order_by_asc(outbox::Column::Publisher)
        .into_tuple::<(String, i64, DateTime<Utc>)>()
        .all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(publisher, waiting, oldest)| Backlog { publisher, waiting: u64::try_from(waiting).unwrap_or(0), oldest })
        .collect())
}

/// One publisher's unpublished events.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Backlog {
    pub publisher: String,
    pub waiting: u64,
    pub oldest: DateTime<Utc>,
}
