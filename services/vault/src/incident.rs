//! The vault's part in incident response: containment (every token of a platform, or of one
//! person there, revoked at the OP and every view session wiped — the same machinery as a
//! revocation, one revocation per person, ids `incident:<incident_id>:<person>`), the
//! exposure counts for the DPO's notification, and switching a platform to a rotated client
//! secret without restart (fetched sealed from the incident service, never in an event).

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use custodian_events::incident::{
    ContainmentQuery, ContainmentReply, ContainmentView, CredentialReply, CredentialRequest, ExposureQuery,
    ExposureReply, ExposureView,
};
use custodian_events::{CloudEvent, CredentialRotatedV1, IncidentContainV1};
use custodian_store::entities::{assertion, pending_wipe, revocation, revocation_token, view_session};
use custodian_store::inbox;
use sea_orm::{ColumnTrait, DatabaseTransaction, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect};
use secrecy::SecretString;

use crate::handler::{Effects, RevocationStart, begin_revocation};
use crate::{Vault, VaultError};

const CONTAIN_CONSUMER: &str = "vault-contain";

use custodian_events::incident::contain_event_id;

fn revocation_prefix(incident_id: &str) -> String {
    format!("incident:{incident_id}:")
}

pub(crate) async fn contain(
    vault: &Vault,
    txn: &DatabaseTransaction,
    event: &CloudEvent<IncidentContainV1>,
    now: DateTime<Utc>,
    effects: &mut Effects,
) -> Result<(), VaultError> {
    let data = &event.data;
    // Every person with tokens or open sessions at the platform (or just the one named).
    let mut people: BTreeSet<(String, String)> = BTreeSet::new();
    let mut tokens = assertion::Entity::find()
        .select_only()
        .column(assertion::Column::Issuer)
        .column(assertion::Column::Subject)
        .filter(assertion::Column::PlatformId.eq(data.platform_id.clone()))
        .filter(assertion::Column::RevocationId.is_null());
    let mut sessions = view_session::Entity::find()
        .select_only()
        .column(view_session::Column::Issuer)
        .column(view_session::Column::Subject)
        .filter(view_session::Column::PlatformId.eq(data.platform_id.clone()))
        .filter(view_session::Column::ClosedAt.is_null())
        .filter(view_session::Column::WipedAt.is_null())
        .filter(view_session::Column::WipeId.is_null());
    if let Some(subject) = &data.subject {
        tokens = tokens.filter(assertion::Column::Subject.eq(subject.clone()));
        sessions = sessions.filter(view_session::Column::Subject.eq(subject.clone()));
    }
    if let Some(issuer) = &data.issuer {
        tokens = tokens.filter(assertion::Column::Issuer.eq(issuer.clone()));
        sessions = sessions.filter(view_session::Column::Issuer.eq(issuer.clone()));
    }
    people.extend(tokens.distinct().into_tuple::<(String, String)>().all(txn).await?);
    people.extend(sessions.distinct().into_tuple::<(String, String)>().all(txn).await?);
    let mut started = 0;
    for (issuer, subject) in &people {
        let person = custodian_store::consent_key_digest(&format!("{issuer}\n{subject}"));
        let start = RevocationStart {
            revocation_id: format!("{}{}", revocation_prefix(&data.incident_id), &person[..32]),
            ended_event_id: format!("{}:{}", event.id, &person[..32]),
            issuer: issuer.clone(),
            subject: subject.clone(),
            platform_id: data.platform_id.clone(),
            reason: "incident".into(),
            wipe_reason: "incident",
            until: now,
        };
        if begin_revocation(vault, txn, &start, now, effects).await? {
            started += 1;
        }
    }
    // Its event from the stream, after its nudge took the people over: their revocations
    // (found by the incident's prefix, since their tokens are taken now) may be done.
    if !effects.from_nudges {
        let awaiting: Vec<String> = revocation::Entity::find()
            .select_only()
            .column(revocation::Column::RevocationId)
            .filter(revocation::Column::RevocationId.starts_with(revocation_prefix(&data.incident_id)))
            .filter(revocation::Column::AwaitsStream.eq(true))
            .into_tuple()
            .all(txn)
            .await?;
        if !awaiting.is_empty() {
            revocation::Entity::update_many()
                .col_expr(revocation::Column::AwaitsStream, false.into())
                .filter(revocation::Column::RevocationId.is_in(awaiting.clone()))
                .exec(txn)
                .await?;
            effects.touched_revocations.extend(awaiting);
        }
    }
    // Taken over, even when nobody was concerned: the incident service waits for this mark.
    inbox::record_new(txn, CONTAIN_CONSUMER, &[event.id.as_str()], now).await?;
    effects.new_work = true;
    tracing::info!(incident_id = %data.incident_id, platform_id = %data.platform_id, people = people.len(), started, "containment started");
    Ok(())
}

