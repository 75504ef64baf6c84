//! Owned by the sweeper.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sweeps")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub sweep_id: String,
    pub platform_id: Option<String>,
    pub dry_run: bool,
    /// `pending`, `running`, `finished`.
    pub state: String,
    pub idle_before: DateTimeUtc,
    pub requested_by: String,
    pub holder: Option<String>,
    pub scanned: i64,
    pub expired: i64,
    pub total: Option<i64>,
    pub cursor_platform: Option<String>,
    pub cursor_last_seen: Option<DateTimeUtc>,
    pub cursor_key: Option<String>,
    pub created_at: DateTimeUtc,
    pub started_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
    pub updated_at: DateTimeUtc,
    /// The W3C trace context of the request that asked for it, if any.
    pub traceparent: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
