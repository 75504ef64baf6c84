//! Durable pull consumers: fetch in batches, decode strictly, hand the batch to the
//! service, then ack, nak with delay, or dead-letter each message.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message, consumer::pull};
use base64::Engine as _;
use bytes::Bytes;
use custodian_events::payloads::{AHEAD_OF_CLOCK, GAVE_UP};
use custodian_events::{CloudEvent, DeadLetterV1, LifecycleEvent, derived_event_id, subjects};
use custodian_store::clock::SharedClock;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{Bus, BusError, Outgoing, lease};

/// Outcome of handling one event that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// May succeed later (database busy, a dependency down): nak with delay.
    #[error("transient: {0}")]
    Transient(String),
    /// Will never succeed: dead-letter with this reason.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// One decoded message handed to a service.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subject: String,
    pub event: LifecycleEvent,
    /// How many times the server has delivered this message (1 the first time).
    pub delivered: i64,
    pub stream_sequence: u64,
    /// W3C trace context from the NATS header, else from the CloudEvent attribute.
    pub traceparent: Option<String>,
    /// The message exactly as it was on the wire (the audit chain digests these bytes).
    pub raw: Bytes,
    /// A nudge ([`crate::nudge`]): its stream copy, and what the stream holds before it, may
    /// not have been delivered yet.
    pub nudge: bool,
}

/// A service's event handler. It gets whole batches so it can apply them in one database
/// transaction; it answers one result per delivery, in order.
pub trait BatchHandler: Send + Sync + 'static {
    fn handle(&self, batch: &[Delivery]) -> impl Future<Output = Vec<Result<(), HandlerError>>> + Send;
}

/// A chunk at least this big (tokio's budget caps one poll at 128) suggests more is queued.
const LINGER_THRESHOLD: usize = 32;

/// A durable pull consumer, named `<service>-<purpose>`.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub service: String,
    pub durable: String,
    pub filter_subjects: Vec<String>,
    /// After this many deliveries a transient failure becomes a dead letter (poison).
    pub max_deliver: i64,
    pub ack_wait: Duration,
    pub batch: usize,
    /// Delay before a transiently failed message comes back (doubles per delivery).
    pub nak_delay: Duration,
    /// How long to wait for more messages to fill a batch once the first has arrived.
    pub linger: Duration,
    /// A new durable starts at messages published from now on, not at the start of the
    /// stream (e.g. a view: commands from before it existed are not for it).
    pub deliver_new: bool,
    /// For a single puller that must apply the stream in order (the audit chain): one ack
    /// per batch (`AckPolicy::All` on its last success) instead of one per message, and a
    /// batch that fails transiently is retried in place, never nak'ed — under `All` the
    /// next batch's ack would cover a nak'ed message and it would never come back.
    pub in_order: bool,
    /// In order only: batches applied side by side by this many tasks under the one puller,
    /// still acked in stream order. More than one only for a handler whose effect does not
    /// depend on the order batches are applied in (the consent ledger), never the audit chain.
    pub appliers: usize,
    /// Replicas share the durable through a lease ([`crate::lease`]): only the holder
    /// consumes, in order, on a durable of its own term (`<durable>-t<term>`) that starts
    /// after the ack floor of the terms before. A stale holder's acks land on its own
    /// durable, so they can never cover what its successor was handed.
    pub exclusive: bool,
    /// Events dated more than this past the consumer's clock are dead-lettered, not applied:
    /// for consumers whose outcome follows event time (a far-future fact would outrank
    /// every later one). `None` for commands that must be obeyed whatever their date.
    pub future_skew: Option<Duration>,
    /// Exclusive only: set to 1 while this replica leads and consumes, 0 while it stands by.
    pub leading: Option<prometheus_client::metrics::gauge::Gauge>,
    /// Answers operators' replays of its dead letters ([`crate::replay`]) while it consumes
    /// (an exclusive consumer: while it leads). Not for the audit chain, whose order is its
    /// meaning, nor for views.
    pub replay: bool,
    /// Also applies the nudges of its nudged filters ([`crate::nudge`]), on every replica
    /// (one per nudge, in a queue group) whether it leads or not: for a handler that makes
    /// any delivery harmless whatever its order and whoever applies it.
    pub nudged: bool,
}

impl ConsumerSpec {
    pub fn new(service: &str, purpose: &str, filter_subjects: &[&str]) -> Self {
        Self {
            service: service.to_owned(),
            durable: format!("{service}-{purpose}"),
            filter_subjects: filter_subjects.iter().map(|s| (*s).to_owned()).collect(),
            // ~45 minutes of backed-off retries before a transient failure is dead-lettered.
            max_deliver: 50,
            ack_wait: Duration::from_secs(30),
            batch: 1000,
            nak_delay: Duration::from_millis(500),
            linger: Duration::from_millis(5),
            deliver_new: false,
            in_order: false,
            appliers: 1,
            exclusive: false,
            future_skew: None,
            leading: None,
            replay: false,
            nudged: false,
        }
    }
}

/// Consumes until `shutdown`, finishing the batch in hand first.
pub async fn run_consumer<H: BatchHandler>(
    bus: &Bus,
    spec: ConsumerSpec,
    handler: H,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let handler = Arc::new(handler);
    // Nudges are taken while the consumer runs, and no longer.
    let nudges = shutdown.child_token();
    let _stop_nudges = nudges.clone().drop_guard();
    if spec.nudged {
        let (client, spec, base) = (bus.client().clone(), spec.clone(), spec.durable.clone());
        tokio::spawn(crate::nudge::listen(client, spec, base, handler.clone(), clock.clone(), nudges));
    }
    if spec.exclusive {
        return run_exclusive(bus, &spec, &handler, &clock, &shutdown).await;
    }
    consume(bus, &spec, &handler, &clock, &shutdown).await
}

