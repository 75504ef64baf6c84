//! Incident response (owned by the incident service): the register of incidents (GDPR Art.
//! 33(5)), each incident's workflow steps with their state and times, and the platforms'
//! client credentials, sealed, one row per version.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Incidents {
    Table,
    IncidentId,
    Kind,
    PlatformId,
    Issuer,
    Subject,
    Summary,
    DetectedAt,
    Reporter,
    ReportedEventId,
    State,
    CreatedAt,
    UpdatedAt,
    ClosedAt,
}

#[derive(DeriveIden)]
enum IncidentSteps {
    Table,
    Id,
    IncidentId,
    Position,
    Step,
    State,
    Attempts,
    NextAttemptAt,
    LastError,
    StartedAt,
    FinishedAt,
    Detail,
}

#[derive(DeriveIden)]
enum Credentials {
    Table,
    Id,
    PlatformId,
    Version,
    State,
    KeyId,
    WrappedKey,
    Ciphertext,
    CreatedAt,
    NotAfter,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Incidents::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Incidents::IncidentId).string_len(128).not_null().primary_key())
                    .col(ColumnDef::new(Incidents::Kind).string_len(32).not_null())
                    .col(ColumnDef::new(Incidents::PlatformId).string_len(512).not_null())
                    .col(ColumnDef::new(Incidents::Issuer).string_len(512).null())
                    .col(ColumnDef::new(Incidents::Subject).string_len(512).null())
                    .col(ColumnDef::new(Incidents::Summary).text().not_null())
                    .col(ColumnDef::new(Incidents::DetectedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Incidents::Reporter).string_len(512).not_null())
                    .col(ColumnDef::new(Incidents::ReportedEventId).string_len(512).not_null())
                    .col(ColumnDef::new(Incidents::State).string_len(16).not_null())
                    .col(ColumnDef::new(Incidents::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Incidents::UpdatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Incidents::ClosedAt).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(IncidentSteps::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(IncidentSteps::Id).string_len(200).not_null().primary_key())
                    .col(ColumnDef::new(IncidentSteps::IncidentId).string_len(128).not_null())
                    .col(ColumnDef::new(IncidentSteps::Position).integer().not_null())
                    .col(ColumnDef::new(IncidentSteps::Step).string_len(32).not_null())
                    .col(ColumnDef::new(IncidentSteps::State).string_len(16).not_null())
                    .col(ColumnDef::new(IncidentSteps::Attempts).integer().not_null().default(0))
                    .col(ColumnDef::new(IncidentSteps::NextAttemptAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(IncidentSteps::LastError).string_len(1024).null())
                    .col(ColumnDef::new(IncidentSteps::StartedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(IncidentSteps::FinishedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(IncidentSteps::Detail).text().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("incident_steps_due")
                    .table(IncidentSteps::Table)
                    .col(IncidentSteps::State)
                    .col(IncidentSteps::NextAttemptAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Credentials::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Credentials::Id).string_len(600).not_null().primary_key())
                    .col(ColumnDef::new(Credentials::PlatformId).string_len(512).not_null())
                    .col(ColumnDef::new(Credentials::Version).integer().not_null())
                    .col(ColumnDef::new(Credentials::State).string_len(16).not_null())
                    .col(ColumnDef::new(Credentials::KeyId).string_len(64).not_null())
                    .col(ColumnDef::new(Credentials::WrappedKey).binary().not_null())
                    .col(ColumnDef::new(Credentials::Ciphertext).binary().not_null())
                    .col(ColumnDef::new(Credentials::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Credentials::NotAfter).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [Credentials::Table.into_iden(), IncidentSteps::Table.into_iden(), Incidents::Table.into_iden()] {
            manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
