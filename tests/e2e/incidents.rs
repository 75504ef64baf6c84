//! Incident response on the real OP (RFC 7592 rotation, RFC 7009 revocation), a real SMTP
//! server (aiosmtpd), NATS and the database.

use std::time::Duration;

use custodian_events::incident::IncidentView;
use custodian_incident::{DpoConfig, IncidentConfig, PlatformRegistration};
use custodian_store::entities::{credential, incident, incident_step};
use custodian_testkit::{RegisteredClient, SmtpServer, eventually, eventually_explained};
use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use crate::support::{RESPONDER_TOKEN, Stack, stored_bundles, test_vault_config, unique};

pub(crate) fn incident_config(stack: &Stack, smtp: &SmtpServer, client: &RegisteredClient) -> IncidentConfig {
    IncidentConfig {
        dpo: DpoConfig {
            to: vec!["dpo@platform.example".into()],
            from: "custodian@platform.example".into(),
            smtp_url: smtp.url(),
            contact: "DPO, dpo@platform.example, +32 2 000 00 00".into(),
            // Generous: a reply slower than this is sent again, and tests count the mails.
            timeout_secs: 10,
            ..Default::default()
        },
        platforms: vec![PlatformRegistration {
            platform_id: client.client_id.clone(),
            issuer: stack.provider.issuer.clone(),
            ca_file: Some(stack.provider.ca_file.clone()),
            registration_client_uri: client.registration_client_uri.clone().expect("registration_client_uri"),
            registration_access_token: client
                .registration_access_token
                .clone()
                .expect("registration_access_token")
                .into(),
            client_secret: client.client_secret.clone().into(),
        }],
        retry_initial_ms: 100,
        retry_max_secs: 1,
        poll_ms: 100,
        ack_wait_secs: 2,
        ..Default::default()
    }
}

async fn report(stack: &Stack, kind: &str, platform: &str) -> String {
    let response = stack
        .http
        .post(stack.url("/v1/incidents"))
        .bearer_auth(RESPONDER_TOKEN)
        .json(&json!({"kind": kind, "platform_id": platform, "summary": "client secret found in a public repository"}))
        .send()
        .await
        .expect("report");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    response.json::<Value>().await.expect("body")["incident_id"].as_str().expect("id").to_owned()
}

async fn incident(stack: &Stack, id: &str) -> Option<IncidentView> {
    let r = stack.http.get(stack.url(&format!("/v1/incidents/{id}"))).bearer_auth(RESPONDER_TOKEN).send().await.ok()?;
    if r.status() != StatusCode::OK {
        return None;
    }
    r.json().await.ok()
}

pub(crate) async fn closed(stack: &Stack, id: &str, timeout: Duration) -> IncidentView {
    eventually("the incident to close", timeout, || async { incident(stack, id).await.filter(|i| i.state == "closed") })
        .await
}

/// Signs `n` people in and opens two view sessions each; returns the views.
pub(crate) async fn people_with_sessions(stack: &mut Stack, platform: &str, n: usize) -> Vec<custodian_view_sdk::View> {
    let views = vec![stack.start_view(&unique("inc-a")).await, stack.start_view(&unique("inc-b")).await];
    for _ in 0..n {
        let person = unique("pat");
        stack.login_through_gateway(&person).await;
        for view in &views {
            let started = view.start_session(None, &person, platform, Duration::from_secs(10)).await.expect("token");
            let session = started.session_id;
            view.store().put(&session, "record", b"diagnosis".to_vec(), Duration::from_secs(120)).expect("put");
        }
    }
    // The vault has taken every session in (what the DPO's counts are made of).
    stack.vault_knows_sessions(platform, (n * views.len()) as u64).await;
    views
}

