//! The gateway's edge, tried as other platforms would: a platform token speaks for its own
//! platforms only, says only what platforms may say, in its own name, and cannot date a fact
//! past the clock.

use std::time::Duration;

use custodian_events::{
    CloudEvent, ConsentGrantedV1, ConsentRevokedV1, IncidentKind, IncidentReportedV1, RevokeReason, SessionClosedV1,
    subjects,
};
use custodian_testkit::eventually;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{OTHER_PLATFORM, OTHER_PLATFORM_TOKEN, PLATFORM_TOKEN, Stack, unique};

async fn publish(stack: &Stack, token: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let r = stack.http.post(stack.url("/v1/events")).bearer_auth(token).body(body).send().await.expect("POST");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn grant(
    stack: &Stack,
    person: &str,
    platform: &str,
    time: chrono::DateTime<chrono::Utc>,
) -> CloudEvent<ConsentGrantedV1> {
    CloudEvent::new(
        "urn:test:platform",
        time,
        ConsentGrantedV1 {
            issuer: stack.provider.issuer.clone(),
            subject: person.into(),
            platform_id: platform.into(),
            scopes: vec!["openid".into()],
            acr: None,
        },
    )
}

fn revoke(stack: &Stack, person: &str, platform: &str, reason: RevokeReason) -> CloudEvent<ConsentRevokedV1> {
    CloudEvent::new(
        "urn:test:platform",
        stack.clock.now(),
        ConsentRevokedV1 {
            issuer: stack.provider.issuer.clone(),
            subject: person.into(),
            platform_id: platform.into(),
            reason,
            actor: Some("person".into()),
        },
    )
}

#[tokio::test]
async fn a_platform_token_speaks_only_for_its_own_platforms_in_its_own_name() {
    let stack = Stack::start().await;
    let person = unique("ines");
    let now = stack.clock.now();
    let incident = CloudEvent::new(
        "urn:test:platform",
        now,
        IncidentReportedV1 {
            incident_id: unique("inc"),
            kind: IncidentKind::PlatformCompromise,
            platform_id: "tp".into(),
            subject: None,
            issuer: None,
            summary: "forged".into(),
            detected_at: now,
            reporter: "mallory".into(),
        },
    );
    let closed =
        CloudEvent::new("urn:test:platform", now, SessionClosedV1 { session_id: "s".into(), view_id: "v".into() });
    for (token, body, needle) in [
        (PLATFORM_TOKEN, grant(&stack, &person, OTHER_PLATFORM, now).to_json(), "not for platform tp-other"),
        (OTHER_PLATFORM_TOKEN, grant(&stack, &person, "tp", now).to_json(), "not for platform tp"),
        (PLATFORM_TOKEN, revoke(&stack, &person, OTHER_PLATFORM, RevokeReason::Platform).to_json(), "not for platform"),
        (PLATFORM_TOKEN, revoke(&stack, &person, "tp", RevokeReason::User).to_json(), "in its own name"),
        (PLATFORM_TOKEN, revoke(&stack, &person, "tp", RevokeReason::Incident).to_json(), "in its own name"),
        (PLATFORM_TOKEN, incident.to_json(), "POST /v1/incidents"),
        (PLATFORM_TOKEN, closed.to_json(), "views only"),
    ] {
        let (status, problem) = publish(&stack, token, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
        assert!(problem["detail"].as_str().unwrap_or_default().contains(needle), "{needle}: {problem}");
    }
    // Nor may a platform file an incident on the responders' endpoint.
    let r = stack
        .http
        .post(stack.url("/v1/incidents"))
        .bearer_auth(PLATFORM_TOKEN)
        .json(&json!({"kind": "platform_compromise", "platform_id": "tp", "summary": "forged"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(stack.count_on("lifecycle.>").await, 0, "nothing refused reached the stream");

    // What each may say, it says in its own name.
    let (status, _) =
        publish(&stack, OTHER_PLATFORM_TOKEN, grant(&stack, &person, OTHER_PLATFORM, now).to_json()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) =
        publish(&stack, PLATFORM_TOKEN, revoke(&stack, &person, "tp", RevokeReason::Platform).to_json()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let revocations = stack.messages_on(subjects::CONSENT_REVOKED).await;
    assert_eq!(revocations.len(), 1);
    let stored = &revocations[0].1;
    assert_eq!(stored["data"]["actor"], "platform:test-platform", "the claimed actor is replaced: {stored}");
    assert_eq!(stored["data"]["reason"], "platform");
    assert_eq!(stored["source"], "urn:custodian:gateway/platform/test-platform", "{stored}");
    let grants = stack.messages_on(subjects::CONSENT_GRANTED).await;
    assert_eq!(grants[0].1["source"], "urn:custodian:gateway/platform/test-other-platform");
}

#[tokio::test]
async fn a_fact_dated_past_the_clock_is_refused_and_the_persons_revocation_ends_what_they_were_shown() {
    let stack = Stack::start().await;
    let person = unique("jonas");
    let tokens = stack.provider.login(&person).await;
    let id_token = tokens.id_token.expect("an ID token");

    // Far in the future: refused, nothing published.
    let far = chrono::DateTime::parse_from_rfc3339("9999-12-31T00:00:00Z").expect("date").to_utc();
    let (status, problem) = publish(&stack, PLATFORM_TOKEN, grant(&stack, &person, "tp", far).to_json()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert!(problem["detail"].as_str().unwrap_or_default().contains("past the gateway's clock"), "{problem}");
    assert_eq!(stack.count_on("lifecycle.>").await, 0);

    // A few minutes ahead (a platform's clock running fast) is taken, dated at arrival.
    let before = stack.clock.now();
    let ahead = before + chrono::Duration::minutes(4);
    let (status, problem) = publish(&stack, PLATFORM_TOKEN, grant(&stack, &person, "tp", ahead).to_json()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{problem}");
    let stored = stack.messages_on(subjects::CONSENT_GRANTED).await;
    let time = chrono::DateTime::parse_from_rfc3339(stored[0].1["time"].as_str().expect("time")).expect("rfc3339");
    assert!(time.to_utc() <= stack.clock.now() && time.to_utc() >= before, "dated at arrival: {time}");

    // So the person's revocation, right after, ends it: the ledger says revoked, and the
    // consent.ended that the vault and the views act on is published.
    eventually("the grant in the ledger", Duration::from_secs(15), || async {
        let q = custodian_events::queries::ConsentQuery { subject: Some(person.clone()), ..Default::default() };
        stack.ledger(q).await.iter().any(|c| c.state == "granted").then_some(())
    })
    .await;
    let r = stack.http.delete(stack.url("/v1/me/consents/tp")).bearer_auth(&id_token).send().await.expect("DELETE");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    eventually("the consent to be revoked", Duration::from_secs(15), || async {
        let q = custodian_events::queries::ConsentQuery { subject: Some(person.clone()), ..Default::default() };
        stack.ledger(q).await.iter().any(|c| c.state == "revoked").then_some(())
    })
    .await;
    assert_eq!(stack.count_on_settled(subjects::CONSENT_ENDED, 1).await, 1);

    // On the bus, where only Custodian's own identities publish facts, a far-dated one is
    // dead-lettered with its id and the reason, and the ledger does not take it.
    let other = unique("kato");
    let event = grant(&stack, &other, "tp", stack.clock.now() + chrono::Duration::days(1));
    stack.bus.publish_event(subjects::CONSENT_GRANTED, &event).await.expect("publish");
    let letters = eventually("the consent service's dead letter", Duration::from_secs(20), || async {
        let letters = stack.messages_on("lifecycle.deadletter.consent").await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    let letter = &letters[0].1["data"];
    assert_eq!(letter["original_id"], event.id.as_str(), "{letter}");
    assert!(letter["reason"].as_str().unwrap_or_default().contains("past this consumer's clock"), "{letter}");
    let q = custodian_events::queries::ConsentQuery { subject: Some(other.clone()), ..Default::default() };
    assert!(stack.ledger(q).await.is_empty(), "the far-dated grant was not applied");
}
