//! The token vault and the revocation fan-out, on the real OP (TLS), NATS and the database.

use std::time::Duration;

use custodian_events::vault::Receipt;
use custodian_events::{CloudEvent, ConsentGrantedV1, ConsentRevokedV1, RevokeReason, subjects};
use custodian_store::entities::assertion;
use custodian_testkit::eventually;
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, EntityTrait, Statement};
use serde_json::Value;

use crate::support::{OPS_TOKEN, Stack, stored_bundles, test_vault_config, unique};

/// Every byte the database holds for assertions, as text (a raw SELECT, no entity).
async fn raw_assertion_bytes(stack: &Stack) -> String {
    let backend = stack.store.backend();
    let rows = stack
        .store
        .db()
        .query_all_raw(Statement::from_string(backend, "SELECT * FROM assertions"))
        .await
        .expect("raw select");
    let mut text = String::new();
    for row in rows {
        for column in ["assertion_id", "issuer", "subject", "platform_id", "scopes", "key_id"] {
            text.push_str(&row.try_get::<String>("", column).unwrap_or_default());
        }
        for column in ["wrapped_key", "ciphertext"] {
            let bytes = row.try_get::<Vec<u8>>("", column).unwrap_or_default();
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    text
}

pub(crate) async fn fetch_receipt(
    stack: &Stack,
    http: &reqwest::Client,
    cookie: Option<&str>,
    id: &str,
) -> (StatusCode, Option<Receipt>) {
    let mut request = http.get(stack.url(&format!("/v1/revocations/{id}")));
    request = match cookie {
        Some(c) => request.header("cookie", format!("custodian_session={c}")),
        None => request.bearer_auth(OPS_TOKEN),
    };
    let response = request.send().await.expect("receipt request");
    let status = response.status();
    (status, if status.is_success() { response.json().await.ok() } else { None })
}

pub(crate) async fn done_receipt(stack: &Stack, cookie: Option<&str>, id: &str, timeout: Duration) -> Receipt {
    let http = stack.http.clone();
    eventually("the revocation to finish", timeout, || {
        let http = http.clone();
        async move {
            match fetch_receipt(stack, &http, cookie, id).await {
                (StatusCode::OK, Some(r)) if r.state == "done" => Some(r),
                _ => None,
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_revocation_ends_every_token_at_the_op_and_every_view_session() {
    let mut stack = Stack::start().await;
    let (client, settings) = stack.register_platform().await;
    let platform = client.client_id.clone();
    stack.start_vault(test_vault_config(vec![settings]));
    let person = unique("alice");

    // Login through the gateway, driving the OP's real pages; the grant reaches the ledger.
    let (browser, cookie, _code) = stack.login_through_gateway(&person).await;
    let mine = eventually("the login to grant consent", Duration::from_secs(15), || {
        let browser = browser.clone();
        let url = stack.url("/v1/me/consents");
        async move {
            let body: Value = browser.get(url).send().await.ok()?.json().await.ok()?;
            let consents = body["consents"].as_array()?.clone();
            (!consents.is_empty()).then_some(consents)
        }
    })
    .await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["platform_id"], platform.as_str());
    assert_eq!(mine[0]["state"], "granted");
    assert_eq!(mine[0]["subject"], person.as_str());

    // Tokens are sealed at rest: the raw rows hold none of them.
    let bundles = stored_bundles(&stack).await;
    assert_eq!(bundles.len(), 1, "one assertion for the login");
    let (row, bundle) = &bundles[0];
    let refresh = bundle.refresh_token.clone().expect("offline_access gives a refresh token");
    let access = bundle.access_token.clone();
    let raw = raw_assertion_bytes(&stack).await;
    assert!(raw.contains(&row.assertion_id), "the raw select did read the row");
    for secret in [&access, &refresh] {
        assert!(!raw.contains(secret.as_str()), "a token is stored in clear");
    }
    assert!(!raw.contains(bundle.id_token.as_deref().unwrap_or("no id token")), "the ID token is stored in clear");

    // Two views fetch the person's token from the vault (sealed to them) and hold data.
    let mut views = Vec::new();
    for name in ["view-a", "view-b"] {
        let view = stack.start_view(&unique(name)).await;
        let started =
            view.start_session(None, &person, &platform, Duration::from_secs(10)).await.expect("token from vault");
        let (session, token) = (started.session_id, started.token);
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&token.token),
            access.as_str(),
            "the vault hands out the stored token"
        );
        view.store().put(&session, "labs", b"HbA1c 6.1%".to_vec(), Duration::from_secs(60)).expect("held");
        views.push((view, session));
    }
    let issuer = stack.provider.issuer.clone();
    for token in [&access, &refresh] {
        let before = stack.provider.introspect(&client.client_id, &client.client_secret, token).await;
        assert_eq!(before["active"], true, "the token works before the revocation");
    }

    // The person revokes.
    let response = browser.delete(stack.url(&format!("/v1/me/consents/{platform}"))).send().await.expect("revoke");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.expect("body");
    let revocation_id = accepted["revocation_id"].as_str().expect("revocation id").to_owned();

    // The receipt (the person's own, via the cookie) says every token and view is done.
    let receipt = done_receipt(&stack, Some(&cookie), &revocation_id, Duration::from_secs(20)).await;
    assert_eq!(receipt.platform_id, platform);
    assert_eq!(receipt.issuer, issuer);
    let mut kinds: Vec<(&str, &str)> =
        receipt.tokens.iter().map(|t| (t.token_kind.as_str(), t.outcome.as_str())).collect();
    kinds.sort();
    assert_eq!(kinds, vec![("access", "revoked"), ("refresh", "revoked")], "{receipt:?}");
    assert_eq!(receipt.views.len(), 2, "{receipt:?}");
    for (view, session) in &views {
        let entry = receipt.views.iter().find(|v| v.view_id == view.view_id()).expect("view on the receipt");
        assert_eq!(entry.state, "acked");
        assert_eq!(entry.session_ids, vec![session.clone()]);
        assert!(entry.acked_at.is_some());
        // The data is gone from the view's memory.
        assert!(view.store().get(session, "labs").is_none());
        assert_eq!(view.store().counts(), (0, 0));
    }

    // The OP's own word: both tokens are dead.
    for token in [&access, &refresh] {
        let after = stack.provider.introspect(&client.client_id, &client.client_secret, token).await;
        assert_eq!(after["active"], false, "token still active at the OP after revocation: {after}");
    }
    // The ciphertext is gone, the vault hands out nothing any more.
    assert!(assertion::Entity::find().all(stack.store.db()).await.expect("rows").is_empty());
    let refused = views[0].0.start_session(None, &person, &platform, Duration::from_secs(5)).await;
    assert!(matches!(refused, Err(custodian_view_sdk::ViewError::NoToken(_))), "{refused:?}");
    // One token.revoked per token, on the stream.
    assert_eq!(stack.count_on_settled(subjects::TOKEN_REVOKED, 2).await, 2);
    // How long it took is measured once, from its start to its last token and view.
    let mut registry = prometheus_client::registry::Registry::default();
    stack.vault_metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(text.contains("custodian_vault_revocation_duration_seconds_count 1\n"), "{text}");

    // Someone else cannot read this receipt; an operator can.
    let (other_browser, other_cookie, _) = stack.login_through_gateway(&unique("mallory")).await;
    drop(other_browser);
    let (status, _) = fetch_receipt(&stack, &stack.http, Some(&other_cookie), &revocation_id).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, as_ops) = fetch_receipt(&stack, &stack.http, None, &revocation_id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(as_ops.expect("receipt").revocation_id, revocation_id);
}

/// Grant + revoke published as a platform would (no tokens involved).
pub(crate) async fn grant(stack: &Stack, person: &str, platform: &str) {
    let data = ConsentGrantedV1 {
        issuer: stack.provider.issuer.clone(),
        subject: person.to_owned(),
        platform_id: platform.to_owned(),
        scopes: vec!["openid".into()],
        acr: None,
    };
    stack.publish(subjects::CONSENT_GRANTED, &CloudEvent::new("urn:test", stack.clock.now(), data)).await;
}

pub(crate) async fn revoke(stack: &Stack, person: &str, platform: &str) -> String {
    let data = ConsentRevokedV1 {
        issuer: stack.provider.issuer.clone(),
        subject: person.to_owned(),
        platform_id: platform.to_owned(),
        reason: RevokeReason::User,
        actor: None,
    };
    let event = CloudEvent::new("urn:test", stack.clock.now(), data);
    stack.publish(subjects::CONSENT_REVOKED, &event).await;
    event.id
}

#[tokio::test]
async fn a_view_that_was_away_is_wiped_when_it_comes_back_or_its_data_expired() {
    let mut stack = Stack::start().await;
    stack.start_vault(test_vault_config(Vec::new()));
    let (person, platform) = (unique("bob"), unique("platform"));
    let issuer = stack.provider.issuer.clone();
    grant(&stack, &person, &platform).await;

    // Two views hold data; the "short" one under a token that expires in 3 s.
    let away = stack.start_view(&unique("away")).await;
    let short = stack.start_view(&unique("short")).await;
    let long_expiry = stack.clock.now() + chrono::Duration::seconds(300);
    let short_expiry = stack.clock.now() + chrono::Duration::seconds(3);
    let s_away = away.open_session(&issuer, &person, &platform, long_expiry).await.expect("session");
    away.store().put(&s_away, "notes", b"x".to_vec(), Duration::from_secs(200)).expect("put");
    let s_short = short.open_session(&issuer, &person, &platform, short_expiry).await.expect("session");
    short.store().put(&s_short, "notes", b"y".to_vec(), Duration::from_secs(2)).expect("put");
    // The SDK refuses to keep anything past the token.
    assert!(short.store().put(&s_short, "more", b"z".to_vec(), Duration::from_secs(30)).is_err());

    // Both views go away (their connections stay, their listeners stop); memory is kept.
    stack.pause_view(away.view_id()).await;
    stack.pause_view(short.view_id()).await;
    let revocation_id = revoke(&stack, &person, &platform).await;

    let pending = eventually("the wipes to be sent", Duration::from_secs(15), || {
        let http = stack.http.clone();
        let stack = &stack;
        let id = revocation_id.clone();
        async move {
            let (_, r) = fetch_receipt(stack, &http, None, &id).await;
            r.filter(|r| r.views.len() == 2 && r.views.iter().all(|v| v.attempts >= 1))
        }
    })
    .await;
    assert_eq!(pending.state, "pending", "nobody acked yet: {pending:?}");
    assert!(away.store().get(&s_away, "notes").is_some(), "the away view still holds its data meanwhile");

    // The short-lived data expires with its token, whether or not a wipe arrives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(short.store().get(&s_short, "notes").is_none(), "never held past the token");
    short.store().evict_expired();
    assert_eq!(short.store().counts(), (0, 0));

    // The away view comes back: it gets the wipe it missed and acks.
    stack.run_view(&away);
    let done = done_receipt(&stack, None, &revocation_id, Duration::from_secs(20)).await;
    assert!(away.store().get(&s_away, "notes").is_none());
    assert_eq!(away.store().counts(), (0, 0));
    let away_entry = done.views.iter().find(|v| v.view_id == away.view_id()).expect("away on receipt");
    assert_eq!(away_entry.state, "acked");
    let short_entry = done.views.iter().find(|v| v.view_id == short.view_id()).expect("short on receipt");
    assert_eq!(short_entry.state, "expired_by_ttl", "given up only after the session's expiry: {done:?}");
}

#[tokio::test]
async fn a_vault_crash_in_the_middle_of_a_fan_out_of_1000_sessions_loses_nothing() {
    let mut stack = Stack::start().await;
    let (client, settings) = stack.register_platform().await;
    let platform = client.client_id.clone();
    stack.start_vault(test_vault_config(vec![settings]));

    // Ten people signed in (tokens at the OP), 100 sessions each across four views.
    let mut people = Vec::new();
    for i in 0..10 {
        let person = unique(&format!("p{i}"));
        let (_browser, _cookie, _code) = stack.login_through_gateway(&person).await;
        people.push(person);
    }
    let mut views = Vec::new();
    for v in 0..4 {
        views.push(stack.start_view(&unique(&format!("fan{v}"))).await);
    }
    let issuer = stack.provider.issuer.clone();
    let expiry = stack.clock.now() + chrono::Duration::seconds(600);
    for (i, person) in people.iter().enumerate() {
        for s in 0..100 {
            let view = &views[(i + s) % views.len()];
            let session = view.open_session(&issuer, person, &platform, expiry).await.expect("session");
            view.store().put(&session, "k", vec![1; 16], Duration::from_secs(300)).expect("put");
        }
    }
    stack.vault_knows_sessions(&platform, 1000).await;
    let bundles = stored_bundles(&stack).await;
    assert_eq!(bundles.len(), 10);
    eventually("the ledger to hold 10 grants", Duration::from_secs(15), || async {
        let q = custodian_events::queries::ConsentQuery { platform_id: Some(platform.clone()), ..Default::default() };
        (stack.ledger(q).await.iter().filter(|c| c.state == "granted").count() == 10).then_some(())
    })
    .await;

    // Everyone revokes; the vault is killed as soon as the fan-out has begun.
    let mut revocations = Vec::new();
    for person in &people {
        revocations.push(revoke(&stack, person, &platform).await);
    }
    eventually("the fan-out to begin", Duration::from_secs(15), || async {
        (stack.count_on(&format!("{}.>", subjects::SESSION_WIPE_PREFIX)).await > 0).then_some(())
    })
    .await;
    stack.crash_vault().await;
    let wiped_at_crash = stack.count_on(subjects::SESSION_WIPED).await;
    let revoked_at_crash = stack.count_on(subjects::TOKEN_REVOKED).await;
    eprintln!("at the crash: {wiped_at_crash} wipe acks, {revoked_at_crash} tokens revoked");

    stack.start_vault(test_vault_config(vec![stack.register_platform_settings(&client)]));
    for id in &revocations {
        let r = done_receipt(&stack, None, id, Duration::from_secs(60)).await;
        assert!(r.tokens.iter().all(|t| t.outcome == "revoked"), "{r:?}");
        assert!(r.views.iter().all(|v| v.state == "acked"), "{r:?}");
        assert_eq!(r.views.iter().map(|v| v.session_ids.len()).sum::<usize>(), 100, "{r:?}");
    }
    for view in &views {
        assert_eq!(view.store().counts(), (0, 0), "view {} still holds data", view.view_id());
    }
    for (_, bundle) in &bundles {
        for token in [Some(&bundle.access_token), bundle.refresh_token.as_ref()].into_iter().flatten() {
            let info = stack.provider.introspect(&client.client_id, &client.client_secret, token).await;
            assert_eq!(info["active"], false, "a token survived the crash: {info}");
        }
    }
    assert!(assertion::Entity::find().all(stack.store.db()).await.expect("rows").is_empty());
}

#[tokio::test]
async fn rotating_the_key_encryption_key_rewraps_every_record_while_tokens_keep_flowing() {
    use custodian_crypto::{KeyConfig, KeyRing, KeyRingConfig, generate_key};
    let mut stack = Stack::start().await;
    let (client, settings) = stack.register_platform().await;
    let platform = client.client_id.clone();
    let (old_secret, new_secret) = (generate_key(), generate_key());
    let ring = |current: &str, keys: &[(&str, &str)]| {
        KeyRing::from_config(&KeyRingConfig {
            current: current.into(),
            keys: keys.iter().map(|(id, s)| KeyConfig { id: (*id).into(), secret: (*s).into() }).collect(),
        })
        .expect("ring")
    };
    stack.keyring = ring("old", &[("old", &old_secret)]);
    let mut config = test_vault_config(vec![settings]);
    config.maintenance_every_secs = 1;
    stack.start_vault(config.clone());
    let people = [unique("dora"), unique("eve")];
    for person in &people {
        stack.login_through_gateway(person).await;
    }
    let rows = assertion::Entity::find().all(stack.store.db()).await.expect("rows");
    assert!(rows.len() == 2 && rows.iter().all(|r| r.key_id == "old"));
    let ciphertexts: Vec<Vec<u8>> = rows.iter().map(|r| r.ciphertext.clone()).collect();

    // New key current, old one still in the ring: the vault re-wraps in the background.
    stack.crash_vault().await;
    stack.keyring = ring("new", &[("old", &old_secret), ("new", &new_secret)]);
    stack.start_vault(config.clone());
    let view = stack.start_view(&unique("rot")).await;
    let token = view.start_session(None, &people[0], &platform, Duration::from_secs(10)).await;
    assert!(token.is_ok(), "tokens flow during the rotation: {token:?}");
    eventually("every record re-wrapped under the new key", Duration::from_secs(15), || async {
        let rows = assertion::Entity::find().all(stack.store.db()).await.ok()?;
        rows.iter().all(|r| r.key_id == "new").then_some(rows)
    })
    .await
    .iter()
    .for_each(|r| assert!(ciphertexts.contains(&r.ciphertext), "only the data key's wrapping changed"));

    // The old key can now leave the ring: every token is still readable.
    stack.crash_vault().await;
    stack.keyring = ring("new", &[("new", &new_secret)]);
    stack.start_vault(config);
    for person in &people {
        let started = std::time::Instant::now();
        let token = view.start_session(None, person, &platform, Duration::from_secs(40)).await;
        eprintln!("token for {person} after {:?}", started.elapsed());
        assert!(token.is_ok(), "readable with the new key only: {token:?}");
    }
}

#[tokio::test]
async fn a_record_is_deleted_when_its_longest_lived_token_expires() {
    let mut stack = Stack::start().await;
    let (_client, settings) = stack.register_platform().await;
    let mut config = test_vault_config(vec![settings]);
    config.maintenance_every_secs = 1;
    stack.start_vault(config);
    stack.login_through_gateway(&unique("fred")).await;
    let row = assertion::Entity::find().one(stack.store.db()).await.expect("query").expect("a row");
    assert!(row.expires_at > row.access_expires_at, "the refresh token outlives the access token");
    // Time passes: both tokens are past their expiry (moved in the row, not the clock).
    let past = stack.clock.now() - chrono::Duration::seconds(1);
    let mut expired: assertion::ActiveModel = row.into();
    expired.expires_at = sea_orm::ActiveValue::Set(past);
    expired.access_expires_at = sea_orm::ActiveValue::Set(past);
    sea_orm::ActiveModelTrait::update(expired, stack.store.db()).await.expect("update");
    eventually("the expired record to be deleted", Duration::from_secs(10), || async {
        assertion::Entity::find().all(stack.store.db()).await.ok()?.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn logout_ends_the_session_here_and_sends_the_browser_to_the_op() {
    let mut stack = Stack::start().await;
    let (client, settings) = stack.register_platform().await;
    stack.start_vault(test_vault_config(vec![settings]));
    let (browser, cookie, _) = stack.login_through_gateway(&unique("gina")).await;
    let signed_in = browser.get(stack.url("/v1/me/consents")).send().await.expect("me");
    assert_eq!(signed_in.status(), StatusCode::OK);

    // The portal's sign-out form, with the token it carries (bound to the session cookie).
    let portal = browser.get(stack.url("/")).send().await.expect("portal").text().await.expect("page");
    let csrf = portal
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the sign-out form's token")
        .to_owned();
    let out = browser.post(stack.url("/logout")).form(&[("csrf", csrf)]).send().await.expect("logout");
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let location = out.headers()[reqwest::header::LOCATION].to_str().expect("location").to_owned();
    assert!(location.starts_with(&format!("{}/session/end", stack.provider.issuer)), "{location}");
    assert!(location.contains(&format!("client_id={}", client.client_id)), "{location}");
    let cleared = out
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.starts_with("custodian_session=;") && v.contains("Max-Age=0")));
    assert!(cleared, "the session cookie is cleared");

    // The old cookie is dead server-side too (not just forgotten by the browser).
    let replay = stack
        .http
        .get(stack.url("/v1/me/consents"))
        .header("cookie", format!("custodian_session={cookie}"))
        .send()
        .await
        .expect("replay");
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    let problem: Value = replay.json().await.expect("problem+json");
    assert!(problem["detail"].as_str().unwrap_or_default().contains("sign in again"), "{problem}");
}

#[tokio::test]
async fn a_forged_or_replayed_callback_is_refused() {
    let mut stack = Stack::start().await;
    let (_client, settings) = stack.register_platform().await;
    stack.start_vault(test_vault_config(vec![settings]));
    // No login cookie: a callback not started in this browser.
    let forged = stack.http.get(stack.url("/callback?code=abc&state=xyz")).send().await.expect("callback");
    assert_eq!(forged.status(), StatusCode::BAD_REQUEST);
    // The OP reporting an error is shown as such.
    let denied = stack.http.get(stack.url("/callback?error=access_denied&state=x")).send().await.expect("callback");
    assert_eq!(denied.status(), StatusCode::BAD_REQUEST);
    assert!(denied.text().await.unwrap_or_default().contains("access_denied"));
    // A real callback used twice: the second is refused (single-use state and code).
    let browser = stack.provider.browser();
    let start = browser.get(stack.url("/login")).send().await.expect("login");
    let to_op = start.headers()[reqwest::header::LOCATION].to_str().expect("location").to_owned();
    let back = stack.provider.drive_interactions(&browser, to_op, &unique("hank"), &stack.url("/callback")).await;
    assert_eq!(browser.get(&back).send().await.expect("first").status(), StatusCode::SEE_OTHER);
    let login_state = reqwest::Url::parse(&back)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("state");
    let replay =
        stack.http.get(&back).header("cookie", format!("custodian_login={login_state}")).send().await.expect("replay");
    assert_eq!(replay.status(), StatusCode::FORBIDDEN, "{:?}", replay.text().await);
}

#[tokio::test]
async fn a_revocation_settled_by_a_replica_that_stopped_before_marking_it_done_is_finished() {
    use custodian_store::entities::{pending_wipe, revocation, revocation_token};
    let mut stack = Stack::start().await;
    let (_client, settings) = stack.register_platform().await;
    let now = stack.clock.now();
    let started = now - chrono::Duration::seconds(120);
    let revocation_row = |id: &str| revocation::Model {
        revocation_id: id.to_owned(),
        ended_event_id: unique("ended"),
        issuer: "https://op.example".into(),
        subject: unique("p"),
        platform_id: "platform".into(),
        reason: "revoked".into(),
        state: "pending".into(),
        started_at: started,
        finished_at: None,
        updated_at: started,
        traceparent: None,
        awaits_stream: false,
    };
    let wipe_row = |revocation_id: &str, state: &str, next_attempt_at| pending_wipe::Model {
        wipe_id: unique("wipe"),
        revocation_id: Some(revocation_id.to_owned()),
        view_id: "view".into(),
        issuer: "https://op.example".into(),
        subject: "p".into(),
        platform_id: "platform".into(),
        reason: "consent_ended".into(),
        session_ids: "[\"s1\"]".into(),
        expires_at: now + chrono::Duration::seconds(600),
        state: state.into(),
        attempts: 1,
        next_attempt_at,
        sent_at: Some(started),
        acked_at: (state == "acked").then_some(started),
        created_at: started,
    };
    // As items settled outside the vault's own transactions leave it (by hand, or by a replica
    // of an earlier version): the token revoked and the wipe acked, the revocation still
    // pending, and nothing left that would touch it again.
    let settled = unique("settled");
    // Beside it, one whose wipe is still unanswered (not due again for an hour): not finished.
    let waiting = unique("waiting");
    let db = stack.store.db();
    revocation::Entity::insert_many(
        [revocation_row(&settled), revocation_row(&waiting)].map(Into::<revocation::ActiveModel>::into),
    )
    .exec_without_returning(db)
    .await
    .expect("revocations");
    revocation_token::Entity::insert(revocation_token::ActiveModel::from(revocation_token::Model {
        id: format!("{settled}:a:access"),
        revocation_id: settled.clone(),
        assertion_id: "a".into(),
        token_kind: "access".into(),
        outcome: "revoked".into(),
        attempts: 1,
        last_error: None,
        next_attempt_at: started,
        done_at: Some(started),
    }))
    .exec_without_returning(db)
    .await
    .expect("token");
    let rows = [wipe_row(&settled, "acked", started), wipe_row(&waiting, "pending", now + chrono::Duration::hours(1))];
    pending_wipe::Entity::insert_many(rows.map(Into::<pending_wipe::ActiveModel>::into))
        .exec_without_returning(db)
        .await
        .expect("wipes");

    stack.start_vault(test_vault_config(vec![settings]));
    let receipt = done_receipt(&stack, None, &settled, Duration::from_secs(15)).await;
    assert!(receipt.finished_at.is_some(), "{receipt:?}");
    let http = stack.http.clone();
    let (status, waiting_receipt) = fetch_receipt(&stack, &http, None, &waiting).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(waiting_receipt.expect("receipt").state, "pending", "a revocation with a wipe unanswered was finished");
}

/// Views' acks in one batch, out of key order, one twice, one from the wrong view, one for a
/// wipe never sent: each acked wipe once, its sessions wiped; the wrong view's ack refused
/// (dead letter with the reason) and its wipe still pending; the unknown one changes nothing.
#[tokio::test]
async fn wipe_acks_are_applied_together_and_a_wrong_views_ack_is_refused() {
    use custodian_events::SessionWipedV1;
    use custodian_store::entities::{pending_wipe, view_session};
    use sea_orm::{ActiveModelTrait, IntoActiveModel};
    let mut stack = Stack::infrastructure().await;
    let now = stack.clock.now();
    let later = now + chrono::Duration::hours(1);
    let run = unique("acks");
    let wipe = |id: &str, view: &str, sessions: &[&str]| pending_wipe::Model {
        wipe_id: format!("{run}-{id}"),
        revocation_id: None,
        view_id: view.into(),
        issuer: "https://op.example".into(),
        subject: "person".into(),
        platform_id: "tp".into(),
        reason: "consent_revoked".into(),
        session_ids: serde_json::to_string(&sessions.iter().map(|s| format!("{run}-{s}")).collect::<Vec<_>>())
            .expect("json"),
        expires_at: later,
        state: "pending".into(),
        attempts: 1,
        // Not due: the driver leaves them alone while the acks come in.
        next_attempt_at: later,
        sent_at: Some(now),
        acked_at: None,
        created_at: now,
    };
    for w in [wipe("w1", "view-a", &["s1", "s2"]), wipe("w2", "view-a", &["s3"]), wipe("w3", "view-b", &["s4"])] {
        w.into_active_model().insert(stack.store.db()).await.expect("wipe");
    }
    for (s, view) in [("s1", "view-a"), ("s2", "view-a"), ("s3", "view-a"), ("s4", "view-b")] {
        view_session::Model {
            session_id: format!("{run}-{s}"),
            view_id: view.into(),
            issuer: "https://op.example".into(),
            subject: "person".into(),
            platform_id: "tp".into(),
            expires_at: later,
            opened_at: now,
            closed_at: None,
            wipe_id: None,
            wiped_at: None,
            assertion_id: None,
        }
        .into_active_model()
        .insert(stack.store.db())
        .await
        .expect("session");
    }
    let ack = |id: &str, view: &str, sessions: &[&str]| {
        let data = SessionWipedV1 {
            wipe_id: format!("{run}-{id}"),
            view_id: view.into(),
            session_ids: sessions.iter().map(|s| format!("{run}-{s}")).collect(),
        };
        custodian_bus::Outgoing::event(subjects::SESSION_WIPED, &CloudEvent::new("urn:test", now, data))
    };
    let acks = [
        ack("w2", "view-a", &["s3"]),
        ack("w1", "view-a", &["s1", "s2"]),
        ack("w1", "view-a", &["s1", "s2"]),
        ack("w3", "view-a", &["s4"]),
        ack("unknown", "view-a", &["s9"]),
    ];
    assert!(stack.bus.publish_all(&acks, 8).await.iter().all(Result::is_ok));
    stack.start_vault(test_vault_config(vec![]));

    eventually("the wrong view's ack dead-lettered", Duration::from_secs(30), || async {
        (stack.count_on("lifecycle.deadletter.vault").await == 1).then_some(())
    })
    .await;
    let letters = stack.messages_on("lifecycle.deadletter.vault").await;
    let reason = letters[0].1["data"]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("was sent to view view-b, not view-a"), "{reason}");
    let wipes = pending_wipe::Entity::find().all(stack.store.db()).await.expect("wipes");
    let state = |id: &str| {
        let w = wipes.iter().find(|w| w.wipe_id == format!("{run}-{id}")).expect("wipe");
        (w.state.clone(), w.acked_at.is_some())
    };
    assert_eq!(state("w1"), ("acked".to_owned(), true));
    assert_eq!(state("w2"), ("acked".to_owned(), true));
    assert_eq!(state("w3"), ("pending".to_owned(), false), "the wrong view cannot settle it");
    assert_eq!(wipes.len(), 3, "an ack for an unknown wipe records nothing");
    let sessions = view_session::Entity::find().all(stack.store.db()).await.expect("sessions");
    let wiped =
        |s: &str| sessions.iter().find(|v| v.session_id == format!("{run}-{s}")).expect("session").wiped_at.is_some();
    assert!(wiped("s1") && wiped("s2") && wiped("s3"), "every acked session wiped");
    assert!(!wiped("s4"), "not by the wrong view's ack");
}
