use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A PostgreSQL cluster for this test process: `CUSTODIAN_TEST_PG_URL` (a server the
/// Makefile started, e.g. `postgres://postgres@127.0.0.1:5433`), else one started here with
/// initdb in a temp dir (as the `postgres` user when run as root; the server refuses root).
#[derive(Debug)]
pub struct PgCluster {
    /// `postgres://user@host:port` without a database name.
    base_url: String,
    /// The data directory of a cluster started here (not of one given by URL).
    data_dir: Option<std::path::PathBuf>,
}

static CLUSTER: OnceLock<PgCluster> = OnceLock::new();

impl PgCluster {
    pub fn shared() -> &'static PgCluster {
        CLUSTER.get_or_init(|| match std::env::var("CUSTODIAN_TEST_PG_URL") {
            Ok(url) => PgCluster { base_url: url.trim_end_matches('/').to_owned(), data_dir: None },
            Err(_) => Self::start_private(),
        })
    }

    fn start_private() -> PgCluster {
        let dir = std::env::temp_dir().join(format!("custodian-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("pg dir");
        let data = dir.join("data");
        let dir_s = dir.display().to_string();
        let data_s = data.display().to_string();
        let as_postgres = crate::is_root();
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres", &dir_s])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "chown of the PostgreSQL dir failed");
        }
        let initdb = format!("initdb -D {data_s} -U postgres --auth=trust --no-sync -E UTF8 >{dir_s}/initdb.log 2>&1");
        let status = if as_postgres {
            Command::new("runuser").args(["-u", "postgres", "--", "bash", "-c", &initdb]).status()
        } else {
            Command::new("bash").args(["-c", &initdb]).status()
        };
        assert!(status.map(|s| s.success()).unwrap_or(false), "initdb failed, see {dir_s}/initdb.log");
        let port = crate::free_port();
        // Durability off: these databases are thrown away (benchmarks start their own).
        // `CUSTODIAN_TEST_PG_OPTIONS` adds server options when investigating, e.g.
        // `-c shared_preload_libraries=pg_stat_statements` (the bench then prints the top
        // statements).
        let extra = std::env::var("CUSTODIAN_TEST_PG_OPTIONS").unwrap_or_default();
        let cmd = format!(
            "postgres -D {data_s} -p {port} -k {dir_s} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=400 {extra} >{dir_s}/postgres.log 2>&1"
        );
        let cleanup = format!("rm -rf {dir_s}");
        let child =
            crate::spawn_with_watchdog(&cmd, &cleanup, as_postgres.then_some("postgres")).expect("start postgres");
        std::mem::forget(child); // the watchdog outlives nothing: it ends with this process
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new("psql")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-tAc",
                    "select 1",
                ])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "PostgreSQL did not start, see {dir_s}/postgres.log");
            std::thread::sleep(Duration::from_millis(100));
        }
        PgCluster { base_url: format!("postgres://postgres@127.0.0.1:{port}"), data_dir: Some(data) }
    }

    /// The server's processes (postmaster and backends) now, for a cluster started here:
    /// benchmarks read their CPU time. Empty for a cluster given by URL.
    pub fn server_pids(&self) -> Vec<u32> {
        let postmaster = self
            .data_dir
            .as_ref()
            .and_then(|data| std::fs::read_to_string(data.join("postmaster.pid")).ok())
            .and_then(|pidfile| pidfile.lines().next()?.trim().parse::<u32>().ok());
        postmaster.map(crate::cpu::with_children).unwrap_or_default()
    }

    /// A crash of the database server, as an out-of-memory kill would do it: SIGKILL of every
    /// server process but the postmaster. The postmaster then drops every connection, resets,
    /// and replays its write-ahead log before it accepts connections again (with `fsync` on,
    /// nothing committed is lost). Returns once it answers again. Only for a cluster started
    /// here.
    pub fn crash(&self) -> Duration {
        let pids = self.server_pids();
        let (postmaster, backends) = pids.split_first().expect("crash() needs a cluster started by the tests");
        assert!(!backends.is_empty(), "the postmaster {postmaster} has no server processes");
        let started = Instant::now();
        for pid in backends {
            // Once one dies the postmaster ends the others itself: "no such process" is expected.
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(std::process::Stdio::null()).status();
        }
        // The reset is not instant: wait for it to begin, then for the server to answer.
        std::thread::sleep(Duration::from_millis(200));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.answers() {
            assert!(Instant::now() < deadline, "PostgreSQL did not recover from the crash");
            std::thread::sleep(Duration::from_millis(50));
        }
        started.elapsed()
    }

    fn answers(&self) -> bool {
        Command::new("psql")
            .args([&format!("{}/postgres", self.base_url), "-tAc", "select 1"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// The URL of database `name` on this cluster.
    pub fn url_of(&self, name: &str) -> String {
        format!("{}/{name}", self.base_url)
    }

    /// A new, empty database; returns its URL.
    pub fn fresh_database(&self) -> String {
        let name = format!("t_{}", uuid_like());
        let url = format!("{}/postgres", self.base_url);
        let out = Command::new("psql")
            .args([&url, "-v", "ON_ERROR_STOP=1", "-qc", &format!("CREATE DATABASE {name}")])
            .output()
            .expect("psql");
        assert!(out.status.success(), "CREATE DATABASE failed: {}", String::from_utf8_lossy(&out.stderr));
        self.url_of(&name)
    }
}

fn uuid_like() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..16).map(|_| char::from(b'a' + rng.random_range(0..26u8))).collect()
}

/// Which backend this test run uses: `CUSTODIAN_TEST_BACKEND` = `sqlite` (default) or
/// `postgres`. `make test` runs the suite once with each.
pub fn test_backend() -> &'static str {
    match std::env::var("CUSTODIAN_TEST_BACKEND").as_deref() {
        Ok("postgres") => "postgres",
        _ => "sqlite",
    }
}

/// A fresh, empty database for one test: a SQLite file in `dir`, or a new PostgreSQL database.
pub fn test_database_url(dir: &std::path::Path) -> String {
    match test_backend() {
        "postgres" => PgCluster::shared().fresh_database(),
        _ => format!("sqlite://{}/custodian.db", dir.display()),
    }
}
