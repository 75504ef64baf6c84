//! What the DPO receives: e-mail over SMTP (lettre; STARTTLS when the server offers it) and,
//! if configured, a JSON webhook signed with HMAC-SHA256. The texts carry the points of GDPR
//! Art. 33(3): nature, categories and approximate numbers of people and records, contact
//! point, likely consequences, measures taken and proposed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use custodian_store::entities::{incident, incident_step};
use hmac::{Hmac, Mac};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use serde_json::Value;
use sha2::Sha256;

use crate::DpoConfig;

/// People and records concerned (Art. 33(3)(a)).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Exposure {
    pub consents: u64,
    pub people: u64,
    pub token_records: u64,
    pub open_sessions: u64,
}

fn nature(kind: &str) -> &'static str {
    match kind {
        "data_leak" => "a leak of data processed by the platform",
        "credential_loss" => "the loss of the platform's client credential (its secret at the OpenID provider)",
        "platform_compromise" => "a compromise of the platform (its systems or its credential)",
        "user_compromise" => "the compromise of one person's account or tokens at the platform",
        _ => "an incident",
    }
}

fn consequences(kind: &str) -> &'static str {
    match kind {
        "user_compromise" => {
            "Someone holding the person's tokens could have called health services in their name and read \
             their health data until the tokens were revoked."
        }
        "credential_loss" | "platform_compromise" => {
            "Someone holding the platform's credential or its stored tokens could have obtained or refreshed \
             tokens and called health services in the name of the people concerned, reading their health \
             data, until the tokens were revoked and the secret rotated."
        }
        _ => {
            "Data of the people concerned may have been disclosed to unauthorised parties (health data shown \
             by the platform's views, identifiers)."
        }
    }
}

