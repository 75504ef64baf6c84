//! The schema's history: every migration can be rolled back and applied again, on the
//! backend of this run, and the ledger works on the result.

use custodian_migrations::{Migrator, MigratorTrait};
use custodian_store::Store;
use custodian_store::sea_orm::{ConnectionTrait, Statement};

#[tokio::test]
async fn every_migration_rolls_back_and_applies_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect_and_migrate(&custodian_testkit::test_database_url(dir.path()), 2).await.unwrap();
    let db = store.db();
    let applied = Migrator::get_applied_migrations(db).await.unwrap().len();
    assert_eq!(applied, Migrator::migrations().len());

    Migrator::down(db, None).await.expect("every down migration runs");
    assert!(Migrator::get_applied_migrations(db).await.unwrap().is_empty());
    let consents_left = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT 1 FROM information_schema.tables WHERE table_name = 'consents'",
        ))
        .await;
    // SQLite has no information_schema: the query fails there, which says nothing either way.
    if let Ok(row) = consents_left {
        assert!(row.is_none(), "the first migration's down drops the ledger");
    }

    Migrator::up(db, None).await.expect("every migration applies again");
    assert!(Migrator::get_pending_migrations(db).await.unwrap().is_empty());
    // The day column the sweep's index keys on is computed by the database on both backends,
    // from a time as the application writes it (RFC 3339), at 23:30 UTC: the UTC day.
    db.execute_unprepared(
        "INSERT INTO consents (consent_key, issuer, subject, platform_id, state, scopes, last_seen_at, updated_at) \
         VALUES ('k', 'https://op', 'alice', 'tp', 'granted', '[]', '2026-11-29T23:30:00+00:00', '2026-11-29T23:30:00+00:00')",
    )
    .await
    .unwrap();
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT CAST(last_seen_day AS TEXT) AS day FROM consents WHERE consent_key = 'k'",
        ))
        .await
        .unwrap()
        .expect("the row");
    assert_eq!(row.try_get::<String>("", "day").unwrap(), "2026-11-29");
}

#[tokio::test]
async fn each_database_makes_its_own_secret_event_id_key_when_migrated() {
    let key_of = |store: Store| async move {
        let row = store
            .db()
            .query_one_raw(Statement::from_string(
                store.db().get_database_backend(),
                "SELECT key_hex FROM deployment_keys WHERE name = 'event-ids'",
            ))
            .await
            .unwrap()
            .expect("the key");
        row.try_get::<String>("", "key_hex").unwrap()
    };
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first =
        key_of(Store::connect_and_migrate(&custodian_testkit::test_database_url(one.path()), 1).await.unwrap()).await;
    let second =
        key_of(Store::connect_and_migrate(&custodian_testkit::test_database_url(two.path()), 1).await.unwrap()).await;
    assert_eq!(first.len(), 64, "256 bits, in hex");
    assert!(first.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
    assert_ne!(first, second, "a key per deployment, never a shared constant");
    assert!(custodian_events::ids_are_keyed(), "connecting installed it for this process");
}