async fn consume<H: BatchHandler>(
    bus: &Bus,
    spec: &ConsumerSpec,
    handler: &Arc<H>,
    clock: &SharedClock,
    shutdown: &CancellationToken,
) -> Result<(), BusError> {
    let config = consumer_config(spec);
    // Replays are answered while this replica consumes, and no longer.
    let replays = shutdown.child_token();
    let _stop_replays = replays.clone().drop_guard();
    if spec.replay {
        let (bus, spec, handler, clock) = (bus.clone(), spec.clone(), handler.clone(), clock.clone());
        tokio::spawn(crate::replay::serve(bus, spec, handler, clock, replays));
    }
    // Reopened after a delivery gap: not if the service is stopping meanwhile.
    while !shutdown.is_cancelled() {
        let Some(opened) = open_with_retry(bus, spec, &config, shutdown).await else { return Ok(()) };
        let batches = Batches { chunks: opened.messages.ready_chunks(spec.batch), previous_batch_full: false };
        tracing::info!(durable = %spec.durable, "consumer started");
        if !spec.in_order {
            return run_explicit(bus, spec, handler.as_ref(), clock, shutdown, batches).await;
        }
        let next_delivery = opened.last_delivery + 1;
        match run_in_order(bus, spec, handler, clock, shutdown, batches, next_delivery).await? {
            InOrderEnd::Stopped => return Ok(()),
            // What came before the gap is applied and acked; the durable is found with the
            // missing delivery unacknowledged and replayed from its ack floor.
            InOrderEnd::DeliveryGap => continue,
        }
    }
    Ok(())
}

