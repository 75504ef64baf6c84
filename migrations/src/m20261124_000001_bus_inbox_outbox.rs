//! The outbox (events written in the same transaction as a state change, published later)
//! and the inbox (event ids a consumer has applied, so redelivery is harmless).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Outbox {
    Table,
    EventId,
    Publisher,
    Subject,
    Payload,
    Traceparent,
    CreatedAt,
    PublishedAt,
    Attempts,
}

#[derive(DeriveIden)]
enum Inbox {
    Table,
    Consumer,
    EventId,
    ProcessedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Outbox::EventId).string_len(256).not_null().primary_key())
                    .col(ColumnDef::new(Outbox::Publisher).string_len(64).not_null())
                    .col(ColumnDef::new(Outbox::Subject).string_len(256).not_null())
                    .col(ColumnDef::new(Outbox::Payload).text().not_null())
                    .col(ColumnDef::new(Outbox::Traceparent).string_len(64).null())
                    .col(ColumnDef::new(Outbox::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Outbox::PublishedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Outbox::Attempts).integer().not_null().default(0))
                    .to_owned(),
            )
            .await?;
        // The relay asks "what has this publisher not yet published, oldest first?".
        manager
            .create_index(
                Index::create()
                    .name("outbox_unpublished")
                    .table(Outbox::Table)
                    .col(Outbox::Publisher)
                    .col(Outbox::PublishedAt)
                    .col(Outbox::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Inbox::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Inbox::Consumer).string_len(64).not_null())
                    .col(ColumnDef::new(Inbox::EventId).string_len(256).not_null())
                    .col(ColumnDef::new(Inbox::ProcessedAt).timestamp_with_time_zone().not_null())
                    .primary_key(Index::create().col(Inbox::Consumer).col(Inbox::EventId))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Inbox::Table).if_exists().to_owned()).await?;
        manager.drop_table(Table::drop().table(Outbox::Table).if_exists().to_owned()).await
    }
}
