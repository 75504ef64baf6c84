//! The SSF receiver's set-up and poll mode (OpenID Shared Signals Framework 1.0, RFC 8936):
//! at start, discover the transmitter (`/.well-known/ssf-configuration`), create (or reuse) a
//! stream delivering to us — by push to `/ssf/events` (RFC 8935) or by poll (RFC 8936) — and
//! ask for a verification event. In poll mode, poll the transmitter, handle each SET exactly as
//! a pushed one, and acknowledge (or report errors for) each `jti` in the next poll.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::AppState;

const PUSH: &str = "urn:ietf:rfc:8935";
const POLL: &str = "urn:ietf:rfc:8936";

/// `[gateway.ssf_receiver]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsfReceiverConfig {
    /// The transmitter's issuer URL (its configuration at `<issuer>/.well-known/ssf-configuration`).
    pub transmitter: String,
    /// Bearer token for the transmitter's management and poll endpoints.
    #[serde(default, skip_serializing)]
    pub bearer_token: Option<SecretString>,
    /// `push` (to `push_url`) or `poll`.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Our public `/ssf/events` URL (push mode).
    #[serde(default)]
    pub push_url: Option<String>,
    #[serde(default = "default_poll")]
    pub poll_every_secs: u64,
    /// Event types asked for.
    #[serde(default = "default_events")]
    pub events_requested: Vec<String>,
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

fn default_mode() -> String {
    "push".into()
}
fn default_poll() -> u64 {
    5
}
fn default_events() -> Vec<String> {
    [
        "https://schemas.openid.net/secevent/caep/event-type/session-revoked",
        "https://schemas.openid.net/secevent/caep/event-type/credential-change",
        "https://schemas.openid.net/secevent/caep/event-type/assurance-level-change",
        "https://schemas.openid.net/secevent/risc/event-type/credential-compromise",
        "https://schemas.openid.net/secevent/risc/event-type/account-disabled",
        "https://schemas.openid.net/secevent/risc/event-type/account-credential-change-required",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

struct Client {
    http: reqwest::Client,
    token: Option<SecretString>,
}

impl Client {
    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url).header("accept", "application/json");
        match &self.token {
            Some(t) => request.bearer_auth(t.expose_secret()),
            None => request,
        }
    }
}

async fn json_of(response: Result<reqwest::Response, reqwest::Error>) -> Result<Value, String> {
    let response = response.map_err(|e| e.to_string())?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() { Ok(body) } else { Err(format!("{status}: {body}")) }
}

/// Sets the stream up and, in poll mode, polls until `shutdown`. Errors are logged and retried.
pub async fn run(state: Arc<AppState>, config: SsfReceiverConfig, shutdown: CancellationToken) {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(15));
    if let Some(ca) = &config.ca_file
        && let Ok(pem) = std::fs::read(ca)
        && let Ok(cert) = reqwest::Certificate::from_pem(&pem)
    {
        builder = builder.tls_certs_merge([cert]);
    }
    let Ok(http) = builder.build() else { return };
    let client = Client { http, token: config.bearer_token.clone() };
    let mut attempt = 0u32;
    let (stream, poll_url) = loop {
        match set_up(&client, &config).await {
            Ok(found) => break found,
            Err(e) => {
                attempt += 1;
                tracing::warn!(transmitter = %config.transmitter, error = %e, "SSF stream set-up failed; will retry");
                let wait = Duration::from_millis(500u64 << attempt.min(6));
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    };
    tracing::info!(stream_id = %stream, mode = %config.mode, "SSF stream ready");
    let Some(poll_url) = poll_url else { return };
    let mut acks: Vec<String> = Vec::new();
    let mut errors: BTreeMap<String, Value> = BTreeMap::new();
    loop {
        let body = json!({"maxEvents": 100, "returnImmediately": true, "ack": acks, "setErrs": errors});
        match json_of(client.request(reqwest::Method::POST, &poll_url).json(&body).send().await).await {
            Ok(answer) => {
                acks.clear();
                errors.clear();
                let sets = answer["sets"].as_object().cloned().unwrap_or_default();
                for (jti, set) in sets {
                    let Some(token) = set.as_str() else { continue };
                    match crate::routes::signals::receive(&state, token).await {
                        Ok(()) => acks.push(jti),
                        Err(e) => {
                            errors.insert(jti, json!({"err": e.code(), "description": e.description()}));
                        }
                    }
                }
                if answer["moreAvailable"].as_bool() == Some(true) {
                    continue;
                }
            }
            Err(e) => tracing::warn!(error = %e, "SSF poll failed; will retry"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(config.poll_every_secs.max(1))) => {}
        }
    }
}

/// Discovery, stream creation (or reuse), verification request. Returns the stream id and,
/// in poll mode, the poll URL.
async fn set_up(client: &Client, config: &SsfReceiverConfig) -> Result<(String, Option<String>), String> {
    let discovery_url = format!("{}/.well-known/ssf-configuration", config.transmitter.trim_end_matches('/'));
    let metadata = json_of(client.request(reqwest::Method::GET, &discovery_url).send().await).await?;
    let configuration = metadata["configuration_endpoint"].as_str().ok_or("no configuration_endpoint")?;
    let (method, endpoint) = match config.mode.as_str() {
        "poll" => (POLL, None),
        _ => (PUSH, Some(config.push_url.clone().ok_or("push mode needs ssf_receiver.push_url")?)),
    };
    let mut delivery = json!({"method": method});
    if let Some(url) = &endpoint {
        delivery["endpoint_url"] = json!(url);
    }
    let created = json_of(
        client
            .request(reqwest::Method::POST, configuration)
            .json(&json!({"delivery": delivery, "events_requested": config.events_requested}))
            .send()
            .await,
    )
    .await?;
    let stream_id = created["stream_id"].as_str().ok_or("the transmitter returned no stream_id")?.to_owned();
    if let Some(verification) = metadata["verification_endpoint"].as_str() {
        json_of(
            client
                .request(reqwest::Method::POST, verification)
                .json(&json!({"stream_id": stream_id, "state": uuid::Uuid::new_v4().to_string()}))
                .send()
                .await,
        )
        .await
        .map(|_| ())
        .or_else(|e| if e.starts_with("204") { Ok(()) } else { Err(e) })?;
    }
    let poll_url = if method == POLL {
        Some(
            created["delivery"]["endpoint_url"].as_str().ok_or("the transmitter gave no poll endpoint_url")?.to_owned(),
        )
    } else {
        None
    };
    Ok((stream_id, poll_url))
}
