//! No window: a revocation ends every session a token of the person was handed out for, even
//! one opened while it runs, and is marked done in the step that settles its last item. Two
//! vault replicas share the work, on the real OP, NATS and the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use custodian_store::entities::{pending_wipe, revocation, revocation_token, view_session};
use custodian_testkit::eventually;
use custodian_view_sdk::ViewError;
use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::{Stack, test_vault_config, unique};
use crate::vault::done_receipt;

/// Signs `person` in through the gateway and waits for the ledger to hold their grant.
async fn signed_in(stack: &Stack, person: &str) -> (reqwest::Client, String) {
    let (browser, cookie, _code) = stack.login_through_gateway(person).await;
    eventually("the login to grant consent", Duration::from_secs(15), || {
        let browser = browser.clone();
        let url = stack.url("/v1/me/consents");
        async move {
            let body: Value = browser.get(url).send().await.ok()?.json().await.ok()?;
            (!body["consents"].as_array()?.is_empty()).then_some(())
        }
    })
    .await;
    (browser, cookie)
}

#[tokio::test]
async fn sessions_opened_while_a_revocation_runs_are_all_wiped_on_two_vault_replicas() {
    let mut stack = Stack::start().await;
    let (client, settings) = stack.register_platform().await;
    let platform = client.client_id.clone();
    stack.start_vault(test_vault_config(vec![settings]));
    let second = stack.spawn_vault(test_vault_config(vec![stack.register_platform_settings(&client)]));
    let person = unique("carol");
    let (browser, cookie) = signed_in(&stack, &person).await;
    let views = vec![stack.start_view(&unique("open-a")).await, stack.start_view(&unique("open-b")).await];

    // Four clients keep opening sessions and putting data in them, before, during and after
    // the revocation.
    let stop = CancellationToken::new();
    let opened = Arc::new(AtomicUsize::new(0));
    let mut openers = Vec::new();
    for i in 0..4 {
        let (view, stop, opened) = (views[i % views.len()].clone(), stop.clone(), opened.clone());
        let (person, platform) = (person.clone(), platform.clone());
        openers.push(tokio::spawn(async move {
            let (mut held, mut refused) = (0usize, 0usize);
            while !stop.is_cancelled() {
                match view.start_session(None, &person, &platform, Duration::from_secs(10)).await {
                    Ok(started) => {
                        // A wipe may already have come: then the put finds no session.
                        if view
                            .store()
                            .put(&started.session_id, "labs", b"HbA1c".to_vec(), Duration::from_secs(60))
                            .is_ok()
                        {
                            held += 1;
                        }
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(ViewError::NoToken(_)) => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => panic!("opening a session failed: {e}"),
                }
            }
            (held, refused)
        }));
    }
    eventually("the clients to open some sessions", Duration::from_secs(20), || {
        let opened = opened.clone();
        async move { (opened.load(Ordering::Relaxed) >= 20).then_some(()) }
    })
    .await;

    let response = browser.delete(stack.url(&format!("/v1/me/consents/{platform}"))).send().await.expect("revoke");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.expect("body");
    let revocation_id = accepted["revocation_id"].as_str().expect("revocation id").to_owned();
    let receipt = done_receipt(&stack, Some(&cookie), &revocation_id, Duration::from_secs(30)).await;

    // Done means done: no view holds anything of the person, now or after the clients stop.
    for view in &views {
        assert_eq!(view.store().counts(), (0, 0), "view {} holds data past a done receipt", view.view_id());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let (mut held, mut refused) = (0, 0);
    for opener in openers {
        let (h, r) = opener.await.expect("opener");
        held += h;
        refused += r;
    }
    for view in &views {
        assert_eq!(view.store().counts(), (0, 0), "view {} holds data after the revocation", view.view_id());
    }
    assert!(held >= 20 && refused > 0, "the clients opened {held} sessions and were refused {refused} times");

    // Every session the vault recorded for the person is on the receipt's wipes; none escaped.
    let sessions = view_session::Entity::find()
        .filter(view_session::Column::Subject.eq(person.clone()))
        .all(stack.store.db())
        .await
        .expect("sessions");
    let escaped: Vec<&str> = sessions
        .iter()
        .filter(|s| s.wipe_id.is_none() && s.closed_at.is_none())
        .map(|s| s.session_id.as_str())
        .collect();
    assert!(escaped.is_empty(), "{} of {} sessions escaped the revocation: {escaped:?}", escaped.len(), sessions.len());
    let on_receipt: usize = receipt.views.iter().map(|v| v.session_ids.len()).sum();
    assert_eq!(on_receipt, sessions.len(), "the receipt names every session");
    assert!(receipt.views.iter().all(|v| v.state == "acked"), "{receipt:?}");
    eprintln!("{} sessions opened, {refused} refusals after the revocation, all wiped", sessions.len());
    second.0.cancel();
    let _ = second.1.await;
}

#[tokio::test]
async fn every_revocation_is_done_when_its_last_token_and_ack_are_in_without_the_safety_net() {
    let mut stack = Stack::start().await;
    let (client, settings) = stack.register_platform().await;
    let platform = client.client_id.clone();
    // The sweep for revocations left pending runs at start and then once a minute: it cannot
    // be what finishes these.
    let config = |settings| custodian_vault::VaultConfig { claim_secs: 60, ..test_vault_config(vec![settings]) };
    stack.start_vault(config(settings));
    let second = stack.spawn_vault(config(stack.register_platform_settings(&client)));
    let views = vec![stack.start_view(&unique("done-a")).await, stack.start_view(&unique("done-b")).await];
    let mut people = Vec::new();
    for i in 0..16 {
        let person = unique(&format!("d{i}"));
        let (browser, cookie) = signed_in(&stack, &person).await;
        for view in &views {
            let started = view.start_session(None, &person, &platform, Duration::from_secs(10)).await.expect("session");
            view.store().put(&started.session_id, "k", vec![1; 8], Duration::from_secs(60)).expect("held");
        }
        people.push((browser, cookie));
    }
    // Everyone revokes at once: tokens' outcomes and views' acks land side by side on both
    // replicas.
    let mut revocations = Vec::new();
    for (browser, cookie) in &people {
        let response = browser.delete(stack.url(&format!("/v1/me/consents/{platform}"))).send().await.expect("revoke");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let accepted: Value = response.json().await.expect("body");
        revocations.push((cookie.clone(), accepted["revocation_id"].as_str().expect("id").to_owned()));
    }
    let started = std::time::Instant::now();
    for (cookie, id) in &revocations {
        let receipt = done_receipt(&stack, Some(cookie), id, Duration::from_secs(20)).await;
        assert!(receipt.tokens.iter().all(|t| t.outcome == "revoked"), "{receipt:?}");
        assert_eq!(receipt.views.len(), 2, "{receipt:?}");
    }
    eprintln!("{} revocations done {:?} after the last was accepted", revocations.len(), started.elapsed());

    // Done in the step that settled the last of its items: its finish is no later than 1 s
    // after the later of its last token outcome and its last view ack (the safety net would
    // have taken up to 30 s).
    for (_, id) in &revocations {
        let revocation = revocation::Entity::find_by_id(id.clone()).one(stack.store.db()).await.unwrap().unwrap();
        let last_token = revocation_token::Entity::find()
            .filter(revocation_token::Column::RevocationId.eq(id.clone()))
            .all(stack.store.db())
            .await
            .unwrap()
            .into_iter()
            .filter_map(|t| t.done_at)
            .max()
            .expect("token outcomes");
        let last_ack = pending_wipe::Entity::find()
            .filter(pending_wipe::Column::RevocationId.eq(id.clone()))
            .all(stack.store.db())
            .await
            .unwrap()
            .into_iter()
            .filter_map(|w| w.acked_at)
            .max()
            .expect("view acks");
        let finished = revocation.finished_at.expect("finished");
        let later = last_token.max(last_ack);
        assert!(
            finished >= later && finished - later <= chrono::Duration::seconds(1),
            "revocation {id} finished at {finished}, its last token at {last_token}, its last ack at {last_ack}"
        );
    }
    for view in &views {
        assert_eq!(view.store().counts(), (0, 0));
    }
    second.0.cancel();
    let _ = second.1.await;
}

#[tokio::test]
async fn a_revocation_sent_again_is_the_same_revocation_with_one_receipt() {
    let mut stack = Stack::start().await;
    let (client, settings) = stack.register_platform().await;
    let platform = client.client_id.clone();
    stack.start_vault(test_vault_config(vec![settings]));
    let person = unique("again");
    let (browser, cookie) = signed_in(&stack, &person).await;
    let url = stack.url(&format!("/v1/me/consents/{platform}"));
    let revoke = || async {
        let response = browser.delete(&url).send().await.expect("revoke");
        (response.status(), response.json::<Value>().await.expect("body"))
    };

    // Twice at once, as a browser whose first answer was lost with a gateway re-sends it.
    let ((first_status, first), (second_status, second)) = tokio::join!(revoke(), revoke());
    assert_eq!((first_status, second_status), (StatusCode::ACCEPTED, StatusCode::ACCEPTED), "{first} {second}");
    let id = first["revocation_id"].as_str().expect("id").to_owned();
    assert_eq!(second["revocation_id"], first["revocation_id"], "one revocation");
    done_receipt(&stack, Some(&cookie), &id, Duration::from_secs(30)).await;

    // Once applied, the same request still names it.
    let (status, again) = revoke().await;
    assert_eq!((status, again["revocation_id"].as_str()), (StatusCode::ACCEPTED, Some(id.as_str())), "{again}");
    let revocations = custodian_store::entities::revocation::Entity::find()
        .filter(custodian_store::entities::revocation::Column::Subject.eq(person.clone()))
        .all(stack.store.db())
        .await
        .unwrap();
    assert_eq!(revocations.len(), 1, "one revocation with a receipt");
    assert_eq!(stack.count_on(custodian_events::subjects::CONSENT_REVOKED).await, 1, "one event on the stream");
}

/// The durables a revocation goes through: the ledger's (each term), the vault's, the views'.
async fn revocation_path_durables(stack: &Stack) -> Vec<String> {
    use futures::TryStreamExt;
    let stream = stack.bus.jetstream().get_stream(custodian_events::subjects::STREAM).await.expect("stream");
    let names: Vec<String> = stream.consumer_names().try_collect().await.expect("consumer names");
    let on_path = |n: &String| {
        n.starts_with(custodian_bus::trust::durables::CONSENT_LEDGER)
            || n == custodian_bus::trust::durables::VAULT_LIFECYCLE
            || (n.starts_with("view-") && n.ends_with("-wipes"))
    };
    names.into_iter().filter(on_path).collect()
}

#[tokio::test]
async fn while_the_stream_delivers_nothing_a_revocation_ends_the_tokens_and_wipes_the_views_and_is_done_once_it_does() {
    let mut stack = Stack::start().await;
    let (client, settings) = stack.register_platform().await;
    let platform = client.client_id.clone();
    stack.start_vault(test_vault_config(vec![settings]));
    let person = unique("nudged");
    let (browser, cookie) = signed_in(&stack, &person).await;
    let view = stack.start_view(&unique("nudged")).await;
    let started = view.start_session(None, &person, &platform, Duration::from_secs(10)).await.expect("session");
    view.store().put(&started.session_id, "labs", b"HbA1c".to_vec(), Duration::from_secs(60)).expect("held");

    // Every durable on the path delivers nothing, as while a JetStream cluster elects the
    // leader of a dead node's groups: the revocation goes through on its nudges alone.
    let stream = stack.bus.jetstream().get_stream(custodian_events::subjects::STREAM).await.expect("stream");
    let durables = revocation_path_durables(&stack).await;
    assert!(durables.len() >= 3, "the ledger's, the vault's and the view's durables: {durables:?}");
    let until = async_nats::datetime::add_std_duration(async_nats::datetime::now(), Duration::from_secs(120))
        .expect("a time ahead");
    for durable in &durables {
        let paused = stream.pause_consumer(durable, until).await.expect("pause");
        assert!(paused.paused, "{durable} paused");
    }

    let response = browser.delete(stack.url(&format!("/v1/me/consents/{platform}"))).send().await.expect("revoke");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.expect("body");
    let id = accepted["revocation_id"].as_str().expect("revocation id").to_owned();
    // Tokens withdrawn at the OP and the view's data erased, while the stream is stalled.
    let receipt = eventually("the tokens revoked and the view acked", Duration::from_secs(15), || async {
        let (_, receipt) = crate::vault::fetch_receipt(&stack, &stack.http, Some(&cookie), &id).await;
        let receipt = receipt?;
        let tokens = !receipt.tokens.is_empty() && receipt.tokens.iter().all(|t| t.outcome == "revoked");
        let views = receipt.views.len() == 1 && receipt.views[0].state == "acked";
        (tokens && views).then_some(receipt)
    })
    .await;
    assert_eq!(view.store().counts(), (0, 0), "the view holds nothing of the person");
    // Not done yet: sessions opened before it may still be queued on the stream.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, still) = crate::vault::fetch_receipt(&stack, &stack.http, Some(&cookie), &id).await;
    assert_eq!(still.as_ref().map(|r| r.state.as_str()), Some("pending"), "done only once the stream delivers it");
    assert_eq!(receipt.state, "pending");
    for durable in &durables {
        let info = stream.consumer_info(durable).await.expect("consumer info");
        assert!(info.paused, "{durable} delivered nothing meanwhile");
    }

    // The stream's copies then come: the revocation is done, and nothing else changed.
    for durable in &durables {
        stream.resume_consumer(durable).await.expect("resume");
    }
    let done = done_receipt(&stack, Some(&cookie), &id, Duration::from_secs(20)).await;
    assert_eq!((&done.tokens, &done.views), (&receipt.tokens, &receipt.views), "the copies changed nothing");
    eventually("the stream's copies to be applied", Duration::from_secs(20), || {
        let (stream, durables) = (stream.clone(), durables.clone());
        async move {
            for durable in &durables {
                let info = stream.consumer_info(durable).await.ok()?;
                (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())?;
            }
            Some(())
        }
    })
    .await;
    assert_eq!(stack.count_on(custodian_events::subjects::CONSENT_ENDED).await, 1, "one consent.ended");
    let revocations = revocation::Entity::find()
        .filter(revocation::Column::Subject.eq(person.clone()))
        .all(stack.store.db())
        .await
        .expect("revocations");
    assert_eq!(revocations.len(), 1, "one revocation");
    assert_eq!(view.store().counts(), (0, 0));
}
