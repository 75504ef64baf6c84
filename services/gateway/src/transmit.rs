//! The SSF transmitter side: when Custodian ends a consent or a session, subscribed receivers
//! get a CAEP `session-revoked` Security Event Token (RFC 8417), pushed per RFC 8935 and signed
//! with Custodian's own Ed25519 key (public at `/.well-known/jwks.json`). Delivery rides a
//! durable JetStream consumer: a receiver that is down gets the SET again with backoff; a
//! receiver's 400 is final (logged, not retried). Receivers de-duplicate on `jti`.

use std::time::Duration;

use base64::Engine as _;
use custodian_bus::{BatchHandler, Delivery, HandlerError};
use custodian_events::LifecycleEvent;
use ed25519_dalek::{Signer as _, SigningKey};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";

/// `[gateway.ssf_transmitter]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransmitterConfig {
    /// Our `iss` in the SETs (the gateway's public URL).
    pub issuer: String,
    /// Ed25519 seed, 32 bytes base64 (`custodian audit keygen` makes one the same way).
    #[serde(skip_serializing)]
    pub signing_key: SecretString,
    #[serde(default = "default_kid")]
    pub key_id: String,
    #[serde(default)]
    pub receivers: Vec<Receiver>,
}

fn default_kid() -> String {
    "custodian-ssf-1".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receiver {
    /// The receiver's RFC 8935 push endpoint.
    pub url: String,
    /// The `aud` of SETs for it.
    pub audience: String,
    /// Sent as `Authorization: Bearer` when set.
    #[serde(default, skip_serializing)]
    pub bearer_token: Option<SecretString>,
}

#[derive(Clone)]
pub struct Transmitter {
    config: TransmitterConfig,
    key: SigningKey,
    http: reqwest::Client,
}

impl std::fmt::Debug for Transmitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transmitter").field("issuer", &self.config.issuer).field("key_id", &self.config.key_id).finish()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Transmitter {
    pub fn new(config: TransmitterConfig) -> Result<Self, crate::GatewayError> {
        let seed = base64::engine::general_purpose::STANDARD
            .decode(config.signing_key.expose_secret().trim())
            .map_err(|_| crate::GatewayError::Config("ssf_transmitter.signing_key is not base64".into()))?;
        let seed: [u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| crate::GatewayError::Config("ssf_transmitter.signing_key must be 32 bytes".into()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| crate::GatewayError::Config(e.to_string()))?;
        Ok(Self { key: SigningKey::from_bytes(&seed), config, http })
    }

    /// The public key set receivers verify our SETs with.
    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "x": b64(self.key.verifying_key().as_bytes()),
            "kid": self.config.key_id, "alg": "EdDSA", "use": "sig",
        }]})
    }

    fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "EdDSA", "typ": "secevent+jwt", "kid": self.config.key_id});
        let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", b64(&signature.to_bytes()))
    }

    /// The SET for one receiver.
    fn set_for(
        &self,
        receiver: &Receiver,
        event_id: &str,
        issuer: &str,
        subject: &str,
        at: i64,
        reason: &str,
    ) -> String {
        let claims = json!({
            "iss": self.config.issuer,
            "aud": receiver.audience,
            "iat": at,
            "jti": custodian_events::derived_event_id("ssf.set", &format!("{event_id}:{}", receiver.url)),
            "sub_id": {"format": "iss_sub", "iss": issuer, "sub": subject},
            "events": {SESSION_REVOKED: {
                "event_timestamp": at,
                "initiating_entity": "policy",
                "reason_admin": {"en": reason},
            }},
        });
        self.sign(&claims)
    }
}

#[derive(Debug, Clone)]
pub struct TransmitHandler {
    pub transmitter: Transmitter,
}

impl BatchHandler for TransmitHandler {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Result<(), HandlerError>> {
        let mut results = Vec::with_capacity(batch.len());
        for delivery in batch {
            let (issuer, subject, reason) = match &delivery.event {
                LifecycleEvent::ConsentEnded(e) => (
                    e.data.issuer.clone(),
                    e.data.subject.clone(),
                    format!("consent ended ({:?})", e.data.reason).to_lowercase(),
                ),
                LifecycleEvent::SessionRevoke(e) => (
                    e.data.issuer.clone(),
                    e.data.subject.clone(),
                    format!("session ended ({:?})", e.data.cause).to_lowercase(),
                ),
                _ => {
                    results.push(Ok(()));
                    continue;
                }
            };
            let at = delivery.event.time().timestamp();
            let mut outcome = Ok(());
            for receiver in &self.transmitter.config.receivers {
                let set = self.transmitter.set_for(receiver, delivery.event.id(), &issuer, &subject, at, &reason);
                let mut request = self
                    .transmitter
                    .http
                    .post(&receiver.url)
                    .header("content-type", "application/secevent+jwt")
                    .header("accept", "application/json")
                    .body(set);
                if let Some(token) = &receiver.bearer_token {
                    request = request.bearer_auth(token.expose_secret());
                }
                match request.send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) if r.status() == reqwest::StatusCode::BAD_REQUEST => {
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        tracing::warn!(receiver = %receiver.url, err = %body["err"], "SET refused by the receiver; not retried");
                    }
                    Ok(r) => {
                        outcome = Err(HandlerError::Transient(format!("{} answered {}", receiver.url, r.status())))
                    }
                    Err(e) => outcome = Err(HandlerError::Transient(format!("{}: {e}", receiver.url))),
                }
            }
            results.push(outcome);
        }
        results
    }
}
