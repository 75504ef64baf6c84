//! The audit chain and the privacy log, on real NATS, the database and the OP.

use std::time::Duration;

use custodian_audit::verify::{Break, verify};
use custodian_audit::{AuditConfig, chain};
use custodian_events::{CloudEvent, ConsentGrantedV1, HokTokenType, subjects};
use custodian_store::entities::audit_entry;
use custodian_testkit::eventually;
use custodian_view_sdk::HokUse;
use reqwest::StatusCode;
use sea_orm::{ActiveModelTrait, ConnectionTrait, DbBackend, EntityTrait, QueryOrder, Statement};
use serde_json::{Value, json};

use crate::support::{DPO_TOKEN, OPS_TOKEN, Stack, test_vault_config, unique};

pub(crate) fn audit_config(checkpoint_file: Option<std::path::PathBuf>) -> AuditConfig {
    AuditConfig { checkpoint_every: 5, checkpoint_secs: 3600, checkpoint_file, ack_wait_secs: 2, ..Default::default() }
}

async fn chained(stack: &Stack) -> Vec<audit_entry::Model> {
    audit_entry::Entity::find().order_by_asc(audit_entry::Column::Seq).all(stack.store.db()).await.expect("chain")
}

/// Waits (up to `within`) until the chain is as long as `events`, then checks that it holds
/// each of them once, in stream order, at positions 1..=n with no gap, and that it verifies.
async fn assert_chain_holds(
    stack: &Stack,
    events: &[CloudEvent<ConsentGrantedV1>],
    what: &str,
    within: Duration,
) -> custodian_audit::verify::Report {
    let rows = eventually(what, within, || async {
        let rows = chained(stack).await;
        (rows.len() >= events.len()).then_some(rows)
    })
    .await;
    let expected: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(rows.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>(), expected, "each once, in stream order");
    let positions: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(positions, (1..=events.len() as i64).collect::<Vec<_>>(), "no gap");
    let report = verify(stack.store.db(), &stack.audit_signer.public_key_base64(), None).await.expect("verify");
    assert_eq!(report.broken, None, "{report:?}");
    report
}

async fn wait_for_chain(stack: &Stack, at_least: usize) -> Vec<audit_entry::Model> {
    eventually("the audit chain to catch up", Duration::from_secs(40), || async {
        let rows = chained(stack).await;
        (rows.len() >= at_least).then_some(rows)
    })
    .await
}