pub(crate) async fn containment(vault: &Vault, query: Result<ContainmentQuery, String>) -> ContainmentReply {
    let query = match query {
        Ok(q) => q,
        Err(e) => return ContainmentReply::Error(e),
    };
    match containment_view(vault, &query.incident_id).await {
        Ok(view) => ContainmentReply::Containment(view),
        Err(e) => ContainmentReply::Error(e.to_string()),
    }
}

async fn containment_view(vault: &Vault, incident_id: &str) -> Result<ContainmentView, sea_orm::DbErr> {
    let db = vault.store.db();
    let taken_over = custodian_store::entities::inbox::Entity::find()
        .filter(custodian_store::entities::inbox::Column::Consumer.eq(CONTAIN_CONSUMER))
        .filter(custodian_store::entities::inbox::Column::EventId.eq(contain_event_id(incident_id)))
        .count(db)
        .await?
        > 0;
    let prefix = format!("{}%", revocation_prefix(incident_id));
    let revocations =
        revocation::Entity::find().filter(revocation::Column::RevocationId.like(prefix.clone())).count(db).await?;
    let pending = revocation::Entity::find()
        .filter(revocation::Column::RevocationId.like(prefix.clone()))
        .filter(revocation::Column::State.eq("pending"))
        .count(db)
        .await?;
    let tokens_revoked = revocation_token::Entity::find()
        .filter(revocation_token::Column::RevocationId.like(prefix.clone()))
        .filter(revocation_token::Column::Outcome.ne("pending"))
        .count(db)
        .await?;
    let wipes: Vec<pending_wipe::Model> = pending_wipe::Entity::find()
        .filter(pending_wipe::Column::RevocationId.like(prefix))
        .filter(pending_wipe::Column::State.ne("pending"))
        .all(db)
        .await?;
    let sessions_wiped =
        wipes.iter().map(|w| serde_json::from_str::<Vec<String>>(&w.session_ids).map_or(0, |v| v.len() as u64)).sum();
    Ok(ContainmentView { taken_over, revocations, pending, tokens_revoked, sessions_wiped })
}

pub(crate) async fn exposure(vault: &Vault, query: Result<ExposureQuery, String>) -> ExposureReply {
    let query = match query {
        Ok(q) => q,
        Err(e) => return ExposureReply::Error(e),
    };
    let db = vault.store.db();
    let result: Result<ExposureView, sea_orm::DbErr> = async {
        let mut tokens = assertion::Entity::find().filter(assertion::Column::PlatformId.eq(query.platform_id.clone()));
        let mut sessions = view_session::Entity::find()
            .filter(view_session::Column::PlatformId.eq(query.platform_id.clone()))
            .filter(view_session::Column::ClosedAt.is_null())
            .filter(view_session::Column::WipedAt.is_null());
        if let Some(subject) = &query.subject {
            tokens = tokens.filter(assertion::Column::Subject.eq(subject.clone()));
            sessions = sessions.filter(view_session::Column::Subject.eq(subject.clone()));
        }
        let token_records = tokens.clone().count(db).await?;
        let open_sessions = sessions.clone().count(db).await?;
        let mut people: BTreeSet<(String, String)> = BTreeSet::new();
        people.extend(
            tokens
                .select_only()
                .column(assertion::Column::Issuer)
                .column(assertion::Column::Subject)
                .distinct()
                .into_tuple::<(String, String)>()
                .all(db)
                .await?,
        );
        people.extend(
            sessions
                .select_only()
                .column(view_session::Column::Issuer)
                .column(view_session::Column::Subject)
                .distinct()
                .into_tuple::<(String, String)>()
                .all(db)
                .await?,
        );
        Ok(ExposureView { people: people.len() as u64, token_records, open_sessions })
    }
    .await;
    match result {
        Ok(view) => ExposureReply::Exposure(view),
        Err(e) => ExposureReply::Error(e.to_string()),
    }
}

