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

pub(crate) fn grant(
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

/// A back-channel logout without a token: refused (400) before anything else is done.
async fn empty_logout(stack: &Stack) -> reqwest::Response {
    stack.http.post(stack.url("/oidc/backchannel-logout")).form(&[("nothing", "")]).send().await.expect("POST")
}

#[tokio::test]
async fn callers_are_rate_limited_per_address_and_per_token_with_a_problem_and_retry_after() {
    use custodian_gateway::limits::Rate;
    let mut stack = Stack::start().await;
    stack.gateway_limits.per_address = Rate { burst: 3, replenish_ms: 60_000 };
    stack.gateway_limits.per_caller = Rate { burst: 2, replenish_ms: 60_000 };
    stack.restart_gateway().await;

    for _ in 0..3 {
        assert_eq!(empty_logout(&stack).await.status(), StatusCode::BAD_REQUEST);
    }
    let limited = empty_logout(&stack).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().expect("seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(limited.headers()["content-type"], "application/problem+json");
    let problem: Value = limited.json().await.expect("json");
    assert_eq!(problem["status"], 429);
    // Routes that write nothing for strangers are not limited.
    assert_eq!(stack.http.get(stack.url("/healthz")).send().await.unwrap().status(), StatusCode::OK);

    // /v1/events: per token as well (the address' budget is spent already, so a
    // fresh gateway with room per address shows the per-token bucket alone).
    stack.gateway_limits.per_address = Rate { burst: 100, replenish_ms: 60_000 };
    stack.restart_gateway().await;
    let now = stack.clock.now();
    for _ in 0..2 {
        let (status, problem) = publish(&stack, PLATFORM_TOKEN, grant(&stack, &unique("p"), "tp", now).to_json()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{problem}");
    }
    let (status, problem) = publish(&stack, PLATFORM_TOKEN, grant(&stack, &unique("p"), "tp", now).to_json()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{problem}");
    let (status, problem) =
        publish(&stack, OTHER_PLATFORM_TOKEN, grant(&stack, &unique("p"), OTHER_PLATFORM, now).to_json()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "another caller has a bucket of its own: {problem}");
    assert_eq!(stack.count_on(subjects::CONSENT_GRANTED).await, 3, "the refused event was not published");
}

#[tokio::test]
async fn a_connection_that_sends_its_headers_slowly_is_closed_and_the_connection_cap_holds() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stack = Stack::start().await;
    // Long enough that the idle connections below still hold their places when the third is
    // checked on a loaded machine.
    stack.gateway_limits.serve.header_read_timeout_ms = 3_000;
    stack.gateway_limits.serve.max_connections = 2;
    stack.restart_gateway().await;
    let addr = stack.gateway_url.trim_start_matches("http://").trim_end_matches('/').to_owned();

    // Slowloris: half a request head, then nothing. The gateway closes the connection.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.expect("write");
    let started = std::time::Instant::now();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buffer)).await;
    assert!(read.is_ok(), "the half-sent request was still open after 10 s");
    assert!(started.elapsed() >= Duration::from_millis(1_500), "closed by the timeout, not at once");
    drop(slow);

    // Two idle connections take both places; a third waits until the timeout frees one.
    let _idle_a = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let _idle_b = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = tokio::spawn({
        let client = stack.http.clone();
        let url = stack.url("/healthz");
        async move { client.get(url).send().await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!third.is_finished(), "the third connection was served while two others held the cap");
    let status = tokio::time::timeout(Duration::from_secs(10), third).await.expect("served once a place freed");
    assert_eq!(status.expect("task").expect("answer"), StatusCode::OK);
}

#[tokio::test]
async fn each_cloudevents_mode_is_applied_and_each_malformed_variant_is_refused_with_its_reason() {
    let stack = Stack::start().await;
    let now = stack.clock.now();
    let people: Vec<String> = (0..6).map(|i| unique(&format!("mode{i}"))).collect();
    let post = |content_type: Option<&str>, extra: Vec<(&'static str, String)>, body: Vec<u8>| {
        let mut request = stack.http.post(stack.url("/v1/events")).bearer_auth(PLATFORM_TOKEN).body(body);
        if let Some(t) = content_type {
            request = request.header("content-type", t);
        }
        for (name, value) in extra {
            request = request.header(name, value);
        }
        async move {
            let r = request.send().await.expect("POST");
            let status = r.status();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let binary_headers = |event: &CloudEvent<ConsentGrantedV1>| {
        vec![
            ("ce-specversion", "1.0".to_owned()),
            ("ce-id", event.id.clone()),
            ("ce-source", "urn:test:platform%2Fbinary".to_owned()),
            ("ce-type", "custodian.consent.granted.v1".to_owned()),
            ("ce-time", event.time.to_rfc3339()),
        ]
    };

    // Structured, as the Python SDK writes it by default: no datacontenttype.
    let mut python = serde_json::to_value(grant(&stack, &people[0], "tp", now)).unwrap();
    python.as_object_mut().unwrap().remove("datacontenttype");
    let (status, body) = post(Some("application/cloudevents+json"), vec![], serde_json::to_vec(&python).unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // Binary: the attributes in ce-* headers, the data as the body.
    let event = grant(&stack, &people[1], "tp", now);
    let data = serde_json::to_vec(&event.data).unwrap();
    let (status, body) = post(Some("application/json"), binary_headers(&event), data.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // Batched.
    let batch =
        serde_json::to_vec(&json!([grant(&stack, &people[2], "tp", now), grant(&stack, &people[3], "tp", now)]))
            .unwrap();
    let (status, body) = post(Some("application/cloudevents-batch+json"), vec![], batch).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["events"].as_array().map(Vec::len), Some(2), "{body}");
    // NATS binary mode, as the Go SDK's JetStream binding publishes (here from Custodian's
    // own harness identity: platforms do not publish on the bus).
    let nats_event = grant(&stack, &people[4], "tp", now);
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in binary_headers(&nats_event) {
        headers.insert(name, value.as_str());
    }
    headers.insert("content-type", "application/json");
    stack
        .bus
        .jetstream()
        .publish_with_headers(subjects::CONSENT_GRANTED, headers, serde_json::to_vec(&nats_event.data).unwrap().into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    for person in &people[..5] {
        eventually("the grant in the ledger", Duration::from_secs(15), || async {
            let q = custodian_events::queries::ConsentQuery { subject: Some(person.clone()), ..Default::default() };
            stack.ledger(q).await.iter().any(|c| c.state == "granted").then_some(())
        })
        .await;
    }
    let granted = stack.count_on(subjects::CONSENT_GRANTED).await;

    // Each malformed variant is refused, saying what is wrong; nothing more is published.
    let refused = grant(&stack, &people[5], "tp", now);
    let mut no_type = binary_headers(&refused);
    no_type.retain(|(name, _)| *name != "ce-type");
    let mut bad_data = serde_json::to_value(&refused.data).unwrap();
    bad_data["scopes"] = json!("openid");
    let bad_batch = json!([grant(&stack, &people[5], "tp", now), {"specversion": "1.0", "id": "x"}]);
    for (content_type, extra, body, expected, needle) in [
        (Some("application/json"), no_type, data.clone(), StatusCode::BAD_REQUEST, "missing field `type`"),
        (
            Some("text/plain"),
            binary_headers(&refused),
            data.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "must be JSON",
        ),
        (
            Some("application/json"),
            binary_headers(&refused),
            serde_json::to_vec(&bad_data).unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid data",
        ),
        (
            Some("application/cloudevents-batch+json"),
            vec![],
            serde_json::to_vec(&bad_batch).unwrap(),
            StatusCode::BAD_REQUEST,
            "event 1 of the batch",
        ),
        (
            Some("application/cloudevents-batch+json"),
            vec![],
            serde_json::to_vec(&python).unwrap(),
            StatusCode::BAD_REQUEST,
            "JSON array",
        ),
        (
            Some("application/xml"),
            vec![],
            b"<event/>".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not a CloudEvents mode",
        ),
    ] {
        let (status, problem) = post(content_type, extra, body).await;
        assert_eq!(status, expected, "{needle}: {problem}");
        assert!(problem["detail"].as_str().unwrap_or_default().contains(needle), "{needle}: {problem}");
    }
    // A malformed binary event on NATS is dead-lettered under its ce-id, with the reason.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", "binary-without-type");
    stack
        .bus
        .jetstream()
        .publish_with_headers(subjects::CONSENT_GRANTED, headers, b"{}".to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let letters = eventually("the dead letter", Duration::from_secs(20), || async {
        let letters = stack.messages_on("lifecycle.deadletter.consent").await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters[0].1["data"]["original_id"], "binary-without-type", "{:?}", letters[0].1);
    assert!(
        letters[0].1["data"]["reason"].as_str().unwrap_or_default().contains("missing field"),
        "{:?}",
        letters[0].1
    );
    assert_eq!(stack.count_on(subjects::CONSENT_GRANTED).await, granted + 1, "only the dead-lettered one more");
}

#[tokio::test]
async fn every_error_is_problem_json_and_an_unknown_platform_at_login_is_not_an_outage() {
    let mut stack = Stack::start().await;
    let (_client, settings) = stack.register_platform().await;
    let vault =
        custodian_vault::VaultConfig { max_pending_logins: 2, ..crate::support::test_vault_config(vec![settings]) };
    stack.start_vault(vault);
    let is_problem = |r: &reqwest::Response| {
        r.headers().get("content-type").and_then(|v| v.to_str().ok()) == Some("application/problem+json")
    };
    let r = stack.http.delete(stack.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(is_problem(&r) && r.headers().contains_key("allow"), "{:?}", r.headers());
    let huge = vec![b' '; 3 * 1024 * 1024];
    let r = stack.http.post(stack.url("/v1/events")).bearer_auth(PLATFORM_TOKEN).body(huge).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(is_problem(&r), "{:?}", r.headers());
    let r = stack
        .http
        .get(stack.url("/v1/consents?limit=many"))
        .bearer_auth(crate::support::OPS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(is_problem(&r));
    let r = stack.provider.browser().get(stack.url("/login?platform_id=nope")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "a caller's mistake, not 503");
    assert!(is_problem(&r));
    let problem: Value = r.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap_or_default().contains("\"nope\""), "{problem}");
    assert_eq!(get_login_attempts(&stack).await, 0, "nothing was written for it");
    // Sign-ins started and abandoned are bounded: beyond the cap, a clear 503 and no row.
    for _ in 0..2 {
        let r = stack.provider.browser().get(stack.url("/login")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
    }
    let r = stack.provider.browser().get(stack.url("/login")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let problem: Value = r.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap_or_default().contains("too many sign-ins"), "{problem}");
    assert_eq!(get_login_attempts(&stack).await, 2);
}

async fn get_login_attempts(stack: &Stack) -> usize {
    use sea_orm::EntityTrait;
    custodian_store::entities::login_attempt::Entity::find().all(stack.store.db()).await.expect("rows").len()
}

/// A refusal that comes before the body (no token here) waits for the body: answering while
/// the client still sends would close the connection on unread bytes, which the kernel turns
/// into a reset, and the client would lose the answer (over TLS: "EOF in violation of
/// protocol"). So the answer comes after the body, and the connection stays usable.
#[tokio::test]
async fn a_request_refused_before_its_body_arrives_is_answered_after_it_on_a_connection_kept_alive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start().await;
    let addr = stack.gateway_url.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let body = vec![b' '; 64 * 1024];
    let mut connection = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/cloudevents+json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    connection.write_all(head.as_bytes()).await.expect("write the head");
    connection.flush().await.expect("flush");
    // The body follows later, as a slow client's would.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut early = [0u8; 1];
    let answered_early = tokio::time::timeout(Duration::from_millis(10), connection.peek(&mut early)).await.is_ok();
    assert!(!answered_early, "the gateway answered before the body was sent");
    connection.write_all(&body).await.expect("the body is taken, not reset");
    let first = read_one_response(&mut connection).await;
    assert!(first.starts_with("HTTP/1.1 401"), "{first}");
    assert!(!first.to_ascii_lowercase().contains("connection: close"), "{first}");

    // The same connection answers the next request.
    connection.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("second request");
    let second = read_one_response(&mut connection).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");

    async fn read_one_response(connection: &mut tokio::net::TcpStream) -> String {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&buffer).into_owned();
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if rest.len() >= length {
                    return text;
                }
            }
            let read = tokio::time::timeout(Duration::from_secs(10), connection.read(&mut chunk))
                .await
                .expect("an answer within 10 s")
                .expect("read");
            assert!(read > 0, "the connection closed before a whole answer: {}", String::from_utf8_lossy(&buffer));
            buffer.extend_from_slice(&chunk[..read]);
        }
    }
}