/// The current client secret, as stored (sealed) by the incident service.
/// Asks the incident service for a planned rotation (`custodian.incident.rotate`), waiting
/// for it to answer; the rotation's id.
async fn request_rotation(stack: &Stack, platform: &str) -> String {
    let request =
        custodian_events::incident::RotateRequest { platform_id: platform.to_owned(), requested_by: "test".into() };
    // Asked once: each request starts a rotation of its own (a service still starting is
    // waited for, as "no responders" is asked again).
    let reply: custodian_events::incident::RotateReply =
        custodian_bus::query(stack.bus.client(), custodian_events::incident::ROTATE, &request, Duration::from_secs(20))
            .await
            .expect("the incident service answers");
    let custodian_events::incident::RotateReply::Started { rotation_id } = reply else { panic!("refused: {reply:?}") };
    rotation_id
}

/// Whether the incident is closed (it may not be registered yet), and how many of its steps are done, as recorded.
async fn recorded_progress(stack: &Stack, id: &str) -> (bool, usize) {
    let steps = incident_step::Entity::find()
        .filter(incident_step::Column::IncidentId.eq(id))
        .all(stack.store.db())
        .await
        .expect("incident steps");
    let row = incident::Entity::find_by_id(id.to_owned()).one(stack.store.db()).await.expect("incident");
    (row.is_some_and(|row| row.state == "closed"), steps.iter().filter(|s| s.state == "done").count())
}

async fn stored_secrets(stack: &Stack, platform: &str) -> Vec<(i32, String, String)> {
    let rows = credential::Entity::find()
        .filter(credential::Column::PlatformId.eq(platform))
        .all(stack.store.db())
        .await
        .expect("credentials");
    rows.into_iter()
        .map(|row| {
            let envelope = custodian_crypto::Envelope {
                key_id: row.key_id.clone(),
                wrapped_key: row.wrapped_key.clone(),
                ciphertext: row.ciphertext.clone(),
            };
            let aad = custodian_incident::credential_aad(platform, row.version);
            let plain = stack.keyring.open(&envelope, &aad).expect("credential decrypts");
            let json: Value = serde_json::from_slice(&plain).expect("json");
            (row.version, row.state, json["client_secret"].as_str().expect("secret").to_owned())
        })
        .collect()
}

