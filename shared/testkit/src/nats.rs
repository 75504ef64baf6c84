use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use custodian_bus::NatsAccess;
use custodian_bus::trust::{self, Identity};

/// A nats-server with JetStream on 127.0.0.1, its store in a temp dir. Killed on drop.
///
/// Started as deployments run it: TLS with client certificates (mTLS), and the
/// `authorization` block rendered from Custodian's permission table, with an nkey for every
/// identity (views are added with [`NatsServer::add_view`], which reloads the server) plus
/// the tests' own `harness` user, which may do anything (it inspects and provisions).
/// Nobody connects without credentials.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    /// Every identity's seed (`<name>.nk`) and the rendered configuration; shared by the
    /// nodes of a cluster, which must know the same users.
    config_dir: std::sync::Arc<tempfile::TempDir>,
    /// The node's name and cluster block, in a cluster ([`NatsServer::start_cluster`]).
    node: Option<ClusterNode>,
    secured: bool,
    views: Vec<String>,
    /// Configuration reloads the server has reported in its log.
    reloads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// More configuration, after the rendered blocks (e.g. `jetstream { sync_interval: always }`).
    extra_config: String,
}

#[derive(Debug, Clone)]
struct ClusterNode {
    name: String,
    /// The `cluster { … }` block: this node's route port and its peers'.
    block: String,
}

/// The test process's throwaway CAs: the one every test server trusts and one it does not.
#[derive(Debug, Clone)]
pub struct TestCertificates {
    /// `ca.pem`, `server.pem`/`.key`, `client.pem`/`.key`.
    pub dir: PathBuf,
    /// The same files from a CA no test server trusts.
    pub foreign_dir: PathBuf,
}

impl TestCertificates {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

static CERTIFICATES: OnceLock<TestCertificates> = OnceLock::new();

/// Made once per test process by `scripts/tls.sh`, removed when the process ends.
pub fn test_certificates() -> &'static TestCertificates {
    CERTIFICATES.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("custodian-nats-tls-{}", std::process::id()));
        let script = crate::repo_root().join("scripts/tls.sh");
        for (dir, name) in [(root.join("trusted"), "Custodian test NATS CA"), (root.join("foreign"), "Another CA")] {
            let status = Command::new("bash").arg(&script).arg(&dir).arg(name).status().expect("bash");
            assert!(status.success(), "scripts/tls.sh failed (is openssl installed?)");
        }
        // Removed once this process is gone, however it ends.
        let _watchdog = crate::spawn_with_watchdog("sleep 1000000", &format!("rm -rf {}", root.display()), None);
        TestCertificates { dir: root.join("trusted"), foreign_dir: root.join("foreign") }
    })
}

/// `CUSTODIAN_NATS_SERVER`, else the project's `.tools/venv/bin/nats-server`, else PATH.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CUSTODIAN_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let local = crate::repo_root().join(".tools/venv/bin/nats-server");
    if local.exists() { local } else { PathBuf::from("nats-server") }
}

/// The tests' own user: the test itself, inspecting the stream and acting as what it plays.
pub const HARNESS: &str = "harness";

impl NatsServer {
    /// TLS, client certificates and per-identity permissions (see the type's docs).
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// Plain TCP, no authorization: a raw baseline for benchmarks only.
    pub fn start_plain() -> Self {
        Self::start_with(false)
    }

    /// [`NatsServer::start`] or [`NatsServer::start_plain`] with more configuration
    /// (benchmarks: `jetstream { sync_interval: always }`).
    pub fn start_configured(secured: bool, extra_config: &str) -> Self {
        Self::start_inner(secured, extra_config.to_owned())
    }

    fn start_with(secured: bool) -> Self {
        Self::start_inner(secured, String::new())
    }

