//! `custodian audit verify --stream`: is every event the stream still holds, up to what the
//! audit service has acknowledged, in the chain? Walking the chain cannot tell: an event that
//! was never appended leaves no broken link behind.

use std::collections::HashSet;

use custodian_bus::Bus;
use custodian_events::{derived_event_id, subjects};
use custodian_store::entities::audit_entry;
use futures::StreamExt;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};
use serde::Serialize;

/// The durable the chain is fed from: the base name of its leadership terms' durables
/// (`audit-chain-t<term>`, see `custodian_bus::ConsumerSpec::exclusive`).
pub const CHAIN_DURABLE: &str = "audit-chain";

/// Stream messages checked per database query.
const BATCH: usize = 1000;

/// How long the stream may stay silent before the check stops reading.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CompletenessError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// A stream message with no entry in the chain, nor a dead letter of the audit's for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unchained {
    pub stream_sequence: u64,
    pub subject: String,
    /// `Nats-Msg-Id`, else the CloudEvent's `id`; `None` if the message has neither.
    pub event_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Completeness {
    /// What the audit service has acknowledged as chained (the chain consumer's ack floor).
    pub acknowledged: u64,
    /// The stream sequences checked (inclusive); `checked` is 0 when there was nothing to check.
    pub first_sequence: u64,
    pub last_sequence: u64,
    pub checked: u64,
    /// The first message, in stream order, that the chain lacks.
    pub unchained: Option<Unchained>,
}

/// Reads the stream from its oldest retained message up to the chain consumer's ack floor
/// (what the audit service has acknowledged as chained) and looks up each event in the
/// chain. A message the audit dead-lettered counts when its dead letter is chained.
pub async fn check_stream<C: ConnectionTrait>(conn: &C, bus: &Bus) -> Result<Completeness, CompletenessError> {
    let nats = |e: &dyn std::fmt::Display| CompletenessError::Nats(e.to_string());
    let stream = bus.jetstream().get_stream(subjects::STREAM).await.map_err(|e| nats(&e))?;
    // `None`: the audit service never ran, nothing is claimed chained.
    let acknowledged =
        custodian_bus::acknowledged_through(bus, CHAIN_DURABLE).await.map_err(|e| nats(&e))?.unwrap_or(0);
    // The stream's state as `get_stream` read it, before the ack floor: a floor past its end
    // only means newer messages came since. Those, and any aged out before its start, are not
    // checked.
    let state = &stream.cached_info().state;
    let upto = acknowledged.min(state.last_sequence);
    let mut report = Completeness { acknowledged, first_sequence: 0, last_sequence: 0, checked: 0, unchained: None };
    if upto == 0 || state.messages == 0 || state.first_sequence > upto {
        return Ok(report);
    }
    // A consumer of a fixed name, so that the operator's identity may make, read and delete
    // just this one (nats-server's permissions name it); a leftover of a check that was
    // stopped is replaced. Nothing is acknowledged: it only reads.
    let reader_name = custodian_bus::trust::durables::STREAM_CHECK;
    let _ = stream.delete_consumer(reader_name).await;
    let reader = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            name: Some(reader_name.to_owned()),
            filter_subject: subjects::ALL.to_owned(),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            inactive_threshold: std::time::Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(|e| nats(&e))?;
    let mut messages = reader.messages().await.map_err(|e| nats(&e))?;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // A message removed from the middle of the range (a purge) is simply not delivered;
        // a stream that stops delivering before `upto` must not hang the check.
        let next = tokio::time::timeout(READ_TIMEOUT, messages.next()).await;
        let message = match next {
            Ok(Some(message)) => message.map_err(|e| nats(&e))?,
            Ok(None) | Err(_) => break,
        };
        let sequence = message.info().map_err(|e| nats(&e))?.stream_sequence;
        if sequence > upto {
            break;
        }
        if report.checked == 0 {
            report.first_sequence = sequence;
        }
        report.last_sequence = sequence;
        report.checked += 1;
        let subject = message.subject.to_string();
        batch.push(Unchained { stream_sequence: sequence, subject, event_id: event_id(&message) });
        if batch.len() == BATCH {
            report.unchained = first_unchained(conn, std::mem::take(&mut batch)).await?;
            if report.unchained.is_some() {
                return Ok(report);
            }
        }
        if sequence == upto {
            break;
        }
    }
    drop(messages);
    let _ = stream.delete_consumer(reader_name).await;
    if !batch.is_empty() {
        report.unchained = first_unchained(conn, batch).await?;
    }
    Ok(report)
}

/// [`check_stream`], asked again while JetStream does not answer (a cluster electing a
/// leader after a node's loss answers within seconds), for up to `budget`; a database error
/// or a finding is returned at once.
pub async fn check_stream_patiently<C: ConnectionTrait>(
    conn: &C,
    bus: &Bus,
    budget: std::time::Duration,
) -> Result<Completeness, CompletenessError> {
    let deadline = tokio::time::Instant::now() + budget;
    loop {
        match check_stream(conn, bus).await {
            Err(CompletenessError::Nats(reason)) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%reason, "JetStream did not answer the completeness check; asking again");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            outcome => return outcome,
        }
    }
}

/// The id the event was published under.
fn event_id(message: &async_nats::jetstream::Message) -> Option<String> {
    let header = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str().to_owned());
    header.or_else(|| {
        #[derive(serde::Deserialize)]
        struct Id {
            id: String,
        }
        serde_json::from_slice::<Id>(&message.payload).ok().map(|e| e.id)
    })
}

async fn first_unchained<C: ConnectionTrait>(
    conn: &C,
    batch: Vec<Unchained>,
) -> Result<Option<Unchained>, sea_orm::DbErr> {
    // Its own id, or the id of the dead letter the audit would have published for it.
    let dead_letter_id =
        |m: &Unchained| derived_event_id("deadletter", &format!("{CHAIN_DURABLE}:{}", m.stream_sequence));
    let mut wanted: Vec<String> = batch.iter().filter_map(|m| m.event_id.clone()).collect();
    wanted.extend(batch.iter().map(dead_letter_id));
    let chained: HashSet<String> = audit_entry::Entity::find()
        .select_only()
        .column(audit_entry::Column::EventId)
        .filter(audit_entry::Column::EventId.is_in(wanted))
        .into_tuple::<String>()
        .all(conn)
        .await?
        .into_iter()
        .collect();
    Ok(batch
        .into_iter()
        .find(|m| !m.event_id.as_ref().is_some_and(|id| chained.contains(id)) && !chained.contains(&dead_letter_id(m))))
}
