//! The token vault. Holds each person's tokens sealed at rest (envelope AEAD under a key
//! ring), runs the login code flow for the gateway, hands platform services a valid access
//! token (refreshing when needed, sealed to the requester), tracks view sessions, and carries
//! out every ended consent: tokens revoked at the OP (RFC 7009), ciphertext deleted, a wipe
//! command to each view holding a session, kept until the view acks — with a receipt.
//!
//! Invariants: a revocation is committed in the database (revocations, revocation_tokens,
//! pending_wipes) before any of it is attempted, so a crash at any point is resumed by the
//! driver; tokens never travel on NATS in clear; no token, cookie or code is ever logged.

mod assertions;
mod clients;
mod driver;
mod handler;
mod incident;
mod login;
mod maintenance;
mod metrics;
mod receipts;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use custodian_bus::{Bus, ConsumerSpec, OutboxRelay, Supervisor, SupervisorError};
use custodian_crypto::KeyRing;
use custodian_events::vault;
use custodian_oidc::ClientSettings;
use custodian_store::Store;
use custodian_store::clock::SharedClock;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use assertions::{TokenBundle, assertion_aad};
pub use clients::Clients;
pub use metrics::VaultMetrics;

pub const SERVICE: &str = "vault";
pub const SOURCE: &str = "urn:custodian:vault";

/// `[vault]` in custodian.toml, `CUSTODIAN_VAULT__*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// Key-encryption keys; `custodian keys new` makes one. Required outside tests.
    pub keyring: Option<custodian_crypto::KeyRingConfig>,
    /// This platform's registrations at the OP (one per platform_id / client_id).
    pub clients: Vec<ClientSettings>,
    /// How long a login may take between `/login` and `/callback`.
    pub login_ttl_secs: u64,
    /// Sign-ins started and not finished (nor expired) at once: what anonymous callers of
    /// `/login` can make the vault store is bounded by this.
    pub max_pending_logins: u64,
    /// How long a person's web session at the gateway lasts.
    pub web_session_ttl_secs: u64,
    /// Refresh-token lifetime to assume when the OP's introspection does not say.
    pub refresh_token_ttl_secs: u64,
    /// Renew an access token this many seconds before it expires.
    pub refresh_margin_secs: u64,
    /// OP revocation calls in flight.
    pub revoke_concurrency: usize,
    /// First retry delay of a failed OP call or an unacked wipe; doubles up to `retry_max_secs`.
    pub retry_initial_ms: u64,
    pub retry_max_secs: u64,
    /// How long a replica owns a token it is revoking before another may take it over. The
    /// claim is renewed while its OP call is in flight, so this bounds the time a crashed
    /// replica's tokens wait, not the OP's answer.
    pub claim_secs: u64,
    /// The driver's re-drive period when nothing wakes it.
    pub reconcile_every_ms: u64,
    /// Purge of expired assertions, logins, sessions, and the KEK re-wrap.
    pub maintenance_every_secs: u64,
    pub batch: usize,
    /// How long an event handed to a replica waits before another gets it; a batch in hand
    /// is kept by progress acks, so this bounds only a crashed replica's events.
    pub ack_wait_secs: u64,
    pub max_deliver: i64,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            keyring: None,
            clients: Vec::new(),
            login_ttl_secs: 600,
            max_pending_logins: 10_000,
            web_session_ttl_secs: 8 * 3600,
            refresh_token_ttl_secs: 14 * 24 * 3600,
            refresh_margin_secs: 30,
            revoke_concurrency: 32,
            retry_initial_ms: 500,
            retry_max_secs: 60,
            claim_secs: 3,
            reconcile_every_ms: 1000,
            maintenance_every_secs: 60,
            batch: 500,
            ack_wait_secs: 2,
            max_deliver: 50,
        }
    }
}

