//! No token, secret, cookie or authorization code in any log line: this binary captures
//! every log line at DEBUG (all crates: ours, sqlx, hyper, reqwest, async-nats, rustls) while
//! a person signs in, views fetch and refresh tokens, and the person revokes — then searches
//! the captured text for every secret value involved. It is its own test binary so that it
//! owns the process's global log subscriber.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../e2e/support.rs"]
mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::ExposeSecret;
use support::{Stack, stored_bundles, test_vault_config, unique};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn no_secret_reaches_a_log_line_or_a_debug_print() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        // `cookie_store` is the test's own browser (Custodian never keeps a cookie jar): it
        // logs the cookies it receives, as a browser's devtools would.
        .with_env_filter(tracing_subscriber::EnvFilter::new("debug,cookie_store=off"))
        .with_writer(capture.clone())
        .with_ansi(false)
        .init();

    let mut stack = Stack::start().await;
    let (client, settings) = stack.register_platform().await;
    let platform = client.client_id.clone();
    let mut config = test_vault_config(vec![settings.clone()]);
    // Every handout renews the access token: refresh-token traffic is in the logs too.
    config.refresh_margin_secs = 24 * 3600;
    stack.start_vault(config.clone());
    let person = unique("carol");

    let (browser, cookie, code) = stack.login_through_gateway(&person).await;
    let mut secrets: Vec<(String, String)> = vec![
        ("session cookie".into(), cookie.clone()),
        ("authorization code".into(), code),
        ("client secret".into(), client.client_secret.clone()),
    ];
    for (_, bundle) in stored_bundles(&stack).await {
        secrets.push(("access token".into(), bundle.access_token.clone()));
        secrets.extend(bundle.refresh_token.clone().map(|t| ("refresh token".into(), t)));
        secrets.extend(bundle.id_token.clone().map(|t| ("ID token".into(), t)));
    }
    let view = stack.start_view(&unique("logs")).await;
    for _ in 0..2 {
        let started = view.start_session(None, &person, &platform, Duration::from_secs(10)).await.expect("token");
        let (session, token) = (started.session_id, started.token);
        secrets.push(("handed-out access token".into(), token.token.expose_secret().to_owned()));
        view.store().put(&session, "k", b"v".to_vec(), Duration::from_secs(30)).expect("put");
    }
    let handed: Vec<&String> = secrets.iter().filter(|(w, _)| w == "handed-out access token").map(|(_, v)| v).collect();
    assert_ne!(handed[0], handed[1], "each handout renewed the token (refresh traffic was exercised)");
    for (_, bundle) in stored_bundles(&stack).await {
        secrets.push(("refreshed access token".into(), bundle.access_token.clone()));
        secrets.extend(bundle.refresh_token.clone().map(|t| ("rotated refresh token".into(), t)));
    }
    let response = browser.delete(stack.url(&format!("/v1/me/consents/{platform}"))).send().await.expect("revoke");
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    custodian_testkit::eventually("the view to be wiped", Duration::from_secs(20), || async {
        (view.store().counts() == (0, 0)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Debug output of configuration and key material.
    let key = custodian_crypto::generate_key();
    let ring = custodian_crypto::KeyRingConfig {
        current: "k1".into(),
        keys: vec![custodian_crypto::KeyConfig { id: "k1".into(), secret: key.clone().into() }],
    };
    config.keyring = Some(ring.clone());
    let printed =
        format!("{config:?} {settings:?} {ring:?} {:?}", custodian_crypto::KeyRing::from_config(&ring).unwrap());
    secrets.push(("key-encryption key".into(), key));

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(logs.contains("person logged in") && logs.contains("revocation started"), "the capture works");
    assert!(logs.lines().count() > 100, "debug logs of every crate were captured ({} lines)", logs.lines().count());
    for (what, value) in &secrets {
        assert!(value.len() >= 16, "{what} is too short to search for meaningfully");
        let leak = logs.lines().find(|l| l.contains(value.as_str()));
        assert!(
            leak.is_none(),
            "the {what} appears in a log line: {}",
            leak.unwrap_or_default().replace(value.as_str(), "<SECRET>")
        );
        assert!(!printed.contains(value.as_str()), "the {what} appears in Debug output");
    }
    eprintln!("searched {} log lines for {} secret values", logs.lines().count(), secrets.len());
}
