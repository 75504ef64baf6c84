//! Inactivity sweeps (owned by the sweeper): one row per sweep, with its checkpoint so a
//! replica that takes over the lease resumes where the last holder stopped.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Sweeps {
    Table,
    SweepId,
    PlatformId,
    DryRun,
    State,
    IdleBefore,
    RequestedBy,
    Holder,
    Scanned,
    Expired,
    Total,
    CursorPlatform,
    CursorLastSeen,
    CursorKey,
    CreatedAt,
    StartedAt,
    FinishedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Sweeps::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Sweeps::SweepId).string_len(128).not_null().primary_key())
                    .col(ColumnDef::new(Sweeps::PlatformId).string_len(512).null())
                    .col(ColumnDef::new(Sweeps::DryRun).boolean().not_null())
                    .col(ColumnDef::new(Sweeps::State).string_len(16).not_null())
                    .col(ColumnDef::new(Sweeps::IdleBefore).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Sweeps::RequestedBy).string_len(256).not_null())
                    .col(ColumnDef::new(Sweeps::Holder).string_len(128).null())
                    .col(ColumnDef::new(Sweeps::Scanned).big_integer().not_null().default(0))
                    .col(ColumnDef::new(Sweeps::Expired).big_integer().not_null().default(0))
                    .col(ColumnDef::new(Sweeps::Total).big_integer().null())
                    .col(ColumnDef::new(Sweeps::CursorPlatform).string_len(512).null())
                    .col(ColumnDef::new(Sweeps::CursorLastSeen).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Sweeps::CursorKey).string_len(64).null())
                    .col(ColumnDef::new(Sweeps::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Sweeps::StartedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Sweeps::FinishedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Sweeps::UpdatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("sweeps_by_state")
                    .table(Sweeps::Table)
                    .col(Sweeps::State)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Sweeps::Table).if_exists().to_owned()).await
    }
}
