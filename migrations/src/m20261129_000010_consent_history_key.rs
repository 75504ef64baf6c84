//! PostgreSQL: `consent_history`'s primary key becomes `(consent_key, id)`, replacing both the
//! key on `id` alone and the `consent_history_by_key` index.
//!
//! History is read per consent, in order (`consent_key`, then `id`), and never by `id` alone;
//! each row cost two index entries for one access path. `id` still comes from its sequence
//! (unique, increasing), so the pair is unique. SQLite keeps `id` as its rowid (a table
//! rebuild would buy nothing there: the rowid is the table itself).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
ALTER TABLE consent_history DROP CONSTRAINT consent_history_pkey;
ALTER TABLE consent_history ADD PRIMARY KEY (consent_key, id);
DROP INDEX IF EXISTS consent_history_by_key;
"#;

const DOWN: &str = r#"
CREATE INDEX IF NOT EXISTS consent_history_by_key ON consent_history (consent_key, id);
ALTER TABLE consent_history DROP CONSTRAINT consent_history_pkey;
ALTER TABLE consent_history ADD PRIMARY KEY (id);
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
