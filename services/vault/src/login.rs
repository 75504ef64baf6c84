//! The login code flow, run by the vault on behalf of the gateway: the vault holds the client
//! secret, the PKCE verifier and the nonce; the gateway only relays the browser. On success
//! the tokens are sealed into an assertion, the person's web session (by cookie digest) is
//! bound to it, and `consent.granted` goes out through the outbox — one transaction.

use chrono::{DateTime, Utc};
use custodian_crypto::Envelope;
use custodian_events::vault::{
    LoginFinish, LoginFinishReply, LoginStart, LoginStartReply, LogoutReply, PersonSession, SessionLookup, WhoamiReply,
};
use custodian_events::{CloudEvent, ConsentGrantedV1, derived_event_id, subjects};
use custodian_store::entities::{login_attempt, web_session};
use custodian_store::outbox;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::assertions::{self, NewAssertion, TokenBundle};
use crate::{SERVICE, SOURCE, Vault, VaultError};
use custodian_crypto::sha256_hex as digest;

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct LoginSecrets {
    pkce_verifier: String,
    nonce: String,
}

fn login_aad(state_digest: &str) -> Vec<u8> {
    format!("custodian:login:{state_digest}").into_bytes()
}

pub(crate) async fn start(vault: &Vault, request: Result<LoginStart, String>) -> LoginStartReply {
    let request = match request {
        Ok(r) => r,
        Err(e) => return LoginStartReply::Error(e),
    };
    match start_login(vault, request).await {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(error = %e, "login could not start");
            LoginStartReply::Error(e.to_string())
        }
    }
}

async fn start_login(vault: &Vault, request: LoginStart) -> Result<LoginStartReply, VaultError> {
    let Some(platform_id) = request.platform_id.or_else(|| vault.clients.default_platform()) else {
        return Ok(LoginStartReply::UnknownPlatform("which platform? several are configured: name one".into()));
    };
    if !vault.clients.is_configured(&platform_id) {
        return Ok(LoginStartReply::UnknownPlatform(format!("no platform {platform_id:?} is configured")));
    }
    let now = vault.clock.now();
    let pending =
        login_attempt::Entity::find().filter(login_attempt::Column::ExpiresAt.gt(now)).count(vault.store.db()).await?;
    if pending >= vault.config.max_pending_logins {
        tracing::warn!(pending, "sign-ins refused: too many in progress");
        return Ok(LoginStartReply::Error("too many sign-ins are in progress; retry in a minute".into()));
    }
    let client = vault.clients.get(&platform_id).await?;
    let auth = client.authorization_request();
    let state_digest = digest(auth.state.expose_secret());
    let secrets = LoginSecrets {
        pkce_verifier: auth.pkce_verifier.expose_secret().to_owned(),
        nonce: auth.nonce.expose_secret().to_owned(),
    };
    let plaintext = zeroize::Zeroizing::new(serde_json::to_vec(&secrets).unwrap_or_default());
    let sealed = vault.keyring.seal(&plaintext, &login_aad(&state_digest));
    login_attempt::Entity::insert(login_attempt::ActiveModel {
        state_digest: Set(state_digest),
        platform_id: Set(platform_id),
        key_id: Set(sealed.key_id),
        wrapped_key: Set(sealed.wrapped_key),
        ciphertext: Set(sealed.ciphertext),
        expires_at: Set(now + chrono::Duration::seconds(vault.config.login_ttl_secs as i64)),
        created_at: Set(now),
    })
    .exec(vault.store.db())
    .await?;
    Ok(LoginStartReply::Redirect { authorize_url: auth.url, state: auth.state.expose_secret().to_owned() })
}

pub(crate) async fn finish(vault: &Vault, request: Result<LoginFinish, String>) -> LoginFinishReply {
    let request = match request {
        Ok(r) => r,
        Err(e) => return LoginFinishReply::Error(e),
    };
    match finish_login(vault, request).await {
        Ok(person) => LoginFinishReply::Person(person),
        Err(VaultError::Oidc(e)) if !e.is_transient() => {
            tracing::info!(error = %e, "login refused");
            LoginFinishReply::Refused(e.to_string())
        }
        Err(VaultError::Invalid(reason)) => LoginFinishReply::Refused(reason),
        Err(e) => {
            tracing::warn!(error = %e, "login could not finish");
            LoginFinishReply::Error(e.to_string())
        }
    }
}

