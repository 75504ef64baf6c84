//! One struct per subject of the wire contract (`contract.md`), version in the name.
//! Every struct denies unknown fields; [`crate::EventData::validate`] checks what serde cannot.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::envelope::EventData;
use crate::error::DecodeError;
use crate::subjects;

const MAX_ID_LEN: usize = 512;

/// An identifier: non-empty, bounded, printable. Identifiers are all events may carry.
fn check_id(field: &'static str, value: &str) -> Result<(), DecodeError> {
    if value.is_empty() {
        return Err(DecodeError::field(field, "must not be empty"));
    }
    // Counted in characters, as JSON Schema's maxLength (the published contract) counts.
    if value.chars().count() > MAX_ID_LEN {
        return Err(DecodeError::field(field, format!("longer than {MAX_ID_LEN} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(DecodeError::field(field, "contains control characters"));
    }
    Ok(())
}

fn check_issuer(value: &str) -> Result<(), DecodeError> {
    check_id("issuer", value)?;
    if !(value.starts_with("https://") || value.starts_with("http://")) {
        return Err(DecodeError::field("issuer", "must be an http(s) URL"));
    }
    Ok(())
}

fn check_key(issuer: &str, subject: &str, platform_id: &str) -> Result<(), DecodeError> {
    check_issuer(issuer)?;
    check_id("subject", subject)?;
    check_id("platform_id", platform_id)
}

fn check_ids(field: &'static str, values: &[String]) -> Result<(), DecodeError> {
    if values.is_empty() {
        return Err(DecodeError::field(field, "must not be empty"));
    }
    values.iter().try_for_each(|v| check_id(field, v))
}

macro_rules! event_data {
    ($ty:ident, $subject:expr, $type_name:literal, |$s:ident| $validate:block) => {
        impl EventData for $ty {
            const SUBJECT: &'static str = $subject;
            const TYPE: &'static str = $type_name;
            fn validate(&self) -> Result<(), DecodeError> {
                let $s = self;
                $validate
            }
        }
    };
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentGrantedV1 {
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
}
event_data!(ConsentGrantedV1, subjects::CONSENT_GRANTED, "custodian.consent.granted.v1", |s| {
    check_key(&s.issuer, &s.subject, &s.platform_id)?;
    s.scopes.iter().try_for_each(|v| check_id("scopes", v))?;
    s.acr.as_deref().map_or(Ok(()), |a| check_id("acr", a))
});

/// Who asked for a revocation. Over the gateway a platform states `platform` only: the
/// person's own (`user`) comes from the person's signed-in request, `provider` from the OP's
/// signals, `admin` and `incident` from Custodian's operators and incident workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    User,
    Provider,
    Admin,
    Incident,
    /// The platform ended it on its own authority.
    Platform,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRevokedV1 {
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
    pub reason: RevokeReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}
event_data!(ConsentRevokedV1, subjects::CONSENT_REVOKED, "custodian.consent.revoked.v1", |s| {
    check_key(&s.issuer, &s.subject, &s.platform_id)?;
    s.actor.as_deref().map_or(Ok(()), |a| check_id("actor", a))
});

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivitySeenV1 {
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
}
event_data!(ActivitySeenV1, subjects::ACTIVITY_SEEN, "custodian.activity.seen.v1", |s| {
    check_key(&s.issuer, &s.subject, &s.platform_id)
});

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentExpireV1 {
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
    pub sweep_id: String,
    /// The sweep found no activity after this instant.
    pub idle_since: DateTime<Utc>,
}
event_data!(ConsentExpireV1, subjects::CONSENT_EXPIRE, "custodian.consent.expire.v1", |s| {
    check_key(&s.issuer, &s.subject, &s.platform_id)?;
    check_id("sweep_id", &s.sweep_id)
});

/// Why a consent stopped being honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Revoked,
    Expired,
    Incident,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentEndedV1 {
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
    pub reason: EndReason,
    pub cause_event_id: String,
}
event_data!(ConsentEndedV1, subjects::CONSENT_ENDED, "custodian.consent.ended.v1", |s| {
    check_key(&s.issuer, &s.subject, &s.platform_id)?;
    check_id("cause_event_id", &s.cause_event_id)
});

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionOpenedV1 {
    pub session_id: String,
    pub view_id: String,
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
    pub expires_at: DateTime<Utc>,
}
event_data!(SessionOpenedV1, subjects::SESSION_OPENED, "custodian.session.opened.v1", |s| {
    check_id("session_id", &s.session_id)?;
    if !subjects::is_valid_token(&s.view_id) {
        return Err(DecodeError::field("view_id", "must be letters, digits, '-' or '_' (it routes wipe commands)"));
    }
    check_key(&s.issuer, &s.subject, &s.platform_id)
});

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionClosedV1 {
    pub session_id: String,
    pub view_id: String,
}
event_data!(SessionClosedV1, subjects::SESSION_CLOSED, "custodian.session.closed.v1", |s| {
    check_id("session_id", &s.session_id)?;
    check_id("view_id", &s.view_id)
});

/// Why a view must drop sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WipeReason {
    /// The consent ended (revoked, expired, incident).
    ConsentEnded,
    /// The OP ended the session (back-channel logout, CAEP session-revoked).
    SessionRevoked,
    /// The person's level of assurance dropped below the platform's requirement.
    AssuranceDropped,
    /// Containment of an incident.
    Incident,
}

/// Command to one view, on `lifecycle.session.wipe.<view_id>`; its CloudEvents type is
/// `custodian.session.wipe.v1` whatever the view (the view id is a routing token only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionWipeV1 {
    pub wipe_id: String,
    pub session_ids: Vec<String>,
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
    pub reason: WipeReason,
}
event_data!(SessionWipeV1, subjects::SESSION_WIPE_PREFIX, "custodian.session.wipe.v1", |s| {
    check_id("wipe_id", &s.wipe_id)?;
    check_ids("session_ids", &s.session_ids)?;
    check_key(&s.issuer, &s.subject, &s.platform_id)
});

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionWipedV1 {
    pub wipe_id: String,
    pub view_id: String,
    pub session_ids: Vec<String>,
}
event_data!(SessionWipedV1, subjects::SESSION_WIPED, "custodian.session.wiped.v1", |s| {
    check_id("wipe_id", &s.wipe_id)?;
    check_id("view_id", &s.view_id)?;
    check_ids("session_ids", &s.session_ids)
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    Refresh,
    Access,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationOutcome {
    Revoked,
    AlreadyInvalid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRevokedV1 {
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
    pub token_kind: TokenKind,
    pub outcome: RevocationOutcome,
    pub cause_event_id: String,
}
event_data!(TokenRevokedV1, subjects::TOKEN_REVOKED, "custodian.token.revoked.v1", |s| {
    check_key(&s.issuer, &s.subject, &s.platform_id)?;
    check_id("cause_event_id", &s.cause_event_id)
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HokTokenType {
    Saml1,
    Saml2,
}

/// A legacy SAML holder-of-key token was used. `caller_identity` is the real identity of
/// the caller (e.g. a national number): the audit service stores it encrypted only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenHokUsedV1 {
    pub platform_id: String,
    pub caller_identity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_organisation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub service: String,
    pub assertion_id: String,
    pub token_type: HokTokenType,
    pub valid_until: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
}
event_data!(TokenHokUsedV1, subjects::TOKEN_HOK_USED, "custodian.token.hok_used.v1", |s| {
    check_id("platform_id", &s.platform_id)?;
    check_id("caller_identity", &s.caller_identity)?;
    check_id("service", &s.service)?;
    check_id("assertion_id", &s.assertion_id)?;
    for (field, v) in
        [("caller_organisation", &s.caller_organisation), ("subject", &s.subject), ("purpose", &s.purpose)]
    {
        if let Some(v) = v {
            check_id(field, v)?;
        }
    }
    Ok(())
});

// Hand-written so the caller's identity never reaches a log line through `{:?}`.
impl std::fmt::Debug for TokenHokUsedV1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenHokUsedV1")
            .field("platform_id", &self.platform_id)
            .field("caller_identity", &"[REDACTED]")
            .field("service", &self.service)
            .field("assertion_id", &self.assertion_id)
            .field("token_type", &self.token_type)
            .field("valid_until", &self.valid_until)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    DataLeak,
    CredentialLoss,
    PlatformCompromise,
    UserCompromise,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentReportedV1 {
    pub incident_id: String,
    pub kind: IncidentKind,
    pub platform_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    pub summary: String,
    pub detected_at: DateTime<Utc>,
    pub reporter: String,
}
event_data!(IncidentReportedV1, subjects::INCIDENT_REPORTED, "custodian.incident.reported.v1", |s| {
    check_id("incident_id", &s.incident_id)?;
    check_id("platform_id", &s.platform_id)?;
    check_id("reporter", &s.reporter)?;
    if s.summary.trim().is_empty() || s.summary.chars().count() > 4096 {
        return Err(DecodeError::field("summary", "must be 1 to 4096 characters, not only spaces"));
    }
    if let Some(issuer) = &s.issuer {
        check_issuer(issuer)?;
    }
    if let Some(subject) = &s.subject {
        check_id("subject", subject)?;
    }
    if s.kind == IncidentKind::UserCompromise && (s.subject.is_none() || s.issuer.is_none()) {
        return Err(DecodeError::field("subject", "user_compromise needs subject and issuer"));
    }
    Ok(())
});

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRotatedV1 {
    pub platform_id: String,
    pub credential_version: u32,
    /// When the previous secret stops working.
    pub not_after_previous: DateTime<Utc>,
}
event_data!(CredentialRotatedV1, subjects::CREDENTIAL_ROTATED, "custodian.credential.rotated.v1", |s| {
    check_id("platform_id", &s.platform_id)
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoChannel {
    Email,
    Webhook,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpoNotifiedV1 {
    pub incident_id: String,
    pub channel: DpoChannel,
    pub delivered_at: DateTime<Utc>,
}
event_data!(DpoNotifiedV1, subjects::DPO_NOTIFIED, "custodian.dpo.notified.v1", |s| {
    check_id("incident_id", &s.incident_id)
});

/// A message a consumer could not process, on `lifecycle.deadletter.<service>`; its type is
/// `custodian.deadletter.v1` whatever the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterV1 {
    pub original_subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_id: Option<String>,
    pub reason: String,
    pub payload_base64: String,
}
event_data!(DeadLetterV1, subjects::DEADLETTER_PREFIX, "custodian.deadletter.v1", |s| {
    check_id("original_subject", &s.original_subject)
});

/// How a consumer's reason for giving up on a message starts when it kept failing on it.
pub const GAVE_UP: &str = "gave up after";
/// What a consumer's reason says of an event dated too far past its clock.
pub const AHEAD_OF_CLOCK: &str = "past this consumer's clock";

/// Why a message was dead-lettered, in the terms a person reads on the console (its
/// reason stays the engineers' detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterCause {
    /// Not a well-formed event: the envelope, its version, its content type or its data.
    Unreadable,
    /// A well-formed event on a subject it does not belong on (or a view speaking for another).
    Misaddressed,
    /// Dated too far past the consumer's clock.
    AheadOfClock,
    /// The service kept failing on it and gave up.
    GaveUp,
    /// The service read it and refused it.
    Refused,
}

impl DeadLetterCause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreadable => "unreadable",
            Self::Misaddressed => "misaddressed",
            Self::AheadOfClock => "ahead-of-clock",
            Self::GaveUp => "gave-up",
            Self::Refused => "refused",
        }
    }
}

impl DeadLetterV1 {
    /// The cause, from the reason the consumer wrote (a [`crate::DecodeError`]'s text,
    /// [`GAVE_UP`], [`AHEAD_OF_CLOCK`], or a handler's refusal).
    pub fn cause(reason: &str) -> DeadLetterCause {
        const UNREADABLE: [&str; 5] = [
            "not a CloudEvents",
            "unsupported specversion",
            "unsupported datacontenttype",
            "invalid data",
            "invalid field",
        ];
        const MISADDRESSED: [&str; 3] = ["unknown event type", "event type ", "view "];
        if reason.starts_with(GAVE_UP) {
            DeadLetterCause::GaveUp
        } else if reason.contains(AHEAD_OF_CLOCK) {
            DeadLetterCause::AheadOfClock
        } else if UNREADABLE.iter().any(|p| reason.starts_with(p)) {
            DeadLetterCause::Unreadable
        } else if MISADDRESSED.iter().any(|p| reason.starts_with(p)) {
            DeadLetterCause::Misaddressed
        } else {
            DeadLetterCause::Refused
        }
    }
}

/// What came of replaying a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayOutcome {
    /// The service applied the event (or had already: its effects are never doubled).
    Applied,
    /// The service refused it again, for the reason given; it stays a dead letter.
    Refused,
    /// The service could not apply it now (e.g. its database is down); it may be replayed later.
    NotNow,
}

/// An operator's replay of one of a service's dead letters, published by that service on
/// `lifecycle.replayed.<service>` once the replay is done, for the audit chain. Contract
/// addition (v1): the console asks for replays; nothing consumes it but the audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterReplayedV1 {
    /// The dead letter's own event id.
    pub dead_letter_id: String,
    pub original_subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_id: Option<String>,
    /// The operator who asked, by the name of their token.
    pub operator: String,
    pub outcome: ReplayOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
event_data!(DeadLetterReplayedV1, subjects::REPLAYED_PREFIX, "custodian.deadletter.replayed.v1", |s| {
    check_id("dead_letter_id", &s.dead_letter_id)?;
    check_id("original_subject", &s.original_subject)?;
    check_id("operator", &s.operator)
});

/// An inactivity sweep asked for by an operator (`POST /v1/sweeps`, `custodian sweep run`).
/// Contract addition (v1): the sweeper consumes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepRequestedV1 {
    pub sweep_id: String,
    /// One platform, or every platform when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_id: Option<String>,
    /// Consents idle for longer than this many days expire.
    pub inactivity_days: u32,
    /// Report what would expire; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    pub requested_by: String,
}
event_data!(SweepRequestedV1, subjects::SWEEP_REQUESTED, "custodian.sweep.requested.v1", |s| {
    if !subjects::is_valid_token(&s.sweep_id) {
        return Err(DecodeError::field("sweep_id", "must be letters, digits, '-' or '_'"));
    }
    if s.inactivity_days == 0 || s.inactivity_days > 3650 {
        return Err(DecodeError::field("inactivity_days", "must be 1 to 3650"));
    }
    if let Some(p) = &s.platform_id {
        check_id("platform_id", p)?;
    }
    check_id("requested_by", &s.requested_by)
});

/// A sweep completed. Contract addition (v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFinishedV1 {
    pub sweep_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_id: Option<String>,
    pub dry_run: bool,
    /// Idle consents examined.
    pub scanned: u64,
    /// `consent.expire` commands issued (0 in a dry run).
    pub expired: u64,
}
event_data!(SweepFinishedV1, subjects::SWEEP_FINISHED, "custodian.sweep.finished.v1", |s| {
    check_id("sweep_id", &s.sweep_id)
});

/// Each service deletes its own records older than the given instants. Contract addition (v1):
/// the sweeper's retention schedule publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPurgeV1 {
    pub purge_id: String,
    /// Consent history (and other domain history) older than this goes.
    pub history_before: DateTime<Utc>,
    /// Inbox rows and published outbox rows older than this go.
    pub bus_records_before: DateTime<Utc>,
}
event_data!(RetentionPurgeV1, subjects::RETENTION_PURGE, "custodian.retention.purge.v1", |s| {
    check_id("purge_id", &s.purge_id)
});

