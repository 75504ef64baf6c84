//! One trace from the caller to the last view's ack: W3C trace context through HTTP, every NATS
//! hop, the outbox, the database (a revocation and an incident keep the context that started
//! them) and the OP calls, reassembled from what was actually exported over OTLP.

use std::time::Duration;

use custodian_testkit::eventually;
use custodian_testkit::otlp::{OtlpReceiver, ReceivedSpan};
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{Stack, unique};
use crate::vault::done_receipt;

/// A fresh caller context: (traceparent, trace id, span id).
fn caller_context() -> (String, String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let span = id[..16].to_owned();
    let trace = uuid::Uuid::new_v4().simple().to_string();
    (format!("00-{trace}-{span}-01"), trace, span)
}

/// What the receiver holds, in the indexes the reassembly walks.
struct Exported {
    spans: Vec<ReceivedSpan>,
}

impl Exported {
    fn get() -> Self {
        custodian_telemetry::flush();
        Self { spans: OtlpReceiver::shared().spans() }
    }

    fn children<'a>(&'a self, parent: &'a ReceivedSpan) -> impl Iterator<Item = &'a ReceivedSpan> + 'a {
        self.spans.iter().filter(|s| s.trace_id == parent.trace_id && s.parent_span_id == parent.span_id)
    }

    fn linking_to<'a>(&'a self, target: &'a ReceivedSpan) -> impl Iterator<Item = &'a ReceivedSpan> + 'a {
        self.spans.iter().filter(|s| s.links.iter().any(|(t, id)| *t == target.trace_id && *id == target.span_id))
    }

    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a ReceivedSpan> + 'a {
        self.spans.iter().filter(move |s| s.name == name)
    }
}

/// The path of one revocation through the services, or what is missing yet.
#[derive(Debug)]
struct RevocationTrace {
    spans: Vec<ReceivedSpan>,
}

fn reassemble(
    exported: &Exported,
    trace_id: &str,
    caller_span: &str,
    revocation_id: &str,
    ended_event_id: &str,
    views: usize,
) -> Result<RevocationTrace, String> {
    let mut path = Vec::new();
    let request = exported
        .spans
        .iter()
        .find(|s| {
            s.trace_id == trace_id
                && s.parent_span_id == caller_span
                && s.attribute("http.route") == Some("/v1/me/consents/{platform_id}")
        })
        .ok_or("no http_request span under the caller's")?;
    path.push(request.clone());
    let revocation = exported
        .children(request)
        .find(|s| s.name == "person_revocation" && s.attribute("revocation_id") == Some(revocation_id))
        .ok_or("no person_revocation span under the request")?;
    path.push(revocation.clone());
    // The ledger's batch links to the revocation's span; the `consent.ended` it wrote is
    // published by the relay under that batch. The event comes twice, from the stream and as a
    // nudge: each is a batch (`handle_batch`, `handle_nudges`) linking to it, and the first
    // applied wrote `consent.ended`.
    let relayed = exported
        .named("outbox_publish")
        .find(|s| s.attribute("event_id") == Some(ended_event_id))
        .ok_or("consent.ended not relayed in a span")?;
    let batch = exported
        .linking_to(revocation)
        .filter(|s| matches!(s.name.as_str(), "handle_batch" | "handle_nudges") && s.service == "custodian-consent")
        .find(|batch| relayed.trace_id == batch.trace_id && relayed.parent_span_id == batch.span_id)
        .ok_or_else(|| {
            format!("consent.ended's relay span is not under a batch linking to the revocation: {relayed:?}")
        })?;
    path.push(batch.clone());
    path.push(relayed.clone());
    // The vault applies it as a child of the relay's span (once per copy), and drives the
    // revocation from the copy it applied first.
    let applied = exported
        .children(relayed)
        .filter(|s| s.name == "vault_event" && s.service == "custodian-vault")
        .find(|applied| exported.children(applied).any(|s| s.name == "revoke_token"))
        .ok_or("the vault's handling of consent.ended is not under its relay span")?;
    path.push(applied.clone());
    let calls: Vec<&ReceivedSpan> = exported.children(applied).filter(|s| s.name == "revoke_token").collect();
    let mut kinds: Vec<&str> = calls.iter().filter_map(|s| s.attribute("token_kind")).collect();
    kinds.sort_unstable();
    if kinds != ["access", "refresh"] || calls.iter().any(|s| s.attribute("outcome") != Some("revoked")) {
        return Err(format!("not both RFC 7009 calls, each revoked: {calls:?}"));
    }
    // Each call's `token.revoked` is relayed under the call that settled it.
    for call in &calls {
        let relayed = exported
            .children(call)
            .find(|s| {
                s.name == "outbox_publish"
                    && s.attribute("messaging.destination.name") == Some("lifecycle.token.revoked")
            })
            .ok_or("a token's revocation without its token.revoked relayed under it")?;
        path.push(relayed.clone());
    }
    path.extend(calls.into_iter().cloned());
    let sends: Vec<&ReceivedSpan> = exported.children(applied).filter(|s| s.name == "send_wipe").collect();
    if sends.len() < views {
        return Err(format!("{} wipe commands traced, {views} views", sends.len()));
    }
    for send in sends {
        path.push(send.clone());
        let wiped = exported
            .children(send)
            .find(|s| s.name == "wipe_sessions" && s.service == "custodian-view")
            .ok_or("a wipe command without the view's wipe under it")?;
        path.push(wiped.clone());
        let ack = exported
            .children(wiped)
            .find(|s| s.name == "vault_event" && s.service == "custodian-vault")
            .ok_or("a view's wipe without the vault's handling of its ack under it")?;
        path.push(ack.clone());
    }
    Ok(RevocationTrace { spans: path })
}

