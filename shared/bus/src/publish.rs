//! Many events published with many acks in flight, over one reply subscription.
//!
//! async-nats's JetStream `publish` costs, per message, a fresh inbox name, a oneshot
//! channel, two timers, an entry in the client's request map and an untagged decoding of
//! the ack. For a batch of thousands that made the client spend about as much CPU as
//! nats-server spent storing the messages (a profile of the consent bench's publish phase:
//! client 0.84 of a core, server 1.15), and on two cores the two compete. Here a batch has
//! one inbox prefix and one subscription; message `i` asks for its ack on `<prefix>.<i>`, so
//! each ack names its slot. Same wire protocol as a JetStream publish: the stream answers a
//! publish that carries a reply subject with its ack (or an error, or the server with "no
//! responders" when no stream takes the subject).

use std::time::Duration;

use async_nats::{HeaderMap, Message, StatusCode};
use futures::StreamExt;
use serde::Deserialize;

use crate::{BusError, Outgoing, publish_error};

/// How long the batch waits for the next ack before it gives up on every one still
/// outstanding (the default of async-nats's JetStream context). A caller that keeps its
/// events, like the outbox relay, sends them again; the stream de-duplicates by id.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How often an ack's wait looks whether the connection it was asked on has been replaced.
const EPOCH_CHECK_EVERY: Duration = Duration::from_millis(50);

/// Which connection of a client a publish went out on: the client counts its connections, one
/// more at each reconnection. An ack asked for over a connection since replaced never comes
/// (it went to the dead one, or died with its server), so waiting out [`ACK_TIMEOUT`] for it
/// would only hold back every event behind it; the caller sends it again at once instead, and
/// the stream keeps one copy by its id.
pub(crate) struct ConnectionEpoch {
    statistics: std::sync::Arc<async_nats::Statistics>,
    connects: u64,
}

impl ConnectionEpoch {
    pub(crate) fn of(client: &async_nats::Client) -> Self {
        Self::counting(client.statistics())
    }

    /// A client still making its first connection (one that waits for its server) has
    /// counted none: what it sends is buffered and goes out on that first one, which
    /// replaces nothing.
    fn counting(statistics: std::sync::Arc<async_nats::Statistics>) -> Self {
        let connects = statistics.connects.load(std::sync::atomic::Ordering::Relaxed).max(1);
        Self { statistics, connects }
    }

    /// Has the client connected again since?
    pub(crate) fn is_replaced(&self) -> bool {
        self.statistics.connects.load(std::sync::atomic::Ordering::Relaxed) > self.connects
    }

    /// Resolves once the client has connected again.
    pub(crate) async fn replaced(&self) {
        while !self.is_replaced() {
            tokio::time::sleep(EPOCH_CHECK_EVERY).await;
        }
    }
}

/// Why an awaited ack will not come: its connection was replaced.
pub(crate) const ACK_LOST_WITH_CONNECTION: &str =
    "the NATS connection was replaced before the ack came (it is lost with the old one)";

/// The headers every event travels with.
pub(crate) fn headers(out: &Outgoing) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", out.event_id.as_str());
    headers.insert("content-type", custodian_events::CONTENT_TYPE);
    if let Some(tp) = &out.traceparent {
        headers.insert(custodian_telemetry::TRACEPARENT, tp.as_str());
    }
    headers
}

/// The part of a JetStream publish ack that decides success (`stream`, `seq` and
/// `duplicate` are not needed: a duplicate is a success, the stream already holds it).
#[derive(Debug, Deserialize)]
struct PubAck {
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u32,
    #[serde(default)]
    description: String,
}

/// JetStream's "duplicate message id is in process": a publish of the same id is being
/// stored (two replicas' relays draining one outbox, or a retry racing its original).
const DUPLICATE_IN_PROCESS: u32 = 10158;

/// Why a message has no ack to count as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NotStored {
    /// Another publish of it is being stored; the next attempt gets the duplicate ack.
    InFlight,
    Failed(String),
}

