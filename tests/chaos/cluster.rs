//! The processes of a chaos run: nats-server and PostgreSQL from the testkit, the OP, and each
//! Custodian service as `custodian serve <service>`, configured from one generated file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use custodian_bus::Bus;
use custodian_bus::trust::Identity;
use custodian_crypto::{KeyConfig, KeyRing, KeyRingConfig};
use custodian_events::subjects;
use custodian_store::Store;
use custodian_store::entities::assertion;
use custodian_testkit::{NatsServer, PgCluster, Provider, eventually};
use custodian_view_sdk::View;
use futures::TryStreamExt;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use sha2::{Digest, Sha256};

/// The services and their replicas, by process name.
const PROCESSES: [(&str, &str); 5] = [
    ("consent-1", "consent"),
    ("consent-2", "consent"),
    ("vault-1", "vault"),
    ("vault-2", "vault"),
    ("gateway", "gateway"),
];

/// What a revocation's waiter asks, cloned into each one (the cluster itself is busy killing).
#[derive(Clone)]
pub struct Probe {
    provider: &'static Provider,
    platform: String,
    client_secret: String,
    gateway_url: String,
    ops_token: String,
    http: reqwest::Client,
}

pub struct Cluster {
    pub nats: NatsServer,
    pub store: Store,
    pub provider: &'static Provider,
    /// The platform's client id at the OP.
    pub platform: String,
    client_secret: String,
    keyring: KeyRing,
    gateway_url: String,
    ops_token: String,
    http: reqwest::Client,
    config: PathBuf,
    dir: tempfile::TempDir,
    processes: BTreeMap<String, Child>,
    views: Vec<tokio_util::sync::CancellationToken>,
}

/// `custodian` with this process's `CUSTODIAN_*` variables removed (the tests' own, such as
/// `CUSTODIAN_TEST_BACKEND`, are not settings) and the chaos configuration.
fn custodian(config: &std::path::Path) -> Command {
    let mut command = Command::new(custodian_bin());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CUSTODIAN_") {
            command.env_remove(name);
        }
    }
    command.env("CUSTODIAN_CONFIG", config);
    command
}

