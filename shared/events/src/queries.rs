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
    /// The query itself is wrong: asking again will not help.
    Error(String),
    /// The ledger could not read its database (e.g. while it restarts): ask again.
    Unavailable(String),
}

/// Idle consents of one platform, for the inactivity sweep (answered by the consent service).
pub const IDLE_CONSENTS: &str = "custodian.query.idle_consents";
/// Platforms that have granted consents (answered by the consent service).
pub const PLATFORMS: &str = "custodian.query.platforms";
/// The deployment's health as the audit service last read it (consumers, dead letters,
/// outboxes), for the operators' console.
pub const HEALTH: &str = "custodian.query.health";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthQuery {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthView {
    pub read_at: DateTime<Utc>,
    pub consumers: Vec<ConsumerHealth>,
    /// Dead letters the stream holds, per subject.
    pub dead_letters: Vec<(String, u64)>,
    pub outboxes: Vec<OutboxHealth>,
    /// The latest dead letters, newest first, with their reasons (from the audit chain).
    #[serde(default)]
    pub recent_dead_letters: Vec<DeadLetterSummary>,
}

/// One dead letter as operators see it: where it went, what it was, why it was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterSummary {
    /// The dead letter's own event id (what a replay names).
    #[serde(default)]
    pub id: String,
    pub recorded_at: DateTime<Utc>,
    /// `lifecycle.deadletter.<service>`: the service that refused it.
    pub subject: String,
    pub original_subject: String,
    pub original_id: Option<String>,
    pub reason: String,
    /// Operators' replays of it, oldest first.
    #[serde(default)]
    pub replays: Vec<ReplaySummary>,
}

/// One replay of a dead letter, from the audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaySummary {
    pub recorded_at: DateTime<Utc>,
    pub operator: String,
    pub outcome: crate::payloads::ReplayOutcome,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerHealth {
    pub name: String,
    /// Who holds the lease, for replicas that take turns.
    pub leader: Option<String>,
    pub takes_turns: bool,
    pub pending: u64,
    pub unacknowledged: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxHealth {
    pub publisher: String,
    pub waiting: u64,
    pub oldest: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthReply {
    Health(HealthView),
    /// Not read yet, or the last read failed.
    Unavailable(String),
}

/// One sweep's progress (answered by the sweeper).
pub const SWEEPS: &str = "custodian.query.sweeps";

/// Keyset position in the sweep's `(platform_id, last_seen_day, consent_key)` index: the last
/// consent returned (its day is that of `last_seen_at`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdleCursor {
    pub last_seen_at: DateTime<Utc>,
    pub consent_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdleQuery {
    pub platform_id: String,
    /// Granted consents last seen before this instant.
    pub idle_before: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<IdleCursor>,
    pub limit: u64,
    /// Also count every match (for a progress bar); costs one more index scan.
    #[serde(default)]
    pub with_total: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdleConsent {
    pub consent_key: String,
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
    pub last_seen_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleReply {
    Page { consents: Vec<IdleConsent>, total: Option<u64> },
    Platforms(Vec<String>),
    Error(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepQuery {
    /// One sweep; empty with `recent` for a list.
    #[serde(default)]
    pub sweep_id: String,
    /// The latest sweeps, newest first, at most this many (the operators' console).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepView {
    pub sweep_id: String,
    pub platform_id: Option<String>,
    pub dry_run: bool,
    /// `pending`, `running`, `finished`.
    pub state: String,
    pub idle_before: DateTime<Utc>,
    pub scanned: u64,
    pub expired: u64,
    /// Idle consents found when the sweep started (for progress).
    pub total: Option<u64>,
    pub requested_by: String,
    pub holder: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepReply {
    Sweep(SweepView),
    Sweeps(Vec<SweepView>),
    NotFound,
    Error(String),
}
