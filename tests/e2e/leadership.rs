//! An exclusive consumer (the consent ledger): replicas contend for a lease, only the holder
//! consumes, in order with one ack per batch and several batches applied side by side; a
//! successor takes over from its predecessor's ack floor on a durable of its own term.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use custodian_bus::{BatchHandler, ConsumerSpec, Delivery, HandlerError};
use custodian_events::subjects;
use custodian_testkit::eventually;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::reliability::{
    Recorder, consumer_info, grant_event, history_count, in_order_spec, outgoing, publish_seen, revoke_event,
    spawn_consumer,
};
use crate::support::{Stack, unique};

/// Holds the batch that carries `held` until released; records every batch it lets through.
#[derive(Clone)]
struct Gate {
    held: String,
    holding: Arc<AtomicBool>,
    /// The batch held, as (stream sequence, event id): a fetch may hand over fewer than
    /// `batch` messages, so where it starts depends on how the pulls arrived.
    held_batch: Arc<std::sync::Mutex<Vec<(u64, String)>>>,
    release: Arc<tokio::sync::Notify>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Gate {
    fn on(held: &str) -> Self {
        Self {
            held: held.to_owned(),
            holding: Arc::default(),
            held_batch: Arc::default(),
            release: Arc::default(),
            seen: Arc::default(),
        }
    }

    async fn wait_holding(&self, what: &str) {
        eventually(what, Duration::from_secs(20), || {
            let holding = self.holding.load(Ordering::SeqCst);
            async move { holding.then_some(()) }
        })
        .await;
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn held_batch(&self) -> Vec<(u64, String)> {
        self.held_batch.lock().unwrap().clone()
    }
}

impl BatchHandler for Gate {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Result<(), HandlerError>> {
        if batch.iter().any(|d| d.event.id() == self.held) {
            *self.held_batch.lock().unwrap() =
                batch.iter().map(|d| (d.stream_sequence, d.event.id().to_owned())).collect();
            self.holding.store(true, Ordering::SeqCst);
            self.release.notified().await;
        }
        self.seen.lock().unwrap().extend(batch.iter().map(|d| d.event.id().to_owned()));
        batch.iter().map(|_| Ok(())).collect()
    }
}

/// A handler with a bug: it panics on the batch that carries `on`.
#[derive(Clone)]
struct Panics {
    at_sequence: u64,
}

impl BatchHandler for Panics {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Result<(), HandlerError>> {
        assert!(batch.iter().all(|d| d.stream_sequence != self.at_sequence), "a bug in the handler");
        batch.iter().map(|_| Ok(())).collect()
    }
}

fn exclusive_spec() -> ConsumerSpec {
    let mut spec = in_order_spec();
    spec.exclusive = true;
    spec.batch = 5;
    spec
}

/// The durables of `test-in-order` (one per leadership term), sorted.
async fn term_durables(stack: &Stack) -> Vec<String> {
    let stream = stack.bus.jetstream().get_stream(subjects::STREAM).await.expect("stream");
    let mut names: Vec<String> = stream
        .consumer_names()
        .filter_map(|name| async move { name.ok() })
        .filter(|name| std::future::ready(name.starts_with("test-in-order-t")))
        .collect()
        .await;
    names.sort();
    names
}

/// The one durable of the current term, once it is not `previous`.
async fn current_term(stack: &Stack, previous: Option<&str>) -> String {
    eventually("a term's durable", Duration::from_secs(20), || async {
        match term_durables(stack).await.as_slice() {
            [only] if Some(only.as_str()) != previous => Some(only.clone()),
            _ => None,
        }
    })
    .await
}

async fn ack_floor(stack: &Stack, durable: &str) -> u64 {
    consumer_info(stack, durable).await.expect("the durable").ack_floor.stream_sequence
}

/// Several appliers under one puller: later batches are applied while an earlier one is
/// still running, but under `AckPolicy::All` an ack covers everything before it, so none
/// may go out until the earlier batch is done.
#[tokio::test]
async fn in_order_appliers_apply_side_by_side_but_ack_nothing_past_an_unfinished_batch() {
    let stack = Stack::infrastructure().await;
    let published = publish_seen(&stack, 40, 0).await;
    let gate = Gate::on(&published[0]);
    let mut spec = in_order_spec();
    spec.batch = 5;
    spec.appliers = 3;
    let shutdown = CancellationToken::new();
    let task = spawn_consumer(&stack, spec, gate.clone(), &shutdown);
    gate.wait_holding("the first batch held").await;
    eventually("later batches applied while the first is held", Duration::from_secs(20), || {
        let n = gate.seen().len();
        async move { (n >= 10).then_some(()) }
    })
    .await;
    assert!(!gate.seen().contains(&published[0]), "the first batch is still held");
    // Give a wrong ack time to reach the server before looking.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ack_floor(&stack, "test-in-order").await, 0, "nothing acked past the unfinished first batch");

    gate.release.notify_one();
    let info = eventually("everything acknowledged once the first batch is done", Duration::from_secs(20), || async {
        let info = consumer_info(&stack, "test-in-order").await?;
        (info.ack_floor.stream_sequence == 40 && info.num_ack_pending == 0).then_some(info)
    })
    .await;
    assert_eq!(info.num_redelivered, 0);
    shutdown.cancel();
    task.await.expect("joined").expect("consumer ran");
    let mut seen = gate.seen();
    seen.sort();
    let mut expected = published.clone();
    expected.sort();
    assert_eq!(seen, expected, "each event applied once");
}

/// A panicking applier's batch is never acked, nor anything after it: the consumer must
/// stop with the error (its service's supervisor reports it) instead of stalling silently
/// once `max_ack_pending` is reached.
#[tokio::test]
async fn an_applier_that_panics_stops_the_consumer_instead_of_stalling_it() {
    let stack = Stack::infrastructure().await;
    publish_seen(&stack, 20, 0).await;
    let mut spec = in_order_spec();
    spec.batch = 5;
    spec.appliers = 3;
    let task = spawn_consumer(&stack, spec, Panics { at_sequence: 8 }, &CancellationToken::new());
    let outcome =
        tokio::time::timeout(Duration::from_secs(20), task).await.expect("the consumer stopped").expect("joined");
    let error = outcome.expect_err("the consumer reports the failure");
    assert!(error.to_string().contains("applier task failed"), "{error}");
    // A fetch may hand over fewer than `batch` messages, so the batches' bounds are not fixed;
    // what must hold is that nothing from the panicking message on is acked.
    let floor = ack_floor(&stack, "test-in-order").await;
    assert!(floor < 8, "acked up to {floor}, past the event whose batch panicked");
}

/// Two replicas: only the lease holder consumes; stopped gracefully, it releases the lease
/// and the standby takes over at once, right after what the leader had acknowledged.
#[tokio::test]
async fn only_the_lease_holder_consumes_and_a_graceful_stop_hands_over_at_once() {
    let stack = Stack::infrastructure().await;
    let first = publish_seen(&stack, 20, 0).await;
    let leader = Recorder::default();
    let leader_stop = CancellationToken::new();
    let leader_task = spawn_consumer(&stack, exclusive_spec(), leader.clone(), &leader_stop);
    leader.seen_at_least("the leader applies the first events", 20).await;
    let leader_term = current_term(&stack, None).await;

    let standby = Recorder::default();
    let standby_stop = CancellationToken::new();
    let standby_task = spawn_consumer(&stack, exclusive_spec(), standby.clone(), &standby_stop);
    let second = publish_seen(&stack, 20, 100).await;
    let seen = leader.seen_at_least("the leader applies the next events", 40).await;
    assert_eq!(seen, [first, second].concat(), "in stream order, each once");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(standby.seen.lock().unwrap().is_empty(), "the standby consumed nothing");
    eventually("the leader acknowledged everything", Duration::from_secs(10), || async {
        (ack_floor(&stack, &leader_term).await == 40).then_some(())
    })
    .await;

    let stopped_at = tokio::time::Instant::now();
    leader_stop.cancel();
    leader_task.await.expect("joined").expect("leader ran");
    let third = publish_seen(&stack, 20, 200).await;
    let seen = standby.seen_at_least("the standby applies what came after", 20).await;
    assert!(stopped_at.elapsed() < Duration::from_secs(8), "taken over without waiting for the lease to lapse");
    assert_eq!(seen, third, "nothing the leader had acknowledged comes again");
    let standby_term = current_term(&stack, Some(&leader_term)).await;
    assert_eq!(term_durables(&stack).await, [standby_term], "the predecessor's durable is gone");
    standby_stop.cancel();
    standby_task.await.expect("joined").expect("standby ran");
}

/// A leader paused mid-batch while its lease lapses (here deleted under it) and a successor
/// takes over: when the stale leader wakes and acks its batch, that ack must not cover what
/// the successor was handed — it lands on the stale term's own durable, deleted by the
/// take-over. The successor applies everything after the stale leader's ack floor.
#[tokio::test]
async fn a_stale_leaders_ack_cannot_cover_what_its_successor_holds() {
    let stack = Stack::infrastructure().await;
    let published = publish_seen(&stack, 20, 0).await;
    let stale = Gate::on(&published[5]);
    let stale_stop = CancellationToken::new();
    let stale_task = spawn_consumer(&stack, exclusive_spec(), stale.clone(), &stale_stop);
    stale.wait_holding("the leader paused on a later batch").await;
    let stale_term = current_term(&stack, None).await;
    // The batches before the held one are applied and acked; the held one starts after them.
    let held = stale.held_batch();
    let floor = held.first().expect("a held batch").0 - 1;
    let last_held = held.last().expect("a held batch").0;
    eventually("the batches before the held one acknowledged", Duration::from_secs(20), || async {
        (ack_floor(&stack, &stale_term).await == floor).then_some(())
    })
    .await;

    // The lease lapses while the leader is paused.
    let leases = stack.bus.jetstream().get_key_value(custodian_bus::lease::LEADERSHIP_BUCKET).await.expect("bucket");
    leases.delete("test-in-order").await.expect("lease deleted");
    // The successor's first batch starts where the stale leader's held one does: hold it.
    let successor = Gate::on(&held[0].1);
    let successor_stop = CancellationToken::new();
    let successor_task = spawn_consumer(&stack, exclusive_spec(), successor.clone(), &successor_stop);
    successor.wait_holding("the successor holds the first event of the stale leader's batch").await;
    let successor_term = current_term(&stack, Some(&stale_term)).await;
    assert_eq!(ack_floor(&stack, &successor_term).await, floor, "taken over after the stale leader's ack floor");

    // The stale leader wakes, finishes its batch and acks it (AckPolicy::All: up to its last).
    stale.release.notify_one();
    eventually("the stale leader finished its batch", Duration::from_secs(20), || {
        let seen = stale.seen();
        let done = held.iter().all(|(_, id)| seen.contains(id));
        async move { done.then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ack_floor(&stack, &successor_term).await,
        floor,
        "the stale ack (up to {last_held}) covered nothing of the successor's"
    );

    successor.release.notify_one();
    let after_floor = &published[usize::try_from(floor).expect("small")..];
    let rest = after_floor.len();
    let seen = eventually("the successor applied the rest", Duration::from_secs(20), || {
        let seen = successor.seen();
        async move { (seen.len() >= rest).then_some(seen) }
    })
    .await;
    assert_eq!(seen, after_floor, "everything after the stale leader's ack floor, in order, once");
    eventually("the successor acknowledged everything", Duration::from_secs(20), || async {
        (ack_floor(&stack, &successor_term).await == 20).then_some(())
    })
    .await;
    let more = publish_seen(&stack, 5, 100).await;
    let seen = eventually("new events go to the successor", Duration::from_secs(20), || {
        let seen = successor.seen();
        let expected = rest + more.len();
        async move { (seen.len() >= expected).then_some(seen) }
    })
    .await;
    assert_eq!(seen[rest..], more);
    assert!(stale.seen().iter().all(|id| !more.contains(id)), "the stale leader stepped down");
    for (stop, task) in [(stale_stop, stale_task), (successor_stop, successor_task)] {
        stop.cancel();
        task.await.expect("joined").expect("consumer ran");
    }
}

/// Two consent service replicas; the leader crashes (no graceful release): the standby
/// takes over once the lease lapses and applies every later event, each ending published once.
#[tokio::test]
async fn a_crashed_consent_leader_is_replaced_by_its_standby() {
    let mut stack = Stack::infrastructure().await;
    let run = unique("failover");
    let grants: Vec<_> = (0..300).map(|i| grant_event(&format!("{run}-{i}"), "tp", 0)).collect();
    let results = stack.bus.publish_all(&grants.iter().map(outgoing).collect::<Vec<_>>(), 256).await;
    assert!(results.iter().all(Result::is_ok));
    stack.start_consent();
    eventually("the grants applied by the leader", Duration::from_secs(30), || async {
        (history_count(&stack).await == 300).then_some(())
    })
    .await;

    let standby_metrics = custodian_consent::ConsentMetrics::default();
    let (standby_stop, standby) = stack.spawn_consent(standby_metrics.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(standby_metrics.leading.get(), 0, "the standby does not lead while the leader runs");
    stack.crash_consent().await;
    let revocations: Vec<_> = (0..300).map(|i| revoke_event(&format!("{run}-{i}"), "tp", 10)).collect();
    let results = stack.bus.publish_all(&revocations.iter().map(outgoing).collect::<Vec<_>>(), 256).await;
    assert!(results.iter().all(Result::is_ok));
    let lapse = custodian_bus::lease::LEADERSHIP_TTL + Duration::from_secs(30);
    eventually("the standby applied the revocations", lapse, || async {
        (history_count(&stack).await == 600).then_some(())
    })
    .await;
    eventually("every consent.ended published", Duration::from_secs(30), || async {
        (stack.count_on(subjects::CONSENT_ENDED).await >= 300).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.count_on(subjects::CONSENT_ENDED).await, 300, "each ending published once");
    assert_eq!(history_count(&stack).await, 600, "one history row per grant and revoke");
    assert_eq!(standby_metrics.leading.get(), 1, "the standby leads now");
    standby_stop.cancel();
    standby.await.expect("standby ran");
    assert_eq!(standby_metrics.leading.get(), 0, "stopped, it leads no more");
}

/// An upgrade: the durable the replicas shared before leases (explicit acks) is the first
/// term's predecessor; the leader resumes right after what it had acknowledged and deletes it.
#[tokio::test]
async fn the_first_leader_resumes_after_the_durable_shared_before_leases() {
    let stack = Stack::infrastructure().await;
    let first = publish_seen(&stack, 10, 0).await;
    let shared = Recorder::default();
    let stop = CancellationToken::new();
    let mut spec = in_order_spec();
    spec.in_order = false;
    let task = spawn_consumer(&stack, spec, shared.clone(), &stop);
    assert_eq!(shared.seen_at_least("the shared durable applies the first events", 10).await, first);
    eventually("the shared durable acknowledged them", Duration::from_secs(10), || async {
        (ack_floor(&stack, "test-in-order").await == 10).then_some(())
    })
    .await;
    stop.cancel();
    task.await.expect("joined").expect("consumer ran");

    let second = publish_seen(&stack, 10, 100).await;
    let leader = Recorder::default();
    let stop = CancellationToken::new();
    let task = spawn_consumer(&stack, exclusive_spec(), leader.clone(), &stop);
    assert_eq!(leader.seen_at_least("the leader applies the new events", 10).await, second);
    let term = current_term(&stack, None).await;
    assert!(consumer_info(&stack, "test-in-order").await.is_none(), "the shared durable is gone");
    eventually("the leader acknowledged everything", Duration::from_secs(10), || async {
        (ack_floor(&stack, &term).await == 20).then_some(())
    })
    .await;
    stop.cancel();
    task.await.expect("joined").expect("consumer ran");
}

/// `custodian status`'s view: the ledger's leader and what waits. A leader that crashed
/// leaves events waiting with nobody leading once its lease lapses; an outbox event left
/// unpublished and a dead letter show too.
#[tokio::test]
async fn status_names_the_leader_and_what_needs_an_operator() {
    use custodian_bus::status::{bus_status, problems};
    use custodian_store::outbox;
    let mut stack = Stack::infrastructure().await;
    let run = unique("status");
    stack.start_consent();
    let grants: Vec<_> = (0..10).map(|i| grant_event(&format!("{run}-{i}"), "tp", 0)).collect();
    assert!(
        stack.bus.publish_all(&grants.iter().map(outgoing).collect::<Vec<_>>(), 16).await.iter().all(Result::is_ok)
    );
    let js = stack.bus.jetstream().clone();
    js.publish(subjects::CONSENT_GRANTED, "{not an event".into()).await.expect("sent").await.expect("stored");
    // A reader, not a service (as `audit verify --stream` makes): not listed.
    let stream = js.get_stream(subjects::STREAM).await.expect("stream");
    let _reader: async_nats::jetstream::consumer::PullConsumer =
        stream.create_consumer(async_nats::jetstream::consumer::pull::Config::default()).await.expect("ephemeral");
    let status = eventually("the ledger applied everything", Duration::from_secs(30), || async {
        let status = bus_status(&stack.bus).await.expect("status");
        let ledger = status.consumers.iter().find(|c| c.name == "consent-ledger")?;
        (ledger.acknowledged_through == 11 && !status.dead_letters.is_empty()).then_some(status)
    })
    .await;
    let ledger = status.consumers.iter().find(|c| c.name == "consent-ledger").expect("the ledger");
    assert!(ledger.takes_turns && ledger.durable.starts_with("consent-ledger-t"), "{ledger:?}");
    assert!(ledger.leader.as_deref().is_some_and(|h| h.starts_with("consent@")), "{ledger:?}");
    assert_eq!((ledger.pending, ledger.unacknowledged), (0, 0));
    assert_eq!(status.dead_letters, vec![("lifecycle.deadletter.consent".to_owned(), 1)]);
    let names: Vec<&str> = status.consumers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["consent-ledger", "consent-retention"], "the services' durables only");
    let shared = status.consumers.iter().find(|c| c.name == "consent-retention").expect("a shared durable");
    assert!(!shared.takes_turns && shared.leader.is_none(), "{shared:?}");
    let now = stack.clock.now();
    assert_eq!(problems(&status, &[], now), Vec::<String>::new(), "a dead letter alone needs no operator");
    // But a check reports it once: it arrived since the last check. Read as the operators'
    // identity, which `custodian status` runs under.
    let ops = custodian_bus::Bus::attach(
        stack
            .nats
            .connect(&custodian_bus::trust::Identity::Operator(custodian_bus::trust::Operator::Ops), "test-ops")
            .await,
    );
    let as_ops = bus_status(&ops).await.expect("status as ops");
    assert_eq!(as_ops.dead_letters_newest, status.dead_letters_newest);
    let news = custodian_bus::status::check_dead_letters(&as_ops, stack.store.db(), now).await.expect("check");
    assert_eq!(news.len(), 1, "{news:?}");
    assert!(news[0].starts_with("lifecycle.deadletter.consent: dead letter(s) since the last check"), "{news:?}");
    let again = custodian_bus::status::check_dead_letters(&status, stack.store.db(), now).await.expect("check");
    assert!(again.is_empty(), "reported once: {again:?}");

    stack.crash_consent().await;
    let more: Vec<_> = (10..15).map(|i| grant_event(&format!("{run}-{i}"), "tp", 0)).collect();
    assert!(stack.bus.publish_all(&more.iter().map(outgoing).collect::<Vec<_>>(), 16).await.iter().all(Result::is_ok));
    let lapse = custodian_bus::lease::LEADERSHIP_TTL + Duration::from_secs(20);
    let status = eventually("the dead leader's lease lapsed", lapse, || async {
        let status = bus_status(&stack.bus).await.expect("status");
        let ledger = status.consumers.iter().find(|c| c.name == "consent-ledger")?;
        ledger.leader.is_none().then_some(status)
    })
    .await;
    assert_eq!(
        problems(&status, &[], stack.clock.now()),
        vec!["consent-ledger: 5 event(s) wait and no replica leads it".to_owned()]
    );

    let stale = outbox::OutgoingEvent {
        event_id: unique("stuck"),
        subject: subjects::CONSENT_ENDED.to_owned(),
        payload: "{}".into(),
        traceparent: None,
    };
    let written = stack.clock.now() - chrono::Duration::minutes(5);
    outbox::enqueue(stack.store.db(), "vault", vec![stale], written).await.expect("enqueued");
    let backlog = outbox::backlog(stack.store.db()).await.expect("backlog");
    assert_eq!(backlog.len(), 1);
    assert_eq!((backlog[0].publisher.as_str(), backlog[0].waiting), ("vault", 1));
    let found = problems(&status, &backlog, stack.clock.now());
    assert!(
        found.iter().any(|p| p.starts_with("outbox of vault: 1 event(s) unpublished, the oldest for 30")),
        "{found:?}"
    );
}

/// A try whose answer was lost (timed out after the server stored it), or a holder that stepped
/// down while NATS was unreachable, finds the key under its own name: that is still its lease,
/// and it is taken back at once. Another holder's name means someone else leads.
#[tokio::test]
async fn a_lease_found_under_the_holders_own_name_is_taken_back_and_anothers_is_not() {
    use custodian_bus::lease::{self, Lease};
    let stack = Stack::infrastructure().await;
    let kv = lease::bucket(stack.bus.jetstream(), "custodian_test_leases", Duration::from_secs(30), 1)
        .await
        .expect("lease bucket");
    let key = unique("ledger");
    let first = Lease::try_acquire(&kv, &key, "replica-a").await.expect("reachable").expect("nobody held it");
    let again = Lease::try_acquire(&kv, &key, "replica-a").await.expect("reachable").expect("its own lease");
    assert_eq!(again.revision(), first.revision(), "the same lease, not a new write");
    let mut again = again;
    again.renew().await.expect("renewed as the holder it is");
    assert!(Lease::try_acquire(&kv, &key, "replica-b").await.expect("reachable").is_none(), "replica-a leads");
}
