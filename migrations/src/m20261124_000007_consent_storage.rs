//! Storage tuning of the consent ledger on PostgreSQL (SQLite already compares bytes and
//! has no fill factor):
//! - keys are digests and identifiers, not words: `COLLATE "C"` makes every index
//!   comparison a `memcmp` instead of a locale-aware `strcoll`;
//! - `fillfactor = 80` leaves room on each page so that an update touching no indexed
//!   column (a revocation, an expiry) is a HOT update: no new index entries.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
ALTER TABLE consents
  ALTER COLUMN consent_key TYPE varchar(64) COLLATE "C",
  ALTER COLUMN issuer TYPE varchar(512) COLLATE "C",
  ALTER COLUMN subject TYPE varchar(512) COLLATE "C",
  ALTER COLUMN platform_id TYPE varchar(512) COLLATE "C";
ALTER TABLE consents SET (fillfactor = 80);
ALTER TABLE consent_history ALTER COLUMN consent_key TYPE varchar(64) COLLATE "C";
"#;

const DOWN: &str = r#"
ALTER TABLE consents RESET (fillfactor);
ALTER TABLE consents
  ALTER COLUMN consent_key TYPE varchar(64) COLLATE "default",
  ALTER COLUMN issuer TYPE varchar(512) COLLATE "default",
  ALTER COLUMN subject TYPE varchar(512) COLLATE "default",
  ALTER COLUMN platform_id TYPE varchar(512) COLLATE "default";
ALTER TABLE consent_history ALTER COLUMN consent_key TYPE varchar(64) COLLATE "default";
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::on_postgres(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::on_postgres(manager, DOWN).await
    }
}
