//! `custodian up` and `custodian serve <service>`: the same `run` functions the tests call,
//! wired to real connections and OS signals.

use anyhow::Context;
use custodian_bus::trust::{Identity, Service};
use custodian_bus::{Bus, StreamSettings, Supervisor};
use custodian_store::Store;
use custodian_store::clock;
use prometheus_client::registry::Registry;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceName {
    Consent,
    Gateway,
    Sweeper,
    Vault,
    Audit,
    Incident,
    /// The demo view (a small web page holding data in memory through the view SDK).
    DemoView,
}

impl ServiceName {
    /// Its `service.name` in traces.
    pub fn service_name(self) -> &'static str {
        match self {
            Self::Consent => "custodian-consent",
            Self::Gateway => "custodian-gateway",
            Self::Sweeper => "custodian-sweeper",
            Self::Vault => "custodian-vault",
            Self::Audit => "custodian-audit",
            Self::Incident => "custodian-incident",
            Self::DemoView => "custodian-view",
        }
    }
}

pub async fn up(config: Config) -> anyhow::Result<()> {
    let mut all =
        vec![ServiceName::Consent, ServiceName::Sweeper, ServiceName::Vault, ServiceName::Audit, ServiceName::Incident];
    all.push(ServiceName::Gateway);
    if config.demo_view.enabled {
        all.push(ServiceName::DemoView);
    }
    run_services(config, &all).await
}

pub async fn serve(config: Config, service: ServiceName) -> anyhow::Result<()> {
    run_services(config, &[service]).await
}

pub fn stream_settings(config: &Config) -> StreamSettings {
    StreamSettings {
        replicas: config.stream.replicas,
        duplicate_window: std::time::Duration::from_secs(config.stream.duplicate_window_secs),
        max_age: std::time::Duration::from_secs(config.stream.max_age_secs),
    }
}

/// A NATS connection as `identity` (its own credentials and inbox).
pub async fn connect_client(
    config: &Config,
    identity: &Identity,
    client_name: &str,
) -> anyhow::Result<async_nats::Client> {
    // Services wait for a server that is not up yet; one-shot commands fail at once, with
    // the server's reason (a refused certificate or credentials).
    let connected = if matches!(identity, Identity::Service(_) | Identity::View(_)) {
        config.nats.connect(identity, client_name).await
    } else {
        config.nats.connect_once(identity, client_name).await
    };
    connected.with_context(|| format!("NATS as {identity}"))
}

/// [`connect_client`] with the stream opened (it must exist: `custodian nats provision`).
pub async fn connect_bus(config: &Config, identity: &Identity, client_name: &str) -> anyhow::Result<Bus> {
    let client = connect_client(config, identity, client_name).await?;
    Bus::new(client, &stream_settings(config))
        .await
        .with_context(|| format!("the stream, as {identity} (provisioned? `custodian nats provision`)"))
}

fn service(s: custodian_bus::trust::Service) -> Identity {
    Identity::Service(s)
}

