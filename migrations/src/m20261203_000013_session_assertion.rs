//! `view_sessions.assertion_id`: the assertion whose token the vault handed out for the
//! session. A revocation wipes the sessions of the assertions it revokes, whenever they were
//! opened, instead of guessing from timestamps.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        // The same statements on both backends: a nullable text column and its index.
        db.execute_unprepared("ALTER TABLE view_sessions ADD COLUMN assertion_id TEXT").await?;
        db.execute_unprepared("CREATE INDEX view_sessions_by_assertion ON view_sessions (assertion_id)").await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP INDEX view_sessions_by_assertion").await?;
        db.execute_unprepared("ALTER TABLE view_sessions DROP COLUMN assertion_id").await?;
        Ok(())
    }
}
