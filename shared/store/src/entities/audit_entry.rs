//! Owned by the audit service: one link of the hash chain (append-only; triggers refuse changes).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "audit_log")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub seq: i64,
    pub recorded_at: DateTimeUtc,
    pub subject: String,
    pub event_id: String,
    pub event_type: String,
    pub event_time: DateTimeUtc,
    /// The event as recorded (a caller identity replaced by a reference to the privacy log).
    pub payload: String,
    /// SHA-256 (hex) of `payload`.
    pub digest: String,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