#[tokio::test]
async fn a_platform_compromise_notifies_the_dpo_contains_and_rotates_the_secret() {
    let mut stack = Stack::start().await;
    let smtp = SmtpServer::start();
    let (client, settings) = stack.register_platform().await;
    let platform = client.client_id.clone();
    stack.start_vault(test_vault_config(vec![settings]));
    let views = people_with_sessions(&mut stack, &platform, 3).await;
    let tokens: Vec<String> = stored_bundles(&stack)
        .await
        .into_iter()
        .flat_map(|(_, b)| [Some(b.access_token.clone()), b.refresh_token.clone()])
        .flatten()
        .collect();
    assert_eq!(tokens.len(), 6, "3 people x (access + refresh)");
    eventually("three grants in the ledger", Duration::from_secs(15), || async {
        let q = custodian_events::queries::ConsentQuery { platform_id: Some(platform.clone()), ..Default::default() };
        (stack.ledger(q).await.len() == 3).then_some(())
    })
    .await;
    stack.start_incident(incident_config(&stack, &smtp, &client));

    let id = report(&stack, "platform_compromise", &platform).await;
    let done = closed(&stack, &id, Duration::from_secs(60)).await;
    let steps: Vec<(&str, &str)> = done.steps.iter().map(|s| (s.step.as_str(), s.state.as_str())).collect();
    assert_eq!(
        steps,
        vec![
            ("notify_dpo", "done"),
            ("contain", "done"),
            ("report_containment", "done"),
            ("rotate_credentials", "done"),
            ("report_rotation", "done"),
            ("final_report", "done"),
        ]
    );

    // The DPO's e-mails: the first carries every point of Art. 33(3), with the counts.
    let mails = smtp.messages();
    assert_eq!(mails.len(), 4, "initial, containment, rotation, final");
    let first = &mails[0];
    for point in [
        "dpo@platform.example",
        "initial notification",
        &id,
        "(a) Nature of the breach",
        "compromise of the platform",
        "client secret found in a public repository",
        "approximate number of data subjects",
        "people holding a consent at the platform: 3",
        "people with stored tokens or open view sessions: 3",
        "stored token records (OpenID Connect access, refresh and ID tokens): 3",
        "open view sessions (health data held in memory by views): 6",
        "(b) Contact point",
        "+32 2 000 00 00",
        "(c) Likely consequences",
        "(d) Measures taken or proposed",
    ] {
        assert!(first.contains(point), "the first e-mail lacks {point:?}:\n{first}");
    }
    assert!(
        mails[3].contains("final report") && mails[3].contains("Rotation of the client secret: done at"),
        "{}",
        mails[3]
    );
    assert!(first.find("Message-ID").is_some());

    // Contained: every token dead at the OP, every view session wiped.
    let secrets = stored_secrets(&stack, &platform).await;
    let (_, _, new_secret) =
        secrets.iter().find(|(_, state, _)| state == "current").expect("a current version").clone();
    assert_eq!(secrets.iter().find(|(_, s, _)| s == "current").map(|(v, _, _)| *v), Some(2));
    for token in &tokens {
        let info = stack.provider.introspect(&platform, &new_secret, token).await;
        assert_eq!(info["active"], false, "a token survived containment: {info}");
    }
    for view in &views {
        assert_eq!(view.store().counts(), (0, 0));
    }
    // Rotated: the old secret is refused, the new one works.
    let old = stack.provider.introspect(&platform, &client.client_secret, "anything").await;
    assert_eq!(old["error"], "invalid_client", "{old}");
    let new = stack.provider.introspect(&platform, &new_secret, "anything").await;
    assert_eq!(new["active"], false, "authenticated with the new secret: {new}");
    // The vault switched without restart: a new sign-in (code exchange with the secret) works.
    stack.login_through_gateway(&unique("after")).await;
    assert_eq!(stored_bundles(&stack).await.len(), 1, "the new login's tokens are stored");
    assert_eq!(stack.count_on_settled(custodian_events::subjects::CREDENTIAL_ROTATED, 1).await, 1);
    assert_eq!(stack.count_on_settled(custodian_events::subjects::DPO_NOTIFIED, 4).await, 4);
}

#[tokio::test]
async fn an_incident_service_killed_after_each_step_resumes_without_doubling_anything() {
    let mut stack = Stack::start().await;
    let smtp = SmtpServer::start();
    let (client, settings) = stack.register_platform().await;
    let platform = client.client_id.clone();
    stack.start_vault(test_vault_config(vec![settings]));
    people_with_sessions(&mut stack, &platform, 2).await;
    // A pause between steps, so each kill lands after a step and before the next.
    let config = IncidentConfig { step_pause_ms: 800, ..incident_config(&stack, &smtp, &client) };
    stack.start_incident(config.clone());
    let id = report(&stack, "credential_loss", &platform).await;

    // Progress is read from the database, not through the gateway: a query sent while the
    // restarted service is still subscribing waits out its timeout, and several steps could
    // finish unseen in that time.
    let mut crashes = 0;
    let mut seen_done = 0;
    loop {
        let waiting = std::time::Instant::now();
        let (closed, done) = eventually_explained("another step to finish", Duration::from_secs(30), || async {
            let (closed, done) = recorded_progress(&stack, &id).await;
            if done > seen_done {
                return Ok((closed, done));
            }
            // Only a wait about to time out is worth a look at the database's activity.
            let database = if waiting.elapsed() > Duration::from_secs(25) {
                stack.database_activity().await
            } else {
                String::new()
            };
            Err(format!("after {crashes} crash(es): {done} step(s) done; database: {database}"))
        })
        .await;
        stack.crash_incident().await;
        crashes += 1;
        seen_done = done;
        if closed {
            break;
        }
        stack.start_incident(config.clone());
    }
    assert!(crashes >= 3, "killed after most steps ({crashes})");
    let ids: Vec<String> = smtp
        .messages()
        .iter()
        .filter_map(|m| m.lines().find(|l| l.to_ascii_lowercase().starts_with("message-id:")).map(str::to_owned))
        .collect();
    // Should a crash ever hit between the SMTP server's acceptance and our record of it, the
    // re-sent message carries the same Message-ID (mail systems treat it as the same e-mail).
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 4, "four notifications: {ids:?}");
    assert_eq!(ids.len(), 4, "one e-mail per notification, whatever the crashes: {ids:?}");
    let secrets = stored_secrets(&stack, &platform).await;
    assert_eq!(secrets.len(), 2, "one rotation: {:?}", secrets.iter().map(|(v, s, _)| (v, s)).collect::<Vec<_>>());
    let (_, _, current) = secrets.iter().find(|(_, s, _)| s == "current").expect("current").clone();
    let check = stack.provider.introspect(&platform, &current, "anything").await;
    assert_eq!(check["active"], false, "the stored current secret is the one the OP accepts: {check}");
}

