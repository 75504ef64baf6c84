//! Owned by the vault: one token of a revocation and what the OP answered.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "revocation_tokens")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub revocation_id: String,
    pub assertion_id: String,
    /// `refresh` or `access`.
    pub token_kind: String,
    /// `pending`, `revoked` (the OP accepted RFC 7009) or `already_invalid` (expired before).
    pub outcome: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTimeUtc,
    pub done_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
