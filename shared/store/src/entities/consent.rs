//! Owned by the consent service.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "consents")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub consent_key: String,
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
    pub state: String,
    /// JSON array of scope strings.
    #[sea_orm(column_type = "Text")]
    pub scopes: String,
    pub acr: Option<String>,
    pub granted_at: Option<DateTimeUtc>,
    pub grant_event_id: Option<String>,
    pub revoked_at: Option<DateTimeUtc>,
    pub revoke_reason: Option<String>,
    pub revoke_event_id: Option<String>,
    pub expired_at: Option<DateTimeUtc>,
    pub expire_idle_since: Option<DateTimeUtc>,
    pub expire_event_id: Option<String>,
    pub expire_sweep_id: Option<String>,
    pub last_seen_at: Option<DateTimeUtc>,
    pub ended_at: Option<DateTimeUtc>,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
