//! Hands a platform service a valid access token for (subject, platform): renewed with the
//! refresh token when it is about to expire, sealed to the requester's one-time key (tokens
//! never cross NATS in clear), and recorded as the person's activity (`activity.seen`).
//!
//! Also the RFC 8693 exchange for a legacy SAML holder-of-key token, one per use: the
//! `token.hok_used` entry (with the real caller's identity) is committed to the outbox before
//! the token is handed out, so a use cannot happen without its privacy-log entry.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use custodian_events::vault::{HokReply, HokRequest, TokenReply, TokenRequest};
use custodian_events::{ActivitySeenV1, CloudEvent, HokTokenType, TokenHokUsedV1, subjects};
use custodian_store::entities::{assertion, view_session};
use custodian_store::locks::{self, LockOn};
use custodian_store::outbox;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter};
use secrecy::{ExposeSecret, SecretString};

use crate::assertions::{self, TokenBundle};
use crate::{SERVICE, SOURCE, Vault, VaultError};

pub(crate) async fn hand_out(vault: &Vault, view_id: &str, request: Result<TokenRequest, String>) -> TokenReply {
    let request = match request {
        Ok(r) => r,
        Err(e) => return TokenReply::Error(e),
    };
    match token_for(vault, view_id, &request).await {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(%view_id, platform_id = %request.platform_id, error = %e, "no token handed out");
            TokenReply::Error(e.to_string())
        }
    }
}

/// A currently valid access token for the person at the platform, renewed if needed.
/// `Err(reason)` inside `Ok` when there is none to give (no consent, revoked, expired).
async fn valid_access(
    vault: &Vault,
    issuer: Option<&str>,
    subject: &str,
    platform_id: &str,
) -> Result<Result<(assertion::Model, SecretString, DateTime<Utc>), String>, VaultError> {
    let now = vault.clock.now();
    let db = vault.store.db();
    let Some(row) = assertions::usable(db, issuer, subject, platform_id, now).await? else {
        return Ok(Err("no valid token for this person at this platform".into()));
    };
    let bundle = assertions::open(&vault.keyring, &row)?;
    let margin = chrono::Duration::seconds(vault.config.refresh_margin_secs as i64);
    if row.access_expires_at > now + margin {
        let access = bundle.access();
        let expires_at = row.access_expires_at;
        return Ok(Ok((row, access, expires_at)));
    }
    let Some(refresh) = bundle.refresh() else {
        return Ok(Err("the access token expired and there is no refresh token".into()));
    };
    let refresh = &refresh;
    let renewed =
        crate::incident::with_client(vault, &row.platform_id, |client| async move { client.refresh(refresh).await })
            .await?;
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
        return Ok(Err("the consent ended".into()));
    }
    Ok(Ok((row, next.access(), renewed.access_expires_at)))
}

async fn token_for(vault: &Vault, view_id: &str, request: &TokenRequest) -> Result<TokenReply, VaultError> {
    let session_id = required_session(request.session_id.as_deref())?;
    let db = vault.store.db();
    if let Err(reason) =
        session_of_view(db, view_id, session_id, request.issuer.as_deref(), &request.subject, &request.platform_id)
            .await?
    {
        return Ok(TokenReply::NotFound(reason));
    }
    let (row, access, expires_at) =
        match valid_access(vault, request.issuer.as_deref(), &request.subject, &request.platform_id).await? {
            Ok(found) => found,
            Err(reason) => return Ok(TokenReply::NotFound(reason)),
        };
    let now = vault.clock.now();
    let sealed = custodian_crypto::seal_to(&request.reply_key, access.expose_secret().as_bytes())?;

    // A token handed out is the person's platform being used: activity for the ledger.
    let seen = ActivitySeenV1 {
        issuer: row.issuer.clone(),
        subject: row.subject.clone(),
        platform_id: row.platform_id.clone(),
    };
    let event = CloudEvent::new(SOURCE, now, seen);
    let txn = vault.store.begin_write().await?;
    // Under the person's consent lock, which a revocation takes before it reads their
    // assertions and sessions: either the revocation came first and this assertion is taken
    // (nothing handed out), or this session is on record before the revocation looks.
    locks::hold(&txn, &[LockOn::Consent { issuer: &row.issuer, subject: &row.subject, platform_id: &row.platform_id }])
        .await?;
    if !still_unrevoked(&txn, &row.assertion_id, now).await? {
        return Ok(TokenReply::NotFound("the consent ended".into()));
    }
    // The session is on record before the token leaves, in the step that hands it out, with
    // the assertion the token is of: a revocation finds it whatever the view does next.
    if let Err(reason) = record_session(&txn, view_id, session_id, &row, expires_at, now).await? {
        return Ok(TokenReply::NotFound(reason));
    }
    outbox::enqueue(&txn, SERVICE, vec![custodian_bus::outbox_row(subjects::ACTIVITY_SEEN, &event)], now).await?;
    txn.commit().await?;
    vault.relay.wake();
    vault.metrics.tokens_handed_out.inc();
    Ok(TokenReply::Token { sealed_access_token: sealed, expires_at, acr: row.acr, issuer: row.issuer })
}

