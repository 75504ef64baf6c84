//! Owned by the vault: one ended consent being carried out (tokens and views), its receipt.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "revocations")]
pub struct Model {
    /// The event that caused the end (e.g. the `consent.revoked` the gateway published).
    #[sea_orm(primary_key, auto_increment = false)]
    pub revocation_id: String,
    pub ended_event_id: String,
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
    pub reason: String,
    /// `pending` or `done`.
    pub state: String,
    pub started_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
    pub updated_at: DateTimeUtc,
    /// The W3C trace context of the work that started it (the driver's spans continue it).
    #[serde(skip)]
    pub traceparent: Option<String>,
    /// Started from a nudge, and its event not yet delivered by the stream: not done before
    /// then, since sessions opened before it may still be on their way through the stream.
    pub awaits_stream: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
