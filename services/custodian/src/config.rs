//! One typed configuration: embedded defaults → `custodian.toml` (optional) → `CUSTODIAN_*`
//! environment (`__` for nesting, e.g. `CUSTODIAN_GATEWAY__LISTEN`). Any setting may come
//! from a file with `_FILE` (e.g. `CUSTODIAN_DATABASE_URL_FILE=/run/secrets/db`).

use std::path::Path;

use anyhow::{Context, bail};
use custodian_consent::ConsentConfig;
use custodian_demo_view::DemoViewConfig;
use custodian_gateway::GatewayConfig;
use custodian_sweeper::SweeperConfig;
use custodian_vault::VaultConfig;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://.data/custodian.db";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub nats_url: String,
    /// TLS, client certificate and the folder of NATS credentials (`[nats]`).
    pub nats: custodian_bus::NatsAccess,
    /// May carry a password: a secret, redacted in `Debug`.
    pub database_url: SecretString,
    pub database_max_connections: u32,
    pub stream: StreamConfig,
    pub consent: ConsentConfig,
    pub gateway: GatewayConfig,
    pub sweeper: SweeperConfig,
    pub vault: VaultConfig,
    pub audit: custodian_audit::AuditConfig,
    pub incident: custodian_incident::IncidentConfig,
    pub demo_view: DemoViewConfig,
    /// This process's name in sweep leases (default: the host name and process id).
    pub replica: Option<String>,
    /// Where a process without the gateway serves its `/metrics` (`serve vault`, …); the
    /// gateway serves those of its process on its own listener.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    pub replicas: usize,
    pub duplicate_window_secs: u64,
    pub max_age_secs: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self { replicas: 1, duplicate_window_secs: 120, max_age_secs: 7 * 24 * 3600 }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats_url: DEFAULT_NATS_URL.to_owned(),
            nats: custodian_bus::NatsAccess::default(),
            database_url: SecretString::from(DEFAULT_DATABASE_URL),
            database_max_connections: 16,
            stream: StreamConfig::default(),
            consent: ConsentConfig::default(),
            gateway: GatewayConfig::default(),
            sweeper: SweeperConfig::default(),
            vault: VaultConfig::default(),
            audit: custodian_audit::AuditConfig::default(),
            incident: custodian_incident::IncidentConfig::default(),
            demo_view: DemoViewConfig::default(),
            replica: None,
            metrics_listen: None,
        }
    }
}

impl Config {
    /// Loads and validates. `file` is the TOML file (default `custodian.toml`, optional).
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Self::load_from(file, std::env::vars())
    }

    pub fn load_from(file: Option<&Path>, env: impl Iterator<Item = (String, String)>) -> anyhow::Result<Self> {
        let (path, required) = match file {
            Some(p) => (p.to_path_buf(), true),
            None => (Path::new("custodian.toml").to_path_buf(), false),
        };
        if required && !path.exists() {
            bail!("config file {} does not exist", path.display());
        }
        let env: Vec<(String, String)> = env.filter(|(k, _)| k.starts_with("CUSTODIAN_")).collect();
        // The file's secrets may be references: `secret_file = "/run/secrets/k"` reads `secret`.
        let mut from_file: figment::value::Value =
            Figment::new().merge(Toml::file(&path)).extract().map_err(|e| anyhow::anyhow!(describe(e)))?;
        read_secret_files(&mut from_file, "")?;
        let mut figment = Figment::new().merge(Serialized::defaults(from_file));
        for (key, value) in env.iter().filter(|(k, _)| !is_runtime_only(k)) {
            let (name, value) = match key.strip_suffix("_FILE") {
                Some(name) => {
                    let contents =
                        std::fs::read_to_string(value).with_context(|| format!("{key}: cannot read {value}"))?;
                    (name, contents.trim_end_matches(['\n', '\r']).to_owned())
                }
                None => (key.as_str(), value.clone()),
            };
            let dotted = name.trim_start_matches("CUSTODIAN_").to_lowercase().replace("__", ".");
            // Parsed like figment's Env provider: numbers, booleans, arrays and tables.
            let parsed: figment::value::Value =
                value.parse().unwrap_or_else(|_| figment::value::Value::from(value.clone()));
            figment = figment.merge(Serialized::global(&dotted, parsed));
        }
        let mut config: Config = figment.extract().map_err(|e| anyhow::anyhow!(describe(e)))?;
        config.nats.url = config.nats_url.clone();
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !["nats://", "tls://", "ws://", "wss://"].iter().any(|s| self.nats_url.starts_with(s)) {
            bail!("CUSTODIAN_NATS_URL / nats_url must be a nats:// or tls:// URL, got {:?}", self.nats_url);
        }
        self.nats.check().map_err(|e| anyhow::anyhow!("CUSTODIAN_NATS_URL / nats_url: {e}"))?;
        let db = self.database_url.expose_secret();
        if !(db.starts_with("sqlite:") || db.starts_with("postgres://") || db.starts_with("postgresql://")) {
            bail!("CUSTODIAN_DATABASE_URL / database_url must start with sqlite:// or postgres://");
        }
        if self.stream.duplicate_window_secs < 120 {
            bail!(
                "CUSTODIAN_STREAM__DUPLICATE_WINDOW_SECS must be at least 120 (the contract's de-duplication window)"
            );
        }
        self.sweeper.validate()?;
        if self
            .gateway
            .machine_tokens
            .iter()
            .any(|t| t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            bail!("gateway.machine_tokens[].sha256 must be 64 hex characters (see `custodian token new`)");
        }
        Ok(())
    }
}

