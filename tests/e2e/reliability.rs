//! What must survive: bad input, crashes mid-batch, lost publishes, any delivery order.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use custodian_bus::{OutboxRelay, Outgoing};
use custodian_consent::handler::fact_of;
use custodian_consent::ledger::{self, Consent, Status};
use custodian_events::queries::ConsentQuery;
use custodian_events::*;
use custodian_store::entities::{consent_history, outbox as outbox_entity};
use custodian_store::outbox::{self, OutgoingEvent};
use custodian_store::sea_orm::{EntityTrait, PaginatorTrait, TransactionTrait};
use custodian_testkit::eventually;
use futures::StreamExt as _;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::support::{Stack, at, unique};

const ISSUER: &str = "https://op.example";

pub(crate) fn grant_event(subject: &str, platform: &str, t: i64) -> LifecycleEvent {
    LifecycleEvent::ConsentGranted(CloudEvent::new(
        "urn:test",
        at(t),
        ConsentGrantedV1 {
            issuer: ISSUER.into(),
            subject: subject.into(),
            platform_id: platform.into(),
            scopes: vec!["openid".into()],
            acr: None,
        },
    ))
}

pub(crate) fn revoke_event(subject: &str, platform: &str, t: i64) -> LifecycleEvent {
    LifecycleEvent::ConsentRevoked(CloudEvent::new(
        "urn:test",
        at(t),
        ConsentRevokedV1 {
            issuer: ISSUER.into(),
            subject: subject.into(),
            platform_id: platform.into(),
            reason: RevokeReason::User,
            actor: None,
        },
    ))
}

fn seen_event(subject: &str, platform: &str, t: i64) -> LifecycleEvent {
    LifecycleEvent::ActivitySeen(CloudEvent::new(
        "urn:test",
        at(t),
        ActivitySeenV1 { issuer: ISSUER.into(), subject: subject.into(), platform_id: platform.into() },
    ))
}

pub(crate) fn outgoing(event: &LifecycleEvent) -> Outgoing {
    Outgoing {
        subject: event.fixed_subject().expect("fixed subject").to_owned(),
        event_id: event.id().to_owned(),
        payload: Bytes::from(event.to_json()),
        traceparent: None,
    }
}

/// The state in-order processing gives, per (subject, platform).
fn expected_states(events: &[LifecycleEvent]) -> HashMap<(String, String), Consent> {
    let mut states: HashMap<(String, String), Consent> = HashMap::new();
    for event in events {
        let (key, fact) = fact_of(event).expect("a consent fact");
        let consent = states.entry((key.subject.clone(), key.platform_id.clone())).or_insert_with(|| Consent::new(key));
        ledger::apply(consent, &fact);
    }
    states
}

pub(crate) async fn history_count(stack: &Stack) -> u64 {
    consent_history::Entity::find().count(stack.store.db()).await.expect("history count")
}

