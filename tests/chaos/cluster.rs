//! The processes of a chaos run: nats-server (one, or a cluster of three) and PostgreSQL from
//! the testkit, the OP, an SMTP server, and each Custodian service as `custodian serve
//! <service>`, configured from one generated file.

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
use custodian_testkit::{NatsServer, PgCluster, Provider, SmtpServer, eventually};
use custodian_view_sdk::View;
use futures::TryStreamExt;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use sha2::{Digest, Sha256};

/// The services and their replicas, by process name. Two of each that runs replicated; the
/// incident service runs one (its workflow steps are fenced in the database, but one replica
/// is what is deployed); the demo view runs one, a view being one process that holds what it
/// fetched in its memory.
pub const PROCESSES: [(&str, &str); 12] = [
    ("consent-1", "consent"),
    ("consent-2", "consent"),
    ("vault-1", "vault"),
    ("vault-2", "vault"),
    ("gateway-1", "gateway"),
    ("gateway-2", "gateway"),
    ("audit-1", "audit"),
    ("audit-2", "audit"),
    ("sweeper-1", "sweeper"),
    ("sweeper-2", "sweeper"),
    ("incident-1", "incident"),
    ("view-1", "demo-view"),
];

/// The demo view's view id (a NATS identity of its own).
pub const DEMO_VIEW: &str = "chaos-demo";

/// What a revocation's waiter asks, cloned into each one (the cluster itself is busy killing).
#[derive(Clone)]
pub struct Probe {
    provider: &'static Provider,
    platform: String,
    client_secret: String,
    gateway_urls: Vec<String>,
    ops_token: String,
    http: reqwest::Client,
}