/// Variables read by other parts of the process, not settings of this struct.
pub(crate) fn is_runtime_only(key: &str) -> bool {
    matches!(key, "CUSTODIAN_LOG" | "CUSTODIAN_LOG_FORMAT" | "CUSTODIAN_CONFIG") || key.starts_with("CUSTODIAN_TEST_")
}

/// Settings that may instead be read from a file named by `<name>_file` in `custodian.toml`,
/// so that secrets stay in files of their own (0600) and out of the configuration.
const SECRET_SETTINGS: &[&str] = &[
    "secret",
    "client_secret",
    "signing_key",
    "registration_access_token",
    "smtp_password",
    "webhook_secret",
    "database_url",
];

fn read_secret_files(value: &mut figment::value::Value, at: &str) -> anyhow::Result<()> {
    use figment::value::Value;
    match value {
        Value::Dict(_, dict) => {
            let references: Vec<String> = dict
                .keys()
                .filter(|k| k.strip_suffix("_file").is_some_and(|name| SECRET_SETTINGS.contains(&name)))
                .cloned()
                .collect();
            for key in references {
                let name = key.trim_end_matches("_file").to_owned();
                let Some(Value::String(_, file)) = dict.remove(&key) else {
                    bail!("{at}{key} must be the path of a file holding {name}");
                };
                if dict.contains_key(&name) {
                    bail!("{at}{name} and {at}{key} are both set: keep one");
                }
                let contents =
                    std::fs::read_to_string(&file).with_context(|| format!("{at}{key}: cannot read {file}"))?;
                dict.insert(name, Value::from(contents.trim_end_matches(['\n', '\r']).to_owned()));
            }
            for (key, inner) in dict.iter_mut() {
                read_secret_files(inner, &format!("{at}{key}."))?;
            }
        }
        Value::Array(_, items) => {
            for (i, inner) in items.iter_mut().enumerate() {
                read_secret_files(inner, &format!("{}[{i}].", at.trim_end_matches('.')))?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let env_name =
                format!("CUSTODIAN_{}", e.path.iter().map(|p| p.to_uppercase()).collect::<Vec<_>>().join("__"));
            if key.is_empty() {
                format!("invalid configuration: {}", e.kind)
            } else {
                format!("invalid setting {key} ({env_name}): {}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<Vec<_>>().into_iter()
    }

    #[test]
    fn defaults_run_locally_without_any_file() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.nats_url, DEFAULT_NATS_URL);
        assert_eq!(c.database_url.expose_secret(), DEFAULT_DATABASE_URL);
    }

    #[test]
    fn secrets_in_the_file_may_be_references_to_files_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let kek = write("kek", "a2V5LWVuY3J5cHRpb24ta2V5LTAxMjM0NTY3ODkwMTI=\n");
        let client = write("client", "s3cr3t-of-the-client\n");
        let config = write(
            "custodian.toml",
            &format!(
                "[vault.keyring]\ncurrent = \"k1\"\n[[vault.keyring.keys]]\nid = \"k1\"\nsecret_file = \"{kek}\"\n\
                 [[vault.clients]]\nissuer = \"https://op\"\nclient_id = \"tp\"\nclient_secret_file = \"{client}\"\n\
                 redirect_uri = \"https://gw/callback\"\n"
            ),
        );
        let c = Config::load_from(Some(Path::new(&config)), env(&[])).unwrap();
        let ring = c.vault.keyring.as_ref().expect("keyring");
        assert_eq!(ring.keys[0].secret.expose_secret(), "a2V5LWVuY3J5cHRpb24ta2V5LTAxMjM0NTY3ODkwMTI=");
        assert_eq!(c.vault.clients[0].client_secret.expose_secret(), "s3cr3t-of-the-client");
        assert!(!format!("{c:?}").contains("s3cr3t"), "Debug must redact secrets");

        let both = write(
            "both.toml",
            &format!(
                "[vault.keyring]\ncurrent = \"k1\"\n[[vault.keyring.keys]]\nid = \"k1\"\nsecret = \"x\"\nsecret_file = \"{kek}\"\n"
            ),
        );
        let err = Config::load_from(Some(Path::new(&both)), env(&[])).unwrap_err().to_string();
        assert!(
            err.contains("vault.keyring.keys[0].secret and vault.keyring.keys[0].secret_file are both set"),
            "{err}"
        );
        let missing = write("missing.toml", "[audit]\nsigning_key_file = \"/nonexistent/key\"\n");
        let err = format!("{:#}", Config::load_from(Some(Path::new(&missing)), env(&[])).unwrap_err());
        assert!(err.contains("audit.signing_key_file: cannot read /nonexistent/key"), "{err}");
    }

    #[test]
    fn environment_overrides_with_nesting_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("db");
        std::fs::write(&secret, "postgres://app:hunter2@db/custodian\n").unwrap();
        let c = Config::load_from(
            None,
            env(&[
                ("CUSTODIAN_NATS_URL", "nats://10.0.0.1:4222"),
                ("CUSTODIAN_NATS__ALLOW_PLAINTEXT", "true"),
                ("CUSTODIAN_GATEWAY__LISTEN", "0.0.0.0:9000"),
                ("CUSTODIAN_CONSENT__BATCH", "250"),
                ("CUSTODIAN_DATABASE_URL_FILE", secret.to_str().unwrap()),
            ]),
        )
        .unwrap();
        assert_eq!(c.nats_url, "nats://10.0.0.1:4222");
        assert_eq!(c.gateway.listen.port(), 9000);
        assert_eq!(c.consent.batch, 250);
        assert_eq!(c.database_url.expose_secret(), "postgres://app:hunter2@db/custodian");
        assert!(!format!("{c:?}").contains("hunter2"), "Debug must redact secrets");
    }

    #[test]
    fn plain_text_nats_beyond_loopback_is_refused_unless_allowed_and_tls_is_taken_as_is() {
        let refused = Config::load_from(None, env(&[("CUSTODIAN_NATS_URL", "nats://10.0.0.1:4222")])).unwrap_err();
        assert!(
            refused.to_string().contains("CUSTODIAN_NATS_URL") && refused.to_string().contains("plain-text"),
            "{refused}"
        );
        let tls = Config::load_from(None, env(&[("CUSTODIAN_NATS_URL", "tls://nats.internal:4222")])).unwrap();
        assert!(tls.nats.is_tls());
        let with_ca = Config::load_from(
            None,
            env(&[("CUSTODIAN_NATS_URL", "nats://nats.internal:4222"), ("CUSTODIAN_NATS__CA", "/etc/ca.pem")]),
        )
        .unwrap();
        assert!(with_ca.nats.is_tls(), "a CA makes the connection TLS");
        Config::load_from(None, env(&[])).expect("loopback plain text is the local default");
    }

    #[test]
    fn a_bad_sweep_schedule_is_refused_at_start_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("custodian.toml");
        std::fs::write(
            &file,
            "[[sweeper.schedules]]\nname = \"nightly\"\ninactivity_days = 90\ncron = \"at midnight\"\n",
        )
        .unwrap();
        let err = Config::load_from(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(err.contains("sweeper.schedules[0].cron"), "{err}");
        std::fs::write(&file, "[[sweeper.schedules]]\nname = \"n\"\ninactivity_days = 0\ncron = \"0 0 3 * * *\"\n")
            .unwrap();
        let err = Config::load_from(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(err.contains("sweeper.schedules[0].inactivity_days"), "{err}");
    }

    #[test]
    fn a_bad_setting_is_refused_naming_the_variable() {
        let err = Config::load_from(None, env(&[("CUSTODIAN_CONSENT__BATCH", "many")])).unwrap_err().to_string();
        assert!(err.contains("CUSTODIAN_CONSENT__BATCH"), "{err}");
        let err = Config::load_from(None, env(&[("CUSTODIAN_NATS_URL", "http://x")])).unwrap_err().to_string();
        assert!(err.contains("CUSTODIAN_NATS_URL"), "{err}");
        let err = Config::load_from(None, env(&[("CUSTODIAN_GATEWAY__LISTNE", "x")])).unwrap_err().to_string();
        assert!(err.contains("listne"), "{err}");
    }
}
