//! `custodian dossier`: the documentation a trusted platform owes (seed §1.6) — its
//! infrastructure, the views and technologies it uses, the protocols between the platform and
//! its views, and the measures protecting the platform's secret and the people's assertions —
//! rendered from the configuration this process would run with and, when the database
//! answers, from its live state.
//!
//! Names, settings and counts only: no secret, token, key or identity is ever read into it
//! (the credential and assertion queries select metadata columns, never the ciphertext).

use chrono::{DateTime, Utc};
use custodian_crypto::KeyRingConfig;
use custodian_events::subjects;
use custodian_store::entities::{
    assertion, audit_checkpoint, audit_entry, consent, credential, incident, view_session,
};
use custodian_store::sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::config::Config;

/// Where the configuration came from: names only, never values.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sources {
    /// The TOML file, if one was read.
    pub file: Option<String>,
    /// `CUSTODIAN_*` settings from the environment (names).
    pub environment: Vec<String>,
    /// Settings read from files through `CUSTODIAN_*_FILE` (names): how secrets are mounted.
    pub secret_files: Vec<String>,
}

impl Sources {
    /// From the process environment and the file `Config::load` would read.
    pub fn of_this_process(file: Option<&std::path::Path>) -> Self {
        let file = file.map(std::path::Path::to_path_buf).or_else(|| {
            let default = std::path::PathBuf::from("custodian.toml");
            default.exists().then_some(default)
        });
        Self::from_parts(file.map(|p| p.display().to_string()), std::env::vars().map(|(k, _)| k))
    }