pub struct Cluster {
    /// One node, or three clustered (`CHAOS_NATS_NODES`).
    pub nats: Vec<NatsServer>,
    /// Every node's URL, as the services and views are given it.
    nats_url: String,
    pub store: Store,
    pub provider: &'static Provider,
    pub smtp: SmtpServer,
    /// The platform people sign in to (client id at the OP).
    pub platform: String,
    /// A second platform, which the incident of a run is about.
    pub incident_platform: String,
    client_secret: String,
    keyring: KeyRing,
    /// `gateway-1`'s and `gateway-2`'s.
    pub gateway_urls: Vec<String>,
    /// The demo view's (`view-1`), on the gateways' host: the platform's session cookie reaches it.
    pub demo_view_url: String,
    pub ops_token: String,
    pub responder_token: String,
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
    pub async fn start(nats_nodes: usize) -> Cluster {
        custodian_telemetry::init_for_tests();
        let dir = tempfile::tempdir().expect("temp dir");
        let nats = if nats_nodes > 1 {
            NatsServer::start_cluster(nats_nodes, "jetstream { sync_interval: always }\n")
        } else {
            vec![NatsServer::start_configured(true, "jetstream { sync_interval: always }\n")]
        };
        let nats_url = NatsServer::cluster_url(&nats);
        let database_url = PgCluster::shared().fresh_database();
        let provider = Provider::shared();
        let smtp = SmtpServer::start();
        let ports = [custodian_testkit::free_port(), custodian_testkit::free_port()];
        let demo_view_url = format!("http://127.0.0.1:{}", custodian_testkit::free_port());
        let gateway_urls: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
        let client = provider.register_client(&[&format!("{}/callback", gateway_urls[0])]).await;
        let incident_client = provider.register_client(&[&format!("{}/callback", gateway_urls[0])]).await;
        let key = custodian_crypto::generate_key();
        let keyring = KeyRing::from_config(&KeyRingConfig {
            current: "chaos-1".into(),
            keys: vec![KeyConfig { id: "chaos-1".into(), secret: key.clone().into() }],
        })
        .expect("key ring");
        let ops_token = format!("chaos-ops-{}", uuid::Uuid::new_v4().simple());
        let responder_token = format!("chaos-responder-{}", uuid::Uuid::new_v4().simple());
        let audit_key = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
        };
        let access = nats[0].access();
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let config = format!(
            r#"database_url = "{database_url}"
nats_url = "{nats_url}"

[nats]
ca = "{ca}"
client_cert = "{cert}"
client_key = "{key_file}"
credentials_dir = "{creds}"

[stream]
replicas = {replicas}

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

[[gateway.machine_tokens]]
name = "chaos-responder"
role = "responder"
sha256 = "{responder_digest}"

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

[[vault.clients]]
issuer = "{issuer}"
ca_file = "{op_ca}"
client_id = "{incident_id}"
client_secret = "{incident_secret}"
redirect_uri = "{gateway_url}/callback"

[audit]
signing_key = "{audit_key}"

[sweeper]
lease_ttl_secs = 3
batch = 50

[incident]
step_pause_ms = 300
retry_initial_ms = 100
retry_max_secs = 1
poll_ms = 100
ack_wait_secs = 2

[incident.keyring]
current = "chaos-1"
[[incident.keyring.keys]]
id = "chaos-1"
secret = "{key}"

[incident.dpo]
to = ["dpo@chaos.example"]
from = "custodian@chaos.example"
smtp_url = "{smtp_url}"
contact = "DPO, dpo@chaos.example"
timeout_secs = 3

[demo_view]
listen = "{demo_view_addr}"
view_id = "{demo_view}"
platform_id = "{client_id}"
portal_url = "{gateway_url}"
session_cookie = "custodian_session"
keep_secs = 120

[[incident.platforms]]
platform_id = "{incident_id}"
issuer = "{issuer}"
ca_file = "{op_ca}"
registration_client_uri = "{registration_uri}"
registration_access_token = "{registration_token}"
client_secret = "{incident_secret}"
"#,
            replicas = nats_nodes.min(3),
            demo_view_addr = demo_view_url.trim_start_matches("http://"),
            demo_view = DEMO_VIEW,
            port = ports[0],
            gateway_url = gateway_urls[0],
            ca = path(&access.ca),
            cert = path(&access.client_cert),
            key_file = path(&access.client_key),
            creds = path(&access.credentials_dir),
            issuer = provider.issuer,
            client_id = client.client_id,
            client_secret = client.client_secret,
            incident_id = incident_client.client_id,
            incident_secret = incident_client.client_secret,
            registration_uri = incident_client.registration_client_uri.clone().expect("registration_client_uri"),
            registration_token = incident_client.registration_access_token.clone().expect("registration_access_token"),
            smtp_url = smtp.url(),
            op_ca = provider.ca_file.display(),
            ops_digest = hex::encode(Sha256::digest(ops_token.as_bytes())),
            responder_digest = hex::encode(Sha256::digest(responder_token.as_bytes())),
        );
        let config_path = dir.path().join("custodian.toml");
        std::fs::write(&config_path, config).expect("config");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("http");
        let mut cluster = Cluster {
            nats,
            nats_url,
            store: Store::connect(&database_url, 8).await.expect("database"),
            provider,
            smtp,
            platform: client.client_id,
            incident_platform: incident_client.client_id,
            client_secret: client.client_secret,
            keyring,
            gateway_urls,
            demo_view_url,
            ops_token,
            responder_token,
            http,
            config: config_path,
            dir,
            processes: BTreeMap::new(),
            views: Vec::new(),
        };
        cluster.wait_for_jetstream().await;
        cluster.once(&["migrate"]);
        cluster.once(&["nats", "provision"]);
        for node in &mut cluster.nats {
            node.add_view(DEMO_VIEW);
        }
        for (name, _) in PROCESSES {
            cluster.spawn(name);
        }
        cluster.ready().await;
        cluster
    }

    /// A cluster's nodes elect a JetStream meta leader a moment after they accept clients.
    async fn wait_for_jetstream(&self) {
        let client = self.nats[0].connect_harness().await;
        let js = async_nats::jetstream::new(client);
        eventually("JetStream to be available", Duration::from_secs(60), || async {
            js.query_account().await.ok().map(|_| ())
        })
        .await;
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
        let mut command = custodian(&self.config);
        if name == "gateway-2" {
            command.env("CUSTODIAN_GATEWAY__LISTEN", self.gateway_urls[1].trim_start_matches("http://"));
        }
        let child = command
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
        for url in &self.gateway_urls {
            eventually("the gateways to be ready", Duration::from_secs(60), || async {
                let response = self.http.get(format!("{url}/readyz")).send().await.ok()?;
                response.status().is_success().then_some(())
            })
            .await;
        }
        self.demo_view_ready().await;
    }

    /// The demo view answers its start page.
    pub async fn demo_view_ready(&self) {
        eventually("the demo view to answer", Duration::from_secs(60), || async {
            let response = self.http.get(format!("{}/", self.demo_view_url)).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
    }

    /// SIGKILL of one process: a service's (`vault-1`), a NATS node's (`nats-2`), or
    /// `postgres` (a crash of the database server: see [`PgCluster::crash`], which returns once
    /// it has recovered).
    pub fn kill(&mut self, name: &str) {
        if let Some(node) = name.strip_prefix("nats-") {
            let index: usize = node.parse().expect("nats-<n>");
            self.nats[index - 1].kill();
            return;
        }
        if name == "postgres" {
            let took = tokio::task::block_in_place(|| PgCluster::shared().crash());
            eprintln!("PostgreSQL crashed and recovered in {took:.2?}");
            return;
        }
        let mut child = self.processes.remove(name).expect("running process");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    /// Starts a killed process again (PostgreSQL restarts by itself).
    pub async fn restart(&mut self, name: &str) {
        if let Some(node) = name.strip_prefix("nats-") {
            let server = &mut self.nats[node.parse::<usize>().expect("nats-<n>") - 1];
            let port = server.port();
            tokio::task::block_in_place(|| server.restart());
            assert_eq!(port, server.port(), "NATS back on its port");
        } else if name != "postgres" {
            self.spawn(name);
        }
    }

    /// The process id of a running service process.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.processes.get(name).map(Child::id)
    }

    /// The service process holding a lease whose holder starts with `prefix` in `bucket`
    /// (lease holders carry their process id), if one of ours does.
    pub async fn lease_holder(&self, bucket: &str, prefix: &str) -> Option<String> {
        let js = async_nats::jetstream::new(self.harness().await);
        let kv = js.get_key_value(bucket).await.ok()?;
        let keys: Vec<String> = kv.keys().await.ok()?.try_collect().await.ok()?;
        for key in keys {
            let Ok(Some(value)) = kv.get(&key).await else { continue };
            let holder = String::from_utf8_lossy(&value).into_owned();
            if !holder.starts_with(prefix) {
                continue;
            }
            let pid: Option<u32> = holder.split('/').nth(1).and_then(|p| p.parse().ok());
            if let Some(name) = self.processes.iter().find(|(_, c)| Some(c.id()) == pid).map(|(n, _)| n.clone()) {
                return Some(name);
            }
        }
        None
    }

    /// The nodes that lead the stream and a consumer of it (`nats-<n>`), in a cluster.
    pub async fn jetstream_leaders(&self) -> (String, String) {
        let js = async_nats::jetstream::new(self.harness().await);
        let mut stream = js.get_stream(subjects::STREAM).await.expect("stream");
        let info = stream.info().await.expect("stream info");
        let leader = info.cluster.as_ref().and_then(|c| c.leader.clone()).expect("a stream leader");
        let names: Vec<String> = stream.consumer_names().try_collect().await.expect("consumers");
        let mut consumer_leader = None;
        for name in names.iter().filter(|n| n.contains("vault")).chain(names.iter()) {
            let Ok(info) = stream.consumer_info(name).await else { continue };
            if let Some(l) = info.cluster.and_then(|c| c.leader)
                && l != leader
            {
                consumer_leader = Some(l);
                break;
            }
        }
        let node = |name: &str| {
            let index = self.nats.iter().position(|n| n.node_name() == Some(name)).expect("a node of ours");
            format!("nats-{}", index + 1)
        };
        let consumer = consumer_leader.map(|l| node(&l)).unwrap_or_else(|| {
            println!("  every consumer is led by the stream's leader: killing it kills both");
            node(&leader)
        });
        (node(&leader), consumer)
    }

    /// The harness's connection to a node that runs.
    async fn harness(&self) -> async_nats::Client {
        let node = self.nats.iter().find(|n| n.pid().is_some()).expect("a NATS node running");
        node.connect_harness().await
    }

    /// A bus on the harness's connection (it may publish anything, as the tests' own user).
    pub async fn harness_bus(&self) -> Bus {
        Bus::attach(self.harness().await)
    }

    /// `gateway-1`'s URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway_urls[0])
    }

    /// A view (the SDK, in this process) with its own NATS identity, listening for wipes.
    pub async fn view(&mut self, view_id: &str) -> View {
        for node in &mut self.nats {
            node.add_view(view_id);
        }
        let identity = Identity::view(view_id).expect("view id");
        let mut access = self.nats[0].access();
        access.url = self.nats_url.clone();
        let client = access.connect(&identity, "custodian-chaos-view").await.expect("NATS as the view");
        let bus = Bus::attach(client);
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
        // Retried: the pool's connections may have died with a crashed PostgreSQL.
        let rows = eventually("the person's assertions", Duration::from_secs(30), || async {
            assertion::Entity::find().filter(assertion::Column::Subject.eq(subject)).all(self.store.db()).await.ok()
        })
        .await;
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
            gateway_urls: self.gateway_urls.clone(),
            ops_token: self.ops_token.clone(),
            http: self.http.clone(),
        }
    }

    /// `consent.ended` events on the stream.
    pub async fn consent_ended_count(&self) -> u64 {
        let client = self.harness().await;
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
    /// Asked until clean, for up to 30 s: a NATS node killed in the last round can leave the
    /// leases' bucket electing its leader, and the consent ledger unled meanwhile (4–9 s).
    pub async fn status_check(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = custodian(&self.config).args(["status", "--check"]).output().expect("custodian runs");
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "custodian status --check still failing after 30 s:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// `custodian audit verify --stream`: the chain unbroken, every event on the stream in it.
    pub fn audit_verify(&self) {
        self.once(&["audit", "verify", "--stream"]);
    }

    /// An ops or responder request to whichever gateway answers.
    pub async fn machine(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        self.machine_found(method.clone(), path, token, body)
            .await
            .unwrap_or_else(|| panic!("{method} {path}: 404 Not Found"))
    }

    /// [`Cluster::machine`], with `None` for a 404: what was accepted but is not applied yet
    /// (an incident its service has not registered while a NATS node's election runs).
    pub async fn machine_found(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> Option<serde_json::Value> {
        for attempt in 0.. {
            let url = format!("{}{path}", self.gateway_urls[attempt % 2]);
            let mut request = self.http.request(method.clone(), url).bearer_auth(token);
            if let Some(body) = &body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => return Some(response.json().await.expect("json")),
                Ok(response) if response.status() == reqwest::StatusCode::NOT_FOUND => return None,
                Ok(response) if attempt < 40 && response.status().is_server_error() => {}
                Ok(response) => {
                    panic!("{method} {path}: {} {}", response.status(), response.text().await.unwrap_or_default())
                }
                Err(_) if attempt < 40 => {}
                Err(e) => panic!("{method} {path}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        unreachable!()
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
        if std::thread::panicking() || std::env::var_os("CHAOS_KEEP_LOGS").is_some() {
            // Keep the processes' logs for whoever reads the failure (or asked for them).
            let kept = std::env::temp_dir().join(format!("custodian-chaos-logs-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&kept);
            for (name, _) in PROCESSES {
                let _ = std::fs::copy(self.dir.path().join(format!("{name}.log")), kept.join(format!("{name}.log")));
            }
            // The configuration holds only this run's throwaway keys and tokens.
            let _ = std::fs::copy(&self.config, kept.join("custodian.toml"));
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

    /// The revocation's receipt, from either gateway in turn (one of them may be the process
    /// just killed).
    async fn receipt(&self, revocation_id: &str, asked: &std::sync::atomic::AtomicUsize) -> Option<serde_json::Value> {
        let gateway = &self.gateway_urls[asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2];
        let response = self
            .http
            .get(format!("{gateway}/v1/revocations/{revocation_id}"))
            .bearer_auth(&self.ops_token)
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// Waits until the receipt says done (every token settled and every wipe acked, once the
    /// stream has delivered the revocation's event); how long after `since`.
    pub async fn until_done(&self, revocation_id: &str, since: Instant) -> Duration {
        let asked = std::sync::atomic::AtomicUsize::new(0);
        eventually("a receipt to be done", Duration::from_secs(90), || async {
            let receipt = self.receipt(revocation_id, &asked).await?;
            (receipt["state"] == "done").then_some(())
        })
        .await;
        since.elapsed()
    }

    /// Waits until the vault has every view's ack for `sessions` (those the views had opened
    /// for the person when the revocation was accepted), and no wipe on the receipt is still
    /// waiting for one; how long after `since`.
    pub async fn until_views_acked(&self, revocation_id: &str, sessions: &[String], since: Instant) -> Duration {
        let asked = std::sync::atomic::AtomicUsize::new(0);
        eventually("every view's ack on the receipt", Duration::from_secs(90), || async {
            let receipt = self.receipt(revocation_id, &asked).await?;
            let views = receipt["views"].as_array()?;
            if views.iter().any(|v| v["state"] == "pending") {
                return None;
            }
            let acked: std::collections::HashSet<&str> = views
                .iter()
                .flat_map(|v| v["session_ids"].as_array().into_iter().flatten())
                .filter_map(|s| s.as_str())
                .collect();
            sessions.iter().all(|s| acked.contains(s.as_str())).then_some(())
        })
        .await;
        since.elapsed()
    }
}