/// What an ack says: `Ok`, or why the stream did not store the message.
fn verdict(message: &Message) -> Result<(), NotStored> {
    if let Some(status) = message.status.filter(|s| *s != StatusCode::OK) {
        return Err(NotStored::Failed(if status == StatusCode::NO_RESPONDERS {
            "no stream takes this subject (no responders)".to_owned()
        } else {
            format!("status {status} instead of an ack")
        }));
    }
    match serde_json::from_slice::<PubAck>(&message.payload) {
        Ok(PubAck { error: None }) => Ok(()),
        Ok(PubAck { error: Some(e) }) if e.err_code == DUPLICATE_IN_PROCESS => Err(NotStored::InFlight),
        Ok(PubAck { error: Some(e) }) => {
            Err(NotStored::Failed(format!("stream refused it ({}): {}", e.code, e.description)))
        }
        Err(e) => Err(NotStored::Failed(format!("unreadable ack: {e}"))),
    }
}

/// Publishes every event with up to `in_flight` acks outstanding; returns, in input order,
/// whether each was acked. When no ack comes, or no publish can be sent, for
/// [`ACK_TIMEOUT`] (server gone, connection lost), the rest are not sent and every event
/// without an ack is an error.
pub(crate) async fn publish_all(
    client: &async_nats::Client,
    events: &[Outgoing],
    in_flight: usize,
) -> Vec<Result<(), BusError>> {
    if events.is_empty() {
        return Vec::new();
    }
    let epoch = ConnectionEpoch::of(client);
    let mut epoch_checks = tokio::time::interval(EPOCH_CHECK_EVERY);
    epoch_checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let prefix = client.new_inbox();
    // The subscription goes through the same client buffer as the publishes (see below).
    let subscribed = match tokio::time::timeout(ACK_TIMEOUT, client.subscribe(format!("{prefix}.*"))).await {
        Ok(Ok(acks)) => Ok(acks),
        Ok(Err(e)) => Err(format!("cannot subscribe to the acks: {e}")),
        Err(_) => Err(format!("cannot subscribe to the acks within {ACK_TIMEOUT:?} (NATS unreachable?)")),
    };
    let mut acks = match subscribed {
        Ok(acks) => acks,
        Err(reason) => return events.iter().map(|out| Err(publish_error(out, &reason))).collect(),
    };
    let mut verdicts: Vec<Option<Result<(), NotStored>>> = vec![None; events.len()];
    let (mut waiting, window) = (0usize, in_flight.max(1));
    // Why the batch stopped early, if it did: every event without a verdict gets it.
    let mut gave_up: Option<String> = None;
    // Nudges stop at the first that cannot be sent (see `nudge::send`).
    let mut nudging = true;
    'send: for (i, out) in events.iter().enumerate() {
        while waiting >= window {
            match next_verdict(&mut acks, &prefix, &mut verdicts, &epoch, &mut epoch_checks).await {
                Ok(()) => waiting -= 1,
                Err(reason) => {
                    gave_up = Some(reason);
                    break 'send;
                }
            }
        }
        // While the connection is down the client queues publishes up to its buffer, then a
        // send waits for the reconnection: bounded like the acks, so a batch never hangs.
        let send = client.publish_with_reply_and_headers(
            out.subject.clone(),
            format!("{prefix}.{i}"),
            headers(out),
            out.payload.clone(),
        );
        match tokio::time::timeout(ACK_TIMEOUT, send).await {
            Ok(Ok(())) => {
                waiting += 1;
                nudging = nudging && crate::nudge::send(client, out, crate::nudge::When::Sent).await;
            }
            Ok(Err(e)) => verdicts[i] = Some(Err(NotStored::Failed(e.to_string()))),
            Err(_) => {
                gave_up = Some(format!("not sent within {ACK_TIMEOUT:?} (NATS unreachable?)"));
                break 'send;
            }
        }
    }
    let _again = if waiting > 0 && nudging { crate::nudge::again_until_acked(client, events) } else { None };
    while waiting > 0 && gave_up.is_none() {
        match next_verdict(&mut acks, &prefix, &mut verdicts, &epoch, &mut epoch_checks).await {
            Ok(()) => waiting -= 1,
            Err(reason) => gave_up = Some(reason),
        }
    }
    let mut stored = Vec::new();
    for (verdict, out) in verdicts.iter().zip(events) {
        if nudging && matches!(verdict, Some(Ok(()))) && crate::nudge::when(&out.subject).is_some() {
            nudging = crate::nudge::send(client, out, crate::nudge::When::Stored).await;
            stored.push(out.clone());
        }
    }
    if nudging {
        crate::nudge::again_later(client, stored);
    }
    let unanswered = gave_up.unwrap_or_else(|| "no ack".to_owned());
    verdicts
        .into_iter()
        .zip(events)
        .map(|(verdict, out)| {
            verdict.unwrap_or_else(|| Err(NotStored::Failed(unanswered.clone()))).map_err(|why| match why {
                NotStored::InFlight => {
                    BusError::InFlight { event_id: out.event_id.clone(), subject: out.subject.clone() }
                }
                NotStored::Failed(reason) => publish_error(out, reason),
            })
        })
        .collect()
}

