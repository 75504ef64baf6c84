//! Owned by the audit service: one read of the privacy log, with its reader (append-only).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "privacy_log_reads")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub read_at: DateTimeUtc,
    /// Who read: the operator's token name, or `cli:<user>`.
    pub reader: String,
    /// The service that asked for the reader (its NATS identity).
    pub via: String,
    pub platform_filter: Option<String>,
    pub from_filter: Option<DateTimeUtc>,
    pub to_filter: Option<DateTimeUtc>,
    pub row_limit: i64,
    /// How many entries the read showed.
    pub entries: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