/// [`ConsumerSpec::exclusive`]: contends for the lease named after the durable and consumes
/// on the term's own durable while it holds it; a replica that is not the holder stands by.
async fn run_exclusive<H: BatchHandler>(
    bus: &Bus,
    spec: &ConsumerSpec,
    handler: &Arc<H>,
    clock: &SharedClock,
    shutdown: &CancellationToken,
) -> Result<(), BusError> {
    let holder = lease::holder_id(&spec.service);
    let mut failures = 0u32;
    while let Some(leadership) = lease::lead(bus, &spec.durable, &holder, shutdown).await {
        let term_spec =
            ConsumerSpec { durable: term_durable(&spec.durable, leadership.term()), in_order: true, ..spec.clone() };
        let took_over = tokio::time::timeout(SET_UP_TIMEOUT, take_over(bus, &spec.durable, &term_spec))
            .await
            .unwrap_or_else(|_| Err(set_up_timed_out(&term_spec)));
        let outcome = match took_over {
            Ok(()) => {
                set_leading(spec, true);
                let consumed = consume(bus, &term_spec, handler, clock, leadership.ended()).await;
                set_leading(spec, false);
                consumed
            }
            Err(e) => Err(e),
        };
        leadership.release().await;
        match outcome {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(durable = %spec.durable, error = %e, failures, "leading consumer failed; contending again");
                let wait = Duration::from_millis(200u64.saturating_mul(1 << failures.min(5)));
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    Ok(())
}

fn set_leading(spec: &ConsumerSpec, leading: bool) {
    if let Some(gauge) = &spec.leading {
        gauge.set(i64::from(leading));
    }
}

/// The durable of one leadership term of `base`: one of a bounded set of slots, so that
/// nats-server's permissions can name each (see [`crate::trust::TERM_SLOTS`]).
fn term_durable(base: &str, term: u64) -> String {
    format!("{base}-t{}", term % crate::trust::TERM_SLOTS)
}

/// The durable's name without its leadership term (`consent-ledger-t42` → `consent-ledger`).
pub(crate) fn durable_base(spec: &ConsumerSpec) -> &str {
    match term_base(&spec.durable) {
        Some(base) if spec.exclusive => base,
        _ => &spec.durable,
    }
}

/// `consent-ledger-t42` → `consent-ledger`; `None` for a name that is not a term's.
pub(crate) fn term_base(durable: &str) -> Option<&str> {
    let (base, term) = durable.rsplit_once("-t")?;
    (!base.is_empty() && !term.is_empty() && term.bytes().all(|b| b.is_ascii_digit())).then_some(base)
}

/// Is `name` the durable of `base` (before leases) or of one of its terms?
fn is_durable_of(base: &str, name: &str) -> bool {
    name == base || term_base(name) == Some(base)
}

/// Every durable of `base` on the stream (the one from before leases, and each term's) with
/// its ack floor; `None` for one deleted while it was listed (by a concurrent take-over).
async fn durables_of(
    stream: &async_nats::jetstream::stream::Stream,
    base: &str,
) -> Result<Vec<(String, Option<u64>)>, String> {
    let mut names = stream.consumer_names();
    let mut durables = Vec::new();
    while let Some(name) = names.next().await {
        let name = name.map_err(|e| e.to_string())?;
        if is_durable_of(base, &name) {
            durables.push(name);
        }
    }
    let mut floors = Vec::with_capacity(durables.len());
    for name in durables {
        match stream.consumer_info(&name).await {
            Ok(info) => floors.push((name, Some(info.ack_floor.stream_sequence))),
            Err(e) if e.kind() == async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound => {
                floors.push((name, None));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(floors)
}

/// How far an exclusive consumer has acknowledged the stream: the highest ack floor of the
/// durables of `base` (whichever term holds it now), `None` if it never had one. Everything
/// up to it was applied (each term acks in order from its predecessors' floor).
pub async fn acknowledged_through(bus: &Bus, base: &str) -> Result<Option<u64>, BusError> {
    let failed = |reason: String| BusError::Consumer { durable: base.to_owned(), reason };
    let stream = bus.jetstream().get_stream(subjects::STREAM).await.map_err(|e| failed(e.to_string()))?;
    let durables = durables_of(&stream, base).await.map_err(failed)?;
    Ok(durables.iter().filter_map(|(_, floor)| *floor).max())
}

/// Creates the term's durable right after the highest ack floor of its predecessors, then
/// deletes them, so a stale holder's acks reach nothing that counts. Any predecessor's ack
/// floor is a point up to which everything was applied: each term starts after such a
/// point and acks in order, and the durable from before leases acked message by message.
/// What a predecessor had in hand past it comes again: the handler must take a replay.
async fn take_over(bus: &Bus, base: &str, term_spec: &ConsumerSpec) -> Result<(), BusError> {
    let consumer_error =
        |e: &dyn std::fmt::Display| BusError::Consumer { durable: term_spec.durable.clone(), reason: e.to_string() };
    let stream = bus.jetstream().get_stream(subjects::STREAM).await.map_err(|e| consumer_error(&e))?;
    let predecessors = durables_of(&stream, base).await.map_err(|e| consumer_error(&e))?;
    let floor = predecessors.iter().filter_map(|(_, floor)| *floor).max();
    let mut config = consumer_config(term_spec);
    if let Some(floor) = floor {
        config.deliver_policy =
            async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: floor + 1 };
    }
    if predecessors.iter().any(|(name, _)| *name == term_spec.durable) {
        // A retried take-over of this very term: start it over too.
        stream.delete_consumer(&term_spec.durable).await.map_err(|e| consumer_error(&e))?;
    }
    stream.create_consumer(config).await.map_err(|e| consumer_error(&e))?;
    for (name, _) in predecessors.iter().filter(|(name, _)| *name != term_spec.durable) {
        if let Err(e) = stream.delete_consumer(name).await {
            // Left behind, the next take-over deletes it.
            tracing::warn!(durable = %name, error = %e, "predecessor durable not deleted");
        }
    }
    tracing::info!(durable = %term_spec.durable, predecessors = predecessors.len(), after = ?floor, "took over the durable");
    Ok(())
}

fn is_not_found(e: &async_nats::jetstream::stream::ConsumerError) -> bool {
    matches!(e.kind(), async_nats::jetstream::stream::ConsumerErrorKind::JetStream(js)
        if js.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND)
}

fn consumer_config(spec: &ConsumerSpec) -> pull::Config {
    // One filter goes in `filter_subject`: the create request's subject then carries it, and
    // nats-server's permissions pin the durable to it.
    let (filter_subject, filter_subjects) = match spec.filter_subjects.as_slice() {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    pull::Config {
        durable_name: Some(spec.durable.clone()),
        filter_subject,
        filter_subjects,
        ack_policy: ack_policy(spec),
        max_deliver: spec.max_deliver,
        ack_wait: spec.ack_wait,
        // In order, a batch is acked only once applied, while the next ones are being
        // fetched and decoded: leave room for several, or delivery stalls on the limit.
        max_ack_pending: (spec.batch as i64 * if spec.in_order { 10 } else { 4 }).max(1000),
        deliver_policy: if spec.deliver_new {
            async_nats::jetstream::consumer::DeliverPolicy::New
        } else {
            async_nats::jetstream::consumer::DeliverPolicy::All
        },
        ..Default::default()
    }
}

/// A durable ready to pull from.
struct Opened {
    messages: Pulls,
    /// The consumer sequence of its last delivery before this instance (0 if replaced).
    last_delivery: u64,
}

/// How long one try at setting a durable up may take. While a stream or the cluster's meta
/// group elects a leader (a NATS node killed), JetStream API calls hang for the client's whole
/// request timeout, several in a row; bounded, the next try goes out soon after the election.
const SET_UP_TIMEOUT: Duration = Duration::from_secs(5);

fn set_up_timed_out(spec: &ConsumerSpec) -> BusError {
    BusError::Consumer {
        durable: spec.durable.clone(),
        reason: format!("JetStream did not answer the set-up within {SET_UP_TIMEOUT:?}"),
    }
}

/// Opens the durable; a busy or restarting server can refuse the set-up for a while, so
/// this retries rather than take the whole service down with it. `None` on shutdown.
async fn open_with_retry(
    bus: &Bus,
    spec: &ConsumerSpec,
    config: &pull::Config,
    shutdown: &CancellationToken,
) -> Option<Opened> {
    let mut attempt = 0u32;
    loop {
        let opened = tokio::time::timeout(SET_UP_TIMEOUT, open(bus, spec, config))
            .await
            .unwrap_or_else(|_| Err(set_up_timed_out(spec)));
        match opened {
            Ok(opened) => return Some(opened),
            Err(e) => {
                attempt += 1;
                tracing::warn!(durable = %spec.durable, error = %e, attempt, "consumer not started; will retry");
                let wait = Duration::from_millis(200u64.saturating_mul(1 << attempt.min(5)));
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

async fn open(bus: &Bus, spec: &ConsumerSpec, config: &pull::Config) -> Result<Opened, BusError> {
    let consumer_error =
        |e: &dyn std::fmt::Display| BusError::Consumer { durable: spec.durable.clone(), reason: e.to_string() };
    // Opened by name on the stream, without reading the stream's information: a view's
    // identity may only touch its own consumer.
    let js = bus.jetstream();
    let mut consumer = match js.get_consumer_from_stream::<pull::Config, _, _>(&spec.durable, subjects::STREAM).await {
        Ok(consumer) => consumer,
        Err(e) if is_not_found(&e) => {
            js.create_consumer_on_stream(config.clone(), subjects::STREAM).await.map_err(|e| consumer_error(&e))?
        }
        Err(e) => return Err(consumer_error(&e)),
    };
    let existing = consumer.cached_info().clone();
    let replace_because = if existing.config.ack_policy != config.ack_policy {
        // The ack policy of a durable cannot be updated.
        Some("ack policy changed")
    } else if spec.in_order && existing.num_ack_pending > 0 {
        // A previous instance stopped with messages in hand (its read-ahead, or a crash
        // mid-batch), or a delivery never arrived. The server redelivers those only once
        // ack_wait has passed, and delivers newer ones first; under `AckPolicy::All` this
        // instance's first ack would cover them, unapplied. Replaying from the ack floor
        // applies everything after it in order (what was applied but not acked is found again).
        Some("messages delivered before are unacknowledged")
    } else {
        None
    };
    let mut last_delivery = existing.delivered.consumer_sequence;
    if let Some(reason) = replace_because {
        // Replace it, starting right after what the old one had acknowledged (what it had in
        // flight comes again).
        let start_sequence = existing.ack_floor.stream_sequence + 1;
        tracing::info!(durable = %spec.durable, start_sequence, reason, "replacing the durable consumer");
        js.delete_consumer_from_stream(&spec.durable, subjects::STREAM).await.map_err(|e| consumer_error(&e))?;
        let replacement = pull::Config {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence },
            ..config.clone()
        };
        consumer = js.create_consumer_on_stream(replacement, subjects::STREAM).await.map_err(|e| consumer_error(&e))?;
        last_delivery = 0;
    }
    let messages = pulls(consumer, spec.batch).await.map_err(|e| consumer_error(&e))?;
    Ok(Opened { messages, last_delivery })
}

/// How often an idle pull hears from the server: two missed in a row mean its pull request is
/// gone (with the node that led the consumer), and a fresh one is sent.
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);
/// How long one pull request waits for messages before the client sends the next.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// The messages of a durable, pulled so that a lost pull request is replaced at once.
type Pulls = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Message, pull::MessagesError>> + Send>>;

async fn pull_stream(
    consumer: &async_nats::jetstream::consumer::PullConsumer,
    batch: usize,
) -> Result<pull::Stream, async_nats::jetstream::consumer::StreamError> {
    consumer.stream().max_messages_per_batch(batch).heartbeat(PULL_HEARTBEAT).expires(PULL_EXPIRES).messages().await
}

/// async-nats reports missed heartbeats but sends the next pull request only when the
/// connection comes back or the lost one would have expired. A client connected to a
/// surviving node keeps its connection while the consumer's leader dies with the pull request
/// it held, so that wait was the whole request's expiry. Here a missed heartbeat replaces the
/// pull stream, whose first request goes to whichever node leads the consumer now.
async fn pulls(
    consumer: async_nats::jetstream::consumer::PullConsumer,
    batch: usize,
) -> Result<Pulls, async_nats::jetstream::consumer::StreamError> {
    let first = pull_stream(&consumer, batch).await?;
    let pulled = futures::stream::unfold((consumer, first), move |(consumer, mut current)| async move {
        let item = current.next().await?;
        if let Err(e) = &item
            && e.kind() == pull::MessagesErrorKind::MissingHeartbeat
        {
            match pull_stream(&consumer, batch).await {
                Ok(fresh) => current = fresh,
                Err(e) => tracing::debug!(error = %e, "no fresh pull yet; the next missed heartbeat tries again"),
            }
        }
        Some((item, (consumer, current)))
    });
    Ok(Box::pin(pulled))
}

/// One ack (or nak, or dead letter) per message; several instances may share the durable.
async fn run_explicit<H, S, E>(
    bus: &Bus,
    spec: &ConsumerSpec,
    handler: &H,
    clock: &SharedClock,
    shutdown: &CancellationToken,
    mut batches: Batches<S>,
) -> Result<(), BusError>
where
    H: BatchHandler,
    S: futures::Stream<Item = Result<Message, E>> + Unpin,
    E: std::fmt::Display,
{
    loop {
        let messages = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            messages = batches.next(spec) => messages.ok_or_else(|| BusError::Consumer {
                durable: spec.durable.clone(),
                reason: "message stream ended".into(),
            })?,
        };
        let Some((decoded, decoded_messages)) = decode_batch(bus, spec, clock, messages, shutdown).await else {
            break;
        };
        if !decoded.is_empty() {
            handle_batch(bus, spec, handler, clock, decoded, decoded_messages).await;
        }
    }
    tracing::info!(durable = %spec.durable, "consumer stopped");
    Ok(())
}

/// The pulled messages, cut into batches.
struct Batches<S: futures::Stream> {
    chunks: futures::stream::ReadyChunks<S>,
    previous_batch_full: bool,
}

impl<S, E> Batches<S>
where
    S: futures::Stream<Item = Result<Message, E>> + Unpin,
    E: std::fmt::Display,
{
    /// The next batch; `None` if the message stream ended.
    async fn next(&mut self, spec: &ConsumerSpec) -> Option<Vec<Pulled>> {
        let mut chunk = self.chunks.next().await?;
        // A chunk holds what was ready at one poll (tokio's co-operative budget caps it at
        // 128); linger briefly to fill the batch, since one transaction per batch is the
        // cost that matters.
        let linger_until = tokio::time::Instant::now() + spec.linger;
        // A small chunk means nothing else was buffered: a lone event (a person's
        // revocation) goes through at once; lingering pays off only under load. A small
        // chunk right after a full batch is the tail of one pull while the next is on its
        // way (draining a backlog): it waits for that one rather than cost a transaction.
        let under_load = chunk.len() >= LINGER_THRESHOLD || self.previous_batch_full;
        while under_load && chunk.len() < spec.batch {
            match tokio::time::timeout_at(linger_until, self.chunks.next()).await {
                Ok(Some(more)) => chunk.extend(more),
                _ => break,
            }
        }
        self.previous_batch_full = chunk.len() >= spec.batch;
        let mut messages = Vec::with_capacity(chunk.len());
        for item in chunk {
            match item {
                Ok(message) => messages.push(Pulled::from(message)),
                // Missed heartbeats (a fresh pull is already on its way: see `pulls`) and the like.
                Err(e) => tracing::warn!(durable = %spec.durable, error = %e, "pull consumer hiccup"),
            }
        }
        Some(messages)
    }
}

/// A pulled message, with where it stands read once from its reply subject (the parse is a
/// visible share of a consumer's CPU, and the in-order reader needs it twice).
struct Pulled {
    message: Message,
    /// `None` if the reply subject is not a JetStream ack subject.
    position: Option<Position>,
}

#[derive(Clone, Copy)]
struct Position {
    /// How many times the server has delivered this message (1 the first time).
    delivered: i64,
    stream_sequence: u64,
    consumer_sequence: u64,
}

impl From<Message> for Pulled {
    fn from(message: Message) -> Self {
        let position = message.info().ok().map(|info| Position {
            delivered: info.delivered,
            stream_sequence: info.stream_sequence,
            consumer_sequence: info.consumer_sequence,
        });
        Self { message, position }
    }
}

/// How an in-order consumer ended.
enum InOrderEnd {
    Stopped,
    /// A delivery never arrived (lost in transit with a dropped connection, or taken by a
    /// second puller): the next ack would cover it, so the consumer must start over.
    DeliveryGap,
}

/// [`ConsumerSpec::in_order`]: a task fetches and decodes the next batches while the
/// appliers apply the ones before, and the acks go out in stream order: a batch's ack only
/// once every batch before it is done, since under `AckPolicy::All` it covers them. The
/// reader stops at a gap in the consumer's delivery sequence: an ack past a delivery that
/// never arrived would cover it.
async fn run_in_order<H, S, E>(
    bus: &Bus,
    spec: &ConsumerSpec,
    handler: &Arc<H>,
    clock: &SharedClock,
    shutdown: &CancellationToken,
    mut batches: Batches<S>,
    mut next_delivery: u64,
) -> Result<InOrderEnd, BusError>
where
    H: BatchHandler,
    S: futures::Stream<Item = Result<Message, E>> + Unpin + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    // A channel of one: the reader stays one batch ahead of the appliers, not more.
    let (decoded_tx, decoded_rx) = tokio::sync::mpsc::channel::<NumberedBatch>(1);
    // In sets, so that a consumer dropped mid-way (its service aborted) takes its tasks
    // along instead of leaving them pulling messages nobody will apply.
    let mut reader = tokio::task::JoinSet::new();
    // Ends the reader and the appliers on shutdown, or when an applier failed.
    let stop = shutdown.child_token();
    {
        let (bus, spec, clock, shutdown) = (bus.clone(), spec.clone(), clock.clone(), stop.clone());
        reader.spawn(async move {
            let mut number = 0u64;
            loop {
                let mut messages = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ok(InOrderEnd::Stopped),
                    messages = batches.next(&spec) => match messages {
                        Some(messages) => messages,
                        None => return Err(BusError::Consumer { durable: spec.durable.clone(), reason: "message stream ended".into() }),
                    },
                };
                let sequences = messages.iter().map(|m| m.position.map(|p| p.consumer_sequence));
                let gap = first_after_gap(sequences, &mut next_delivery);
                if let Some(at) = gap {
                    tracing::warn!(durable = %spec.durable, expected = next_delivery, "a delivery never arrived; applying what came before it, then replaying from the ack floor");
                    // Left unacked: the replay delivers them again.
                    messages.truncate(at);
                }
                let Some((decoded, messages)) = decode_batch(&bus, &spec, &clock, messages, &shutdown).await else {
                    return Ok(InOrderEnd::Stopped);
                };
                if !decoded.is_empty() {
                    if decoded_tx.send(NumberedBatch { number, decoded, messages }).await.is_err() {
                        return Ok(InOrderEnd::Stopped);
                    }
                    number += 1;
                }
                if gap.is_some() {
                    return Ok(InOrderEnd::DeliveryGap);
                }
            }
        });
    }
    let decoded_rx = Arc::new(tokio::sync::Mutex::new(decoded_rx));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Applied)>();
    let mut appliers = tokio::task::JoinSet::new();
    for _ in 0..spec.appliers.max(1) {
        let (bus, spec, clock, stop) = (bus.clone(), spec.clone(), clock.clone(), stop.clone());
        let (decoded_rx, handler, done_tx) = (decoded_rx.clone(), handler.clone(), done_tx.clone());
        appliers.spawn(async move {
            loop {
                // Waiting with the lock held is what hands each batch to one applier.
                let next = {
                    let mut decoded_rx = decoded_rx.lock().await;
                    tokio::select! {
                        biased;
                        () = stop.cancelled() => None,
                        batch = decoded_rx.recv() => batch,
                    }
                };
                let Some(NumberedBatch { number, decoded, messages }) = next else { return };
                let applied =
                    handle_batch_in_order(&bus, &spec, handler.as_ref(), &clock, decoded, messages, &stop).await;
                if done_tx.send((number, applied)).is_err() {
                    return;
                }
            }
        });
    }
    drop((done_tx, decoded_rx));
    let mut order = AckOrder::default();
    let mut outcome = Ok(InOrderEnd::Stopped);
    let mut done_open = true;
    while done_open || !appliers.is_empty() {
        tokio::select! {
            done = done_rx.recv(), if done_open => match done {
                Some((number, applied)) => {
                    if let Some(message) = order.finished(number, applied.last_success, applied.complete) {
                        ack(&message, AckKind::Ack).await;
                    }
                }
                None => done_open = false,
            },
            Some(joined) = appliers.join_next() => {
                if let Err(e) = joined {
                    // A panicked applier's batch is never acked, nor anything after it: stop
                    // rather than stall silently once `max_ack_pending` is reached.
                    tracing::error!(durable = %spec.durable, error = %e, "applier task failed; stopping the consumer");
                    outcome = Err(BusError::Consumer { durable: spec.durable.clone(), reason: format!("applier task failed: {e}") });
                    stop.cancel();
                }
            }
        }
    }
    let read = match reader.join_next().await {
        Some(Ok(read)) => read,
        Some(Err(e)) => {
            Err(BusError::Consumer { durable: spec.durable.clone(), reason: format!("reader task failed: {e}") })
        }
        None => Ok(InOrderEnd::Stopped),
    };
    let outcome = outcome.and(read);
    if matches!(outcome, Ok(InOrderEnd::Stopped)) {
        tracing::info!(durable = %spec.durable, "consumer stopped");
    }
    outcome
}

/// Batches finish in any order; under `AckPolicy::All` an ack covers everything before it.
/// So the ack goes to the last success of the longest run of finished batches from the
/// first, and after a batch left unfinished (stopping) nothing more is acked.
struct AckOrder<T> {
    finished: std::collections::BTreeMap<u64, (Option<T>, bool)>,
    next: u64,
    halted: bool,
}

impl<T> Default for AckOrder<T> {
    fn default() -> Self {
        Self { finished: std::collections::BTreeMap::new(), next: 0, halted: false }
    }
}

impl<T> AckOrder<T> {
    /// Batch `number` is done; returns what to ack now, if anything.
    fn finished(&mut self, number: u64, last_success: Option<T>, complete: bool) -> Option<T> {
        if self.halted {
            return None;
        }
        self.finished.insert(number, (last_success, complete));
        let mut covering = None;
        while let Some((last_success, complete)) = self.finished.remove(&self.next) {
            self.next += 1;
            if last_success.is_some() {
                covering = last_success;
            }
            if !complete {
                self.halted = true;
                break;
            }
        }
        covering
    }
}

/// A decoded batch, numbered in stream order by the reader.
struct NumberedBatch {
    number: u64,
    decoded: Vec<Delivery>,
    messages: Vec<Message>,
}

/// What an in-order batch leaves to ack.
struct Applied {
    /// Its last message applied or dead-lettered: an ack of it covers the batch.
    last_success: Option<Message>,
    /// False if the service stopped before the batch was through: nothing after it may be
    /// acked.
    complete: bool,
}

/// The index of the first message that follows a gap in the consumer's delivery sequence
/// (`next` is the one expected; it advances past each message). A message without one (not
/// a JetStream delivery) counts as a gap: nothing after it can be proven contiguous. A
/// sequence lower than expected does not open a gap.
fn first_after_gap(sequences: impl Iterator<Item = Option<u64>>, next: &mut u64) -> Option<usize> {
    for (i, sequence) in sequences.enumerate() {
        match sequence {
            Some(sequence) if sequence <= *next => *next = (*next).max(sequence + 1),
            _ => return Some(i),
        }
    }
    None
}

/// The message as a structured-mode event: as sent, or built from CloudEvents binary mode
/// (`ce-*` headers, as the NATS binding and the Go SDK's JetStream binding send them; the
/// payload is the data). A binary event that cannot be built names its `ce-id` if it had one.
fn structured_payload(message: &Message) -> Result<Bytes, (Option<String>, custodian_events::DecodeError)> {
    let Some(headers) = message.headers.as_ref() else { return Ok(message.payload.clone()) };
    // The hot path (structured mode, Custodian's own) pays a few lookups, no allocation.
    if ["ce-specversion", "Ce-Specversion", "CE-SPECVERSION"].iter().all(|name| headers.get(*name).is_none()) {
        return Ok(message.payload.clone());
    }
    let named: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(name, values)| Some((name.to_string(), values.first()?.as_str().to_owned())))
        .collect();
    let content_type =
        named.iter().find(|(name, _)| name.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.as_str());
    let attributes = named.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    custodian_events::structured_from_binary(attributes, content_type, &message.payload).map(Bytes::from).map_err(|e| {
        let id = named.iter().find(|(name, _)| name.eq_ignore_ascii_case("ce-id")).map(|(_, v)| v.clone());
        (id.filter(|id| !id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_control)), e)
    })
}

/// The `id` of an envelope that did not decode, when it has a plausible one: the dead letter
/// then names the event its publisher knows.
fn envelope_id(payload: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let id = value.get("id")?.as_str()?;
    (!id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_control)).then(|| id.to_owned())
}

