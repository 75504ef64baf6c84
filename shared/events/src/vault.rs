//! Request/reply with the vault over core NATS (not stored). No token, secret, cookie or
//! PKCE verifier is ever in these messages: the gateway sends only the SHA-256 of a cookie,
//! and a token handed out is sealed to a one-time public key of the requester.
//! The authorization code does travel (login.finish): it is single-use, expires in a minute
//! and is worthless without the PKCE verifier and the client secret, which never leave the vault.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const LOGIN_START: &str = "custodian.vault.login.start";
pub const LOGIN_FINISH: &str = "custodian.vault.login.finish";
pub const WHOAMI: &str = "custodian.vault.whoami";
pub const LOGOUT: &str = "custodian.vault.logout";
pub const TOKEN: &str = "custodian.vault.token";
pub const REVOCATIONS: &str = "custodian.query.revocations";
/// A legacy SAML holder-of-key token for one use (RFC 8693 exchange); every use is logged.
pub const HOK: &str = "custodian.vault.hok";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginStart {
    /// The platform (client_id) to log in to; the vault's only one when absent.
    #[serde(default)]
    pub platform_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginStartReply {
    /// Send the browser to `authorize_url`; keep `state` in a cookie to check the callback.
    Redirect {
        authorize_url: String,
        state: String,
    },
    /// The request names no platform the vault knows (or none where several are): the
    /// caller's mistake, not an outage.
    UnknownPlatform(String),
    Error(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginFinish {
    pub state: String,
    pub code: String,
    /// SHA-256 (hex) of the session cookie the gateway will set.
    pub session_digest: String,
}

/// Who a web session belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonSession {
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
    pub acr: Option<String>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginFinishReply {
    Person(PersonSession),
    /// The login is not valid (unknown or expired state, code refused, ID token rejected).
    Refused(String),
    Error(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionLookup {
    pub session_digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhoamiReply {
    Person(PersonSession),
    Unknown,
    Error(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogoutReply {
    /// Where to send the browser to end the session at the OP too (RP-initiated logout).
    pub end_session_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    #[serde(default)]
    pub issuer: Option<String>,
    pub subject: String,
    pub platform_id: String,
    /// The view's session the token is for. The vault records it (bound to the view named by
    /// the request subject) in the step that hands out the token, so a revocation always finds
    /// it; a session of another view or person, or one closed or wiped, gets no token.
    /// Required; a request without one is refused.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Base64 X25519 public key; the token comes back sealed to it.
    pub reply_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenReply {
    Token {
        sealed_access_token: String,
        expires_at: DateTime<Utc>,
        acr: Option<String>,
        issuer: String,
    },
    /// No valid token for this person at this platform (no consent, revoked, expired).
    NotFound(String),
    Error(String),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationQuery {
    #[serde(default)]
    pub revocation_id: Option<String>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub platform_id: Option<String>,
    /// Only revocations still pending, oldest first (the operators' console).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationReply {
    Receipts(Vec<Receipt>),
    Error(String),
}

/// What a revocation did: every token and its OP outcome, every view and its ack, with times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub revocation_id: String,
    pub ended_event_id: String,
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
    pub reason: String,
    /// `pending` or `done`.
    pub state: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub tokens: Vec<TokenReceipt>,
    pub views: Vec<ViewReceipt>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenReceipt {
    pub assertion_id: String,
    pub token_kind: String,
    /// `pending`, `revoked` or `already_invalid`.
    pub outcome: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub done_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewReceipt {
    pub view_id: String,
    pub wipe_id: String,
    pub session_ids: Vec<String>,
    /// `pending`, `acked` or `expired_by_ttl`.
    pub state: String,
    pub attempts: i32,
    pub sent_at: Option<DateTime<Utc>>,
    pub acked_at: Option<DateTime<Utc>>,
}

/// One use of a holder-of-key token by a platform service on behalf of a caller (e.g. a
/// physician consulting the person's record). The caller's identity goes to the privacy log.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HokRequest {
    #[serde(default)]
    pub issuer: Option<String>,
    /// The person whose token is exchanged.
    pub subject: String,
    pub platform_id: String,
    pub token_type: crate::HokTokenType,
    /// The service the token is for (URL or name).
    pub service: String,
    /// The real identity of the caller (e.g. national number).
    pub caller_identity: String,
    #[serde(default)]
    pub caller_organisation: Option<String>,
    #[serde(default)]
    pub purpose: Option<String>,
    /// The view's open session (recorded when its access token was handed out) the use is
    /// for. Required; a request without one is refused.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Base64 X25519 public key; the assertion comes back sealed to it.
    pub reply_key: String,
}

impl std::fmt::Debug for HokRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HokRequest")
            .field("subject", &self.subject)
            .field("platform_id", &self.platform_id)
            .field("token_type", &self.token_type)
            .field("service", &self.service)
            .field("caller_identity", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HokReply {
    Token { sealed_assertion: String, assertion_id: String, valid_until: DateTime<Utc>, event_id: String },
    NotFound(String),
    Error(String),
}