impl VaultConfig {
    pub fn retry_delay(&self, attempts: i32) -> chrono::Duration {
        let initial = self.retry_initial_ms.max(1) as i64;
        let max = (self.retry_max_secs.max(1) * 1000) as i64;
        let factor = 1i64 << attempts.clamp(0, 20);
        chrono::Duration::milliseconds(initial.saturating_mul(factor).min(max))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error(transparent)]
    Oidc(#[from] custodian_oidc::OidcError),
    #[error(transparent)]
    Crypto(#[from] custodian_crypto::CryptoError),
    #[error("{0}")]
    Invalid(String),
    /// Worth retrying (a dependency is down).
    #[error("{0}")]
    Transient(String),
}

/// What the service is given.
#[derive(Debug, Clone)]
pub struct Deps {
    pub store: Store,
    pub bus: Bus,
    pub clock: SharedClock,
    pub keyring: KeyRing,
    pub metrics: VaultMetrics,
}

/// Everything the vault's tasks share.
#[derive(Debug)]
pub(crate) struct Vault {
    pub store: Store,
    pub bus: Bus,
    pub clock: SharedClock,
    pub keyring: KeyRing,
    pub clients: Clients,
    pub config: VaultConfig,
    pub metrics: VaultMetrics,
    /// Wakes the driver when new work was committed.
    pub work: Arc<Notify>,
    pub relay: custodian_bus::RelayHandle,
}

/// Runs the vault until `shutdown`.
pub async fn run(deps: Deps, config: VaultConfig, shutdown: CancellationToken) -> Result<(), SupervisorError> {
    let mut relay = OutboxRelay::new(deps.store.clone(), deps.bus.clone(), SERVICE, deps.clock.clone());
    relay.reconcile_every = Duration::from_millis(config.reconcile_every_ms.max(10));
    let vault = Arc::new(Vault {
        store: deps.store,
        bus: deps.bus,
        clock: deps.clock,
        keyring: deps.keyring,
        clients: Clients::new(&config.clients),
        metrics: deps.metrics,
        work: Arc::new(Notify::new()),
        relay: relay.handle(),
        config,
    });

    let mut tasks = Supervisor::new(shutdown.clone());
    tasks.spawn("vault-relay", relay.run(shutdown.clone()));

    let mut spec = ConsumerSpec::new(SERVICE, "lifecycle", custodian_bus::trust::VAULT_LIFECYCLE_SUBJECTS);
    spec.batch = vault.config.batch.max(1);
    spec.max_deliver = vault.config.max_deliver.max(1);
    spec.ack_wait = Duration::from_secs(vault.config.ack_wait_secs.max(1));
    // A revocation is latency-sensitive: do not wait to fill batches.
    spec.linger = Duration::ZERO;
    // A view's session dated ahead would look opened after a revocation that came before it.
    spec.future_skew = Some(custodian_events::MAX_CLOCK_SKEW);
    spec.replay = true;
    // `consent.ended` and the views' acks come as nudges too, ahead of the stream after a
    // NATS node's death.
    spec.nudged = true;
    let handler = handler::LifecycleHandler { vault: vault.clone() };
    let (bus, clock, token) = (vault.bus.clone(), vault.clock.clone(), shutdown.clone());
    tasks.spawn("vault-lifecycle", async move { custodian_bus::run_consumer(&bus, spec, handler, clock, token).await });

    tasks.spawn("vault-driver", driver::run(vault.clone(), shutdown.clone()));
    tasks.spawn("vault-maintenance", maintenance::run(vault.clone(), shutdown.clone()));
    tasks.spawn("vault-gauges", driver::gauges(vault.clone(), shutdown.clone()));

    let client = vault.bus.client().clone();
    tasks.respond("vault-login-start", &client, vault::LOGIN_START, SERVICE, vault.clone(), |v, q| async move {
        login::start(&v, q).await
    });
    tasks.respond("vault-login-finish", &client, vault::LOGIN_FINISH, SERVICE, vault.clone(), |v, q| async move {
        login::finish(&v, q).await
    });
    tasks.respond("vault-whoami", &client, vault::WHOAMI, SERVICE, vault.clone(), |v, q| async move {
        login::whoami(&v, q).await
    });
    // A view asks under its own id (`custodian.vault.whoami.<view_id>`), like every request it makes.
    tasks.respond_bound(
        "vault-whoami-views",
        &client,
        format!("{}.*", vault::WHOAMI),
        SERVICE,
        vault.clone(),
        |v, _view_id, q| async move { login::whoami(&v, q).await },
    );
    tasks.respond("vault-logout", &client, vault::LOGOUT, SERVICE, vault.clone(), |v, q| async move {
        login::logout(&v, q).await
    });
    // `custodian.vault.token.<view_id>` (and `.hok.<view_id>`): a view may ask only under its
    // own id (nats-server's permissions), so the vault knows which view it hands a token to.
    tasks.respond_bound(
        "vault-token",
        &client,
        format!("{}.*", vault::TOKEN),
        SERVICE,
        vault.clone(),
        |v, view_id, q| async move { tokens::hand_out(&v, &view_id, q).await },
    );
    tasks.respond_bound(
        "vault-hok",
        &client,
        format!("{}.*", vault::HOK),
        SERVICE,
        vault.clone(),
        |v, view_id, q| async move { tokens::hok(&v, &view_id, q).await },
    );
    tasks.respond(
        "vault-containment",
        &client,
        custodian_events::incident::CONTAINMENT,
        SERVICE,
        vault.clone(),
        |v, q| async move { incident::containment(&v, q).await },
    );
    tasks.respond(
        "vault-exposure",
        &client,
        custodian_events::incident::EXPOSURE,
        SERVICE,
        vault.clone(),
        |v, q| async move { incident::exposure(&v, q).await },
    );
    tasks.respond("vault-receipts", &client, vault::REVOCATIONS, SERVICE, vault.clone(), |v, q| async move {
        receipts::answer(&v, q).await
    });
    tasks.wait().await
}

/// Tokens obtained outside the vault's own login (a platform moving its existing sessions
/// in; benchmarks), to be sealed and stored like any other.
#[derive(Debug)]
pub struct ImportedTokens {
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
    pub acr: Option<String>,
    pub scopes: Vec<String>,
    pub tokens: TokenBundle,
    pub access_expires_at: chrono::DateTime<chrono::Utc>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// Seals and stores imported tokens; returns the assertion id.
pub async fn import_tokens(
    store: &Store,
    keyring: &KeyRing,
    imported: &ImportedTokens,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<String, VaultError> {
    let assertion_id = uuid::Uuid::new_v4().to_string();
    assertions::insert(
        store.db(),
        keyring,
        assertions::NewAssertion {
            assertion_id: assertion_id.clone(),
            issuer: &imported.issuer,
            subject: &imported.subject,
            platform_id: &imported.platform_id,
            acr: imported.acr.clone(),
            scopes: &imported.scopes,
            bundle: &imported.tokens,
            access_expires_at: imported.access_expires_at,
            expires_at: imported.expires_at,
        },
        now,
    )
    .await?;
    Ok(assertion_id)
}
