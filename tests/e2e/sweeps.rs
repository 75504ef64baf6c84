//! Inactivity sweeps: idle consents expire, fresh ones and those seen again do not, dry runs
//! change nothing, and two replicas do the work once even when the holder dies mid-sweep.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use custodian_bus::Outgoing;
use custodian_events::queries::{self, ConsentQuery, IdleCursor, IdleQuery, IdleReply};
use custodian_events::*;
use custodian_store::entities::sweep;
use custodian_store::sea_orm::EntityTrait;
use custodian_testkit::{eventually, eventually_explained};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{OPS_TOKEN, Stack, test_sweeper_config, unique};

const ISSUER: &str = "https://op.example";

fn grant(subject: &str, platform: &str, at: DateTime<Utc>) -> Outgoing {
    let event = CloudEvent::new(
        "urn:test",
        at,
        ConsentGrantedV1 {
            issuer: ISSUER.into(),
            subject: subject.into(),
            platform_id: platform.into(),
            scopes: vec![],
            acr: None,
        },
    );
    Outgoing {
        subject: subjects::CONSENT_GRANTED.into(),
        event_id: event.id.clone(),
        payload: Bytes::from(event.to_json()),
        traceparent: None,
    }
}

async fn granted_count(stack: &Stack, prefix: &str, state: &str) -> usize {
    let query = ConsentQuery { state: Some(state.into()), limit: Some(10_000), ..Default::default() };
    stack.ledger(query).await.into_iter().filter(|v| v.subject.starts_with(prefix)).count()
}

async fn sweep_via_gateway(stack: &Stack, body: Value) -> Value {
    let r = stack.http.post(stack.url("/v1/sweeps")).bearer_auth(OPS_TOKEN).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let sweep_id = r.json::<Value>().await.unwrap()["sweep_id"].as_str().unwrap().to_owned();
    eventually("the sweep to finish", Duration::from_secs(60), || async {
        let r =
            stack.http.get(stack.url(&format!("/v1/sweeps/{sweep_id}"))).bearer_auth(OPS_TOKEN).send().await.unwrap();
        if r.status() != StatusCode::OK {
            return None;
        }
        let view: Value = r.json().await.unwrap();
        (view["state"] == "finished").then_some(view)
    })
    .await
}