#[tokio::test]
async fn with_the_smtp_server_down_the_notification_waits_and_containment_does_not() {
    let mut stack = Stack::start().await;
    let mut smtp = SmtpServer::reserve();
    let (client, settings) = stack.register_platform().await;
    let platform = client.client_id.clone();
    stack.start_vault(test_vault_config(vec![settings]));
    let views = people_with_sessions(&mut stack, &platform, 1).await;
    stack.start_incident(incident_config(&stack, &smtp, &client));
    let id = report(&stack, "data_leak", &platform).await;

    let pending =
        eventually("the notification to be retried and containment to finish", Duration::from_secs(30), || async {
            let view = incident(&stack, &id).await?;
            let notify = view.steps.iter().find(|s| s.step == "notify_dpo")?;
            let contain = view.steps.iter().find(|s| s.step == "contain")?;
            (notify.state == "pending" && notify.attempts >= 2 && contain.state == "done").then_some(view)
        })
        .await;
    let notify = pending.steps.iter().find(|s| s.step == "notify_dpo").expect("notify");
    assert!(notify.last_error.as_deref().unwrap_or_default().contains("SMTP"), "{notify:?}");
    assert!(notify.next_attempt_at.is_some());
    assert_eq!(pending.state, "open");
    for view in &views {
        assert_eq!(view.store().counts(), (0, 0), "contained while the DPO's mail server was down");
    }

    smtp.restart();
    let done = closed(&stack, &id, Duration::from_secs(30)).await;
    assert_eq!(smtp.messages().len(), 3, "initial, containment, final (no rotation for a data leak)");
    assert!(smtp.messages()[0].contains("initial notification"));
    assert!(done.steps.iter().all(|s| s.state == "done"));
}

#[tokio::test]
async fn a_planned_rotation_replaces_the_secret_without_downtime() {
    let mut stack = Stack::start().await;
    let smtp = SmtpServer::start();
    let (client, settings) = stack.register_platform().await;
    let platform = client.client_id.clone();
    stack.start_vault(test_vault_config(vec![settings]));
    stack.start_incident(incident_config(&stack, &smtp, &client));
    let rotation_id = request_rotation(&stack, &platform).await;
    let done = closed(&stack, &rotation_id, Duration::from_secs(30)).await;
    assert_eq!(done.kind, "planned_rotation");
    assert_eq!(done.steps.len(), 1);
    assert_eq!(done.steps[0].detail["new_secret_authenticates"], true);
    assert_eq!(done.steps[0].detail["old_secret_refused"], true);
    assert!(smtp.messages().is_empty(), "a planned rotation is not a breach: no DPO e-mail");
    let secrets = stored_secrets(&stack, &platform).await;
    let (_, _, current) =
        secrets.iter().find(|(v, s, _)| *v == 2 && s == "current").expect("version 2 current").clone();
    assert_eq!(stack.provider.introspect(&platform, &client.client_secret, "x").await["error"], "invalid_client");
    assert_eq!(stack.provider.introspect(&platform, &current, "x").await["active"], false);
    // The vault switched without restart: a sign-in (code exchange with the secret) works.
    stack.login_through_gateway(&unique("after-rotation")).await;
}

