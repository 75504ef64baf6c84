//! A person's tokens at one platform, sealed at rest. The plaintext is a small JSON
//! [`TokenBundle`] that lives in memory only while it is used, and is zeroed on drop.

use chrono::{DateTime, Utc};
use custodian_crypto::{Envelope, KeyRing};
use custodian_store::entities::assertion;
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::VaultError;

/// The tokens of one assertion, as sealed.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct TokenBundle {
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

impl std::fmt::Debug for TokenBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBundle").field("has_refresh_token", &self.refresh_token.is_some()).finish_non_exhaustive()
    }
}

impl TokenBundle {
    pub fn from_tokens(tokens: &custodian_oidc::Tokens) -> Self {
        Self {
            access_token: tokens.access_token.expose_secret().to_owned(),
            refresh_token: tokens.refresh_token.as_ref().map(|t| t.expose_secret().to_owned()),
            id_token: tokens.id_token.as_ref().map(|t| t.expose_secret().to_owned()),
        }
    }

    pub fn access(&self) -> SecretString {
        SecretString::from(self.access_token.clone())
    }

    pub fn refresh(&self) -> Option<SecretString> {
        self.refresh_token.clone().map(SecretString::from)
    }
}

/// Binds a ciphertext to its row: a row copied under another id does not decrypt.
pub fn assertion_aad(assertion_id: &str) -> Vec<u8> {
    format!("custodian:assertion:{assertion_id}").into_bytes()
}

pub fn seal(keyring: &KeyRing, assertion_id: &str, bundle: &TokenBundle) -> Envelope {
    let plaintext = zeroize::Zeroizing::new(serde_json::to_vec(bundle).unwrap_or_default());
    keyring.seal(&plaintext, &assertion_aad(assertion_id))
}

pub fn open(keyring: &KeyRing, row: &assertion::Model) -> Result<TokenBundle, VaultError> {
    let envelope = Envelope {
        key_id: row.key_id.clone(),
        wrapped_key: row.wrapped_key.clone(),
        ciphertext: row.ciphertext.clone(),
    };
    let plaintext = keyring.open(&envelope, &assertion_aad(&row.assertion_id))?;
    serde_json::from_slice(&plaintext).map_err(|_| VaultError::Invalid("sealed token bundle is not readable".into()))
}

pub struct NewAssertion<'a> {
    pub assertion_id: String,
    pub issuer: &'a str,
    pub subject: &'a str,
    pub platform_id: &'a str,
    pub acr: Option<String>,
    pub scopes: &'a [String],
    pub bundle: &'a TokenBundle,
    pub access_expires_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

pub async fn insert<C: ConnectionTrait>(
    conn: &C,
    keyring: &KeyRing,
    new: NewAssertion<'_>,
    now: DateTime<Utc>,
) -> Result<(), VaultError> {
    let sealed = seal(keyring, &new.assertion_id, new.bundle);
    assertion::Entity::insert(assertion::ActiveModel {
        assertion_id: Set(new.assertion_id),
        issuer: Set(new.issuer.to_owned()),
        subject: Set(new.subject.to_owned()),
        platform_id: Set(new.platform_id.to_owned()),
        acr: Set(new.acr),
        scopes: Set(serde_json::to_string(new.scopes).unwrap_or_else(|_| "[]".into())),
        key_id: Set(sealed.key_id),
        wrapped_key: Set(sealed.wrapped_key),
        ciphertext: Set(sealed.ciphertext),
        access_expires_at: Set(new.access_expires_at),
        expires_at: Set(new.expires_at),
        revocation_id: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .exec(conn)
    .await?;
    Ok(())
}

/// The newest assertion still usable for (issuer?, subject, platform).
pub async fn usable<C: ConnectionTrait>(
    conn: &C,
    issuer: Option<&str>,
    subject: &str,
    platform_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<assertion::Model>, VaultError> {
    let mut query = assertion::Entity::find()
        .filter(assertion::Column::Subject.eq(subject))
        .filter(assertion::Column::PlatformId.eq(platform_id))
        .filter(assertion::Column::RevocationId.is_null())
        .filter(assertion::Column::ExpiresAt.gt(now));
    if let Some(issuer) = issuer {
        query = query.filter(assertion::Column::Issuer.eq(issuer));
    }
    Ok(query.order_by_desc(assertion::Column::CreatedAt).one(conn).await?)
}

/// Stores renewed tokens in place (fresh data key), unless a revocation took the row meanwhile.
pub async fn replace_tokens<C: ConnectionTrait>(
    conn: &C,
    keyring: &KeyRing,
    row: &assertion::Model,
    bundle: &TokenBundle,
    access_expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, VaultError> {
    let sealed = seal(keyring, &row.assertion_id, bundle);
    let result = assertion::Entity::update_many()
        .col_expr(assertion::Column::KeyId, sealed.key_id.into())
        .col_expr(assertion::Column::WrappedKey, sealed.wrapped_key.into())
        .col_expr(assertion::Column::Ciphertext, sealed.ciphertext.into())
        .col_expr(assertion::Column::AccessExpiresAt, access_expires_at.into())
        .col_expr(assertion::Column::UpdatedAt, now.into())
        .filter(assertion::Column::AssertionId.eq(row.assertion_id.clone()))
        .filter(assertion::Column::RevocationId.is_null())
        .exec(conn)
        .await?;
    Ok(result.rows_affected == 1)
}
