//! The relay's index covers only the events still to publish (a partial index).
//!
//! It used to index `(publisher, published_at, created_at)` over every row, so marking an
//! event published wrote a new entry into it, and the index kept growing with rows the
//! relay never reads again. Now a mark adds no entry to it (the marked row leaves the
//! predicate), and the index holds only the backlog. Purging old published rows (a
//! retention job) scans the table instead, which it can afford.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
DROP INDEX IF EXISTS outbox_unpublished;
CREATE INDEX outbox_pending ON outbox (publisher, created_at, event_id) WHERE published_at IS NULL;
"#;

const DOWN: &str = r#"
DROP INDEX IF EXISTS outbox_pending;
CREATE INDEX outbox_unpublished ON outbox (publisher, published_at, created_at);
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(UP).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(DOWN).await?;
        Ok(())
    }
}
