//! A whole Custodian stack for one test: a real nats-server, a fresh database (SQLite or
//! PostgreSQL per `CUSTODIAN_TEST_BACKEND`), the consent service and the gateway running
//! through the very `run` functions `custodian up` uses, and the shared OpenID provider.

use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use custodian_bus::trust::{Identity, Service};
use custodian_bus::{Bus, StreamSettings};
use custodian_consent::{ConsentConfig, ConsentMetrics};
use custodian_events::queries::ConsentView;
use custodian_events::{CloudEvent, EventData, subjects};
use custodian_gateway::{GatewayConfig, MachineToken, PersonAuthConfig, Role, token_digest};
use custodian_store::Store;
use custodian_store::clock::{self, SharedClock};
use custodian_testkit::{NatsServer, Provider, TEST_CLIENT_ID, eventually};
use sea_orm::EntityTrait;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const PLATFORM_TOKEN: &str = "test-platform-token-0123456789";
pub const OPS_TOKEN: &str = "test-ops-token-0123456789abcdef";
pub const DPO_TOKEN: &str = "test-dpo-token-0123456789abcdef";
pub const RESPONDER_TOKEN: &str = "test-responder-token-0123456789";
/// A second platform's token: it speaks for [`OTHER_PLATFORM`] only.
pub const OTHER_PLATFORM_TOKEN: &str = "test-other-platform-token-0123";
pub const OTHER_PLATFORM: &str = "tp-other";
/// The platforms [`PLATFORM_TOKEN`] speaks for unless a test says otherwise.
pub const TEST_PLATFORMS: &[&str] = &["tp", "tp-health"];

pub struct Stack {
    pub nats: NatsServer,
    pub store: Store,
    /// The test's own connection (the harness user).
    pub bus: Bus,
    pub clock: SharedClock,
    pub gateway_url: String,
    pub http: reqwest::Client,
    pub provider: &'static Provider,
    consent: Option<(CancellationToken, JoinHandle<()>)>,
    gateway: Option<(CancellationToken, JoinHandle<()>)>,
    pub consent_config: ConsentConfig,
    sweepers: Vec<(String, CancellationToken, JoinHandle<()>)>,
    vault: Option<(CancellationToken, JoinHandle<()>)>,
    audit: Option<(CancellationToken, JoinHandle<()>)>,
    incident: Option<(CancellationToken, JoinHandle<()>)>,
    /// Signs the audit chain's checkpoints.
    pub audit_signer: custodian_audit::Signer,
    views: Vec<(String, CancellationToken, JoinHandle<()>)>,
    /// The gateway's listening socket, kept across gateway restarts.
    gateway_socket: Option<std::net::TcpListener>,
    /// The gateway's SSF transmitter, if a test wants one.
    pub ssf_transmitter: Option<custodian_gateway::transmit::TransmitterConfig>,
    /// The bearer token transmitters must present on `POST /ssf/events`, if any.
    pub ssf_push_token: Option<String>,
    /// The gateway's SSF receiver set-up, if a test wants one.
    pub ssf_receiver: Option<custodian_gateway::ssf_receiver::SsfReceiverConfig>,
    /// Platforms (client ids) besides the test client whose signals the gateway accepts.
    pub extra_audiences: Vec<String>,
    /// Serve the gateway over HTTPS with these (the tests' certificate for 127.0.0.1).
    pub gateway_tls: Option<custodian_web::TlsFiles>,
    /// The vault's key ring, kept across vault restarts.
    pub keyring: custodian_crypto::KeyRing,
    /// The platforms [`PLATFORM_TOKEN`] speaks for (set before the gateway starts).
    pub platform_token_speaks_for: Vec<String>,
    /// The gateway's rate limits, timeouts and connection cap (set before it starts).
    pub gateway_limits: custodian_gateway::limits::LimitsConfig,
    /// What the vault (each start of it) measures.
    pub vault_metrics: custodian_vault::VaultMetrics,
    /// What the person's portal says of each platform (set before the gateway starts).
    pub portal: custodian_gateway::registry::PortalConfig,
    _dir: tempfile::TempDir,
}

