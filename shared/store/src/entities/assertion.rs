//! Owned by the vault: one person's tokens at one platform, sealed (see custodian-crypto).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "assertions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub assertion_id: String,
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
    pub acr: Option<String>,
    /// JSON array of the granted scopes.
    pub scopes: String,
    pub key_id: String,
    pub wrapped_key: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub access_expires_at: DateTimeUtc,
    /// When the longest-lived token expires: the row is deleted then.
    pub expires_at: DateTimeUtc,
    /// Set once a revocation took the tokens over: never handed out again.
    pub revocation_id: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
