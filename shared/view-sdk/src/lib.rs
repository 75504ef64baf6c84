//! What a view embeds to keep Custodian's promises about data in memory:
//!
//! - [`MemoryStore`]: memory only; an entry may not outlive the token it was fetched under;
//!   evicted at expiry; zeroed on drop.
//! - [`View::start_session`]: a new session and the person's access token for it. The vault
//!   records the session in the step that hands the token out, so a revocation always finds
//!   it; the view then announces it (`session.opened`) and holds its data until the token
//!   expires at the latest.
//! - [`View::close_session`]: `session.closed` (awaited JetStream ack), after the data is gone.
//! - [`View::run`]: consumes `lifecycle.session.wipe.<view_id>` on a durable consumer (so a
//!   view that was away gets its wipes when it is back), drops the named sessions, and acks
//!   with `session.wiped` — also for sessions it no longer holds (a restart emptied memory).
//! - [`View::access_token`]: asks the vault for a person's access token under a session of
//!   this view; it comes back sealed to a one-time key.

mod store;

use std::time::Duration;

use chrono::{DateTime, Utc};
use custodian_bus::{BatchHandler, Bus, BusError, ConsumerSpec, Delivery, HandlerError};
use custodian_events::vault::{TokenReply, TokenRequest};
use custodian_events::{
    CloudEvent, LifecycleEvent, SessionClosedV1, SessionOpenedV1, SessionWipedV1, derived_event_id, subjects,
};
use custodian_store::clock::SharedClock;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use store::{MemoryStore, RetentionError};

/// How long a session's opening or closing is sent again when the stream does not ack it
/// (a NATS server restarting, a connection replaced): the event's id is fixed, so a repeat
/// the stream already holds is dropped as a duplicate.
pub const PUBLISH_BUDGET: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("view id {0:?} must be letters, digits, '-' or '_'")]
    BadViewId(String),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("vault: {0}")]
    Vault(String),
    #[error("no valid token: {0}")]
    NoToken(String),
}

/// A person's access token from the vault.
#[derive(Debug)]
pub struct AccessToken {
    pub token: SecretString,
    pub expires_at: DateTime<Utc>,
    pub issuer: String,
    pub acr: Option<String>,
}

/// A person signed in at the platform (see [`View::signed_in`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    pub issuer: String,
    pub subject: String,
}

/// A session started with [`View::start_session`] and the token it holds data under.
#[derive(Debug)]
pub struct StartedSession {
    pub session_id: String,
    pub token: AccessToken,
}

/// One use of a holder-of-key token: for whom, by whom, for what, under which open session.
#[derive(Debug, Clone, Copy)]
pub struct HokUse<'a> {
    pub session_id: &'a str,
    pub issuer: Option<&'a str>,
    pub subject: &'a str,
    pub platform_id: &'a str,
    pub token_type: custodian_events::HokTokenType,
    pub service: &'a str,
    pub caller_identity: &'a str,
    pub caller_organisation: Option<&'a str>,
    pub purpose: Option<&'a str>,
}

/// A SAML assertion (base64url XML) for one use.
#[derive(Debug)]
pub struct HokToken {
    pub token: SecretString,
    pub assertion_id: String,
    pub valid_until: DateTime<Utc>,
    /// The `token.hok_used` event that logged this use.
    pub event_id: String,
}

#[derive(Debug, Clone)]
pub struct View {
    view_id: String,
    source: String,
    bus: Bus,
    clock: SharedClock,
    store: MemoryStore,
}

impl View {
    pub fn new(view_id: &str, bus: Bus, clock: SharedClock) -> Result<Self, ViewError> {
        if !subjects::is_valid_token(view_id) {
            return Err(ViewError::BadViewId(view_id.to_owned()));
        }
        Ok(Self {
            view_id: view_id.to_owned(),
            source: format!("urn:custodian:view:{view_id}"),
            store: MemoryStore::new(clock.clone()),
            bus,
            clock,
        })
    }

    pub fn view_id(&self) -> &str {
        &self.view_id
    }

    /// `subject` bound to this view (`<subject>.<view_id>`): nats-server lets this view's
    /// identity publish only there, and the vault takes the view id from it.
    fn own(&self, subject: &str) -> String {
        format!("{subject}.{}", self.view_id)
    }

    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// Starts a session for a person: the vault records it and hands out the person's access
    /// token for it, then the session is announced (`session.opened`) and registered in the
    /// store, its data bound to the token's expiry.
    pub async fn start_session(
        &self,
        issuer: Option<&str>,
        subject: &str,
        platform_id: &str,
        timeout: Duration,
    ) -> Result<StartedSession, ViewError> {
        let session_id = uuid::Uuid::new_v4().to_string();
        let token = self.access_token(&session_id, issuer, subject, platform_id, timeout).await?;
        self.open_session_with_id(&session_id, &token.issuer, subject, platform_id, token.expires_at).await?;
        Ok(StartedSession { session_id, token })
    }

