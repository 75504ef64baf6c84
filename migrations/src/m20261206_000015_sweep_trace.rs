//! `sweeps.traceparent`: the W3C trace context of the request that asked for a sweep, so that
//! its run on whichever replica, and the `consent.expire` commands it writes, continue that
//! trace.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The same statement on both backends: a nullable text column.
        manager.get_connection().execute_unprepared("ALTER TABLE sweeps ADD COLUMN traceparent TEXT").await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared("ALTER TABLE sweeps DROP COLUMN traceparent").await?;
        Ok(())
    }
}