async fn run_services(config: Config, which: &[ServiceName]) -> anyhow::Result<()> {
    let store = Store::connect_and_migrate(config.database_url.expose_secret(), config.database_max_connections)
        .await
        .context("database")?;
    // Every service on its own connection, as its own identity: nats-server holds each to
    // what the permission table lets it do, also when they share this process.
    let config_ref = &config;
    let bus_of = move |s: Service| async move { connect_bus(config_ref, &service(s), "custodian").await };
    let clock = clock::system();
    let shutdown = CancellationToken::new();
    let mut registry = Registry::default();
    custodian_bus::metrics::register(&mut registry);
    let mut tasks = Supervisor::new(shutdown.clone());
    tasks.spawn("signals", wait_for_signal(shutdown.clone()));

    if which.contains(&ServiceName::Consent) {
        let metrics = custodian_consent::ConsentMetrics::default();
        metrics.register(&mut registry);
        let bus = bus_of(Service::Consent).await?;
        let deps = custodian_consent::Deps { store: store.clone(), bus, clock: clock.clone(), metrics };
        tasks.spawn("consent", custodian_consent::run(deps, config.consent.clone(), shutdown.clone()));
    }
    if which.contains(&ServiceName::Sweeper) {
        let metrics = custodian_sweeper::SweeperMetrics::default();
        metrics.register(&mut registry);
        let replica = config.replica.clone().unwrap_or_else(default_replica);
        let bus = bus_of(Service::Sweeper).await?;
        let deps = custodian_sweeper::Deps { store: store.clone(), bus, clock: clock.clone(), metrics, replica };
        tasks.spawn("sweeper", custodian_sweeper::run(deps, config.sweeper.clone(), shutdown.clone()));
    }
    if which.contains(&ServiceName::Vault) {
        let ring = config.vault.keyring.as_ref().context(
            "vault.keyring is required (tokens are sealed under it): run `custodian keys new --id k1` and add its output to custodian.toml",
        )?;
        let keyring = custodian_crypto::KeyRing::from_config(ring).context("vault.keyring")?;
        let metrics = custodian_vault::VaultMetrics::default();
        metrics.register(&mut registry);
        let bus = bus_of(Service::Vault).await?;
        let deps = custodian_vault::Deps { store: store.clone(), bus, clock: clock.clone(), keyring, metrics };
        tasks.spawn("vault", custodian_vault::run(deps, config.vault.clone(), shutdown.clone()));
    }
    if which.contains(&ServiceName::Audit) {
        let seed = config.audit.signing_key.as_ref().context(
            "audit.signing_key is required (it signs the chain's checkpoints): run `custodian audit keygen`",
        )?;
        let signer = custodian_audit::Signer::from_base64(&config.audit.signing_key_id, seed.expose_secret())
            .map_err(anyhow::Error::msg)?;
        let ring = config
            .audit
            .keyring
            .as_ref()
            .context("audit.keyring is required (it seals caller identities): run `custodian audit keygen`")?;
        let keyring = custodian_crypto::KeyRing::from_config(ring).context("audit.keyring")?;
        let metrics = custodian_audit::AuditMetrics::default();
        metrics.register(&mut registry);
        let deps = custodian_audit::Deps {
            store: store.clone(),
            bus: bus_of(Service::Audit).await?,
            clock: clock.clone(),
            keyring,
            signer,
            metrics,
        };
        tasks.spawn("audit", custodian_audit::run(deps, config.audit.clone(), shutdown.clone()));
    }
    if which.contains(&ServiceName::Incident) {
        let ring = config.incident.keyring.as_ref().or(config.vault.keyring.as_ref()).context(
            "incident.keyring (or vault.keyring) is required: the platforms' client credentials are sealed under it",
        )?;
        let keyring = custodian_crypto::KeyRing::from_config(ring).context("incident.keyring")?;
        let metrics = custodian_incident::IncidentMetrics::default();
        metrics.register(&mut registry);
        let bus = bus_of(Service::Incident).await?;
        let deps = custodian_incident::Deps { store: store.clone(), bus, clock: clock.clone(), keyring, metrics };
        tasks.spawn("incident", custodian_incident::run(deps, config.incident.clone(), shutdown.clone()));
    }
    if which.contains(&ServiceName::DemoView) {
        let listener = tokio::net::TcpListener::bind(config.demo_view.listen)
            .await
            .with_context(|| format!("cannot listen on {} (CUSTODIAN_DEMO_VIEW__LISTEN)", config.demo_view.listen))?;
        let view = Identity::view(&config.demo_view.view_id).context("demo_view.view_id")?;
        let view_bus = Bus::attach(connect_client(&config, &view, "custodian-demo-view").await?);
        let deps = custodian_demo_view::Deps { bus: view_bus, clock: clock.clone(), listener };
        tasks.spawn("demo-view", custodian_demo_view::run(deps, config.demo_view.clone(), shutdown.clone()));
    }
    if which.contains(&ServiceName::Gateway) {
        let listener = tokio::net::TcpListener::bind(config.gateway.listen)
            .await
            .with_context(|| format!("cannot listen on {} (CUSTODIAN_GATEWAY__LISTEN)", config.gateway.listen))?;
        let deps = custodian_gateway::Deps {
            bus: bus_of(Service::Gateway).await?,
            store: Some(store.clone()),
            clock: clock.clone(),
            listener,
            registry,
        };
        tasks.spawn("gateway", custodian_gateway::run(deps, config.gateway.clone(), shutdown.clone()));
    } else if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (CUSTODIAN_METRICS_LISTEN)"))?;
        tasks.spawn("metrics", custodian_gateway::serve_metrics(listener, registry, shutdown.clone()));
    } else if custodian_telemetry::metrics_export::target().is_some() {
        tasks.spawn("metrics-export", custodian_gateway::export_metrics(registry, shutdown.clone()));
    }
    tracing::info!(services = ?which, nats = %custodian_bus::redact(&config.nats_url), "custodian running; Ctrl-C to stop");
    tasks.wait().await?;
    Ok(())
}

async fn wait_for_signal(shutdown: CancellationToken) -> Result<(), std::io::Error> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = term.recv() => tracing::info!("terminated; shutting down"),
        () = shutdown.cancelled() => {}
    }
    shutdown.cancel();
    Ok(())
}

fn default_replica() -> String {
    format!("{}-{}", custodian_bus::lease::host_name(), std::process::id())
}
