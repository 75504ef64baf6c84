//! What the bus and the outboxes look like now, for `custodian status`: the stream, each
//! service's durable consumer (and which replica leads it when replicas take turns), the dead
//! letters the stream still keeps, the events written but not yet published — and what in
//! all that needs an operator.

use std::time::Duration;

use chrono::{DateTime, Utc};
use custodian_events::subjects;
use custodian_store::outbox::Backlog;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::consumer::term_base;
use crate::lease::LEADERSHIP_BUCKET;
use crate::{Bus, BusError};

/// A consumer with work waiting and no delivery for this long is stalled.
pub const STALLED_AFTER: Duration = Duration::from_secs(60);
/// An event written to an outbox and not published for this long: its relay is stuck.
pub const UNPUBLISHED_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize)]
pub struct BusStatus {
    pub stream: StreamStatus,
    pub consumers: Vec<ConsumerStatus>,
    /// Dead letters the stream still holds, per subject (`lifecycle.deadletter.<service>`).
    pub dead_letters: Vec<(String, u64)>,
    /// The stream sequence of the newest dead letter per subject (what "new since the last
    /// check" is measured by).
    pub dead_letters_newest: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
    pub replicas: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStatus {
    /// The durable's name without a leadership term (`consent-ledger`).
    pub name: String,
    /// The durable itself (`consent-ledger-t42` while term 42 leads).
    pub durable: String,
    /// For replicas taking turns: who holds the lease now (`None`: nobody leads).
    pub leader: Option<String>,
    pub takes_turns: bool,
    /// Messages not yet delivered to it.
    pub pending: u64,
    /// Delivered and not yet acknowledged.
    pub unacknowledged: usize,
    /// Everything up to this stream sequence is acknowledged.
    pub acknowledged_through: u64,
    pub redelivered: usize,
    /// Pull requests waiting: 0 with work pending means no replica is pulling.
    pub waiting_pulls: usize,
    pub last_delivery: Option<DateTime<Utc>>,
}

/// Reads the stream, its consumers, the leadership leases and the dead-letter counts.
pub async fn bus_status(bus: &Bus) -> Result<BusStatus, BusError> {
    read_status(bus, true).await
}

/// [`bus_status`] without the newest dead letter per subject: counts only, no message read
/// (for a service's gauges, whose identity may not read messages by sequence).
pub async fn bus_counts(bus: &Bus) -> Result<BusStatus, BusError> {
    read_status(bus, false).await
}

async fn read_status(bus: &Bus, with_newest: bool) -> Result<BusStatus, BusError> {
    let failed = |reason: String| BusError::Stream { stream: subjects::STREAM.to_owned(), reason };
    let js = bus.jetstream();
    let mut stream = js.get_stream(subjects::STREAM).await.map_err(|e| failed(e.to_string()))?;
    let info = stream.info().await.map_err(|e| failed(e.to_string()))?.clone();
    let stream_status = StreamStatus {
        name: info.config.name.clone(),
        messages: info.state.messages,
        bytes: info.state.bytes,
        first_sequence: info.state.first_sequence,
        last_sequence: info.state.last_sequence,
        replicas: info.config.num_replicas,
    };
    // The leases of consumers that take turns; no bucket yet means none was ever taken.
    let leases = match js.get_key_value(LEADERSHIP_BUCKET).await {
        Ok(kv) => Some(kv),
        Err(e) if e.kind() == async_nats::jetstream::context::KeyValueErrorKind::GetBucket => None,
        Err(e) => return Err(failed(e.to_string())),
    };
    let infos: Vec<async_nats::jetstream::consumer::Info> =
        stream.consumers().try_collect().await.map_err(|e| failed(e.to_string()))?;
    let mut consumers = Vec::with_capacity(infos.len());
    // Ephemeral consumers are readers (e.g. `audit verify --stream`), not services.
    for info in infos.into_iter().filter(|info| info.config.durable_name.is_some()) {
        let durable = info.name.clone();
        // A term's durable acks in order (`AckPolicy::All`); a shared one acks each message.
        let in_order = info.config.ack_policy == async_nats::jetstream::consumer::AckPolicy::All;
        let (name, takes_turns) = match term_base(&durable).filter(|_| in_order) {
            Some(base) => (base.to_owned(), true),
            None => (durable.clone(), false),
        };
        let leader = match (&leases, takes_turns) {
            (Some(kv), true) => kv
                .entry(name.as_str())
                .await
                .map_err(|e| failed(e.to_string()))?
                .filter(|entry| entry.operation == async_nats::jetstream::kv::Operation::Put)
                .map(|entry| String::from_utf8_lossy(&entry.value).into_owned()),
            _ => None,
        };
        consumers.push(ConsumerStatus {
            name,
            durable,
            leader,
            takes_turns,
            pending: info.num_pending,
            unacknowledged: info.num_ack_pending,
            acknowledged_through: info.ack_floor.stream_sequence,
            redelivered: info.num_redelivered,
            waiting_pulls: info.num_waiting,
            last_delivery: info
                .delivered
                .last_active
                .and_then(|t| DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond())),
        });
    }
    consumers.sort_by(|a, b| a.name.cmp(&b.name));
    let dead_filter = format!("{}.>", subjects::DEADLETTER_PREFIX);
    let mut dead_letters: Vec<(String, u64)> = Vec::new();
    if info.state.messages > 0 {
        let mut subjects = stream.info_with_subjects(&dead_filter).await.map_err(|e| failed(e.to_string()))?;
        while let Some(entry) = subjects.next().await {
            let (subject, count) = entry.map_err(|e| failed(e.to_string()))?;
            dead_letters.push((subject, count as u64));
        }
    }
    dead_letters.sort();
    let mut dead_letters_newest = Vec::with_capacity(dead_letters.len());
    for (subject, _) in dead_letters.iter().filter(|_| with_newest) {
        let newest = stream.get_last_raw_message_by_subject(subject).await.map_err(|e| failed(e.to_string()))?;
        dead_letters_newest.push((subject.clone(), newest.sequence));
    }
    Ok(BusStatus { stream: stream_status, consumers, dead_letters, dead_letters_newest })
}

