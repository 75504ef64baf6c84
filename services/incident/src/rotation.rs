//! Client-secret rotation at the OP (RFC 7592 client configuration): read the registration,
//! PUT it back (the OP issues a new secret and a new registration access token), and check
//! at the token endpoint which secret authenticates.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tracing::Instrument as _;

use crate::PlatformRegistration;
use crate::credentials::Secrets;

fn http(platform: &PlatformRegistration) -> Result<custodian_oidc::reqwest::Client, String> {
    custodian_oidc::http_client(platform.ca_file.as_deref(), Duration::from_secs(10)).map_err(|e| e.to_string())
}

async fn body_of(response: custodian_oidc::reqwest::Response) -> Result<Value, String> {
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        let error = value["error"].as_str().unwrap_or("unknown");
        return Err(format!("the OP answered {status} ({error})"));
    }
    Ok(value)
}

/// RFC 7592 read then update: the new secrets (client secret, registration access token).
/// A client span of its own, whose context the OP receives.
pub(crate) async fn rotate(platform: &PlatformRegistration, current: &Secrets) -> Result<Secrets, String> {
    let span = tracing::info_span!(
        "rfc7592_rotate",
        otel.kind = "client",
        platform_id = %platform.platform_id,
        outcome = tracing::field::Empty,
    );
    let rotated = rotate_in_span(platform, current).instrument(span.clone()).await;
    span.record("outcome", if rotated.is_ok() { "rotated" } else { "failed" });
    rotated
}

async fn rotate_in_span(platform: &PlatformRegistration, current: &Secrets) -> Result<Secrets, String> {
    let client = http(platform)?;
    let uri = &current.registration_client_uri;
    let metadata = body_of(
        client
            .get(uri)
            .headers(custodian_oidc::trace_headers())
            .bearer_auth(&current.registration_access_token)
            .send()
            .await
            .map_err(|e| format!("RFC 7592 read: {e}"))?,
    )
    .await?;
    let mut update = metadata.as_object().cloned().ok_or("the registration is not a JSON object")?;
    // What the server manages itself is not sent back (RFC 7592 §2.2).
    for key in
        ["registration_access_token", "registration_client_uri", "client_secret_expires_at", "client_id_issued_at"]
    {
        update.remove(key);
    }
    update.insert("client_secret".into(), Value::String(current.client_secret.clone()));
    let updated = body_of(
        client
            .put(uri)
            .headers(custodian_oidc::trace_headers())
            .bearer_auth(&current.registration_access_token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&update).map_err(|e| e.to_string())?)
            .send()
            .await
            .map_err(|e| format!("RFC 7592 update: {e}"))?,
    )
    .await?;
    let client_secret = updated["client_secret"].as_str().ok_or("the OP returned no client_secret")?.to_owned();
    if client_secret == current.client_secret {
        return Err("the OP kept the old client secret (no rotation on update)".into());
    }
    Ok(Secrets {
        client_secret,
        registration_access_token: updated["registration_access_token"]
            .as_str()
            .unwrap_or(&current.registration_access_token)
            .to_owned(),
        registration_client_uri: updated["registration_client_uri"].as_str().unwrap_or(uri).to_owned(),
    })
}

/// Does `secret` authenticate `client_id` at the token endpoint? (A refresh with a bogus
/// token: `invalid_grant` means the client was authenticated, `invalid_client` that it was not.)
pub(crate) async fn authenticates(platform: &PlatformRegistration, secret: &SecretString) -> Result<bool, String> {
    let span = tracing::info_span!(
        "client_secret_check",
        otel.kind = "client",
        platform_id = %platform.platform_id,
        outcome = tracing::field::Empty,
    );
    let checked = authenticates_in_span(platform, secret).instrument(span.clone()).await;
    let outcome = match checked {
        Ok(true) => "authenticates",
        Ok(false) => "refused",
        Err(_) => "failed",
    };
    span.record("outcome", outcome);
    checked
}

async fn authenticates_in_span(platform: &PlatformRegistration, secret: &SecretString) -> Result<bool, String> {
    let client = http(platform)?;
    let discovery = body_of(
        client
            .get(format!("{}/.well-known/openid-configuration", platform.issuer.trim_end_matches('/')))
            .headers(custodian_oidc::trace_headers())
            .send()
            .await
            .map_err(|e| format!("discovery: {e}"))?,
    )
    .await?;
    let token_endpoint = discovery["token_endpoint"].as_str().ok_or("no token_endpoint")?;
    let response = client
        .post(token_endpoint)
        .headers(custodian_oidc::trace_headers())
        .basic_auth(&platform.platform_id, Some(secret.expose_secret()))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", "custodian-credential-check")])
        .send()
        .await
        .map_err(|e| format!("token endpoint: {e}"))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    let error = serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| v["error"].as_str().map(str::to_owned));
    match error.as_deref() {
        Some("invalid_client") | Some("unauthorized_client") => Ok(false),
        Some(_) => Ok(true),
        None => Err(format!("unexpected answer {status} from the token endpoint")),
    }
}