#[tokio::test]
async fn a_revocation_sent_with_a_traceparent_is_one_trace_to_the_last_view_ack() {
    let mut stack = Stack::start().await;
    let (client, settings) = stack.register_platform().await;
    let platform = client.client_id.clone();
    stack.start_vault(crate::support::test_vault_config(vec![settings]));
    let person = unique("tracy");
    let (browser, cookie, _) = stack.login_through_gateway(&person).await;
    eventually("the login to grant consent", Duration::from_secs(15), || {
        let (browser, url) = (browser.clone(), stack.url("/v1/me/consents"));
        async move {
            let body: Value = browser.get(url).send().await.ok()?.json().await.ok()?;
            (!body["consents"].as_array()?.is_empty()).then_some(())
        }
    })
    .await;
    let views = [stack.start_view(&unique("trace-a")).await, stack.start_view(&unique("trace-b")).await];
    for view in &views {
        view.start_session(None, &person, &platform, Duration::from_secs(10)).await.expect("a session");
    }

    // The person's tokens as the vault holds them: no span may carry any of them.
    let tokens: Vec<String> = crate::support::stored_bundles(&stack)
        .await
        .into_iter()
        .filter(|(row, _)| row.subject == person)
        .flat_map(|(_, b)| {
            [Some(b.access_token.clone()), b.refresh_token.clone(), b.id_token.clone()].into_iter().flatten()
        })
        .collect();
    assert!(tokens.len() >= 2, "the person's access and refresh tokens");

    let (traceparent, trace_id, caller_span) = caller_context();
    let response = browser
        .delete(stack.url(&format!("/v1/me/consents/{platform}")))
        .header("traceparent", &traceparent)
        .send()
        .await
        .expect("revoke");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.expect("body");
    let revocation_id = accepted["revocation_id"].as_str().expect("revocation id").to_owned();
    let receipt = done_receipt(&stack, Some(&cookie), &revocation_id, Duration::from_secs(30)).await;
    assert_eq!(receipt.views.len(), 2, "{receipt:?}");

    // The exporters send every 100 ms; the receiver's view is read until the path is whole.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let trace = loop {
        match reassemble(&Exported::get(), &trace_id, &caller_span, &revocation_id, &receipt.ended_event_id, 2) {
            Ok(trace) => break trace,
            Err(missing) if std::time::Instant::now() > deadline => {
                let exported = Exported::get();
                let names: std::collections::BTreeSet<(&str, &str)> =
                    exported.spans.iter().map(|s| (s.service.as_str(), s.name.as_str())).collect();
                panic!(
                    "the revocation's trace is broken: {missing} ({} spans exported: {names:?})",
                    exported.spans.len()
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };

    // Each span under the name of the service that made it, though all run in this process.
    let services: std::collections::BTreeSet<&str> = trace.spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        vec!["custodian-consent", "custodian-gateway", "custodian-vault", "custodian-view"],
        "{trace:?}"
    );
    assert_eq!(trace.spans[0].name, "DELETE /v1/me/consents/{platform_id}", "named by method and route");
    assert_eq!(trace.spans[0].attribute("http.response.status_code"), Some("202"));

    // The login's OP calls, each a client span of the vault that made it, with its outcome.
    let everything = Exported::get();
    for call in ["oidc_code_exchange", "oidc_introspect"] {
        assert!(
            everything.named(call).any(|s| s.service == "custodian-vault" && s.attribute("outcome") == Some("ok")),
            "no {call} span of the vault's"
        );
    }
    // No attribute or event of any exported span holds the person, their cookie or a token.
    for span in &everything.spans {
        for value in span.attributes.values().chain(&span.events) {
            assert!(!value.contains(&person), "span {} carries the person's identity: {value}", span.name);
            assert!(!value.contains(&cookie), "span {} carries the session cookie", span.name);
            assert!(!value.contains("eyJ"), "span {} carries what looks like a JWT: {value}", span.name);
            assert!(!tokens.iter().any(|t| value.contains(t.as_str())), "span {} carries one of the tokens", span.name);
        }
    }
}

#[tokio::test]
async fn an_incident_reported_with_a_traceparent_is_one_trace_through_its_steps_smtp_and_containment() {
    use crate::incidents::{closed, incident_config, people_with_sessions};
    let mut stack = Stack::start().await;
    let smtp = custodian_testkit::SmtpServer::start();
    let (client, settings) = stack.register_platform().await;
    let platform = client.client_id.clone();
    stack.start_vault(crate::support::test_vault_config(vec![settings]));
    let _views = people_with_sessions(&mut stack, &platform, 1).await;
    stack.start_incident(incident_config(&stack, &smtp, &client));

    let (traceparent, trace_id, caller_span) = caller_context();
    let response = stack
        .http
        .post(stack.url("/v1/incidents"))
        .bearer_auth(crate::support::RESPONDER_TOKEN)
        .header("traceparent", &traceparent)
        .json(&serde_json::json!({"kind": "platform_compromise", "platform_id": platform, "summary": "secret leaked"}))
        .send()
        .await
        .expect("report");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let incident_id = response.json::<Value>().await.expect("body")["incident_id"].as_str().expect("id").to_owned();
    closed(&stack, &incident_id, Duration::from_secs(60)).await;

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let exported = Exported::get();
        let found = (|| {
            let request = exported
                .spans
                .iter()
                .find(|s| s.trace_id == trace_id && s.parent_span_id == caller_span)
                .ok_or("no request span under the caller's")?;
            let registered = exported
                .spans
                .iter()
                .find(|s| s.name == "register_incident" && s.attribute("incident_id") == Some(incident_id.as_str()))
                .ok_or("no register_incident span")?;
            if registered.trace_id != trace_id || registered.service != "custodian-incident" {
                return Err("the registration is not in the caller's trace, under the incident service");
            }
            let _ = request;
            let steps: Vec<&ReceivedSpan> = exported
                .children(registered)
                .filter(|s| s.name == "incident_step" && s.attribute("outcome") == Some("done"))
                .collect();
            let step = |name: &str| steps.iter().copied().find(|s| s.attribute("step") == Some(name));
            let notify = step("notify_dpo").ok_or("notify_dpo not done under the registration")?;
            exported
                .children(notify)
                .find(|s| s.name == "smtp_send" && s.attribute("outcome") == Some("accepted"))
                .ok_or("no accepted smtp_send under notify_dpo")?;
            // Containment: the command to the vault, relayed and applied in the same trace.
            let contain = exported
                .spans
                .iter()
                .find(|s| s.trace_id == trace_id && s.name == "incident_step" && s.attribute("step") == Some("contain"))
                .ok_or("no contain step")?;
            let relayed = exported
                .children(contain)
                .find(|s| s.name == "outbox_publish")
                .ok_or("the containment command is not relayed under its step")?;
            exported
                .children(relayed)
                .find(|s| s.name == "vault_event" && s.service == "custodian-vault")
                .ok_or("the vault's containment is not under the command's relay")?;
            for name in ["report_containment", "rotate_credentials", "report_rotation", "final_report"] {
                step(name).ok_or("a later step is missing from the trace")?;
            }
            // The rotation at the OP (RFC 7592) and the checks of which secret authenticates.
            let rotate = step("rotate_credentials").ok_or("no rotate_credentials step")?;
            let rotated = exported
                .children(rotate)
                .find(|s| s.name == "rfc7592_rotate" && s.attribute("outcome") == Some("rotated"))
                .ok_or("no rfc7592_rotate span under rotate_credentials")?;
            if rotated.attribute("platform_id") != Some(platform.as_str()) {
                return Err("the rotation span does not name the platform");
            }
            let checks: Vec<_> =
                exported.spans.iter().filter(|s| s.trace_id == trace_id && s.name == "client_secret_check").collect();
            let outcomes: Vec<_> = checks.iter().filter_map(|s| s.attribute("outcome")).collect();
            if !outcomes.contains(&"authenticates") || !outcomes.contains(&"refused") {
                return Err("the new secret's check and the old one's refusal are not both in the trace");
            }
            Ok(())
        })();
        match found {
            Ok(()) => break,
            Err(missing) if std::time::Instant::now() > deadline => panic!("the incident's trace is broken: {missing}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// An event a platform publishes with the CloudEvents `traceparent` extension continues the
/// platform's trace; the consent ledger's batch links to it.
#[tokio::test]
async fn a_cloudevent_traceparent_is_the_parent_of_its_publish_and_the_ledger_links_to_it() {
    let stack = Stack::start().await;
    let (traceparent, trace_id, caller_span) = caller_context();
    let person = unique("ce");
    let mut event = custodian_events::CloudEvent::new(
        "urn:test:platform",
        crate::support::at(0),
        custodian_events::ConsentGrantedV1 {
            issuer: stack.provider.issuer.clone(),
            subject: person,
            platform_id: "tp-health".into(),
            scopes: vec!["openid".into()],
            acr: None,
        },
    );
    event.traceparent = Some(traceparent);
    let response = stack
        .http
        .post(stack.url("/v1/events"))
        .bearer_auth(crate::support::PLATFORM_TOKEN)
        .header("content-type", "application/cloudevents+json")
        .body(event.to_json())
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let exported = Exported::get();
        let publish = exported
            .spans
            .iter()
            .find(|s| s.name == "publish_event" && s.trace_id == trace_id && s.parent_span_id == caller_span);
        if let Some(publish) = publish {
            assert_eq!(publish.service, "custodian-gateway");
            assert_eq!(publish.attribute("platform_id"), Some("tp-health"));
            if exported.linking_to(publish).any(|s| s.name == "handle_batch" && s.service == "custodian-consent") {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no publish_event under the event's traceparent, linked by a batch"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A sweep asked for with a `traceparent` runs in the caller's trace, on the sweeper that
/// takes it: each page's `consent.expire` commands are relayed under the page, and the ledger's
/// batch that applies them links to their publish.
#[tokio::test]
async fn a_sweep_requested_with_a_traceparent_is_one_trace_through_its_pages_to_the_ledger() {
    let mut stack = Stack::start().await;
    let mut config = crate::support::test_sweeper_config();
    config.batch = 2;
    stack.start_sweeper("traced", config);
    let run = unique("traced-idle");
    crate::sweeps::grant_idle(&stack, &run, "tp", 3).await;

    let (traceparent, trace_id, caller_span) = caller_context();
    let response = stack
        .http
        .post(stack.url("/v1/sweeps"))
        .bearer_auth(crate::support::OPS_TOKEN)
        .header("traceparent", &traceparent)
        .json(&serde_json::json!({"platform_id": "tp", "inactivity_days": 90}))
        .send()
        .await
        .expect("sweep");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let sweep_id = response.json::<Value>().await.expect("body")["sweep_id"].as_str().expect("id").to_owned();

    custodian_testkit::eventually_explained("the sweep's trace whole", Duration::from_secs(30), || async {
        let exported = Exported::get();
        (|| {
            exported
                .spans
                .iter()
                .find(|s| s.trace_id == trace_id && s.parent_span_id == caller_span)
                .ok_or("no request span under the caller's")?;
            let sweep = exported
                .named("sweep")
                .find(|s| s.attribute("sweep_id") == Some(sweep_id.as_str()))
                .ok_or("no sweep span")?;
            if sweep.trace_id != trace_id || sweep.service != "custodian-sweeper" {
                return Err("the sweep's run is not in the caller's trace, under the sweeper");
            }
            let pages: Vec<&ReceivedSpan> = exported.children(sweep).filter(|s| s.name == "sweep_page").collect();
            let swept: usize = pages.iter().filter_map(|p| p.attribute("size")?.parse::<usize>().ok()).sum();
            if pages.len() < 2 || swept < 3 {
                return Err("not every page of the sweep is under its run");
            }
            for page in pages {
                let relayed: Vec<&ReceivedSpan> =
                    exported.children(page).filter(|s| s.name == "outbox_publish").collect();
                if relayed.is_empty() {
                    return Err("a page's commands are not relayed under it");
                }
                for publish in relayed {
                    exported
                        .linking_to(publish)
                        .find(|s| s.name == "handle_batch" && s.service == "custodian-consent")
                        .ok_or("the ledger's batch does not link to a command's publish")?;
                }
            }
            Ok(())
        })()
        .map_err(str::to_owned)
    })
    .await;
}
