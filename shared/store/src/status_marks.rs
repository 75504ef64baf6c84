//! Named marks of how far an operator's check has looked (see `status_marks`).

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ConnectionTrait, DbErr, EntityTrait, Set};

use crate::entities::status_mark;

pub async fn get(db: &impl ConnectionTrait, name: &str) -> Result<Option<u64>, DbErr> {
    let row = status_mark::Entity::find_by_id(name.to_owned()).one(db).await?;
    Ok(row.map(|r| u64::try_from(r.through_sequence).unwrap_or(0)))
}

pub async fn set(db: &impl ConnectionTrait, name: &str, through: u64, now: DateTime<Utc>) -> Result<(), DbErr> {
    let row = status_mark::ActiveModel {
        name: Set(name.to_owned()),
        through_sequence: Set(i64::try_from(through).unwrap_or(i64::MAX)),
        updated_at: Set(now),
    };
    status_mark::Entity::insert(row)
        .on_conflict(
            OnConflict::column(status_mark::Column::Name)
                .update_columns([status_mark::Column::ThroughSequence, status_mark::Column::UpdatedAt])
                .to_owned(),
        )
        .exec(db)
        .await?;
    Ok(())
}