/// Waits for the next ack that fills an empty slot and records it; `Err` when none comes in
/// time, the subscription ended, or the connection the batch went out on was replaced.
async fn next_verdict(
    acks: &mut async_nats::Subscriber,
    prefix: &str,
    verdicts: &mut [Option<Result<(), NotStored>>],
    epoch: &ConnectionEpoch,
    epoch_checks: &mut tokio::time::Interval,
) -> Result<(), String> {
    loop {
        let next = async {
            loop {
                tokio::select! {
                    biased;
                    message = acks.next() => return Ok(message),
                    _ = epoch_checks.tick() => {
                        if epoch.is_replaced() {
                            return Err(ACK_LOST_WITH_CONNECTION.to_owned());
                        }
                    }
                }
            }
        };
        let message = match tokio::time::timeout(ACK_TIMEOUT, next).await {
            Ok(Ok(Some(message))) => message,
            Ok(Ok(None)) => return Err("the connection closed before the ack".to_owned()),
            Ok(Err(reason)) => return Err(reason),
            Err(_) => return Err(format!("no ack within {ACK_TIMEOUT:?}")),
        };
        let slot = message
            .subject
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| verdicts.get_mut(i))
            .filter(|slot| slot.is_none());
        // Anything else on the prefix (a repeated ack) fills nothing and is skipped.
        if let Some(slot) = slot {
            *slot = Some(verdict(&message));
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_connection_replaces_nothing_and_a_reconnection_does() {
        use std::sync::atomic::Ordering::Relaxed;
        let statistics = std::sync::Arc::new(async_nats::Statistics::default());
        let before_connecting = ConnectionEpoch::counting(statistics.clone());
        statistics.connects.store(1, Relaxed);
        assert!(!before_connecting.is_replaced(), "sent before the first connection, acked over it");
        let on_the_first = ConnectionEpoch::counting(statistics.clone());
        assert!(!on_the_first.is_replaced());
        statistics.connects.store(2, Relaxed);
        assert!(before_connecting.is_replaced() && on_the_first.is_replaced(), "a reconnection loses the ack");
    }

    fn ack(payload: &str, status: Option<StatusCode>) -> Message {
        Message {
            subject: "_INBOX.x.0".into(),
            reply: None,
            payload: bytes::Bytes::from(payload.to_owned()),
            headers: None,
            status,
            description: None,
            length: payload.len(),
        }
    }

    #[test]
    fn an_ack_a_duplicate_an_error_and_no_responders_are_told_apart() {
        assert_eq!(verdict(&ack(r#"{"stream":"LIFECYCLE","seq":7}"#, None)), Ok(()));
        assert_eq!(verdict(&ack(r#"{"stream":"LIFECYCLE","seq":7,"duplicate":true}"#, None)), Ok(()));
        let refused = verdict(&ack(
            r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"LIFECYCLE","seq":0}"#,
            None,
        ));
        assert_eq!(refused, Err(NotStored::Failed("stream refused it (503): maximum messages exceeded".to_owned())));
        let racing = verdict(&ack(
            r#"{"error":{"code":409,"err_code":10158,"description":"duplicate message id is in process"}}"#,
            None,
        ));
        assert_eq!(racing, Err(NotStored::InFlight));
        let nobody = verdict(&ack("", Some(StatusCode::NO_RESPONDERS)));
        assert!(matches!(nobody, Err(NotStored::Failed(r)) if r.contains("no responders")));
        assert!(
            matches!(verdict(&ack("not json", None)), Err(NotStored::Failed(r)) if r.starts_with("unreadable ack"))
        );
    }
}