    /// Announces a session for a person, bound to the token that expires at
    /// `token_expires_at` (see [`View::start_session`] for a session with its token).
    pub async fn open_session(
        &self,
        issuer: &str,
        subject: &str,
        platform_id: &str,
        token_expires_at: DateTime<Utc>,
    ) -> Result<String, ViewError> {
        let session_id = uuid::Uuid::new_v4().to_string();
        self.open_session_with_id(&session_id, issuer, subject, platform_id, token_expires_at).await?;
        Ok(session_id)
    }

    pub async fn open_session_with_id(
        &self,
        session_id: &str,
        issuer: &str,
        subject: &str,
        platform_id: &str,
        token_expires_at: DateTime<Utc>,
    ) -> Result<(), ViewError> {
        // Known to the vault before any data is held: a revocation can always find it.
        let data = SessionOpenedV1 {
            session_id: session_id.to_owned(),
            view_id: self.view_id.clone(),
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            platform_id: platform_id.to_owned(),
            expires_at: token_expires_at,
        };
        let event = CloudEvent::new(&self.source, self.clock.now(), data);
        self.bus.publish_event_retrying(&self.own(subjects::SESSION_OPENED), &event, PUBLISH_BUDGET).await?;
        // A wipe that overtook the token (a revocation recorded just after it was handed out)
        // leaves this id refused: the token is dropped with nothing fetched under it.
        self.store.open_session(session_id, token_expires_at).map_err(|e| ViewError::NoToken(e.to_string()))
    }

    /// Ends a session: its data is dropped first, then the vault is told.
    pub async fn close_session(&self, session_id: &str) -> Result<(), ViewError> {
        self.store.close(session_id);
        let data = SessionClosedV1 { session_id: session_id.to_owned(), view_id: self.view_id.clone() };
        let event = CloudEvent::new(&self.source, self.clock.now(), data);
        self.bus.publish_event_retrying(&self.own(subjects::SESSION_CLOSED), &event, PUBLISH_BUDGET).await?;
        Ok(())
    }

    /// A person's access token for a session of this view (a new one is recorded by the
    /// vault; one on record must be this view's, for this person, open), sealed by the vault
    /// to a key made for this request.
    pub async fn access_token(
        &self,
        session_id: &str,
        issuer: Option<&str>,
        subject: &str,
        platform_id: &str,
        timeout: Duration,
    ) -> Result<AccessToken, ViewError> {
        let key = custodian_crypto::ReplyKey::new();
        let request = TokenRequest {
            issuer: issuer.map(str::to_owned),
            subject: subject.to_owned(),
            platform_id: platform_id.to_owned(),
            session_id: Some(session_id.to_owned()),
            reply_key: key.public_base64(),
        };
        // A vault restarting has no responder for a moment, and a request can go to a replica
        // that just died: short attempts, retried until the deadline (a hand-out is harmless
        // to repeat).
        let deadline = tokio::time::Instant::now() + timeout;
        let reply: TokenReply = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = left.min(Duration::from_secs(2));
            let subject = self.own(custodian_events::vault::TOKEN);
            match custodian_bus::query(self.bus.client(), &subject, &request, attempt).await {
                Ok(reply) => break reply,
                Err(custodian_bus::QueryError::NoAnswer { .. }) if left > Duration::from_millis(100) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(ViewError::Vault(e.to_string())),
            }
        };
        match reply {
            TokenReply::Token { sealed_access_token, expires_at, acr, issuer } => {
                let plain = key.open(&sealed_access_token).map_err(|e| ViewError::Vault(e.to_string()))?;
                let token =
                    String::from_utf8(plain.to_vec()).map_err(|_| ViewError::Vault("token is not text".into()))?;
                Ok(AccessToken { token: SecretString::from(token), expires_at, issuer, acr })
            }
            TokenReply::NotFound(reason) => Err(ViewError::NoToken(reason)),
            TokenReply::Error(reason) => Err(ViewError::Vault(reason)),
        }
    }

    /// The person signed in at the platform with this session cookie (the gateway's, which
    /// the browser sends to the platform's views on the same host), asked of the vault; `None`
    /// for a session unknown or ended. Only the cookie's SHA-256 leaves the view.
    pub async fn signed_in(&self, session_cookie: &str, timeout: Duration) -> Result<Option<SignedIn>, ViewError> {
        use custodian_events::vault::{SessionLookup, WHOAMI, WhoamiReply};
        let lookup = SessionLookup { session_digest: custodian_crypto::sha256_hex(session_cookie) };
        let subject = self.own(WHOAMI);
        let reply = custodian_bus::query_idempotent::<_, WhoamiReply>(self.bus.client(), &subject, &lookup, timeout)
            .await
            .map_err(|e| ViewError::Vault(e.to_string()))?;
        match reply {
            WhoamiReply::Person(p) => Ok(Some(SignedIn { issuer: p.issuer, subject: p.subject })),
            WhoamiReply::Unknown => Ok(None),
            WhoamiReply::Error(e) => Err(ViewError::Vault(e)),
        }
    }

    /// A legacy SAML holder-of-key token for one use on behalf of `caller` (RFC 8693 exchange
    /// by the vault); the use is in the privacy log before the token is handed out.
    pub async fn holder_of_key_token(&self, request: HokUse<'_>, timeout: Duration) -> Result<HokToken, ViewError> {
        let key = custodian_crypto::ReplyKey::new();
        let question = custodian_events::vault::HokRequest {
            issuer: request.issuer.map(str::to_owned),
            subject: request.subject.to_owned(),
            platform_id: request.platform_id.to_owned(),
            token_type: request.token_type,
            service: request.service.to_owned(),
            caller_identity: request.caller_identity.to_owned(),
            caller_organisation: request.caller_organisation.map(str::to_owned),
            purpose: request.purpose.map(str::to_owned),
            session_id: Some(request.session_id.to_owned()),
            reply_key: key.public_base64(),
        };
        let reply: custodian_events::vault::HokReply =
            custodian_bus::query(self.bus.client(), &self.own(custodian_events::vault::HOK), &question, timeout)
                .await
                .map_err(|e| ViewError::Vault(e.to_string()))?;
        match reply {
            custodian_events::vault::HokReply::Token { sealed_assertion, assertion_id, valid_until, event_id } => {
                let plain = key.open(&sealed_assertion).map_err(|e| ViewError::Vault(e.to_string()))?;
                let token =
                    String::from_utf8(plain.to_vec()).map_err(|_| ViewError::Vault("assertion is not text".into()))?;
                Ok(HokToken { token: SecretString::from(token), assertion_id, valid_until, event_id })
            }
            custodian_events::vault::HokReply::NotFound(reason) => Err(ViewError::NoToken(reason)),
            custodian_events::vault::HokReply::Error(reason) => Err(ViewError::Vault(reason)),
        }
    }

    /// Listens for wipe commands and evicts expired data until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), BusError> {
        let evictor = tokio::spawn(self.store.clone().run_evictor(shutdown.clone()));
        let service = format!("view-{}", self.view_id);
        let Some(subject) = subjects::session_wipe(&self.view_id) else {
            return Err(BusError::Consumer { durable: service, reason: "invalid view id".into() });
        };
        let mut spec = ConsumerSpec::new(&service, "wipes", &[subject.as_str()]);
        spec.batch = 100;
        spec.linger = Duration::ZERO;
        spec.deliver_new = true;
        spec.ack_wait = Duration::from_secs(10);
        // Wipe commands come as nudges too (a wipe is harmless twice).
        spec.nudged = true;
        let handler = WipeHandler { view: self.clone() };
        let result = custodian_bus::run_consumer(&self.bus, spec, handler, self.clock.clone(), shutdown).await;
        evictor.abort();
        result
    }
}