/// A structured event as this consumer takes it: strictly decoded, bound to its subject,
/// and not dated too far past the clock; else the event's id (when it has a plausible one)
/// and the reason.
pub(crate) fn check_event(
    spec: &ConsumerSpec,
    clock: &SharedClock,
    subject: &str,
    payload: &[u8],
) -> Result<LifecycleEvent, (Option<String>, String)> {
    let event = LifecycleEvent::decode(Some(subject), payload).map_err(|e| (envelope_id(payload), e.to_string()))?;
    match spec.future_skew {
        Some(skew) if event.time() > clock.now() + skew => Err((
            Some(event.id().to_owned()),
            format!("time {} is more than {}s {AHEAD_OF_CLOCK}", event.time().to_rfc3339(), skew.as_secs()),
        )),
        _ => Ok(event),
    }
}

/// Decodes strictly; what does not decode is dead-lettered at once. `None` if the service
/// stopped while an in-order consumer was still trying to dead-letter.
async fn decode_batch(
    bus: &Bus,
    spec: &ConsumerSpec,
    clock: &SharedClock,
    messages: Vec<Pulled>,
    shutdown: &CancellationToken,
) -> Option<(Vec<Delivery>, Vec<Message>)> {
    let mut decoded = Vec::with_capacity(messages.len());
    let mut decoded_messages = Vec::with_capacity(messages.len());
    for Pulled { message, position } in messages {
        let (delivered, stream_sequence) = position.map_or((1, 0), |p| (p.delivered, p.stream_sequence));
        let subject = message.subject.as_str().to_owned();
        let structured = structured_payload(&message);
        let payload = match &structured {
            Ok(payload) => payload.clone(),
            Err(_) => message.payload.clone(),
        };
        let checked = structured
            .map_err(|(id, e)| (id, e.to_string()))
            .and_then(|payload| check_event(spec, clock, &subject, &payload));
        match checked {
            Ok(event) => {
                let header_tp = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(custodian_telemetry::TRACEPARENT))
                    .map(|v| v.as_str().to_owned());
                let traceparent = header_tp.or_else(|| event.traceparent().map(str::to_owned));
                let raw = payload;
                decoded.push(Delivery { subject, event, raw, delivered, stream_sequence, traceparent, nudge: false });
                decoded_messages.push(message);
            }
            Err((original_id, reason)) if spec.in_order => {
                let original_id = original_id.as_deref();
                if !dead_letter_in_order(bus, spec, clock, &message, original_id, stream_sequence, &reason, shutdown)
                    .await
                {
                    return None;
                }
            }
            Err((original_id, reason)) => {
                dead_letter(bus, spec, clock, &message, original_id.as_deref(), stream_sequence, &reason).await;
            }
        }
    }
    Some((decoded, decoded_messages))
}

