//! The only types that cross a process boundary in Custodian.
//!
//! Every event is a CloudEvents 1.0 envelope in structured JSON mode whose `data` is one of
//! the typed payloads of [`payloads`]. Decoding is strict on purpose: an unknown attribute or
//! data field is an error, so nothing but identifiers can slip into storage (data
//! minimisation beats tolerant readers here). A new field means a new `…V2` type.

pub mod audit;
mod envelope;
mod error;
pub mod incident;
pub mod payloads;
pub mod queries;
pub mod replay;
pub mod subjects;
pub mod vault;

pub use envelope::{
    BATCH_CONTENT_TYPE, CONTENT_TYPE, CloudEvent, DATA_CONTENT_TYPE, EventData, LifecycleEvent, SPEC_VERSION,
    structured_from_binary,
};
pub use error::DecodeError;
pub use payloads::*;

/// Key of a consent: the OP that knows the person, the person's pseudonymous `sub` there,
/// and the platform (OIDC `client_id`) they consented to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ConsentKey {
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
}

impl ConsentKey {
    pub fn new(issuer: impl Into<String>, subject: impl Into<String>, platform_id: impl Into<String>) -> Self {
        Self { issuer: issuer.into(), subject: subject.into(), platform_id: platform_id.into() }
    }

    /// A stable, opaque digest of the key (hex SHA-256 is done by the store; this is the
    /// canonical byte form it hashes). NUL cannot occur in validated identifiers.
    pub fn canonical(&self) -> String {
        format!("{}\u{0}{}\u{0}{}", self.issuer, self.subject, self.platform_id)
    }
}

/// How far past the receiver's clock an event may be dated. Beyond it the event is refused
/// (400 at the gateway, a dead letter on the bus): a fact dated in the far future would
/// outrank every later revocation or grant.
pub const MAX_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// Deterministic event id derived from a parent id and a purpose, so that re-running the
/// same work publishes nothing new (JetStream de-duplicates on `Nats-Msg-Id`).
///
/// Under the deployment's id key (see [`install_id_key`]) it is an HMAC-SHA256 of the purpose
/// and the parent: no one without the key can compute the id of an event Custodian is about to
/// publish, so no publisher into the stream (a view choosing its own `Nats-Msg-Id`) can make
/// the stream's de-duplication swallow it.
pub fn derived_event_id(purpose: &str, parent: &str) -> String {
    keyed_id(&ID_NAMESPACE, "derived", purpose, parent)
}

/// The id under which Custodian keeps an event that came from outside (a platform's, over
/// the gateway): derived from who sent it and the id it chose, in a domain of its own. So an
/// id a caller chooses never equals one of Custodian's own: it cannot make the stream's
/// de-duplication, an inbox or the audit chain take one of Custodian's events for its own.
/// The same caller re-sending the same id gets the same id (its retries stay idempotent);
/// under the deployment's key no one else can compute it.
pub fn outside_event_id(caller: &str, their_id: &str) -> String {
    keyed_id(&OUTSIDE_NAMESPACE, "outside", caller, their_id)
}

/// The deployment's secret for ids, installed once per process from the database (the store
/// does it when it connects): every replica of every service derives the same ids.
static ID_KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();

/// Makes this process derive ids under `key`. The first key installed stays (a process serves
/// one deployment); `false` when another one already is in force.
pub fn install_id_key(key: [u8; 32]) -> bool {
    *ID_KEY.get_or_init(|| key) == key
}

/// Whether ids are derived under a deployment key (else from public namespaces: only in unit
/// tests and tools that have no database).
pub fn ids_are_keyed() -> bool {
    ID_KEY.get().is_some()
}

fn keyed_id(namespace: &uuid::Uuid, domain: &str, first: &str, second: &str) -> String {
    let Some(key) = ID_KEY.get() else {
        return uuid::Uuid::new_v5(namespace, format!("{first}\u{0}{second}").as_bytes()).to_string();
    };
    use hmac::Mac as _;
    // A key shorter than SHA-256's block is zero-padded to it (RFC 2104), here explicitly.
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new(&block.into());
    for part in [domain, first, second] {
        mac.update(part.as_bytes());
        mac.update(&[0]);
    }
    let digest = mac.finalize().into_bytes();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid().to_string()
}

/// Namespace of the ids of events from outside (without a key).
const OUTSIDE_NAMESPACE: uuid::Uuid = uuid::uuid!("b3c8a6e2-57d4-5f0e-8c19-4e2a7d6b1f93");

const ID_NAMESPACE: uuid::Uuid = uuid::uuid!("6f1d2c8e-3c1a-5d7b-9a41-0c7e2b5f4a10");