    fn from_parts(file: Option<String>, names: impl Iterator<Item = String>) -> Self {
        let mut sources = Sources { file, ..Default::default() };
        // The settings `Config::load_from` reads, not variables other parts of the process use.
        for name in names.filter(|k| k.starts_with("CUSTODIAN_") && !crate::config::is_runtime_only(k)) {
            match name.strip_suffix("_FILE") {
                Some(setting) => sources.secret_files.push(setting.to_owned()),
                None => sources.environment.push(name),
            }
        }
        sources.environment.sort();
        sources.secret_files.sort();
        sources
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Dossier {
    pub generated_at: DateTime<Utc>,
    pub custodian_version: &'static str,
    pub sources: Sources,
    pub infrastructure: Infrastructure,
    pub platforms: Vec<PlatformFacts>,
    pub views: Views,
    pub protocols: Vec<Protocol>,
    /// Who may do what on NATS: the permission table nats-server enforces.
    pub bus_identities: Vec<BusIdentity>,
    pub keys: Keys,
    pub retention: Retention,
    pub governance: Governance,
    /// What the database says now (`None` offline or when it could not be read)…
    pub live: Option<LiveState>,
    /// …and why it could not be read.
    pub live_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Infrastructure {
    pub services: Vec<&'static str>,
    pub nats: String,
    pub nats_tls: bool,
    /// A client certificate is presented (the server may verify clients: mTLS).
    pub nats_client_certificate: bool,
    /// Each service and view connects with an nkey of its own.
    pub nats_identities: bool,
    pub stream_replicas: usize,
    pub stream_duplicate_window_secs: u64,
    pub stream_max_age_secs: u64,
    pub database_backend: &'static str,
    /// Host, port and database (PostgreSQL) or file (SQLite); never the user or password.
    pub database: String,
    /// PostgreSQL `sslmode`, when the URL sets one.
    pub database_sslmode: Option<String>,
    pub gateway_listen: String,
    pub gateway_public_url: String,
    pub gateway_https: bool,
    pub openid_providers: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BusIdentity {
    pub identity: String,
    pub publishes: Vec<String>,
    pub subscribes: Vec<String>,
    pub answers_requests: bool,
}

fn bus_identities(config: &Config) -> Vec<BusIdentity> {
    let mut identities = custodian_bus::trust::Identity::fixed();
    if config.demo_view.enabled
        && let Ok(view) = custodian_bus::trust::Identity::view(&config.demo_view.view_id)
    {
        identities.push(view);
    }
    identities
        .into_iter()
        .map(|identity| {
            let p = custodian_bus::trust::permissions(&identity);
            BusIdentity {
                identity: identity.name(),
                publishes: p.publish,
                subscribes: p.subscribe,
                answers_requests: p.allow_responses,
            }
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct PlatformFacts {
    pub platform_id: String,
    pub issuer: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub required_acr: Option<String>,
    /// The OP registration the secret is rotated through (RFC 7592), if configured.
    pub rotation_registered: bool,
    /// What a data leak contains for this platform (`platform`: every token and session).
    pub data_leak_containment: String,
    /// The inactivity sweeps that apply to it: (schedule name, days idle, cron).
    pub inactivity_sweeps: Vec<(String, u32, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Views {
    /// The demo view `custodian up` runs, if enabled: (view id, platform, seconds kept).
    pub demo_view: Option<(String, String, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Protocol {
    pub between: &'static str,
    pub protocol: String,
    pub protection: String,
}

/// Key rings by purpose: the ids of their keys and which seals new records.
#[derive(Debug, Clone, Serialize)]
pub struct Keys {
    pub vault: Option<KeyRingFacts>,
    pub credentials: Option<KeyRingFacts>,
    pub privacy_log: Option<KeyRingFacts>,
    pub audit_signing_key_id: String,
    pub audit_signing_key_configured: bool,
    pub set_transmitter_key_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyRingFacts {
    pub current: String,
    pub ids: Vec<String>,
}

impl KeyRingFacts {
    fn of(ring: Option<&KeyRingConfig>) -> Option<Self> {
        ring.map(|r| Self { current: r.current.clone(), ids: r.keys.iter().map(|k| k.id.clone()).collect() })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Retention {
    pub login_ttl_secs: u64,
    pub web_session_ttl_secs: u64,
    pub refresh_token_ttl_secs: u64,
    pub maintenance_every_secs: u64,
    pub history_days: u32,
    pub bus_records_days: u32,
    pub retention_cron: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Governance {
    pub dpo_recipients: Vec<String>,
    /// `smtp://host:port` or `smtps://…`, without credentials.
    pub dpo_smtp: String,
    pub previous_secret_grace_secs: u64,
    pub audit_checkpoint_every: u64,
    pub audit_checkpoint_secs: u64,
    pub audit_checkpoint_file: Option<String>,
    pub ssf_transmitter: Option<String>,
    pub ssf_receiver: Option<String>,
}

/// Metadata and counts read from the database.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveState {
    /// Per stored credential version: (platform, version, state, key id, created, not after).
    pub credentials: Vec<CredentialFacts>,
    pub assertions_stored: u64,
    /// Sealed under a key that is not the current one (the background re-wrap moves them).
    pub assertions_under_older_keys: u64,
    /// The latest instant any stored assertion may be kept to.
    pub assertions_kept_until: Option<DateTime<Utc>>,
    /// Views holding open sessions now: (view id, open sessions).
    pub views_with_open_sessions: Vec<(String, i64)>,
    pub consents: u64,
    pub audit_entries: u64,
    pub last_checkpoint: Option<(i64, DateTime<Utc>)>,
    pub incidents_open: u64,
    pub incidents_total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CredentialFacts {
    pub platform_id: String,
    pub version: i32,
    pub state: String,
    pub key_id: String,
    pub created_at: DateTime<Utc>,
    pub not_after: Option<DateTime<Utc>>,
}

/// Everything the configuration says.
pub fn from_config(config: &Config, sources: Sources, now: DateTime<Utc>) -> Dossier {
    let db_url = config.database_url.expose_secret();
    let (database_backend, database, database_sslmode) = describe_database(db_url);
    let nats_tls = config.nats.is_tls();
    let mut openid_providers: Vec<String> = config.vault.clients.iter().map(|c| c.issuer.clone()).collect();
    if let Some(oidc) = &config.gateway.oidc {
        openid_providers.push(oidc.issuer.clone());
    }
    openid_providers.sort();
    openid_providers.dedup();
    let mut services = vec!["gateway", "consent", "vault", "sweeper", "audit", "incident"];
    if config.demo_view.enabled {
        services.push("demo-view");
    }
    let infrastructure = Infrastructure {
        services,
        nats: without_userinfo(&config.nats_url),
        nats_tls,
        nats_client_certificate: config.nats.client_cert.is_some() && config.nats.client_key.is_some(),
        nats_identities: config.nats.credentials_dir.is_some(),
        stream_replicas: config.stream.replicas,
        stream_duplicate_window_secs: config.stream.duplicate_window_secs,
        stream_max_age_secs: config.stream.max_age_secs,
        database_backend,
        database,
        database_sslmode,
        gateway_listen: config.gateway.listen.to_string(),
        gateway_public_url: config.gateway.login.public_url.clone(),
        gateway_https: config.gateway.login.cookie_secure(),
        openid_providers,
    };
    let platforms = config
        .vault
        .clients
        .iter()
        .map(|c| PlatformFacts {
            platform_id: c.client_id.clone(),
            issuer: c.issuer.clone(),
            redirect_uri: c.redirect_uri.clone(),
            scopes: c.scopes.clone(),
            required_acr: c.required_acr.clone(),
            rotation_registered: config.incident.platforms.iter().any(|p| p.platform_id == c.client_id),
            data_leak_containment: config
                .incident
                .data_leak_containment
                .get(&c.client_id)
                .cloned()
                .unwrap_or_else(|| "platform".into()),
            inactivity_sweeps: config
                .sweeper
                .schedules
                .iter()
                .filter(|s| s.platform_id.as_deref().is_none_or(|p| p == c.client_id))
                .map(|s| (s.name.clone(), s.inactivity_days, s.cron.clone()))
                .collect(),
        })
        .collect();
    let demo = &config.demo_view;
    let views =
        Views { demo_view: demo.enabled.then(|| (demo.view_id.clone(), demo.platform_id.clone(), demo.keep_secs)) };
    let keys = Keys {
        vault: KeyRingFacts::of(config.vault.keyring.as_ref()),
        credentials: KeyRingFacts::of(config.incident.keyring.as_ref().or(config.vault.keyring.as_ref())),
        privacy_log: KeyRingFacts::of(config.audit.keyring.as_ref()),
        audit_signing_key_id: config.audit.signing_key_id.clone(),
        audit_signing_key_configured: config.audit.signing_key.is_some(),
        set_transmitter_key_id: config.gateway.ssf_transmitter.as_ref().map(|t| t.key_id.clone()),
    };
    let retention = Retention {
        login_ttl_secs: config.vault.login_ttl_secs,
        web_session_ttl_secs: config.vault.web_session_ttl_secs,
        refresh_token_ttl_secs: config.vault.refresh_token_ttl_secs,
        maintenance_every_secs: config.vault.maintenance_every_secs,
        history_days: config.sweeper.retention.history_days,
        bus_records_days: config.sweeper.retention.bus_records_days,
        retention_cron: config.sweeper.retention.cron.clone(),
    };
    let governance = Governance {
        dpo_recipients: config.incident.dpo.to.clone(),
        dpo_smtp: without_userinfo(&config.incident.dpo.smtp_url),
        previous_secret_grace_secs: config.incident.previous_secret_grace_secs,
        audit_checkpoint_every: config.audit.checkpoint_every,
        audit_checkpoint_secs: config.audit.checkpoint_secs,
        audit_checkpoint_file: config.audit.checkpoint_file.as_ref().map(|p| p.display().to_string()),
        ssf_transmitter: config.gateway.ssf_transmitter.as_ref().map(|t| t.issuer.clone()),
        ssf_receiver: config.gateway.ssf_receiver.as_ref().map(|r| format!("{} ({})", r.transmitter, r.mode)),
    };
    let protocols = protocols(&infrastructure);
    let bus_identities = bus_identities(config);
    Dossier {
        generated_at: now,
        custodian_version: env!("CARGO_PKG_VERSION"),
        sources,
        infrastructure,
        platforms,
        views,
        protocols,
        bus_identities,
        keys,
        retention,
        governance,
        live: None,
        live_error: None,
    }
}

fn protocols(infra: &Infrastructure) -> Vec<Protocol> {
    let nats = match (infra.nats_tls, infra.nats_client_certificate, infra.nats_identities) {
        (true, true, true) => "protected: TLS with client certificates (mTLS), an nkey per service and view, \
                               permissions from the table in section 3a"
            .to_owned(),
        (true, _, _) => format!(
            "TLS{}{}",
            if infra.nats_client_certificate { "" } else { "; no client certificate (set nats.client_cert)" },
            if infra.nats_identities { "" } else { "; no NATS identities (set nats.credentials_dir)" }
        ),
        (false, _, _) => "plain TCP: set a tls:// NATS URL outside one host".to_owned(),
    };
    let http = if infra.gateway_https { "HTTPS (cookies Secure)" } else { "plain HTTP: put the gateway behind HTTPS" };
    vec![
        Protocol {
            between: "person's browser and the platform",
            protocol: "HTTP to the gateway: sign-in, the consent dashboard, `GET/DELETE /v1/me/consents`".into(),
            protection: http.into(),
        },
        Protocol {
            between: "platform and the OpenID provider",
            protocol: "OpenID Connect authorization code with PKCE (S256) as a confidential client; RFC 7009 \
                       revocation, RFC 7662 introspection, RFC 8693 token exchange (SAML holder-of-key), \
                       RFC 7592 client management (secret rotation), back-channel logout, SSF/CAEP/RISC"
                .into(),
            protection: if infra.openid_providers.iter().all(|p| p.starts_with("https://")) {
                "HTTPS; ID tokens, logout tokens and security events checked against the OP's JWKS".into()
            } else {
                "an issuer is not https: the OP must be reached over TLS".into()
            },
        },
        Protocol {
            between: "platform and its views",
            protocol: format!(
                "NATS: `{}.<view>` wipe commands, acknowledged on `{}`; tokens and holder-of-key assertions \
                 asked for over request/reply `custodian.vault.*`",
                subjects::SESSION_WIPE_PREFIX,
                subjects::SESSION_WIPED
            ),
            protection: format!(
                "{nats}; a view reads only its own wipe commands and publishes only on subjects bound to its \
                 own id; every token in a reply is sealed (X25519 sealed box) to the asking view's one-time key"
            ),
        },
        Protocol {
            between: "platform services among themselves",
            protocol: format!(
                "NATS JetStream stream `{}` (CloudEvents 1.0, strict schemas: identifiers only, no medical data)",
                subjects::STREAM
            ),
            protection: nats.clone(),
        },
        Protocol {
            between: "platform and its database",
            protocol: infra.database_backend.to_owned(),
            protection: match (infra.database_backend, &infra.database_sslmode) {
                ("SQLite", _) => "local file".into(),
                (_, Some(mode)) => format!("sslmode={mode}"),
                (_, None) => "the driver's default (prefer TLS): set sslmode=verify-full outside one host".into(),
            },
        },
        Protocol {
            between: "platform and the eHealth DPO",
            protocol: "SMTP (the incident workflow's notices)".into(),
            protection: "STARTTLS when the server offers it, or smtps://".into(),
        },
    ]
}

/// (backend, location without credentials, sslmode).
fn describe_database(url: &str) -> (&'static str, String, Option<String>) {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let sslmode = query.split('&').find_map(|kv| kv.strip_prefix("sslmode=")).map(str::to_owned);
    if let Some(path) = base.strip_prefix("sqlite://").or_else(|| base.strip_prefix("sqlite:")) {
        return ("SQLite", path.to_owned(), None);
    }
    let location = without_userinfo(base);
    let location = location.split_once("://").map_or(location.as_str(), |(_, rest)| rest).to_owned();
    ("PostgreSQL", location, sslmode)
}

/// `scheme://user:password@host/…` → `scheme://host/…` (and no query string: it may hold a
/// password too).
fn without_userinfo(url: &str) -> String {
    let url = url.split_once('?').map_or(url, |(base, _)| base);
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}{}", &url[..scheme + 3], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Reads the live state: metadata columns and counts only.
pub async fn live_state<C: ConnectionTrait>(
    db: &C,
    vault_current_key: Option<&str>,
    now: DateTime<Utc>,
) -> Result<LiveState, custodian_store::sea_orm::DbErr> {
    let credentials = credential::Entity::find()
        .select_only()
        .columns([
            credential::Column::PlatformId,
            credential::Column::Version,
            credential::Column::State,
            credential::Column::KeyId,
            credential::Column::CreatedAt,
            credential::Column::NotAfter,
        ])
        .order_by_asc(credential::Column::PlatformId)
        .order_by_asc(credential::Column::Version)
        .into_tuple::<(String, i32, String, String, DateTime<Utc>, Option<DateTime<Utc>>)>()
        .all(db)
        .await?
        .into_iter()
        .map(|(platform_id, version, state, key_id, created_at, not_after)| CredentialFacts {
            platform_id,
            version,
            state,
            key_id,
            created_at,
            not_after,
        })
        .collect();
    let assertions_stored = assertion::Entity::find().count(db).await?;
    let assertions_under_older_keys = match vault_current_key {
        Some(current) => assertion::Entity::find().filter(assertion::Column::KeyId.ne(current)).count(db).await?,
        None => 0,
    };
    let assertions_kept_until = assertion::Entity::find()
        .select_only()
        .column(assertion::Column::ExpiresAt)
        .order_by_desc(assertion::Column::ExpiresAt)
        .into_tuple::<DateTime<Utc>>()
        .one(db)
        .await?;
    let views_with_open_sessions = view_session::Entity::find()
        .select_only()
        .column(view_session::Column::ViewId)
        .column_as(view_session::Column::SessionId.count(), "open")
        .filter(view_session::Column::ClosedAt.is_null())
        .filter(view_session::Column::ExpiresAt.gt(now))
        .group_by(view_session::Column::ViewId)
        .order_by_asc(view_session::Column::ViewId)
        .into_tuple::<(String, i64)>()
        .all(db)
        .await?;
    let last_checkpoint = audit_checkpoint::Entity::find()
        .select_only()
        .columns([audit_checkpoint::Column::Seq, audit_checkpoint::Column::CreatedAt])
        .order_by_desc(audit_checkpoint::Column::Seq)
        .into_tuple::<(i64, DateTime<Utc>)>()
        .one(db)
        .await?;
    Ok(LiveState {
        credentials,
        assertions_stored,
        assertions_under_older_keys,
        assertions_kept_until,
        views_with_open_sessions,
        consents: consent::Entity::find().count(db).await?,
        audit_entries: audit_entry::Entity::find().count(db).await?,
        last_checkpoint,
        incidents_open: incident::Entity::find().filter(incident::Column::State.eq("open")).count(db).await?,
        incidents_total: incident::Entity::find().count(db).await?,
    })
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn ring(r: &Option<KeyRingFacts>) -> String {
    match r {
        Some(r) => format!("keys {} (new records sealed under `{}`)", r.ids.join(", "), r.current),
        None => "not configured".into(),
    }
}

fn secs(s: u64) -> String {
    match s {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s >= 3_600 && s % 3_600 == 0 => format!("{} h", s / 3_600),
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// The dossier as a Markdown document.
pub fn render_markdown(d: &Dossier) -> String {
    use std::fmt::Write as _;
    let mut m = String::new();
    let i = &d.infrastructure;
    let _ = writeln!(m, "# Trusted platform dossier\n");
    let _ = writeln!(
        m,
        "Generated {} by Custodian {} from {}. It documents, as seed §1.6 of the eHealth trusted platform \
         commitment asks, the infrastructure, the views and technologies, the protocols between the platform \
         and its views, and the measures protecting the platform's secret and the people's assertions.\n",
        d.generated_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        d.custodian_version,
        d.sources.file.as_deref().map_or_else(|| "defaults and the environment".to_owned(), |f| format!("`{f}`"))
    );

    let _ = writeln!(m, "## 1. Infrastructure\n");
    let _ = writeln!(m, "| component | what | notes |\n|---|---|---|");
    let _ = writeln!(
        m,
        "| services | {} | one process each (Kubernetes, `k8s/`), or all in `custodian up` |",
        i.services.join(", ")
    );
    let _ = writeln!(
        m,
        "| message bus | NATS JetStream at `{}` | TLS: {}; stream `{}` with {} replica(s), de-duplication window {}, events kept {} |",
        i.nats,
        yes(i.nats_tls),
        subjects::STREAM,
        i.stream_replicas,
        secs(i.stream_duplicate_window_secs),
        secs(i.stream_max_age_secs)
    );
    let _ = writeln!(
        m,
        "| database | {} `{}` | the record of consents, sealed tokens and credentials, the audit chain; no medical data |",
        i.database_backend, i.database
    );
    let _ = writeln!(
        m,
        "| gateway | listens on `{}`, public at `{}` | HTTPS: {} |",
        i.gateway_listen,
        i.gateway_public_url,
        yes(i.gateway_https)
    );
    let providers: Vec<String> = i.openid_providers.iter().map(|p| format!("`{p}`")).collect();
    let _ = writeln!(
        m,
        "| OpenID provider | {} | the only way to act for a person: the authorization code flow |\n",
        if providers.is_empty() { "none configured".to_owned() } else { providers.join(", ") }
    );

    let _ = writeln!(m, "### Platforms\n");
    if d.platforms.is_empty() {
        let _ = writeln!(m, "No platform is registered (`[[vault.clients]]`).\n");
    }
    for p in &d.platforms {
        let _ = writeln!(m, "- **{}** at `{}`", p.platform_id, p.issuer);
        let _ = writeln!(m, "  - redirect URI `{}`; scopes {}", p.redirect_uri, p.scopes.join(" "));
        let _ = match &p.required_acr {
            Some(acr) => writeln!(
                m,
                "  - level of assurance required: {acr} (an ID token below it is refused; a drop ends sessions)"
            ),
            None => writeln!(m, "  - level of assurance required: none set"),
        };
        let sweeps: Vec<String> = p
            .inactivity_sweeps
            .iter()
            .map(|(name, days, cron)| format!("{name}: {days} days idle, `{cron}`"))
            .collect();
        let _ = writeln!(
            m,
            "  - inactivity sweeps: {}",
            if sweeps.is_empty() {
                "none (consents never expire for inactivity)".to_owned()
            } else {
                sweeps.join("; ")
            }
        );
        let _ = writeln!(
            m,
            "  - secret rotation through its OP registration (RFC 7592): {}; a data leak contains: {}",
            yes(p.rotation_registered),
            p.data_leak_containment
        );
    }
    m.push('\n');

    let _ = writeln!(m, "## 2. Views\n");
    let _ = writeln!(
        m,
        "Views show a person's data and may hold it in memory only. Every view embeds the view SDK: its store \
         refuses an entry that would outlive the token that fetched it, evicts at expiry and zeroes what it drops, \
         and a wipe command (`{}.<view>`) empties the person's session, acknowledged on `{}`; the vault re-sends \
         until acknowledged or the session's own expiry has passed.\n",
        subjects::SESSION_WIPE_PREFIX,
        subjects::SESSION_WIPED
    );
    match &d.views.demo_view {
        Some((id, platform, keep)) => {
            let _ =
                writeln!(m, "- `{id}` (the demo view, for platform {platform}): keeps what it fetched {}", secs(*keep));
        }
        None => {
            let _ = writeln!(m, "- no view runs inside this process (views are deployed apart)");
        }
    }
    if let Some(live) = &d.live {
        for (view, open) in &live.views_with_open_sessions {
            let _ = writeln!(m, "- `{view}`: {open} open session(s) now");
        }
    }
    m.push('\n');

    let _ = writeln!(m, "## 3. Protocols\n");
    let _ = writeln!(m, "| between | protocol | protection |\n|---|---|---|");
    for p in &d.protocols {
        let _ = writeln!(m, "| {} | {} | {} |", p.between, p.protocol, p.protection);
    }
    m.push('\n');

    let _ = writeln!(m, "### 3a. Who may do what on the bus\n");
    let _ = writeln!(
        m,
        "nats-server enforces this table (rendered by `custodian nats server-config`); each identity's replies \
         come to its own inbox, which no other may read.\n"
    );
    let _ = writeln!(m, "| identity | may publish | may subscribe | answers requests |\n|---|---|---|---|");
    for b in &d.bus_identities {
        let code = |items: &[String]| items.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} |",
            b.identity,
            code(&b.publishes),
            code(&b.subscribes),
            yes(b.answers_requests)
        );
    }
    m.push('\n');

    let k = &d.keys;
    let _ = writeln!(m, "## 4. The platform's cryptographic secret\n");
    let _ = writeln!(
        m,
        "Each platform's client secret is stored sealed (XChaCha20-Poly1305 under a fresh data key, wrapped by a \
         key-encryption key; the record's id is authenticated with it) in `credentials`, one row per version: \
         `current`, `previous` during a grace of {}, `retired`. It is opened only by the vault and the incident \
         service, in memory, held in `secrecy` types, and never written to a log (a test searches every log line \
         for it). Rotation: `custodian credentials rotate`, and automatically in the incident workflow after a \
         credential loss or compromise, verified at the token endpoint before the switch, which needs no restart.\n",
        secs(d.governance.previous_secret_grace_secs)
    );
    let _ = writeln!(m, "- credential key ring: {}", ring(&k.credentials));
    if !d.sources.secret_files.is_empty() {
        let _ = writeln!(m, "- settings mounted from files (`_FILE`): {}", d.sources.secret_files.join(", "));
    }
    if let Some(live) = &d.live {
        if live.credentials.is_empty() {
            let _ = writeln!(m, "- no credential stored yet (the configured secret is in use)");
        }
        for c in &live.credentials {
            let _ = writeln!(
                m,
                "- {} version {}: {}, sealed under `{}`, since {}{}",
                c.platform_id,
                c.version,
                c.state,
                c.key_id,
                c.created_at.format("%Y-%m-%d %H:%M UTC"),
                c.not_after.map(|t| format!(", until {}", t.format("%Y-%m-%d %H:%M UTC"))).unwrap_or_default()
            );
        }
    }
    m.push('\n');

    let r = &d.retention;
    let _ = writeln!(m, "## 5. The people's assertions\n");
    let _ = writeln!(
        m,
        "Tokens are sealed per record in `assertions` like the secret above, under the vault's key ring; a key \
         change re-wraps them in the background. A record is deleted once its longest-lived token has expired (the \
         refresh token's end from introspection, else {} after issue) or once revoked; the vault purges every {}. \
         A revocation, an inactivity sweep, a logout at the OP or a security event ends the person's tokens at the \
         OP (RFC 7009) and wipes their view sessions. Sign-in state lasts {}, a web session {}. No medical data \
         is stored: events carry identifiers only, and their schemas refuse unknown fields.\n",
        secs(r.refresh_token_ttl_secs),
        secs(r.maintenance_every_secs),
        secs(r.login_ttl_secs),
        secs(r.web_session_ttl_secs)
    );
    let _ = writeln!(m, "- vault key ring: {}", ring(&k.vault));
    if let Some(live) = &d.live {
        let _ = writeln!(
            m,
            "- stored now: {} assertion(s), {} under an older key, the last kept until {}",
            live.assertions_stored,
            live.assertions_under_older_keys,
            live.assertions_kept_until.map_or_else(|| "—".to_owned(), |t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        );
    }
    m.push('\n');

    let g = &d.governance;
    let _ = writeln!(m, "## 6. Governance\n");
    let _ = writeln!(
        m,
        "- incidents (data leak, credential loss or compromise, of the platform or a person): the DPO is told at once \
         ({}) through `{}`, containment and rotation follow as durable steps; `custodian incident show` is the register",
        if g.dpo_recipients.is_empty() { "no recipient configured".to_owned() } else { g.dpo_recipients.join(", ") },
        g.dpo_smtp
    );
    let _ = writeln!(
        m,
        "- audit: every lifecycle event in an append-only SHA-256 hash chain, checkpoints signed with Ed25519 key `{}` \
         (configured: {}) every {} entries or {}, exported to {}; `custodian audit verify` finds the first break",
        k.audit_signing_key_id,
        yes(k.audit_signing_key_configured),
        g.audit_checkpoint_every,
        secs(g.audit_checkpoint_secs),
        g.audit_checkpoint_file.as_deref().map_or_else(|| "no file (database only)".to_owned(), |f| format!("`{f}`"))
    );
    let _ = writeln!(
        m,
        "- privacy log: each use of a SAML holder-of-key token records the real caller, sealed (identity key ring: {}); readable by the DPO role only",
        ring(&k.privacy_log)
    );
    let _ = writeln!(
        m,
        "- retention: consent history {} days, bus records {} days, purged at `{}`",
        r.history_days, r.bus_records_days, r.retention_cron
    );
    let _ = writeln!(
        m,
        "- security events: transmitting CAEP to receivers as {}; receiving from {}",
        g.ssf_transmitter.as_deref().unwrap_or("— (off)"),
        g.ssf_receiver.as_deref().unwrap_or("— (off)")
    );
    match (&d.live, &d.live_error) {
        (Some(live), _) => {
            let _ = writeln!(
                m,
                "- now: {} consent(s); {} audit entries, last checkpoint {}; {} incident(s) open of {}",
                live.consents,
                live.audit_entries,
                live.last_checkpoint.map_or_else(
                    || "none".to_owned(),
                    |(seq, at)| format!("at {seq} ({})", at.format("%Y-%m-%d %H:%M UTC"))
                ),
                live.incidents_open,
                live.incidents_total
            );
        }
        (None, Some(reason)) => {
            let _ = writeln!(m, "- live state not read: {reason}");
        }
        (None, None) => {}
    }
    m.push('\n');

    let _ = writeln!(m, "## 7. Configuration sources\n");
    let _ = writeln!(m, "- file: {}", d.sources.file.as_deref().unwrap_or("none"));
    let _ = writeln!(
        m,
        "- environment: {}",
        if d.sources.environment.is_empty() { "none".to_owned() } else { d.sources.environment.join(", ") }
    );
    let _ = writeln!(
        m,
        "- from files: {}",
        if d.sources.secret_files.is_empty() { "none".to_owned() } else { d.sources.secret_files.join(", ") }
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRETS: [&str; 7] = [
        "client-secret-7f3a",
        "S0VLLWtlay1vbmUtMzItYnl0ZXMtYmFzZTY0LWVuYz0=",
        "c2lnbmluZy1zZWVkLTMyLWJ5dGVzLWJhc2U2NC1lbmM=",
        "db-password-19",
        "smtp-password-22",
        "registration-token-5",
        "query-password-8",
    ];

    fn config() -> Config {
        let toml = format!(
            r#"
database_url = "postgres://app:{db}@db.internal:5432/custodian?sslmode=verify-full&password={q}"
nats_url = "tls://nats.internal:4222"
[gateway.login]
public_url = "https://tp.example"
[[vault.clients]]
issuer = "https://op.example"
client_id = "tp-one"
client_secret = "{client}"
redirect_uri = "https://tp.example/callback"
required_acr = "eid"
[vault.keyring]
current = "k2"
[[vault.keyring.keys]]
id = "k1"
secret = "{kek}"
[[vault.keyring.keys]]
id = "k2"
secret = "{kek}"
[audit]
signing_key = "{seed}"
[incident.dpo]
to = ["dpo@ehealth.example"]
smtp_url = "smtp://mail.internal:25"
smtp_password = "{smtp}"
[[incident.platforms]]
platform_id = "tp-one"
issuer = "https://op.example"
registration_client_uri = "https://op.example/reg/tp-one"
registration_access_token = "{reg}"
client_secret = "{client}"
"#,
            db = SECRETS[3],
            q = SECRETS[6],
            client = SECRETS[0],
            kek = SECRETS[1],
            seed = SECRETS[2],
            smtp = SECRETS[4],
            reg = SECRETS[5],
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("custodian.toml");
        std::fs::write(&path, toml).expect("written");
        Config::load_from(Some(&path), std::iter::empty()).expect("config")
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_000_000, 0).expect("time")
    }

    #[test]
    fn the_dossier_states_the_measures_from_the_configuration_and_no_secret() {
        let sources = Sources::from_parts(
            Some("/etc/custodian.toml".into()),
            ["CUSTODIAN_DATABASE_URL_FILE", "CUSTODIAN_NATS_URL", "CUSTODIAN_LOG", "HOME"]
                .into_iter()
                .map(String::from),
        );
        let dossier = from_config(&config(), sources, now());
        let markdown = render_markdown(&dossier);
        let json = serde_json::to_string(&dossier).expect("json");
        for secret in SECRETS {
            assert!(!markdown.contains(secret), "the Markdown shows a secret: {secret}");
            assert!(!json.contains(secret), "the JSON shows a secret: {secret}");
        }
        for fact in [
            "tp-one",
            "`https://op.example`",
            "level of assurance required: eid",
            "`db.internal:5432/custodian`",
            "sslmode=verify-full",
            "keys k1, k2 (new records sealed under `k2`)",
            "HTTPS: yes",
            "TLS: yes",
            "secret rotation through its OP registration (RFC 7592): yes",
            "dpo@ehealth.example",
            "`smtp://mail.internal:25`",
            "nightly: 90 days idle, `0 0 3 * * *`",
            "from files: CUSTODIAN_DATABASE_URL",
            "environment: CUSTODIAN_NATS_URL",
            "TLS; no client certificate (set nats.client_cert); no NATS identities (set nats.credentials_dir)",
            "### 3a. Who may do what on the bus",
            "| vault | ",
            "`custodian.vault.token.* vault`",
        ] {
            assert!(markdown.contains(fact), "missing {fact:?} in:\n{markdown}");
        }
        assert!(!markdown.contains("CUSTODIAN_LOG"), "runtime variables are not settings");
    }

    #[test]
    fn a_bus_with_tls_client_certificates_and_identities_is_reported_protected() {
        let mut config = config();
        config.nats.client_cert = Some("/run/nats/client.pem".into());
        config.nats.client_key = Some("/run/nats/client.key".into());
        config.nats.credentials_dir = Some("/run/nats/identities".into());
        let markdown = render_markdown(&from_config(&config, Sources::default(), now()));
        assert!(
            markdown.contains("protected: TLS with client certificates (mTLS), an nkey per service and view"),
            "{markdown}"
        );
        assert!(!markdown.contains("plain TCP"), "{markdown}");
    }

    #[test]
    fn an_insecure_setting_is_called_out() {
        let dossier = from_config(&Config::default(), Sources::default(), now());
        let markdown = render_markdown(&dossier);
        assert!(markdown.contains("plain TCP: set a tls:// NATS URL"), "{markdown}");
        assert!(markdown.contains("plain HTTP: put the gateway behind HTTPS"), "{markdown}");
        assert!(markdown.contains("No platform is registered"), "{markdown}");
        assert!(markdown.contains("SQLite `.data/custodian.db`"), "{markdown}");
    }

    /// On a real database (the test backend's): metadata and counts, nothing sealed read.
    #[tokio::test]
    async fn the_live_state_counts_what_the_database_holds() {
        use custodian_store::Store;
        use custodian_store::sea_orm::{ActiveModelTrait, IntoActiveModel};
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::connect_and_migrate(&custodian_testkit::test_database_url(dir.path()), 2).await.expect("db");
        let db = store.db();
        let at = |secs: i64| now() + chrono::Duration::seconds(secs);
        for (version, state, key) in [(1, "previous", "k1"), (2, "current", "k2")] {
            credential::Model {
                id: format!("tp-one-{version}"),
                platform_id: "tp-one".into(),
                version,
                state: state.into(),
                key_id: key.into(),
                wrapped_key: vec![1; 16],
                ciphertext: b"sealed".to_vec(),
                created_at: at(-3600 * version as i64),
                not_after: (version == 1).then(|| at(600)),
            }
            .into_active_model()
            .insert(db)
            .await
            .expect("credential");
        }
        for (id, key, expires) in [("a1", "k1", 100), ("a2", "k2", 9000), ("a3", "k2", 50)] {
            assertion::Model {
                assertion_id: id.into(),
                issuer: "https://op.example".into(),
                subject: format!("person-{id}"),
                platform_id: "tp-one".into(),
                acr: None,
                scopes: "[]".into(),
                key_id: key.into(),
                wrapped_key: vec![1; 16],
                ciphertext: b"sealed".to_vec(),
                access_expires_at: at(60),
                expires_at: at(expires),
                revocation_id: None,
                created_at: at(-10),
                updated_at: at(-10),
            }
            .into_active_model()
            .insert(db)
            .await
            .expect("assertion");
        }
        // Open, open, closed, expired on view-a; open on view-b.
        for (i, view, closed, expires) in [
            (0, "view-a", false, 60),
            (1, "view-a", false, 60),
            (2, "view-a", true, 60),
            (3, "view-a", false, -60),
            (4, "view-b", false, 60),
        ] {
            view_session::Model {
                session_id: format!("s{i}"),
                view_id: view.into(),
                issuer: "https://op.example".into(),
                subject: "person".into(),
                platform_id: "tp-one".into(),
                expires_at: at(expires),
                opened_at: at(-100),
                closed_at: closed.then(|| at(-5)),
                wipe_id: None,
                wiped_at: None,
                assertion_id: None,
            }
            .into_active_model()
            .insert(db)
            .await
            .expect("session");
        }
        for (id, state) in [("inc-1", "open"), ("inc-2", "closed")] {
            incident::Model {
                incident_id: id.into(),
                kind: "data_leak".into(),
                platform_id: "tp-one".into(),
                issuer: None,
                subject: None,
                summary: "test".into(),
                detected_at: at(-50),
                reporter: "ops".into(),
                reported_event_id: format!("ev-{id}"),
                state: state.into(),
                created_at: at(-50),
                updated_at: at(-50),
                closed_at: (state == "closed").then(|| at(-1)),
                traceparent: None,
            }
            .into_active_model()
            .insert(db)
            .await
            .expect("incident");
        }

        let live = live_state(db, Some("k2"), now()).await.expect("live state");
        assert_eq!(live.assertions_stored, 3);
        assert_eq!(live.assertions_under_older_keys, 1);
        assert_eq!(live.assertions_kept_until, Some(at(9000)));
        assert_eq!(live.views_with_open_sessions, vec![("view-a".to_owned(), 2), ("view-b".to_owned(), 1)]);
        assert_eq!((live.incidents_open, live.incidents_total), (1, 2));
        assert_eq!((live.consents, live.audit_entries, live.last_checkpoint), (0, 0, None));
        let versions: Vec<(i32, &str, &str)> =
            live.credentials.iter().map(|c| (c.version, c.state.as_str(), c.key_id.as_str())).collect();
        assert_eq!(versions, vec![(1, "previous", "k1"), (2, "current", "k2")]);
        assert_eq!(live.credentials[0].not_after, Some(at(600)));

        let mut dossier = from_config(&config(), Sources::default(), now());
        dossier.live = Some(live);
        let markdown = render_markdown(&dossier);
        assert!(markdown.contains("- tp-one version 2: current, sealed under `k2`"), "{markdown}");
        assert!(markdown.contains("- `view-a`: 2 open session(s) now"), "{markdown}");
        assert!(markdown.contains("stored now: 3 assertion(s), 1 under an older key"), "{markdown}");
        assert!(markdown.contains("1 incident(s) open of 2"), "{markdown}");
    }

    #[test]
    fn urls_lose_their_credentials_and_query() {
        assert_eq!(without_userinfo("nats://u:p@nats:4222"), "nats://nats:4222");
        assert_eq!(without_userinfo("smtps://user:pw@mail:465?x=1"), "smtps://mail:465");
        assert_eq!(without_userinfo("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            describe_database("postgresql://a:b@h/db?sslmode=require"),
            ("PostgreSQL", "h/db".to_owned(), Some("require".to_owned()))
        );
        assert_eq!(describe_database("sqlite://.data/c.db?mode=rwc"), ("SQLite", ".data/c.db".to_owned(), None));
    }
}