#[tokio::test]
async fn every_event_of_a_revocation_is_chained_once_in_stream_order() {
    let mut stack = Stack::start().await;
    let (client, settings) = stack.register_platform().await;
    stack.start_vault(test_vault_config(vec![settings]));
    stack.start_audit(audit_config(None));
    let person = unique("ivan");
    let (browser, cookie, _) = stack.login_through_gateway(&person).await;
    eventually("the login's grant in the ledger", Duration::from_secs(30), || async {
        let q = custodian_events::queries::ConsentQuery { subject: Some(person.clone()), ..Default::default() };
        (!stack.ledger(q).await.is_empty()).then_some(())
    })
    .await;
    let view = stack.start_view(&unique("aud")).await;
    let started = view.start_session(None, &person, &client.client_id, Duration::from_secs(10)).await.expect("token");
    let session = started.session_id;
    view.store().put(&session, "k", b"v".to_vec(), Duration::from_secs(30)).expect("put");
    let revoked =
        browser.delete(stack.url(&format!("/v1/me/consents/{}", client.client_id))).send().await.expect("revoke");
    assert_eq!(revoked.status(), StatusCode::ACCEPTED);
    let revocation_id = revoked.json::<Value>().await.expect("body")["revocation_id"].as_str().expect("id").to_owned();
    let receipt = eventually("the revocation to finish", Duration::from_secs(40), || async {
        let r = stack
            .http
            .get(stack.url(&format!("/v1/revocations/{revocation_id}")))
            .header("cookie", format!("custodian_session={cookie}"))
            .send()
            .await
            .ok()?;
        let receipt = r.json::<Value>().await.ok()?;
        (receipt["state"] == "done").then_some(receipt)
    })
    .await;
    let tokens = receipt["tokens"].as_array().expect("the receipt's tokens").len();
    assert!(tokens > 0, "the person's tokens are on the receipt: {receipt}");
    // Some events of the revocation (token.revoked from the vault's outbox, the view's
    // session.wiped) reach the stream after it is marked done: the chain must become exactly
    // the stream, both read afresh until they agree, once each of those is on the stream.
    let wiped = subjects::by_view(subjects::SESSION_WIPED, view.view_id()).expect("view-bound subject");
    let (rows, stream_ids) =
        custodian_testkit::eventually_explained("the chain to be the stream", Duration::from_secs(60), || async {
            let stream = stack.messages_on(subjects::ALL).await;
            let on_stream = |s: &str| stream.iter().filter(|(subject, _)| subject == s).count();
            if on_stream(subjects::TOKEN_REVOKED) < tokens || on_stream(&wiped) == 0 {
                return Err(format!("{} events, the token's revocation or the view's wipe not yet", stream.len()));
            }
            let ids: Vec<String> = stream.iter().map(|(_, v)| v["id"].as_str().expect("id").to_owned()).collect();
            let rows = chained(&stack).await;
            let chain_ids: Vec<String> = rows.iter().map(|r| r.event_id.clone()).collect();
            // Everything the stream holds, in stream order, is the chain, once each, in that order.
            if chain_ids == ids { Ok((rows, ids)) } else { Err(format!("chain {chain_ids:?} against stream {ids:?}")) }
        })
        .await;
    let types: Vec<&str> = rows.iter().map(|r| r.subject.as_str()).collect();
    let by_view = |subject: &str| subjects::by_view(subject, view.view_id()).expect("view-bound subject");
    for expected in [
        subjects::CONSENT_GRANTED,
        &by_view(subjects::SESSION_OPENED),
        subjects::CONSENT_REVOKED,
        subjects::CONSENT_ENDED,
        subjects::TOKEN_REVOKED,
        &by_view(subjects::SESSION_WIPED),
    ] {
        assert!(types.contains(&expected), "{expected} missing from the chain: {types:?}");
    }
    assert!(types.iter().any(|t| t.starts_with("lifecycle.session.wipe.")), "the wipe command is chained");
    let report = verify(stack.store.db(), &stack.audit_signer.public_key_base64(), None).await.expect("verify");
    assert_eq!(report.broken, None, "{report:?}");
    assert_eq!(report.entries as usize, stream_ids.len());
}

/// A grant to the audit tests' platform.
fn grant(subject: String) -> ConsentGrantedV1 {
    ConsentGrantedV1 {
        issuer: "https://op.example".into(),
        subject,
        platform_id: "tp-audit".into(),
        scopes: vec!["openid".into()],
        acr: None,
    }
}

async fn publish_grants(stack: &Stack, n: usize) {
    for i in 0..n {
        let data = grant(format!("tamper-{i}"));
        stack.publish(subjects::CONSENT_GRANTED, &CloudEvent::new("urn:test", stack.clock.now(), data)).await;
    }
}

async fn exec(stack: &Stack, sql: &str) -> Result<u64, sea_orm::DbErr> {
    stack.store.db().execute_unprepared(sql).await.map(|r| r.rows_affected())
}

