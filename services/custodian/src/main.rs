//! `custodian`: the command line of Custodian and `custodian up`, every service in one
//! process (still talking over NATS, exactly as when deployed apart).

mod commands;
mod config;
mod dossier;
mod event_file;
mod nats;
mod services;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The services allocate and free many small buffers per event (decoding, SQL parameters);
// glibc's allocator spent ~7% of the ingest profile in malloc/free, mimalloc a third of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "custodian",
    version,
    about = "Keeps a trusted platform's promises about consent, tokens and sessions"
)]
struct Cli {
    /// Configuration file (default: ./custodian.toml if present).
    #[arg(long, global = true, env = "CUSTODIAN_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service in this process.
    Up,
    /// Run one service.
    Serve {
        #[arg(value_enum)]
        service: services::ServiceName,
    },
    /// Apply pending database migrations.
    Migrate,
    /// The consent ledger.
    #[command(subcommand)]
    Consents(commands::ConsentsCommand),
    /// Lifecycle events.
    #[command(subcommand)]
    Events(commands::EventsCommand),
    /// Inactivity sweeps.
    #[command(subcommand)]
    Sweep(commands::SweepCommand),
    /// Machine bearer tokens for the gateway.
    #[command(subcommand)]
    Token(commands::TokenCommand),
    /// The platforms' client credentials.
    #[command(subcommand)]
    Credentials(commands::CredentialsCommand),
    /// Incident response.
    #[command(subcommand)]
    Incident(commands::IncidentCommand),
    /// The audit chain and the privacy log.
    #[command(subcommand)]
    Audit(commands::AuditCommand),
    /// Key-encryption keys for the vault.
    #[command(subcommand)]
    Keys(commands::KeysCommand),
    /// The platform's documentation (seed §1.6): infrastructure, views, protocols and the
    /// measures protecting its secret and the people's assertions, from the configuration
    /// and the database's live state. Never prints a secret.
    Dossier(commands::DossierArgs),
    /// NATS identities, the server's rendered permissions, and provisioning.
    #[command(subcommand)]
    Nats(nats::NatsCommand),
    /// The stream, each service's consumer (who leads, what waits), unpublished outbox
    /// events, dead letters, and what needs an operator (`--check`: exit 1 then).
    Status(commands::StatusArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let long_running = matches!(cli.command, Command::Up | Command::Serve { .. });
    if !long_running && std::env::var_os("CUSTODIAN_LOG").is_none() {
        // One-shot commands print results, not service logs.
        set_quiet_logging();
    }
    // A service run alone names every span of its process; `up` and the CLI name theirs per
    // service, and the rest `custodian`.
    let default_service = match &cli.command {
        Command::Serve { service } => service.service_name(),
        _ => "custodian",
    };
    let _telemetry = match custodian_telemetry::init(default_service) {
        Ok(guard) => Some(guard),
        Err(e) => {
            eprintln!("warning: telemetry not initialised: {e}");
            None
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let config = config::Config::load(cli.config.as_deref())?;
        match cli.command {
            Command::Up => services::up(config).await,
            Command::Serve { service } => services::serve(config, service).await,
            Command::Migrate => commands::migrate(&config).await,
            Command::Consents(cmd) => commands::consents(&config, cmd).await,
            Command::Events(cmd) => commands::events(&config, cmd).await,
            Command::Sweep(cmd) => commands::sweep(&config, cmd).await,
            Command::Token(cmd) => commands::token(cmd),
            Command::Keys(cmd) => commands::keys(cmd),
            Command::Audit(cmd) => commands::audit(&config, cmd).await,
            Command::Incident(cmd) => commands::incident(&config, cmd).await,
            Command::Credentials(cmd) => commands::credentials(&config, cmd).await,
            Command::Dossier(args) => commands::dossier(&config, cli.config.as_deref(), args).await,
            Command::Status(args) => commands::status(&config, args).await,
            Command::Nats(cmd) => nats::nats(&config, cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn set_quiet_logging() {
    // Read by custodian_telemetry::init; only `warn` and above reach the terminal.
    custodian_telemetry::set_default_filter("warn");
}