fn custodian_bin() -> PathBuf {
    let path = std::env::var_os("CHAOS_CUSTODIAN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| custodian_testkit::repo_root().join("target/debug/custodian"));
    assert!(path.exists(), "{} is missing: build it first (cargo build -p custodian)", path.display());
    path
}

impl Cluster {
    pub async fn start() -> Cluster {
        custodian_telemetry::init_for_tests();
        let dir = tempfile::tempdir().expect("temp dir");
        let nats = NatsServer::start();
        let database_url = PgCluster::shared().fresh_database();
        let provider = Provider::shared();
        let port = custodian_testkit::free_port();
        let gateway_url = format!("http://127.0.0.1:{port}");
        let client = provider.register_client(&[&format!("{gateway_url}/callback")]).await;
        let key = custodian_crypto::generate_key();
        let keyring = KeyRing::from_config(&KeyRingConfig {
            current: "chaos-1".into(),
            keys: vec![KeyConfig { id: "chaos-1".into(), secret: key.clone().into() }],
        })
        .expect("key ring");
        let ops_token = format!("chaos-ops-{}", uuid::Uuid::new_v4().simple());
        let access = nats.access();
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let config = format!(
            r#"database_url = "{database_url}"
nats_url = "{nats_url}"

[nats]
ca = "{ca}"
client_cert = "{cert}"
client_key = "{key_file}"
credentials_dir = "{creds}"

[gateway]
listen = "127.0.0.1:{port}"

[gateway.login]
public_url = "{gateway_url}"

[gateway.oidc]
issuer = "{issuer}"
audience = "{client_id}"
ca_file = "{op_ca}"

[[gateway.machine_tokens]]
name = "chaos-ops"
role = "ops"
sha256 = "{ops_digest}"

[vault.keyring]
current = "chaos-1"
[[vault.keyring.keys]]
id = "chaos-1"
secret = "{key}"

[[vault.clients]]
issuer = "{issuer}"
ca_file = "{op_ca}"
client_id = "{client_id}"
client_secret = "{client_secret}"
redirect_uri = "{gateway_url}/callback"
"#,
            nats_url = access.url,
            ca = path(&access.ca),
            cert = path(&access.client_cert),
            key_file = path(&access.client_key),
            creds = path(&access.credentials_dir),
            issuer = provider.issuer,
            client_id = client.client_id,
            client_secret = client.client_secret,
            op_ca = provider.ca_file.display(),
            ops_digest = hex::encode(Sha256::digest(ops_token.as_bytes())),
        );
        let config_path = dir.path().join("custodian.toml");
        std::fs::write(&config_path, config).expect("config");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("http");
        let mut cluster = Cluster {
            nats,
            store: Store::connect(&database_url, 8).await.expect("database"),
            provider,
            platform: client.client_id,
            client_secret: client.client_secret,
            keyring,
            gateway_url,
            ops_token,
            http,
            config: config_path,
            dir,
            processes: BTreeMap::new(),
            views: Vec::new(),
        };
        cluster.once(&["migrate"]);
        cluster.once(&["nats", "provision"]);
        for (name, _) in PROCESSES {
            cluster.spawn(name);
        }
        cluster.ready().await;
        cluster
    }

    /// Runs a one-shot command to its end; panics with its output if it fails.
    fn once(&self, args: &[&str]) {
        let out = custodian(&self.config).args(args).output().expect("custodian runs");
        assert!(
            out.status.success(),
            "custodian {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn spawn(&mut self, name: &str) {
        let service = PROCESSES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s).expect("known process");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("log file");
        let child = custodian(&self.config)
            .args(["serve", service])
            .env("CUSTODIAN_REPLICA", name)
            .env("CUSTODIAN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("custodian serve");
        self.processes.insert(name.to_owned(), child);
    }

    async fn ready(&self) {
        eventually("the gateway to be ready", Duration::from_secs(60), || async {
            let response = self.http.get(self.url("/readyz")).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
    }

    /// SIGKILL of one process (`nats` for the NATS server).
    pub fn kill(&mut self, name: &str) {
        if name == "nats" {
            self.nats.kill();
            return;
        }
        let mut child = self.processes.remove(name).expect("running process");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    /// Starts a killed process again.
    pub async fn restart(&mut self, name: &str) {
        if name == "nats" {
            let port = self.nats.port();
            tokio::task::block_in_place(|| self.nats.restart());
            assert_eq!(port, self.nats.port(), "NATS back on its port");
        } else {
            self.spawn(name);
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway_url)
    }

    /// A view (the SDK, in this process) with its own NATS identity, listening for wipes.
    pub async fn view(&mut self, view_id: &str) -> View {
        self.nats.add_view(view_id);
        let identity = Identity::view(view_id).expect("view id");
        let bus = Bus::attach(self.nats.connect(&identity, "custodian-chaos-view").await);
        let view = View::new(view_id, bus, custodian_store::clock::system()).expect("view");
        let token = tokio_util::sync::CancellationToken::new();
        let (running, stop) = (view.clone(), token.clone());
        tokio::spawn(async move {
            if let Err(e) = running.run(stop).await {
                tracing::error!(error = %e, "view stopped with an error");
            }
        });
        self.views.push(token);
        view
    }

    /// The person's tokens as the vault holds them (decrypted with its key ring).
    pub async fn tokens_of(&self, subject: &str) -> Vec<String> {
        let rows = assertion::Entity::find()
            .filter(assertion::Column::Subject.eq(subject))
            .all(self.store.db())
            .await
            .expect("assertions");
        let mut tokens = Vec::new();
        for row in rows {
            let envelope = custodian_crypto::Envelope {
                key_id: row.key_id.clone(),
                wrapped_key: row.wrapped_key.clone(),
                ciphertext: row.ciphertext.clone(),
            };
            let plain =
                self.keyring.open(&envelope, &custodian_vault::assertion_aad(&row.assertion_id)).expect("opens");
            let bundle: custodian_vault::TokenBundle = serde_json::from_slice(&plain).expect("bundle");
            tokens.push(bundle.access_token.clone());
            tokens.extend(bundle.refresh_token.clone());
        }
        tokens
    }

    /// A handle for waiting on revocations from other tasks.
    pub fn probe(&self) -> Probe {
        Probe {
            provider: self.provider,
            platform: self.platform.clone(),
            client_secret: self.client_secret.clone(),
            gateway_url: self.gateway_url.clone(),
            ops_token: self.ops_token.clone(),
            http: self.http.clone(),
        }
    }

    /// `consent.ended` events on the stream.
    pub async fn consent_ended_count(&self) -> u64 {
        let client = self.nats.connect_harness().await;
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(subjects::STREAM).await.expect("stream");
        let _ = stream.info().await;
        let counts: Vec<(String, usize)> = stream
            .info_with_subjects(subjects::CONSENT_ENDED)
            .await
            .expect("info")
            .try_collect()
            .await
            .expect("counts");
        counts.into_iter().map(|(_, n)| n as u64).sum()
    }

    /// The database server's `fsync` setting (the chaos targets turn it on).
    pub async fn fsync(&self) -> String {
        use sea_orm::ConnectionTrait;
        let row = self
            .store
            .db()
            .query_one_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, "SHOW fsync"))
            .await
            .expect("SHOW fsync")
            .expect("a row");
        row.try_get::<String>("", "fsync").expect("fsync")
    }

    /// `custodian status --check`: nothing an operator must look at (dead letters, stuck work).
    pub async fn status_check(&self) {
        let out = custodian(&self.config).args(["status", "--check"]).output().expect("custodian status");
        assert!(
            out.status.success(),
            "status --check after the chaos:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop(mut self) {
        for token in &self.views {
            token.cancel();
        }
        for (name, mut child) in std::mem::take(&mut self.processes) {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            tracing::debug!(process = %name, "stopped");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.processes.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            // Keep the processes' logs for whoever reads the failure.
            let kept = std::env::temp_dir().join(format!("custodian-chaos-logs-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&kept);
            for (name, _) in PROCESSES {
                let _ = std::fs::copy(self.dir.path().join(format!("{name}.log")), kept.join(format!("{name}.log")));
            }
            eprintln!("the services' logs are in {}", kept.display());
        }
    }
}

impl Probe {
    /// Waits until the OP says every one of `tokens` is inactive; how long after `since`.
    pub async fn until_inactive(&self, tokens: &[String], since: Instant) -> Duration {
        for token in tokens {
            eventually("a token to be inactive at the OP", Duration::from_secs(90), || async {
                let info = self.provider.introspect(&self.platform, &self.client_secret, token).await;
                (info["active"] == false).then_some(())
            })
            .await;
        }
        since.elapsed()
    }

    /// Waits until the revocation's receipt says done; how long after `since`.
    pub async fn until_done(&self, revocation_id: &str, since: Instant) -> Duration {
        eventually("a receipt to be done", Duration::from_secs(90), || async {
            let response = self
                .http
                .get(format!("{}/v1/revocations/{revocation_id}", self.gateway_url))
                .bearer_auth(&self.ops_token)
                .send()
                .await
                .ok()?;
            let receipt: serde_json::Value = response.json().await.ok()?;
            (receipt["state"] == "done").then_some(())
        })
        .await;
        since.elapsed()
    }
}
