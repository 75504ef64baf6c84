//! The audit service's tables: an append-only hash chain of every lifecycle event, signed
//! checkpoints over it, and the privacy log of holder-of-key token uses (caller identity
//! sealed). Triggers refuse UPDATE and DELETE on the chain (and TRUNCATE on PostgreSQL).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AuditLog {
    Table,
    Seq,
    RecordedAt,
    Subject,
    EventId,
    EventType,
    EventTime,
    Payload,
    Digest,
    PrevHash,
    Hash,
}

#[derive(DeriveIden)]
enum AuditCheckpoints {
    Table,
    Seq,
    Hash,
    KeyId,
    Signature,
    CreatedAt,
}

#[derive(DeriveIden)]
enum PrivacyLog {
    Table,
    Id,
    AuditSeq,
    EventId,
    UsedAt,
    PlatformId,
    CallerKeyId,
    CallerWrappedKey,
    CallerCiphertext,
    CallerOrganisation,
    Subject,
    Service,
    AssertionId,
    TokenType,
    ValidUntil,
    Purpose,
}

const PG_TRIGGERS: &str = r#"
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP;
END
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS audit_log_no_change ON audit_log;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
"#;

const SQLITE_TRIGGERS: [&str; 2] = [
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log \
     BEGIN SELECT RAISE(ABORT, 'audit_log is append-only (UPDATE refused)'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log \
     BEGIN SELECT RAISE(ABORT, 'audit_log is append-only (DELETE refused)'); END",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AuditLog::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(AuditLog::Seq).big_integer().not_null().primary_key())
                    .col(ColumnDef::new(AuditLog::RecordedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(AuditLog::Subject).string_len(256).not_null())
                    .col(ColumnDef::new(AuditLog::EventId).string_len(512).not_null().unique_key())
                    .col(ColumnDef::new(AuditLog::EventType).string_len(128).not_null())
                    .col(ColumnDef::new(AuditLog::EventTime).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(AuditLog::Payload).text().not_null())
                    .col(ColumnDef::new(AuditLog::Digest).string_len(64).not_null())
                    .col(ColumnDef::new(AuditLog::PrevHash).string_len(64).not_null())
                    .col(ColumnDef::new(AuditLog::Hash).string_len(64).not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AuditCheckpoints::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(AuditCheckpoints::Seq).big_integer().not_null().primary_key())
                    .col(ColumnDef::new(AuditCheckpoints::Hash).string_len(64).not_null())
                    .col(ColumnDef::new(AuditCheckpoints::KeyId).string_len(64).not_null())
                    .col(ColumnDef::new(AuditCheckpoints::Signature).string_len(128).not_null())
                    .col(ColumnDef::new(AuditCheckpoints::CreatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PrivacyLog::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(PrivacyLog::Id).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(PrivacyLog::AuditSeq).big_integer().not_null())
                    .col(ColumnDef::new(PrivacyLog::EventId).string_len(512).not_null().unique_key())
                    .col(ColumnDef::new(PrivacyLog::UsedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(PrivacyLog::PlatformId).string_len(512).not_null())
                    .col(ColumnDef::new(PrivacyLog::CallerKeyId).string_len(64).not_null())
                    .col(ColumnDef::new(PrivacyLog::CallerWrappedKey).binary().not_null())
                    .col(ColumnDef::new(PrivacyLog::CallerCiphertext).binary().not_null())
                    .col(ColumnDef::new(PrivacyLog::CallerOrganisation).string_len(512).null())
                    .col(ColumnDef::new(PrivacyLog::Subject).string_len(512).null())
                    .col(ColumnDef::new(PrivacyLog::Service).string_len(1024).not_null())
                    .col(ColumnDef::new(PrivacyLog::AssertionId).string_len(512).not_null())
                    .col(ColumnDef::new(PrivacyLog::TokenType).string_len(16).not_null())
                    .col(ColumnDef::new(PrivacyLog::ValidUntil).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(PrivacyLog::Purpose).string_len(512).null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("privacy_log_by_platform_time")
                    .table(PrivacyLog::Table)
                    .col(PrivacyLog::PlatformId)
                    .col(PrivacyLog::UsedAt)
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
        for table in [PrivacyLog::Table.into_iden(), AuditCheckpoints::Table.into_iden(), AuditLog::Table.into_iden()] {
            manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
