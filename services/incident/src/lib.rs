//! Incident response as one durable workflow per incident (seed §1.7). Each incident's steps
//! are rows (`incident_steps`) run in order by a driver that retries with backoff and picks up
//! where it stopped after a crash:
//!
//! 1. `notify_dpo` — at once, by e-mail over SMTP (and a signed webhook if configured), with
//!    the points of GDPR Art. 33(3), people and records counted from the ledger and the vault;
//! 2. `contain` — `incident.contain` to the vault: every token of the platform (or of the
//!    person, for a user compromise) revoked at the OP, every view session wiped; waits until
//!    the vault reports it done; `report_containment` tells the DPO;
//! 3. `rotate_credentials` (credential loss, platform compromise) — RFC 7592: new client
//!    secret from the OP, stored sealed as a new version, verified at the token endpoint,
//!    `credential.rotated` published (services switch without restart), old version retired;
//!    `report_rotation` tells the DPO;
//! 4. `final_report` — the timeline to the DPO; the incident is closed. The `incidents` table
//!    is the register (Art. 33(5)).

mod credentials;

pub use credentials::aad as credential_aad;
mod dpo;
mod rotation;
mod workflow;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use custodian_bus::{Bus, ConsumerSpec, OutboxRelay, Supervisor, SupervisorError};
use custodian_crypto::KeyRing;
use custodian_events::subjects;
use custodian_store::Store;
use custodian_store::clock::SharedClock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use secrecy::SecretString;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "incident";
pub const SOURCE: &str = "urn:custodian:incident";

/// `[incident]` in custodian.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentConfig {
    pub dpo: DpoConfig,
    /// Each platform's registration at the OP (RFC 7592) and its first client secret.
    pub platforms: Vec<PlatformRegistration>,
    /// Seals the stored client credentials.
    pub keyring: Option<custodian_crypto::KeyRingConfig>,
    /// Containment for a data leak, per platform: `platform` (default) or `none`.
    pub data_leak_containment: BTreeMap<String, String>,
    /// How long a superseded secret keeps working after a rotation (0: retired at once).
    pub previous_secret_grace_secs: u64,
    pub retry_initial_ms: u64,
    pub retry_max_secs: u64,
    /// How often a waiting step (containment in progress) looks again.
    pub poll_ms: u64,
    /// Pause after a step finishes before the next starts (0: none). Lets an operator (or a
    /// test) stop the service cleanly between steps.
    pub step_pause_ms: u64,
    pub ack_wait_secs: u64,
    pub max_deliver: i64,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        Self {
            dpo: DpoConfig::default(),
            platforms: Vec::new(),
            keyring: None,
            data_leak_containment: BTreeMap::new(),
            previous_secret_grace_secs: 0,
            retry_initial_ms: 1000,
            retry_max_secs: 60,
            poll_ms: 500,
            step_pause_ms: 0,
            ack_wait_secs: 30,
            max_deliver: 50,
        }
    }
}

/// `[incident.dpo]`: where the Data Protection Officer is told.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpoConfig {
    pub to: Vec<String>,
    pub from: String,
    /// `smtp://host:port` (STARTTLS used when the server offers it) or `smtps://host:port`.
    pub smtp_url: String,
    pub smtp_username: Option<String>,
    pub smtp_password: Option<SecretString>,
    /// The contact point named in the notification (Art. 33(3)(b)).
    pub contact: String,
    /// Optional JSON webhook, signed `X-Custodian-Signature: sha256=<HMAC-SHA256 hex>`.
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<SecretString>,
    pub timeout_secs: u64,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            to: Vec::new(),
            from: "custodian@localhost".into(),
            smtp_url: "smtp://127.0.0.1:2525".into(),
            smtp_username: None,
            smtp_password: None,
            contact: "the platform's data protection officer".into(),
            webhook_url: None,
            webhook_secret: None,
            timeout_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformRegistration {
    pub platform_id: String,
    pub issuer: String,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    pub registration_client_uri: String,
    pub registration_access_token: SecretString,
    pub client_secret: SecretString,
}

