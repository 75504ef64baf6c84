//! `privacy_log_reads`: every read of the privacy log, with who read it (the operator's or
//! the CLI user's name), through which service, with which filter and how many entries it
//! showed. Written by the audit service before it answers; triggers refuse UPDATE and DELETE
//! (and TRUNCATE on PostgreSQL), as on the audit chain.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PrivacyLogReads {
    Table,
    Id,
    ReadAt,
    Reader,
    Via,
    PlatformFilter,
    FromFilter,
    ToFilter,
    RowLimit,
    Entries,
}

const PG_TRIGGERS: &str = r#"
CREATE OR REPLACE FUNCTION privacy_log_reads_append_only() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION 'privacy_log_reads is append-only (% refused)', TG_OP;
END
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS privacy_log_reads_no_change ON privacy_log_reads;
CREATE TRIGGER privacy_log_reads_no_change BEFORE UPDATE OR DELETE ON privacy_log_reads
  FOR EACH ROW EXECUTE FUNCTION privacy_log_reads_append_only();
DROP TRIGGER IF EXISTS privacy_log_reads_no_truncate ON privacy_log_reads;
CREATE TRIGGER privacy_log_reads_no_truncate BEFORE TRUNCATE ON privacy_log_reads
  FOR EACH STATEMENT EXECUTE FUNCTION privacy_log_reads_append_only();
"#;

const SQLITE_TRIGGERS: [&str; 2] = [
    "CREATE TRIGGER IF NOT EXISTS privacy_log_reads_no_update BEFORE UPDATE ON privacy_log_reads \
     BEGIN SELECT RAISE(ABORT, 'privacy_log_reads is append-only (UPDATE refused)'); END",
    "CREATE TRIGGER IF NOT EXISTS privacy_log_reads_no_delete BEFORE DELETE ON privacy_log_reads \
     BEGIN SELECT RAISE(ABORT, 'privacy_log_reads is append-only (DELETE refused)'); END",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PrivacyLogReads::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(PrivacyLogReads::Id).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(PrivacyLogReads::ReadAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(PrivacyLogReads::Reader).string_len(512).not_null())
                    .col(ColumnDef::new(PrivacyLogReads::Via).string_len(128).not_null())
                    .col(ColumnDef::new(PrivacyLogReads::PlatformFilter).string_len(512).null())
                    .col(ColumnDef::new(PrivacyLogReads::FromFilter).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(PrivacyLogReads::ToFilter).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(PrivacyLogReads::RowLimit).big_integer().not_null())
                    .col(ColumnDef::new(PrivacyLogReads::Entries).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("privacy_log_reads_by_time")
                    .table(PrivacyLogReads::Table)
                    .col(PrivacyLogReads::ReadAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        match db.get_database_backend() {
            DbBackend::Postgres => {
                db.execute_unprepared(PG_TRIGGERS).await?;
            }
            _ => {
                for statement in SQLITE_TRIGGERS {
                    db.execute_unprepared(statement).await?;
                }
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(PrivacyLogReads::Table).if_exists().to_owned()).await?;
        Ok(())
    }
}
