//! Request/reply over core NATS (not the stream): read-only questions one service answers
//! for another, e.g. the gateway asking the consent ledger. Subjects start with
//! `custodian.query.`, outside `lifecycle.>`, so queries are never stored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const CONSENTS: &str = "custodian.query.consents";

/// Filter on the consent ledger; every field narrows the result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Include each consent's history (for `custodian consents show`).
    #[serde(default)]
    pub with_history: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentView {
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
    /// `granted`, `revoked` or `expired`.
    pub state: String,
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    pub granted_at: Option<DateTime<Utc>>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub event_id: String,
    pub event_type: String,
    pub event_time: DateTime<Utc>,
    pub state_after: String,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentReply {
    Consents(Vec<ConsentView>),
    Error(String),
}
