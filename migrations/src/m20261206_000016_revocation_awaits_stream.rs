//! `revocations.awaits_stream`: a revocation started from a nudge (a core-NATS copy of its
//! event) is not done until the stream has delivered its event too, and with it every session
//! opened before it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The same statement on both backends; the rows already there came from the stream.
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE revocations ADD COLUMN awaits_stream BOOLEAN NOT NULL DEFAULT FALSE")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared("ALTER TABLE revocations DROP COLUMN awaits_stream").await?;
        Ok(())
    }
}
