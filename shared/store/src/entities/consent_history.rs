//! Owned by the consent service: one row per event applied to a consent.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "consent_history")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub consent_key: String,
    pub event_id: String,
    pub event_type: String,
    pub event_time: DateTimeUtc,
    pub state_after: String,
    pub recorded_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
