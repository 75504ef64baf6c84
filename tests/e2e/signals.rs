//! Signals from the OP: back-channel logout (the real OP sends the logout token), and
//! RFC 8935 pushes of security event tokens built here with the OP's key and with bad ones.

use std::time::Duration;

use base64::Engine as _;
use custodian_events::subjects;
use custodian_testkit::{TEST_OP_KID, eventually};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{OPS_TOKEN, Stack, test_vault_config, unique};

/// A stack whose gateway accepts a freshly registered platform's signals; returns its client.
async fn stack_with_platform() -> (Stack, custodian_testkit::RegisteredClient) {
    let mut stack = Stack::start().await;
    let logout_uri = stack.url("/oidc/backchannel-logout");
    let callback = stack.url("/callback");
    let client = stack.provider.register_client_with(&[&callback], json!({"backchannel_logout_uri": logout_uri})).await;
    stack.extra_audiences.push(client.client_id.clone());
    stack.restart_gateway().await;
    stack.start_vault(test_vault_config(vec![stack.register_platform_settings(&client)]));
    (stack, client)
}

fn now() -> i64 {
    custodian_store::clock::Clock::now(&custodian_store::clock::SystemClock).timestamp()
}

fn op_key(stack: &Stack) -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(&stack.provider.signing_key_file).expect("OP key")).expect("RSA PEM")
}

