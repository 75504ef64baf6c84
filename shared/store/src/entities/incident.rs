//! Owned by the incident service: the register of incidents (GDPR Art. 33(5)).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "incidents")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub incident_id: String,
    pub kind: String,
    pub platform_id: String,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub summary: String,
    pub detected_at: DateTimeUtc,
    pub reporter: String,
    pub reported_event_id: String,
    /// `open` or `closed`.
    pub state: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub closed_at: Option<DateTimeUtc>,
    /// The W3C trace context of the report (each step's span continues it).
    pub traceparent: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
