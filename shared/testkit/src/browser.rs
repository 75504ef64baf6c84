//! A real browser for tests: Debian's Chromium, headless, driven through ChromeDriver
//! (WebDriver) with fantoccini. One ChromeDriver per test process; each test opens its own
//! browser session (a fresh profile, so no cookie crosses tests).
//!
//! Also: axe-core (npm, `tests/browser`) injected into a page for accessibility checks, and
//! screenshots written to `target/screenshots/`, where CI picks them up.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

pub use fantoccini::elements::Element;
pub use fantoccini::error::CmdError;
pub use fantoccini::{Client, Locator};
use serde_json::json;

struct Driver {
    url: String,
}

static DRIVER: OnceLock<Driver> = OnceLock::new();

fn driver() -> &'static Driver {
    DRIVER.get_or_init(|| {
        let port = crate::free_port();
        let cmd = format!("chromedriver --port={port} --allowed-ips=127.0.0.1 --log-level=WARNING");
        let child = crate::spawn_with_watchdog(&cmd, "true", None)
            .expect("chromedriver must be installed (make test installs Debian's chromium-driver)");
        // The watchdog ends it with the test process.
        std::mem::forget(child);
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "chromedriver did not start on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { url }
    })
}

/// A headless Chromium session whose browser asks for `accept_language` (e.g. `"nl-BE,nl"`).
/// It accepts the tests' throwaway certificates.
pub async fn browser(accept_language: &str) -> Client {
    let caps = json!({
        "browserName": "chrome",
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            // As root Chromium needs --no-sandbox; the rest keeps it off a closed network.
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1000",
                format!("--lang={}", accept_language.split(',').next().unwrap_or("en")),
            ],
            "prefs": {"intl.accept_languages": accept_language},
        },
    });
    let serde_json::Value::Object(caps) = caps else { unreachable!("an object") };
    let mut builder = fantoccini::ClientBuilder::rustls().expect("rustls for WebDriver");
    builder.capabilities(caps);
    // Chromium may take a while on a loaded machine: a few tries.
    let mut last = None;
    for _ in 0..3 {
        match builder.connect(&driver().url).await {
            Ok(client) => return client,
            Err(e) => {
                last = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    panic!("no browser session: {}", last.unwrap_or_default())
}

/// One accessibility finding of axe-core.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct AxeViolation {
    pub id: String,
    pub impact: Option<String>,
    pub help: String,
    pub nodes: Vec<String>,
}

/// Runs axe-core (WCAG 2.0–2.2 A and AA rules, and best practices) on the page as it stands.
pub async fn axe(client: &Client) -> Vec<AxeViolation> {
    let path = crate::repo_root().join("tests/browser/node_modules/axe-core/axe.min.js");
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (make test installs axe-core)", path.display()));
    // WebDriver's scripts run outside the page's CSP: the page itself allows none inline.
    client.execute(&source, Vec::new()).await.expect("axe-core injected");
    let run = r"
        const done = arguments[arguments.length - 1];
        axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa', 'best-practice'] } })
          .then(r => done(r.violations.map(v => ({ id: v.id, impact: v.impact, help: v.help,
              nodes: v.nodes.map(n => n.target.join(' ')) }))))
          .catch(e => done([{ id: 'axe-error', impact: 'critical', help: String(e), nodes: [] }]));
    ";
    let found = client.execute_async(run, Vec::new()).await.expect("axe-core ran");
    serde_json::from_value(found).expect("axe-core's findings")
}

/// The serious and critical findings only (what a test refuses).
pub async fn axe_serious(client: &Client) -> Vec<AxeViolation> {
    axe(client).await.into_iter().filter(|v| matches!(v.impact.as_deref(), Some("serious" | "critical"))).collect()
}

/// Where screenshots go: `target/screenshots/` (CI keeps the folder).
pub fn screenshot_dir() -> PathBuf {
    let dir = crate::repo_root().join("target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

/// Saves the page as `target/screenshots/<name>.png`.
pub async fn screenshot(client: &Client, name: &str) -> PathBuf {
    let png = client.screenshot().await.expect("screenshot");
    let path = screenshot_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).expect("screenshot written");
    path
}

/// Waits until the page's text contains `text` (live updates of the page included).
pub async fn wait_for_text(client: &Client, text: &str, timeout: Duration) -> String {
    poll_text(client, text, timeout, false).await
}

/// Reloads the page until its text contains `text` (for a page that does not update itself,
/// showing state another service is still applying).
pub async fn reload_until_text(client: &Client, text: &str, timeout: Duration) -> String {
    poll_text(client, text, timeout, true).await
}

async fn poll_text(client: &Client, text: &str, timeout: Duration, reload: bool) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let body = match client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if body.contains(text) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "the page never showed {text:?}; it shows:\n{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        if reload {
            client.refresh().await.expect("reload");
        }
    }
}
