//! Housekeeping: assertions are deleted when their longest-lived token expires (tokens are
//! kept only while valid); expired logins and web sessions go; sessions past their expiry
//! for a day go; and records sealed under an old KEK are re-wrapped under the current one,
//! a page at a time, while the service keeps running.

use std::sync::Arc;
use std::time::Duration;

use custodian_crypto::Envelope;
use custodian_store::entities::{assertion, view_session};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use tokio_util::sync::CancellationToken;

use crate::{Vault, VaultError, login};

const REWRAP_PAGE: u64 = 500;

pub(crate) async fn run(vault: Arc<Vault>, shutdown: CancellationToken) -> Result<(), VaultError> {
    let period = Duration::from_secs(vault.config.maintenance_every_secs.max(1));
    loop {
        if let Err(e) = pass(&vault).await {
            tracing::warn!(error = %e, "vault maintenance failed; will retry");
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(period) => {}
        }
    }
}

/// One maintenance pass; public to the crate for tests and `custodian` commands.
pub(crate) async fn pass(vault: &Vault) -> Result<(u64, u64), VaultError> {
    let now = vault.clock.now();
    let db = vault.store.db();
    // Assertions under revocation are deleted by the driver once settled.
    let expired = assertion::Entity::delete_many()
        .filter(assertion::Column::ExpiresAt.lte(now))
        .filter(assertion::Column::RevocationId.is_null())
        .exec(db)
        .await?
        .rows_affected;
    if expired > 0 {
        tracing::info!(count = expired, "expired assertions deleted");
    }
    login::purge(vault, now).await?;
    view_session::Entity::delete_many()
        .filter(view_session::Column::ExpiresAt.lte(now - chrono::Duration::days(1)))
        .exec(db)
        .await?;
    let rewrapped = rewrap(vault).await?;
    Ok((expired, rewrapped))
}

/// Moves assertions sealed under an old KEK to the current one (the ciphertext is kept; only
/// the data key's wrapping changes). Conditional on the row being unchanged meanwhile.
pub(crate) async fn rewrap(vault: &Vault) -> Result<u64, VaultError> {
    let db = vault.store.db();
    let current = vault.keyring.current_key_id().to_owned();
    let mut moved = 0;
    loop {
        let rows = assertion::Entity::find()
            .filter(assertion::Column::KeyId.ne(current.clone()))
            .limit(REWRAP_PAGE)
            .all(db)
            .await?;
        if rows.is_empty() {
            return Ok(moved);
        }
        let mut progressed = false;
        for row in rows {
            let envelope = Envelope {
                key_id: row.key_id.clone(),
                wrapped_key: row.wrapped_key.clone(),
                ciphertext: row.ciphertext.clone(),
            };
            let next = match vault.keyring.rewrap(&envelope) {
                Ok(Some(next)) => next,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(assertion_id = %row.assertion_id, key_id = %row.key_id, error = %e, "cannot re-wrap: is the old key still in the ring?");
                    continue;
                }
            };
            let updated = assertion::Entity::update_many()
                .col_expr(assertion::Column::KeyId, next.key_id.into())
                .col_expr(assertion::Column::WrappedKey, next.wrapped_key.into())
                .filter(assertion::Column::AssertionId.eq(row.assertion_id.clone()))
                .filter(assertion::Column::KeyId.eq(row.key_id.clone()))
                .filter(assertion::Column::UpdatedAt.eq(row.updated_at))
                .exec(db)
                .await?;
            if updated.rows_affected == 1 {
                moved += 1;
                progressed = true;
            }
        }
        if !progressed {
            return Ok(moved);
        }
    }
}
