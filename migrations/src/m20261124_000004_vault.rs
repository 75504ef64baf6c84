//! The token vault (owned by the vault service): encrypted assertions, view sessions, the
//! revocations with their per-token and per-view progress (the receipts), login attempts in
//! flight and people's web sessions at the gateway.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Assertions {
    Table,
    AssertionId,
    Issuer,
    Subject,
    PlatformId,
    Acr,
    Scopes,
    KeyId,
    WrappedKey,
    Ciphertext,
    AccessExpiresAt,
    ExpiresAt,
    RevocationId,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ViewSessions {
    Table,
    SessionId,
    ViewId,
    Issuer,
    Subject,
    PlatformId,
    ExpiresAt,
    OpenedAt,
    ClosedAt,
    WipeId,
    WipedAt,
}

#[derive(DeriveIden)]
enum Revocations {
    Table,
    RevocationId,
    EndedEventId,
    Issuer,
    Subject,
    PlatformId,
    Reason,
    State,
    StartedAt,
    FinishedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RevocationTokens {
    Table,
    Id,
    RevocationId,
    AssertionId,
    TokenKind,
    Outcome,
    Attempts,
    LastError,
    NextAttemptAt,
    DoneAt,
}

#[derive(DeriveIden)]
enum PendingWipes {
    Table,
    WipeId,
    RevocationId,
    ViewId,
    Issuer,
    Subject,
    PlatformId,
    Reason,
    SessionIds,
    ExpiresAt,
    State,
    Attempts,
    NextAttemptAt,
    SentAt,
    AckedAt,
    CreatedAt,
}

#[derive(DeriveIden)]
enum LoginAttempts {
    Table,
    StateDigest,
    PlatformId,
    KeyId,
    WrappedKey,
    Ciphertext,
    ExpiresAt,
    CreatedAt,
}

#[derive(DeriveIden)]
enum WebSessions {
    Table,
    SessionDigest,
    AssertionId,
    Issuer,
    Subject,
    PlatformId,
    Acr,
    ExpiresAt,
    CreatedAt,
}

fn index(name: &str, table: impl IntoIden, cols: &[&'static str]) -> IndexCreateStatement {
    let mut index = Index::create();
    index.name(name).table(table).if_not_exists();
    for col in cols {
        index.col(Alias::new(*col));
    }
    index.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Assertions::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Assertions::AssertionId).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(Assertions::Issuer).string_len(512).not_null())
                    .col(ColumnDef::new(Assertions::Subject).string_len(512).not_null())
                    .col(ColumnDef::new(Assertions::PlatformId).string_len(512).not_null())
                    .col(ColumnDef::new(Assertions::Acr).string_len(256).null())
                    .col(ColumnDef::new(Assertions::Scopes).text().not_null())
                    .col(ColumnDef::new(Assertions::KeyId).string_len(64).not_null())
                    .col(ColumnDef::new(Assertions::WrappedKey).binary().not_null())
                    .col(ColumnDef::new(Assertions::Ciphertext).binary().not_null())
                    .col(ColumnDef::new(Assertions::AccessExpiresAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Assertions::ExpiresAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Assertions::RevocationId).string_len(128).null())
                    .col(ColumnDef::new(Assertions::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Assertions::UpdatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index("assertions_by_person", Assertions::Table, &["issuer", "subject", "platform_id"]))
            .await?;
        manager.create_index(index("assertions_by_expiry", Assertions::Table, &["expires_at"])).await?;
        manager.create_index(index("assertions_by_key", Assertions::Table, &["key_id"])).await?;

        manager
            .create_table(
                Table::create()
                    .table(ViewSessions::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(ViewSessions::SessionId).string_len(512).not_null().primary_key())
                    .col(ColumnDef::new(ViewSessions::ViewId).string_len(128).not_null())
                    .col(ColumnDef::new(ViewSessions::Issuer).string_len(512).not_null())
                    .col(ColumnDef::new(ViewSessions::Subject).string_len(512).not_null())
                    .col(ColumnDef::new(ViewSessions::PlatformId).string_len(512).not_null())
                    .col(ColumnDef::new(ViewSessions::ExpiresAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(ViewSessions::OpenedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(ViewSessions::ClosedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(ViewSessions::WipeId).string_len(160).null())
                    .col(ColumnDef::new(ViewSessions::WipedAt).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index("view_sessions_by_person", ViewSessions::Table, &["issuer", "subject", "platform_id"]))
            .await?;
        manager.create_index(index("view_sessions_by_expiry", ViewSessions::Table, &["expires_at"])).await?;

        manager
            .create_table(
                Table::create()
                    .table(Revocations::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Revocations::RevocationId).string_len(128).not_null().primary_key())
                    .col(ColumnDef::new(Revocations::EndedEventId).string_len(128).not_null().unique_key())
                    .col(ColumnDef::new(Revocations::Issuer).string_len(512).not_null())
                    .col(ColumnDef::new(Revocations::Subject).string_len(512).not_null())
                    .col(ColumnDef::new(Revocations::PlatformId).string_len(512).not_null())
                    .col(ColumnDef::new(Revocations::Reason).string_len(32).not_null())
                    .col(ColumnDef::new(Revocations::State).string_len(16).not_null())
                    .col(ColumnDef::new(Revocations::StartedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Revocations::FinishedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Revocations::UpdatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index("revocations_by_person", Revocations::Table, &["issuer", "subject", "platform_id"]))
            .await?;
        manager.create_index(index("revocations_by_state", Revocations::Table, &["state", "updated_at"])).await?;

        manager
            .create_table(
                Table::create()
                    .table(RevocationTokens::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(RevocationTokens::Id).string_len(256).not_null().primary_key())
                    .col(ColumnDef::new(RevocationTokens::RevocationId).string_len(128).not_null())
                    .col(ColumnDef::new(RevocationTokens::AssertionId).string_len(64).not_null())
                    .col(ColumnDef::new(RevocationTokens::TokenKind).string_len(16).not_null())
                    .col(ColumnDef::new(RevocationTokens::Outcome).string_len(24).not_null())
                    .col(ColumnDef::new(RevocationTokens::Attempts).integer().not_null().default(0))
                    .col(ColumnDef::new(RevocationTokens::LastError).string_len(512).null())
                    .col(ColumnDef::new(RevocationTokens::NextAttemptAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(RevocationTokens::DoneAt).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index("revocation_tokens_due", RevocationTokens::Table, &["outcome", "next_attempt_at"]))
            .await?;
        manager
            .create_index(index("revocation_tokens_by_revocation", RevocationTokens::Table, &["revocation_id"]))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(PendingWipes::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(PendingWipes::WipeId).string_len(160).not_null().primary_key())
                    .col(ColumnDef::new(PendingWipes::RevocationId).string_len(128).null())
                    .col(ColumnDef::new(PendingWipes::ViewId).string_len(128).not_null())
                    .col(ColumnDef::new(PendingWipes::Issuer).string_len(512).not_null())
                    .col(ColumnDef::new(PendingWipes::Subject).string_len(512).not_null())
                    .col(ColumnDef::new(PendingWipes::PlatformId).string_len(512).not_null())
                    .col(ColumnDef::new(PendingWipes::Reason).string_len(32).not_null())
                    .col(ColumnDef::new(PendingWipes::SessionIds).text().not_null())
                    .col(ColumnDef::new(PendingWipes::ExpiresAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(PendingWipes::State).string_len(16).not_null())
                    .col(ColumnDef::new(PendingWipes::Attempts).integer().not_null().default(0))
                    .col(ColumnDef::new(PendingWipes::NextAttemptAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(PendingWipes::SentAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(PendingWipes::AckedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(PendingWipes::CreatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager.create_index(index("pending_wipes_due", PendingWipes::Table, &["state", "next_attempt_at"])).await?;
        manager.create_index(index("pending_wipes_by_revocation", PendingWipes::Table, &["revocation_id"])).await?;

        manager
            .create_table(
                Table::create()
                    .table(LoginAttempts::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(LoginAttempts::StateDigest).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(LoginAttempts::PlatformId).string_len(512).not_null())
                    .col(ColumnDef::new(LoginAttempts::KeyId).string_len(64).not_null())
                    .col(ColumnDef::new(LoginAttempts::WrappedKey).binary().not_null())
                    .col(ColumnDef::new(LoginAttempts::Ciphertext).binary().not_null())
                    .col(ColumnDef::new(LoginAttempts::ExpiresAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(LoginAttempts::CreatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(WebSessions::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(WebSessions::SessionDigest).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(WebSessions::AssertionId).string_len(64).not_null())
                    .col(ColumnDef::new(WebSessions::Issuer).string_len(512).not_null())
                    .col(ColumnDef::new(WebSessions::Subject).string_len(512).not_null())
                    .col(ColumnDef::new(WebSessions::PlatformId).string_len(512).not_null())
                    .col(ColumnDef::new(WebSessions::Acr).string_len(256).null())
                    .col(ColumnDef::new(WebSessions::ExpiresAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(WebSessions::CreatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index("web_sessions_by_person", WebSessions::Table, &["issuer", "subject", "platform_id"]))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            WebSessions::Table.into_iden(),
            LoginAttempts::Table.into_iden(),
            PendingWipes::Table.into_iden(),
            RevocationTokens::Table.into_iden(),
            Revocations::Table.into_iden(),
            ViewSessions::Table.into_iden(),
            Assertions::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