impl IncidentConfig {
    pub(crate) fn retry_delay(&self, attempts: i32) -> chrono::Duration {
        let initial = self.retry_initial_ms.max(1) as i64;
        let max = (self.retry_max_secs.max(1) * 1000) as i64;
        chrono::Duration::milliseconds(initial.saturating_mul(1i64 << attempts.clamp(0, 20)).min(max))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IncidentError {
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error(transparent)]
    Crypto(#[from] custodian_crypto::CryptoError),
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Clone, Default)]
pub struct IncidentMetrics {
    pub reported: Counter,
    pub emails: Counter,
    pub rotations: Counter,
    pub closed: Counter,
    /// Incidents not closed yet (read every few seconds).
    pub open: prometheus_client::metrics::gauge::Gauge,
    /// Pending steps whose last attempt failed, per step (read every few seconds).
    pub failing_steps:
        prometheus_client::metrics::family::Family<Vec<(String, String)>, prometheus_client::metrics::gauge::Gauge>,
}

impl IncidentMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("custodian_incidents_reported", "Incidents registered", self.reported.clone());
        registry.register(
            "custodian_incident_emails",
            "E-mails accepted by the DPO's SMTP server",
            self.emails.clone(),
        );
        registry.register("custodian_incident_rotations", "Client secrets rotated", self.rotations.clone());
        registry.register("custodian_incidents_closed", "Incidents closed", self.closed.clone());
        registry.register("custodian_incidents_open", "Incidents not closed yet", self.open.clone());
        registry.register(
            "custodian_incident_steps_failing",
            "Pending incident steps whose last attempt failed, per step",
            self.failing_steps.clone(),
        );
    }
}

#[derive(Debug, Clone)]
pub struct Deps {
    pub store: Store,
    pub bus: Bus,
    pub clock: SharedClock,
    pub keyring: KeyRing,
    pub metrics: IncidentMetrics,
}

#[derive(Debug)]
pub(crate) struct Incidents {
    pub store: Store,
    pub bus: Bus,
    pub clock: SharedClock,
    pub keyring: KeyRing,
    pub config: IncidentConfig,
    pub metrics: IncidentMetrics,
    pub work: Notify,
    pub relay: custodian_bus::RelayHandle,
    pub mailer: Result<dpo::Mailer, String>,
}

pub async fn run(deps: Deps, config: IncidentConfig, shutdown: CancellationToken) -> Result<(), SupervisorError> {
    let relay = OutboxRelay::new(deps.store.clone(), deps.bus.clone(), SERVICE, deps.clock.clone());
    let incidents = Arc::new(Incidents {
        store: deps.store,
        bus: deps.bus,
        clock: deps.clock,
        keyring: deps.keyring,
        metrics: deps.metrics,
        work: Notify::new(),
        relay: relay.handle(),
        mailer: dpo::mailer(&config.dpo),
        config,
    });
    let mut tasks = Supervisor::new(shutdown.clone());
    tasks.spawn("incident-relay", relay.run(shutdown.clone()));
    let seeded = incidents.clone();
    let seeding = shutdown.clone();
    tasks.spawn("incident-credentials-seed", async move { credentials::seed(&seeded, seeding).await });
    let mut spec = ConsumerSpec::new(SERVICE, "reports", &[subjects::INCIDENT_REPORTED]);
    spec.batch = 100;
    spec.linger = Duration::ZERO;
    spec.max_deliver = incidents.config.max_deliver.max(1);
    spec.ack_wait = Duration::from_secs(incidents.config.ack_wait_secs.max(1));
    spec.replay = true;
    let handler = workflow::ReportHandler { incidents: incidents.clone() };
    let (bus, clock, token) = (incidents.bus.clone(), incidents.clock.clone(), shutdown.clone());
    tasks
        .spawn("incident-reports", async move { custodian_bus::run_consumer(&bus, spec, handler, clock, token).await });
    tasks.spawn("incident-workflow", workflow::drive(incidents.clone(), shutdown.clone()));
    tasks.spawn("incident-gauges", workflow::gauges(incidents.clone(), shutdown.clone()));
    let client = incidents.bus.client().clone();
    tasks.respond(
        "incident-queries",
        &client,
        custodian_events::incident::INCIDENTS,
        SERVICE,
        incidents.clone(),
        |i, q| async move { workflow::view(&i, q).await },
    );
    tasks.respond(
        "incident-rotate",
        &client,
        custodian_events::incident::ROTATE,
        SERVICE,
        incidents.clone(),
        |i, q| async move { workflow::planned_rotation(&i, q).await },
    );
    tasks.respond(
        "incident-credentials",
        &client,
        custodian_events::incident::CREDENTIAL,
        SERVICE,
        incidents.clone(),
        |i, q| async move { credentials::hand_over(&i, q).await },
    );
    tasks.wait().await
}
