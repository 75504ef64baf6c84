//! The bus as an attacker on the same host finds it: nats-server started with the rendered
//! configuration (TLS with client certificates, an nkey per identity, the permission table).
//! Each refusal is a clear error at the client, and nothing changes.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use custodian_bus::trust::{Identity, durables};
use custodian_events::{CloudEvent, ConsentEndedV1, EndReason, SessionWipedV1, subjects};
use custodian_testkit::{NatsServer, test_certificates};

use crate::support::{Stack, unique};

/// What the server told a client: its `-ERR` lines (permission violations).
#[derive(Clone, Default)]
struct ServerErrors(Arc<Mutex<Vec<String>>>);

impl ServerErrors {
    fn seen(&self) -> Vec<String> {
        self.0.lock().expect("errors").clone()
    }

    /// Waits for the server to name `subject` in a violation reported to this client.
    async fn violation_on(&self, subject: &str) -> String {
        let what = format!("a permission violation on {subject}");
        custodian_testkit::eventually(&what, Duration::from_secs(5), || async {
            self.seen().into_iter().find(|e| e.contains("Violation") && e.contains(subject))
        })
        .await
    }
}

/// A client with its own options, no retry: what an attacker's program would do.
async fn client(
    nats: &NatsServer,
    seed_of: Option<&Identity>,
    certificates: &Path,
) -> Result<(async_nats::Client, ServerErrors), async_nats::ConnectError> {
    custodian_bus::install_crypto_provider();
    let errors = ServerErrors::default();
    let sink = errors.clone();
    let mut options = async_nats::ConnectOptions::new()
        .name("attacker")
        .connection_timeout(Duration::from_secs(3))
        .require_tls(true)
        .add_root_certificates(test_certificates().ca())
        .add_client_certificate(certificates.join("client.pem"), certificates.join("client.key"))
        .event_callback(move |event| {
            let sink = sink.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    sink.0.lock().expect("errors").push(e.to_string());
                }
            }
        });
    if let Some(identity) = seed_of {
        let seed = std::fs::read_to_string(nats.credentials_dir().join(format!("{identity}.nk"))).expect("seed");
        options = options.nkey(seed);
    }
    let client = options.connect(nats.url()).await?;
    Ok((client, errors))
}

#[tokio::test]
async fn a_client_without_credentials_or_with_another_cas_certificate_is_refused() {
    let mut stack = Stack::infrastructure().await;
    stack.nats.add_view("v1");
    let trusted = &test_certificates().dir;

    let anonymous = client(&stack.nats, None, trusted).await.err().expect("an anonymous client is refused");
    assert!(anonymous.to_string().to_lowercase().contains("authorization"), "{anonymous}");

    let view = Identity::view("v1").unwrap();
    let foreign = &test_certificates().foreign_dir;
    let refused = client(&stack.nats, Some(&view), foreign).await.err().expect("another CA's certificate is refused");
    assert!(!refused.to_string().is_empty(), "the refusal says why: {refused:?}");

    // Plain TCP to a server that requires TLS is refused too.
    let plain = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(format!("nats://127.0.0.1:{}", stack.nats.port()))
        .await;
    assert!(plain.is_err(), "plain text is refused");

    // The services' own client refuses plain text to anything but loopback before connecting.
    let remote = custodian_bus::NatsAccess { url: "nats://10.0.0.7:4222".into(), ..Default::default() };
    let error = remote.connect(&view, "x").await.expect_err("refused");
    assert!(error.to_string().contains("plain-text"), "{error}");

    // Nothing was written by any of them.
    assert_eq!(stack.count_on(subjects::ALL).await, 0);
}