/// A batch mixes many people's events from many traces: its span is a root that links to
/// the span of every event it applies, so each event's trace can be followed into it.
fn batch_span(spec: &ConsumerSpec, decoded: &[Delivery], attempt: i64) -> tracing::Span {
    let base = term_base(&spec.durable).unwrap_or(&spec.durable);
    let span = tracing::info_span!(
        "handle_batch",
        service = %spec.service,
        durable = %base,
        size = decoded.len(),
        attempt,
        otel.kind = "consumer",
    );
    for delivery in decoded {
        custodian_telemetry::link_remote(&span, delivery.traceparent.as_deref());
    }
    span
}

/// Hands the batch to the service, then acks, naks or dead-letters each message.
async fn handle_batch<H: BatchHandler>(
    bus: &Bus,
    spec: &ConsumerSpec,
    handler: &H,
    clock: &SharedClock,
    decoded: Vec<Delivery>,
    decoded_messages: Vec<Message>,
) {
    let span = batch_span(spec, &decoded, 1);
    let started = std::time::Instant::now();
    let results = with_progress(spec, &decoded_messages, handler.handle(&decoded).instrument(span)).await;
    crate::metrics::observe_batch(&spec.durable, started.elapsed().as_secs_f64());
    tracing::debug!(durable = %spec.durable, size = decoded.len(), elapsed_ms = started.elapsed().as_millis() as u64, "batch handled");
    for (i, (delivery, message)) in decoded.iter().zip(decoded_messages.iter()).enumerate() {
        let result =
            results.get(i).cloned().unwrap_or_else(|| Err(HandlerError::Transient("handler gave no result".into())));
        match result {
            Ok(()) => ack(message, AckKind::Ack).await,
            Err(HandlerError::Transient(reason)) if delivery.delivered >= spec.max_deliver => {
                let reason = format!("{GAVE_UP} {} deliveries: {reason}", delivery.delivered);
                dead_letter(bus, spec, clock, message, Some(delivery.event.id()), delivery.stream_sequence, &reason)
                    .await;
            }
            Err(HandlerError::Transient(reason)) => {
                let delay = backoff(spec.nak_delay, delivery.delivered);
                tracing::debug!(event_id = delivery.event.id(), subject = %delivery.subject, %reason, ?delay, "transient failure, will retry");
                ack(message, AckKind::Nak(Some(delay))).await;
            }
            Err(HandlerError::Permanent(reason)) => {
                dead_letter(bus, spec, clock, message, Some(delivery.event.id()), delivery.stream_sequence, &reason)
                    .await;
            }
        }
    }
}