async fn finish_login(vault: &Vault, request: LoginFinish) -> Result<PersonSession, VaultError> {
    if request.session_digest.len() != 64 {
        return Err(VaultError::Invalid("session_digest must be a SHA-256 hex digest".into()));
    }
    let now = vault.clock.now();
    let state_digest = digest(&request.state);
    // Single use: whoever deletes the attempt owns the login.
    let Some(attempt) = login_attempt::Entity::find_by_id(state_digest.clone()).one(vault.store.db()).await? else {
        return Err(VaultError::Invalid("unknown or already used login (state)".into()));
    };
    let deleted = login_attempt::Entity::delete_by_id(state_digest.clone()).exec(vault.store.db()).await?;
    if deleted.rows_affected != 1 {
        return Err(VaultError::Invalid("login already used".into()));
    }
    if attempt.expires_at <= now {
        return Err(VaultError::Invalid("login took too long; start again".into()));
    }
    let envelope =
        Envelope { key_id: attempt.key_id, wrapped_key: attempt.wrapped_key, ciphertext: attempt.ciphertext };
    let plaintext = vault.keyring.open(&envelope, &login_aad(&state_digest))?;
    let secrets: LoginSecrets =
        serde_json::from_slice(&plaintext).map_err(|_| VaultError::Invalid("login record unreadable".into()))?;
    let (code, secrets) = (&request.code, &secrets);
    let tokens = crate::incident::with_client(vault, &attempt.platform_id, |client| async move {
        client
            .exchange_code(
                code,
                &SecretString::from(secrets.pkce_verifier.clone()),
                &SecretString::from(secrets.nonce.clone()),
            )
            .await
    })
    .await?;
    let client = vault.clients.get(&attempt.platform_id).await?;
    let identity = tokens.identity.clone().ok_or_else(|| VaultError::Invalid("no identity in the ID token".into()))?;

    // How long the record may live: the longest-lived token (introspection tells the refresh
    // token's expiry; otherwise the configured default).
    let mut expires_at = tokens.access_expires_at;
    if let Some(refresh) = &tokens.refresh_token {
        let refresh_expiry = match client.introspect(refresh, custodian_oidc::TokenKind::Refresh).await {
            Ok(info) if info.active => info.expires_at,
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "refresh token introspection failed; using the configured lifetime");
                None
            }
        };
        let fallback = now + chrono::Duration::seconds(vault.config.refresh_token_ttl_secs as i64);
        expires_at = expires_at.max(refresh_expiry.unwrap_or(fallback));
    }
    let bundle = TokenBundle::from_tokens(&tokens);
    let assertion_id = uuid::Uuid::new_v4().to_string();
    let session_expires = (now + chrono::Duration::seconds(vault.config.web_session_ttl_secs as i64)).min(expires_at);
    let txn = vault.store.begin_write().await?;
    assertions::insert(
        &txn,
        &vault.keyring,
        NewAssertion {
            assertion_id: assertion_id.clone(),
            issuer: &identity.issuer,
            subject: &identity.subject,
            platform_id: &attempt.platform_id,
            acr: identity.acr.clone(),
            scopes: &tokens.scopes,
            bundle: &bundle,
            access_expires_at: tokens.access_expires_at,
            expires_at,
        },
        now,
    )
    .await?;
    web_session::Entity::insert(web_session::ActiveModel {
        session_digest: Set(request.session_digest.clone()),
        assertion_id: Set(assertion_id.clone()),
        issuer: Set(identity.issuer.clone()),
        subject: Set(identity.subject.clone()),
        platform_id: Set(attempt.platform_id.clone()),
        acr: Set(identity.acr.clone()),
        expires_at: Set(session_expires),
        created_at: Set(now),
    })
    .exec(&txn)
    .await?;
    // Logging in and consenting at the OP is the person's consent to this platform.
    let grant = ConsentGrantedV1 {
        issuer: identity.issuer.clone(),
        subject: identity.subject.clone(),
        platform_id: attempt.platform_id.clone(),
        scopes: if tokens.scopes.is_empty() { client.settings().scopes.clone() } else { tokens.scopes.clone() },
        acr: identity.acr.clone(),
    };
    let event = CloudEvent::with_id(derived_event_id("consent.granted", &assertion_id), SOURCE, now, grant);
    outbox::enqueue(&txn, SERVICE, vec![custodian_bus::outbox_row(subjects::CONSENT_GRANTED, &event)], now).await?;
    txn.commit().await?;
    vault.relay.wake();
    vault.metrics.logins.inc();
    tracing::info!(platform_id = %attempt.platform_id, assertion_id = %assertion_id, "person logged in");
    Ok(PersonSession {
        issuer: identity.issuer,
        subject: identity.subject,
        platform_id: attempt.platform_id,
        acr: identity.acr,
        expires_at: session_expires,
    })
}

pub(crate) async fn whoami(vault: &Vault, request: Result<SessionLookup, String>) -> WhoamiReply {
    let request = match request {
        Ok(r) => r,
        Err(e) => return WhoamiReply::Error(e),
    };
    let now = vault.clock.now();
    match web_session::Entity::find_by_id(request.session_digest).one(vault.store.db()).await {
        Ok(Some(s)) if s.expires_at > now => WhoamiReply::Person(PersonSession {
            issuer: s.issuer,
            subject: s.subject,
            platform_id: s.platform_id,
            acr: s.acr,
            expires_at: s.expires_at,
        }),
        Ok(_) => WhoamiReply::Unknown,
        Err(e) => {
            tracing::warn!(error = %e, "session lookup failed");
            WhoamiReply::Error("the vault's database is unavailable".into())
        }
    }
}

pub(crate) async fn logout(vault: &Vault, request: Result<SessionLookup, String>) -> LogoutReply {
    let Ok(request) = request else { return LogoutReply { end_session_url: None } };
    let session = web_session::Entity::find_by_id(request.session_digest.clone()).one(vault.store.db()).await;
    let platform_id = match session {
        Ok(Some(s)) => Some(s.platform_id),
        _ => None,
    };
    if let Err(e) = web_session::Entity::delete_many()
        .filter(web_session::Column::SessionDigest.eq(request.session_digest))
        .exec(vault.store.db())
        .await
    {
        tracing::warn!(error = %e, "web session not deleted");
    }
    let end_session_url = match platform_id.or_else(|| vault.clients.default_platform()) {
        Some(p) => match vault.clients.get(&p).await {
            Ok(client) => client.end_session_url(None),
            Err(_) => None,
        },
        None => None,
    };
    LogoutReply { end_session_url }
}

/// Expired login attempts and web sessions.
pub(crate) async fn purge(vault: &Vault, now: DateTime<Utc>) -> Result<u64, VaultError> {
    let a = login_attempt::Entity::delete_many()
        .filter(login_attempt::Column::ExpiresAt.lte(now))
        .exec(vault.store.db())
        .await?
        .rows_affected;
    let b = web_session::Entity::delete_many()
        .filter(web_session::Column::ExpiresAt.lte(now))
        .exec(vault.store.db())
        .await?
        .rows_affected;
    Ok(a + b)
}