fn measures(kind: &str, contained: bool) -> String {
    let mut out = vec![
        "Notification of the DPO at detection (this message).".to_owned(),
        match kind {
            "user_compromise" => {
                "The person's tokens revoked at the OpenID provider (RFC 7009) and every view session of \
                                  theirs wiped."
                    .to_owned()
            }
            _ if !contained => "No containment configured for this kind at this platform.".to_owned(),
            _ => "Every token of the platform revoked at the OpenID provider (RFC 7009) and every view session wiped."
                .to_owned(),
        },
    ];
    if matches!(kind, "credential_loss" | "platform_compromise") {
        out.push("The platform's client secret rotated at the OpenID provider (RFC 7592); the old one refused.".into());
    }
    out.push(
        "Proposed: inform the people concerned if the risk to them is high (Art. 34); review access logs of \
              the health services for the exposure window."
            .into(),
    );
    out.iter().map(|m| format!("  - {m}")).collect::<Vec<_>>().join("\n")
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

pub(crate) fn timeline(steps: &[incident_step::Model]) -> String {
    steps
        .iter()
        .map(|s| {
            format!(
                "  {:<20} {:<8} started {}  finished {}{}",
                s.step,
                s.state,
                time(s.started_at),
                time(s.finished_at),
                s.last_error.as_deref().map(|e| format!("  (last error: {e})")).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The text of one notification; `stage` is `initial`, `containment`, `rotation` or `final`.
pub(crate) fn compose(
    stage: &str,
    incident: &incident::Model,
    exposure: &Exposure,
    contact: &str,
    steps: &[incident_step::Model],
    extra: &Value,
) -> (String, String) {
    let title = match stage {
        "initial" => "initial notification",
        "containment" => "follow-up: containment done",
        "rotation" => "follow-up: client secret rotated",
        _ => "final report",
    };
    let subject =
        format!("[Custodian] Personal data breach {} at {} - {title}", incident.incident_id, incident.platform_id);
    let who = match (&incident.subject, incident.kind.as_str()) {
        (Some(s), "user_compromise") => format!(" (person {s})"),
        _ => String::new(),
    };
    let body = format!(
        "Personal data breach notification under GDPR Art. 33 - {title}\n\
         \n\
         Incident:      {id}\n\
         Platform:      {platform}{who}\n\
         Detected at:   {detected}\n\
         Reported by:   {reporter}\n\
         Registered at: {registered}\n\
         \n\
         (a) Nature of the breach\n  {nature}.\n  Summary: {summary}\n\
         \n\
         (a) Categories and approximate number of data subjects concerned\n\
           - people holding a consent at the platform: {consents}\n\
           - people with stored tokens or open view sessions: {people}\n\
         (a) Categories and approximate number of personal data records concerned\n\
           - stored token records (OpenID Connect access, refresh and ID tokens): {tokens}\n\
           - open view sessions (health data held in memory by views): {sessions}\n\
         \n\
         (b) Contact point\n  {contact}\n\
         \n\
         (c) Likely consequences\n  {consequences}\n\
         \n\
         (d) Measures taken or proposed\n{measures}\n\
         \n\
         Details of this stage: {extra}\n\
         \n\
         Timeline\n{timeline}\n",
        id = incident.incident_id,
        platform = incident.platform_id,
        detected = time(Some(incident.detected_at)),
        reporter = incident.reporter,
        registered = time(Some(incident.created_at)),
        nature = nature(&incident.kind),
        summary = incident.summary,
        consents = exposure.consents,
        people = exposure.people,
        tokens = exposure.token_records,
        sessions = exposure.open_sessions,
        consequences = consequences(&incident.kind),
        measures = measures(&incident.kind, true),
        extra = extra,
        timeline = timeline(steps),
    );
    (subject, body)
}

/// The SMTP transport, with a connection pool: `send` returns on the server's acceptance of
/// the message (no QUIT round trip after it), which keeps the window in which a crash could
/// make us send a notification twice as small as it can be.
pub(crate) type Mailer = AsyncSmtpTransport<Tokio1Executor>;

pub(crate) fn mailer(config: &DpoConfig) -> Result<Mailer, String> {
    let url = url_parts(&config.smtp_url)?;
    let tls_parameters = TlsParameters::new(url.host.clone()).map_err(|e| format!("TLS: {e}"))?;
    let tls = if url.implicit_tls { Tls::Wrapper(tls_parameters) } else { Tls::Opportunistic(tls_parameters) };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(url.host.as_str())
        .port(url.port)
        .tls(tls)
        .timeout(Some(Duration::from_secs(config.timeout_secs.max(1))));
    if let (Some(user), Some(password)) = (&config.smtp_username, &config.smtp_password) {
        transport = transport.credentials(Credentials::new(user.clone(), password.expose_secret().to_owned()));
    }
    Ok(transport.build())
}

/// Sends one e-mail; `Ok` once the SMTP server accepted it.
pub(crate) async fn send_email(
    config: &DpoConfig,
    mailer: &Mailer,
    message_id: &str,
    subject: &str,
    body: String,
) -> Result<DateTime<Utc>, String> {
    use tracing::Instrument as _;
    let span = tracing::info_span!(
        "smtp_send",
        otel.kind = "client",
        message_id = %message_id,
        recipients = config.to.len(),
        outcome = tracing::field::Empty,
    );
    let sent = send_email_in_span(config, mailer, message_id, subject, body).instrument(span.clone()).await;
    span.record("outcome", if sent.is_ok() { "accepted" } else { "failed" });
    sent
}

async fn send_email_in_span(
    config: &DpoConfig,
    mailer: &Mailer,
    message_id: &str,
    subject: &str,
    body: String,
) -> Result<DateTime<Utc>, String> {
    if config.to.is_empty() {
        return Err("incident.dpo.to is empty: nobody to notify".into());
    }
    let mut builder = Message::builder()
        .from(config.from.parse().map_err(|e| format!("incident.dpo.from: {e}"))?)
        .subject(subject)
        .message_id(Some(message_id.to_owned()))
        .header(ContentType::TEXT_PLAIN);
    for to in &config.to {
        builder = builder.to(to.parse().map_err(|e| format!("incident.dpo.to {to:?}: {e}"))?);
    }
    let email = builder.body(body).map_err(|e| format!("e-mail: {e}"))?;
    // A pooled connection the server has since closed fails at once: one immediate retry on a
    // fresh connection, before the step's backoff.
    if let Err(first) = mailer.send(email.clone()).await {
        tracing::debug!(error = %first, "SMTP send failed; retrying once on a new connection");
        mailer.send(email).await.map_err(|e| format!("SMTP: {e}"))?;
    }
    #[allow(clippy::disallowed_methods)] // when the SMTP server accepted it
    let at = Utc::now();
    Ok(at)
}

struct SmtpUrl {
    host: String,
    port: u16,
    implicit_tls: bool,
}

fn url_parts(url: &str) -> Result<SmtpUrl, String> {
    let (implicit_tls, rest) = if let Some(r) = url.strip_prefix("smtps://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("smtp://") {
        (false, r)
    } else {
        return Err(format!("incident.dpo.smtp_url must be smtp:// or smtps://, got {url:?}"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| format!("bad port in {url:?}"))?),
        None => (rest.to_owned(), if implicit_tls { 465 } else { 25 }),
    };
    Ok(SmtpUrl { host, port, implicit_tls })
}

/// Posts `payload` to the webhook, signed; `Ok` on a 2xx answer.
pub(crate) async fn send_webhook(config: &DpoConfig, payload: &Value) -> Result<Option<DateTime<Utc>>, String> {
    let Some(url) = &config.webhook_url else { return Ok(None) };
    let body = serde_json::to_vec(payload).map_err(|e| e.to_string())?;
    let secret = config.webhook_secret.as_ref().ok_or("incident.dpo.webhook_secret is required with a webhook_url")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()).map_err(|e| e.to_string())?;
    mac.update(&body);
    let signature = hex::encode(mac.finalize().into_bytes());
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(config.timeout_secs.max(1)))
        .build()
        .map_err(|e| e.to_string())?
        .post(url)
        .header("content-type", "application/json")
        .header("x-custodian-signature", format!("sha256={signature}"))
        .body(body)
        .send()
        .await
        .map_err(|e| format!("webhook: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("webhook answered {}", response.status()));
    }
    #[allow(clippy::disallowed_methods)] // when the webhook accepted it
    let at = Utc::now();
    Ok(Some(at))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn smtp_urls() {
        let u = url_parts("smtp://127.0.0.1:2525").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.implicit_tls), ("127.0.0.1", 2525, false));
        let u = url_parts("smtps://mail.example").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.implicit_tls), ("mail.example", 465, true));
        assert!(url_parts("http://x").is_err());
    }
}