/// Vault settings for tests: quick retries and re-drives.
pub fn test_vault_config(clients: Vec<custodian_oidc::ClientSettings>) -> custodian_vault::VaultConfig {
    custodian_vault::VaultConfig {
        clients,
        retry_initial_ms: 100,
        retry_max_secs: 1,
        reconcile_every_ms: 200,
        claim_secs: 2,
        ack_wait_secs: 2,
        ..Default::default()
    }
}

/// Sweeper settings for tests: no schedules, short leases, small pages.
pub fn test_sweeper_config() -> custodian_sweeper::SweeperConfig {
    custodian_sweeper::SweeperConfig {
        schedules: Vec::new(),
        batch: 50,
        lease_ttl_secs: 2,
        retention: custodian_sweeper::RetentionConfig { cron: String::new(), ..Default::default() },
    }
}

pub fn test_consent_config() -> ConsentConfig {
    ConsentConfig { batch: 500, max_deliver: 50, reconcile_every_secs: 1, ack_wait_secs: 2, workers: 2 }
}

impl Stack {
    /// Everything running.
    pub async fn start() -> Stack {
        let mut stack = Self::infrastructure().await;
        stack.start_consent();
        stack.start_gateway().await;
        stack
    }

    /// [`Stack::infrastructure`] for a test about PostgreSQL itself (its server, its
    /// transactions); `None`, said on stderr, when this run uses SQLite.
    pub async fn infrastructure_on_postgres() -> Option<Stack> {
        if custodian_testkit::test_backend() != "postgres" {
            eprintln!("PostgreSQL only: skipped on {}", custodian_testkit::test_backend());
            return None;
        }
        Some(Self::infrastructure().await)
    }

