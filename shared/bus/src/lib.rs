//! NATS JetStream as Custodian's trigger: the `LIFECYCLE` stream, publishing with
//! `Nats-Msg-Id` (de-duplication) and awaited acks, durable pull consumers with explicit
//! ack and dead-letters, and the outbox relay that makes PostgreSQL the record.
//!
//! Invariants: every publish waits for the stream's ack; a message is acked only after its
//! effect committed; a message that can never be processed ends on
//! `lifecycle.deadletter.<service>` with the reason, never silently dropped.

mod consumer;
pub mod lease;
pub mod metrics;
pub mod nudge;
mod publish;
mod relay;
mod replay;
pub mod status;
mod supervisor;
pub mod trust;

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use bytes::Bytes;
use custodian_events::{CloudEvent, EventData, subjects};
use futures::StreamExt;

pub use consumer::{BatchHandler, ConsumerSpec, Delivery, HandlerError, acknowledged_through, run_consumer};
pub use relay::{OutboxRelay, RelayHandle};
pub use supervisor::{Supervisor, SupervisorError};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot create or open stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    #[error("cannot create or open consumer {durable}: {reason}")]
    Consumer { durable: String, reason: String },
    #[error("publish of event {event_id} on {subject} failed: {reason}")]
    Publish { event_id: String, subject: String, reason: String },
    /// Another publisher's copy of this event (same `Nats-Msg-Id`) is still being stored
    /// (JetStream 10158): not a failure yet; once stored, a publish again gets the duplicate ack.
    #[error("event {event_id} on {subject} is being stored from another publish of it; publish it again later")]
    InFlight { event_id: String, subject: String },
    #[error("invalid routing token {0:?} for a subject")]
    InvalidSubjectToken(String),
    #[error("database error in the outbox relay: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error(
        "refusing plain-text NATS to {url}: use tls:// (or nats.ca), or set nats.allow_plaintext for a network you trust"
    )]
    Plaintext { url: String },
    #[error("cannot read the NATS credentials of {identity} from {path}: {source}")]
    Credentials {
        identity: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// How the `LIFECYCLE` stream is created (if missing).
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// 1 locally, 3 in a cluster.
    pub replicas: usize,
    /// JetStream de-duplication window on `Nats-Msg-Id` (contract: at least 2 minutes).
    pub duplicate_window: Duration,
    /// How long events stay in the stream (the database is the record).
    pub max_age: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self { replicas: 1, duplicate_window: Duration::from_secs(120), max_age: Duration::from_secs(7 * 24 * 3600) }
    }
}

/// How to reach NATS: the server, the CA that signed its certificate, this process's client
/// certificate (mTLS), and where each identity's nkey seed lives (`<dir>/<identity>.nk`).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsAccess {
    /// The server (`nats_url` in Custodian's configuration).
    #[serde(skip)]
    pub url: String,
    /// The CA of the server's certificate (a path); set, the connection must be TLS.
    pub ca: Option<std::path::PathBuf>,
    /// A client certificate and its key, for a server that verifies clients (mTLS).
    pub client_cert: Option<std::path::PathBuf>,
    pub client_key: Option<std::path::PathBuf>,
    /// A folder with one nkey seed per identity (`vault.nk`, `view-demo.nk`, …), as
    /// `custodian nats identity new` writes them. Unset: connect without credentials.
    pub credentials_dir: Option<std::path::PathBuf>,
    /// Allow plain-text NATS to a host other than loopback (a network you trust).
    pub allow_plaintext: bool,
}

impl Default for NatsAccess {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            ca: None,
            client_cert: None,
            client_key: None,
            credentials_dir: None,
            allow_plaintext: false,
        }
    }
}

