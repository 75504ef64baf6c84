//! Owned by the audit service: one use of a holder-of-key token (seed §1.5); the caller's
//! identity is sealed under the audit key ring.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "privacy_log")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub audit_seq: i64,
    pub event_id: String,
    pub used_at: DateTimeUtc,
    pub platform_id: String,
    pub caller_key_id: String,
    pub caller_wrapped_key: Vec<u8>,
    pub caller_ciphertext: Vec<u8>,
    pub caller_organisation: Option<String>,
    pub subject: Option<String>,
    pub service: String,
    pub assertion_id: String,
    pub token_type: String,
    pub valid_until: DateTimeUtc,
    pub purpose: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
