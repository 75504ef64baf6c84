//! `status_marks`: how far an operator's check has looked (`custodian status --check` reports
//! dead letters that arrived after `dead-letters`' sequence, then moves it).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const SQLITE: &str = "CREATE TABLE status_marks (name TEXT PRIMARY KEY NOT NULL, through_sequence BIGINT NOT NULL, updated_at TEXT NOT NULL)";
const POSTGRES: &str = "CREATE TABLE status_marks (name text PRIMARY KEY, through_sequence bigint NOT NULL, updated_at timestamptz NOT NULL)";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let sql = match manager.get_database_backend() {
            DbBackend::Postgres => POSTGRES,
            _ => SQLITE,
        };
        manager.get_connection().execute_unprepared(sql).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared("DROP TABLE status_marks").await?;
        Ok(())
    }
}