impl NatsAccess {
    /// Would this connection go over TLS?
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("tls://") || self.url.starts_with("wss://") || self.ca.is_some()
    }

    /// Refuses plain text to anything but loopback unless explicitly allowed.
    pub fn check(&self) -> Result<(), BusError> {
        if self.is_tls() || self.allow_plaintext || self.url.split(',').all(is_loopback_url) {
            Ok(())
        } else {
            Err(BusError::Plaintext { url: redact(&self.url) })
        }
    }

    /// The credential file of `identity`, if a folder is configured.
    pub fn seed_file(&self, identity: &trust::Identity) -> Option<std::path::PathBuf> {
        self.credentials_dir.as_ref().map(|dir| dir.join(format!("{}.nk", identity.name())))
    }

    /// Connects as `identity` (its nkey, its private inbox prefix), named `client_name` in
    /// the server's connection list.
    pub async fn connect(&self, identity: &trust::Identity, client_name: &str) -> Result<async_nats::Client, BusError> {
        self.connect_with(identity, client_name, true).await
    }

    /// [`NatsAccess::connect`] that fails at once, with the server's reason (a refused
    /// certificate or credentials), when the first attempt does: for one-shot commands.
    pub async fn connect_once(
        &self,
        identity: &trust::Identity,
        client_name: &str,
    ) -> Result<async_nats::Client, BusError> {
        self.connect_with(identity, client_name, false).await
    }

    async fn connect_with(
        &self,
        identity: &trust::Identity,
        client_name: &str,
        wait_for_server: bool,
    ) -> Result<async_nats::Client, BusError> {
        self.check()?;
        install_crypto_provider();
        let mut options = async_nats::ConnectOptions::new()
            .name(client_name)
            .connection_timeout(Duration::from_secs(5))
            .custom_inbox_prefix(identity.inbox_prefix())
            .reconnect_delay_callback(reconnect_delay);
        if wait_for_server {
            options = options.retry_on_initial_connect();
        }
        if let Some(path) = self.seed_file(identity) {
            let seed = std::fs::read_to_string(&path).map_err(|source| BusError::Credentials {
                identity: identity.name(),
                path: path.display().to_string(),
                source,
            })?;
            options = options.nkey(seed.trim().to_owned());
        }
        if self.is_tls() {
            options = options.require_tls(true);
        }
        if let Some(ca) = &self.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        // A cluster is a comma-separated list; the client picks a server and fails over.
        let connected = match servers(&self.url) {
            Ok(servers) => options.connect(servers).await,
            // Let the client name what is wrong with the URL.
            Err(_) => options.connect(self.url.as_str()).await,
        };
        connected.map_err(|source| BusError::Connect { url: redact(&self.url), source })
    }
}

/// rustls needs one process-wide crypto provider; more than one backend is linked in, so
/// none is picked by default.
pub fn install_crypto_provider() {
    // Already installed (by an earlier connection, or the process) is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h).trim_matches(['[', ']']);
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A NATS URL without a user or password in it (fit for a log line).
pub fn redact(url: &str) -> String {
    // A list that does not parse, or has a piece without its scheme, may split inside a
    // password (`nats://u:pa,ss@h`): then all up to the last `@` goes.
    if servers(url).is_err() || url.split(',').any(|piece| !piece.contains("://")) {
        return match url.rsplit_once('@') {
            Some((before, host)) => {
                let scheme = before.split_once("://").map_or("nats", |(scheme, _)| scheme);
                format!("{scheme}://***@{host}")
            }
            None => url.to_owned(),
        };
    }
    // Each server of a cluster's list on its own.
    url.split(',')
        .map(|url| match url.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}"),
                None => url.to_owned(),
            },
            None => url.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The servers of a NATS URL: one, or a cluster's comma-separated list.
fn servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, async_nats::Error> {
    url.split(',').map(|url| url.trim().parse::<async_nats::ServerAddr>().map_err(Into::into)).collect()
}

/// The pause before reconnection attempt `attempts`: doubling from 2 ms, at most 500 ms. The
/// client's own default grows to 4 s, so a server back after one second could wait three more
/// for its clients, and every revocation with them.
fn reconnect_delay(attempts: usize) -> Duration {
    let doubled = 2u64.saturating_pow(u32::try_from(attempts.min(16)).unwrap_or(16));
    Duration::from_millis(doubled.min(RECONNECT_DELAY_MAX_MS))
}

const RECONNECT_DELAY_MAX_MS: u64 = 500;

/// Connects without credentials (a server that needs none: benchmarks on a bare server).
pub async fn connect(url: &str, client_name: &str) -> Result<async_nats::Client, BusError> {
    let access = NatsAccess { url: url.to_owned(), allow_plaintext: true, ..NatsAccess::default() };
    access.connect(&trust::Identity::Provisioner, client_name).await
}

/// The JetStream side of a NATS client, with the `LIFECYCLE` stream ensured.
#[derive(Debug, Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    /// Replicas of what the bus creates besides the stream (the leases bucket).
    replicas: usize,
}

/// One event ready to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    pub event_id: String,
    pub payload: Bytes,
    pub traceparent: Option<String>,
}

impl Outgoing {
    /// `event` on `subject` (its own or a routed command subject), with its trace context.
    pub fn event<T: EventData>(subject: &str, event: &CloudEvent<T>) -> Self {
        Self {
            subject: subject.to_owned(),
            event_id: event.id.clone(),
            payload: Bytes::from(event.to_json()),
            traceparent: event.traceparent.clone().or_else(custodian_telemetry::current_traceparent),
        }
    }
}