/// After a rotation: fetch the new secret (sealed to us) and use it from now on.
pub(crate) async fn switch_secret(vault: &Vault, rotated: &CredentialRotatedV1) -> Result<(), VaultError> {
    if !vault.clients.knows(&rotated.platform_id) {
        return Ok(());
    }
    let version = fetch_current_secret(vault, &rotated.platform_id, Some(rotated.credential_version)).await?;
    tracing::info!(platform_id = %rotated.platform_id, version, "switched to the rotated client secret");
    Ok(())
}

/// Asks the incident service for the platform's current client secret (sealed to a one-time
/// key, never in clear on the bus) and switches the client to it. With `at_least`, an older
/// version is a transient error (the rotation's row is not visible yet). Returns the version.
async fn fetch_current_secret(vault: &Vault, platform_id: &str, at_least: Option<u32>) -> Result<i32, VaultError> {
    let key = custodian_crypto::ReplyKey::new();
    let request = CredentialRequest { platform_id: platform_id.to_owned(), reply_key: key.public_base64() };
    let reply: CredentialReply = custodian_bus::query(
        vault.bus.client(),
        custodian_events::incident::CREDENTIAL,
        &request,
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| VaultError::Transient(format!("the incident service did not hand over the current secret: {e}")))?;
    match reply {
        CredentialReply::Sealed { version, sealed_client_secret } => {
            if let Some(wanted) = at_least
                && i64::from(version) < i64::from(wanted)
            {
                return Err(VaultError::Transient(format!(
                    "credential version {wanted} not yet current (have {version})"
                )));
            }
            let plain = key.open(&sealed_client_secret)?;
            let secret =
                String::from_utf8(plain.to_vec()).map_err(|_| VaultError::Invalid("secret is not text".into()))?;
            vault
                .clients
                .set_secret(platform_id, SecretString::from(secret))
                .await
                .map_err(|e| VaultError::Transient(e.to_string()))?;
            Ok(version)
        }
        CredentialReply::NotFound => Err(VaultError::Transient("no credential for the platform yet".into())),
        CredentialReply::Error(e) => Err(VaultError::Transient(e)),
    }
}

/// Runs one call to the OP with the platform's client. When the OP refuses the client itself
/// (`invalid_client`: a rotation whose credential.rotated event this vault has not applied
/// yet), the current secret is fetched from the incident service and the call made once more,
/// so a rotation costs no failed sign-in or refresh. The OP authenticates the client before it
/// looks at the grant, so a refused code exchange has not used up the code.
pub(crate) async fn with_client<T, F, Fut>(vault: &Vault, platform_id: &str, call: F) -> Result<T, VaultError>
where
    F: Fn(custodian_oidc::OidcClient) -> Fut,
    Fut: Future<Output = Result<T, custodian_oidc::OidcError>>,
{
    let client = vault.clients.get(platform_id).await?;
    match call(client).await {
        Err(e) if e.is_client_refused() => {
            match fetch_current_secret(vault, platform_id, None).await {
                Ok(version) => {
                    tracing::info!(
                        platform_id,
                        version,
                        "the OP refused our client secret; retrying with the current one"
                    )
                }
                Err(fetch) => {
                    tracing::warn!(platform_id, error = %fetch, "the OP refused our client secret and no newer one was found");
                    return Err(e.into());
                }
            }
            let client = vault.clients.get(platform_id).await?;
            Ok(call(client).await?)
        }
        other => Ok(other?),
    }
}