#[tokio::test]
async fn changing_deleting_inserting_or_truncating_is_detected_at_its_position() {
    let mut stack = Stack::infrastructure().await;
    let dir = tempfile::tempdir().expect("dir");
    let export = dir.path().join("checkpoints.jsonl");
    stack.start_audit(audit_config(Some(export.clone())));
    publish_grants(&stack, 30).await;
    let rows = wait_for_chain(&stack, 30).await;
    let key = stack.audit_signer.public_key_base64();
    let exported = || {
        custodian_audit::read_checkpoints(&std::fs::read_to_string(&export).unwrap_or_default()).expect("checkpoints")
    };
    eventually("six checkpoints exported", Duration::from_secs(10), || async { (exported().len() == 6).then_some(()) })
        .await;
    let check = |expected: Option<Break>| {
        let stack = &stack;
        let key = key.clone();
        let exported = exported();
        async move {
            let report = verify(stack.store.db(), &key, Some(exported)).await.expect("verify");
            assert_eq!(report.broken, expected, "{report:?}");
        }
    };
    check(None).await;

    // The table refuses changes.
    let refused = exec(&stack, "UPDATE audit_log SET payload = '{}' WHERE seq = 7").await;
    assert!(refused.is_err_and(|e| e.to_string().contains("append-only")), "UPDATE must fail");
    assert!(exec(&stack, "DELETE FROM audit_log WHERE seq = 7").await.is_err(), "DELETE must fail");

    // An attacker with the database's owner rights lifts the triggers.
    match stack.store.backend() {
        DbBackend::Postgres => {
            exec(&stack, "ALTER TABLE audit_log DISABLE TRIGGER USER").await.expect("disable triggers");
        }
        _ => {
            exec(&stack, "DROP TRIGGER audit_log_no_update").await.expect("drop");
            exec(&stack, "DROP TRIGGER audit_log_no_delete").await.expect("drop");
        }
    }
    let original = rows[6].clone();

    // 1. One stored payload changed.
    let mut changed: audit_entry::ActiveModel = original.clone().into();
    changed.payload = sea_orm::ActiveValue::Set(original.payload.replace("tamper-6", "tamper-X"));
    changed.update(stack.store.db()).await.expect("tamper");
    check(Some(Break::PayloadChanged { seq: 7 })).await;
    // …and its digest too: the link breaks instead.
    let mut changed: audit_entry::ActiveModel = original.clone().into();
    let forged = original.payload.replace("tamper-6", "tamper-X");
    changed.digest = sea_orm::ActiveValue::Set(chain::digest(&forged));
    changed.payload = sea_orm::ActiveValue::Set(forged);
    changed.update(stack.store.db()).await.expect("tamper");
    check(Some(Break::HashMismatch { seq: 7 })).await;
    let restored: audit_entry::ActiveModel = original.clone().into();
    restored.reset_all().update(stack.store.db()).await.expect("restore");
    check(None).await;

    // 2. A row deleted.
    let ninth = rows[8].clone();
    audit_entry::Entity::delete_by_id(9i64).exec(stack.store.db()).await.expect("delete");
    check(Some(Break::Missing { seq: 9, found: 10 })).await;
    audit_entry::Entity::insert(sea_orm::IntoActiveModel::into_active_model(ninth))
        .exec(stack.store.db())
        .await
        .expect("restore");
    check(None).await;

    // 3. The tail truncated (checkpoint 30 was exported).
    let tail: Vec<audit_entry::Model> = rows[27..].to_vec();
    exec(&stack, "DELETE FROM audit_log WHERE seq > 27").await.expect("truncate");
    check(Some(Break::Truncated { checkpoint: 30, last: 27 })).await;
    for row in tail {
        audit_entry::Entity::insert(sea_orm::IntoActiveModel::into_active_model(row))
            .exec(stack.store.db())
            .await
            .expect("restore");
    }
    check(None).await;

    // 4. A forged entry inserted at 13 (later ones renumbered), correctly linked to 12.
    for seq in (13..=30).rev() {
        exec(&stack, &format!("UPDATE audit_log SET seq = {} WHERE seq = {seq}", seq + 1)).await.expect("shift");
    }
    let prev = &rows[11];
    let payload = r#"{"forged":true}"#;
    let digest = chain::digest(payload);
    let hash = chain::link_hash(&prev.hash, 13, "lifecycle.consent.revoked", "forged-1", &digest);
    let forged = audit_entry::Model {
        seq: 13,
        recorded_at: prev.recorded_at,
        subject: "lifecycle.consent.revoked".into(),
        event_id: "forged-1".into(),
        event_type: "custodian.consent.revoked.v1".into(),
        event_time: prev.event_time,
        payload: payload.into(),
        digest,
        prev_hash: prev.hash.clone(),
        hash,
    };
    audit_entry::Entity::insert(sea_orm::IntoActiveModel::into_active_model(forged))
        .exec(stack.store.db())
        .await
        .expect("insert");
    check(Some(Break::LinkBroken { seq: 14 })).await;
}