#[tokio::test]
async fn a_view_is_confined_to_its_own_wipes_and_its_own_subjects() {
    let mut stack = Stack::start().await;
    stack.start_vault(crate::support::test_vault_config(Vec::new()));
    stack.start_audit(crate::audit::audit_config(None));
    let (mine, theirs) = (unique("mine"), unique("theirs"));
    let victim = stack.start_view(&theirs).await;
    stack.nats.add_view(&mine);
    let me = Identity::view(&mine).unwrap();
    let (attacker, errors) = client(&stack.nats, Some(&me), &test_certificates().dir).await.expect("the view connects");
    let js = jetstream::new(attacker.clone());
    let before = stack.count_on(subjects::ALL).await;

    // The stream's information and its messages are not for a view.
    let info = tokio::time::timeout(Duration::from_secs(3), js.get_stream(subjects::STREAM)).await;
    assert!(!matches!(info, Ok(Ok(_))), "a view read the stream's information");
    errors.violation_on("$JS.API.STREAM.INFO.LIFECYCLE").await;
    let reader = jetstream::consumer::pull::Config {
        durable_name: Some("reader".into()),
        filter_subject: subjects::ALL.into(),
        ..Default::default()
    };
    let created =
        tokio::time::timeout(Duration::from_secs(3), js.create_consumer_on_stream(reader, subjects::STREAM)).await;
    assert!(!matches!(created, Ok(Ok(_))), "a view made a consumer reading the whole stream");
    errors.violation_on("$JS.API.CONSUMER.CREATE.LIFECYCLE.reader").await;

    // Nor another view's wipe commands, under that view's durable or a name of its own.
    let theirs_durable = durables::view_wipes(&theirs);
    let opened = tokio::time::timeout(
        Duration::from_secs(3),
        js.get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(&theirs_durable, subjects::STREAM),
    )
    .await;
    assert!(!matches!(opened, Ok(Ok(_))), "a view opened another view's wipe consumer");
    errors.violation_on(&format!("$JS.API.CONSUMER.INFO.LIFECYCLE.{theirs_durable}")).await;
    let spy = jetstream::consumer::pull::Config {
        durable_name: Some(durables::view_wipes(&mine)),
        filter_subject: subjects::session_wipe(&theirs).unwrap(),
        ..Default::default()
    };
    let spied = tokio::time::timeout(Duration::from_secs(3), js.create_consumer_on_stream(spy, subjects::STREAM)).await;
    assert!(!matches!(spied, Ok(Ok(_))), "a view's own durable was pointed at another view's wipes");

    // Outcomes and other views' events cannot be published.
    let ended = CloudEvent::new(
        "urn:attacker",
        stack.clock.now(),
        ConsentEndedV1 {
            issuer: "https://op.example".into(),
            subject: "someone".into(),
            platform_id: "tp".into(),
            reason: EndReason::Revoked,
            cause_event_id: "x".into(),
        },
    );
    let wiped = CloudEvent::new(
        "urn:attacker",
        stack.clock.now(),
        SessionWipedV1 { wipe_id: "w".into(), view_id: theirs.clone(), session_ids: vec!["s".into()] },
    );
    let forged = [
        (subjects::CONSENT_ENDED.to_owned(), ended.to_json()),
        (subjects::TOKEN_REVOKED.to_owned(), ended.to_json()),
        (subjects::session_wipe(&theirs).unwrap(), ended.to_json()),
        (subjects::by_view(subjects::SESSION_WIPED, &theirs).unwrap(), wiped.to_json()),
        (subjects::SESSION_WIPED.to_owned(), wiped.to_json()),
    ];
    for (subject, payload) in forged {
        let sent = js.publish(subject.clone(), payload.into()).await;
        let acked = match sent {
            Ok(ack) => tokio::time::timeout(Duration::from_secs(2), ack).await.is_ok_and(|a| a.is_ok()),
            Err(_) => false,
        };
        assert!(!acked, "the stream took a view's {subject}");
        errors.violation_on(&subject).await;
    }

    // It cannot answer in a service's place, nor reach the leases, the privacy log or secrets.
    let _queue = attacker
        .queue_subscribe(format!("{}.*", custodian_events::vault::TOKEN), "vault".into())
        .await
        .expect("the client sends the subscription");
    errors.violation_on("custodian.vault.token.*").await;
    let leases =
        tokio::time::timeout(Duration::from_secs(3), js.get_key_value(custodian_bus::lease::LEADERSHIP_BUCKET)).await;
    assert!(!matches!(leases, Ok(Ok(_))), "a view opened the lease bucket");
    let forbidden = [
        format!("{}.{}", custodian_events::audit::PRIVACY_LOG, me.name()),
        format!("{}.dpo", custodian_events::audit::PRIVACY_LOG),
        custodian_events::incident::CREDENTIAL.to_owned(),
        custodian_events::incident::ROTATE.to_owned(),
        format!("{}.{theirs}", custodian_events::vault::TOKEN),
        custodian_events::vault::LOGIN_START.to_owned(),
    ];
    for subject in &forbidden {
        let asked = tokio::time::timeout(Duration::from_secs(2), attacker.request(subject.clone(), "{}".into())).await;
        assert!(!matches!(asked, Ok(Ok(_))), "a view got an answer on {subject}");
        errors.violation_on(subject).await;
    }

    // Nothing reached the stream, and the victim view still gets its own wipes: its
    // consumer is untouched (a positive control that the server is not simply refusing all).
    assert_eq!(stack.count_on(subjects::ALL).await, before, "nothing was published");
    let asked_own = custodian_bus::query::<_, custodian_events::vault::TokenReply>(
        victim_client(&stack, &theirs).await.client(),
        &format!("{}.{theirs}", custodian_events::vault::TOKEN),
        &custodian_events::vault::TokenRequest {
            issuer: None,
            subject: "nobody".into(),
            platform_id: "nowhere".into(),
            session_id: Some("s-1".into()),
            reply_key: custodian_crypto::ReplyKey::new().public_base64(),
        },
        Duration::from_secs(10),
    )
    .await
    .expect("a view asks under its own id and is answered");
    assert!(!matches!(asked_own, custodian_events::vault::TokenReply::Token { .. }));
    drop(victim);
}

