//! Every schema change, one file each, applied in order on PostgreSQL and SQLite.
//! Each migration declares its own `DeriveIden` enums so that later changes to entities
//! never rewrite history.

pub use sea_orm_migration::prelude::*;

mod m20261124_000001_bus_inbox_outbox;
mod m20261124_000002_consents;
mod m20261124_000003_sweeps;
mod m20261124_000004_vault;
mod m20261124_000005_audit;
mod m20261124_000006_incidents;
mod m20261124_000007_consent_storage;
mod m20261129_000008_consent_idle_day;
mod m20261129_000009_outbox_pending_index;
mod m20261129_000010_consent_history_key;
mod m20261203_000011_deployment_keys;
mod m20261203_000012_status_marks;
mod m20261203_000013_session_assertion;
mod m20261204_000014_revocation_trace;
mod m20261206_000015_sweep_trace;
mod m20261206_000016_revocation_awaits_stream;
mod m20261206_000017_privacy_log_reads;

/// Runs `sql` on PostgreSQL only: storage tuning SQLite has no counterpart for.
async fn on_postgres(manager: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};
    if manager.get_database_backend() == DbBackend::Postgres {
        manager.get_connection().execute_unprepared(sql).await?;
    }
    Ok(())
}

#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_bus_inbox_outbox::Migration),
            Box::new(m20261124_000002_consents::Migration),
            Box::new(m20261124_000003_sweeps::Migration),
            Box::new(m20261124_000004_vault::Migration),
            Box::new(m20261124_000005_audit::Migration),
            Box::new(m20261124_000006_incidents::Migration),
            Box::new(m20261124_000007_consent_storage::Migration),
            Box::new(m20261129_000008_consent_idle_day::Migration),
            Box::new(m20261129_000009_outbox_pending_index::Migration),
            Box::new(m20261129_000010_consent_history_key::Migration),
            Box::new(m20261203_000011_deployment_keys::Migration),
            Box::new(m20261203_000012_status_marks::Migration),
            Box::new(m20261203_000013_session_assertion::Migration),
            Box::new(m20261204_000014_revocation_trace::Migration),
            Box::new(m20261206_000015_sweep_trace::Migration),
            Box::new(m20261206_000016_revocation_awaits_stream::Migration),
            Box::new(m20261206_000017_privacy_log_reads::Migration),
        ]
    }
}