#[tokio::test]
async fn ten_holder_of_key_uses_make_ten_privacy_log_entries_readable_by_the_dpo_only() {
    let mut stack = Stack::start().await;
    let (client, settings) = stack.register_platform().await;
    stack.start_vault(test_vault_config(vec![settings]));
    stack.start_audit(audit_config(None));
    let person = unique("julia");
    stack.login_through_gateway(&person).await;
    let view = stack.start_view(&unique("hok")).await;
    let session = view
        .start_session(None, &person, &client.client_id, Duration::from_secs(10))
        .await
        .expect("session")
        .session_id;
    let national_number = "85073003328";
    let mut assertion_ids = Vec::new();
    for i in 0..10 {
        let token = view
            .holder_of_key_token(
                HokUse {
                    session_id: &session,
                    issuer: None,
                    subject: &person,
                    platform_id: &client.client_id,
                    token_type: if i % 2 == 0 { HokTokenType::Saml1 } else { HokTokenType::Saml2 },
                    service: "https://services.ehealth.example/recipe/v1",
                    caller_identity: national_number,
                    caller_organisation: Some("nihii:19012345"),
                    purpose: Some("prescription"),
                },
                Duration::from_secs(10),
            )
            .await
            .expect("holder-of-key token");
        let xml = String::from_utf8(
            base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                secrecy::ExposeSecret::expose_secret(&token.token),
            )
            .expect("base64url"),
        )
        .expect("xml");
        assert!(xml.contains(&token.assertion_id) && xml.contains("holder-of-key"), "{xml}");
        assertion_ids.push(token.assertion_id);
    }
    let asked = std::sync::atomic::AtomicU64::new(0);
    let entries = eventually("ten privacy-log entries", Duration::from_secs(20), || async {
        let r = stack.http.get(stack.url("/v1/privacy-log")).bearer_auth(DPO_TOKEN).send().await.ok()?;
        if r.status() == StatusCode::OK {
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let body: Value = r.json().await.ok()?;
        let entries = body["entries"].as_array()?.clone();
        (entries.len() == 10).then_some(entries)
    })
    .await;
    for (entry, assertion_id) in entries.iter().zip(&assertion_ids) {
        assert_eq!(entry["caller_identity"], national_number, "the DPO sees the real caller");
        assert_eq!(entry["caller_organisation"], "nihii:19012345");
        assert_eq!(entry["subject"], person.as_str());
        assert_eq!(entry["platform_id"], client.client_id.as_str());
        assert_eq!(entry["service"], "https://services.ehealth.example/recipe/v1");
        assert_eq!(&entry["assertion_id"], assertion_id);
        assert!(entry["valid_until"].is_string() && entry["used_at"].is_string());
    }
    let as_ops = stack.http.get(stack.url("/v1/privacy-log")).bearer_auth(OPS_TOKEN).send().await.expect("ops");
    assert_eq!(as_ops.status(), StatusCode::FORBIDDEN);
    let anonymous = stack.http.get(stack.url("/v1/privacy-log")).send().await.expect("anonymous");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // At rest, the identity is nowhere in clear: neither the privacy log nor the chain.
    for table in ["privacy_log", "audit_log"] {
        let rows = stack
            .store
            .db()
            .query_all_raw(Statement::from_string(stack.store.backend(), format!("SELECT * FROM {table}")))
            .await
            .expect("raw select");
        assert!(!rows.is_empty());
        let dump = format!("{rows:?}");
        assert!(!dump.contains(national_number), "the caller identity is in clear in {table}");
    }
    assert_eq!(stack.count_on(subjects::TOKEN_HOK_USED).await, 10, "one event per use");

    // Every answered read is on record with its reader, newest first; the last showed ten.
    let reads = |token: &'static str| stack.http.get(stack.url("/v1/privacy-log/reads")).bearer_auth(token).send();
    let body: Value = reads(DPO_TOKEN).await.expect("reads").json().await.expect("json");
    let recorded = body["reads"].as_array().expect("reads").clone();
    let answered = asked.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(recorded.len() as u64, answered, "one record per answered read: {recorded:?}");
    assert_eq!(recorded[0]["reader"], "test-dpo", "{}", recorded[0]);
    assert_eq!(recorded[0]["via"], "gateway");
    assert_eq!(recorded[0]["entries"], 10);
    assert!(recorded[0]["platform_id"].is_null() && recorded[0]["read_at"].is_string());
    let times: Vec<&str> = recorded.iter().map(|r| r["read_at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    let filtered = stack
        .http
        .get(stack.url(&format!("/v1/privacy-log?platform_id={}&limit=3", client.client_id)))
        .bearer_auth(DPO_TOKEN)
        .send()
        .await
        .expect("filtered read");
    assert_eq!(filtered.status(), StatusCode::OK);
    let body: Value = reads(DPO_TOKEN).await.expect("reads").json().await.expect("json");
    let latest = &body["reads"][0];
    assert_eq!(
        (&latest["platform_id"], &latest["limit"], &latest["entries"]),
        (&json!(client.client_id), &json!(3), &json!(3))
    );
    assert_eq!(reads(OPS_TOKEN).await.expect("ops").status(), StatusCode::FORBIDDEN, "the DPO's only");
    let bad = stack.http.get(stack.url("/v1/privacy-log/reads?limit=0")).bearer_auth(DPO_TOKEN).send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    // The record of reads cannot be changed or emptied.
    let db = stack.store.db();
    for change in ["UPDATE privacy_log_reads SET reader = 'nobody'", "DELETE FROM privacy_log_reads"] {
        let refused = db.execute_unprepared(change).await;
        assert!(refused.is_err(), "{change} went through");
    }
    // A read that cannot be recorded is not answered: no identity leaves unaccounted for.
    db.execute_unprepared("ALTER TABLE privacy_log_reads RENAME TO privacy_log_reads_away").await.expect("rename");
    let unrecorded = stack.http.get(stack.url("/v1/privacy-log")).bearer_auth(DPO_TOKEN).send().await.unwrap();
    let status = unrecorded.status();
    let text = unrecorded.text().await.unwrap();
    db.execute_unprepared("ALTER TABLE privacy_log_reads_away RENAME TO privacy_log_reads").await.expect("rename back");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(text.contains("could not be recorded") && !text.contains(national_number), "{text}");
}

#[tokio::test]
async fn a_redelivered_or_republished_event_is_chained_once() {
    let mut stack = Stack::infrastructure().await;
    stack.start_audit(audit_config(None));
    let event = CloudEvent::new("urn:test", stack.clock.now(), grant("dup".into()));
    stack.publish(subjects::CONSENT_GRANTED, &event).await;
    wait_for_chain(&stack, 1).await;
    // The same CloudEvent again, without a Nats-Msg-Id: the stream cannot de-duplicate it.
    stack.publish_raw(subjects::CONSENT_GRANTED, event.to_json()).await;
    publish_grants(&stack, 3).await;
    let rows = wait_for_chain(&stack, 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows_after = chained(&stack).await;
    assert_eq!(
        rows_after.len(),
        4,
        "the duplicate is not chained twice: {:?}",
        rows.iter().map(|r| &r.event_id).collect::<Vec<_>>()
    );
    let report = verify(stack.store.db(), &stack.audit_signer.public_key_base64(), None).await.expect("verify");
    assert_eq!(report.broken, None);
}

/// Two writers on one chain (a replica started beside the live one, or an operator's tool):
/// each links its next batch to the tail it committed last, without a read; when the other
/// moved the tail meanwhile, the primary key on `seq` refuses the batch and it is redone from
/// the tail read back. No fork, no gap, each event once.
#[tokio::test]
async fn two_writers_on_one_chain_never_fork_it() {
    use custodian_bus::BatchHandler as _;

    let stack = Stack::infrastructure().await;
    let deps = audit_deps(&stack);
    let (first, second) = (
        custodian_audit::chain_handler(&deps, audit_config(None)),
        custodian_audit::chain_handler(&deps, audit_config(None)),
    );
    let batch = |from: usize| deliveries(&stack, "writer", from..from + 3);
    let ok = assert_all_ok;
    let (b1, b2, b3, b4) = (batch(0), batch(3), batch(6), batch(9));
    ok(first.handle(&b1).await); // seq 1-3; the first writer now knows tail 3
    ok(second.handle(&b2).await); // reads tail 3: seq 4-6
    ok(first.handle(&b3).await); // its tail 3 is stale: refused at seq 4, redone as 7-9
    ok(first.handle(&b1).await); // a redelivery: nothing new
    ok(second.handle(&b4).await); // its tail 6 is stale: redone as 10-12

    let rows = chained(&stack).await;
    let expected: Vec<String> =
        [&b1, &b2, &b3, &b4].iter().flat_map(|b| b.iter().map(|d| d.event.id().to_owned())).collect();
    assert_eq!(rows.iter().map(|r| r.event_id.clone()).collect::<Vec<_>>(), expected, "each event once, in order");
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=12).collect::<Vec<i64>>(), "no gap");
    let report = verify(stack.store.db(), &stack.audit_signer.public_key_base64(), None).await.expect("verify");
    assert_eq!(report.broken, None, "{report:?}");
    assert_eq!(report.entries, 12);
}

/// The audit service killed mid-drain (a batch in hand, the next read ahead, one applied but
/// not yet acked) and started again at once while events keep coming: every event is chained
/// once, in stream order — none covered by the new instance's first ack before it was chained.
#[tokio::test]
async fn an_audit_service_killed_mid_drain_and_restarted_chains_every_event_once_in_order() {
    const N: usize = 2_000;
    let mut stack = Stack::infrastructure().await;
    let (clock, bus) = (stack.clock.clone(), stack.bus.clone());
    let grants = |range: std::ops::Range<usize>| -> Vec<CloudEvent<ConsentGrantedV1>> {
        range.map(|i| CloudEvent::new("urn:test", clock.now(), grant(format!("restart-{i}")))).collect()
    };
    let publish = |events: Vec<CloudEvent<ConsentGrantedV1>>| {
        let bus = bus.clone();
        async move {
            let outgoing: Vec<custodian_bus::Outgoing> =
                events.iter().map(|e| custodian_bus::Outgoing::event(subjects::CONSENT_GRANTED, e)).collect();
            // One at a time: with acks in flight, the stream's order need not be the list's.
            for result in bus.publish_all(&outgoing, 1).await {
                result.expect("published");
            }
            events
        }
    };
    let mut events = publish(grants(0..N)).await;
    // No redelivery by the server within the test: what the dead instance held must be found
    // by the new one, not handed back after ack_wait.
    let config = AuditConfig { batch: 50, ack_wait_secs: 120, ..audit_config(None) };
    stack.start_audit(config.clone());
    let at_crash = eventually("some batches chained", Duration::from_secs(30), || async {
        let n = chained(&stack).await.len();
        (n > 0).then_some(n)
    })
    .await;
    stack.crash_audit().await;
    assert!(at_crash < N, "killed mid-drain ({at_crash} of {N})");

    stack.start_audit(config);
    events.extend(publish(grants(N..N + 100)).await);
    assert_chain_holds(&stack, &events, "every event chained after the restart", Duration::from_secs(60)).await;
}

/// Two audit replicas: one leads the chain, the other stands by. The leader is killed
/// mid-drain while events keep coming; once its lease lapses the standby takes over from
/// the leader's ack floor, and the chain carries on: every event once, in stream order, no
/// fork, no gap, nothing the stream holds left unchained.
#[tokio::test]
async fn a_crashed_audit_leader_is_replaced_by_its_standby_and_the_chain_carries_on() {
    use custodian_audit::AuditMetrics;
    use custodian_audit::completeness::check_stream;
    const N: usize = 1_500;
    let stack = Stack::infrastructure().await;
    let config = AuditConfig { batch: 50, ack_wait_secs: 120, ..audit_config(None) };
    let (leader_metrics, standby_metrics) = (AuditMetrics::default(), AuditMetrics::default());
    let (_leader_stop, leader) = stack.spawn_audit(config.clone(), leader_metrics.clone());
    eventually("the first replica leads", Duration::from_secs(10), || async {
        (leader_metrics.leading.get() == 1).then_some(())
    })
    .await;
    let (standby_stop, standby) = stack.spawn_audit(config, standby_metrics.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(standby_metrics.leading.get(), 0, "the standby does not lead while the leader runs");

    let events: Vec<CloudEvent<ConsentGrantedV1>> =
        (0..N).map(|i| CloudEvent::new("urn:test", stack.clock.now(), grant(format!("failover-{i}")))).collect();
    let publishing = {
        let bus = stack.bus.clone();
        let outgoing: Vec<custodian_bus::Outgoing> =
            events.iter().map(|e| custodian_bus::Outgoing::event(subjects::CONSENT_GRANTED, e)).collect();
        // One at a time, so that the stream's order is the list's.
        tokio::spawn(async move { bus.publish_all(&outgoing, 1).await.into_iter().all(|r| r.is_ok()) })
    };
    let at_crash = eventually("the leader chains some", Duration::from_secs(30), || async {
        let n = chained(&stack).await.len();
        (n >= 100).then_some(n)
    })
    .await;
    leader.abort();
    let _ = leader.await;
    assert!(publishing.await.expect("publisher ran"), "every event published");
    assert!(at_crash < N, "killed mid-drain ({at_crash} of {N})");

    let lapse = custodian_bus::lease::LEADERSHIP_TTL + Duration::from_secs(60);
    assert_chain_holds(&stack, &events, "the standby chains the rest", lapse).await;
    assert_eq!(standby_metrics.leading.get(), 1, "the standby leads now");
    let completeness = eventually("the standby acknowledged everything", Duration::from_secs(10), || async {
        let report = check_stream(stack.store.db(), &stack.bus).await.expect("checked");
        (report.acknowledged == N as u64).then_some(report)
    })
    .await;
    assert_eq!(completeness.unchained, None, "{completeness:?}");

    standby_stop.cancel();
    standby.await.expect("standby ran");
    assert_eq!(standby_metrics.leading.get(), 0, "stopped, it leads no more");
}

/// The durable the chain's current leadership term consumes from.
async fn chain_term_durable(stack: &Stack, base: &str) -> String {
    let stream = stack.bus.jetstream().get_stream(subjects::STREAM).await.expect("stream");
    let mut names = stream.consumer_names();
    let prefix = format!("{base}-t");
    let mut terms = Vec::new();
    while let Some(name) = futures::StreamExt::next(&mut names).await {
        let name = name.expect("consumer name");
        if name.starts_with(&prefix) {
            terms.push(name);
        }
    }
    assert_eq!(terms.len(), 1, "one term's durable: {terms:?}");
    terms.remove(0)
}

/// An event the stream holds and the audit service acknowledged, but never chained, breaks
/// no link: the chain walk passes. Checked against the stream, it is found at its sequence.
/// A malformed message the audit dead-lettered is no gap: its dead letter is in the chain.
#[tokio::test]
async fn verify_against_the_stream_finds_an_acknowledged_event_the_chain_lacks() {
    use custodian_audit::completeness::{CHAIN_DURABLE, check_stream};
    let mut stack = Stack::infrastructure().await;
    let grants: Vec<CloudEvent<ConsentGrantedV1>> =
        (0..20).map(|i| CloudEvent::new("urn:test", stack.clock.now(), grant(format!("complete-{i}")))).collect();
    let outgoing: Vec<custodian_bus::Outgoing> =
        grants.iter().map(|e| custodian_bus::Outgoing::event(subjects::CONSENT_GRANTED, e)).collect();
    for result in stack.bus.publish_all(&outgoing, 1).await {
        result.expect("published");
    }
    let js = stack.bus.jetstream().clone();
    js.publish(subjects::CONSENT_GRANTED, "{not an event".into()).await.expect("sent").await.expect("stored");
    stack.start_audit(audit_config(None));
    // 20 grants, the malformed message, and the audit's dead letter for it.
    let report = eventually("the audit service caught up", Duration::from_secs(30), || async {
        let report = check_stream(stack.store.db(), &stack.bus).await.expect("checked");
        (report.acknowledged == 22).then_some(report)
    })
    .await;
    assert_eq!((report.first_sequence, report.last_sequence, report.checked), (1, 22, 22), "{report:?}");
    assert_eq!(report.unchained, None, "every message chained, the malformed one through its dead letter");
    assert_eq!(chained(&stack).await.len(), 21);

    // The audit service stops; an event is taken off its durable and acknowledged without
    // being chained, as an ack covering it would.
    stack.crash_audit().await;
    let lost = CloudEvent::new("urn:test", stack.clock.now(), grant("complete-lost".into()));
    stack.bus.publish(&custodian_bus::Outgoing::event(subjects::CONSENT_GRANTED, &lost)).await.expect("published");
    let stream = js.get_stream(subjects::STREAM).await.expect("stream");
    let durable: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(&chain_term_durable(&stack, CHAIN_DURABLE).await).await.expect("the chain's durable");
    let mut taken = durable.fetch().max_messages(1).expires(Duration::from_secs(10)).messages().await.expect("fetch");
    let message = futures::StreamExt::next(&mut taken).await.expect("one message").expect("a message");
    message.double_ack().await.expect("acknowledged");

    let chain = verify(stack.store.db(), &stack.audit_signer.public_key_base64(), None).await.expect("verify");
    assert_eq!(chain.broken, None, "the chain itself shows nothing");
    let report = check_stream(stack.store.db(), &stack.bus).await.expect("checked");
    assert_eq!(report.acknowledged, 23);
    let unchained = report.unchained.expect("the lost event is found");
    assert_eq!(unchained.stream_sequence, 23);
    assert_eq!(unchained.subject, subjects::CONSENT_GRANTED);
    assert_eq!(unchained.event_id.as_deref(), Some(lost.id.as_str()));
}

fn audit_deps(stack: &Stack) -> custodian_audit::Deps {
    custodian_audit::Deps {
        store: stack.store.clone(),
        bus: stack.bus.clone(),
        clock: stack.clock.clone(),
        keyring: stack.keyring.clone(),
        signer: stack.audit_signer.clone(),
        metrics: Default::default(),
    }
}

/// Grants as the consumer hands them to the chain's handler, one per index in `range`.
fn deliveries(stack: &Stack, prefix: &str, range: std::ops::Range<usize>) -> Vec<custodian_bus::Delivery> {
    use custodian_events::LifecycleEvent;
    range
        .map(|i| {
            let data = grant(format!("{prefix}-{i}"));
            let event = LifecycleEvent::ConsentGranted(CloudEvent::new("urn:test", stack.clock.now(), data));
            let raw = event.to_json();
            custodian_bus::Delivery {
                subject: subjects::CONSENT_GRANTED.to_owned(),
                event,
                delivered: 1,
                stream_sequence: i as u64,
                traceparent: None,
                raw: raw.into(),
                nudge: false,
            }
        })
        .collect()
}

/// On PostgreSQL a large batch is chained in two transactions inserting side by side and
/// committing in order. When the second fails at its commit, after the first committed, the
/// chain holds a prefix of the batch (no gap, verify passes); the redelivered batch then adds
/// the rest, each event once, in order.
#[tokio::test]
async fn a_batch_whose_second_transaction_fails_at_commit_leaves_a_prefix_its_redelivery_completes() {
    use custodian_bus::BatchHandler as _;

    let Some(stack) = Stack::infrastructure_on_postgres().await else { return };
    let handler = custodian_audit::chain_handler(&audit_deps(&stack), audit_config(None));
    // A first small batch: the handler then knows the tail and spreads the next batch.
    let first = deliveries(&stack, "lane", 0..3);
    assert_all_ok(handler.handle(&first).await);
    // 1,200 entries: the first transaction takes two 500-row chunks, the second the last 200.
    let big = deliveries(&stack, "lane", 3..1203);
    let doomed = big[1100].event.id().to_owned();
    // Fails the commit of the transaction holding `doomed`, once (a sequence is not rolled back).
    for sql in [
        "CREATE SEQUENCE audit_test_fail_once".to_owned(),
        "CREATE FUNCTION audit_test_fail_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF nextval('audit_test_fail_once') = 1 THEN RAISE EXCEPTION 'injected commit failure'; END IF; \
         RETURN NULL; END $$"
            .to_owned(),
        format!(
            "CREATE CONSTRAINT TRIGGER audit_test_fail_once AFTER INSERT ON audit_log \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.event_id = '{doomed}') \
             EXECUTE FUNCTION audit_test_fail_once()"
        ),
    ] {
        exec(&stack, &sql).await.expect("injection set up");
    }

    let results = handler.handle(&big).await;
    assert!(results.iter().all(Result::is_err), "the batch is reported failed, to come again");
    let rows = chained(&stack).await;
    assert_eq!(rows.len(), 1003, "the first transaction committed, the second did not");
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=1003).collect::<Vec<i64>>(), "a prefix");
    let report = verify(stack.store.db(), &stack.audit_signer.public_key_base64(), None).await.expect("verify");
    assert_eq!(report.broken, None, "a committed prefix is a sound chain: {report:?}");

    assert_all_ok(handler.handle(&big).await); // the redelivered batch
    let rows = chained(&stack).await;
    let expected: Vec<String> = first.iter().chain(&big).map(|d| d.event.id().to_owned()).collect();
    assert_eq!(rows.iter().map(|r| r.event_id.clone()).collect::<Vec<_>>(), expected, "each event once, in order");
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=1203).collect::<Vec<i64>>(), "no gap");
    let report = verify(stack.store.db(), &stack.audit_signer.public_key_base64(), None).await.expect("verify");
    assert_eq!((&report.broken, report.entries), (&None, 1203), "{report:?}");
}

