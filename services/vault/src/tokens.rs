//! Hands a platform service a valid access token for (subject, platform): renewed with the
//! refresh token when it is about to expire, sealed to the requester's one-time key (tokens
//! never cross NATS in clear), and recorded as the person's activity (`activity.seen`).

use custodian_events::vault::{TokenReply, TokenRequest};
use custodian_events::{ActivitySeenV1, CloudEvent, subjects};
use custodian_store::outbox;
use secrecy::ExposeSecret;

use crate::assertions::{self, TokenBundle};
use crate::{SERVICE, SOURCE, Vault, VaultError};

pub(crate) async fn hand_out(vault: &Vault, request: Result<TokenRequest, String>) -> TokenReply {
    let request = match request {
        Ok(r) => r,
        Err(e) => return TokenReply::Error(e),
    };
    match token_for(vault, &request).await {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(platform_id = %request.platform_id, error = %e, "no token handed out");
            TokenReply::Error(e.to_string())
        }
    }
}

async fn token_for(vault: &Vault, request: &TokenRequest) -> Result<TokenReply, VaultError> {
    let now = vault.clock.now();
    let db = vault.store.db();
    let Some(row) =
        assertions::usable(db, request.issuer.as_deref(), &request.subject, &request.platform_id, now).await?
    else {
        return Ok(TokenReply::NotFound("no valid token for this person at this platform".into()));
    };
    let bundle = assertions::open(&vault.keyring, &row)?;
    let margin = chrono::Duration::seconds(vault.config.refresh_margin_secs as i64);
    let (access, expires_at) = if row.access_expires_at > now + margin {
        (bundle.access(), row.access_expires_at)
    } else {
        let Some(refresh) = bundle.refresh() else {
            return Ok(TokenReply::NotFound("the access token expired and there is no refresh token".into()));
        };
        let client = vault.clients.get(&row.platform_id).await?;
        let renewed = client.refresh(&refresh).await?;
        vault.metrics.refreshes.inc();
        let next = TokenBundle {
            access_token: renewed.access_token.expose_secret().to_owned(),
            // The OP may rotate the refresh token; keep the old one if it did not.
            refresh_token: renewed
                .refresh_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned())
                .or_else(|| bundle.refresh_token.clone()),
            id_token: bundle.id_token.clone(),
        };
        if !assertions::replace_tokens(db, &vault.keyring, &row, &next, renewed.access_expires_at, now).await? {
            // Revoked while we were refreshing: do not hand out what is being revoked.
            return Ok(TokenReply::NotFound("the consent ended".into()));
        }
        (next.access(), renewed.access_expires_at)
    };
    drop(bundle);
    let sealed = custodian_crypto::seal_to(&request.reply_key, access.expose_secret().as_bytes())?;

    // A token handed out is the person's platform being used: activity for the ledger.
    let seen = ActivitySeenV1 {
        issuer: row.issuer.clone(),
        subject: row.subject.clone(),
        platform_id: row.platform_id.clone(),
    };
    let event = CloudEvent::new(SOURCE, now, seen);
    let txn = vault.store.begin_write().await?;
    outbox::enqueue(&txn, SERVICE, vec![custodian_bus::outbox_row(subjects::ACTIVITY_SEEN, &event)], now).await?;
    txn.commit().await?;
    vault.relay.wake();
    vault.metrics.tokens_handed_out.inc();
    Ok(TokenReply::Token { sealed_access_token: sealed, expires_at, acr: row.acr, issuer: row.issuer })
}