    /// NATS, database (migrated), OP; no Custodian service yet.
    pub async fn infrastructure() -> Stack {
        // Every span of every test goes to one OTLP receiver; a test reads its own traces.
        // Metrics too, every second, from each process-wide exporter (the gateways' registries).
        let receiver = custodian_testkit::otlp::OtlpReceiver::shared();
        custodian_telemetry::init_for_tests_with(custodian_telemetry::Export::To {
            traces_url: receiver.traces_url(),
            every: Duration::from_millis(100),
            metrics: Some(custodian_telemetry::metrics_export::MetricsTarget {
                url: receiver.metrics_url(),
                headers: Vec::new(),
                every: Duration::from_secs(1),
                timeout: Duration::from_secs(5),
            }),
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let nats = NatsServer::start();
        let url = custodian_testkit::test_database_url(dir.path());
        let store = Store::connect_and_migrate(&url, 8).await.expect("database");
        let bus = connect(&nats).await;
        // What `custodian nats provision` does before the services start: they may not.
        let sweeper_ttl = Duration::from_secs(test_sweeper_config().lease_ttl_secs);
        custodian_bus::provision(&bus, sweeper_ttl).await.expect("provisioning");
        let provider = Provider::shared();
        let ours = std::fs::read(custodian_testkit::test_certificates().ca()).expect("the tests' CA");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .add_root_certificate(reqwest::Certificate::from_pem(&ours).expect("CA PEM"))
            .build()
            .expect("http");
        Stack {
            nats,
            store,
            bus,
            clock: clock::system(),
            gateway_url: String::new(),
            http,
            provider,
            consent: None,
            gateway: None,
            consent_config: test_consent_config(),
            sweepers: Vec::new(),
            vault: None,
            audit: None,
            incident: None,
            audit_signer: custodian_audit::Signer::generate("test-audit"),
            views: Vec::new(),
            keyring: custodian_crypto::KeyRing::ephemeral(),
            platform_token_speaks_for: TEST_PLATFORMS.iter().map(|p| (*p).to_owned()).collect(),
            gateway_limits: Default::default(),
            portal: Default::default(),
            vault_metrics: Default::default(),
            extra_audiences: Vec::new(),
            gateway_tls: None,
            ssf_transmitter: None,
            gateway_socket: None,
            ssf_receiver: None,
            ssf_push_token: None,
            _dir: dir,
        }
    }

    pub fn start_consent(&mut self) {
        self.consent = Some(self.spawn_consent(ConsentMetrics::default()));
    }

    /// A consent service replica reporting to `metrics`, beside [`Stack::start_consent`]'s.
    pub fn spawn_consent(&self, metrics: ConsentMetrics) -> (CancellationToken, JoinHandle<()>) {
        let (store, clock, bus) = (self.store.clone(), self.clock.clone(), self.service_bus(Service::Consent));
        let token = CancellationToken::new();
        let config = self.consent_config.clone();
        let run_token = token.clone();
        let handle = tokio::spawn(async move {
            let deps = custodian_consent::Deps { store, bus: bus.await, clock, metrics };
            if let Err(e) = custodian_consent::run(deps, config, run_token).await {
                tracing::error!(error = %e, "consent service stopped with an error");
            }
        });
        (token, handle)
    }

    /// Ends the consent service as a crash would: its task is dropped wherever it is.
    pub async fn crash_consent(&mut self) {
        crash(self.consent.take()).await;
    }

    /// Starts a sweeper replica named `replica`.
    pub fn start_sweeper(&mut self, replica: &str, config: custodian_sweeper::SweeperConfig) {
        let (store, clock, bus) = (self.store.clone(), self.clock.clone(), self.service_bus(Service::Sweeper));
        let name = replica.to_owned();
        let token = CancellationToken::new();
        let run_token = token.clone();
        let handle = tokio::spawn(async move {
            let deps =
                custodian_sweeper::Deps { store, bus: bus.await, clock, metrics: Default::default(), replica: name };
            if let Err(e) = custodian_sweeper::run(deps, config, run_token).await {
                tracing::error!(error = %e, "sweeper stopped with an error");
            }
        });
        self.sweepers.push((replica.to_owned(), token, handle));
    }

    /// Ends a sweeper replica as a crash would.
    pub async fn crash_sweeper(&mut self, replica: &str) {
        if let Some(i) = self.sweepers.iter().position(|(name, _, _)| name == replica) {
            let (_, token, handle) = self.sweepers.remove(i);
            crash(Some((token, handle))).await;
        }
    }

    /// Starts the vault with `config` (see [`test_vault_config`]).
    pub fn start_vault(&mut self, config: custodian_vault::VaultConfig) {
        let (store, clock, keyring, bus) =
            (self.store.clone(), self.clock.clone(), self.keyring.clone(), self.service_bus(Service::Vault));
        let metrics = self.vault_metrics.clone();
        self.vault = Some(spawn_service("vault", |token| async move {
            let deps = custodian_vault::Deps { store, bus: bus.await, clock, keyring, metrics };
            custodian_vault::run(deps, config, token).await
        }));
    }

    /// A second vault replica beside [`Stack::start_vault`]'s, sharing its durables and claims.
    pub fn spawn_vault(&self, config: custodian_vault::VaultConfig) -> (CancellationToken, JoinHandle<()>) {
        let (store, clock, keyring, bus) =
            (self.store.clone(), self.clock.clone(), self.keyring.clone(), self.service_bus(Service::Vault));
        let metrics = self.vault_metrics.clone();
        spawn_service("vault", |token| async move {
            let deps = custodian_vault::Deps { store, bus: bus.await, clock, keyring, metrics };
            custodian_vault::run(deps, config, token).await
        })
    }

    /// Starts the audit service (identities sealed under the stack's key ring).
    pub fn start_audit(&mut self, config: custodian_audit::AuditConfig) {
        self.audit = Some(self.spawn_audit(config, custodian_audit::AuditMetrics::default()));
    }

    /// An audit service replica reporting to `metrics`, beside [`Stack::start_audit`]'s.
    pub fn spawn_audit(
        &self,
        config: custodian_audit::AuditConfig,
        metrics: custodian_audit::AuditMetrics,
    ) -> (CancellationToken, JoinHandle<()>) {
        let (store, clock, keyring, signer, bus) = (
            self.store.clone(),
            self.clock.clone(),
            self.keyring.clone(),
            self.audit_signer.clone(),
            self.service_bus(Service::Audit),
        );
        spawn_service("audit", |token| async move {
            let deps = custodian_audit::Deps { store, bus: bus.await, clock, keyring, signer, metrics };
            custodian_audit::run(deps, config, token).await
        })
    }

    /// Ends the audit service as a crash would: whatever it had in hand is dropped unacked.
    pub async fn crash_audit(&mut self) {
        crash(self.audit.take()).await;
    }

    /// Starts the incident service (credentials sealed under the stack's key ring).
    pub fn start_incident(&mut self, config: custodian_incident::IncidentConfig) {
        let (store, clock, keyring, bus) =
            (self.store.clone(), self.clock.clone(), self.keyring.clone(), self.service_bus(Service::Incident));
        self.incident = Some(spawn_service("incident", |token| async move {
            let deps = custodian_incident::Deps { store, bus: bus.await, clock, keyring, metrics: Default::default() };
            custodian_incident::run(deps, config, token).await
        }));
    }

    /// Ends the incident service as a crash would.
    pub async fn crash_incident(&mut self) {
        crash(self.incident.take()).await;
    }

    /// Ends the vault as a crash would: its tasks are dropped wherever they are.
    pub async fn crash_vault(&mut self) {
        crash(self.vault.take()).await;
    }

    /// A view (the SDK) on its own NATS connection, listening for wipes.
    pub async fn start_view(&mut self, view_id: &str) -> custodian_view_sdk::View {
        let view =
            custodian_view_sdk::View::new(view_id, self.view_bus(view_id).await, self.clock.clone()).expect("view");
        self.run_view(&view);
        view
    }

    /// The demo view (the reference view) for `platform_id`, on plain HTTP on loopback: it
    /// knows people by the gateway's session cookie and fetches their profile from the OP.
    /// Returns its base URL.
    pub async fn start_demo_view(&mut self, platform_id: &str) -> String {
        let bus = self.view_bus("demo").await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let config = custodian_demo_view::DemoViewConfig {
            enabled: true,
            listen: listener.local_addr().expect("addr"),
            view_id: "demo".into(),
            platform_id: platform_id.to_owned(),
            userinfo_url: Some(format!("{}/me", self.provider.issuer)),
            ca_file: Some(self.provider.ca_file.clone()),
            portal_url: self.gateway_url.clone(),
            session_cookie: match self.gateway_tls {
                Some(_) => "__Host-custodian_session".into(),
                None => "custodian_session".into(),
            },
            ..Default::default()
        };
        let deps = custodian_demo_view::Deps { bus, clock: self.clock.clone(), listener };
        let token = CancellationToken::new();
        let run_token = token.clone();
        let handle = tokio::spawn(async move {
            if let Err(e) = custodian_demo_view::run(deps, config, run_token).await {
                tracing::error!(error = %e, "demo view stopped with an error");
            }
        });
        self.views.push(("demo".into(), token, handle));
        url
    }

    /// (Re)starts `view`'s wipe listener.
    pub fn run_view(&mut self, view: &custodian_view_sdk::View) {
        let token = CancellationToken::new();
        let (run_token, running) = (token.clone(), view.clone());
        let handle = tokio::spawn(async move {
            if let Err(e) = running.run(run_token).await {
                tracing::error!(error = %e, "view stopped with an error");
            }
        });
        self.views.push((view.view_id().to_owned(), token, handle));
    }

    /// Stops `view_id`'s listener (the view is away); its memory stays as it is.
    pub async fn pause_view(&mut self, view_id: &str) {
        while let Some(i) = self.views.iter().position(|(id, _, _)| id == view_id) {
            let (_, token, handle) = self.views.remove(i);
            token.cancel();
            handle.abort();
            let _ = handle.await;
        }
    }

    /// Registers a client at the OP whose redirect URI is this stack's gateway, and returns
    /// vault client settings for it.
    pub async fn register_platform(&self) -> (custodian_testkit::RegisteredClient, custodian_oidc::ClientSettings) {
        let callback = self.url("/callback");
        let client = self.provider.register_client(&[&callback]).await;
        let settings = self.register_platform_settings(&client);
        (client, settings)
    }

    /// Vault client settings for a client registered by the test itself.
    pub fn register_platform_settings(
        &self,
        client: &custodian_testkit::RegisteredClient,
    ) -> custodian_oidc::ClientSettings {
        custodian_oidc::ClientSettings {
            issuer: self.provider.issuer.clone(),
            ca_file: Some(self.provider.ca_file.clone()),
            client_id: client.client_id.clone(),
            client_secret: client.client_secret.clone().into(),
            redirect_uri: self.url("/callback"),
            scopes: vec!["openid".into(), "offline_access".into()],
            required_acr: None,
            acr_order: Vec::new(),
            timeout_secs: 10,
        }
    }

    /// Signs `username` in through the gateway's /login (the OP's real pages), returning the
    /// browser (holding the session cookie) and the session cookie's value.
    pub async fn login_through_gateway(&self, username: &str) -> (reqwest::Client, String, String) {
        let browser = self.provider.browser();
        let start = browser.get(self.url("/login")).send().await.expect("GET /login");
        assert_eq!(start.status(), reqwest::StatusCode::SEE_OTHER, "{:?}", start.text().await);
        let (login_name, session_name) = match self.gateway_tls {
            Some(_) => ("__Secure-custodian_login", "__Host-custodian_session"),
            None => ("custodian_login", "custodian_session"),
        };
        let login_cookie = set_cookie_header(&start, login_name).expect("login cookie");
        assert!(login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Lax"), "{login_cookie}");
        let to_op = start.headers()[reqwest::header::LOCATION].to_str().expect("location").to_owned();
        let back = self.provider.drive_interactions(&browser, to_op, username, &self.url("/callback")).await;
        let code = reqwest::Url::parse(&back)
            .expect("callback URL")
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .expect("code in callback");
        let done = browser.get(&back).send().await.expect("GET /callback");
        assert_eq!(done.status(), reqwest::StatusCode::SEE_OTHER, "callback: {:?}", done.text().await);
        let session = set_cookie_header(&done, session_name).expect("session cookie");
        assert!(session.contains("HttpOnly") && session.contains("SameSite=Lax"), "{session}");
        let value =
            session.split(';').next().and_then(|kv| kv.split_once('=')).map(|(_, v)| v.to_owned()).expect("value");
        (browser, value, code)
    }

    /// Restarts the gateway on the same socket (e.g. to accept a newly registered platform).
    /// The stack keeps the listening socket open in between, so no parallel test can take the
    /// port meanwhile.
    pub async fn restart_gateway(&mut self) {
        if let Some((token, handle)) = self.gateway.take() {
            token.cancel();
            handle.abort();
            let _ = handle.await;
        }
        self.start_gateway().await;
    }

    pub async fn start_gateway(&mut self) {
        if self.gateway_socket.is_none() {
            let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            socket.set_nonblocking(true).expect("non-blocking");
            self.gateway_socket = Some(socket);
        }
        let socket = self.gateway_socket.as_ref().expect("socket").try_clone().expect("dup socket");
        let listener = tokio::net::TcpListener::from_std(socket).expect("listener");
        let scheme = if self.gateway_tls.is_some() { "https" } else { "http" };
        self.gateway_url = format!("{scheme}://{}", listener.local_addr().expect("addr"));
        let config = GatewayConfig {
            listen: listener.local_addr().expect("addr"),
            oidc: Some(PersonAuthConfig {
                issuer: self.provider.issuer.clone(),
                audience: TEST_CLIENT_ID.to_owned(),
                ca_file: Some(self.provider.ca_file.clone()),
                extra_audiences: self.extra_audiences.clone(),
                required_acr: Some("urn:custodian:acr:substantial".into()),
                acr_order: vec![
                    "urn:custodian:acr:low".into(),
                    "urn:custodian:acr:substantial".into(),
                    "urn:custodian:acr:high".into(),
                ],
                ssf_push_token_sha256: self.ssf_push_token.as_deref().map(token_digest),
            }),
            machine_tokens: vec![
                MachineToken {
                    name: "test-platform".into(),
                    role: Role::Platform,
                    sha256: token_digest(PLATFORM_TOKEN),
                    platform_ids: self.platform_token_speaks_for.clone(),
                },
                MachineToken {
                    name: "test-other-platform".into(),
                    role: Role::Platform,
                    sha256: token_digest(OTHER_PLATFORM_TOKEN),
                    platform_ids: vec![OTHER_PLATFORM.into()],
                },
                MachineToken {
                    name: "test-ops".into(),
                    role: Role::Ops,
                    sha256: token_digest(OPS_TOKEN),
                    platform_ids: Vec::new(),
                },
                MachineToken {
                    name: "test-dpo".into(),
                    role: Role::Dpo,
                    sha256: token_digest(DPO_TOKEN),
                    platform_ids: Vec::new(),
                },
                MachineToken {
                    name: "test-responder".into(),
                    role: Role::Responder,
                    sha256: token_digest(RESPONDER_TOKEN),
                    platform_ids: Vec::new(),
                },
            ],
            login: custodian_gateway::LoginConfig { public_url: self.gateway_url.clone(), after_login: "/".into() },
            ssf_transmitter: self.ssf_transmitter.clone(),
            ssf_receiver: self.ssf_receiver.clone(),
            tls: self.gateway_tls.clone(),
            behind_tls_proxy: false,
            max_clock_skew_secs: custodian_events::MAX_CLOCK_SKEW.as_secs(),
            limits: self.gateway_limits.clone(),
            portal: self.portal.clone(),
        };
        let (store, clock, bus) = (self.store.clone(), self.clock.clone(), self.service_bus(Service::Gateway));
        let token = CancellationToken::new();
        let run_token = token.clone();
        let handle = tokio::spawn(async move {
            let deps = custodian_gateway::Deps {
                bus: bus.await,
                store: Some(store),
                clock,
                listener,
                registry: {
                    let mut registry = prometheus_client::registry::Registry::default();
                    custodian_bus::metrics::register(&mut registry);
                    registry
                },
            };
            if let Err(e) = custodian_gateway::run(deps, config, run_token).await {
                tracing::error!(error = %e, "gateway stopped with an error");
            }
        });
        self.gateway = Some((token, handle));
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway_url)
    }

    /// Publishes straight onto JetStream, as a platform service would.
    pub async fn publish<T: EventData>(&self, subject: &str, event: &CloudEvent<T>) {
        self.bus.publish_event(subject, event).await.expect("publish");
    }

    /// Publishes bytes straight onto JetStream; returns the stream sequence it was stored at.
    pub async fn publish_raw(&self, subject: &str, payload: Vec<u8>) -> u64 {
        let ack = self.bus.jetstream().publish(subject.to_owned(), payload.into()).await.expect("publish raw");
        ack.await.expect("raw publish ack").sequence
    }

    /// Waits until a durable consumer of `service` has acknowledged the stream through
    /// `sequence`: what was published up to there has been applied (or dead-lettered).
    pub async fn processed_through(&self, service: &str, sequence: u64) {
        use futures::TryStreamExt;
        let prefix = format!("{service}-");
        let what = format!("{service} to acknowledge the stream through {sequence}");
        eventually(&what, Duration::from_secs(20), || async {
            let stream = self.bus.jetstream().get_stream(subjects::STREAM).await.expect("stream");
            let infos: Vec<jetstream::consumer::Info> = stream.consumers().try_collect().await.expect("consumers");
            infos.iter().any(|i| i.name.starts_with(&prefix) && i.ack_floor.stream_sequence >= sequence).then_some(())
        })
        .await
    }

    /// Waits until the vault has taken in `expected` view sessions of `platform` (it applies
    /// `session.opened` asynchronously: one it has not yet seen is on no receipt).
    pub async fn vault_knows_sessions(&self, platform: &str, expected: u64) {
        use custodian_store::entities::view_session;
        use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
        custodian_testkit::eventually_explained("the vault to know every session", Duration::from_secs(30), || async {
            let known = view_session::Entity::find()
                .filter(view_session::Column::PlatformId.eq(platform))
                .count(self.store.db())
                .await
                .map_err(|e| e.to_string())?;
            if known == expected { Ok(()) } else { Err(format!("{known} of {expected}")) }
        })
        .await
    }

    /// The ledger as operators see it, straight from the consent service.
    pub async fn ledger(&self, query: custodian_events::queries::ConsentQuery) -> Vec<ConsentView> {
        // Patient: the ledger may be busy applying a large batch when asked.
        let reply: custodian_events::queries::ConsentReply = custodian_bus::query(
            self.bus.client(),
            custodian_events::queries::CONSENTS,
            &query,
            Duration::from_secs(20),
        )
        .await
        .expect("ledger query");
        match reply {
            custodian_events::queries::ConsentReply::Consents(v) => v,
            custodian_events::queries::ConsentReply::Error(e)
            | custodian_events::queries::ConsentReply::Unavailable(e) => {
                panic!("ledger query refused: {e}")
            }
        }
    }

    /// How many messages the stream holds on `subject` (wildcards allowed).
    pub async fn count_on(&self, subject: &str) -> u64 {
        count_on(self.bus.jetstream(), subject).await
    }

    /// What this test's busy PostgreSQL sessions are doing (state, what they wait for, how long
    /// their transaction has been open, their statement), to explain a wait that timed out;
    /// empty on SQLite.
    pub async fn database_activity(&self) -> String {
        use sea_orm::{ConnectionTrait, DbBackend, Statement};
        if self.store.backend() != DbBackend::Postgres {
            return String::new();
        }
        let sql = "SELECT pid, state, coalesce(wait_event_type || ':' || wait_event, '-') AS waiting, \
                   coalesce(extract(epoch FROM now() - xact_start)::int, -1) AS xact_secs, left(query, 80) AS query \
                   FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
                   AND state <> 'idle' ORDER BY xact_start";
        match self.store.db().query_all_raw(Statement::from_string(DbBackend::Postgres, sql)).await {
            Ok(rows) => rows
                .iter()
                .map(|r| {
                    let pid: i32 = r.try_get("", "pid").unwrap_or_default();
                    let state: String = r.try_get("", "state").unwrap_or_default();
                    let waiting: String = r.try_get("", "waiting").unwrap_or_default();
                    let secs: i32 = r.try_get("", "xact_secs").unwrap_or_default();
                    let query: String = r.try_get("", "query").unwrap_or_default();
                    format!("[{pid} {state} wait={waiting} xact={secs}s: {query}]")
                })
                .collect::<Vec<_>>()
                .join(" "),
            Err(e) => format!("pg_stat_activity unreadable: {e}"),
        }
    }

    /// How many messages the stream holds on `subject` once at least `expected` have arrived.
    /// Events written to an outbox reach the stream after the state change that wrote them
    /// commits, so a count read right after observing that state can be short; a count above
    /// `expected` is returned as is for the caller's assertion to catch.
    pub async fn count_on_settled(&self, subject: &str, expected: u64) -> u64 {
        let what = format!("{expected} message(s) on {subject}");
        eventually(&what, Duration::from_secs(20), || async {
            let n = self.count_on(subject).await;
            (n >= expected).then_some(n)
        })
        .await
    }

    /// Every message on `subject`, in stream order, as JSON.
    pub async fn messages_on(&self, subject: &str) -> Vec<(String, serde_json::Value)> {
        let stream = self.bus.jetstream().get_stream(subjects::STREAM).await.expect("stream");
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject.to_owned(),
                ..Default::default()
            })
            .await
            .expect("ordered consumer");
        let expected = self.count_on(subject).await as usize;
        let mut out = Vec::new();
        if expected == 0 {
            return out;
        }
        use futures::StreamExt;
        let mut messages = consumer.messages().await.expect("messages");
        while out.len() < expected {
            let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await.expect("message in time");
            let message = next.expect("stream open").expect("message");
            out.push((message.subject.to_string(), serde_json::from_slice(&message.payload).unwrap_or_default()));
        }
        out
    }
}