impl Bus {
    /// Wraps `client` and creates the stream if it is missing (idempotent; an existing
    /// stream is left as configured by its operator).
    pub async fn new(client: async_nats::Client, settings: &StreamSettings) -> Result<Self, BusError> {
        let js = jetstream::new(client.clone());
        let config = stream::Config {
            name: subjects::STREAM.to_owned(),
            subjects: vec![subjects::ALL.to_owned()],
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            duplicate_window: settings.duplicate_window,
            max_age: settings.max_age,
            retention: stream::RetentionPolicy::Limits,
            ..Default::default()
        };
        js.get_or_create_stream(config)
            .await
            .map_err(|e| BusError::Stream { stream: subjects::STREAM.to_owned(), reason: e.to_string() })?;
        Ok(Self { client, js, replicas: settings.replicas })
    }

    /// Wraps `client` without touching the stream (a view: it may not read the stream's
    /// information, only its own consumer).
    pub fn attach(client: async_nats::Client) -> Self {
        let js = jetstream::new(client.clone());
        Self { client, js, replicas: 1 }
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// Is the NATS connection up (readiness)?
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Sends one event; the returned future resolves on the stream's ack. Sending many
    /// before awaiting keeps many acks in flight (throughput).
    /// An event of a revocation's path is nudged as it is sent, or once stored ([`nudge`]).
    pub async fn send(&self, out: &Outgoing) -> Result<PublishAckFuture, BusError> {
        let ack = self
            .js
            .publish_with_headers(out.subject.clone(), publish::headers(out), out.payload.clone())
            .await
            .map_err(|e| publish_error(out, e))?;
        let _ = nudge::send(&self.client, out, nudge::When::Sent).await;
        Ok(ack)
    }

    /// Publishes one event and waits for its ack. A duplicate (same id within the window)
    /// is a success: the stream already holds it.
    /// An ack asked for over a connection since replaced fails at once (see
    /// `publish::ConnectionEpoch`) rather than after the client's 5 s.
    pub async fn publish(&self, out: &Outgoing) -> Result<(), BusError> {
        let epoch = publish::ConnectionEpoch::of(&self.client);
        let ack = self.send(out).await?;
        let _again = nudge::again_until_acked(&self.client, std::slice::from_ref(out));
        tokio::select! {
            acked = ack => acked.map_err(|e| publish_error(out, e))?,
            () = epoch.replaced() => return Err(publish_error(out, publish::ACK_LOST_WITH_CONNECTION)),
        };
        let stored_nudge = nudge::when(&out.subject) == Some(nudge::When::Stored);
        if stored_nudge && nudge::send(&self.client, out, nudge::When::Stored).await {
            nudge::again_later(&self.client, vec![out.clone()]);
        }
        Ok(())
    }

    /// [`Bus::publish`], attempted again (same message id, so the stream keeps one copy) while
    /// `budget` lasts: an ack lost with a NATS server that died is not a failure yet.
    pub async fn publish_retrying(&self, out: &Outgoing, budget: Duration) -> Result<(), BusError> {
        let deadline = tokio::time::Instant::now() + budget;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = tokio::time::timeout(left.min(ATTEMPT_TIMEOUT), self.publish(out)).await;
            let error = match attempt {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => publish_error(out, format!("no ack within {ATTEMPT_TIMEOUT:?}")),
            };
            if deadline.saturating_duration_since(tokio::time::Instant::now()) < Duration::from_millis(200) {
                return Err(match error {
                    BusError::Publish { event_id, subject, reason } => {
                        BusError::Publish { event_id, subject, reason: format!("{reason} (tried for {budget:?})") }
                    }
                    other => other,
                });
            }
            tracing::debug!(subject = %out.subject, error = %error, "publish not acked; trying again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Publishes a typed event on its own subject (or `subject` for routed commands),
    /// with the current trace context.
    pub async fn publish_event<T: EventData>(&self, subject: &str, event: &CloudEvent<T>) -> Result<(), BusError> {
        self.publish(&Outgoing::event(subject, event)).await
    }

    /// [`Self::publish_retrying`] of one event.
    pub async fn publish_event_retrying<T: EventData>(
        &self,
        subject: &str,
        event: &CloudEvent<T>,
        budget: Duration,
    ) -> Result<(), BusError> {
        self.publish_retrying(&Outgoing::event(subject, event), budget).await
    }

    /// Publishes every event with up to `in_flight` acks outstanding; returns, in input
    /// order, whether each was acked (pipelined over one reply subscription: see
    /// `publish.rs`).
    pub async fn publish_all(&self, events: &[Outgoing], in_flight: usize) -> Vec<Result<(), BusError>> {
        publish::publish_all(&self.client, events, in_flight).await
    }
}

/// What the provisioner creates before any service starts (`custodian nats provision`): the
/// stream, and the KV buckets of the leases and of the signals' seen `jti`s. Services only
/// open them: their identities may not create them. Idempotent; what exists is left as its
/// operator configured it, except the leadership bucket's max age (the takeover bound).
pub async fn provision(bus: &Bus, sweeper_lease_ttl: Duration) -> Result<(), lease::LeaseError> {
    let buckets = [
        (trust::buckets::LEADERSHIP, lease::LEADERSHIP_TTL),
        (trust::buckets::SWEEPER_LEASES, sweeper_lease_ttl),
        (trust::buckets::GATEWAY_SEEN_JTI, SEEN_JTI_TTL),
    ];
    for (name, ttl) in buckets {
        lease::bucket(bus.jetstream(), name, ttl, bus.replicas()).await?;
    }
    // Leadership takeover is as quick as this bucket's max age: one made by an earlier version
    // with a longer one is brought to today's.
    lease::set_ttl(bus.jetstream(), trust::buckets::LEADERSHIP, lease::LEADERSHIP_TTL).await?;
    Ok(())
}

/// How long a signal's `jti` is remembered (replays refused).
pub const SEEN_JTI_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

fn publish_error(out: &Outgoing, e: impl std::fmt::Display) -> BusError {
    BusError::Publish { event_id: out.event_id.clone(), subject: out.subject.clone(), reason: e.to_string() }
}

/// Why a request/reply query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no answer on {subject} within {timeout:?} (is the service running?)")]
    NoAnswer { subject: String, timeout: Duration },
    #[error("query on {subject} failed: {reason}")]
    Failed { subject: String, reason: String },
}

/// Asks a question over core NATS request/reply with JSON bodies (queries are reads; they
/// are not stored in the stream).
pub async fn query<Q: serde::Serialize, R: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
    question: &Q,
    timeout: Duration,
) -> Result<R, QueryError> {
    let failed = |reason: String| QueryError::Failed { subject: subject.to_owned(), reason };
    let body = bytes::Bytes::from(serde_json::to_vec(question).map_err(|e| failed(e.to_string()))?);
    let deadline = tokio::time::Instant::now() + timeout;
    let no_answer = || QueryError::NoAnswer { subject: subject.to_owned(), timeout };
    // "No responders" means nobody received it (a service starting or restarting): asking
    // again is safe, until the deadline. A request that was received and not answered is not
    // asked again here.
    let reply = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, client.request(subject.to_owned(), body.clone())).await {
            Err(_) => return Err(no_answer()),
            Ok(Ok(reply)) => break reply,
            Ok(Err(e)) => match e.kind() {
                async_nats::RequestErrorKind::NoResponders if left > Duration::from_millis(50) => {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                async_nats::RequestErrorKind::NoResponders | async_nats::RequestErrorKind::TimedOut => {
                    return Err(no_answer());
                }
                _ => return Err(failed(e.to_string())),
            },
        }
    };
    serde_json::from_slice(&reply.payload).map_err(|e| failed(format!("unreadable answer: {e}")))
}

