//! Request/reply with the audit service (core NATS). The privacy log holds real identities:
//! its answer is sealed to a one-time key of the asker, so it never crosses NATS in clear.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const PRIVACY_LOG: &str = "custodian.query.privacy_log";
/// The record of the privacy log's reads: `custodian.query.privacy_log_reads.<asker>`.
pub const PRIVACY_LOG_READS: &str = "custodian.query.privacy_log_reads";
/// The most reads one answer lists (and the default).
pub const MAX_READS_LISTED: u64 = 1000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyLogQuery {
    #[serde(default)]
    pub platform_id: Option<String>,
    #[serde(default)]
    pub from: Option<DateTime<Utc>>,
    #[serde(default)]
    pub to: Option<DateTime<Utc>>,
    #[serde(default)]
    pub limit: Option<u64>,
    /// Who asks: recorded by the audit service with the read, before it answers.
    pub asked_by: String,
    /// Base64 X25519 public key; the entries come back sealed to it.
    pub reply_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrivacyLogReply {
    /// Base64 sealed box of the JSON array of [`PrivacyLogEntry`].
    Sealed(String),
    Error(String),
}

/// One use of a holder-of-key token (seed §1.5): who, what, when, how, which assertion.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivacyLogEntry {
    pub event_id: String,
    pub audit_seq: i64,
    pub used_at: DateTime<Utc>,
    pub platform_id: String,
    pub caller_identity: String,
    pub caller_organisation: Option<String>,
    pub subject: Option<String>,
    pub service: String,
    pub assertion_id: String,
    pub token_type: String,
    pub valid_until: DateTime<Utc>,
    pub purpose: Option<String>,
}

impl std::fmt::Debug for PrivacyLogEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivacyLogEntry")
            .field("event_id", &self.event_id)
            .field("caller_identity", &"[REDACTED]")
            .field("platform_id", &self.platform_id)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// The latest reads of the privacy log, newest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyLogReadsQuery {
    #[serde(default)]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrivacyLogReadsReply {
    Reads(Vec<PrivacyLogRead>),
    Error(String),
}

/// One read of the privacy log: who read, through which service, what they asked, and how
/// many entries they were shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivacyLogRead {
    pub read_id: String,
    pub read_at: DateTime<Utc>,
    pub reader: String,
    pub via: String,
    pub platform_id: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: u64,
    pub entries: u64,
}