pub(crate) async fn hok(vault: &Vault, view_id: &str, request: Result<HokRequest, String>) -> HokReply {
    let request = match request {
        Ok(r) => r,
        Err(e) => return HokReply::Error(e),
    };
    match exchange(vault, view_id, &request).await {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(%view_id, platform_id = %request.platform_id, error = %e, "no holder-of-key token handed out");
            HokReply::Error(e.to_string())
        }
    }
}

fn required_session(session_id: Option<&str>) -> Result<&str, VaultError> {
    match session_id {
        Some(id) if !id.is_empty() && id.len() <= 128 && !id.chars().any(char::is_control) => Ok(id),
        Some(_) => {
            Err(VaultError::Invalid("session_id must be a non-empty identifier of at most 128 characters".into()))
        }
        None => Err(VaultError::Invalid(
            "name the view's session the token is for (session_id): the vault hands a view tokens only for a \
             session of its own"
                .into(),
        )),
    }
}

/// The session, if on record: `Err(reason)` when it is not an open session of this view for
/// this person at this platform (another view's or person's, closed, or wiped).
async fn session_of_view<C: ConnectionTrait>(
    conn: &C,
    view_id: &str,
    session_id: &str,
    issuer: Option<&str>,
    subject: &str,
    platform_id: &str,
) -> Result<Result<Option<view_session::Model>, String>, VaultError> {
    let Some(session) = view_session::Entity::find_by_id(session_id).one(conn).await? else {
        return Ok(Ok(None));
    };
    let same_person = session.subject == subject
        && session.platform_id == platform_id
        && issuer.is_none_or(|issuer| session.issuer == issuer);
    if session.view_id != view_id || !same_person {
        return Ok(Err(format!("session {session_id} is not a session of this view for this person")));
    }
    if session.closed_at.is_some() || session.wipe_id.is_some() {
        return Ok(Err(format!("session {session_id} was closed or wiped")));
    }
    Ok(Ok(Some(session)))
}

/// Is the assertion still there, unrevoked and unexpired?
async fn still_unrevoked<C: ConnectionTrait>(
    conn: &C,
    assertion_id: &str,
    now: DateTime<Utc>,
) -> Result<bool, VaultError> {
    Ok(assertion::Entity::find_by_id(assertion_id)
        .filter(assertion::Column::RevocationId.is_null())
        .filter(assertion::Column::ExpiresAt.gt(now))
        .one(conn)
        .await?
        .is_some())
}

/// Records the view's session for the token about to be handed out (its data may live until
/// the token expires), or extends the one on record to the new token's expiry.
async fn record_session(
    txn: &DatabaseTransaction,
    view_id: &str,
    session_id: &str,
    assertion: &assertion::Model,
    token_expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Result<(), String>, VaultError> {
    let row = view_session::ActiveModel {
        session_id: Set(session_id.to_owned()),
        view_id: Set(view_id.to_owned()),
        issuer: Set(assertion.issuer.clone()),
        subject: Set(assertion.subject.clone()),
        platform_id: Set(assertion.platform_id.clone()),
        expires_at: Set(token_expires_at),
        opened_at: Set(now),
        closed_at: Set(None),
        wipe_id: Set(None),
        wiped_at: Set(None),
        assertion_id: Set(Some(assertion.assertion_id.clone())),
    };
    let inserted = view_session::Entity::insert(row)
        .on_conflict(OnConflict::column(view_session::Column::SessionId).do_nothing().to_owned())
        .exec_without_returning(txn)
        .await?;
    if inserted == 1 {
        return Ok(Ok(()));
    }
    if let Err(reason) =
        session_of_view(txn, view_id, session_id, Some(&assertion.issuer), &assertion.subject, &assertion.platform_id)
            .await?
    {
        return Ok(Err(reason));
    }
    // Now of this assertion (a session only announced, or one whose earlier token expired with
    // the data it fetched), and held until this token expires.
    view_session::Entity::update_many()
        .col_expr(view_session::Column::AssertionId, Some(assertion.assertion_id.clone()).into())
        .filter(view_session::Column::SessionId.eq(session_id))
        .exec(txn)
        .await?;
    view_session::Entity::update_many()
        .col_expr(view_session::Column::ExpiresAt, token_expires_at.into())
        .filter(view_session::Column::SessionId.eq(session_id))
        .filter(view_session::Column::ExpiresAt.lt(token_expires_at))
        .exec(txn)
        .await?;
    Ok(Ok(()))
}

fn token_type_urn(kind: HokTokenType) -> &'static str {
    match kind {
        HokTokenType::Saml1 => "urn:ietf:params:oauth:token-type:saml1",
        HokTokenType::Saml2 => "urn:ietf:params:oauth:token-type:saml2",
    }
}

