//! The database: one sea-orm connection to PostgreSQL or SQLite (the embedded default),
//! the entities of every table, and the inbox/outbox helpers every service shares.
//!
//! Invariant: timestamps are UTC; every state change and the events it causes commit in
//! one transaction (outbox); a consumer records each applied event id in the same
//! transaction as its effect (inbox).

pub mod clock;
pub mod entities;
pub mod inbox;
pub mod locks;
pub mod outbox;
pub mod status_marks;

use std::time::Duration;

use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend};
use sea_orm_migration::MigratorTrait;

pub use sea_orm;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sea_orm::DbErr,
    },
    #[error("cannot create the directory of the SQLite database {path}: {source}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unsupported database URL {0:?}: use postgres://… or sqlite://…")]
    UnsupportedUrl(String),
    #[error("migration failed: {0}")]
    Migrate(#[source] sea_orm::DbErr),
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("{0}")]
    Invalid(String),
}

/// A handle on the database, cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
    max_connections: u32,
}

impl Store {
    /// Connects to `postgres://…` or `sqlite://path` (the file and its directory are created).
    /// A database URL may carry a password: it is never logged.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let url = prepare_url(url)?;
        let is_sqlite = url.starts_with("sqlite:");
        let max_connections = if is_sqlite { max_connections.min(4) } else { max_connections }.max(1);
        let mut options = ConnectOptions::new(url.clone());
        options
            .max_connections(max_connections)
            .min_connections(1)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(30))
            // sqlx pings a connection on every checkout by default: a round trip before each
            // statement or transaction. Only a connection idle long enough to have been
            // dropped by the server or a proxy is checked; a hot one that broke fails its
            // statement, which every service retries.
            .test_before_acquire_if_idle_for(Duration::from_secs(10))
            .sqlx_logging(false);
        // On every connection of the pool (a PRAGMA run through the pool reaches only one):
        // WAL lets readers run beside the single writer; busy_timeout makes writers wait for
        // each other instead of failing.
        options.map_sqlx_sqlite_opts(|o| {
            use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
        });
        let db =
            Database::connect(options).await.map_err(|source| StoreError::Connect { url: redact_url(&url), source })?;
        let store = Self { db, max_connections };
        // Before migration the table may not exist yet: `migrate` installs it then.
        if let Err(e) = store.install_id_key().await {
            tracing::debug!(error = %e, "no deployment id key yet");
        }
        Ok(store)
    }

    /// Makes this process derive Custodian's event ids under the deployment's key (made by the
    /// migration, shared by every replica through the database).
    pub async fn install_id_key(&self) -> Result<(), StoreError> {
        use sea_orm::{ConnectionTrait, Statement};
        let row = self
            .db
            .query_one_raw(Statement::from_string(
                self.db.get_database_backend(),
                "SELECT key_hex FROM deployment_keys WHERE name = 'event-ids'",
            ))
            .await?
            .ok_or_else(|| StoreError::Invalid("the database has no event id key".into()))?;
        let key_hex: String = row.try_get("", "key_hex")?;
        let mut key = [0u8; 32];
        hex::decode_to_slice(key_hex.trim(), &mut key)
            .map_err(|_| StoreError::Invalid("the event id key is not 64 hex digits".into()))?;
        if !custodian_events::install_id_key(key) {
            // Only tests and benches open several databases in one process.
            tracing::debug!("this process already derives ids under another database's key; it keeps that one");
        }
        Ok(())
    }

    /// Connects and applies every pending migration.
    pub async fn connect_and_migrate(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let store = Self::connect(url, max_connections).await?;
        store.migrate().await?;
        Ok(store)
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        custodian_migrations::Migrator::up(&self.db, None).await.map_err(StoreError::Migrate)?;
        self.install_id_key().await
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The most connections the pool opens: what a caller may hold at once without waiting
    /// on itself.
    pub fn max_connections(&self) -> u32 {
        self.max_connections
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Begins a transaction that will write. On SQLite its first statement is a (no-op)
    /// write, so it holds the write lock from the start: a transaction that reads first
    /// cannot upgrade once another writer has committed (SQLITE_BUSY_SNAPSHOT).
    pub async fn begin_write(&self) -> Result<sea_orm::DatabaseTransaction, sea_orm::DbErr> {
        use sea_orm::ConnectionTrait;
        let txn = begin(&self.db).await?;
        if self.backend() == DbBackend::Sqlite {
            txn.execute_unprepared("DELETE FROM inbox WHERE 1 = 0").await?;
        }
        Ok(txn)
    }

    /// Begins a read-only transaction whose statements all see one snapshot, for an answer built
    /// from several queries. Without it PostgreSQL (READ COMMITTED) lets a commit land between
    /// them: an incident read as open beside its steps read as all done. SQLite's read
    /// transactions are snapshots already.
    pub async fn begin_snapshot(&self) -> Result<sea_orm::DatabaseTransaction, sea_orm::DbErr> {
        use sea_orm::ConnectionTrait;
        let txn = begin(&self.db).await?;
        if self.backend() == DbBackend::Postgres {
            txn.execute_unprepared("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?;
        }
        Ok(txn)
    }

    /// Begins a transaction (see [`begin`]).
    pub async fn begin(&self) -> Result<sea_orm::DatabaseTransaction, sea_orm::DbErr> {
        begin(&self.db).await
    }

    /// Readiness: can we run a trivial statement?
    pub async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.db.ping().await?)
    }
}

