//! The gateway's refusals: unauthenticated, forged and wrongly-typed input.

use std::time::Duration;

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
    // Made-up methods fold into one label value: no caller adds series.
    for i in 0..200 {
        let method = reqwest::Method::from_bytes(format!("MADEUP{i}").as_bytes()).unwrap();
        let _ = stack.http.request(method, stack.url("/healthz")).send().await.unwrap();
    }
    let scrape = stack.http.get(stack.url("/metrics")).send().await.unwrap();
    assert_eq!(scrape.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let metrics = scrape.text().await.unwrap();
    assert!(
        metrics.contains("custodian_http_requests_total{method=\"GET\",route=\"/v1/me/consents\",status=\"401\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "custodian_http_request_duration_seconds_bucket{le=\"0.001\",method=\"GET\",route=\"/v1/me/consents\"}"
        ) || metrics.contains(
            "custodian_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/me/consents\",le=\"0.001\"}"
        ),
        "a latency histogram per route: {metrics}"
    );
    let made_up: Vec<&str> =
        metrics.lines().filter(|l| l.contains("route=\"/healthz\"") && !l.contains("\"GET\"")).collect();
    let counted: Vec<&&str> = made_up.iter().filter(|l| l.starts_with("custodian_http_requests_total")).collect();
    assert_eq!(counted.len(), 1, "one series for every made-up method: {made_up:?}");
    // All 200 of them, refused as the route takes only GET.
    assert!(counted[0].contains("method=\"other\",route=\"/healthz\",status=\"405\"} 200"), "{counted:?}");
    let timed = made_up.iter().filter(|l| l.starts_with("custodian_http_request_duration_seconds_count")).count();
    assert_eq!(timed, 1, "one latency histogram for them too: {made_up:?}");
    // What Prometheus' own tool reads, without a complaint.
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool must be installed (make test installs it)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool: {}{}\n{metrics}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // A scraper that asks for OpenMetrics gets it.
    let open = stack
        .http
        .get(stack.url("/metrics"))
        .header("accept", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
        .send()
        .await
        .unwrap();
    assert!(open.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    assert!(open.text().await.unwrap().ends_with("# EOF\n"));
    let openapi: Value = stack.http.get(stack.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(openapi["openapi"], "3.1.0");
    // A grant applied by the ledger shows in its batch-apply histogram.
    let grant = json!({
        "specversion": "1.0", "id": unique("e"), "source": "urn:test", "type": "custodian.consent.granted.v1",
        "time": stack.clock.now().to_rfc3339(),
        "data": {"issuer": "https://op.example", "subject": unique("s"), "platform_id": "tp", "scopes": []}
    });
    let r = stack.http.post(stack.url("/v1/events")).bearer_auth(PLATFORM_TOKEN).json(&grant).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    custodian_testkit::eventually("the ledger's batch-apply time on /metrics", Duration::from_secs(20), || async {
        let text = stack.http.get(stack.url("/metrics")).send().await.ok()?.text().await.ok()?;
        text.contains("custodian_consumer_batch_apply_seconds_count{durable=\"consent-ledger\"}").then_some(())
    })
    .await;
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

#[tokio::test]
async fn the_portal_escapes_a_hostile_platform_id_runs_no_script_and_revokes_or_signs_out_only_by_its_own_forms() {
    // A platform id made to break out of an inline handler, as one was once published (a
    // token can now speak only for the platforms configured with it: this one was).
    let hostile = "x');document.title='XSS-'+document.domain;//<b>\"".to_owned();
    let mut stack = Stack::infrastructure().await;
    stack.platform_token_speaks_for = vec![hostile.clone()];
    stack.start_consent();
    stack.start_gateway().await;
    let (_client, settings) = stack.register_platform().await;
    stack.start_vault(crate::support::test_vault_config(vec![settings]));
    let person = unique("rosa");
    let (browser, _cookie, _) = stack.login_through_gateway(&person).await;
    let grant = json!({
        "specversion": "1.0", "id": unique("e"), "source": "urn:test", "type": "custodian.consent.granted.v1",
        "time": stack.clock.now().to_rfc3339(), "datacontenttype": "application/json",
        "data": {"issuer": stack.provider.issuer, "subject": person, "platform_id": hostile, "scopes": ["openid"]}
    });
    let published =
        stack.http.post(stack.url("/v1/events")).bearer_auth(PLATFORM_TOKEN).json(&grant).send().await.unwrap();
    assert_eq!(published.status(), StatusCode::ACCEPTED);

    let page = custodian_testkit::eventually("the hostile grant on the portal", Duration::from_secs(20), || async {
        let r = browser.get(stack.url("/")).send().await.ok()?;
        let headers = r.headers().clone();
        let body = r.text().await.ok()?;
        body.contains("document.title=").then_some((headers, body))
    })
    .await;
    let (headers, body) = page;
    crate::support::assert_page_headers(&headers, "the portal");
    let lower = body.to_ascii_lowercase();
    // Script only from this origin's files: no inline script, no handler, no javascript: URL.
    assert!(lower.split("<script").skip(1).all(|tag| tag.starts_with(" src=\"/assets/") && tag.contains("></script>")));
    assert!(!lower.contains("onclick") && !lower.contains("onerror") && !lower.contains("javascript:"), "{body}");
    assert!(!body.contains(&hostile) && !body.contains("<b>"), "the id is escaped wherever it appears: {body}");
    // The portal's link to the confirmation step carries the id URL-encoded.
    let confirm_href = body
        .split("href=\"/consents/revoke?")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(|query| query.replace("&amp;", "&").replace("&#38;", "&"))
        .find(|query| {
            let url = reqwest::Url::parse(&format!("http://x/?{query}")).expect("a query");
            url.query_pairs().any(|(k, v)| k == "platform_id" && v == hostile.as_str())
        })
        .expect("a link to the hostile platform's confirmation step");
    let confirm = browser.get(stack.url(&format!("/consents/revoke?{confirm_href}"))).send().await.unwrap();
    assert_eq!(confirm.status(), StatusCode::OK);
    crate::support::assert_page_headers(confirm.headers(), "the confirmation");
    let body = confirm.text().await.unwrap();
    assert!(!body.contains(&hostile) && !body.contains("<b>"), "escaped on the confirmation: {body}");
    assert!(body.contains("every app of the platform erases"), "the confirmation says what revoking does: {body}");
    let in_form = body
        .split("name=\"platform_id\" value=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .find(|value| value.contains("document.title"))
        .unwrap_or_else(|| panic!("the hostile platform id in a revoke form: {body}"));
    let unescaped = [("&#39;", "'"), ("&#x27;", "'"), ("&quot;", "\""), ("&#34;", "\""), ("&lt;", "<"), ("&#60;", "<")]
        .iter()
        .fold(in_form.to_owned(), |s, (entity, c)| s.replace(entity, c))
        .replace("&gt;", ">")
        .replace("&#62;", ">")
        .replace("&amp;", "&")
        .replace("&#38;", "&");
    assert_eq!(unescaped, hostile, "the form posts back exactly the id, escaped as an attribute value");

    // The form's CSRF token, as the page gives it.
    let csrf = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF token in the form")
        .to_owned();
    let revoke = |form: Vec<(&'static str, String)>, site: Option<&'static str>| {
        let mut request = browser.post(stack.url("/consents/revoke")).form(&form);
        if let Some(site) = site {
            request = request.header("sec-fetch-site", site);
        }
        request.send()
    };
    // Without the token, with another's, or sent from another site: refused, nothing revoked.
    for (form, site) in [
        (vec![("platform_id", hostile.clone()), ("csrf", String::new())], None),
        (vec![("platform_id", hostile.clone()), ("csrf", "0".repeat(64))], None),
        (vec![("platform_id", hostile.clone()), ("csrf", csrf.clone())], Some("cross-site")),
    ] {
        let refused = revoke(form, site).await.unwrap();
        let p = problem(refused, StatusCode::FORBIDDEN).await;
        assert!(p["detail"].as_str().unwrap().contains("did not come from your consent page"), "{p}");
    }
    let anonymous =
        stack.http.post(stack.url("/consents/revoke")).form(&[("platform_id", &hostile), ("csrf", &csrf)]).send();
    problem(anonymous.await.unwrap(), StatusCode::UNAUTHORIZED).await;
    assert_eq!(stack.count_on(custodian_events::subjects::CONSENT_REVOKED).await, 0, "nothing was revoked");

    // The page's own form: revoked, and on to the receipt, a timeline that reaches done.
    // The ledger is kept busy with others' grants first, so the person reaches the receipt
    // before the ledger has applied the revocation: the page knows it all the same.
    let backlog: Vec<custodian_bus::Outgoing> = (0..400)
        .map(|_| {
            let data = custodian_events::ConsentGrantedV1 {
                issuer: stack.provider.issuer.clone(),
                subject: unique("someone"),
                platform_id: "elsewhere".into(),
                scopes: vec!["openid".into()],
                acr: None,
            };
            let event = custodian_events::CloudEvent::new("urn:test", stack.clock.now(), data);
            custodian_bus::Outgoing::event(custodian_events::subjects::CONSENT_GRANTED, &event)
        })
        .collect();
    assert!(stack.bus.publish_all(&backlog, 64).await.iter().all(Result::is_ok), "the backlog is on the stream");
    let done =
        revoke(vec![("platform_id", hostile.clone()), ("csrf", csrf.clone())], Some("same-origin")).await.unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    let location = done.headers()["location"].to_str().unwrap().to_owned();
    let revocation_id = location.strip_prefix("/receipts/").expect("on to the receipt").to_owned();
    assert!(uuid::Uuid::parse_str(&revocation_id).is_ok(), "{location}");
    let first = browser.get(stack.url(&location)).header("accept-language", "en").send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK, "the receipt is there the moment the person is sent to it");
    let first = first.text().await.unwrap();
    assert!(!first.contains("There is no receipt"), "{first}");
    let receipt = custodian_testkit::eventually("the receipt done", Duration::from_secs(20), || async {
        let r = browser.get(stack.url(&location)).header("accept-language", "en").send().await.ok()?;
        let headers = r.headers().clone();
        let body = r.text().await.ok()?;
        body.contains("Done. Every step below is confirmed.").then_some((headers, body))
    })
    .await;
    let (headers, receipt) = receipt;
    crate::support::assert_page_headers(&headers, "the receipt");
    assert!(receipt.contains(&revocation_id), "the receipt shows its number: {receipt}");
    assert!(!receipt.contains(&hostile) && !receipt.contains("<b>"), "the id is escaped on the receipt too");
    assert!(!receipt.contains("data-live"), "a done receipt is no longer updated live");
    assert_eq!(stack.count_on_settled(custodian_events::subjects::CONSENT_REVOKED, 1).await, 1);
    // The portal lists it among the ended consents, with its receipt.
    let portal = browser.get(stack.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(portal.contains(&format!("href=\"/receipts/{revocation_id}\"")), "{portal}");
    // Someone else's link shows nothing it carries: a 404 page with none of it.
    let forged = browser.get(stack.url("/receipts/%3Cscript%3E")).send().await.unwrap();
    assert_eq!(forged.status(), StatusCode::NOT_FOUND);
    let forged = forged.text().await.unwrap();
    assert!(
        !forged.contains("<script>") && !forged.contains("%3C") && forged.contains("There is no receipt"),
        "{forged}"
    );
    let unknown = browser.get(stack.url(&format!("/receipts/{}", uuid::Uuid::new_v4()))).send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND, "an id of no revocation of this person's");

    // Signing out: never by GET (a link on any site could), never without the page's token.
    let by_get = browser.get(stack.url("/logout")).send().await.unwrap();
    assert_eq!(by_get.status(), StatusCode::METHOD_NOT_ALLOWED);
    let forged_logout = browser.post(stack.url("/logout")).form(&[("csrf", "0".repeat(64))]).send().await.unwrap();
    problem(forged_logout, StatusCode::FORBIDDEN).await;
    let still = browser.get(stack.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(still.contains("action=\"/logout\""), "still signed in after the refused sign-outs");
    let logout = browser.post(stack.url("/logout")).form(&[("csrf", csrf.as_str())]).send().await.unwrap();
    assert_eq!(logout.status(), StatusCode::SEE_OTHER);
    let cleared =
        logout.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).any(|v| v.contains("Max-Age=0"));
    assert!(cleared, "the session cookie is cleared");
}
