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
pub mod subjects;
pub mod vault;

pub use envelope::{CONTENT_TYPE, CloudEvent, DATA_CONTENT_TYPE, EventData, LifecycleEvent, SPEC_VERSION};
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

/// Deterministic event id derived from a parent id and a purpose, so that re-running the
/// same work publishes nothing new (JetStream de-duplicates on `Nats-Msg-Id`).
pub fn derived_event_id(purpose: &str, parent: &str) -> String {
    uuid::Uuid::new_v5(&ID_NAMESPACE, format!("{purpose}\u{0}{parent}").as_bytes()).to_string()
}

/// The id under which Custodian keeps an event that came from outside (a platform's, over
/// the gateway): derived from who sent it and the id it chose, in a namespace of its own. So
/// an id a caller chooses never equals one of Custodian's own (each derived id is a UUIDv5 of
/// a purpose and a parent, a random one a UUIDv4): it cannot make the stream's
/// de-duplication, an inbox or the audit chain take one of Custodian's events for its own.
/// The same caller re-sending the same id gets the same id (its retries stay idempotent).
pub fn outside_event_id(caller: &str, their_id: &str) -> String {
    uuid::Uuid::new_v5(&OUTSIDE_NAMESPACE, format!("{caller}\u{0}{their_id}").as_bytes()).to_string()
}

/// Namespace of the ids of events from outside.
const OUTSIDE_NAMESPACE: uuid::Uuid = uuid::uuid!("b3c8a6e2-57d4-5f0e-8c19-4e2a7d6b1f93");

/// Namespace of every UUIDv5 Custodian derives.
const ID_NAMESPACE: uuid::Uuid = uuid::uuid!("6f1d2c8e-3c1a-5d7b-9a41-0c7e2b5f4a10");
