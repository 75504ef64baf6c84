//! A person's consents through the gateway, identified by real tokens from the real OP.

use std::time::Duration;

use custodian_events::queries::ConsentQuery;
use custodian_events::{ActivitySeenV1, CloudEvent, ConsentExpireV1, ConsentGrantedV1, subjects};
use custodian_testkit::eventually;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{PLATFORM_TOKEN, Stack, at, unique};

fn grant(issuer: &str, subject: &str, platform: &str, offset: i64) -> CloudEvent<ConsentGrantedV1> {
    CloudEvent::new(
        "urn:test:platform",
        at(offset),
        ConsentGrantedV1 {
            issuer: issuer.into(),
            subject: subject.into(),
            platform_id: platform.into(),
            scopes: vec!["openid".into(), "offline_access".into()],
            acr: Some("urn:custodian:acr:substantial".into()),
        },
    )
}

async fn my_consents(stack: &Stack, token: &str) -> (StatusCode, Value) {
    let response =
        stack.http.get(stack.url("/v1/me/consents")).bearer_auth(token).send().await.expect("GET /v1/me/consents");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn granted_consent_is_listed_for_the_person_and_revocation_ends_it_once() {
    let stack = Stack::start().await;
    let person = unique("alice");
    let tokens = stack.provider.login(&person).await;
    let id_token = tokens.id_token.expect("an ID token from the OP");

    // A platform reports the grant over HTTP, as the contract allows.
    let event = grant(&stack.provider.issuer, &person, "tp-health", 0);
    let response = stack
        .http
        .post(stack.url("/v1/events"))
        .bearer_auth(PLATFORM_TOKEN)
        .header("content-type", "application/cloudevents+json")
        .body(event.to_json())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let listed = eventually("the grant to be listed", Duration::from_secs(10), || async {
        let (status, body) = my_consents(&stack, &id_token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (body["consents"].as_array().map(Vec::len) == Some(1)).then_some(body)
    })
    .await;
    let consent = &listed["consents"][0];
    assert_eq!(consent["platform_id"], "tp-health");
    assert_eq!(consent["state"], "granted");
    assert_eq!(consent["scopes"], serde_json::json!(["openid", "offline_access"]));
    assert_eq!(consent["subject"], person.as_str());

    // The person revokes.
    let response =
        stack.http.delete(stack.url("/v1/me/consents/tp-health")).bearer_auth(&id_token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    let revocation_id = body["revocation_id"].as_str().expect("revocation id").to_owned();

    eventually("consent.ended", Duration::from_secs(10), || async {
        (stack.count_on(subjects::CONSENT_ENDED).await == 1).then_some(())
    })
    .await;
    let (_, body) = my_consents(&stack, &id_token).await;
    assert_eq!(body["consents"][0]["state"], "revoked");

    // Replaying the revocation (same id) and revoking again changes nothing more.
    let revoked = stack.messages_on(subjects::CONSENT_REVOKED).await;
    assert_eq!(revoked.len(), 1);
    let replayed = stack.publish_raw(subjects::CONSENT_REVOKED, serde_json::to_vec(&revoked[0].1).unwrap()).await;
    stack.processed_through("consent", replayed).await;
    // Revoking again is the same revocation: same id, nothing new on the stream.
    let again = stack.http.delete(stack.url("/v1/me/consents/tp-health")).bearer_auth(&id_token).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["revocation_id"], revocation_id.as_str(), "the same revocation");
    assert_eq!(stack.messages_on(subjects::CONSENT_REVOKED).await.len(), 2, "the original and the replay, no third");
    let view =
        stack.ledger(ConsentQuery { subject: Some(person.clone()), with_history: true, ..Default::default() }).await;
    assert_eq!(view[0].history.len(), 2, "the grant and one revocation: {:?}", view[0].history);
    let ended = stack.messages_on(subjects::CONSENT_ENDED).await;
    assert_eq!(ended.len(), 1, "consent.ended is published exactly once");
    assert_eq!(ended[0].1["data"]["reason"], "revoked");
    assert_eq!(ended[0].1["data"]["cause_event_id"], revocation_id.as_str());
    assert_eq!(ended[0].1["data"]["subject"], person.as_str());
}

#[tokio::test]
async fn activity_moves_last_seen() {
    let stack = Stack::start().await;
    let person = unique("carol");
    stack.publish(subjects::CONSENT_GRANTED, &grant("https://op.example", &person, "tp-a", 0)).await;
    let seen = CloudEvent::new(
        "urn:test:platform",
        at(3600),
        ActivitySeenV1 { issuer: "https://op.example".into(), subject: person.clone(), platform_id: "tp-a".into() },
    );
    stack.publish(subjects::ACTIVITY_SEEN, &seen).await;
    let query = ConsentQuery { subject: Some(person.clone()), ..Default::default() };
    let view = eventually("last_seen to move", Duration::from_secs(10), || async {
        stack.ledger(query.clone()).await.into_iter().find(|v| v.last_seen_at == Some(at(3600)))
    })
    .await;
    assert_eq!(view.state, "granted");
    assert_eq!(view.granted_at, Some(at(0)));
}

/// Activity after an expiry's `idle_since` cancels the expiry, also when it arrives in a
/// later batch on its own (the ledger then writes only what an activity report can change:
/// last seen, state, end).
#[tokio::test]
async fn activity_arriving_after_an_expiry_restores_the_consent() {
    let stack = Stack::start().await;
    let person = unique("erin");
    let query = ConsentQuery { subject: Some(person.clone()), ..Default::default() };
    stack.publish(subjects::CONSENT_GRANTED, &grant("https://op.example", &person, "tp-a", 0)).await;
    eventually("the grant", Duration::from_secs(10), || async {
        stack.ledger(query.clone()).await.into_iter().find(|v| v.state == "granted")
    })
    .await;
    let expire = CloudEvent::new(
        "urn:custodian:sweeper",
        at(1000),
        ConsentExpireV1 {
            issuer: "https://op.example".into(),
            subject: person.clone(),
            platform_id: "tp-a".into(),
            sweep_id: "sweep-test".into(),
            idle_since: at(0),
        },
    );
    stack.publish(subjects::CONSENT_EXPIRE, &expire).await;
    let expired = eventually("the expiry", Duration::from_secs(10), || async {
        stack.ledger(query.clone()).await.into_iter().find(|v| v.state == "expired")
    })
    .await;
    assert_eq!(expired.ended_at, Some(at(1000)));

    let seen = CloudEvent::new(
        "urn:test:platform",
        at(500),
        ActivitySeenV1 { issuer: "https://op.example".into(), subject: person.clone(), platform_id: "tp-a".into() },
    );
    stack.publish(subjects::ACTIVITY_SEEN, &seen).await;
    let restored = eventually("the activity to cancel the expiry", Duration::from_secs(10), || async {
        stack.ledger(query.clone()).await.into_iter().find(|v| v.last_seen_at == Some(at(500)))
    })
    .await;
    assert_eq!(restored.state, "granted", "seen after idle_since: the expiry no longer counts");
    assert_eq!(restored.ended_at, None);
    assert_eq!(restored.granted_at, Some(at(0)), "the grant itself is untouched");
    assert_eq!(restored.scopes, vec!["openid".to_owned(), "offline_access".to_owned()]);
}

#[tokio::test]
async fn a_person_sees_and_revokes_only_their_own_consents() {
    let stack = Stack::start().await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    stack.publish(subjects::CONSENT_GRANTED, &grant(&stack.provider.issuer, &alice, "tp-1", 0)).await;
    stack.publish(subjects::CONSENT_GRANTED, &grant(&stack.provider.issuer, &bob, "tp-2", 0)).await;
    let bob_token = stack.provider.login(&bob).await.id_token.expect("id token");

    let body = eventually("bob's consent", Duration::from_secs(10), || async {
        let (status, body) = my_consents(&stack, &bob_token).await;
        assert_eq!(status, StatusCode::OK);
        (body["consents"].as_array().map(Vec::len) == Some(1)).then_some(body)
    })
    .await;
    assert_eq!(body["consents"][0]["platform_id"], "tp-2", "bob never sees alice's platform");

    // Bob cannot revoke alice's consent: he has none for tp-1.
    let response = stack.http.delete(stack.url("/v1/me/consents/tp-1")).bearer_auth(&bob_token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    // Alice's grant may be applied after bob's (the ledger applies batches side by side).
    let alice_view = eventually("alice's consent in the ledger", Duration::from_secs(10), || async {
        let view = stack.ledger(ConsentQuery { subject: Some(alice.clone()), ..Default::default() }).await;
        (!view.is_empty()).then_some(view)
    })
    .await;
    assert_eq!(alice_view[0].state, "granted", "bob's DELETE left alice's consent in force");

    // A person is not an operator.
    let response = stack.http.get(stack.url("/v1/consents")).bearer_auth(&bob_token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

/// The grant's time comes from the platform's (or the vault's) clock, which may run ahead of
/// the gateway's: the person's revocation still ends it. A later grant is a new consent, and
/// revoking it is a new revocation with an id of its own.
#[tokio::test]
async fn a_revocation_ends_a_grant_dated_ahead_of_the_gateway_clock_and_a_regrant_is_revoked_anew() {
    let stack = Stack::start().await;
    let person = unique("dora");
    let id_token = stack.provider.login(&person).await.id_token.expect("id token");
    let ahead = |secs| stack.clock.now() + chrono::Duration::seconds(secs);
    let granted_and_revoked = |n: u64| {
        let stack = &stack;
        let person = person.clone();
        async move {
            eventually("the revocation to apply", Duration::from_secs(10), || async {
                let view = stack.ledger(ConsentQuery { subject: Some(person.clone()), ..Default::default() }).await;
                (view.first().map(|c| c.state.as_str()) == Some("revoked")).then_some(())
            })
            .await;
            assert_eq!(stack.count_on_settled(subjects::CONSENT_ENDED, n).await, n);
        }
    };
    let revoke = || async {
        let response =
            stack.http.delete(stack.url("/v1/me/consents/tp-ahead")).bearer_auth(&id_token).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        response.json::<Value>().await.unwrap()["revocation_id"].as_str().expect("revocation id").to_owned()
    };
    let granted = || async {
        eventually("the grant", Duration::from_secs(10), || async {
            let view = stack.ledger(ConsentQuery { subject: Some(person.clone()), ..Default::default() }).await;
            (view.first().map(|c| c.state.as_str()) == Some("granted")).then_some(())
        })
        .await
    };

    let mut first = grant(&stack.provider.issuer, &person, "tp-ahead", 0);
    first.time = ahead(60);
    stack.publish(subjects::CONSENT_GRANTED, &first).await;
    granted().await;
    let first_revocation = revoke().await;
    granted_and_revoked(1).await;

    let mut second = grant(&stack.provider.issuer, &person, "tp-ahead", 0);
    second.time = ahead(120);
    stack.publish(subjects::CONSENT_GRANTED, &second).await;
    granted().await;
    let second_revocation = revoke().await;
    assert_ne!(second_revocation, first_revocation, "a new grant's revocation is a new revocation");
    granted_and_revoked(2).await;
    let ended = stack.messages_on(subjects::CONSENT_ENDED).await;
    let causes: Vec<&str> = ended.iter().filter_map(|(_, e)| e["data"]["cause_event_id"].as_str()).collect();
    assert_eq!(causes, vec![first_revocation.as_str(), second_revocation.as_str()]);
}
