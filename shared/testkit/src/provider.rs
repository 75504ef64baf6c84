use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The confidential client registered in the test provider for Custodian's tests.
pub const TEST_CLIENT_ID: &str = "custodian-test";
pub const TEST_CLIENT_SECRET: &str = "custodian-test-secret-3f9a7c";
/// Never fetched: tests read the code off the redirect.
pub const TEST_REDIRECT_URI: &str = "https://127.0.0.1/callback";

/// The OpenID provider (oidc-provider on Node, TLS with a throwaway CA), one per test process.
#[derive(Debug, Clone)]
pub struct Provider {
    pub issuer: String,
    pub ca_file: PathBuf,
    pub initial_access_token: String,
    /// The OP's RSA signing key (PEM, kid `custodian-test-op-rs256`): tests sign tokens as the OP.
    pub signing_key_file: PathBuf,
}

/// The `kid` of the test OP's signing key.
pub const TEST_OP_KID: &str = "custodian-test-op-rs256";

/// What the token endpoint answered.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TokenSet {
    pub access_token: String,
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
    pub expires_in: Option<u64>,
}

static PROVIDER: OnceLock<Provider> = OnceLock::new();

#[derive(serde::Deserialize)]
struct Ready {
    issuer: String,
    ca_file: PathBuf,
    initial_access_token: String,
    signing_key_file: PathBuf,
}

impl Provider {
    pub fn shared() -> &'static Provider {
        PROVIDER.get_or_init(Self::start)
    }

    fn start() -> Provider {
        let dir = std::env::temp_dir().join(format!("custodian-op-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("provider dir");
        let clients = serde_json::json!([{
            "client_id": TEST_CLIENT_ID,
            "client_secret": TEST_CLIENT_SECRET,
            "redirect_uris": [TEST_REDIRECT_URI],
            "grant_types": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:token-exchange"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
        }]);
        let clients_file = dir.join("clients.json");
        std::fs::write(&clients_file, clients.to_string()).expect("clients file");
        let script = crate::repo_root().join("tests/provider/provider.mjs");
        let cmd = format!("node {} --dir {} --clients {}", script.display(), dir.display(), clients_file.display());
        // The OP's own errors (renderError and the `*.error` events print them), for
        // debugging a failing test: the log outlives the run only if it holds an error (start-up
        // warnings and `*.success` events alone are not worth keeping).
        let log = std::env::temp_dir().join(format!("custodian-op-{}.log", std::process::id()));
        let cleanup = format!(
            "rm -rf {dir}; grep -qi error {log} 2>/dev/null || rm -f {log}",
            dir = dir.display(),
            log = log.display()
        );
        let mut child = crate::spawn_with_watchdog(&cmd, &cleanup, None).expect("node must be installed");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || match std::fs::File::create(&log) {
            Ok(mut file) => {
                let _ = std::io::copy(&mut stderr, &mut file);
            }
            Err(_) => {
                let mut sink = Vec::new();
                let _ = stderr.read_to_end(&mut sink);
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            if let Some(first) = lines.next() {
                let _ = tx.send(first);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the OpenID provider did not start (did `make test` run npm install in tests/provider?)");
        std::mem::forget(child);
        let ready: Ready = serde_json::from_str(&line).expect("provider's ready line");
        Provider {
            issuer: ready.issuer,
            ca_file: ready.ca_file,
            initial_access_token: ready.initial_access_token,
            signing_key_file: ready.signing_key_file,
        }
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.ca_file).expect("provider CA")
    }

    /// An HTTP client that trusts the provider's CA, keeps cookies and does not follow redirects.
    pub fn browser(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&self.ca_pem()).expect("CA PEM");
        // The tests' own CA too: a gateway under test may serve HTTPS with its certificate.
        let ours = std::fs::read(crate::test_certificates().ca()).expect("the tests' CA");
        let ours = reqwest::Certificate::from_pem(&ours).expect("CA PEM");
        reqwest::Client::builder()
            .tls_certs_only([ca, ours])
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("http client")
    }

    /// Logs `username` in through the authorization code flow with PKCE, driving the
    /// provider's real login and consent pages, and redeems the code for tokens.
    pub async fn login(&self, username: &str) -> TokenSet {
        self.login_with(username, "openid offline_access", &[]).await
    }

    pub async fn login_with(&self, username: &str, scope: &str, extra: &[(&str, &str)]) -> TokenSet {
        let browser = self.browser();
        let verifier = random_token();
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let state = random_token();
        let nonce = random_token();
        let mut params = vec![
            ("client_id", TEST_CLIENT_ID),
            ("response_type", "code"),
            ("scope", scope),
            ("prompt", "consent"),
            ("redirect_uri", TEST_REDIRECT_URI),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("state", &state),
            ("nonce", &nonce),
        ];
        params.extend_from_slice(extra);
        let auth = reqwest::Url::parse_with_params(&format!("{}/auth", self.issuer), &params).expect("auth URL");
        let first = redirect_of(browser.get(auth).send().await.expect("GET /auth")).await;
        let location = self.drive_interactions(&browser, first, username, TEST_REDIRECT_URI).await;
        let url = reqwest::Url::parse(&location).expect("callback URL");
        let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(query.get("state"), Some(&state), "state must round-trip");
        let code = query.get("code").cloned().unwrap_or_else(|| panic!("no code in {location}"));
        let response = browser
            .post(format!("{}/token", self.issuer))
            .basic_auth(TEST_CLIENT_ID, Some(TEST_CLIENT_SECRET))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", TEST_REDIRECT_URI),
                ("code_verifier", &verifier),
            ])
            .send()
            .await
            .expect("token request");
        assert!(
            response.status().is_success(),
            "token endpoint refused: {}",
            response.text().await.unwrap_or_default()
        );
        response.json().await.expect("token response")
    }
}

