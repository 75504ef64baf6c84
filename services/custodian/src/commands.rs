//! One-shot commands: migrations, the ledger, events, tokens.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::Subcommand;
use custodian_bus::Outgoing;
use custodian_bus::trust::{Identity, Operator};
use custodian_events::queries::{self, ConsentQuery, ConsentReply, ConsentView};
use custodian_events::vault::{self, Receipt, RevocationQuery, RevocationReply};
use custodian_events::{CloudEvent, ConsentRevokedV1, RevokeReason, subjects};
use custodian_store::{Store, clock::Clock as _};
use secrecy::ExposeSecret;

use crate::config::Config;
use crate::services::{connect_bus, connect_client};

/// Who the command line is on NATS: an operator; the privacy log is the DPO's.
const OPS: Identity = Identity::Operator(Operator::Ops);
const DPO: Identity = Identity::Operator(Operator::Dpo);

#[derive(Debug, Subcommand)]
pub enum ConsentsCommand {
    /// List consents (all, or filtered).
    List {
        #[arg(long)]
        issuer: Option<String>,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        platform: Option<String>,
        #[arg(long, value_parser = ["granted", "revoked", "expired"])]
        state: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one consent and its whole history.
    Show {
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        subject: String,
        #[arg(long)]
        platform: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a consent as an administrator.
    Revoke {
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        subject: String,
        #[arg(long)]
        platform: String,
        /// Who asks (recorded in the event).
        #[arg(long, default_value = "custodian-cli")]
        actor: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Publish the CloudEvents of a file: one JSON event, a JSON array of events, or JSON
    /// Lines (`-` reads standard input). Every event is validated as on the bus before any is
    /// published; one bad event publishes nothing.
    Publish { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum SweepCommand {
    /// Start an inactivity sweep now and follow it with a progress bar.
    Run {
        /// Only this platform (default: every platform).
        #[arg(long)]
        platform: Option<String>,
        /// Report what would expire; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, default_value_t = 90)]
        inactivity_days: u32,
        /// Print the sweep id and return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show one sweep.
    Show { sweep_id: String },
}

#[derive(Debug, Subcommand)]
pub enum CredentialsCommand {
    /// Rotate a platform's client secret at the OP (RFC 7592), planned: verified, switched
    /// without restart, the old one retired.
    Rotate {
        #[arg(long)]
        platform: String,
        /// Wait until it is done and print the outcome.
        #[arg(long)]
        wait: bool,
    },
}

pub async fn credentials(config: &Config, cmd: CredentialsCommand) -> anyhow::Result<()> {
    match cmd {
        CredentialsCommand::Rotate { platform, wait } => {
            let client = connect_client(config, &OPS, "custodian-cli").await?;
            let request = custodian_events::incident::RotateRequest {
                platform_id: platform,
                requested_by: format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into())),
            };
            let reply: custodian_events::incident::RotateReply =
                custodian_bus::query(&client, custodian_events::incident::ROTATE, &request, Duration::from_secs(10))
                    .await?;
            let id = match reply {
                custodian_events::incident::RotateReply::Started { rotation_id } => rotation_id,
                custodian_events::incident::RotateReply::Error(e) => bail!("the incident service refused: {e}"),
            };
            println!("rotation {id} started; `custodian incident show {id}` follows it");
            if wait {
                for _ in 0..600 {
                    let query =
                        custodian_events::incident::IncidentQuery { incident_id: id.clone(), ..Default::default() };
                    if let Ok(custodian_events::incident::IncidentReply::Incident(view)) = custodian_bus::query(
                        &client,
                        custodian_events::incident::INCIDENTS,
                        &query,
                        Duration::from_secs(5),
                    )
                    .await
                        && view.state == "closed"
                    {
                        println!("done: {}", view.steps.first().map(|s| s.detail.to_string()).unwrap_or_default());
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                bail!("rotation {id} not done after 5 minutes; see `custodian incident show {id}`");
            }
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum IncidentCommand {
    /// Report an incident: the DPO is notified at once, containment and rotation follow.
    Report {
        #[arg(long, value_parser = ["data_leak", "credential_loss", "platform_compromise", "user_compromise"])]
        kind: String,
        #[arg(long)]
        platform: String,
        #[arg(long)]
        summary: String,
        /// The person concerned (user_compromise).
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        issuer: Option<String>,
        /// Who reports (recorded in the register).
        #[arg(long, default_value = "custodian-cli")]
        reporter: String,
    },
    /// The incident's workflow: each step, its state, attempts, errors and times.
    Show {
        incident_id: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn incident(config: &Config, cmd: IncidentCommand) -> anyhow::Result<()> {
    match cmd {
        IncidentCommand::Report { kind, platform, summary, subject, issuer, reporter } => {
            let kind: custodian_events::IncidentKind = serde_json::from_value(serde_json::Value::String(kind))?;
            let bus = connect_bus(config, &OPS, "custodian-cli").await?;
            let now = custodian_store::clock::SystemClock.now();
            let data = custodian_events::IncidentReportedV1 {
                incident_id: format!("inc-{}", uuid::Uuid::new_v4()),
                kind,
                platform_id: platform,
                subject,
                issuer,
                summary,
                detected_at: now,
                reporter,
            };
            custodian_events::EventData::validate(&data).map_err(|e| anyhow::anyhow!("{e}"))?;
            let id = custodian_events::derived_event_id("incident.reported", &data.incident_id);
            let event = CloudEvent::with_id(id, "urn:custodian:cli", now, data);
            bus.publish_event(subjects::INCIDENT_REPORTED, &event).await?;
            println!(
                "incident {} reported; follow it with `custodian incident show {}`",
                event.data.incident_id, event.data.incident_id
            );
        }
        IncidentCommand::Show { incident_id, json } => {
            let client = connect_client(config, &OPS, "custodian-cli").await?;
            let query =
                custodian_events::incident::IncidentQuery { incident_id: incident_id.clone(), ..Default::default() };
            let reply: custodian_events::incident::IncidentReply =
                custodian_bus::query(&client, custodian_events::incident::INCIDENTS, &query, Duration::from_secs(10))
                    .await?;
            let view = match reply {
                custodian_events::incident::IncidentReply::Incident(v) => v,
                custodian_events::incident::IncidentReply::NotFound => bail!("no incident {incident_id} (yet)"),
                custodian_events::incident::IncidentReply::Error(e) => bail!("the incident service refused: {e}"),
                custodian_events::incident::IncidentReply::Incidents(_) => {
                    bail!("the incident service answered a list")
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
                return Ok(());
            }
            println!(
                "incident:  {} ({})
platform:  {}
state:     {}",
                view.incident_id, view.kind, view.platform_id, view.state
            );
            println!(
                "summary:   {}
detected:  {}
reporter:  {}",
                view.summary,
                time(Some(view.detected_at)),
                view.reporter
            );
            println!(
                "
{:<20} {:<8} {:>8} {:<19} {:<19} DETAIL",
                "STEP", "STATE", "ATTEMPTS", "STARTED", "FINISHED"
            );
            for s in &view.steps {
                let note = match &s.last_error {
                    Some(e) if s.state == "pending" => format!("retrying ({e}), next {}", time(s.next_attempt_at)),
                    _ => s.detail.to_string(),
                };
                println!(
                    "{:<20} {:<8} {:>8} {:<19} {:<19} {note}",
                    s.step,
                    s.state,
                    s.attempts,
                    time(s.started_at),
                    time(s.finished_at)
                );
            }
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain and the checkpoints; print the first broken link (exit 1 if any).
    Verify {
        /// Exported checkpoints (JSON lines); default: audit.checkpoint_file, else the table.
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        /// The audit public key (base64); default: derived from audit.signing_key.
        #[arg(long)]
        public_key: Option<String>,
        /// Also check that every event the stream still holds, up to what the audit service
        /// has acknowledged, is in the chain (an event never appended breaks no link).
        #[arg(long)]
        stream: bool,
        #[arg(long)]
        json: bool,
    },
    /// Holder-of-key token uses with the callers' identities (asks the audit service).
    PrivacyLog {
        #[arg(long)]
        platform: Option<String>,
        /// RFC 3339, inclusive.
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// RFC 3339, exclusive.
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long)]
        json: bool,
    },
    /// Who read the privacy log (each read is recorded with its reader before it is answered).
    PrivacyReads {
        /// The latest this many reads.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: u64,
        #[arg(long)]
        json: bool,
    },
    /// Make a checkpoint signing key and an identity key ring for `[audit]`.
    Keygen,
}

pub async fn audit(config: &Config, cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Keygen => {
            let seed = base64::engine::general_purpose::STANDARD.encode(custodian_crypto::random_32().as_slice());
            let signer = custodian_audit::Signer::from_base64("audit-1", &seed).map_err(anyhow::Error::msg)?;
            println!(
                "[audit]\nsigning_key_id = \"audit-1\"\nsigning_key = \"{seed}\"\n# public key (for `custodian audit verify --public-key`): {}",
                signer.public_key_base64()
            );
            println!(
                "[audit.keyring]\ncurrent = \"a1\"\n[[audit.keyring.keys]]\nid = \"a1\"\nsecret = \"{}\"",
                custodian_crypto::generate_key()
            );
        }
        AuditCommand::Verify { checkpoints, public_key, stream, json } => {
            let public_key = match public_key {
                Some(k) => k,
                None => {
                    let seed = config
                        .audit
                        .signing_key
                        .as_ref()
                        .context("give --public-key, or configure audit.signing_key")?;
                    custodian_audit::Signer::from_base64(&config.audit.signing_key_id, seed.expose_secret())
                        .map_err(anyhow::Error::msg)?
                        .public_key_base64()
                }
            };
            let file = checkpoints.or_else(|| config.audit.checkpoint_file.clone().filter(|p| p.exists()));
            let exported = match &file {
                Some(path) => {
                    let text =
                        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                    Some(custodian_audit::read_checkpoints(&text).map_err(anyhow::Error::msg)?)
                }
                None => None,
            };
            let store = Store::connect(config.database_url.expose_secret(), 2).await?;
            let report = custodian_audit::verify::verify(store.db(), &public_key, exported).await?;
            let completeness = if stream {
                let bus = connect_bus(config, &OPS, "custodian-cli").await?;
                Some(
                    custodian_audit::completeness::check_stream_patiently(store.db(), &bus, Duration::from_secs(30))
                        .await?,
                )
            } else {
                None
            };
            if json {
                let out = match &completeness {
                    Some(c) => serde_json::json!({ "chain": &report, "stream": c }),
                    None => serde_json::to_value(&report)?,
                };
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let source = file.map_or("the database".to_owned(), |p| p.display().to_string());
                println!(
                    "{} entries, last {}; {} checkpoint(s) from {source} checked",
                    report.entries, report.last_seq, report.checkpoints_checked
                );
                if let Some(c) = &completeness {
                    println!(
                        "stream: {} message(s) checked, sequences {}–{} (the audit service has acknowledged up to {})",
                        c.checked, c.first_sequence, c.last_sequence, c.acknowledged
                    );
                }
            }
            let unchained = completeness.and_then(|c| c.unchained);
            if report.broken.is_some() || unchained.is_some() {
                if !json {
                    if let Some(broken) = report.broken {
                        eprintln!("BROKEN: {broken}");
                    }
                    if let Some(m) = unchained {
                        eprintln!(
                            "MISSING: stream sequence {} ({}, event {}) is acknowledged but not in the chain",
                            m.stream_sequence,
                            m.subject,
                            m.event_id.as_deref().unwrap_or("without an id")
                        );
                    }
                }
                std::process::exit(1);
            }
            if !json {
                println!("chain intact");
            }
        }
        AuditCommand::PrivacyLog { platform, from, to, json } => {
            let client = connect_client(config, &DPO, "custodian-cli").await?;
            let key = custodian_crypto::ReplyKey::new();
            let query = custodian_events::audit::PrivacyLogQuery {
                platform_id: platform,
                from,
                to,
                limit: Some(10_000),
                asked_by: format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into())),
                reply_key: key.public_base64(),
            };
            let reply: custodian_events::audit::PrivacyLogReply = custodian_bus::query(
                &client,
                &format!("{}.{DPO}", custodian_events::audit::PRIVACY_LOG),
                &query,
                Duration::from_secs(10),
            )
            .await?;
            let entries: Vec<custodian_events::audit::PrivacyLogEntry> = match reply {
                custodian_events::audit::PrivacyLogReply::Sealed(sealed) => {
                    serde_json::from_slice(&key.open(&sealed).map_err(|e| anyhow::anyhow!("{e}"))?)?
                }
                custodian_events::audit::PrivacyLogReply::Error(e) => bail!("the audit service refused: {e}"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
                return Ok(());
            }
            println!(
                "{:<19} {:<16} {:<20} {:<14} {:<6} {:<24} SERVICE",
                "USED", "PLATFORM", "CALLER", "PERSON", "TYPE", "ASSERTION"
            );
            for e in &entries {
                println!(
                    "{:<19} {:<16} {:<20} {:<14} {:<6} {:<24} {}",
                    time(Some(e.used_at)),
                    e.platform_id,
                    e.caller_identity,
                    e.subject.as_deref().unwrap_or("-"),
                    e.token_type,
                    e.assertion_id,
                    e.service
                );
            }
            println!("{} use(s)", entries.len());
        }
        AuditCommand::PrivacyReads { limit, json } => {
            use custodian_events::audit::{PRIVACY_LOG_READS, PrivacyLogReadsQuery, PrivacyLogReadsReply};
            let client = connect_client(config, &DPO, "custodian-cli").await?;
            let reply: PrivacyLogReadsReply = custodian_bus::query_idempotent(
                &client,
                &format!("{PRIVACY_LOG_READS}.{DPO}"),
                &PrivacyLogReadsQuery { limit: Some(limit) },
                Duration::from_secs(10),
            )
            .await?;
            let reads = match reply {
                PrivacyLogReadsReply::Reads(reads) => reads,
                PrivacyLogReadsReply::Error(e) => bail!("the audit service refused: {e}"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&reads)?);
                return Ok(());
            }
            println!("{:<19} {:<24} {:<8} {:<16} {:>7} PERIOD", "READ", "READER", "VIA", "PLATFORM", "ENTRIES");
            for r in &reads {
                println!(
                    "{:<19} {:<24} {:<8} {:<16} {:>7} {} .. {}",
                    time(Some(r.read_at)),
                    r.reader,
                    r.via,
                    r.platform_id.as_deref().unwrap_or("*"),
                    r.entries,
                    r.from.map_or_else(|| "-".to_owned(), |t| time(Some(t))),
                    r.to.map_or_else(|| "-".to_owned(), |t| time(Some(t))),
                );
            }
            println!("{} read(s)", reads.len());
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new key-encryption key for the vault's key ring and print its configuration.
    New {
        /// The key's id (stored beside every record it seals).
        #[arg(long)]
        id: String,
    },
}

pub fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::New { id } => {
            let secret = custodian_crypto::generate_key();
            println!("# Add to custodian.toml (or CUSTODIAN_VAULT__KEYRING__... / a _FILE secret):");
            println!(
                "[vault.keyring]\ncurrent = \"{id}\"\n[[vault.keyring.keys]]\nid = \"{id}\"\nsecret = \"{secret}\""
            );
            println!(
                "# To rotate: add the new key, make it current, keep the old one until the vault has re-wrapped every record."
            );
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a new machine token and print the line that configures it.
    New {
        #[arg(long, value_parser = ["platform", "ops", "responder", "dpo"])]
        role: String,
        #[arg(long)]
        name: String,
        /// The platform role only: a platform (OIDC client id) the token speaks for; repeat
        /// for several. A platform token speaks for these and no other.
        #[arg(long = "platform", value_name = "CLIENT_ID")]
        platforms: Vec<String>,
    },
}

pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    Store::connect_and_migrate(config.database_url.expose_secret(), config.database_max_connections).await?;
    println!("migrations applied");
    Ok(())
}

async fn ask(config: &Config, query: &ConsentQuery) -> anyhow::Result<Vec<ConsentView>> {
    let client = connect_client(config, &OPS, "custodian-cli").await?;
    match custodian_bus::query::<_, ConsentReply>(&client, queries::CONSENTS, query, Duration::from_secs(10)).await? {
        ConsentReply::Consents(views) => Ok(views),
        ConsentReply::Error(reason) => bail!("the consent service refused the query: {reason}"),
        ConsentReply::Unavailable(reason) => bail!("the consent service cannot answer now ({reason}); retry"),
    }
}

/// The vault's receipts for a consent (what its revocations did).
async fn ask_receipts(config: &Config, view: &ConsentView) -> anyhow::Result<Vec<Receipt>> {
    let client = connect_client(config, &OPS, "custodian-cli").await?;
    let query = RevocationQuery {
        revocation_id: None,
        issuer: Some(view.issuer.clone()),
        subject: Some(view.subject.clone()),
        platform_id: Some(view.platform_id.clone()),
        pending: false,
    };
    match custodian_bus::query::<_, RevocationReply>(&client, vault::REVOCATIONS, &query, Duration::from_secs(10))
        .await?
    {
        RevocationReply::Receipts(list) => Ok(list),
        RevocationReply::Error(reason) => bail!("the vault refused: {reason}"),
    }
}

fn print_receipt(r: &Receipt) {
    println!("\nrevocation {} ({}, reason {}): {}", r.revocation_id, time(Some(r.started_at)), r.reason, r.state);
    if let Some(done) = r.finished_at {
        println!("  finished {} ({} ms)", time(Some(done)), (done - r.started_at).num_milliseconds());
    }
    for t in &r.tokens {
        let error = t.last_error.as_deref().map(|e| format!(" last error: {e}")).unwrap_or_default();
        println!(
            "  token   {:<7} {:<15} at the OP {}  (assertion {}, {} attempt(s)){error}",
            t.token_kind,
            t.outcome,
            time(t.done_at),
            t.assertion_id,
            t.attempts
        );
    }
    for v in &r.views {
        println!(
            "  view    {:<20} {:<14} acked {}  ({} session(s), {} send(s))",
            v.view_id,
            v.state,
            time(v.acked_at),
            v.session_ids.len(),
            v.attempts
        );
    }
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

pub async fn consents(config: &Config, cmd: ConsentsCommand) -> anyhow::Result<()> {
    match cmd {
        ConsentsCommand::List { issuer, subject, platform, state, limit, json } => {
            let query =
                ConsentQuery { issuer, subject, platform_id: platform, state, with_history: false, limit: Some(limit) };
            let views = ask(config, &query).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
                return Ok(());
            }
            println!(
                "{:<20} {:<8} {:<20} {:<19} {:<19} {:<19} ISSUER",
                "PLATFORM", "STATE", "SUBJECT", "GRANTED", "LAST SEEN", "ENDED"
            );
            for v in &views {
                println!(
                    "{:<20} {:<8} {:<20} {:<19} {:<19} {:<19} {}",
                    v.platform_id,
                    v.state,
                    v.subject,
                    time(v.granted_at),
                    time(v.last_seen_at),
                    time(v.ended_at),
                    v.issuer
                );
            }
            println!("{} consent(s)", views.len());
        }
        ConsentsCommand::Show { issuer, subject, platform, json } => {
            let query = ConsentQuery {
                issuer: Some(issuer),
                subject: Some(subject),
                platform_id: Some(platform),
                with_history: true,
                ..Default::default()
            };
            let Some(view) = ask(config, &query).await?.into_iter().next() else { bail!("no such consent") };
            let receipts = ask_receipts(config, &view).await;
            if json {
                let receipts = receipts.as_ref().map_or(serde_json::Value::Null, |r| serde_json::json!(r));
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"consent": view, "revocations": receipts}))?
                );
                return Ok(());
            }
            println!("platform:   {}\nsubject:    {}\nissuer:     {}", view.platform_id, view.subject, view.issuer);
            println!(
                "state:      {}\nscopes:     {}\nacr:        {}",
                view.state,
                view.scopes.join(" "),
                view.acr.as_deref().unwrap_or("-")
            );
            println!(
                "granted:    {}\nlast seen:  {}\nended:      {}",
                time(view.granted_at),
                time(view.last_seen_at),
                time(view.ended_at)
            );
            println!("\nhistory:");
            for h in &view.history {
                println!(
                    "  {}  {:<32} -> {:<8} (event {})",
                    time(Some(h.event_time)),
                    h.event_type,
                    h.state_after,
                    h.event_id
                );
            }
            match receipts {
                Ok(receipts) if receipts.is_empty() => println!("\nrevocations: none"),
                Ok(receipts) => {
                    for r in &receipts {
                        print_receipt(r);
                    }
                }
                Err(e) => println!("\nrevocations: unknown ({e})"),
            }
        }
        ConsentsCommand::Revoke { issuer, subject, platform, actor } => {
            let bus = connect_bus(config, &OPS, "custodian-cli").await?;
            let data = ConsentRevokedV1 {
                issuer,
                subject,
                platform_id: platform,
                reason: RevokeReason::Admin,
                actor: Some(actor),
            };
            let event = CloudEvent::new("urn:custodian:cli", custodian_store::clock::SystemClock.now(), data);
            bus.publish_event(subjects::CONSENT_REVOKED, &event).await?;
            println!("revocation {} published", event.id);
        }
    }
    Ok(())
}

pub async fn events(config: &Config, cmd: EventsCommand) -> anyhow::Result<()> {
    match cmd {
        EventsCommand::Publish { file } => {
            let bytes = if file.as_os_str() == "-" {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).context("cannot read standard input")?;
                bytes
            } else {
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?
            };
            let events =
                crate::event_file::events_of(&bytes).with_context(|| format!("{} not published", file.display()))?;
            let bus = connect_bus(config, &OPS, "custodian-cli").await?;
            if let [event] = events.as_slice() {
                bus.publish(event).await?;
                println!("published {} on {}", event.event_id, event.subject);
                return Ok(());
            }
            publish_many(&bus, &events).await?;
        }
    }
    Ok(())
}

/// Publishes a file's events with a progress bar; names each one the stream did not take.
async fn publish_many(bus: &custodian_bus::Bus, events: &[Outgoing]) -> anyhow::Result<()> {
    const CHUNK: usize = 5_000;
    let bar = indicatif::ProgressBar::new(events.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} publishing [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut failed = Vec::new();
    for chunk in events.chunks(CHUNK) {
        for result in bus.publish_all(chunk, 1024).await {
            if let Err(e) = result {
                failed.push(e.to_string());
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let published = events.len() - failed.len();
    println!("published {published} of {} events", events.len());
    if failed.is_empty() {
        return Ok(());
    }
    eprintln!("{}", crate::event_file::listed(&failed));
    anyhow::bail!(
        "{} event(s) not published; publishing the same file again is safe (the stream drops an id it \
         received in the last 2 minutes, and each consumer applies an event once)",
        failed.len()
    )
}

pub fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::New { role, name, platforms } => {
            use rand::Rng;
            match (role.as_str(), platforms.is_empty()) {
                ("platform", true) => {
                    bail!("a platform token speaks for the platforms it names: add --platform <client id>")
                }
                ("platform", false) => {}
                (_, false) => bail!("--platform is for platform tokens only, not the {role} role"),
                (_, true) => {}
            }
            let bytes: [u8; 32] = rand::rng().random();
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            println!("token (give it to the caller; it is not stored anywhere): {token}");
            println!(
                "\n# custodian.toml\n[[gateway.machine_tokens]]\nname = {name:?}\nrole = {role:?}\nsha256 = {:?}",
                custodian_gateway::token_digest(&token)
            );
            if !platforms.is_empty() {
                println!("platform_ids = {platforms:?}");
            }
        }
    }
    Ok(())
}

async fn sweep_view(client: &async_nats::Client, sweep_id: &str) -> anyhow::Result<Option<queries::SweepView>> {
    let query = queries::SweepQuery { sweep_id: sweep_id.to_owned(), ..Default::default() };
    match custodian_bus::query::<_, queries::SweepReply>(client, queries::SWEEPS, &query, Duration::from_secs(10))
        .await?
    {
        queries::SweepReply::Sweep(view) => Ok(Some(view)),
        queries::SweepReply::NotFound => Ok(None),
        queries::SweepReply::Error(e) => bail!("the sweeper refused: {e}"),
        queries::SweepReply::Sweeps(_) => bail!("the sweeper answered a list"),
    }
}

fn print_sweep(v: &queries::SweepView) {
    println!("sweep        {}", v.sweep_id);
    println!("platform     {}", v.platform_id.as_deref().unwrap_or("(all)"));
    println!("mode         {}", if v.dry_run { "dry run (nothing changed)" } else { "expire" });
    println!("state        {}", v.state);
    println!("idle before  {}", time(Some(v.idle_before)));
    println!("scanned      {}", v.scanned);
    println!(
        "{}  {}",
        if v.dry_run { "would expire" } else { "expired     " },
        if v.dry_run { v.scanned } else { v.expired }
    );
    println!("requested by {}", v.requested_by);
    println!("run by       {}", v.holder.as_deref().unwrap_or("-"));
    println!("started      {}\nfinished     {}", time(v.started_at), time(v.finished_at));
}

pub async fn sweep(config: &Config, cmd: SweepCommand) -> anyhow::Result<()> {
    let bus = connect_bus(config, &OPS, "custodian-cli").await?;
    match cmd {
        SweepCommand::Show { sweep_id } => {
            let Some(view) = sweep_view(bus.client(), &sweep_id).await? else { bail!("no sweep {sweep_id}") };
            print_sweep(&view);
        }
        SweepCommand::Run { platform, dry_run, inactivity_days, no_wait } => {
            let data = custodian_events::SweepRequestedV1 {
                sweep_id: format!("sweep-{}", uuid::Uuid::new_v4().simple()),
                platform_id: platform,
                inactivity_days,
                dry_run,
                requested_by: "cli".into(),
            };
            custodian_events::EventData::validate(&data)?;
            let event = CloudEvent::new("urn:custodian:cli", custodian_store::clock::SystemClock.now(), data);
            bus.publish_event(subjects::SWEEP_REQUESTED, &event).await?;
            let sweep_id = event.data.sweep_id.clone();
            if no_wait {
                println!("{sweep_id}");
                return Ok(());
            }
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {msg} [{bar:40}] {pos}/{len} idle consents ({per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(sweep_id.clone());
            let view = loop {
                if let Some(view) = sweep_view(bus.client(), &sweep_id).await? {
                    if let Some(total) = view.total {
                        bar.set_length(total);
                    }
                    bar.set_position(view.scanned);
                    if view.state == "finished" {
                        break view;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            bar.finish_and_clear();
            print_sweep(&view);
        }
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct DossierArgs {
    /// Print JSON instead of Markdown.
    #[arg(long)]
    json: bool,
    /// Write it to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// From the configuration only: do not read the database.
    #[arg(long)]
    offline: bool,
}

pub async fn dossier(config: &Config, file: Option<&std::path::Path>, args: DossierArgs) -> anyhow::Result<()> {
    let now = custodian_store::clock::SystemClock.now();
    let mut dossier = crate::dossier::from_config(config, crate::dossier::Sources::of_this_process(file), now);
    if !args.offline {
        let current = config.vault.keyring.as_ref().map(|r| r.current.as_str());
        let live = async {
            let url = config.database_url.expose_secret();
            if let Some(path) = url.strip_prefix("sqlite://").and_then(|p| p.split('?').next()) {
                // Connecting would create an empty database.
                if !std::path::Path::new(path).exists() {
                    anyhow::bail!("the database file {path} does not exist");
                }
            }
            let store = Store::connect(url, 2).await?;
            Ok(crate::dossier::live_state(store.db(), current, now).await?)
        };
        let live: anyhow::Result<crate::dossier::LiveState> = live.await;
        if let Err(e) = &live {
            eprintln!("warning: live state not read ({e:#}); the dossier states the configuration only");
        }
        match live {
            Ok(live) => dossier.live = Some(live),
            Err(e) => dossier.live_error = Some(format!("{e:#}")),
        }
    }
    let text = if args.json {
        serde_json::to_string_pretty(&dossier)? + "\n"
    } else {
        crate::dossier::render_markdown(&dossier)
    };
    match args.output {
        Some(path) => std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Exit 1 when something needs an operator (for scripts and probes).
    #[arg(long)]
    check: bool,
}

pub async fn status(config: &Config, args: StatusArgs) -> anyhow::Result<()> {
    use custodian_bus::status;
    let now = custodian_store::clock::SystemClock.now();
    let bus = connect_bus(config, &OPS, "custodian-cli").await.context("NATS")?;
    let bus_status = status::bus_status(&bus).await?;
    let store = Store::connect(config.database_url.expose_secret(), 2).await.context("database")?;
    let backlog = custodian_store::outbox::backlog(store.db()).await.context("database")?;
    let mut problems = status::problems(&bus_status, &backlog, now);
    // Dead letters stay in the stream for its retention once dealt with: a check reports
    // those that arrived since the previous check, and then moves the mark past them.
    if args.check {
        problems.extend(status::check_dead_letters(&bus_status, store.db(), now).await.context("database")?);
    }
    if args.json {
        let out = serde_json::json!({ "bus": &bus_status, "outboxes": &backlog, "problems": &problems });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", render_status(&bus_status, &backlog, &problems, now));
    }
    if args.check && !problems.is_empty() {
        bail!("{} problem(s) need an operator", problems.len());
    }
    Ok(())
}

fn render_status(
    bus: &custodian_bus::status::BusStatus,
    backlog: &[custodian_store::outbox::Backlog],
    problems: &[String],
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    use std::fmt::Write as _;
    let ago = |at: chrono::DateTime<chrono::Utc>| format!("{} s ago", (now - at).num_seconds().max(0));
    let s = &bus.stream;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "stream {}: {} messages, {:.1} MiB, sequences {}–{}, {} replica(s)\n",
        s.name,
        s.messages,
        s.bytes as f64 / (1024.0 * 1024.0),
        s.first_sequence,
        s.last_sequence,
        s.replicas
    );
    let _ = writeln!(
        out,
        "{:<28} {:<40} {:>8} {:>8} {:>14}  {:>11}  last delivery",
        "consumer", "leader (replicas take turns) / pulls", "pending", "unacked", "acked through", "redelivered"
    );
    for c in &bus.consumers {
        let who = match (&c.leader, c.takes_turns) {
            (Some(holder), _) => holder.clone(),
            (None, true) => "NOBODY LEADS".to_owned(),
            (None, false) => format!("{} pull(s) waiting", c.waiting_pulls),
        };
        let _ = writeln!(
            out,
            "{:<28} {:<40} {:>8} {:>8} {:>14}  {:>11}  {}",
            c.name,
            who,
            c.pending,
            c.unacknowledged,
            c.acknowledged_through,
            c.redelivered,
            c.last_delivery.map_or_else(|| "never".to_owned(), ago)
        );
    }
    if backlog.is_empty() {
        let _ = writeln!(out, "\noutboxes: everything published");
    } else {
        let _ = writeln!(out, "\noutboxes (written, not yet published):");
        for b in backlog {
            let _ = writeln!(out, "  {:<12} {:>8}  oldest {}", b.publisher, b.waiting, ago(b.oldest));
        }
    }
    if bus.dead_letters.is_empty() {
        let _ = writeln!(out, "dead letters kept in the stream: none");
    } else {
        let _ = writeln!(out, "dead letters kept in the stream (see `nats stream view {}`):", s.name);
        for (subject, n) in &bus.dead_letters {
            let _ = writeln!(out, "  {subject:<40} {n:>8}");
        }
    }
    if problems.is_empty() {
        let _ = writeln!(out, "\nproblems: none");
    } else {
        let _ = writeln!(out, "\nproblems:");
        for p in problems {
            let _ = writeln!(out, "  - {p}");
        }
    }
    out
}