/// Containment of an incident, to the vault: revoke every token and wipe every view session
/// of the platform, or of one person there. Contract addition (v1): the incident service
/// publishes it; the vault's revocations for it have ids `incident:<incident_id>:…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentContainV1 {
    pub incident_id: String,
    pub platform_id: String,
    /// With `subject`: only that person (user_compromise); without: the whole platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}
event_data!(IncidentContainV1, subjects::INCIDENT_CONTAIN, "custodian.incident.contain.v1", |s| {
    check_id("incident_id", &s.incident_id)?;
    check_id("platform_id", &s.platform_id)?;
    if let Some(issuer) = &s.issuer {
        check_issuer(issuer)?;
    }
    if let Some(subject) = &s.subject {
        check_id("subject", subject)?;
    }
    Ok(())
});

/// Why the OP (or Custodian) ended a person's sessions without ending their consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEndCause {
    /// OpenID Connect Back-Channel Logout 1.0.
    BackchannelLogout,
    /// CAEP session-revoked.
    CaepSessionRevoked,
    /// CAEP assurance-level-change below the platform's required level.
    AssuranceDropped,
}

/// Command to the vault: end a person's sessions at a platform — tokens revoked at the OP,
/// views wiped — while the consent stays. Contract addition (v1): the gateway publishes it
/// when the OP signals a logout or a session revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRevokeV1 {
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    pub cause: SessionEndCause,
    /// The signal's own id (the logout token's or the SET's `jti`).
    pub cause_id: String,
}
event_data!(SessionRevokeV1, subjects::SESSION_REVOKE, "custodian.session.revoke.v1", |s| {
    check_key(&s.issuer, &s.subject, &s.platform_id)?;
    check_id("cause_id", &s.cause_id)?;
    if let Some(sid) = &s.sid {
        check_id("sid", sid)?;
    }
    Ok(())
});