#[tokio::test]
async fn malformed_events_are_dead_lettered_with_a_reason_and_change_nothing() {
    let stack = Stack::start().await;
    let good = grant_event("dora", "tp", 0);
    let mut unknown_field: serde_json::Value = serde_json::from_slice(&good.to_json()).unwrap();
    unknown_field["data"]["diagnosis"] = "J45".into();
    unknown_field["id"] = "bad-1".into();
    let mut wrong_type: serde_json::Value = serde_json::from_slice(&good.to_json()).unwrap();
    wrong_type["data"]["scopes"] = 42.into();
    wrong_type["id"] = "bad-2".into();
    let revoke_on_grant_subject = revoke_event("dora", "tp", 5).to_json();

    stack.publish_raw(subjects::CONSENT_GRANTED, b"{ not json".to_vec()).await;
    stack.publish_raw(subjects::CONSENT_GRANTED, serde_json::to_vec(&unknown_field).unwrap()).await;
    stack.publish_raw(subjects::CONSENT_GRANTED, serde_json::to_vec(&wrong_type).unwrap()).await;
    stack.publish_raw(subjects::CONSENT_GRANTED, revoke_on_grant_subject).await;

    eventually("four dead letters", Duration::from_secs(10), || async {
        (stack.count_on("lifecycle.deadletter.consent").await == 4).then_some(())
    })
    .await;
    let letters = stack.messages_on("lifecycle.deadletter.consent").await;
    let reasons: Vec<String> = letters.iter().map(|(_, v)| v["data"]["reason"].as_str().unwrap().to_owned()).collect();
    assert!(reasons[0].contains("not a CloudEvents 1.0 JSON envelope"), "{reasons:?}");
    assert!(reasons[1].contains("unknown field `diagnosis`"), "{reasons:?}");
    assert!(reasons[2].contains("invalid data"), "{reasons:?}");
    assert!(reasons[3].contains("does not belong on subject"), "{reasons:?}");
    for (_, letter) in &letters {
        assert_eq!(letter["type"], "custodian.deadletter.v1");
        assert_eq!(letter["data"]["original_subject"], subjects::CONSENT_GRANTED);
        let payload = base64::engine::general_purpose::STANDARD
            .decode(letter["data"]["payload_base64"].as_str().unwrap())
            .unwrap();
        assert!(!payload.is_empty(), "the original payload is kept for inspection");
    }
    assert!(stack.ledger(ConsentQuery::default()).await.is_empty(), "nothing else changed");
    assert_eq!(history_count(&stack).await, 0, "no history either");

    // The consumer is not stuck behind them.
    stack
        .publish(
            subjects::CONSENT_GRANTED,
            match &good {
                LifecycleEvent::ConsentGranted(e) => e,
                _ => unreachable!(),
            },
        )
        .await;
    eventually("the good grant", Duration::from_secs(10), || async {
        (stack.ledger(ConsentQuery::default()).await.len() == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_consumer_crashed_mid_batch_applies_every_event_exactly_once_in_effect() {
    let mut stack = Stack::infrastructure().await;
    stack.consent_config.batch = 100;
    let run = unique("crash");
    // 4,000 consents granted, 4,000 activities, then 2,000 of them revoked.
    let mut events = Vec::new();
    for i in 0..4000 {
        events.push(grant_event(&format!("{run}-{i}"), "tp", 0));
    }
    for i in 0..4000 {
        events.push(seen_event(&format!("{run}-{i}"), "tp", 10));
    }
    for i in 0..2000 {
        events.push(revoke_event(&format!("{run}-{i}"), "tp", 20));
    }
    // Grants and revocations each leave one history row; activity (an idempotent max) none.
    let total = 6000;
    let results = stack.bus.publish_all(&events.iter().map(outgoing).collect::<Vec<_>>(), 1024).await;
    assert!(results.iter().all(Result::is_ok));

    stack.start_consent();
    let applied_at_crash = eventually("some batches applied", Duration::from_secs(30), || async {
        let n = history_count(&stack).await;
        (n > 0).then_some(n)
    })
    .await;
    stack.crash_consent().await;
    assert!(applied_at_crash < total, "the crash happened mid-stream ({applied_at_crash} of {total})");

    stack.start_consent();
    eventually("every event applied after restart", Duration::from_secs(120), || async {
        (history_count(&stack).await == total).then_some(())
    })
    .await;
    eventually("every consent.ended published", Duration::from_secs(30), || async {
        let n = stack.count_on(subjects::CONSENT_ENDED).await;
        (n >= 2000).then_some(())
    })
    .await;
    // Let any straggling redelivery or relay pass run, then count effects.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stack.count_on(subjects::CONSENT_ENDED).await, 2000, "each ending published once");
    assert_eq!(history_count(&stack).await, total, "one history row per grant and revoke, none doubled");
    let revoked =
        stack.ledger(ConsentQuery { state: Some("revoked".into()), limit: Some(10_000), ..Default::default() }).await;
    assert_eq!(revoked.len(), 2000);
    eventually("every activity applied", Duration::from_secs(30), || async {
        let query = ConsentQuery { state: Some("granted".into()), limit: Some(10_000), ..Default::default() };
        let granted = stack.ledger(query).await;
        (granted.len() == 2000 && granted.iter().all(|v| v.last_seen_at == Some(at(10)))).then_some(())
    })
    .await;
}

/// The pool checks a connection only once it has idled (no ping before every statement), so
/// a connection PostgreSQL dropped while hot fails the statement that next uses it: that batch
/// is retried on a fresh connection and nothing is lost. PostgreSQL only (SQLite has no server).
#[tokio::test]
async fn the_ledger_carries_on_after_postgresql_drops_every_connection() {
    use custodian_store::sea_orm::{ConnectionTrait, DbBackend, Statement};
    let Some(mut stack) = Stack::infrastructure_on_postgres().await else { return };
    stack.consent_config.batch = 50;
    stack.start_consent();
    let run = unique("dropped");
    let first: Vec<LifecycleEvent> = (0..200).map(|i| grant_event(&format!("{run}-a{i}"), "tp", 0)).collect();
    assert!(
        stack.bus.publish_all(&first.iter().map(outgoing).collect::<Vec<_>>(), 256).await.iter().all(Result::is_ok)
    );
    eventually("the first grants applied", Duration::from_secs(30), || async {
        (history_count(&stack).await == 200).then_some(())
    })
    .await;

    // Every other connection of the pool the service shares with this test, ended by the server.
    let terminated = stack
        .store
        .db()
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        ))
        .await
        .expect("terminate")
        .expect("a row")
        .try_get::<i64>("", "n")
        .expect("count");
    assert!(terminated >= 1, "the service held pooled connections to drop");

    let second: Vec<LifecycleEvent> = (0..200).map(|i| grant_event(&format!("{run}-b{i}"), "tp", 10)).collect();
    assert!(
        stack.bus.publish_all(&second.iter().map(outgoing).collect::<Vec<_>>(), 256).await.iter().all(Result::is_ok)
    );
    // This test reads through the same pool: its own read may meet a dropped connection too.
    let count = || async {
        for _ in 0..10 {
            if let Ok(n) = consent_history::Entity::find().count(stack.store.db()).await {
                return n;
            }
        }
        panic!("the history stayed unreadable after ten fresh connections")
    };
    eventually("the grants after the drop applied", Duration::from_secs(60), || async {
        (count().await == 400).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count().await, 400, "each grant applied once");
}

#[tokio::test]
async fn a_pipelined_publish_answers_for_each_event_in_order() {
    let stack = Stack::infrastructure().await;
    let mut events: Vec<Outgoing> =
        (0..200).map(|i| outgoing(&grant_event(&format!("pipelined-{i}"), "tp", i))).collect();
    // A repeat of an event already sent in this batch: the stream keeps one, both are acked.
    events.insert(50, events[10].clone());
    // A subject no stream takes: refused, and only that one.
    let stray = Outgoing { subject: "elsewhere.nothing".into(), ..outgoing(&grant_event("stray", "tp", 0)) };
    events.insert(120, stray.clone());

    // A window far smaller than the batch, so acks are awaited while sending.
    let results = stack.bus.publish_all(&events, 16).await;

    assert_eq!(results.len(), events.len());
    for (i, result) in results.iter().enumerate() {
        if i == 120 {
            let error = result.as_ref().expect_err("the stray subject is refused").to_string();
            assert!(error.contains(&stray.event_id) && error.contains("no responders"), "{error}");
        } else {
            assert!(result.is_ok(), "event {i}: {result:?}");
        }
    }
    assert_eq!(stack.count_on(subjects::CONSENT_GRANTED).await, 200);
    // Each stored once, in the order sent.
    let stored: Vec<String> = stack
        .messages_on(subjects::CONSENT_GRANTED)
        .await
        .into_iter()
        .map(|(_, event)| event["data"]["subject"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(stored, (0..200).map(|i| format!("pipelined-{i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_pipelined_publish_into_a_dead_server_fails_in_bounded_time_and_a_resend_lands_once() {
    let mut stack = Stack::infrastructure().await;
    let events: Vec<Outgoing> = (0..6_000).map(|i| outgoing(&grant_event(&format!("outage-{i}"), "tp", i))).collect();
    stack.nats.kill();
    // A window wider than what the client buffers while disconnected (2,048 publishes), and a
    // second call on top: neither may hang.
    for half in events.chunks(3_000) {
        let results = tokio::time::timeout(Duration::from_secs(30), stack.bus.publish_all(half, 4096))
            .await
            .expect("a publish into a dead server gives up in time");
        assert!(results.iter().all(Result::is_err), "nothing can be acked while the server is down");
    }
    // The server comes back; what the client had queued may land, and the resend (as the outbox
    // relay would) lands the rest: each event stored once.
    stack.nats.restart();
    eventually("every event acked after the restart", Duration::from_secs(60), || async {
        stack.bus.publish_all(&events, 1024).await.iter().all(Result::is_ok).then_some(())
    })
    .await;
    assert_eq!(stack.count_on(subjects::CONSENT_GRANTED).await, 6_000);
}

/// Acks asked for over a connection that died with its server never come. Once the client is
/// connected to the restarted server, the publishes waiting for them fail at once, naming the
/// lost connection (not after the ack timeout), and a resend lands each event once.
#[tokio::test]
async fn publishes_whose_acks_died_with_the_connection_fail_on_reconnection_and_a_resend_lands_once() {
    let mut stack = Stack::infrastructure().await;
    let events: Vec<Outgoing> = (0..50).map(|i| outgoing(&grant_event(&format!("frozen-{i}"), "tp", i))).collect();
    let single = outgoing(&grant_event("frozen-single", "tp", 50));
    // Frozen, the server leaves what is sent in its socket and answers nothing.
    let pid = stack.nats.pid().expect("nats-server runs").to_string();
    let stopped = std::process::Command::new("kill").args(["-STOP", &pid]).status().expect("kill -STOP");
    assert!(stopped.success());
    let batch = tokio::spawn({
        let (bus, events) = (stack.bus.clone(), events.clone());
        async move { bus.publish_all(&events, 64).await }
    });
    let one = tokio::spawn({
        let (bus, single) = (stack.bus.clone(), single.clone());
        async move { bus.publish(&single).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!batch.is_finished() && !one.is_finished(), "nothing is acked by a frozen server");
    // SIGKILLed frozen, with what it was sent, and started again on its port and store.
    stack.nats.restart();
    let results = batch.await.expect("batch");
    for result in &results {
        let error = result.as_ref().expect_err("an ack lost with the old connection").to_string();
        assert!(error.contains("connection was replaced"), "{error}");
    }
    let error = one.await.expect("single").expect_err("an ack lost with the old connection").to_string();
    assert!(error.contains("connection was replaced"), "{error}");

    let mut all = events.clone();
    all.push(single);
    eventually("every event acked after the restart", Duration::from_secs(30), || async {
        stack.bus.publish_all(&all, 64).await.iter().all(Result::is_ok).then_some(())
    })
    .await;
    assert_eq!(stack.count_on(subjects::CONSENT_GRANTED).await, 51);
}

#[tokio::test]
async fn an_outbox_row_whose_publish_was_lost_is_re_driven() {
    let mut stack = Stack::infrastructure().await;
    let ended = CloudEvent::with_id(
        derived_event_id("consent.ended", "cause-1"),
        "urn:custodian:consent",
        at(0),
        ConsentEndedV1 {
            issuer: ISSUER.into(),
            subject: "erin".into(),
            platform_id: "tp".into(),
            reason: EndReason::Revoked,
            cause_event_id: "cause-1".into(),
        },
    );
    // Committed with its state change, as the consent service does.
    let txn = stack.store.db().begin().await.unwrap();
    let row = OutgoingEvent {
        event_id: ended.id.clone(),
        subject: subjects::CONSENT_ENDED.into(),
        payload: String::from_utf8(ended.to_json()).unwrap(),
        traceparent: None,
    };
    outbox::enqueue(&txn, "consent", vec![row], at(0)).await.unwrap();
    txn.commit().await.unwrap();

    // NATS is down when the relay tries: the row stays, with the attempt counted.
    stack.nats.kill();
    let relay = OutboxRelay::new(stack.store.clone(), stack.bus.clone(), "consent", stack.clock.clone());
    assert!(
        tokio::time::timeout(Duration::from_secs(20), relay.drain()).await.expect("drain gives up in time").is_err()
    );
    let stored = outbox_entity::Entity::find_by_id(ended.id.clone()).one(stack.store.db()).await.unwrap().unwrap();
    assert!(stored.published_at.is_none());
    assert_eq!(stored.attempts, 1);

    // NATS comes back; the relay's reconcile pass publishes it without any wake-up.
    stack.nats.restart();
    let mut relay = OutboxRelay::new(stack.store.clone(), stack.bus.clone(), "consent", stack.clock.clone());
    relay.reconcile_every = Duration::from_millis(200);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    eventually("the re-driven event in the stream", Duration::from_secs(30), || async {
        (stack.count_on(subjects::CONSENT_ENDED).await == 1).then_some(())
    })
    .await;
    eventually("the row marked published", Duration::from_secs(10), || async {
        let row = outbox_entity::Entity::find_by_id(ended.id.clone()).one(stack.store.db()).await.unwrap().unwrap();
        row.published_at.map(|_| ())
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let messages = stack.messages_on(subjects::CONSENT_ENDED).await;
    assert_eq!(messages[0].1["id"], ended.id.as_str());
}

#[tokio::test]
async fn any_shuffle_with_duplicates_ends_in_the_in_order_state() {
    let stack = Stack::start().await;
    for seed in [7_u64, 1_234, 99_999] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let run = unique("shuffle");
        let people: Vec<String> = (0..10).map(|i| format!("{run}-{i}")).collect();
        let platforms = ["tp-a", "tp-b", "tp-c", "tp-d", "tp-e"];
        let mut events = Vec::new();
        for _ in 0..1000 {
            let who = &people[rng.random_range(0..people.len())];
            let platform = platforms[rng.random_range(0..platforms.len())];
            let t = rng.random_range(0..50);
            events.push(match rng.random_range(0..10) {
                0..=3 => grant_event(who, platform, t),
                4..=6 => revoke_event(who, platform, t),
                _ => seen_event(who, platform, t),
            });
        }
        let expected = expected_states(&events);
        let mut delivered: Vec<Outgoing> = events.iter().map(outgoing).collect();
        // Duplicates with the same id: some within the de-dup window, some re-sent under a
        // new Msg-Id as a misbehaving publisher would (the ledger's join must shrug those off).
        let dups: Vec<Outgoing> = delivered.iter().take(300).cloned().collect();
        delivered.extend(dups);
        delivered.shuffle(&mut rng);
        let results = stack.bus.publish_all(&delivered, 256).await;
        assert!(results.iter().all(Result::is_ok));
        for out in delivered.iter().take(100) {
            let ack = stack.bus.jetstream().publish(out.subject.clone(), out.payload.clone()).await.unwrap();
            ack.await.unwrap();
        }

        let applied = eventually("every distinct event applied", Duration::from_secs(60), || async {
            let views = stack.ledger(ConsentQuery { limit: Some(10_000), ..Default::default() }).await;
            let mine: Vec<_> = views.into_iter().filter(|v| v.subject.starts_with(&run)).collect();
            let done = mine.len() == expected.values().filter(|c| c.status() != Status::Unknown).count()
                && mine.iter().all(|v| {
                    let c = &expected[&(v.subject.clone(), v.platform_id.clone())];
                    v.state == c.status().as_str()
                        && v.last_seen_at == c.last_seen_at
                        && v.granted_at == c.grant.as_ref().map(|g| g.at)
                        && v.ended_at == c.ended_at()
                });
            done.then_some(mine)
        })
        .await;
        for view in applied {
            let c = &expected[&(view.subject.clone(), view.platform_id.clone())];
            assert_eq!(view.granted_at, c.grant.as_ref().map(|g| g.at), "seed {seed}");
            assert_eq!(view.ended_at, c.ended_at(), "seed {seed}");
        }
    }
}

/// Records what it is handed; fails the first `failures` batches transiently.
#[derive(Clone, Default)]
pub(crate) struct Recorder {
    pub(crate) seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    failures: usize,
}

impl custodian_bus::BatchHandler for Recorder {
    async fn handle(&self, batch: &[custodian_bus::Delivery]) -> Vec<Result<(), custodian_bus::HandlerError>> {
        let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if call < self.failures {
            return batch.iter().map(|_| Err(custodian_bus::HandlerError::Transient("not yet".into()))).collect();
        }
        self.seen.lock().unwrap().extend(batch.iter().map(|d| d.event.id().to_owned()));
        batch.iter().map(|_| Ok(())).collect()
    }
}

pub(crate) fn in_order_spec() -> custodian_bus::ConsumerSpec {
    let mut spec = custodian_bus::ConsumerSpec::new("test", "in-order", &[subjects::ACTIVITY_SEEN]);
    spec.in_order = true;
    spec.nak_delay = Duration::from_millis(20);
    spec
}

pub(crate) async fn publish_seen(stack: &Stack, n: usize, from: i64) -> Vec<String> {
    let events: Vec<LifecycleEvent> = (0..n).map(|i| seen_event(&unique("p"), "tp-1", from + i as i64)).collect();
    for r in stack.bus.publish_all(&events.iter().map(outgoing).collect::<Vec<_>>(), 64).await {
        r.expect("published");
    }
    events.iter().map(|e| e.id().to_owned()).collect()
}

/// Runs `handler` on the durable `spec` names until `shutdown`.
pub(crate) fn spawn_consumer<H: custodian_bus::BatchHandler>(
    stack: &Stack,
    spec: custodian_bus::ConsumerSpec,
    handler: H,
    shutdown: &tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Result<(), custodian_bus::BusError>> {
    let (bus, clock, shutdown) = (stack.bus.clone(), stack.clock.clone(), shutdown.clone());
    tokio::spawn(async move { custodian_bus::run_consumer(&bus, spec, handler, clock, shutdown).await })
}

impl Recorder {
    /// What it was handed, once that is at least `n` events.
    pub(crate) async fn seen_at_least(&self, what: &str, n: usize) -> Vec<String> {
        eventually(what, Duration::from_secs(20), || {
            let seen = self.seen.lock().unwrap().clone();
            async move { (seen.len() >= n).then_some(seen) }
        })
        .await
    }
}

/// Waits until the test durable has acknowledged everything up to stream sequence `upto`.
async fn acknowledged_up_to(stack: &Stack, upto: u64) -> async_nats::jetstream::consumer::Info {
    eventually("everything acknowledged", Duration::from_secs(10), || async {
        let info = consumer_info(stack, "test-in-order").await?;
        (info.ack_floor.stream_sequence == upto && info.num_ack_pending == 0).then_some(info)
    })
    .await
}

/// The durable's state; `None` until it exists.
pub(crate) async fn consumer_info(stack: &Stack, durable: &str) -> Option<async_nats::jetstream::consumer::Info> {
    let stream = stack.bus.jetstream().get_stream(subjects::STREAM).await.expect("stream");
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream.get_consumer(durable).await.ok()?;
    consumer.info().await.ok().cloned()
}

#[tokio::test]
async fn an_in_order_consumer_retries_a_failed_batch_in_place_and_acks_each_event_once() {
    let stack = Stack::infrastructure().await;
    let published = publish_seen(&stack, 50, 0).await;
    let recorder = Recorder { failures: 2, ..Default::default() };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = spawn_consumer(&stack, in_order_spec(), recorder.clone(), &shutdown);
    let seen = recorder.seen_at_least("every event handled", 50).await;
    assert_eq!(seen, published, "in stream order, each once, after the failed attempts");
    assert!(recorder.calls.load(std::sync::atomic::Ordering::SeqCst) > 2, "the failed batch was retried");
    let info = acknowledged_up_to(&stack, 50).await;
    assert_eq!(info.config.ack_policy, async_nats::jetstream::consumer::AckPolicy::All);
    shutdown.cancel();
    task.await.expect("joined").expect("consumer ran");
    assert_eq!(recorder.seen.lock().unwrap().len(), 50, "nothing redelivered");
}

#[tokio::test]
async fn a_durable_switched_to_in_order_resumes_after_what_it_had_acknowledged() {
    let stack = Stack::infrastructure().await;
    let first = publish_seen(&stack, 10, 0).await;
    // The same durable as it was before: explicit acks, one per message.
    let explicit = Recorder::default();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut spec = in_order_spec();
    spec.in_order = false;
    let task = spawn_consumer(&stack, spec, explicit.clone(), &shutdown);
    acknowledged_up_to(&stack, 10).await;
    shutdown.cancel();
    task.await.expect("joined").expect("consumer ran");
    assert_eq!(*explicit.seen.lock().unwrap(), first);

    let second = publish_seen(&stack, 10, 100).await;
    let in_order = Recorder::default();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = spawn_consumer(&stack, in_order_spec(), in_order.clone(), &shutdown);
    let seen = in_order.seen_at_least("the new events handled", 10).await;
    assert_eq!(seen, second, "only what the old durable had not acknowledged");
    let info = consumer_info(&stack, "test-in-order").await.expect("the durable");
    assert_eq!(info.config.ack_policy, async_nats::jetstream::consumer::AckPolicy::All);
    shutdown.cancel();
    task.await.expect("joined").expect("consumer ran");
}

/// Never finishes the batch that carries `held` (the instance dies with it in hand);
/// records every batch before it.
#[derive(Clone, Default)]
struct Stuck {
    held: String,
    in_hand: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl custodian_bus::BatchHandler for Stuck {
    async fn handle(&self, batch: &[custodian_bus::Delivery]) -> Vec<Result<(), custodian_bus::HandlerError>> {
        if batch.iter().any(|d| d.event.id() == self.held) {
            self.in_hand.store(true, std::sync::atomic::Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        self.seen.lock().unwrap().extend(batch.iter().map(|d| d.event.id().to_owned()));
        batch.iter().map(|_| Ok(())).collect()
    }
}

/// An in-order consumer (the audit chain) that dies with messages in hand and starts again
/// at once: the server delivers newer messages before it redelivers those (only after
/// `ack_wait`), and under `AckPolicy::All` the new instance's first ack would cover them,
/// never applied. They must come first, in order, each once.
#[tokio::test]
async fn an_in_order_consumer_restarted_with_messages_in_hand_applies_them_before_newer_ones() {
    let stack = Stack::infrastructure().await;
    let first = publish_seen(&stack, 30, 0).await;
    let stuck = Stuck { held: first[15].clone(), ..Default::default() };
    let mut spec = in_order_spec();
    spec.batch = 5;
    assert!(spec.ack_wait >= Duration::from_secs(30), "no redelivery by the server within the test");
    // Never shut down: the task is aborted, as a crash would end it.
    let task = spawn_consumer(&stack, spec.clone(), stuck.clone(), &tokio_util::sync::CancellationToken::new());
    eventually("the instance stuck on a batch", Duration::from_secs(20), || {
        let in_hand = stuck.in_hand.load(std::sync::atomic::Ordering::SeqCst);
        async move { in_hand.then_some(()) }
    })
    .await;
    task.abort();
    let _ = task.await;
    let applied = stuck.seen.lock().unwrap().clone();
    assert_eq!(applied, first[..applied.len()], "the dead instance applied a prefix");
    assert!(applied.len() < 16, "and not the batch it died with");
    let info = consumer_info(&stack, "test-in-order").await.expect("the durable");
    assert!(info.num_ack_pending > 0, "the dead instance left messages unacknowledged");

    let restarted = Recorder::default();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = spawn_consumer(&stack, spec, restarted.clone(), &shutdown);
    let second = publish_seen(&stack, 10, 100).await;
    let expected: Vec<String> = first[applied.len()..].iter().chain(&second).cloned().collect();
    let seen = restarted.seen_at_least("the messages in hand and the newer ones applied", expected.len()).await;
    assert_eq!(seen, expected, "what the dead instance had in hand first, then the newer, each once");
    acknowledged_up_to(&stack, 40).await;
    shutdown.cancel();
    task.await.expect("joined").expect("consumer ran");
}

/// A delivery that never reaches an in-order consumer (lost in transit with a dropped
/// connection; here taken by a second puller on the durable and dropped) must not be
/// covered by its next ack: it applies what came before, then replays from the ack floor.
#[tokio::test]
async fn an_in_order_consumer_missing_a_delivery_replays_it_instead_of_acking_past_it() {
    let stack = Stack::infrastructure().await;
    let mut published = publish_seen(&stack, 10, 0).await;
    let recorder = Recorder::default();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = spawn_consumer(&stack, in_order_spec(), recorder.clone(), &shutdown);
    recorder.seen_at_least("the first events applied", 10).await;

    // The second puller waits beside the consumer's own pull; the server hands new messages
    // to both in turn.
    let stream = stack.bus.jetstream().get_stream(subjects::STREAM).await.expect("stream");
    let thief: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("test-in-order").await.expect("the durable");
    let mut stolen = tokio::spawn(async move {
        let mut fetched =
            thief.fetch().max_messages(1).expires(Duration::from_secs(20)).messages().await.expect("fetch");
        let message = fetched.next().await.expect("one message").expect("a message");
        // Dropped without an ack, as if it had been lost on the wire.
        message.info().expect("a JetStream delivery").stream_sequence
    });
    let mut taken = None;
    for t in 100..150 {
        published.extend(publish_seen(&stack, 1, t).await);
        if let Ok(done) = tokio::time::timeout(Duration::from_millis(100), &mut stolen).await {
            taken = Some(done.expect("the second puller"));
            break;
        }
    }
    let taken = taken.expect("the second puller got a delivery");
    published.extend(publish_seen(&stack, 5, 200).await);

    let seen = recorder.seen_at_least("every event applied, the missing one too", published.len()).await;
    assert_eq!(seen, published, "each once, in stream order (stream sequence {taken} was the missing one)");
    acknowledged_up_to(&stack, published.len() as u64).await;
    shutdown.cancel();
    task.await.expect("joined").expect("consumer ran");
}

/// A task aborted while it begins, uses or commits a transaction (a crashed replica, a
/// dropped `select!` branch) must not hand its pooled connection on inside a transaction:
/// the next borrower's autocommit statements would never commit and would keep their locks.
/// Begun through the store, a `BEGIN` completes on its own task even if its caller is gone.
#[tokio::test]
async fn an_aborted_transaction_leaves_no_pooled_connection_inside_a_transaction() {
    use custodian_store::sea_orm::{ConnectionTrait, DbBackend, Statement};
    let Some(stack) = Stack::infrastructure_on_postgres().await else { return };
    let db = stack.store.db().clone();
    db.execute_unprepared("CREATE TABLE abort_probe (id int PRIMARY KEY, v int)").await.unwrap();
    db.execute_unprepared("INSERT INTO abort_probe VALUES (1, 0)").await.unwrap();
    // The probe has its own connection: through the pool under test it could borrow the very
    // connection it looks for (which then shows as active, not idle in transaction).
    let name: String = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT current_database() AS name"))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "name")
        .unwrap();
    let url = custodian_testkit::PgCluster::shared().url_of(&name);
    let probe = custodian_store::Store::connect(&url, 1).await.expect("probe connection");
    let in_transaction = || async {
        let row = probe
            .db()
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<i64>("", "n").unwrap()
    };
    let mut leaked = Vec::new();
    for i in 0..300u64 {
        let store = stack.store.clone();
        let task = tokio::spawn(async move {
            loop {
                let txn = store.begin().await.unwrap();
                txn.execute_unprepared("UPDATE abort_probe SET v = v + 1 WHERE id = 1").await.unwrap();
                txn.commit().await.unwrap();
            }
        });
        // Abort points spread over the loop's begin, update and commit.
        tokio::time::sleep(Duration::from_micros(200 + (i * 7919) % 3000)).await;
        task.abort();
        let _ = task.await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        // A connection still in a transaction a moment later was handed back that way.
        if in_transaction().await > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if in_transaction().await > 0 {
                leaked.push(i);
            }
        }
    }
    assert!(leaked.is_empty(), "connections left inside a transaction after aborts {leaked:?}");
}

/// An answer built from several queries (an incident and its steps, a receipt and its tokens)
/// reads them in one snapshot: a commit landing between its statements is not half seen.
#[tokio::test]
async fn a_snapshot_read_sees_one_instant_across_its_statements() {
    use custodian_store::sea_orm::{ConnectionTrait, DbBackend};
    let stack = Stack::infrastructure().await;
    let db = stack.store.db();
    db.execute_unprepared("CREATE TABLE snapshot_probe (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)").await.unwrap();
    db.execute_unprepared("INSERT INTO snapshot_probe (id, v) VALUES (1, 0), (2, 0)").await.unwrap();

    let (first, second, snapshot) = straddle(&stack.store, stack.store.begin_snapshot().await.unwrap(), 1).await;
    assert_eq!((first, second), (0, 0), "the second statement sees the first one's instant");
    if stack.store.backend() == DbBackend::Postgres {
        assert!(snapshot.execute_unprepared("UPDATE snapshot_probe SET v = 9").await.is_err(), "read-only");
        // The control: PostgreSQL's default (READ COMMITTED) does show the commit half-way.
        drop(snapshot);
        let (first, second, _) = straddle(&stack.store, stack.store.begin().await.unwrap(), 2).await;
        assert_eq!((first, second), (1, 2), "a plain transaction sees each statement's own instant");
    }
}

/// Reads row 1 of the probe in `txn`, lets another connection commit `v = round` to both rows
/// (as the step closing an incident does), then reads row 2 in `txn`.
async fn straddle(
    store: &custodian_store::Store,
    txn: custodian_store::sea_orm::DatabaseTransaction,
    round: i32,
) -> (i32, i32, custodian_store::sea_orm::DatabaseTransaction) {
    use custodian_store::sea_orm::{ConnectionTrait, Statement};
    async fn probe(txn: &custodian_store::sea_orm::DatabaseTransaction, id: i32) -> i32 {
        let sql = format!("SELECT v FROM snapshot_probe WHERE id = {id}");
        let row = txn.query_one_raw(Statement::from_string(txn.get_database_backend(), sql)).await.unwrap().unwrap();
        row.try_get::<i32>("", "v").unwrap()
    }
    let first = probe(&txn, 1).await;
    let writer = store.begin_write().await.unwrap();
    writer.execute_unprepared(&format!("UPDATE snapshot_probe SET v = {round}")).await.unwrap();
    writer.commit().await.unwrap();
    let second = probe(&txn, 2).await;
    (first, second, txn)
}