/// The longest one attempt of a retried question or publish waits: a request that went to a
/// replica (or a NATS server) that just died is asked again well within the caller's budget.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// [`query`] for a question that is safe to ask twice (a read, or one the service
/// de-duplicates): each attempt waits at most [`ATTEMPT_TIMEOUT`], and one lost with a replica
/// or a server that died is asked again (the queue group picks a replica afresh) until
/// `timeout`. The error names `timeout`, the budget that ran out.
pub async fn query_idempotent<Q: serde::Serialize, R: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
    question: &Q,
    timeout: Duration,
) -> Result<R, QueryError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut attempts = 0u32;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        attempts += 1;
        match query(client, subject, question, left.min(ATTEMPT_TIMEOUT)).await {
            Err(QueryError::NoAnswer { .. }) if left > ATTEMPT_TIMEOUT => {
                tracing::debug!(%subject, attempts, "no answer within one attempt; asking again");
            }
            Err(QueryError::NoAnswer { .. }) => {
                return Err(QueryError::NoAnswer { subject: subject.to_owned(), timeout });
            }
            other => return other,
        }
    }
}

/// The outbox row for `event` on `subject` (written in the caller's transaction), with the
/// event's trace context, else the current span's (the relay's span continues it).
pub fn outbox_row<T: EventData>(subject: &str, event: &CloudEvent<T>) -> custodian_store::outbox::OutgoingEvent {
    custodian_store::outbox::OutgoingEvent {
        event_id: event.id.clone(),
        subject: subject.to_owned(),
        payload: String::from_utf8_lossy(&event.to_json()).into_owned(),
        traceparent: event.traceparent.clone().or_else(custodian_telemetry::current_traceparent),
    }
}