fn assert_all_ok(results: Vec<Result<(), custodian_bus::HandlerError>>) {
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

/// A backlog drained by the running service through the real consumer: full batches, which
/// on PostgreSQL are chained in two lanes. Every event once, in stream order, no gap, and the
/// checkpoints all verify.
#[tokio::test]
async fn a_backlog_of_thousands_is_chained_in_stream_order() {
    const N: usize = 5_000;
    let mut stack = Stack::infrastructure().await;
    let events: Vec<CloudEvent<ConsentGrantedV1>> =
        (0..N).map(|i| CloudEvent::new("urn:test", stack.clock.now(), grant(format!("backlog-{i}")))).collect();
    let outgoing: Vec<custodian_bus::Outgoing> =
        events.iter().map(|e| custodian_bus::Outgoing::event(subjects::CONSENT_GRANTED, e)).collect();
    // One at a time: with acks in flight, the stream's order need not be the list's.
    for result in stack.bus.publish_all(&outgoing, 1).await {
        result.expect("published");
    }
    stack.start_audit(AuditConfig { checkpoint_every: 500, ..audit_config(None) });
    let report = assert_chain_holds(&stack, &events, "the backlog chained", Duration::from_secs(60)).await;
    assert_eq!((report.entries, report.checkpoints_checked), (N as u64, (N / 500) as u64), "{report:?}");
}
