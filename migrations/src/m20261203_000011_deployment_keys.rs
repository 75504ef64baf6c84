//! `deployment_keys`: secrets every replica of every service shares, made once by the
//! database itself when it is migrated (so no operator has to hand them out).
//!
//! `event-ids`: the key under which Custodian derives its own event ids (HMAC-SHA256), so no
//! publisher into the stream can compute, and pre-empt, the id of an event Custodian is about
//! to publish. 256 random bits: SQLite's `randomblob` (its ChaCha20 generator seeded by the
//! OS), PostgreSQL's `gen_random_uuid` (`pg_strong_random`, 122 random bits each, two of them).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const SQLITE: &str = r#"
CREATE TABLE deployment_keys (name TEXT PRIMARY KEY NOT NULL, key_hex TEXT NOT NULL);
INSERT INTO deployment_keys (name, key_hex) VALUES ('event-ids', lower(hex(randomblob(32))));
"#;

const POSTGRES: &str = r#"
CREATE TABLE deployment_keys (name text PRIMARY KEY, key_hex text NOT NULL);
INSERT INTO deployment_keys (name, key_hex)
VALUES ('event-ids', replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));
"#;

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
        manager.get_connection().execute_unprepared("DROP TABLE deployment_keys").await?;
        Ok(())
    }
}