/// The test's own connection (the harness user: it inspects the stream and plays whatever a
/// test needs it to); it creates the stream.
pub async fn connect(nats: &NatsServer) -> Bus {
    Bus::new(nats.connect_harness().await, &StreamSettings::default()).await.expect("stream")
}

impl Stack {
    /// A connection as `service`'s own identity, made when the returned future runs (in the
    /// service's task): nats-server holds it to what the permission table allows. Each
    /// instance has its own, and loses it when it crashes, as a process would: its
    /// subscriptions go with it (a request then finds no responder and is asked again).
    pub fn service_bus(&self, service: Service) -> impl std::future::Future<Output = Bus> + Send + 'static {
        let access = self.nats.access();
        async move {
            let identity = Identity::Service(service);
            let client = access.connect(&identity, "custodian-test").await.expect("NATS as a service");
            Bus::new(client, &StreamSettings::default()).await.expect("stream opened as a service")
        }
    }

    /// A connection as view `view_id`'s identity (given one on the server first).
    pub async fn view_bus(&mut self, view_id: &str) -> Bus {
        self.nats.add_view(view_id);
        let identity = Identity::view(view_id).expect("view id");
        Bus::attach(self.nats.connect(&identity, "custodian-test-view").await)
    }
}

pub async fn count_on(js: &jetstream::Context, subject: &str) -> u64 {
    let stream = js.get_stream(subjects::STREAM).await.expect("stream");
    let info = stream.info_with_subjects(subject).await.expect("stream info");
    use futures::TryStreamExt;
    let counts: Vec<(String, usize)> = info.try_collect().await.expect("subject counts");
    counts.into_iter().map(|(_, n)| n as u64).sum()
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (token, handle) in
            [self.consent.take(), self.gateway.take(), self.vault.take(), self.audit.take(), self.incident.take()]
                .into_iter()
                .flatten()
        {
            token.cancel();
            handle.abort();
        }
        for (_, token, handle) in self.sweepers.drain(..).chain(self.views.drain(..)) {
            token.cancel();
            handle.abort();
        }
    }
}