/// Begins a transaction on its own task, so that it completes even if the caller is
/// cancelled (its task aborted, a `select!` or timeout dropping it).
///
/// Why: sqlx 0.9 counts a transaction only once `BEGIN` is answered, and a `BEGIN` cancelled
/// after it was sent leaves the pooled connection inside a transaction nobody knows of. The
/// next borrower's statements then run in it: a plain `UPDATE` (meant to autocommit) is never
/// committed and keeps its row locks while the connection idles in the pool (measured: 46 of
/// 300 aborted transaction loops left a connection "idle in transaction"; a sweeper replica
/// taking over from a crashed one waited on such a lock forever). A transaction begun here
/// that its caller no longer awaits is dropped, which rolls it back properly.
///
/// Known upstream as sqlx issue #4393, fixed by pull request #4394 but in no release yet (0.9.0
/// is the newest): drop this detour once the pinned sqlx carries the fix and the store's
/// abort test still passes without it.
pub async fn begin(db: &DatabaseConnection) -> Result<sea_orm::DatabaseTransaction, sea_orm::DbErr> {
    use sea_orm::TransactionTrait;
    let db = db.clone();
    tokio::spawn(async move { db.begin().await })
        .await
        .map_err(|e| sea_orm::DbErr::Custom(format!("the task beginning a transaction failed: {e}")))?
}

fn prepare_url(url: &str) -> Result<String, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(url.to_owned());
    }
    let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) else {
        return Err(StoreError::UnsupportedUrl(redact_url(url)));
    };
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    if let Some(dir) = std::path::Path::new(path).parent().filter(|d| path != ":memory:" && !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|source| StoreError::CreateDir { path: dir.display().to_string(), source })?;
    }
    let query = if query.contains("mode=") {
        query.to_owned()
    } else if query.is_empty() {
        "mode=rwc".to_owned()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok(format!("sqlite://{path}?{query}"))
}

/// The URL without its password, for error messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The stored, opaque key of a consent: hex SHA-256 of its canonical form. Keeps the
/// primary key short and fixed-width, and lets a batch load every row it touches with one
/// `IN (…)` on PostgreSQL and SQLite alike.
pub fn consent_key_digest(canonical: &str) -> String {
    custodian_crypto::sha256_hex(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_passwords_never_reach_error_messages() {
        assert_eq!(redact_url("postgres://app:hunter2@db:5432/x"), "postgres://app:***@db:5432/x");
        assert_eq!(redact_url("sqlite://.data/c.db"), "sqlite://.data/c.db");
    }

    #[test]
    fn sqlite_urls_are_created_when_missing() {
        let dir = std::env::temp_dir().join(format!("custodian-store-{}", std::process::id()));
        let url = format!("sqlite://{}/sub/c.db", dir.display());
        assert!(prepare_url(&url).unwrap().ends_with("/sub/c.db?mode=rwc"));
        assert!(dir.join("sub").is_dir());
        assert!(matches!(prepare_url("mysql://x"), Err(StoreError::UnsupportedUrl(_))));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn every_sqlite_connection_waits_for_the_writer_in_wal_mode() {
        use sea_orm::sqlx;
        let dir = std::env::temp_dir().join(format!("custodian-store-pragmas-{}", std::process::id()));
        let store = Store::connect(&format!("sqlite://{}/c.db", dir.display()), 4).await.unwrap();
        let pool = store.db().get_sqlite_connection_pool();
        // Held at once, so that they are distinct connections of the pool.
        let mut connections = Vec::new();
        for _ in 0..3 {
            connections.push(pool.acquire().await.unwrap());
        }
        for connection in &mut connections {
            let timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(&mut **connection).await.unwrap();
            let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut **connection).await.unwrap();
            let journal: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut **connection).await.unwrap();
            assert_eq!((timeout, synchronous, journal.as_str()), (10_000, 1, "wal"));
        }
        drop(connections);
        let _ = std::fs::remove_dir_all(dir);
    }
}
