//! The platforms' client credentials, one sealed row per version. Version 1 comes from the
//! configuration; rotations add the next. The vault gets the current secret sealed to it.

use chrono::{DateTime, Utc};
use custodian_crypto::Envelope;
use custodian_events::incident::{CredentialReply, CredentialRequest};
use custodian_store::entities::credential;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{IncidentError, Incidents};

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(crate) struct Secrets {
    pub client_secret: String,
    pub registration_access_token: String,
    pub registration_client_uri: String,
}

/// The associated data of a credential version (binds the ciphertext to platform and version).
pub fn aad(platform_id: &str, version: i32) -> Vec<u8> {
    format!("custodian:credential:{platform_id}:{version}").into_bytes()
}

pub(crate) fn id(platform_id: &str, version: i32) -> String {
    format!("{platform_id}:{version}")
}

pub(crate) async fn store<C: ConnectionTrait>(
    incidents: &Incidents,
    conn: &C,
    platform_id: &str,
    version: i32,
    state: &str,
    secrets: &Secrets,
    now: DateTime<Utc>,
) -> Result<(), IncidentError> {
    let plain = zeroize::Zeroizing::new(serde_json::to_vec(secrets).unwrap_or_default());
    let sealed = incidents.keyring.seal(&plain, &aad(platform_id, version));
    credential::Entity::insert(credential::ActiveModel {
        id: Set(id(platform_id, version)),
        platform_id: Set(platform_id.to_owned()),
        version: Set(version),
        state: Set(state.to_owned()),
        key_id: Set(sealed.key_id),
        wrapped_key: Set(sealed.wrapped_key),
        ciphertext: Set(sealed.ciphertext),
        created_at: Set(now),
        not_after: Set(None),
    })
    .on_conflict(OnConflict::column(credential::Column::Id).do_nothing().to_owned())
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

pub(crate) fn open(incidents: &Incidents, row: &credential::Model) -> Result<Secrets, IncidentError> {
    let envelope = Envelope {
        key_id: row.key_id.clone(),
        wrapped_key: row.wrapped_key.clone(),
        ciphertext: row.ciphertext.clone(),
    };
    let plain = incidents.keyring.open(&envelope, &aad(&row.platform_id, row.version))?;
    serde_json::from_slice(&plain).map_err(|_| IncidentError::Failed("credential record unreadable".into()))
}

pub(crate) async fn current<C: ConnectionTrait>(
    conn: &C,
    platform_id: &str,
) -> Result<Option<credential::Model>, sea_orm::DbErr> {
    credential::Entity::find()
        .filter(credential::Column::PlatformId.eq(platform_id))
        .filter(credential::Column::State.eq("current"))
        .order_by_desc(credential::Column::Version)
        .one(conn)
        .await
}

pub(crate) async fn by_version<C: ConnectionTrait>(
    conn: &C,
    platform_id: &str,
    version: i32,
) -> Result<Option<credential::Model>, sea_orm::DbErr> {
    credential::Entity::find_by_id(id(platform_id, version)).one(conn).await
}

/// Version 1 of every configured platform, unless it has versions already.
/// Stores each configured platform's credentials as version 1 if none is stored yet. A
/// database that is busy or away is waited out (doubling pauses up to 5 s), not a reason to
/// stop the service.
pub(crate) async fn seed(
    incidents: &Incidents,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), IncidentError> {
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        match seed_once(incidents).await {
            Err(IncidentError::Db(e)) => {
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "credentials not stored yet; will retry");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            done => return done,
        }
    }
}

async fn seed_once(incidents: &Incidents) -> Result<(), IncidentError> {
    let now = incidents.clock.now();
    for platform in &incidents.config.platforms {
        let secrets = Secrets {
            client_secret: platform.client_secret.expose_secret().to_owned(),
            registration_access_token: platform.registration_access_token.expose_secret().to_owned(),
            registration_client_uri: platform.registration_client_uri.clone(),
        };
        store(incidents, incidents.store.db(), &platform.platform_id, 1, "current", &secrets, now).await?;
    }
    Ok(())
}

pub(crate) async fn hand_over(incidents: &Incidents, request: Result<CredentialRequest, String>) -> CredentialReply {
    let request = match request {
        Ok(r) => r,
        Err(e) => return CredentialReply::Error(e),
    };
    let row = match current(incidents.store.db(), &request.platform_id).await {
        Ok(Some(row)) => row,
        Ok(None) => return CredentialReply::NotFound,
        Err(e) => return CredentialReply::Error(e.to_string()),
    };
    let secrets = match open(incidents, &row) {
        Ok(s) => s,
        Err(e) => return CredentialReply::Error(e.to_string()),
    };
    let secret = SecretString::from(secrets.client_secret.clone());
    match custodian_crypto::seal_to(&request.reply_key, secret.expose_secret().as_bytes()) {
        Ok(sealed) => {
            tracing::info!(platform_id = %request.platform_id, version = row.version, "client secret handed over (sealed)");
            CredentialReply::Sealed { version: row.version, sealed_client_secret: sealed }
        }
        Err(e) => CredentialReply::Error(e.to_string()),
    }
}