impl Provider {
    /// Follows the OP's redirects from `location`, filling its login form as `username`
    /// and its consent form, until a redirect leaves for `stop_prefix` (the client's
    /// redirect URI); returns that location (with `code` and `state`).
    pub async fn drive_interactions(
        &self,
        browser: &reqwest::Client,
        mut location: String,
        username: &str,
        stop_prefix: &str,
    ) -> String {
        for _ in 0..20 {
            if location.starts_with(stop_prefix) {
                return location;
            }
            let url = absolute(&self.issuer, &location);
            location = if url.contains("/interaction/") {
                let page = browser.get(&url).send().await.expect("interaction page").text().await.unwrap_or_default();
                let form: &[(&str, &str)] = if page.contains("name=\"login\"") {
                    &[("prompt", "login"), ("login", username), ("password", "any")]
                } else {
                    &[("prompt", "consent")]
                };
                redirect_of(browser.post(&url).form(form).send().await.expect("submit interaction")).await
            } else {
                redirect_of(browser.get(&url).send().await.expect("follow redirect")).await
            };
        }
        panic!("the OP never redirected to {stop_prefix}; last location {location}")
    }

    /// Registers a new confidential client (RFC 7591, with the initial access token), e.g.
    /// one whose redirect URI is a test's own gateway.
    pub async fn register_client(&self, redirect_uris: &[&str]) -> RegisteredClient {
        self.register_client_with(redirect_uris, serde_json::json!({})).await
    }

    /// As [`Provider::register_client`], with extra client metadata (e.g. `backchannel_logout_uri`).
    pub async fn register_client_with(&self, redirect_uris: &[&str], extra: serde_json::Value) -> RegisteredClient {
        let mut metadata = serde_json::json!({
                "redirect_uris": redirect_uris,
                "grant_types": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:token-exchange"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_basic",
                "post_logout_redirect_uris": redirect_uris,
        });
        if let (Some(m), Some(e)) = (metadata.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        let response = self
            .browser()
            .post(format!("{}/reg", self.issuer))
            .bearer_auth(&self.initial_access_token)
            .json(&metadata)
            .send()
            .await
            .expect("registration request");
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "client registration refused ({status}): {body}");
        serde_json::from_str(&body).expect("registration response")
    }

    /// RFC 7662 at the OP, as `client_id` — the OP's own word on whether a token still works.
    pub async fn introspect(&self, client_id: &str, client_secret: &str, token: &str) -> serde_json::Value {
        self.browser()
            .post(format!("{}/token/introspection", self.issuer))
            .basic_auth(client_id, Some(client_secret))
            .form(&[("token", token)])
            .send()
            .await
            .expect("introspection request")
            .json()
            .await
            .expect("introspection response")
    }
}

/// What the registration endpoint answered (RFC 7591 / 7592).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct RegisteredClient {
    pub client_id: String,
    pub client_secret: String,
    pub registration_access_token: Option<String>,
    pub registration_client_uri: Option<String>,
}

async fn redirect_of(response: reqwest::Response) -> String {
    let status = response.status();
    match response.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()) {
        Some(location) if status.is_redirection() => location.to_owned(),
        _ => panic!("expected a redirect, got {status}: {}", response.text().await.unwrap_or_default()),
    }
}

fn absolute(issuer: &str, location: &str) -> String {
    if location.starts_with("https://") { location.to_owned() } else { format!("{issuer}{location}") }
}

fn random_token() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