#[derive(Debug, Clone)]
struct WipeHandler {
    view: View,
}

impl BatchHandler for WipeHandler {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Result<(), HandlerError>> {
        let mut results = Vec::with_capacity(batch.len());
        for delivery in batch {
            let LifecycleEvent::SessionWipe(command) = &delivery.event else {
                results.push(Err(HandlerError::Permanent(format!(
                    "{} is not a wipe command",
                    delivery.event.event_type()
                ))));
                continue;
            };
            // The wipe and its ack continue the trace of the revocation that sent the command.
            let span = tracing::info_span!(
                "wipe_sessions",
                view_id = %self.view.view_id,
                wipe_id = %command.data.wipe_id,
                sessions = command.data.session_ids.len(),
                held = tracing::field::Empty,
            );
            custodian_telemetry::adopt_remote_parent(&span, delivery.traceparent.as_deref());
            let held = span.in_scope(|| self.view.store.wipe(&command.data.session_ids));
            span.record("held", held);
            tracing::info!(view_id = %self.view.view_id, wipe_id = %command.data.wipe_id, sessions = command.data.session_ids.len(), held, "sessions wiped");
            let ack = SessionWipedV1 {
                wipe_id: command.data.wipe_id.clone(),
                view_id: self.view.view_id.clone(),
                session_ids: command.data.session_ids.clone(),
            };
            // Keyed by the command's own id: a redelivery of one command is de-duplicated by the
            // stream, a re-sent command (a new id) gets a fresh ack through.
            let id = derived_event_id("session.wiped", &format!("{}:{}", delivery.event.id(), self.view.view_id));
            let event = CloudEvent::with_id(id, &self.view.source, self.view.clock.now(), ack);
            // Not acked by the stream: the command comes back and is wiped (harmlessly) again.
            results.push(
                self.view
                    .bus
                    .publish_event(&self.view.own(subjects::SESSION_WIPED), &event)
                    .instrument(span)
                    .await
                    .map_err(|e| HandlerError::Transient(e.to_string())),
            );
        }
        results
    }
}