async fn victim_client(stack: &Stack, view_id: &str) -> custodian_bus::Bus {
    let identity = Identity::view(view_id).unwrap();
    custodian_bus::Bus::attach(stack.nats.connect(&identity, "victim").await)
}

#[tokio::test]
async fn a_session_event_naming_another_view_than_its_subject_is_dead_lettered() {
    let mut stack = Stack::start().await;
    stack.start_vault(crate::support::test_vault_config(Vec::new()));
    let (mine, theirs) = (unique("mine"), unique("theirs"));
    let bus = stack.view_bus(&mine).await;
    // On its own subject, the view claims to be another one.
    let claim = CloudEvent::new(
        "urn:attacker",
        stack.clock.now(),
        SessionWipedV1 { wipe_id: "w-1".into(), view_id: theirs.clone(), session_ids: vec!["s".into()] },
    );
    let own = subjects::by_view(subjects::SESSION_WIPED, &mine).unwrap();
    bus.publish_event_retrying(&own, &claim, custodian_view_sdk::PUBLISH_BUDGET)
        .await
        .expect("the view may publish on its own subject");
    let letters = custodian_testkit::eventually("the vault's dead letter", Duration::from_secs(20), || async {
        let letters = stack.messages_on("lifecycle.deadletter.vault").await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    let reason = letters[0].1["data"]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("is not the view") && reason.contains(&mine), "{reason}");
}

#[tokio::test]
async fn a_platform_fact_carrying_the_id_of_the_next_consent_ended_cannot_suppress_it() {
    let mut stack = Stack::start().await;
    let (client, settings) = stack.register_platform().await;
    let platform = client.client_id.clone();
    // The platform's token speaks for it (a token speaks only for the platforms it lists).
    stack.platform_token_speaks_for = vec![platform.clone()];
    stack.restart_gateway().await;
    stack.start_vault(crate::support::test_vault_config(vec![settings]));
    let person = unique("oscar");
    let (browser, cookie, _) = stack.login_through_gateway(&person).await;

    // The attacker knows everything public: the grant's id, and so the id the consent.ended
    // of that grant will carry.
    let grant_id =
        custodian_testkit::eventually("the login's grant on the stream", Duration::from_secs(20), || async {
            let grants = stack.messages_on(subjects::CONSENT_GRANTED).await;
            grants
                .into_iter()
                .find(|(_, e)| e["data"]["subject"] == person.as_str())
                .and_then(|(_, e)| e["id"].as_str().map(str::to_owned))
        })
        .await;
    let next_ended = custodian_events::derived_event_id("consent.ended", &grant_id);
    let fact = CloudEvent::with_id(
        next_ended.clone(),
        "urn:platform",
        stack.clock.now(),
        custodian_events::ActivitySeenV1 {
            issuer: stack.provider.issuer.clone(),
            subject: person.clone(),
            platform_id: platform.clone(),
        },
    );
    let answer = stack
        .http
        .post(stack.url("/v1/events"))
        .bearer_auth(crate::support::PLATFORM_TOKEN)
        .body(fact.to_json())
        .send()
        .await
        .expect("publish");
    assert_eq!(answer.status(), reqwest::StatusCode::ACCEPTED);
    let accepted: serde_json::Value = answer.json().await.expect("body");
    assert_eq!(accepted["source_id"], next_ended.as_str());
    assert_ne!(accepted["id"], next_ended.as_str(), "the caller's id is kept under the outside namespace");

    // A view publishes into the same stream under the best id an outsider can compute for
    // the next consent.ended: the derivation the source code shows, without the deployment's
    // key. Custodian's own ids are keyed, so that is not the id the consent.ended carries.
    let outsiders_guess = uuid::Uuid::new_v5(
        &uuid::uuid!("6f1d2c8e-3c1a-5d7b-9a41-0c7e2b5f4a10"),
        format!("consent.ended\u{0}{grant_id}").as_bytes(),
    )
    .to_string();
    assert!(custodian_events::ids_are_keyed(), "the store installed the deployment's id key");
    assert_ne!(outsiders_guess, next_ended, "Custodian's ids are keyed by the deployment");
    let pre_empting = unique("pre-empting");
    let closed = CloudEvent::with_id(
        outsiders_guess.clone(),
        format!("urn:custodian:view:{pre_empting}"),
        stack.clock.now(),
        custodian_events::SessionClosedV1 { session_id: unique("s"), view_id: pre_empting.clone() },
    );
    stack
        .view_bus(&pre_empting)
        .await
        .publish_event(&subjects::by_view(subjects::SESSION_CLOSED, &pre_empting).expect("subject"), &closed)
        .await
        .expect("a view may publish its own session events");

    // A view holds the person's data.
    let view = stack.start_view(&unique("phone")).await;
    let started = view.start_session(None, &person, &platform, Duration::from_secs(10)).await.expect("token");
    let (session, token) = (started.session_id, started.token);
    view.store().put(&session, "labs", b"data".to_vec(), Duration::from_secs(60)).expect("held");

    // The person revokes: the consent.ended arrives under its own id, the token dies at the
    // OP, the view is wiped.
    let revoked = browser.delete(stack.url(&format!("/v1/me/consents/{platform}"))).send().await.expect("revoke");
    assert_eq!(revoked.status(), reqwest::StatusCode::ACCEPTED);
    let body: serde_json::Value = revoked.json().await.expect("body");
    let revocation_id = body["revocation_id"].as_str().expect("revocation id").to_owned();
    let receipt = crate::vault::done_receipt(&stack, Some(&cookie), &revocation_id, Duration::from_secs(30)).await;
    assert!(receipt.tokens.iter().all(|t| t.outcome == "revoked" || t.outcome == "already_invalid"), "{receipt:?}");
    let ended = stack.messages_on(subjects::CONSENT_ENDED).await;
    assert!(ended.iter().any(|(_, e)| e["id"] == next_ended.as_str()), "consent.ended published: {ended:?}");
    assert!(!ended.iter().any(|(_, e)| e["id"] == outsiders_guess.as_str()));
    let introspected = stack
        .provider
        .introspect(&platform, &client.client_secret, secrecy::ExposeSecret::expose_secret(&token.token))
        .await;
    assert_eq!(introspected["active"], false, "{introspected}");
    assert_eq!(view.store().counts(), (0, 0), "the view was wiped");
}

#[tokio::test]
async fn a_wipe_ack_naming_sessions_outside_its_wipe_is_refused_and_wipes_nothing() {
    use sea_orm::EntityTrait;
    let mut stack = Stack::start().await;
    stack.start_vault(crate::support::test_vault_config(Vec::new()));
    let (person, other, platform) = (unique("pia"), unique("quinn"), unique("platform"));
    let issuer = stack.provider.issuer.clone();
    crate::vault::grant(&stack, &person, &platform).await;
    crate::vault::grant(&stack, &other, &platform).await;
    let expiry = stack.clock.now() + chrono::Duration::seconds(300);
    let attacker = stack.start_view(&unique("attacker")).await;
    let victim = stack.start_view(&unique("victim")).await;
    let mine = attacker.open_session(&issuer, &person, &platform, expiry).await.expect("session");
    let theirs = victim.open_session(&issuer, &other, &platform, expiry).await.expect("session");
    // The attacker does not ack by itself: it forges its ack below.
    stack.pause_view(attacker.view_id()).await;
    let revocation_id = crate::vault::revoke(&stack, &person, &platform).await;
    custodian_testkit::eventually("the wipe sent to the attacker", Duration::from_secs(15), || async {
        let (_, r) = crate::vault::fetch_receipt(&stack, &stack.http, None, &revocation_id).await;
        r.filter(|r| r.views.iter().any(|v| v.attempts >= 1))
    })
    .await;

    let wipe_id =
        custodian_events::derived_event_id("session.wipe", &format!("{revocation_id}:{}", attacker.view_id()));
    let forged = CloudEvent::new(
        "urn:attacker",
        stack.clock.now(),
        SessionWipedV1 { wipe_id, view_id: attacker.view_id().to_owned(), session_ids: vec![mine, theirs.clone()] },
    );
    let bus = stack.view_bus(attacker.view_id()).await;
    bus.publish_event(&subjects::by_view(subjects::SESSION_WIPED, attacker.view_id()).unwrap(), &forged)
        .await
        .expect("published on its own subject");
    let letters = custodian_testkit::eventually("the vault's dead letter", Duration::from_secs(20), || async {
        let letters = stack.messages_on("lifecycle.deadletter.vault").await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    let reason = letters[0].1["data"]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("did not ask"), "{reason}");
    // The other person's session is untouched, and the wipe is still pending.
    let row = custodian_store::entities::view_session::Entity::find_by_id(theirs.clone())
        .one(stack.store.db())
        .await
        .expect("query")
        .expect("the victim's session");
    assert_eq!(row.wiped_at, None, "a forged ack marked another person's session wiped");
    let (_, receipt) = crate::vault::fetch_receipt(&stack, &stack.http, None, &revocation_id).await;
    let receipt = receipt.expect("receipt");
    let entry = receipt.views.iter().find(|v| v.view_id == attacker.view_id()).expect("attacker on the receipt");
    assert_eq!(entry.state, "pending", "{receipt:?}");
}

#[tokio::test]
async fn a_view_gets_a_token_only_under_an_open_session_of_its_own() {
    use custodian_view_sdk::{HokUse, ViewError};
    use sea_orm::EntityTrait;
    let mut stack = Stack::start().await;
    let (client, settings) = stack.register_platform().await;
    let platform = client.client_id.clone();
    stack.start_vault(crate::support::test_vault_config(vec![settings]));
    let (person, other) = (unique("paula"), unique("quinn"));
    stack.login_through_gateway(&person).await;
    stack.login_through_gateway(&other).await;
    let mine = stack.start_view(&unique("mine")).await;
    let theirs = stack.start_view(&unique("theirs")).await;

    // The session is on record, bound to the view that asked, before the token is handed out.
    let started = mine.start_session(None, &person, &platform, Duration::from_secs(10)).await.expect("own session");
    let recorded = custodian_store::entities::view_session::Entity::find_by_id(started.session_id.clone())
        .one(stack.store.db())
        .await
        .expect("db")
        .expect("the vault recorded the session when it handed out the token");
    assert_eq!((recorded.view_id.as_str(), recorded.subject.as_str()), (mine.view_id(), person.as_str()));
    assert_eq!(recorded.expires_at, started.token.expires_at, "the session's data may live as long as its token");
    let again = mine.access_token(&started.session_id, None, &person, &platform, Duration::from_secs(10)).await;
    assert!(again.is_ok(), "its own open session gets a token again: {again:?}");

    // Another view's session, or another person under this session: no token.
    let borrowed = theirs.access_token(&started.session_id, None, &person, &platform, Duration::from_secs(10)).await;
    assert!(
        matches!(&borrowed, Err(ViewError::NoToken(r)) if r.contains("not a session of this view")),
        "{borrowed:?}"
    );
    let someone_else = mine.access_token(&started.session_id, None, &other, &platform, Duration::from_secs(10)).await;
    assert!(matches!(&someone_else, Err(ViewError::NoToken(_))), "{someone_else:?}");

    // A request naming no session (as a view built before sessions were bound) is refused.
    let bare = custodian_bus::query::<_, custodian_events::vault::TokenReply>(
        stack.view_bus(mine.view_id()).await.client(),
        &format!("{}.{}", custodian_events::vault::TOKEN, mine.view_id()),
        &custodian_events::vault::TokenRequest {
            issuer: None,
            subject: person.clone(),
            platform_id: platform.clone(),
            session_id: None,
            reply_key: custodian_crypto::ReplyKey::new().public_base64(),
        },
        Duration::from_secs(10),
    )
    .await
    .expect("answered");
    assert!(matches!(&bare, custodian_events::vault::TokenReply::Error(r) if r.contains("session_id")), "{bare:?}");

    // A holder-of-key use needs an open session of the view's own, on record.
    let hok = |session_id| HokUse {
        session_id,
        issuer: None,
        subject: &person,
        platform_id: &platform,
        token_type: custodian_events::HokTokenType::Saml2,
        service: "https://services.example/recipe",
        caller_identity: "85073003328",
        caller_organisation: None,
        purpose: None,
    };
    let unknown = mine.holder_of_key_token(hok("never-opened"), Duration::from_secs(10)).await;
    assert!(matches!(&unknown, Err(ViewError::NoToken(_))), "{unknown:?}");
    let borrowed_hok = theirs.holder_of_key_token(hok(&started.session_id), Duration::from_secs(10)).await;
    assert!(matches!(&borrowed_hok, Err(ViewError::NoToken(_))), "{borrowed_hok:?}");

    // Once the view closes it, the session gets nothing more.
    mine.close_session(&started.session_id).await.expect("closed");
    custodian_testkit::eventually("the closed session gets no token", Duration::from_secs(20), || async {
        let after = mine.access_token(&started.session_id, None, &person, &platform, Duration::from_secs(5)).await;
        matches!(&after, Err(ViewError::NoToken(r)) if r.contains("closed")).then_some(())
    })
    .await;
    assert_eq!(stack.count_on(subjects::TOKEN_HOK_USED).await, 0, "no holder-of-key use happened, none was logged");
}