/// Answers requests on `subject` (queue group `queue`, so replicas share them) until
/// `shutdown`. Each request is handled in its own task: a slow one (an OP call) does not hold
/// up the others. A request that does not parse is handed to `handler` as `Err(reason)`.
pub async fn respond<Q, R, F, Fut>(
    client: async_nats::Client,
    subject: &str,
    queue: &str,
    shutdown: tokio_util::sync::CancellationToken,
    handler: F,
) -> Result<(), async_nats::SubscribeError>
where
    Q: serde::de::DeserializeOwned + Send + 'static,
    R: serde::Serialize + Send + 'static,
    F: Fn(Result<Q, String>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = R> + Send + 'static,
{
    respond_bound(client, subject, queue, shutdown, move |_: String, q| handler(q)).await
}

/// [`respond`] on `subject` (ending in `.*`), handing `handler` the last token of each
/// request's subject: the identity nats-server bound the asker to (a view id, an operator).
pub async fn respond_bound<Q, R, F, Fut>(
    client: async_nats::Client,
    subject: &str,
    queue: &str,
    shutdown: tokio_util::sync::CancellationToken,
    handler: F,
) -> Result<(), async_nats::SubscribeError>
where
    Q: serde::de::DeserializeOwned + Send + 'static,
    R: serde::Serialize + Send + 'static,
    F: Fn(String, Result<Q, String>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = R> + Send + 'static,
{
    let mut requests = client.queue_subscribe(subject.to_owned(), queue.to_owned()).await?;
    loop {
        let request = tokio::select! {
            () = shutdown.cancelled() => break,
            next = requests.next() => match next { Some(r) => r, None => break },
        };
        let Some(reply_to) = request.reply.clone() else { continue };
        let (client, handler) = (client.clone(), handler.clone());
        let subject = subject.to_owned();
        // The answer's work (a login's OP calls, a query) under the answering service's name.
        let span = tracing::info_span!("answer_request", otel.kind = "server", messaging.destination.name = %subject, service = %queue);
        let traceparent = request.headers.as_ref().and_then(|h| h.get(custodian_telemetry::TRACEPARENT));
        custodian_telemetry::adopt_remote_parent(&span, traceparent.map(|v| v.as_str()));
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let bound = request.subject.rsplit('.').next().unwrap_or_default().to_owned();
                let question =
                    serde_json::from_slice::<Q>(&request.payload).map_err(|e| format!("invalid request: {e}"));
                let answer = handler(bound, question).await;
                let body = serde_json::to_vec(&answer).unwrap_or_default();
                if let Err(e) = client.publish(reply_to, body.into()).await {
                    tracing::warn!(%subject, error = %e, "reply not sent");
                }
            },
            span,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{reconnect_delay, redact};
    use std::time::Duration;

    #[test]
    fn reconnection_attempts_back_off_to_half_a_second() {
        assert_eq!(reconnect_delay(1), Duration::from_millis(2));
        assert_eq!(reconnect_delay(5), Duration::from_millis(32));
        assert_eq!(reconnect_delay(9), Duration::from_millis(500));
        assert_eq!(reconnect_delay(usize::MAX), Duration::from_millis(500));
    }

    #[test]
    fn redact_hides_the_credentials_of_every_server_in_a_list() {
        assert_eq!(
            redact("nats://u:p@a:4222,nats://v:q@b:4222,nats://c:4222"),
            "nats://***@a:4222,nats://***@b:4222,nats://c:4222"
        );
        assert_eq!(redact("tls://127.0.0.1:4222"), "tls://127.0.0.1:4222");
    }

    #[test]
    fn redact_hides_a_password_holding_a_comma() {
        let redacted = redact("nats://u:pa,ss@a:4222");
        assert!(!redacted.contains("pa") && !redacted.contains("ss@"), "{redacted}");
        assert_eq!(redacted, "nats://***@a:4222");
        assert_eq!(redact("nats://u:12,34@a:4222"), "nats://***@a:4222", "a numeric password too");
    }

    #[test]
    fn a_cluster_list_parses_into_one_server_address_each() {
        let servers = super::servers("tls://127.0.0.1:1,tls://127.0.0.1:2, tls://127.0.0.1:3").unwrap();
        assert_eq!(servers.iter().map(|s| s.port()).collect::<Vec<_>>(), vec![1, 2, 3]);
    }
}