/// Runs `work`, telling the server every third of `ack_wait` that the batch is still in hand
/// (`+WPI`): `ack_wait` can then be sized to a crash, not to the slowest batch, and the
/// messages of a replica that died come to another within seconds.
async fn with_progress<T>(spec: &ConsumerSpec, messages: &[Message], work: impl std::future::Future<Output = T>) -> T {
    let every = (spec.ack_wait / 3).max(Duration::from_millis(50));
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            () = tokio::time::sleep(every) => {
                for message in messages {
                    ack(message, AckKind::Progress).await;
                }
            }
        }
    }
}

/// [`ConsumerSpec::in_order`]: the batch is applied until it succeeds (or the service stops:
/// then nothing is acked and the server redelivers it after `ack_wait`); permanent failures
/// are dead-lettered, and so are transient ones still failing after `max_deliver` attempts,
/// as an explicit consumer would. The acker then acks its last success for all of it.
async fn handle_batch_in_order<H: BatchHandler>(
    bus: &Bus,
    spec: &ConsumerSpec,
    handler: &H,
    clock: &SharedClock,
    decoded: Vec<Delivery>,
    decoded_messages: Vec<Message>,
    shutdown: &CancellationToken,
) -> Applied {
    let unfinished = Applied { last_success: None, complete: false };
    let mut attempt = 1i64;
    let results = loop {
        let span = batch_span(spec, &decoded, attempt);
        let started = std::time::Instant::now();
        let results = handler.handle(&decoded).instrument(span).await;
        crate::metrics::observe_batch(&spec.durable, started.elapsed().as_secs_f64());
        let transient = results.iter().find_map(|r| match r {
            Err(HandlerError::Transient(reason)) => Some(reason.clone()),
            _ => None,
        });
        let Some(reason) = transient else { break results };
        if attempt >= spec.max_deliver {
            break results;
        }
        let delay = backoff(spec.nak_delay, attempt);
        tracing::warn!(durable = %spec.durable, size = decoded.len(), attempt, %reason, ?delay, "batch failed; retrying in place");
        attempt += 1;
        tokio::select! {
            () = shutdown.cancelled() => return unfinished,
            () = tokio::time::sleep(delay) => {}
        }
    };
    let mut last_success = None;
    for (i, (delivery, message)) in decoded.iter().zip(decoded_messages).enumerate() {
        let reason = match results.get(i) {
            Some(Err(HandlerError::Permanent(reason))) => reason.clone(),
            Some(Err(HandlerError::Transient(reason))) => format!("{GAVE_UP} {attempt} attempts: {reason}"),
            None => format!("{GAVE_UP} {attempt} attempts: handler gave no result"),
            Some(Ok(())) => {
                last_success = Some(message);
                continue;
            }
        };
        let (id, sequence) = (Some(delivery.event.id()), delivery.stream_sequence);
        if !dead_letter_in_order(bus, spec, clock, &message, id, sequence, &reason, shutdown).await {
            // Stopping: ack what came before; the rest comes again after ack_wait.
            return Applied { last_success, complete: false };
        }
        last_success = Some(message);
    }
    Applied { last_success, complete: true }
}