#[tokio::test]
async fn idle_consents_expire_fresh_ones_do_not_and_a_dry_run_changes_nothing() {
    let mut stack = Stack::start().await;
    stack.start_sweeper("replica-a", test_sweeper_config());
    let now = stack.clock.now();
    let run = unique("idle");
    let mut grants = Vec::new();
    for i in 0..20 {
        grants.push(grant(&format!("{run}-old-{i}"), "tp-sweep", now - chrono::Duration::days(100)));
    }
    for i in 0..10 {
        grants.push(grant(&format!("{run}-new-{i}"), "tp-sweep", now - chrono::Duration::days(1)));
    }
    assert!(stack.bus.publish_all(&grants, 64).await.iter().all(Result::is_ok));
    eventually("30 grants", Duration::from_secs(20), || async {
        (granted_count(&stack, &run, "granted").await == 30).then_some(())
    })
    .await;

    let dry =
        sweep_via_gateway(&stack, json!({"platform_id": "tp-sweep", "dry_run": true, "inactivity_days": 90})).await;
    assert_eq!(
        (dry["scanned"].as_u64(), dry["expired"].as_u64(), dry["total"].as_u64()),
        (Some(20), Some(0), Some(20))
    );
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["requested_by"], "ops:test-ops");
    assert_eq!(stack.count_on(subjects::CONSENT_EXPIRE).await, 0, "a dry run publishes nothing");
    assert_eq!(granted_count(&stack, &run, "granted").await, 30, "a dry run changes nothing");

    let real = sweep_via_gateway(&stack, json!({"platform_id": "tp-sweep", "inactivity_days": 90})).await;
    assert_eq!((real["scanned"].as_u64(), real["expired"].as_u64()), (Some(20), Some(20)));
    eventually("20 expired", Duration::from_secs(20), || async {
        (granted_count(&stack, &run, "expired").await == 20).then_some(())
    })
    .await;
    assert_eq!(granted_count(&stack, &run, "granted").await, 10);
    let ledger =
        stack.ledger(ConsentQuery { state: Some("granted".into()), limit: Some(10_000), ..Default::default() }).await;
    assert!(
        ledger.iter().filter(|v| v.subject.starts_with(&run)).all(|v| v.subject.contains("-new-")),
        "only fresh consents stay"
    );
    eventually("consent.ended for each", Duration::from_secs(20), || async {
        (stack.count_on(subjects::CONSENT_ENDED).await == 20).then_some(())
    })
    .await;
    assert_eq!(stack.count_on_settled(subjects::SWEEP_FINISHED, 2).await, 2);

    let r = stack.http.get(stack.url("/v1/sweeps/sweep-unknown")).bearer_auth(OPS_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = stack
        .http
        .post(stack.url("/v1/sweeps"))
        .bearer_auth(OPS_TOKEN)
        .json(&json!({"inactivity_days": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn activity_seen_after_the_scan_cancels_that_expiry() {
    let mut stack = Stack::start().await;
    stack.start_sweeper("replica-a", test_sweeper_config());
    let now = stack.clock.now();
    let run = unique("late");
    let (seen_again, idle) = (format!("{run}-seen"), format!("{run}-idle"));
    let grants = vec![
        grant(&seen_again, "tp-late", now - chrono::Duration::days(120)),
        grant(&idle, "tp-late", now - chrono::Duration::days(120)),
    ];
    assert!(stack.bus.publish_all(&grants, 8).await.iter().all(Result::is_ok));
    eventually("2 grants", Duration::from_secs(20), || async {
        (granted_count(&stack, &run, "granted").await == 2).then_some(())
    })
    .await;

    let finished = sweep_via_gateway(&stack, json!({"platform_id": "tp-late"})).await;
    assert_eq!(finished["expired"].as_u64(), Some(2), "both were idle when scanned");
    // The platform saw the person after the scan (whatever order the consent service
    // receives this and the expire command in): that expiry must not stand.
    let seen = CloudEvent::new(
        "urn:test",
        now,
        ActivitySeenV1 { issuer: ISSUER.into(), subject: seen_again.clone(), platform_id: "tp-late".into() },
    );
    stack.publish(subjects::ACTIVITY_SEEN, &seen).await;
    eventually("the idle one expired, the active one kept", Duration::from_secs(20), || async {
        let views = stack.ledger(ConsentQuery { platform_id: Some("tp-late".into()), ..Default::default() }).await;
        let state = |s: &str| views.iter().find(|v| v.subject == s).map(|v| v.state.clone());
        (state(&idle).as_deref() == Some("expired") && state(&seen_again).as_deref() == Some("granted")).then_some(())
    })
    .await;
}

/// The idle scan's index ranges over the UTC day a consent was last seen; the exact instant
/// decides. Consents seen over several days, on both sides of the cut within its day, paged
/// two at a time: each idle one comes back exactly once, no fresh one does.
#[tokio::test]
async fn the_idle_scan_pages_across_days_and_cuts_at_the_exact_instant() {
    let stack = Stack::start().await;
    let run = unique("days");
    let platform = format!("{run}-tp");
    let cut_day = stack.clock.now().date_naive() - chrono::Duration::days(10);
    let cut = cut_day.and_hms_opt(12, 0, 0).expect("noon").and_utc();
    let at = |days: i64, seconds: i64| cut + chrono::Duration::days(days) + chrono::Duration::seconds(seconds);
    // (name, last seen) — idle when last seen before the cut.
    let seen = [
        ("three-days-before-morning", at(-3, -3 * 3600)),
        ("three-days-before-evening", at(-3, 8 * 3600)),
        ("two-days-before", at(-2, 0)),
        ("day-before-late", at(-1, 11 * 3600 + 59 * 60)),
        ("cut-day-morning", at(0, -3600)),
        ("a-second-before-the-cut", at(0, -1)),
        ("at-the-cut", at(0, 0)),
        ("a-second-after-the-cut", at(0, 1)),
        ("cut-day-evening", at(0, 3600)),
        ("next-day", at(1, 0)),
        ("seen-again-after-the-cut", at(-2, 600)),
    ];
    let grants: Vec<Outgoing> = seen.iter().map(|(name, t)| grant(&format!("{run}-{name}"), &platform, *t)).collect();
    assert!(stack.bus.publish_all(&grants, 16).await.iter().all(Result::is_ok));
    let again = CloudEvent::new(
        "urn:test",
        at(0, 7200),
        ActivitySeenV1 {
            issuer: ISSUER.into(),
            subject: format!("{run}-seen-again-after-the-cut"),
            platform_id: platform.clone(),
        },
    );
    stack.publish(subjects::ACTIVITY_SEEN, &again).await;
    eventually("the grants and the activity applied", Duration::from_secs(20), || async {
        let views = stack.ledger(ConsentQuery { platform_id: Some(platform.clone()), ..Default::default() }).await;
        let moved = views
            .iter()
            .any(|v| v.subject.ends_with("seen-again-after-the-cut") && v.last_seen_at == Some(at(0, 7200)));
        (views.len() == seen.len() && moved).then_some(())
    })
    .await;

    let mut found = Vec::new();
    let mut after = None;
    let mut total = None;
    loop {
        let question = IdleQuery { platform_id: platform.clone(), idle_before: cut, after, limit: 2, with_total: true };
        let reply: IdleReply =
            custodian_bus::query(stack.bus.client(), queries::IDLE_CONSENTS, &question, Duration::from_secs(5))
                .await
                .expect("idle query");
        let IdleReply::Page { consents, total: page_total } = reply else { panic!("unexpected reply {reply:?}") };
        total = total.or(page_total);
        let Some(last) = consents.last() else { break };
        after = Some(IdleCursor { last_seen_at: last.last_seen_at, consent_key: last.consent_key.clone() });
        assert!(consents.iter().all(|c| c.last_seen_at < cut), "only consents last seen before the cut: {consents:?}");
        found.extend(consents.iter().map(|c| c.subject.trim_start_matches(&format!("{run}-")).to_owned()));
    }
    let mut expected: Vec<String> = seen
        .iter()
        .filter(|(name, t)| *t < cut && !name.starts_with("seen-again"))
        .map(|(name, _)| (*name).to_owned())
        .collect();
    expected.sort();
    let mut sorted = found.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "every idle consent once, in pages of two: {found:?}");
    assert_eq!(total, Some(expected.len() as u64));
}

/// `n` consents on `platform`, granted 200 days ago (idle), applied by the ledger.
pub(crate) async fn grant_idle(stack: &Stack, run: &str, platform: &str, n: usize) {
    let then = stack.clock.now() - chrono::Duration::days(200);
    let grants: Vec<Outgoing> = (0..n).map(|i| grant(&format!("{run}-{i}"), platform, then)).collect();
    assert!(stack.bus.publish_all(&grants, 512).await.iter().all(Result::is_ok));
    eventually("the grants applied", Duration::from_secs(60), || async {
        (granted_count(stack, run, "granted").await == n).then_some(())
    })
    .await;
}

/// Asks for a 90-day sweep of `platform`.
async fn request_sweep(stack: &Stack, sweep_id: &str, platform: &str) {
    let request = CloudEvent::new(
        "urn:test",
        stack.clock.now(),
        SweepRequestedV1 {
            sweep_id: sweep_id.into(),
            platform_id: Some(platform.into()),
            inactivity_days: 90,
            dry_run: false,
            requested_by: "test".into(),
        },
    );
    stack.publish(subjects::SWEEP_REQUESTED, &request).await;
}

/// The sweep's row, if it exists yet.
async fn sweep_row(stack: &Stack, sweep_id: &str) -> Option<sweep::Model> {
    sweep::Entity::find_by_id(sweep_id.to_owned()).one(stack.store.db()).await.expect("sweep row")
}

/// The replica holding the sweep once it has written a page.
async fn holder_mid_sweep(stack: &Stack, sweep_id: &str) -> String {
    eventually("a replica to be mid-sweep", Duration::from_secs(30), || async {
        let row = sweep_row(stack, sweep_id).await?;
        (row.scanned > 0 && row.state == "running").then(|| row.holder.clone()).flatten()
    })
    .await
}

#[tokio::test]
async fn two_replicas_sweep_once_and_a_killed_holder_is_taken_over() {
    let mut stack = Stack::start().await;
    let run = unique("ha");
    grant_idle(&stack, &run, "tp-ha", 3000).await;
    stack.start_sweeper("replica-a", test_sweeper_config());
    stack.start_sweeper("replica-b", test_sweeper_config());
    request_sweep(&stack, "sweep-ha", "tp-ha").await;
    let first_holder = holder_mid_sweep(&stack, "sweep-ha").await;
    stack.crash_sweeper(&first_holder).await;
    let row = sweep_row(&stack, "sweep-ha").await.unwrap();
    assert!(row.scanned < 3000, "the holder died mid-sweep ({} of 3000)", row.scanned);

    let done = eventually("the other replica to finish it", Duration::from_secs(60), || async {
        let row = sweep_row(&stack, "sweep-ha").await?;
        (row.state == "finished").then_some(row)
    })
    .await;
    assert_ne!(done.holder.as_deref(), Some(first_holder.as_str()), "taken over by the other replica");
    assert_eq!((done.scanned, done.expired, done.total), (3000, 3000, Some(3000)), "the sweep record is complete");
    eventually("3000 expired", Duration::from_secs(60), || async {
        (granted_count(&stack, &run, "expired").await == 3000).then_some(())
    })
    .await;
    assert_eq!(stack.count_on_settled(subjects::CONSENT_EXPIRE, 3000).await, 3000, "no consent expired twice");
    assert_eq!(stack.count_on_settled(subjects::SWEEP_FINISHED, 1).await, 1);
}

#[tokio::test]
async fn a_scheduled_sweep_runs_once_across_replicas() {
    let mut stack = Stack::start().await;
    let mut config = test_sweeper_config();
    config.schedules = vec![custodian_sweeper::SweepSchedule {
        name: "every-two-seconds".into(),
        platform_id: Some("tp-cron".into()),
        inactivity_days: 30,
        cron: "*/2 * * * * *".into(),
    }];
    let run = unique("cron");
    let old = grant(&format!("{run}-old"), "tp-cron", stack.clock.now() - chrono::Duration::days(31));
    assert!(stack.bus.publish_all(&[old], 1).await.iter().all(Result::is_ok));
    eventually("the grant", Duration::from_secs(20), || async {
        (granted_count(&stack, &run, "granted").await == 1).then_some(())
    })
    .await;
    stack.start_sweeper("replica-a", config.clone());
    stack.start_sweeper("replica-b", config);
    eventually("the idle consent expired by schedule", Duration::from_secs(30), || async {
        (granted_count(&stack, &run, "expired").await == 1).then_some(())
    })
    .await;
    let rows = sweep::Entity::find().all(stack.store.db()).await.unwrap();
    let mut ids: Vec<&str> = rows.iter().map(|r| r.sweep_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), rows.len(), "one row per scheduled time");
    assert!(
        rows.iter()
            .all(|r| r.sweep_id.starts_with("every-two-seconds-") && r.requested_by == "schedule:every-two-seconds")
    );
    eventually("consent.ended", Duration::from_secs(10), || async {
        (stack.count_on(subjects::CONSENT_ENDED).await == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stack.count_on(subjects::CONSENT_ENDED).await, 1, "ended once however many ticks ran");
}

#[tokio::test]
async fn the_retention_schedule_makes_the_consent_service_purge_its_old_records() {
    use custodian_store::entities::{consent_history, outbox};
    use custodian_store::sea_orm::PaginatorTrait;
    let mut stack = Stack::start().await;
    let run = unique("retention");
    let when = stack.clock.now() - chrono::Duration::days(3);
    let granted = grant(&run, "tp-retention", when);
    let revoked = CloudEvent::new(
        "urn:test",
        when + chrono::Duration::hours(1),
        ConsentRevokedV1 {
            issuer: ISSUER.into(),
            subject: run.clone(),
            platform_id: "tp-retention".into(),
            reason: RevokeReason::User,
            actor: None,
        },
    );
    assert!(stack.bus.publish_all(&[granted], 1).await.iter().all(Result::is_ok));
    stack.publish(subjects::CONSENT_REVOKED, &revoked).await;
    let db = stack.store.db().clone();
    eventually("history and a published outbox row", Duration::from_secs(20), || async {
        let history = consent_history::Entity::find().count(&db).await.unwrap();
        let published =
            outbox::Entity::find().all(&db).await.unwrap().iter().filter(|r| r.published_at.is_some()).count();
        (history == 2 && published == 1).then_some(())
    })
    .await;

    // Keep nothing older than the next tick.
    let mut config = test_sweeper_config();
    config.retention =
        custodian_sweeper::RetentionConfig { cron: "*/2 * * * * *".into(), history_days: 0, bus_records_days: 0 };
    stack.start_sweeper("replica-a", config);
    eventually("the consent service purged its records", Duration::from_secs(30), || async {
        let history = consent_history::Entity::find().count(&db).await.unwrap();
        let published =
            outbox::Entity::find().all(&db).await.unwrap().iter().filter(|r| r.publisher == "consent").count();
        (history == 0 && published == 0).then_some(())
    })
    .await;
    assert!(stack.count_on(subjects::RETENTION_PURGE).await >= 1);
    let view = stack.ledger(ConsentQuery { subject: Some(run.clone()), ..Default::default() }).await;
    assert_eq!(view[0].state, "revoked", "the ledger itself is kept");
}

/// The lease ages out under a live holder (as if it stalled): the other replica takes the
/// sweep over and the first is fenced off. The new holder then dies mid-sweep: the first takes
/// the lease back and finishes, each consent expired once. (Before transactions were begun on
/// their own task, an aborted `BEGIN` could leave a pooled connection inside a transaction,
/// holding the sweep row's lock, and the survivor waited on it forever.)
#[tokio::test]
async fn a_replica_fenced_off_by_a_takeover_finishes_the_sweep_when_the_new_holder_dies() {
    let mut stack = Stack::start().await;
    let run = unique("lost");
    grant_idle(&stack, &run, "tp-lost", 3000).await;
    let mut config = test_sweeper_config();
    config.batch = 10;
    stack.start_sweeper("replica-a", config.clone());
    stack.start_sweeper("replica-b", config);
    request_sweep(&stack, "sweep-lost", "tp-lost").await;
    let first = holder_mid_sweep(&stack, "sweep-lost").await;
    // The lease ages out under the holder (as if it stalled): the other replica takes it. Both
    // contend once it is gone, and the holder may win it back; then it ages out again. Each
    // round waits for the lease to be won before judging it (purging again while the row still
    // names the old holder could take the lease from a replica that has just won it).
    let kv = stack.bus.jetstream().get_key_value(custodian_sweeper::lease::BUCKET).await.unwrap();
    let mut rounds = 0;
    let second = loop {
        assert!(rounds < 30, "the other replica never won the lease in {rounds} rounds");
        rounds += 1;
        kv.purge("sweep-lost").await.unwrap();
        let winner = eventually_explained("a replica to win the lease", Duration::from_secs(10), || async {
            match kv.get("sweep-lost").await.unwrap() {
                Some(holder) => Ok(String::from_utf8(holder.to_vec()).unwrap()),
                None => Err(format!("{:?}", sweep_row(&stack, "sweep-lost").await)),
            }
        })
        .await;
        if winner != first {
            break winner;
        }
    };
    eventually_explained("the winner to claim the sweep", Duration::from_secs(10), || async {
        let row = sweep_row(&stack, "sweep-lost").await.ok_or("no row")?;
        if row.holder.as_deref() == Some(second.as_str()) { Ok(()) } else { Err(format!("{row:?}")) }
    })
    .await;
    let row = sweep_row(&stack, "sweep-lost").await.unwrap();
    assert_eq!(row.state, "running", "taken over mid-sweep: {row:?}");
    stack.crash_sweeper(&second).await;
    let done = eventually("the fenced replica to finish it", Duration::from_secs(60), || async {
        let row = sweep_row(&stack, "sweep-lost").await?;
        (row.state == "finished").then_some(row)
    })
    .await;
    assert_eq!(done.holder.as_deref(), Some(first.as_str()), "finished by the replica fenced off before");
    assert_eq!((done.scanned, done.expired), (3000, 3000));
    eventually("3000 expired", Duration::from_secs(60), || async {
        (granted_count(&stack, &run, "expired").await == 3000).then_some(())
    })
    .await;
    assert_eq!(stack.count_on_settled(subjects::CONSENT_EXPIRE, 3000).await, 3000, "no consent expired twice");
}