    /// `nodes` secured servers clustered by routes on 127.0.0.1, JetStream on each (a stream
    /// created with 3 replicas lives on three of them), with the same users and seeds. Each
    /// node reports itself ready once it accepts clients; the JetStream meta leader is elected
    /// a moment later (see [`NatsServer::cluster_url`] for the clients' list).
    pub fn start_cluster(nodes: usize, extra_config: &str) -> Vec<Self> {
        let config_dir = std::sync::Arc::new(tempfile::tempdir().expect("temp dir for the servers' configuration"));
        let route_ports: Vec<u16> = (0..nodes).map(|_| crate::free_port()).collect();
        (0..nodes)
            .map(|i| {
                let routes: Vec<String> = route_ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, port)| format!("\"nats-route://127.0.0.1:{port}\""))
                    .collect();
                let node = ClusterNode {
                    name: format!("n{}", i + 1),
                    block: format!(
                        "server_name: n{}\ncluster {{\n  name: custodian-test\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                        i + 1,
                        route_ports[i],
                        routes.join(", ")
                    ),
                };
                Self::start_node(true, extra_config.to_owned(), config_dir.clone(), Some(node))
            })
            .collect()
    }

    /// The clients' server list of a cluster: every node's URL, comma-separated.
    pub fn cluster_url(nodes: &[NatsServer]) -> String {
        nodes.iter().map(NatsServer::url).collect::<Vec<_>>().join(",")
    }

    /// The node's name in its cluster (`n1`, `n2`, …), as JetStream names stream leaders.
    pub fn node_name(&self) -> Option<&str> {
        self.node.as_ref().map(|n| n.name.as_str())
    }

    fn start_inner(secured: bool, extra_config: String) -> Self {
        let config_dir = std::sync::Arc::new(tempfile::tempdir().expect("temp dir for the server's configuration"));
        Self::start_node(secured, extra_config, config_dir, None)
    }

    fn start_node(
        secured: bool,
        extra_config: String,
        config_dir: std::sync::Arc<tempfile::TempDir>,
        node: Option<ClusterNode>,
    ) -> Self {
        let store = tempfile::tempdir().expect("temp dir for JetStream");
        let mut server = Self {
            child: None,
            port: 0,
            store,
            config_dir,
            node,
            secured,
            views: Vec::new(),
            reloads: Default::default(),
            extra_config,
        };
        if secured {
            for identity in Identity::fixed() {
                server.seed(&identity.name());
            }
            server.seed(HARNESS);
            server.write_config();
        } else if !server.extra_config.is_empty() {
            std::fs::write(server.config_file(), &server.extra_config).expect("nats-server.conf");
        }
        server.spawn(None);
        server
    }

    fn seed(&self, name: &str) -> String {
        let path = self.config_dir.path().join(format!("{name}.nk"));
        if !path.exists() {
            let pair = nkeys::KeyPair::new_user();
            std::fs::write(&path, pair.seed().expect("seed")).expect("seed file");
            std::fs::write(self.config_dir.path().join(format!("{name}.pub")), pair.public_key()).expect("pub");
        }
        std::fs::read_to_string(self.config_dir.path().join(format!("{name}.pub"))).expect("public key")
    }

    fn config_file(&self) -> PathBuf {
        match &self.node {
            Some(node) => self.config_dir.path().join(format!("nats-server-{}.conf", node.name)),
            None => self.config_dir.path().join("nats-server.conf"),
        }
    }

    fn write_config(&self) {
        let mut identities = Identity::fixed();
        identities.extend(self.views.iter().map(|v| Identity::view(v).expect("view id")));
        let users: Vec<trust::User> = identities
            .into_iter()
            .map(|identity| trust::User { nkey: self.seed(&identity.name()), identity })
            .collect();
        let certs = test_certificates();
        let tls = trust::ServerTls {
            cert_file: certs.dir.join("server.pem").display().to_string(),
            key_file: certs.dir.join("server.key").display().to_string(),
            ca_file: certs.ca().display().to_string(),
            verify: true,
        };
        let mut rendered = trust::render_server_config(&users, Some(&tls));
        // The harness: tests only, never in a rendered configuration.
        let harness = format!(
            "    {{ nkey: \"{}\", permissions: {{ publish: \">\", subscribe: \">\" }} }}\n  ]\n}}\n",
            self.seed(HARNESS)
        );
        let end = rendered.rfind("  ]\n}").expect("users list");
        rendered.replace_range(end.., &harness);
        if let Some(node) = &self.node {
            rendered.push_str(&node.block);
        }
        rendered.push_str(&self.extra_config);
        std::fs::write(self.config_file(), rendered).expect("nats-server.conf");
    }

    fn spawn(&mut self, port: Option<u16>) {
        let port_arg = port.map_or("-1".to_owned(), |p| p.to_string());
        let mut command = Command::new(nats_server_binary());
        if self.secured || !self.extra_config.is_empty() {
            command.arg("-c").arg(self.config_file());
        }
        let mut child = command
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "--store_dir"])
            .arg(self.store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server must be installed (make test installs it)");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let reloads = self.reloads.clone();
        // Reads the log until the port shows, then keeps draining it so the pipe never fills
        // (counting the configuration reloads on the way).
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Reloaded server configuration") {
                    reloads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                // What the permission table refused: in the test's output when it fails.
                if line.contains("Violation") || line.contains("Authorization Error") {
                    eprintln!("nats-server: {line}");
                }
                if !sent
                    && let Some(rest) = line.split("Listening for client connections on ").nth(1)
                    && let Some(port) = rest.trim().rsplit(':').next().and_then(|p| p.parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                    sent = true;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        let found = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("nats-server did not report its port");
        self.port = found;
        self.child = Some(child);
        wait_for_jetstream(found);
    }

    /// `tls://127.0.0.1:<port>` (or `nats://` for a plain server).
    pub fn url(&self) -> String {
        let scheme = if self.secured { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// How a client reaches this server as any identity of it: the CA, the client
    /// certificate and the folder of seeds.
    pub fn access(&self) -> NatsAccess {
        if !self.secured {
            return NatsAccess { url: self.url(), allow_plaintext: true, ..NatsAccess::default() };
        }
        let certs = test_certificates();
        NatsAccess {
            url: self.url(),
            ca: Some(certs.ca()),
            client_cert: Some(certs.dir.join("client.pem")),
            client_key: Some(certs.dir.join("client.key")),
            credentials_dir: Some(self.config_dir.path().to_path_buf()),
            allow_plaintext: false,
        }
    }

    /// The folder holding every identity's seed (`<name>.nk`).
    pub fn credentials_dir(&self) -> &Path {
        self.config_dir.path()
    }

    /// Connects as `identity`.
    pub async fn connect(&self, identity: &Identity, name: &str) -> async_nats::Client {
        self.access().connect(identity, name).await.unwrap_or_else(|e| panic!("NATS as {identity}: {e}"))
    }

    /// Connects as the tests' harness user (anything goes: inspection, provisioning).
    pub async fn connect_harness(&self) -> async_nats::Client {
        custodian_bus::install_crypto_provider();
        let mut options = async_nats::ConnectOptions::new().name("custodian-test-harness");
        if self.secured {
            let certs = test_certificates();
            let seed = std::fs::read_to_string(self.config_dir.path().join(format!("{HARNESS}.nk"))).expect("seed");
            options = options
                .nkey(seed)
                .require_tls(true)
                .add_root_certificates(certs.ca())
                .add_client_certificate(certs.dir.join("client.pem"), certs.dir.join("client.key"));
        }
        options.connect(self.url()).await.expect("NATS as the harness")
    }

    /// Gives view `view_id` an identity and reloads the server's configuration (the
    /// connections already open stay).
    pub fn add_view(&mut self, view_id: &str) {
        if !self.secured || self.views.iter().any(|v| v == view_id) {
            return;
        }
        // A cluster's nodes share the seeds: the first node to add the view makes its seed.
        self.views.push(view_id.to_owned());
        self.write_config();
        self.reload();
    }

    /// Signals the server to reload its configuration and waits until its log says it did.
    fn reload(&self) {
        let Some(pid) = self.pid() else { return };
        let before = self.reloads.load(std::sync::atomic::Ordering::SeqCst);
        let status = Command::new("kill").args(["-HUP", &pid.to_string()]).status().expect("kill");
        assert!(status.success(), "nats-server did not take the reload signal");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.reloads.load(std::sync::atomic::Ordering::SeqCst) == before {
            assert!(Instant::now() < deadline, "nats-server did not reload its configuration");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's process id, while it runs (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL), keeping its store.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        self.spawn(Some(port));
    }
}

fn wait_for_jetstream(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not accept connections");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
