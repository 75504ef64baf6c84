//! Real servers for tests, on loopback with free ports, in temporary directories:
//! nats-server with JetStream (one per test, killed on drop), PostgreSQL (one cluster per
//! test process, a fresh database per test) and the OpenID provider (one per test process).
//!
//! Process-wide servers are started under a small shell watchdog that stops them when the
//! test process ends, however it ends.

#![allow(clippy::expect_used)]

pub mod browser;
pub mod cpu;
mod nats;
pub mod otlp;
mod postgres;
mod provider;
mod smtp;

pub use nats::{HARNESS, NatsServer, TestCertificates, test_certificates};
pub use postgres::{PgCluster, test_backend, test_database_url};
pub use provider::{
    Provider, RegisteredClient, TEST_CLIENT_ID, TEST_CLIENT_SECRET, TEST_OP_KID, TEST_REDIRECT_URI, TokenSet,
};
pub use smtp::SmtpServer;

use std::path::PathBuf;
use std::time::Duration;

/// The repository root (for `tests/provider`, `.tools/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_explained(what, timeout, || {
        let checked = check();
        async move { checked.await.ok_or_else(String::new) }
    })
    .await
}

/// Like [`eventually`], for a wait whose failure needs the state it last saw to be understood:
/// `check` returns what it saw when not yet satisfied, and the panic quotes the latest.
pub async fn eventually_explained<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = match check().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            let seen = if seen.is_empty() { String::new() } else { format!("; last seen: {seen}") };
            panic!("timed out after {timeout:?} waiting for: {what}{seen}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs `cmd` in the background under a watchdog that kills it when this process exits
/// (checked through /proc: `kill -0` fails across users when the server runs as postgres).
/// Returns the watchdog child (its stdout/stderr are the command's).
/// `cmd` must be one simple command (so that `$!` is the server itself); `cleanup` runs
/// after it has stopped.
fn spawn_with_watchdog(cmd: &str, cleanup: &str, run_as: Option<&str>) -> std::io::Result<std::process::Child> {
    let me = std::process::id();
    let script = format!(
        "{cmd} & child=$!; trap 'kill $child 2>/dev/null' TERM INT; \
         while [ -d /proc/{me} ] && kill -0 $child 2>/dev/null; do sleep 0.5; done; \
         kill $child 2>/dev/null; wait $child; {cleanup}"
    );
    let mut command = match run_as {
        Some(user) if is_root() => {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", user, "--", "bash", "-c", &script]);
            c
        }
        _ => {
            let mut c = std::process::Command::new("bash");
            c.args(["-c", &script]);
            c
        }
    };
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false)
}

/// A free TCP port on 127.0.0.1 (closed again; a tiny race is acceptable in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port")
}
