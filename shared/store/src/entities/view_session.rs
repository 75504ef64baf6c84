//! Owned by the vault: a session a view opened for a person (`session.opened`, or recorded
//! when the vault handed a token out for it).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "view_sessions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub session_id: String,
    pub view_id: String,
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
    pub expires_at: DateTimeUtc,
    pub opened_at: DateTimeUtc,
    pub closed_at: Option<DateTimeUtc>,
    pub wipe_id: Option<String>,
    pub wiped_at: Option<DateTimeUtc>,
    /// The assertion whose token the vault handed out for it; none for a session only announced.
    pub assertion_id: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
