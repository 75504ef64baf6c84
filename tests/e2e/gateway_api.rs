//! The gateway's refusals: unauthenticated, forged and wrongly-typed input.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{OPS_TOKEN, PLATFORM_TOKEN, Stack, unique};

async fn problem(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(body["type"].as_str().unwrap().starts_with("https://"));
    body
}

#[tokio::test]
async fn unauthenticated_and_forged_callers_are_refused() {
    let stack = Stack::start().await;
    let r = stack.http.get(stack.url("/v1/me/consents")).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    problem(r, StatusCode::UNAUTHORIZED).await;

    // A JWT that is not signed by the OP.
    let forged =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJtYWxsb3J5IiwiaXNzIjoiaHR0cHM6Ly9leGFtcGxlIn0.c2lnbmF0dXJl";
    let r = stack.http.get(stack.url("/v1/me/consents")).bearer_auth(forged).send().await.unwrap();
    problem(r, StatusCode::UNAUTHORIZED).await;
    let r = stack.http.get(stack.url("/v1/me/consents")).header("x-subject", "alice").send().await.unwrap();
    problem(r, StatusCode::UNAUTHORIZED).await;

    // Roles: a platform may not query the ledger, ops may not publish, machines have no "me".
    let r = stack.http.get(stack.url("/v1/consents")).bearer_auth(PLATFORM_TOKEN).send().await.unwrap();
    problem(r, StatusCode::FORBIDDEN).await;
    let r = stack.http.post(stack.url("/v1/events")).bearer_auth(OPS_TOKEN).body("{}").send().await.unwrap();
    problem(r, StatusCode::FORBIDDEN).await;
    let r = stack.http.get(stack.url("/v1/me/consents")).bearer_auth(OPS_TOKEN).send().await.unwrap();
    problem(r, StatusCode::FORBIDDEN).await;
    let r = stack.http.get(stack.url("/v1/consents?state=granted")).bearer_auth(OPS_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn invalid_events_get_400_problem_json_and_publish_nothing() {
    let stack = Stack::start().await;
    let valid = json!({
        "specversion": "1.0", "id": unique("e"), "source": "urn:test", "type": "custodian.consent.granted.v1",
        "time": "2026-11-24T10:00:00Z", "datacontenttype": "application/json",
        "data": {"issuer": "https://op.example", "subject": "s", "platform_id": "tp", "scopes": []}
    });
    let mut unknown_field = valid.clone();
    unknown_field["data"]["diagnosis"] = json!("J45");
    let mut wrong_type = valid.clone();
    wrong_type["data"]["scopes"] = json!("openid");
    let mut unknown_event = valid.clone();
    unknown_event["type"] = json!("custodian.consent.granted.v7");
    let mut forged_outcome = valid.clone();
    forged_outcome["type"] = json!("custodian.consent.ended.v1");
    forged_outcome["data"] = json!({"issuer": "https://op.example", "subject": "s", "platform_id": "tp", "reason": "revoked", "cause_event_id": "x"});

    for (body, expected, needle) in [
        (b"not json".to_vec(), StatusCode::BAD_REQUEST, "CloudEvents"),
        (serde_json::to_vec(&unknown_field).unwrap(), StatusCode::BAD_REQUEST, "unknown field `diagnosis`"),
        (serde_json::to_vec(&wrong_type).unwrap(), StatusCode::BAD_REQUEST, "invalid data"),
        (serde_json::to_vec(&unknown_event).unwrap(), StatusCode::BAD_REQUEST, "unknown event type"),
        (serde_json::to_vec(&forged_outcome).unwrap(), StatusCode::FORBIDDEN, "emitted by Custodian only"),
    ] {
        let r = stack.http.post(stack.url("/v1/events")).bearer_auth(PLATFORM_TOKEN).body(body).send().await.unwrap();
        let p = problem(r, expected).await;
        assert!(p["detail"].as_str().unwrap().contains(needle), "{p}");
    }
    assert_eq!(stack.count_on("lifecycle.>").await, 0, "nothing reached the stream");

    let r = stack
        .http
        .post(stack.url("/v1/events"))
        .bearer_auth(PLATFORM_TOKEN)
        .body(serde_json::to_vec(&valid).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(stack.count_on("lifecycle.consent.granted").await, 1);

    let r = stack.http.get(stack.url("/v1/consents?state=bogus")).bearer_auth(OPS_TOKEN).send().await.unwrap();
    problem(r, StatusCode::BAD_REQUEST).await;
    let r = stack.http.get(stack.url("/nope")).send().await.unwrap();
    problem(r, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn probes_metrics_and_openapi_answer() {
    let stack = Stack::start().await;
    assert_eq!(stack.http.get(stack.url("/healthz")).send().await.unwrap().text().await.unwrap(), "ok");
    assert_eq!(stack.http.get(stack.url("/readyz")).send().await.unwrap().status(), StatusCode::OK);
    let _ = stack.http.get(stack.url("/v1/me/consents")).send().await.unwrap();
    let metrics = stack.http.get(stack.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("custodian_http_requests_total{method=\"GET\",route=\"/v1/me/consents\",status=\"401\"} 1"),
        "{metrics}"
    );
    let openapi: Value = stack.http.get(stack.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(openapi["openapi"], "3.1.0");
}

#[tokio::test]
async fn the_gateway_serves_https_with_secure_prefixed_cookies_and_refuses_plain_text() {
    let mut stack = Stack::infrastructure().await;
    let certs = custodian_testkit::test_certificates();
    stack.gateway_tls = Some(custodian_web::TlsFiles {
        cert_file: certs.dir.join("server.pem"),
        key_file: certs.dir.join("server.key"),
    });
    stack.start_consent();
    stack.start_gateway().await;
    assert!(stack.gateway_url.starts_with("https://"), "{}", stack.gateway_url);
    let (_client, settings) = stack.register_platform().await;
    stack.start_vault(crate::support::test_vault_config(vec![settings]));

    let health = stack.http.get(stack.url("/healthz")).send().await.expect("https");
    assert_eq!(health.status(), StatusCode::OK);
    // Plain HTTP on the same port gets no answer.
    let plain = reqwest::Client::new().get(stack.url("/healthz").replacen("https://", "http://", 1)).send().await;
    assert!(plain.is_err() || !plain.as_ref().is_ok_and(|r| r.status().is_success()), "{plain:?}");

    // Over HTTPS the cookies are Secure, and prefixed so that no other origin can plant them.
    let browser = stack.provider.browser();
    let start = browser.get(stack.url("/login")).send().await.expect("login");
    let login_cookie = start
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Secure-custodian_login="))
        .map(str::to_owned)
        .expect("a __Secure- login cookie");
    assert!(login_cookie.contains("; Secure") && login_cookie.contains("Path=/callback"), "{login_cookie}");
    let (browser, _cookie, _) = stack.login_through_gateway(&crate::support::unique("tls")).await;
    let mine = browser.get(stack.url("/v1/me/consents")).send().await.expect("my consents");
    assert_eq!(mine.status(), StatusCode::OK, "the __Host- session cookie signs the person in");
}