/// The assertion's id: `AssertionID` (SAML 1.1) or `ID` (SAML 2.0) on the root element.
pub(crate) fn saml_assertion_id(xml: &str) -> Option<String> {
    let root_end = xml.find('>')?;
    let root = &xml[..root_end];
    for attr in [" AssertionID=\"", " ID=\""] {
        if let Some(start) = root.find(attr) {
            let rest = &root[start + attr.len()..];
            return rest.find('"').map(|end| rest[..end].to_owned()).filter(|id| !id.is_empty());
        }
    }
    None
}

async fn exchange(vault: &Vault, view_id: &str, request: &HokRequest) -> Result<HokReply, VaultError> {
    let check = |field: &str, v: &str| {
        if v.is_empty() || v.len() > 512 || v.chars().any(char::is_control) {
            Err(VaultError::Invalid(format!("{field} must be a non-empty identifier")))
        } else {
            Ok(())
        }
    };
    check("caller_identity", &request.caller_identity)?;
    check("service", &request.service)?;
    let session_id = required_session(request.session_id.as_deref())?;
    let db = vault.store.db();
    match session_of_view(db, view_id, session_id, request.issuer.as_deref(), &request.subject, &request.platform_id)
        .await?
    {
        Ok(Some(_)) => {}
        Ok(None) => return Ok(HokReply::NotFound(format!("session {session_id} is not an open session of this view"))),
        Err(reason) => return Ok(HokReply::NotFound(reason)),
    }
    let (row, access, _) =
        match valid_access(vault, request.issuer.as_deref(), &request.subject, &request.platform_id).await? {
            Ok(found) => found,
            Err(reason) => return Ok(HokReply::NotFound(reason)),
        };
    let access_ref = &access;
    let exchanged = crate::incident::with_client(vault, &row.platform_id, |client| async move {
        client.exchange_token(access_ref, token_type_urn(request.token_type)).await
    })
    .await?;
    drop(access);
    let xml = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(exchanged.token.expose_secret().trim_end_matches('='))
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| VaultError::Invalid("the OP's SAML assertion is not base64url XML".into()))?;
    let assertion_id =
        saml_assertion_id(&xml).ok_or_else(|| VaultError::Invalid("the OP's SAML assertion has no id".into()))?;

    let now = vault.clock.now();
    let used = TokenHokUsedV1 {
        platform_id: row.platform_id.clone(),
        caller_identity: request.caller_identity.clone(),
        caller_organisation: request.caller_organisation.clone(),
        subject: Some(row.subject.clone()),
        service: request.service.clone(),
        assertion_id: assertion_id.clone(),
        token_type: request.token_type,
        valid_until: exchanged.expires_at,
        purpose: request.purpose.clone(),
    };
    let event = CloudEvent::new(SOURCE, now, used);
    custodian_events::EventData::validate(&event.data).map_err(|e| VaultError::Invalid(e.to_string()))?;
    // Logged (committed) before handed out.
    let txn = vault.store.begin_write().await?;
    outbox::enqueue(&txn, SERVICE, vec![custodian_bus::outbox_row(subjects::TOKEN_HOK_USED, &event)], now).await?;
    txn.commit().await?;
    vault.relay.wake();
    let sealed = custodian_crypto::seal_to(&request.reply_key, exchanged.token.expose_secret().as_bytes())?;
    tracing::info!(platform_id = %row.platform_id, assertion_id = %assertion_id, service = %request.service, "holder-of-key token handed out");
    Ok(HokReply::Token {
        sealed_assertion: sealed,
        assertion_id,
        valid_until: exchanged.expires_at,
        event_id: event.id,
    })
}

#[cfg(test)]
mod tests {
    use super::saml_assertion_id;

    #[test]
    fn reads_the_assertion_id_of_either_saml_version() {
        assert_eq!(
            saml_assertion_id(r#"<saml:Assertion MajorVersion="1" AssertionID="_abc" Issuer="x"><a ID="no"/>"#)
                .as_deref(),
            Some("_abc")
        );
        assert_eq!(saml_assertion_id(r#"<saml2:Assertion Version="2.0" ID="_def">"#).as_deref(), Some("_def"));
        assert_eq!(saml_assertion_id(r#"<x><y ID="_nested"/></x>"#), None);
        assert_eq!(saml_assertion_id(r#"<x ID="">"#), None);
    }
}
