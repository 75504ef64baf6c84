//! The consent ledger (owned by the consent service) and its history.
//!
//! A consent row keeps, per (issuer, subject, platform), the latest grant, the latest
//! revocation and the most lenient expiry seen, plus the latest activity: the current
//! state is a pure function of those, so events may be applied in any order.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Consents {
    Table,
    ConsentKey,
    Issuer,
    Subject,
    PlatformId,
    State,
    Scopes,
    Acr,
    GrantedAt,
    GrantEventId,
    RevokedAt,
    RevokeReason,
    RevokeEventId,
    ExpiredAt,
    ExpireIdleSince,
    ExpireEventId,
    ExpireSweepId,
    LastSeenAt,
    EndedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ConsentHistory {
    Table,
    Id,
    ConsentKey,
    EventId,
    EventType,
    EventTime,
    StateAfter,
    RecordedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Consents::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Consents::ConsentKey).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(Consents::Issuer).string_len(512).not_null())
                    .col(ColumnDef::new(Consents::Subject).string_len(512).not_null())
                    .col(ColumnDef::new(Consents::PlatformId).string_len(512).not_null())
                    .col(ColumnDef::new(Consents::State).string_len(16).not_null())
                    .col(ColumnDef::new(Consents::Scopes).text().not_null())
                    .col(ColumnDef::new(Consents::Acr).string_len(512).null())
                    .col(ColumnDef::new(Consents::GrantedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Consents::GrantEventId).string_len(256).null())
                    .col(ColumnDef::new(Consents::RevokedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Consents::RevokeReason).string_len(16).null())
                    .col(ColumnDef::new(Consents::RevokeEventId).string_len(256).null())
                    .col(ColumnDef::new(Consents::ExpiredAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Consents::ExpireIdleSince).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Consents::ExpireEventId).string_len(256).null())
                    .col(ColumnDef::new(Consents::ExpireSweepId).string_len(256).null())
                    .col(ColumnDef::new(Consents::LastSeenAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Consents::EndedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Consents::UpdatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        // A person's dashboard: every platform for (issuer, subject).
        manager
            .create_index(
                Index::create()
                    .name("consents_by_person")
                    .table(Consents::Table)
                    .col(Consents::Issuer)
                    .col(Consents::Subject)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // The inactivity sweep's keyset scan.
        manager
            .create_index(
                Index::create()
                    .name("consents_idle_scan")
                    .table(Consents::Table)
                    .col(Consents::PlatformId)
                    .col(Consents::LastSeenAt)
                    .col(Consents::ConsentKey)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ConsentHistory::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(ConsentHistory::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(ConsentHistory::ConsentKey).string_len(64).not_null())
                    .col(ColumnDef::new(ConsentHistory::EventId).string_len(256).not_null())
                    .col(ColumnDef::new(ConsentHistory::EventType).string_len(64).not_null())
                    .col(ColumnDef::new(ConsentHistory::EventTime).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(ConsentHistory::StateAfter).string_len(16).not_null())
                    .col(ColumnDef::new(ConsentHistory::RecordedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("consent_history_by_key")
                    .table(ConsentHistory::Table)
                    .col(ConsentHistory::ConsentKey)
                    .col(ConsentHistory::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(ConsentHistory::Table).if_exists().to_owned()).await?;
        manager.drop_table(Table::drop().table(Consents::Table).if_exists().to_owned()).await
    }
}