fn ack_policy(spec: &ConsumerSpec) -> async_nats::jetstream::consumer::AckPolicy {
    if spec.in_order {
        async_nats::jetstream::consumer::AckPolicy::All
    } else {
        async_nats::jetstream::consumer::AckPolicy::Explicit
    }
}

/// Redelivery delay after the `delivered`-th failed attempt: doubles from `base`, capped at
/// a minute, so a database outage is waited out instead of dead-lettering good events.
fn backoff(base: Duration, delivered: i64) -> Duration {
    let exponent = u32::try_from(delivered.clamp(1, 16) - 1).unwrap_or(0);
    base.saturating_mul(2u32.saturating_pow(exponent)).min(Duration::from_secs(60))
}

async fn ack(message: &Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        // The server will redeliver after ack_wait; the inbox makes that harmless.
        tracing::warn!(error = %e, "ack not sent");
    }
}

/// Publishes the message to `lifecycle.deadletter.<service>` and terminates it. If the
/// dead letter cannot be published the message is nak'ed, so it is never lost; returns
/// whether it was dead-lettered.
async fn dead_letter(
    bus: &Bus,
    spec: &ConsumerSpec,
    clock: &SharedClock,
    message: &Message,
    original_id: Option<&str>,
    stream_sequence: u64,
    reason: &str,
) -> bool {
    let subject = message.subject.to_string();
    tracing::warn!(durable = %spec.durable, %subject, original_id, stream_sequence, %reason, "dead-lettering message");
    let Some(dl_subject) = subjects::deadletter(&spec.service) else {
        tracing::error!(service = %spec.service, "service name is not a valid subject token");
        ack(message, AckKind::Nak(Some(spec.nak_delay))).await;
        return false;
    };
    let data = DeadLetterV1 {
        original_subject: subject,
        original_id: original_id.map(str::to_owned),
        reason: reason.to_owned(),
        payload_base64: base64::engine::general_purpose::STANDARD.encode(&message.payload),
    };
    // Deterministic id, the same in every leadership term: a retried dead-letter publish,
    // or a replay of the message by a successor, is de-duplicated by the stream, and the
    // audit's completeness check finds it.
    let id = derived_event_id("deadletter", &format!("{}:{stream_sequence}", durable_base(spec)));
    let event = CloudEvent::with_id(id, format!("urn:custodian:{}", spec.service), clock.now(), data);
    let out = Outgoing {
        subject: dl_subject,
        event_id: event.id.clone(),
        payload: Bytes::from(event.to_json()),
        traceparent: None,
    };
    match bus.publish(&out).await {
        Ok(()) => {
            ack(message, AckKind::Term).await;
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "dead letter not published; message will be redelivered");
            if !spec.in_order {
                // In order, the next batch's ack would cover a nak: the caller retries instead.
                ack(message, AckKind::Nak(Some(spec.nak_delay))).await;
            }
            false
        }
    }
}

