//! What the DPO receives: e-mail over SMTP (lettre; STARTTLS when the server offers it) and,
//! if configured, a JSON webhook signed with HMAC-SHA256. The texts carry the points of GDPR
//! Art. 33(3): nature, categories and approximate numbers of people and records, contact
//! point, likely consequences, measures taken and proposed; and the Art. 33(1) deadline.
//!
//! Each message tells the truth at the instant it is sent: a measure is "taken" only once
//! its step is done, otherwise "in progress"; the step sending it is "this message" in the
//! timeline. Text and HTML parts are rendered from the same [`Notice`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use custodian_store::entities::{incident, incident_step};
use hmac::{Hmac, Mac};
use lettre::message::MultiPart;
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

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

/// What the DPO reads of each step.
fn step_name(step: &str) -> &'static str {
    match step {
        "notify_dpo" => "Initial notification of the DPO",
        "contain" => "Containment: tokens revoked, view sessions wiped",
        "report_containment" => "Follow-up notification: containment",
        "rotate_credentials" => "Rotation of the client secret",
        "report_rotation" => "Follow-up notification: rotation",
        "final_report" => "Final report",
        _ => "Step",
    }
}

/// A notification to the DPO, as data: rendered as text and as HTML from the same facts, so
/// the two parts never say different things.
#[derive(Debug, Clone)]
pub(crate) struct Notice {
    pub subject: String,
    pub title: String,
    pub facts: Vec<(&'static str, String)>,
    pub sections: Vec<Section>,
    pub timeline: Vec<TimelineRow>,
}

#[derive(Debug, Clone)]
pub(crate) struct Section {
    pub heading: &'static str,
    pub lines: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct TimelineRow {
    pub step: &'static str,
    pub state: String,
}

/// The GDPR Art. 33(1) deadline: 72 hours from when the breach became known.
pub(crate) fn deadline_line(detected_at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let deadline = detected_at + chrono::Duration::hours(72);
    let left = deadline - now;
    let (hours, minutes) = (left.num_minutes().abs() / 60, left.num_minutes().abs() % 60);
    let when = if left >= chrono::Duration::zero() {
        format!("{hours} h {minutes} min left")
    } else {
        format!("passed {hours} h {minutes} min ago")
    };
    format!(
        "The supervisory authority must be notified without undue delay and, where feasible, within 72 hours \
         of becoming aware of the breach (GDPR Art. 33(1)): by {} ({when}).",
        time(Some(deadline))
    )
}

fn detail_of(step: &incident_step::Model) -> Value {
    serde_json::from_str(&step.detail).unwrap_or(Value::Null)
}

fn count(detail: &Value, key: &str) -> Option<i64> {
    detail.get(key).and_then(Value::as_i64)
}

/// Each measure as it stands when the message is sent: taken (with when), or in progress.
fn measures(
    incident: &incident::Model,
    steps: &[incident_step::Model],
    sending: &str,
    now: DateTime<Utc>,
) -> Vec<String> {
    let find = |name: &str| steps.iter().find(|s| s.step == name);
    let done = |name: &str| find(name).filter(|s| s.state == "done");
    let mut out = Vec::new();
    match (sending, done("notify_dpo")) {
        ("notify_dpo", _) => {
            out.push(format!("Taken: the DPO notified at detection (this message, {}).", time(Some(now))))
        }
        (_, Some(step)) => out.push(format!("Taken: the DPO notified at {}.", time(step.finished_at))),
        _ => {}
    }
    let person = incident.kind == "user_compromise";
    let (what, doing) = if person {
        (
            "the person's tokens revoked at the OpenID provider (RFC 7009) and every view session of theirs wiped",
            "revoking the person's tokens at the OpenID provider (RFC 7009) and wiping every view session of theirs",
        )
    } else {
        (
            "every token of the platform revoked at the OpenID provider (RFC 7009) and every view session wiped",
            "revoking every token of the platform at the OpenID provider (RFC 7009) and wiping every view session",
        )
    };
    if let Some(step) = find("contain") {
        match done("contain") {
            Some(done) => {
                let detail = detail_of(done);
                let counts = match (count(&detail, "tokens_revoked"), count(&detail, "sessions_wiped")) {
                    (Some(t), Some(w)) => format!(" ({t} tokens revoked, {w} view sessions wiped)"),
                    _ => String::new(),
                };
                out.push(format!("Taken: {what}, done at {}{counts}.", time(done.finished_at)));
            }
            None => out.push(format!("In progress: {doing}{}.", retrying(step))),
        }
    }
    if let Some(step) = find("rotate_credentials") {
        match done("rotate_credentials") {
            Some(done) => out.push(format!(
                "Taken: the platform's client secret rotated at the OpenID provider (RFC 7592) at {}; the new \
                 secret works and the old one is refused.",
                time(done.finished_at)
            )),
            None => out.push(format!(
                "In progress: rotating the platform's client secret at the OpenID provider (RFC 7592){}.",
                retrying(step)
            )),
        }
    }
    out.push(
        "Proposed: inform the people concerned if the risk to them is high (Art. 34); review the access logs of \
         the health services for the exposure window."
            .into(),
    );
    out
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

fn retrying(step: &incident_step::Model) -> String {
    match (&step.last_error, step.attempts) {
        (Some(error), n) if n > 0 => format!(" (attempt {n} failed: {error}; retrying)"),
        _ => String::new(),
    }
}

/// What the step this message reports on did, in words (no JSON).
fn stage_details(stage: &str, steps: &[incident_step::Model]) -> Vec<String> {
    let find = |name: &str| steps.iter().find(|s| s.step == name && s.state == "done").map(detail_of);
    let containment = || {
        find("contain").map(|d| {
            let scope = match d.get("scope").and_then(Value::as_str) {
                Some("person") => "the person concerned",
                _ => "everyone holding a consent at the platform",
            };
            let mut lines = vec![format!("Containment covered {scope}.")];
            if let Some(n) = count(&d, "revocations") {
                lines.push(format!("Revocations: {n}, of which still pending: {}.", count(&d, "pending").unwrap_or(0)));
            }
            if let (Some(t), Some(w)) = (count(&d, "tokens_revoked"), count(&d, "sessions_wiped")) {
                lines.push(format!("Tokens revoked at the OpenID provider: {t}. View sessions wiped: {w}."));
            }
            lines
        })
    };
    let rotation = || {
        find("rotate_credentials").map(|d| {
            let yes_no = |key: &str| if d.get(key).and_then(Value::as_bool) == Some(true) { "yes" } else { "no" };
            vec![
                format!(
                    "Client secret version {} replaced by version {}.",
                    count(&d, "previous_version").unwrap_or(0),
                    count(&d, "version").unwrap_or(0)
                ),
                format!(
                    "The new secret authenticates: {}. The old secret is refused: {}.",
                    yes_no("new_secret_authenticates"),
                    yes_no("old_secret_refused")
                ),
            ]
        })
    };
    match stage {
        "initial" => {
            let next: Vec<&str> = steps.iter().filter(|s| s.step != "notify_dpo").map(|s| step_name(&s.step)).collect();
            vec![format!("Next: {}.", next.join("; "))]
        }
        "containment" => containment().unwrap_or_default(),
        "rotation" => rotation().unwrap_or_default(),
        _ => {
            let mut lines = vec!["Every step of the workflow is done; this is the last notification.".to_owned()];
            lines.extend(containment().unwrap_or_default());
            lines.extend(rotation().unwrap_or_default());
            lines
        }
    }
}

/// The timeline as it stands while this message is sent: the step sending it is "this message".
fn timeline_rows(steps: &[incident_step::Model], sending: &str, now: DateTime<Utc>) -> Vec<TimelineRow> {
    steps
        .iter()
        .map(|s| {
            let state = if s.step == sending {
                format!("this message, sent at {}", time(Some(now)))
            } else {
                match (s.state.as_str(), s.started_at, s.finished_at) {
                    ("done", _, finished) => format!("done at {}", time(finished)),
                    (_, Some(started), _) => format!("in progress since {}{}", time(Some(started)), retrying(s)),
                    _ => format!("to do{}", retrying(s)),
                }
            };
            TimelineRow { step: step_name(&s.step), state }
        })
        .collect()
}

/// One notification; `stage` is `initial`, `containment`, `rotation` or `final`, sent by the
/// step `sending` at `now`. Every measure is listed as it stands at that instant.
pub(crate) fn compose(
    stage: &str,
    incident: &incident::Model,
    exposure: &Exposure,
    contact: &str,
    steps: &[incident_step::Model],
    sending: &str,
    now: DateTime<Utc>,
) -> Notice {
    let title = match stage {
        "initial" => "initial notification",
        "containment" => "follow-up: containment done",
        "rotation" => "follow-up: client secret rotated",
        _ => "final report",
    };
    let subject =
        format!("[Custodian] Personal data breach {} at {} - {title}", incident.incident_id, incident.platform_id);
    let mut platform = incident.platform_id.clone();
    if let (Some(s), "user_compromise") = (&incident.subject, incident.kind.as_str()) {
        platform.push_str(&format!(" (person {s})"));
    }
    let facts = vec![
        ("Incident", incident.incident_id.clone()),
        ("Platform", platform),
        ("Detected at", time(Some(incident.detected_at))),
        ("Reported by", incident.reporter.clone()),
        ("Registered at", time(Some(incident.created_at))),
        ("Deadline", deadline_line(incident.detected_at, now)),
    ];
    let sections = vec![
        Section {
            heading: "(a) Nature of the breach",
            lines: vec![format!("{}.", capitalized(nature(&incident.kind))), format!("Summary: {}", incident.summary)],
        },
        Section {
            heading: "(a) Categories and approximate number of data subjects concerned",
            lines: vec![
                format!("people holding a consent at the platform: {}", exposure.consents),
                format!("people with stored tokens or open view sessions: {}", exposure.people),
            ],
        },
        Section {
            heading: "(a) Categories and approximate number of personal data records concerned",
            lines: vec![
                format!(
                    "stored token records (OpenID Connect access, refresh and ID tokens): {}",
                    exposure.token_records
                ),
                format!("open view sessions (health data held in memory by views): {}", exposure.open_sessions),
            ],
        },
        Section { heading: "(b) Contact point", lines: vec![contact.to_owned()] },
        Section { heading: "(c) Likely consequences", lines: vec![consequences(&incident.kind).to_owned()] },
        Section { heading: "(d) Measures taken or proposed", lines: measures(incident, steps, sending, now) },
        Section { heading: "Details of this stage", lines: stage_details(stage, steps) },
    ];
    Notice {
        subject,
        title: format!("Personal data breach notification under GDPR Art. 33 - {title}"),
        facts,
        sections,
        timeline: timeline_rows(steps, sending, now),
    }
}

impl Notice {
    /// The text part.
    pub(crate) fn text(&self) -> String {
        let mut out = format!("{}\n\n", self.title);
        for (label, value) in &self.facts {
            out.push_str(&format!("{:<15}{value}\n", format!("{label}:")));
        }
        for section in &self.sections {
            out.push_str(&format!("\n{}\n", section.heading));
            for line in &section.lines {
                out.push_str(&format!("  - {line}\n"));
            }
        }
        out.push_str("\nTimeline\n");
        for row in &self.timeline {
            out.push_str(&format!("  - {}: {}\n", row.step, row.state));
        }
        out
    }

    /// The HTML part (askama: every value escaped).
    pub(crate) fn html(&self) -> Result<String, askama::Error> {
        use askama::Template as _;
        NoticeHtml { notice: self }.render()
    }
}

#[derive(askama::Template)]
#[template(path = "dpo_notice.html")]
struct NoticeHtml<'a> {
    notice: &'a Notice,
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

/// Sends one e-mail (a text part and an HTML part); `Ok` once the SMTP server accepted it.
pub(crate) async fn send_email(
    config: &DpoConfig,
    mailer: &Mailer,
    message_id: &str,
    notice: &Notice,
) -> Result<DateTime<Utc>, String> {
    use tracing::Instrument as _;
    let span = tracing::info_span!(
        "smtp_send",
        otel.kind = "client",
        message_id = %message_id,
        recipients = config.to.len(),
        outcome = tracing::field::Empty,
    );
    let sent = send_email_in_span(config, mailer, message_id, notice).instrument(span.clone()).await;
    span.record("outcome", if sent.is_ok() { "accepted" } else { "failed" });
    sent
}

async fn send_email_in_span(
    config: &DpoConfig,
    mailer: &Mailer,
    message_id: &str,
    notice: &Notice,
) -> Result<DateTime<Utc>, String> {
    if config.to.is_empty() {
        return Err("incident.dpo.to is empty: nobody to notify".into());
    }
    let mut builder = Message::builder()
        .from(config.from.parse().map_err(|e| format!("incident.dpo.from: {e}"))?)
        .subject(notice.subject.as_str())
        .message_id(Some(message_id.to_owned()));
    for to in &config.to {
        builder = builder.to(to.parse().map_err(|e| format!("incident.dpo.to {to:?}: {e}"))?);
    }
    let html = notice.html().map_err(|e| format!("e-mail HTML: {e}"))?;
    let email = builder
        .multipart(MultiPart::alternative_plain_html(notice.text(), html))
        .map_err(|e| format!("e-mail: {e}"))?;
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
