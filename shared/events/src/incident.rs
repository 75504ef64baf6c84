//! Request/reply around incidents (core NATS, not stored).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The id of an incident's containment command (the incident service publishes it, the vault
/// marks it taken over): derived, so both sides find it and a re-send is a duplicate.
pub fn contain_event_id(incident_id: &str) -> String {
    crate::derived_event_id("incident.contain", incident_id)
}

/// The incident service: one incident with its timeline.
pub const INCIDENTS: &str = "custodian.query.incidents";
/// The incident service: a platform's current client secret, sealed to the asker (the vault).
pub const CREDENTIAL: &str = "custodian.incident.credential";
/// The vault: how far the containment of an incident has got.
pub const CONTAINMENT: &str = "custodian.query.containment";
/// The vault: how many people and records an incident may concern (GDPR Art. 33(3)(a)).
pub const EXPOSURE: &str = "custodian.query.exposure";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentQuery {
    /// One incident; empty with `recent` for a list.
    #[serde(default)]
    pub incident_id: String,
    /// The latest incidents, newest first, at most this many (the operators' console).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentView {
    pub incident_id: String,
    pub kind: String,
    pub platform_id: String,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub summary: String,
    pub detected_at: DateTime<Utc>,
    pub reporter: String,
    /// `open` or `closed`.
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    pub steps: Vec<StepView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepView {
    pub step: String,
    /// `pending`, `done` or `skipped`.
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentReply {
    Incident(Box<IncidentView>),
    Incidents(Vec<IncidentView>),
    NotFound,
    Error(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRequest {
    pub platform_id: String,
    /// Base64 X25519 public key; the secret comes back sealed to it.
    pub reply_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialReply {
    Sealed { version: i32, sealed_client_secret: String },
    NotFound,
    Error(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainmentQuery {
    pub incident_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainmentView {
    /// The vault has taken the containment command over.
    pub taken_over: bool,
    pub revocations: u64,
    pub pending: u64,
    pub tokens_revoked: u64,
    pub sessions_wiped: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainmentReply {
    Containment(ContainmentView),
    Error(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposureQuery {
    pub platform_id: String,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposureView {
    /// Distinct people with tokens or open sessions at the platform.
    pub people: u64,
    /// Stored token records (assertions).
    pub token_records: u64,
    /// Open view sessions (data held in memory by views).
    pub open_sessions: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExposureReply {
    Exposure(ExposureView),
    Error(String),
}

/// The incident service: rotate a platform's client secret as planned (no incident).
pub const ROTATE: &str = "custodian.incident.rotate";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    pub platform_id: String,
    pub requested_by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotateReply {
    /// Registered; follow it like an incident (`custodian incident show <id>`).
    Started {
        rotation_id: String,
    },
    Error(String),
}