/// Dead-letters in order ([`ConsumerSpec::in_order`]): retried until published, since a
/// later ack would cover the message; false if the service stopped first.
#[allow(clippy::too_many_arguments)]
async fn dead_letter_in_order(
    bus: &Bus,
    spec: &ConsumerSpec,
    clock: &SharedClock,
    message: &Message,
    original_id: Option<&str>,
    stream_sequence: u64,
    reason: &str,
    shutdown: &CancellationToken,
) -> bool {
    let mut attempt = 0i64;
    while !dead_letter(bus, spec, clock, message, original_id, stream_sequence, reason).await {
        attempt += 1;
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(backoff(spec.nak_delay, attempt)) => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_in_the_delivery_sequence_is_found_at_the_first_message_after_it() {
        let mut next = 5;
        assert_eq!(first_after_gap([Some(5), Some(6), Some(7)].into_iter(), &mut next), None);
        assert_eq!(next, 8);
        assert_eq!(first_after_gap([Some(8), Some(10), Some(11)].into_iter(), &mut next), Some(1));
        assert_eq!(next, 9, "stops at the gap");
        let mut next = 1;
        assert_eq!(first_after_gap([Some(1), None, Some(3)].into_iter(), &mut next), Some(1), "no sequence: a gap");
        let mut next = 1;
        assert_eq!(first_after_gap([Some(4)].into_iter(), &mut next), Some(0), "a gap before the first");
        let mut next = 7;
        assert_eq!(first_after_gap([Some(3), Some(7)].into_iter(), &mut next), None, "lower is no gap");
        assert_eq!(next, 8);
    }

    #[test]
    fn acks_follow_stream_order_whatever_order_batches_finish_in() {
        let mut order = AckOrder::default();
        assert_eq!(order.finished(1, Some(20), true), None, "batch 0 is not done yet");
        assert_eq!(order.finished(2, Some(30), true), None);
        assert_eq!(order.finished(0, Some(10), true), Some(30), "0 to 2 done: one ack covers them");
        assert_eq!(order.finished(3, None, true), None, "all dead-lettered: nothing new to ack");
        assert_eq!(order.finished(5, Some(60), true), None);
        assert_eq!(order.finished(4, Some(50), false), Some(50), "4 stopped half-way: ack what it did");
        assert_eq!(order.finished(6, Some(70), true), None, "nothing past an unfinished batch");
    }

    #[test]
    fn the_durables_of_a_base_are_itself_and_its_terms_only() {
        assert!(is_durable_of("consent-ledger", "consent-ledger"), "the durable from before leases");
        assert!(is_durable_of("consent-ledger", &term_durable("consent-ledger", 17)));
        assert!(!is_durable_of("consent-ledger", "consent-ledger-t"), "no term");
        assert!(!is_durable_of("consent-ledger", "consent-ledger-t1x"));
        assert!(!is_durable_of("consent-ledger", "consent-ledger-archive"));
        assert!(!is_durable_of("consent-ledger", "consent-retention"));
    }

    #[test]
    fn a_terms_dead_letters_are_named_after_the_base_durable() {
        let mut spec = ConsumerSpec::new("audit", "chain", &["lifecycle.>"]);
        assert_eq!(durable_base(&spec), "audit-chain");
        spec.exclusive = true;
        spec.durable = term_durable("audit-chain", 42);
        assert_eq!(durable_base(&spec), "audit-chain", "every term dead-letters under one name");
        spec.durable = "audit-chain-tx".into();
        assert_eq!(durable_base(&spec), "audit-chain-tx", "not a term");
        spec.exclusive = false;
        spec.durable = "view-t7".into();
        assert_eq!(durable_base(&spec), "view-t7", "a shared durable keeps its name whatever it looks like");
    }

    #[test]
    fn redelivery_backs_off_exponentially_up_to_a_minute() {
        let base = Duration::from_millis(500);
        assert_eq!(backoff(base, 1), Duration::from_millis(500));
        assert_eq!(backoff(base, 2), Duration::from_secs(1));
        assert_eq!(backoff(base, 4), Duration::from_secs(4));
        assert_eq!(backoff(base, 10), Duration::from_secs(60));
        assert_eq!(backoff(base, 10_000), Duration::from_secs(60));
    }
}

#[cfg(test)]
mod envelope_id_tests {
    use super::envelope_id;

    #[test]
    fn a_dead_letter_names_the_id_of_an_envelope_that_did_not_decode_when_it_is_plausible() {
        assert_eq!(envelope_id(br#"{"id": "e-1", "type": "nope"}"#).as_deref(), Some("e-1"));
        assert_eq!(envelope_id(b"not json"), None);
        assert_eq!(envelope_id(br#"{"id": 7}"#), None);
        assert_eq!(envelope_id(br#"{"id": ""}"#), None);
        assert_eq!(envelope_id(br#"{"id": "a\nb"}"#), None);
        assert_eq!(envelope_id(format!(r#"{{"id": "{}"}}"#, "x".repeat(300)).as_bytes()), None);
    }
}