/// What needs an operator: a consumer with work waiting that nobody leads or that has not
/// delivered for [`STALLED_AFTER`]; events left unpublished for [`UNPUBLISHED_AFTER`].
/// Dead letters are reported beside, not here: they stay in the stream for its whole
/// retention after being dealt with.
pub fn problems(bus: &BusStatus, backlog: &[Backlog], now: DateTime<Utc>) -> Vec<String> {
    let stalled = chrono::Duration::from_std(STALLED_AFTER).unwrap_or_default();
    let unpublished = chrono::Duration::from_std(UNPUBLISHED_AFTER).unwrap_or_default();
    let mut problems = Vec::new();
    for c in &bus.consumers {
        if c.pending == 0 && c.unacknowledged == 0 {
            continue;
        }
        let waiting = c.pending + c.unacknowledged as u64;
        if c.takes_turns && c.leader.is_none() {
            problems.push(format!("{}: {waiting} event(s) wait and no replica leads it", c.name));
        } else if c.last_delivery.is_none_or(|at| now - at > stalled) {
            problems.push(format!(
                "{}: {waiting} event(s) wait and nothing was delivered for over {} s (is the service running?)",
                c.name,
                STALLED_AFTER.as_secs()
            ));
        }
    }
    for b in backlog {
        if now - b.oldest > unpublished {
            problems.push(format!(
                "outbox of {}: {} event(s) unpublished, the oldest for {} s (is NATS reachable from it?)",
                b.publisher,
                b.waiting,
                (now - b.oldest).num_seconds()
            ));
        }
    }
    problems
}

/// Dead letters that arrived after stream sequence `checked_through` (the last check), one
/// line per subject that has some; and the sequence the next check starts after.
pub fn dead_letters_since(bus: &BusStatus, checked_through: u64) -> (Vec<String>, u64) {
    let news = bus
        .dead_letters_newest
        .iter()
        .filter(|(_, newest)| *newest > checked_through)
        .map(|(subject, newest)| {
            format!("{subject}: dead letter(s) since the last check, the newest at stream sequence {newest}")
        })
        .collect();
    let through = bus.dead_letters_newest.iter().map(|(_, n)| *n).max().unwrap_or(0).max(checked_through);
    (news, through)
}