/// A vault started after a rotation from a configuration that still holds the old secret (the
/// credential.rotated event long consumed) heals on first use: the OP's `invalid_client` makes
/// it fetch the current secret from the incident service and sign the person in.
#[tokio::test]
async fn a_vault_holding_a_rotated_out_secret_fetches_the_current_one_when_the_op_refuses_it() {
    let mut stack = Stack::start().await;
    let smtp = SmtpServer::start();
    let (client, settings) = stack.register_platform().await;
    let platform = client.client_id.clone();
    stack.start_incident(incident_config(&stack, &smtp, &client));
    let rotation_id = request_rotation(&stack, &platform).await;
    closed(&stack, &rotation_id, Duration::from_secs(30)).await;
    assert_eq!(
        stack.provider.introspect(&platform, &client.client_secret, "x").await["error"],
        "invalid_client",
        "the configured secret is rotated out"
    );
    // The rotation event is gone (as past the stream's retention), so the vault, started only
    // now with the configured secret, can learn of the rotation from the OP's refusal alone.
    stack.count_on_settled(custodian_events::subjects::CREDENTIAL_ROTATED, 1).await;
    let purged = stack
        .bus
        .jetstream()
        .get_stream(custodian_events::subjects::STREAM)
        .await
        .expect("stream")
        .purge()
        .filter(custodian_events::subjects::CREDENTIAL_ROTATED)
        .await
        .expect("purge");
    assert_eq!(purged.purged, 1, "one credential.rotated event");
    stack.start_vault(test_vault_config(vec![settings]));
    stack.login_through_gateway(&unique("stale-secret")).await;
}

#[tokio::test]
async fn the_dpo_webhook_gets_each_notification_signed_with_hmac_sha256() {
    use std::sync::{Arc, Mutex};

    use hmac::{Hmac, Mac};
    /// (signature header, body) of each call.
    type Calls = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    let received: Calls = Arc::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/dpo",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                let signature =
                    headers.get("x-custodian-signature").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                store.lock().expect("lock").push((signature, body.to_vec()));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/dpo", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut stack = Stack::start().await;
    let smtp = SmtpServer::start();
    let (client, settings) = stack.register_platform().await;
    stack.start_vault(test_vault_config(vec![settings]));
    let mut config = incident_config(&stack, &smtp, &client);
    config.dpo.webhook_url = Some(url);
    config.dpo.webhook_secret = Some("webhook-shared-secret".to_owned().into());
    stack.start_incident(config);
    let id = report(&stack, "data_leak", &client.client_id).await;
    closed(&stack, &id, Duration::from_secs(30)).await;
    let calls = received.lock().expect("lock").clone();
    assert_eq!(calls.len(), 3, "initial, containment, final");
    for (signature, body) in &calls {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"webhook-shared-secret").expect("key");
        mac.update(body);
        assert_eq!(signature, &format!("sha256={}", hex::encode(mac.finalize().into_bytes())), "signed body");
        let payload: Value = serde_json::from_slice(body).expect("json");
        assert_eq!(payload["incident_id"], id.as_str());
    }
    let stages: Vec<Value> =
        calls.iter().map(|(_, b)| serde_json::from_slice::<Value>(b).expect("json")["stage"].clone()).collect();
    assert_eq!(stages, vec![json!("initial"), json!("containment"), json!("final")]);
    stack.count_on_settled(custodian_events::subjects::DPO_NOTIFIED, 6).await;
    let notified = stack.messages_on(custodian_events::subjects::DPO_NOTIFIED).await;
    assert_eq!(notified.iter().filter(|(_, e)| e["data"]["channel"] == "webhook").count(), 3);
    assert_eq!(notified.iter().filter(|(_, e)| e["data"]["channel"] == "email").count(), 3);
}

