//! `revocations.traceparent` and `incidents.traceparent`: the W3C trace context of the work
//! that started a revocation or registered an incident, so that what follows later on
//! whichever replica (OP calls, wipe commands, the incident's steps and DPO e-mails)
//! continues that trace.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The same statements on both backends: nullable text columns.
        let db = manager.get_connection();
        db.execute_unprepared("ALTER TABLE revocations ADD COLUMN traceparent TEXT").await?;
        db.execute_unprepared("ALTER TABLE incidents ADD COLUMN traceparent TEXT").await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("ALTER TABLE incidents DROP COLUMN traceparent").await?;
        db.execute_unprepared("ALTER TABLE revocations DROP COLUMN traceparent").await?;
        Ok(())
    }
}