fn sign(key: &EncodingKey, typ: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.typ = typ.map(str::to_owned);
    header.kid = Some(TEST_OP_KID.into());
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

async fn person_with_a_view(stack: &mut Stack, platform: &str) -> (String, custodian_view_sdk::View, String) {
    let person = unique("sig");
    stack.login_through_gateway(&person).await;
    eventually("the grant in the ledger", Duration::from_secs(15), || async {
        let q = custodian_events::queries::ConsentQuery { subject: Some(person.clone()), ..Default::default() };
        stack.ledger(q).await.iter().any(|c| c.state == "granted").then_some(())
    })
    .await;
    let view = stack.start_view(&unique("sigview")).await;
    let started = view.start_session(None, &person, platform, Duration::from_secs(10)).await.expect("token");
    let session = started.session_id;
    view.store().put(&session, "k", b"v".to_vec(), Duration::from_secs(60)).expect("put");
    (person, view, session)
}

#[tokio::test]
async fn logout_at_the_op_ends_the_sessions_and_a_replayed_logout_token_is_refused() {
    let (mut stack, client) = stack_with_platform().await;
    let platform = client.client_id.clone();
    let person = unique("lou");
    let (browser, _cookie, _) = stack.login_through_gateway(&person).await;
    eventually("the grant in the ledger", Duration::from_secs(15), || async {
        let q = custodian_events::queries::ConsentQuery { subject: Some(person.clone()), ..Default::default() };
        (!stack.ledger(q).await.is_empty()).then_some(())
    })
    .await;
    let view = stack.start_view(&unique("bcl")).await;
    let started = view.start_session(None, &person, &platform, Duration::from_secs(10)).await.expect("token");
    let (session, token) = (started.session_id, started.token);
    view.store().put(&session, "k", b"v".to_vec(), Duration::from_secs(60)).expect("put");
    let access = secrecy::ExposeSecret::expose_secret(&token.token).to_owned();

    // The person signs out at the OP (RP-initiated logout page, confirmed in the browser).
    let end = browser
        .get(format!("{}/session/end?client_id={}", stack.provider.issuer, platform))
        .send()
        .await
        .expect("end session")
        .text()
        .await
        .expect("page");
    let xsrf =
        end.split("name=\"xsrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("xsrf in the logout form");
    let confirmed = browser
        .post(format!("{}/session/end/confirm", stack.provider.issuer))
        .form(&[("xsrf", xsrf), ("logout", "yes")])
        .send()
        .await
        .expect("confirm");
    assert!(confirmed.status().is_redirection() || confirmed.status().is_success(), "{}", confirmed.status());

    // The OP's logout token reached the gateway: sessions wiped, token revoked, consent kept.
    eventually("the view to be wiped", Duration::from_secs(20), || async {
        (view.store().counts() == (0, 0)).then_some(())
    })
    .await;
    let info = eventually("the access token to be revoked", Duration::from_secs(20), || async {
        let info = stack.provider.introspect(&platform, &client.client_secret, &access).await;
        (info["active"] == false).then_some(info)
    })
    .await;
    assert_eq!(info["active"], false);
    let commands = stack.messages_on(subjects::SESSION_REVOKE).await;
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0].1["data"]["cause"], "backchannel_logout");
    let q = custodian_events::queries::ConsentQuery { subject: Some(person.clone()), ..Default::default() };
    assert_eq!(stack.ledger(q).await[0].state, "granted", "a logout is not a withdrawal of consent");

    // A logout token (ours, signed with the OP's key) works once; its replay is refused.
    let claims = json!({
        "iss": stack.provider.issuer, "aud": platform, "iat": now(), "exp": now() + 120,
        "jti": unique("jti"), "sub": person,
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
    });
    let logout_token = sign(&op_key(&stack), Some("logout+jwt"), &claims);
    let post = || {
        stack.http.post(stack.url("/oidc/backchannel-logout")).form(&[("logout_token", logout_token.as_str())]).send()
    };
    let first = post().await.expect("first");
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["cache-control"], "no-store");
    let replay = post().await.expect("replay");
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    assert_eq!(replay.headers()["cache-control"], "no-store");
    let body: Value = replay.json().await.expect("json");
    assert_eq!(body["error"], "invalid_request");
    assert!(body["error_description"].as_str().unwrap_or_default().contains("replayed"), "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.count_on(subjects::SESSION_REVOKE).await, 2, "the replay changed nothing");

    // Malformed logout tokens: with a nonce, without the event, without sub.
    for (claims, why) in [
        (
            json!({"iss": stack.provider.issuer, "aud": platform, "iat": now(), "exp": now() + 60, "jti": unique("j"), "sub": person, "nonce": "n", "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}),
            "nonce",
        ),
        (
            json!({"iss": stack.provider.issuer, "aud": platform, "iat": now(), "exp": now() + 60, "jti": unique("j"), "sub": person, "events": {}}),
            "events",
        ),
        (
            json!({"iss": stack.provider.issuer, "aud": platform, "iat": now(), "exp": now() + 60, "jti": unique("j"), "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}),
            "sub",
        ),
    ] {
        let token = sign(&op_key(&stack), Some("logout+jwt"), &claims);
        let r = stack
            .http
            .post(stack.url("/oidc/backchannel-logout"))
            .form(&[("logout_token", token.as_str())])
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{why}");
    }
    assert_eq!(stack.count_on(subjects::SESSION_REVOKE).await, 2);
}

async fn push(stack: &Stack, token: &str) -> (StatusCode, Value) {
    let r = stack
        .http
        .post(stack.url("/ssf/events"))
        .header("content-type", "application/secevent+jwt")
        .body(token.to_owned())
        .send()
        .await
        .expect("push");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn set_claims(stack: &Stack, aud: &str, person: &str, event: &str, body: Value) -> Value {
    json!({
        "iss": stack.provider.issuer, "aud": aud, "iat": now(), "jti": unique("set"),
        "sub_id": {"format": "iss_sub", "iss": stack.provider.issuer, "sub": person},
        "events": {event: body},
    })
}

const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";

#[tokio::test]
async fn security_event_tokens_are_verified_and_acted_on_and_errors_change_nothing() {
    let (mut stack, client) = stack_with_platform().await;
    let platform = client.client_id.clone();
    let (person, view, _session) = person_with_a_view(&mut stack, &platform).await;
    let key = op_key(&stack);

    // Refused, with RFC 8935's codes, and nothing changes.
    let other_key_pem = {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("k.pem");
        let ok = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
            .arg(&path)
            .output()
            .expect("openssl");
        assert!(ok.status.success());
        std::fs::read(&path).expect("pem")
    };
    let wrong_key = EncodingKey::from_rsa_pem(&other_key_pem).expect("pem");
    let revoked = set_claims(&stack, &platform, &person, &format!("{CAEP}session-revoked"), json!({}));
    let alg_none = format!(
        "{}.{}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"secevent+jwt"}"#),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(revoked.to_string())
    );
    let mut wrong_aud = revoked.clone();
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = revoked.clone();
    wrong_iss["iss"] = json!("https://evil.example");
    let mut expired = revoked.clone();
    expired["exp"] = json!(now() - 3600);
    for (token, code) in [
        (sign(&wrong_key, Some("secevent+jwt"), &revoked), "invalid_key"),
        (alg_none, "invalid_key"),
        (sign(&key, Some("secevent+jwt"), &wrong_aud), "invalid_audience"),
        (sign(&key, Some("secevent+jwt"), &wrong_iss), "invalid_issuer"),
        (sign(&key, None, &revoked), "invalid_request"),
        (sign(&key, Some("secevent+jwt"), &expired), "invalid_request"),
        ("not-a-jwt".to_owned(), "invalid_request"),
    ] {
        let (status, body) = push(&stack, &token).await;
        assert_eq!((status, body["err"].as_str()), (StatusCode::BAD_REQUEST, Some(code)), "{body}");
        assert!(body["description"].is_string());
    }
    // An event type we do not act on: accepted, no effect.
    let (status, _) = push(
        &stack,
        &sign(
            &key,
            Some("secevent+jwt"),
            &set_claims(&stack, &platform, &person, &format!("{CAEP}device-compliance-change"), json!({})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.count_on(subjects::SESSION_REVOKE).await, 0);
    assert_eq!(view.store().counts().0, 1, "nothing changed on errors");

    // CAEP session-revoked: sessions end; the same SET again is acknowledged without effect.
    let good = sign(&key, Some("secevent+jwt"), &revoked);
    assert_eq!(push(&stack, &good).await.0, StatusCode::ACCEPTED);
    assert_eq!(push(&stack, &good).await.0, StatusCode::ACCEPTED);
    eventually("the view to be wiped", Duration::from_secs(20), || async {
        (view.store().counts() == (0, 0)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.count_on(subjects::SESSION_REVOKE).await, 1, "de-duplicated on jti");

    // Assurance dropped below the platform's level: sessions end; still high enough: nothing.
    let (person2, view2, _) = person_with_a_view(&mut stack, &platform).await;
    let level = |l: &str| {
        sign(
            &key,
            Some("secevent+jwt"),
            &set_claims(
                &stack,
                &platform,
                &person2,
                &format!("{CAEP}assurance-level-change"),
                json!({"namespace": "custom", "current_level": l, "previous_level": "urn:custodian:acr:high", "change_direction": "decrease"}),
            ),
        )
    };
    assert_eq!(push(&stack, &level("urn:custodian:acr:high")).await.0, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(view2.store().counts().0, 1, "still at the required level");
    assert_eq!(push(&stack, &level("urn:custodian:acr:low")).await.0, StatusCode::ACCEPTED);
    eventually("the view to be wiped", Duration::from_secs(20), || async {
        (view2.store().counts() == (0, 0)).then_some(())
    })
    .await;

    // RISC account-disabled: the person's consents end (reason provider).
    let disabled = sign(
        &key,
        Some("secevent+jwt"),
        &set_claims(&stack, &platform, &person, &format!("{RISC}account-disabled"), json!({"reason": "hijacking"})),
    );
    assert_eq!(push(&stack, &disabled).await.0, StatusCode::ACCEPTED);
    // With a push token required: none → authentication_failed, a wrong one → access_denied.
    stack.ssf_push_token = Some("transmitter-token-0123456789".into());
    stack.restart_gateway().await;
    let no_token = stack
        .http
        .post(stack.url("/ssf/events"))
        .header("content-type", "application/secevent+jwt")
        .body(disabled.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(no_token.json::<Value>().await.expect("json")["err"], "authentication_failed");
    let wrong = stack
        .http
        .post(stack.url("/ssf/events"))
        .header("content-type", "application/secevent+jwt")
        .bearer_auth("nope")
        .body(disabled.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    assert_eq!(wrong.json::<Value>().await.expect("json")["err"], "access_denied");
    let ended = eventually("the consent to end", Duration::from_secs(15), || async {
        let q = custodian_events::queries::ConsentQuery {
            subject: Some(person.clone()),
            with_history: true,
            ..Default::default()
        };
        stack.ledger(q).await.into_iter().find(|c| c.state == "revoked")
    })
    .await;
    assert_eq!(ended.platform_id, platform);
    let revokes = stack.messages_on(subjects::CONSENT_REVOKED).await;
    assert!(revokes.iter().any(|(_, e)| e["data"]["reason"] == "provider"), "{revokes:?}");
    let _ = OPS_TOKEN;
}

#[tokio::test]
async fn a_login_below_the_platforms_level_of_assurance_is_refused() {
    let mut stack = Stack::start().await;
    let (_client, mut settings) = stack.register_platform().await;
    settings.required_acr = Some("urn:custodian:acr:high".into());
    settings.acr_order =
        vec!["urn:custodian:acr:low".into(), "urn:custodian:acr:substantial".into(), "urn:custodian:acr:high".into()];
    stack.start_vault(test_vault_config(vec![settings]));
    let browser = stack.provider.browser();
    let start = browser.get(stack.url("/login")).send().await.expect("login");
    let to_op = start.headers()[reqwest::header::LOCATION].to_str().expect("location").to_owned();
    assert!(to_op.contains("acr_values=urn%3Acustodian%3Aacr%3Ahigh"), "the login asks for the level: {to_op}");
    let back = stack.provider.drive_interactions(&browser, to_op, &unique("low"), &stack.url("/callback")).await;
    let refused = browser.get(&back).send().await.expect("callback");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let problem: Value = refused.json().await.expect("problem");
    assert!(problem["detail"].as_str().unwrap_or_default().contains("acr"), "{problem}");
    assert!(stored_bundles_empty(&stack).await, "no token kept from a refused login");
}

async fn stored_bundles_empty(stack: &Stack) -> bool {
    crate::support::stored_bundles(stack).await.is_empty()
}

#[tokio::test]
async fn ended_consents_are_pushed_to_receivers_as_signed_caep_session_revoked_sets() {
    use std::sync::{Arc, Mutex};
    // A receiver that is down for the first push, then accepts.
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(move |body: String| {
            let store = store.clone();
            async move {
                let mut seen = store.lock().expect("lock");
                seen.push(body);
                if seen.len() == 1 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::ACCEPTED }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let receiver_url = format!("http://{}/events", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut stack = Stack::infrastructure().await;
    let seed = base64::engine::general_purpose::STANDARD.encode(custodian_crypto::random_32().as_slice());
    stack.ssf_transmitter = Some(custodian_gateway::transmit::TransmitterConfig {
        issuer: "https://custodian.example".into(),
        signing_key: seed.into(),
        key_id: "custodian-ssf-test".into(),
        receivers: vec![custodian_gateway::transmit::Receiver {
            url: receiver_url,
            audience: "https://receiver.example".into(),
            bearer_token: None,
        }],
    });
    stack.start_consent();
    stack.start_gateway().await;
    let person = unique("set");
    let grant = custodian_events::ConsentGrantedV1 {
        issuer: stack.provider.issuer.clone(),
        subject: person.clone(),
        platform_id: "tp-ssf".into(),
        scopes: vec!["openid".into()],
        acr: None,
    };
    stack
        .publish(subjects::CONSENT_GRANTED, &custodian_events::CloudEvent::new("urn:test", stack.clock.now(), grant))
        .await;
    let revoke = custodian_events::ConsentRevokedV1 {
        issuer: stack.provider.issuer.clone(),
        subject: person.clone(),
        platform_id: "tp-ssf".into(),
        reason: custodian_events::RevokeReason::User,
        actor: None,
    };
    let later = stack.clock.now() + chrono::Duration::seconds(1);
    stack.publish(subjects::CONSENT_REVOKED, &custodian_events::CloudEvent::new("urn:test", later, revoke)).await;

    let sets = eventually("the SET to be delivered after a retry", Duration::from_secs(20), || async {
        let seen = received.lock().expect("lock").clone();
        (seen.len() >= 2).then_some(seen)
    })
    .await;
    assert_eq!(sets[0], sets[1], "the same SET (same jti) is re-sent");

    // Verify it as a receiver would: our JWKS, EdDSA, typ, iss, aud, the CAEP event, the subject.
    let jwks: jsonwebtoken::jwk::JwkSet =
        stack.http.get(stack.url("/.well-known/jwks.json")).send().await.expect("jwks").json().await.expect("json");
    let header = jsonwebtoken::decode_header(&sets[1]).expect("header");
    assert_eq!(header.typ.as_deref(), Some("secevent+jwt"));
    assert_eq!(header.alg, Algorithm::EdDSA);
    let jwk = jwks.find(header.kid.as_deref().expect("kid")).expect("key published");
    let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["https://receiver.example"]);
    validation.set_issuer(&["https://custodian.example"]);
    validation.required_spec_claims = ["iss", "aud", "iat"].iter().map(|s| s.to_string()).collect();
    validation.validate_exp = false;
    let claims =
        jsonwebtoken::decode::<Value>(&sets[1], &jsonwebtoken::DecodingKey::from_jwk(jwk).expect("key"), &validation)
            .expect("signature and claims verify")
            .claims;
    assert!(claims["events"][format!("{CAEP}session-revoked")].is_object(), "{claims}");
    assert_eq!(claims["sub_id"]["format"], "iss_sub");
    assert_eq!(claims["sub_id"]["sub"], person.as_str());
    assert!(claims["jti"].is_string());
}

#[tokio::test]
async fn the_receiver_sets_up_a_poll_stream_handles_polled_sets_and_acknowledges_them() {
    use std::sync::{Arc, Mutex};
    let (mut stack, client) = stack_with_platform().await;
    let platform = client.client_id.clone();
    let (person, view, _) = person_with_a_view(&mut stack, &platform).await;

    // The transmitter's side (no SSF transmitter is installable here: it lives in the test).
    #[derive(Default)]
    struct Transmitter {
        streams: Vec<Value>,
        verifications: Vec<Value>,
        polls: Vec<Value>,
        pending: Vec<(String, String)>,
    }
    let state: Arc<Mutex<Transmitter>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let set = sign(
        &op_key(&stack),
        Some("secevent+jwt"),
        &set_claims(&stack, &platform, &person, &format!("{CAEP}session-revoked"), json!({})),
    );
    let set_jti = jsonwebtoken::dangerous::insecure_decode::<Value>(&set)
        .map(|d| d.claims["jti"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    state.lock().expect("lock").pending.push((set_jti.clone(), set));
    let (s1, s2, s3, b1, b2) = (state.clone(), state.clone(), state.clone(), base.clone(), base.clone());
    let app = axum::Router::new()
        .route(
            "/.well-known/ssf-configuration",
            axum::routing::get(move || {
                let base = b1.clone();
                async move {
                    axum::Json(json!({"issuer": base, "configuration_endpoint": format!("{base}/streams"),
                        "verification_endpoint": format!("{base}/verify"),
                        "delivery_methods_supported": ["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"]}))
                }
            }),
        )
        .route(
            "/streams",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let (state, base) = (s1.clone(), b2.clone());
                async move {
                    state.lock().expect("lock").streams.push(body.clone());
                    axum::Json(json!({"stream_id": "stream-1", "delivery": {"method": body["delivery"]["method"], "endpoint_url": format!("{base}/poll")}, "events_delivered": body["events_requested"]}))
                }
            }),
        )
        .route(
            "/verify",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let state = s2.clone();
                async move {
                    state.lock().expect("lock").verifications.push(body);
                    StatusCode::NO_CONTENT
                }
            }),
        )
        .route(
            "/poll",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let state = s3.clone();
                async move {
                    let mut t = state.lock().expect("lock");
                    t.polls.push(body);
                    let sets: serde_json::Map<String, Value> = t.pending.drain(..).map(|(j, s)| (j, json!(s))).collect();
                    axum::Json(json!({"sets": sets, "moreAvailable": false}))
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });

    stack.ssf_receiver = Some(custodian_gateway::ssf_receiver::SsfReceiverConfig {
        transmitter: base,
        bearer_token: Some("receiver-token".to_owned().into()),
        mode: "poll".into(),
        push_url: None,
        poll_every_secs: 1,
        events_requested: vec![format!("{CAEP}session-revoked")],
        ca_file: None,
    });
    stack.restart_gateway().await;

    eventually("the polled session-revoked SET to wipe the view", Duration::from_secs(20), || async {
        (view.store().counts() == (0, 0)).then_some(())
    })
    .await;
    let acked = eventually("the SET to be acknowledged in the next poll", Duration::from_secs(10), || async {
        let t = state.lock().expect("lock");
        t.polls.iter().find(|p| p["ack"].as_array().is_some_and(|a| a.iter().any(|j| j == set_jti.as_str()))).cloned()
    })
    .await;
    assert!(acked["setErrs"].as_object().is_some_and(|e| e.is_empty()), "{acked}");
    let t = state.lock().expect("lock");
    assert_eq!(t.streams.len(), 1);
    assert_eq!(t.streams[0]["delivery"]["method"], "urn:ietf:rfc:8936");
    assert_eq!(t.verifications.len(), 1, "a verification event was requested");
    assert_eq!(t.verifications[0]["stream_id"], "stream-1");
}

/// Makes the stream refuse every new message (full, discarding new ones), or takes the
/// limit off again; the KV bucket of seen `jti`s is a stream of its own and keeps working.
async fn stream_full(stack: &Stack, full: bool) {
    use async_nats::jetstream::stream::DiscardPolicy;
    let js = stack.bus.jetstream();
    let mut stream = js.get_stream(subjects::STREAM).await.expect("stream");
    let info = stream.info().await.expect("info").clone();
    let mut config = info.config.clone();
    if full {
        config.max_messages = i64::try_from(info.state.messages).expect("count").max(1);
        config.discard = DiscardPolicy::New;
    } else {
        config.max_messages = -1;
    }
    js.update_stream(config).await.expect("stream updated");
}

#[tokio::test]
async fn a_signal_refused_with_503_has_its_effect_once_when_the_op_retries_it() {
    let (mut stack, client) = stack_with_platform().await;
    let platform = client.client_id.clone();
    let (person, view, _session) = person_with_a_view(&mut stack, &platform).await;
    let key = op_key(&stack);
    let logout = sign(
        &key,
        Some("logout+jwt"),
        &json!({
            "iss": stack.provider.issuer, "aud": platform, "iat": now(), "exp": now() + 120,
            "jti": unique("jti"), "sub": person,
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        }),
    );
    let set = sign(
        &key,
        Some("secevent+jwt"),
        &set_claims(&stack, &platform, &person, &format!("{CAEP}session-revoked"), json!({})),
    );
    let post_logout =
        || stack.http.post(stack.url("/oidc/backchannel-logout")).form(&[("logout_token", logout.as_str())]).send();
    let before = stack.count_on(subjects::SESSION_REVOKE).await;

    stream_full(&stack, true).await;
    let refused = post_logout().await.expect("logout");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"), "{:?}", refused.headers());
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"], "temporarily_unavailable", "a 503 says retry, not invalid_request: {body}");
    let (status, body) = push(&stack, &set).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.get("err").is_none(), "no client error code on a 503: {body}");
    assert_eq!(view.store().counts().0, 1, "nothing happened yet");

    // The OP retries once the bus takes events again: each signal has its effect, once.
    stream_full(&stack, false).await;
    assert_eq!(post_logout().await.expect("retry").status(), StatusCode::OK);
    assert_eq!(push(&stack, &set).await.0, StatusCode::ACCEPTED);
    eventually("the view to be wiped", Duration::from_secs(20), || async {
        (view.store().counts() == (0, 0)).then_some(())
    })
    .await;
    assert_eq!(stack.count_on_settled(subjects::SESSION_REVOKE, before + 2).await, before + 2);
    // And now that they had it, a replay is refused (logout) or changes nothing (SET).
    assert_eq!(post_logout().await.expect("replay").status(), StatusCode::BAD_REQUEST);
    assert_eq!(push(&stack, &set).await.0, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.count_on(subjects::SESSION_REVOKE).await, before + 2);
}

#[tokio::test]
async fn a_signal_older_than_the_replay_window_is_refused() {
    let (stack, client) = stack_with_platform().await;
    let platform = client.client_id.clone();
    let key = op_key(&stack);
    let eight_days = 8 * 24 * 3600;
    let logout = sign(
        &key,
        Some("logout+jwt"),
        &json!({
            "iss": stack.provider.issuer, "aud": platform, "iat": now() - eight_days, "exp": now() + 120,
            "jti": unique("jti"), "sub": "someone",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        }),
    );
    let r = stack
        .http
        .post(stack.url("/oidc/backchannel-logout"))
        .form(&[("logout_token", logout.as_str())])
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.expect("json");
    assert!(body["error_description"].as_str().unwrap_or_default().contains("replay window"), "{body}");
    let mut old = set_claims(&stack, &platform, "someone", &format!("{CAEP}session-revoked"), json!({}));
    old["iat"] = json!(now() - eight_days);
    let (status, body) = push(&stack, &sign(&key, Some("secevent+jwt"), &old)).await;
    assert_eq!((status, body["err"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "{body}");
    assert!(body["description"].as_str().unwrap_or_default().contains("replay window"), "{body}");
    assert_eq!(stack.count_on(subjects::SESSION_REVOKE).await, 0);
}