fn set_cookie_header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// Every assertion row, decrypted with the vault's key ring (what the tokens are).
pub async fn stored_bundles(
    stack: &Stack,
) -> Vec<(custodian_store::entities::assertion::Model, custodian_vault::TokenBundle)> {
    let rows = custodian_store::entities::assertion::Entity::find().all(stack.store.db()).await.expect("assertions");
    rows.into_iter()
        .map(|row| {
            let envelope = custodian_crypto::Envelope {
                key_id: row.key_id.clone(),
                wrapped_key: row.wrapped_key.clone(),
                ciphertext: row.ciphertext.clone(),
            };
            let plain =
                stack.keyring.open(&envelope, &custodian_vault::assertion_aad(&row.assertion_id)).expect("decrypts");
            let bundle: custodian_vault::TokenBundle = serde_json::from_slice(&plain).expect("bundle");
            (row, bundle)
        })
        .collect()
}

/// Runs a service's `run` future as its own task, with a token to stop it and a handle to
/// abort it (a crash).
fn spawn_service<F, E>(
    name: &'static str,
    run: impl FnOnce(CancellationToken) -> F,
) -> (CancellationToken, JoinHandle<()>)
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let token = CancellationToken::new();
    let future = run(token.clone());
    let handle = tokio::spawn(async move {
        if let Err(e) = future.await {
            tracing::error!(service = name, error = %e, "service stopped with an error");
        }
    });
    (token, handle)
}

/// A unique person per test (tests share the OP).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub fn at(offset_secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000 + offset_secs, 0).expect("time")
}

/// Drops a service's task wherever it is, as a crash would (its shutdown token is not used).
async fn crash(service: Option<(CancellationToken, JoinHandle<()>)>) {
    if let Some((_, handle)) = service {
        handle.abort();
        let _ = handle.await;
    }
}

/// The headers every page of personal data carries: script and style from its own origin
/// only, never framed, never sniffed, never cached, no referrer.
#[track_caller]
pub fn assert_page_headers(headers: &reqwest::header::HeaderMap, page: &str) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let csp = header("content-security-policy");
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{page}: {headers:?}");
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{page}: {csp}");
    assert_eq!(header("x-frame-options"), "DENY", "{page}");
    assert_eq!(header("x-content-type-options"), "nosniff", "{page}");
    assert_eq!(header("referrer-policy"), "no-referrer", "{page}");
    assert_eq!(header("cache-control"), "no-store", "{page}");
}
