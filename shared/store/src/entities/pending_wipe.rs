//! Owned by the vault: a wipe command to one view, kept until the view acks it.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "pending_wipes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub wipe_id: String,
    pub revocation_id: Option<String>,
    pub view_id: String,
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
    pub reason: String,
    /// JSON array of session ids.
    pub session_ids: String,
    /// The latest expiry of those sessions: past it, the view's SDK has evicted the data.
    pub expires_at: DateTimeUtc,
    /// `pending`, `acked` or `expired_by_ttl`.
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: DateTimeUtc,
    pub sent_at: Option<DateTimeUtc>,
    pub acked_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