/// Each DPO e-mail, checked against the workflow's state at the instant it was sent: a
/// measure is "taken" only if its step had finished by then, otherwise "in progress"; the
/// sending step is "this message"; the Art. 33(1) deadline is stated; no JSON, no `null`;
/// an HTML part says the same as the text part.
#[tokio::test]
async fn each_dpo_email_tells_the_workflow_as_it_stood_when_it_was_sent() {
    let mut stack = Stack::start().await;
    let smtp = SmtpServer::start();
    let (client, settings) = stack.register_platform().await;
    let platform = client.client_id.clone();
    stack.start_vault(test_vault_config(vec![settings]));
    let _views = people_with_sessions(&mut stack, &platform, 2).await;
    stack.start_incident(incident_config(&stack, &smtp, &client));
    let id = report(&stack, "credential_loss", &platform).await;
    closed(&stack, &id, Duration::from_secs(60)).await;

    let steps = incident_step::Entity::find()
        .filter(incident_step::Column::IncidentId.eq(id.clone()))
        .all(stack.store.db())
        .await
        .expect("steps");
    let step = |name: &str| steps.iter().find(|s| s.step == name).unwrap_or_else(|| panic!("step {name}")).clone();
    let parts = smtp.parts();
    assert_eq!(parts.len(), 4, "initial, containment, rotation, final");
    let senders = [
        ("notify_dpo", "Initial notification of the DPO"),
        ("report_containment", "Follow-up notification: containment"),
        ("report_rotation", "Follow-up notification: rotation"),
        ("final_report", "Final report"),
    ];
    for ((text, html), (sender, sender_name)) in parts.iter().zip(senders) {
        let sending = step(sender);
        let detail: Value = serde_json::from_str(&sending.detail).expect("detail");
        let sent_at: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(detail["email_delivered_at"].clone()).expect("delivered at");
        let began = sending.started_at.expect("started");
        assert!(text.contains(&format!("{sender_name}: this message, sent at")), "{sender}: {text}");
        for (measure, taken, in_progress) in [
            (
                "contain",
                "Taken: every token of the platform revoked",
                "In progress: revoking every token of the platform",
            ),
            (
                "rotate_credentials",
                "Taken: the platform's client secret rotated",
                "In progress: rotating the platform's client secret",
            ),
        ] {
            let finished = step(measure).finished_at.expect("finished");
            if text.contains(taken) {
                assert!(finished <= sent_at, "{sender} lists {measure} as taken before it was: {text}");
            } else {
                assert!(text.contains(in_progress), "{sender} says nothing of {measure}: {text}");
                assert!(finished > began, "{sender} lists {measure} as in progress though it was done: {text}");
            }
        }
        if sender != "notify_dpo" {
            assert!(!text.contains("(this message"), "only the first message is the notification at detection");
            assert!(text.contains("Taken: the DPO notified at"), "{text}");
        }
        assert!(text.contains("within 72 hours") && text.contains("min left"), "the Art. 33(1) deadline: {text}");
        assert!(!text.contains("null") && !text.contains('{') && !text.contains('}'), "no JSON: {text}");
        assert!(html.contains("<h2>(d) Measures taken or proposed</h2>"), "an HTML part: {html}");
        assert_eq!(html.matches("Taken:").count(), text.matches("Taken:").count(), "the parts agree");
        assert_eq!(html.matches("In progress:").count(), text.matches("In progress:").count());
    }
    let (containment, _) = &parts[1];
    assert!(containment.contains("Tokens revoked at the OpenID provider:"), "{containment}");
    let (rotation, _) = &parts[2];
    assert!(rotation.contains("Client secret version 1 replaced by version 2."), "{rotation}");
    assert!(rotation.contains("The new secret authenticates: yes. The old secret is refused: yes."), "{rotation}");
    let (last, _) = &parts[3];
    assert!(last.contains("Every step of the workflow is done"), "{last}");
    assert!(!last.contains("to do") && !last.contains("in progress since") && !last.contains("In progress:"), "{last}");
}