/// What an operator's check reports of the dead letters: those that arrived since the
/// previous check, whose mark it then moves past them (kept in `status_marks`).
pub async fn check_dead_letters(
    bus: &BusStatus,
    db: &impl sea_orm::ConnectionTrait,
    now: DateTime<Utc>,
) -> Result<Vec<String>, sea_orm::DbErr> {
    const MARK: &str = "dead-letters";
    let checked_through = custodian_store::status_marks::get(db, MARK).await?.unwrap_or(0);
    let (news, through) = dead_letters_since(bus, checked_through);
    if through > checked_through {
        custodian_store::status_marks::set(db, MARK, through, now).await?;
    }
    Ok(news)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_000_000 + secs, 0).expect("time")
    }

    fn consumer(
        name: &str,
        takes_turns: bool,
        leader: Option<&str>,
        pending: u64,
        last: Option<i64>,
    ) -> ConsumerStatus {
        ConsumerStatus {
            name: name.into(),
            durable: if takes_turns { format!("{name}-t7") } else { name.into() },
            leader: leader.map(str::to_owned),
            takes_turns,
            pending,
            unacknowledged: 0,
            acknowledged_through: 0,
            redelivered: 0,
            waiting_pulls: 0,
            last_delivery: last.map(at),
        }
    }

    fn status(consumers: Vec<ConsumerStatus>) -> BusStatus {
        BusStatus {
            stream: StreamStatus {
                name: "LIFECYCLE".into(),
                messages: 0,
                bytes: 0,
                first_sequence: 0,
                last_sequence: 0,
                replicas: 1,
            },
            consumers,
            dead_letters: vec![("lifecycle.deadletter.vault".into(), 3), ("lifecycle.deadletter.consent".into(), 1)],
            dead_letters_newest: vec![
                ("lifecycle.deadletter.vault".into(), 40),
                ("lifecycle.deadletter.consent".into(), 12),
            ],
        }
    }

    #[test]
    fn dead_letters_count_as_news_once_each_after_the_last_check() {
        let bus = status(vec![]);
        let (news, through) = dead_letters_since(&bus, 0);
        assert_eq!(news.len(), 2);
        assert_eq!(through, 40);
        let (news, through) = dead_letters_since(&bus, 20);
        assert_eq!(
            news,
            vec!["lifecycle.deadletter.vault: dead letter(s) since the last check, the newest at stream sequence 40"]
        );
        assert_eq!(through, 40);
        assert_eq!(dead_letters_since(&bus, 40), (Vec::new(), 40));
        assert_eq!(dead_letters_since(&bus, 50), (Vec::new(), 50), "a mark never moves back");
    }

    #[test]
    fn work_waiting_without_a_leader_or_a_recent_delivery_needs_an_operator() {
        let now = at(1000);
        let bus = status(vec![
            consumer("consent-ledger", true, None, 5, Some(990)),
            consumer("audit-chain", true, Some("audit@a/1/x"), 5, Some(995)),
            consumer("vault-ended", false, None, 2, Some(900)),
            consumer("incident-reports", false, None, 0, None),
            consumer("sweeper-requests", false, None, 1, None),
        ]);
        let backlog = vec![
            Backlog { publisher: "consent".into(), waiting: 4, oldest: at(990) },
            Backlog { publisher: "vault".into(), waiting: 2, oldest: at(880) },
        ];
        assert_eq!(
            problems(&bus, &backlog, now),
            vec![
                "consent-ledger: 5 event(s) wait and no replica leads it".to_owned(),
                "vault-ended: 2 event(s) wait and nothing was delivered for over 60 s (is the service running?)"
                    .to_owned(),
                "sweeper-requests: 1 event(s) wait and nothing was delivered for over 60 s (is the service running?)"
                    .to_owned(),
                "outbox of vault: 2 event(s) unpublished, the oldest for 120 s (is NATS reachable from it?)".to_owned(),
            ]
        );
        assert!(problems(&status(vec![]), &[], now).is_empty(), "dead letters alone are no problem");
    }

    #[test]
    fn a_terms_durable_is_named_after_its_base() {
        assert_eq!(term_base("consent-ledger-t42"), Some("consent-ledger"));
        assert_eq!(term_base("consent-ledger"), None);
        assert_eq!(term_base("view-demo-tx"), None);
        assert_eq!(term_base("-t3"), None);
    }
}
