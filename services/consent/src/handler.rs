//! Applies a batch of consent facts in one transaction: load the rows, join each fact, save
//! what changed, history, `consent.ended` to the outbox, commit.
//!
//! No inbox: joining a fact twice changes nothing (see [`ledger::apply_fact`]), so a
//! redelivered event writes no row, no history and no `consent.ended`.

use std::collections::HashMap;

use custodian_bus::{BatchHandler, Delivery, HandlerError, RelayHandle};
use custodian_events::{CloudEvent, ConsentEndedV1, ConsentKey, LifecycleEvent, derived_event_id, subjects};
use custodian_store::clock::SharedClock;
use custodian_store::sea_orm::{ConnectionTrait, DbBackend, DbErr};
use custodian_store::{Store, outbox};

use crate::ledger::{self, Expire, Fact, Grant, Revoke, Status, Transition};
use crate::metrics::ConsentMetrics;
use crate::persistence;
use crate::{SERVICE, SOURCE};

#[derive(Debug, Clone)]
pub struct LedgerHandler {
    pub store: Store,
    pub clock: SharedClock,
    pub relay: RelayHandle,
    pub metrics: ConsentMetrics,
}

/// The consent fact an event states, if it is one. Times are cut to microseconds, what
/// PostgreSQL stores: a fact compared with its own stored copy must compare equal, or a
/// redelivery would look newer than itself and be joined again.
pub fn fact_of(event: &LifecycleEvent) -> Option<(ConsentKey, Fact)> {
    let stored = |t: chrono::DateTime<chrono::Utc>| chrono::SubsecRound::trunc_subsecs(t, 6);
    match event {
        LifecycleEvent::ConsentGranted(e) => Some((
            ConsentKey::new(&e.data.issuer, &e.data.subject, &e.data.platform_id),
            Fact::Granted(Grant {
                at: stored(e.time),
                event_id: e.id.clone(),
                scopes: e.data.scopes.clone(),
                acr: e.data.acr.clone(),
            }),
        )),
        LifecycleEvent::ConsentRevoked(e) => Some((
            ConsentKey::new(&e.data.issuer, &e.data.subject, &e.data.platform_id),
            Fact::Revoked(Revoke { at: stored(e.time), event_id: e.id.clone(), reason: e.data.reason }),
        )),
        LifecycleEvent::ConsentExpire(e) => Some((
            ConsentKey::new(&e.data.issuer, &e.data.subject, &e.data.platform_id),
            Fact::Expired(Expire {
                at: stored(e.time),
                event_id: e.id.clone(),
                idle_since: stored(e.data.idle_since),
                sweep_id: e.data.sweep_id.clone(),
            }),
        )),
        LifecycleEvent::ActivitySeen(e) => Some((
            ConsentKey::new(&e.data.issuer, &e.data.subject, &e.data.platform_id),
            Fact::Seen { at: stored(e.time) },
        )),
        _ => None,
    }
}

impl BatchHandler for LedgerHandler {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Result<(), HandlerError>> {
        let mut outcome = self.apply_batch(batch).await;
        // A worker sharing the durable created one of this batch's new consents first: run
        // the batch again now (it will find and lock that row) rather than wait for a
        // redelivery of the whole batch.
        for _ in 0..3 {
            match &outcome {
                Err(e)
                    if matches!(e.sql_err(), Some(custodian_store::sea_orm::SqlErr::UniqueConstraintViolation(_))) =>
                {
                    tracing::debug!(
                        size = batch.len(),
                        "a consent of this batch was created concurrently; re-running it"
                    );
                    outcome = self.apply_batch(batch).await;
                }
                _ => break,
            }
        }
        match outcome {
            Ok(results) => results,
            // Busy database, lost connection, lock conflict between replicas: retry later.
            Err(e) => {
                tracing::warn!(error = %e, size = batch.len(), "consent batch not applied");
                batch.iter().map(|_| Err(HandlerError::Transient(e.to_string()))).collect()
            }
        }
    }
}

impl LedgerHandler {
    async fn apply_batch(&self, batch: &[Delivery]) -> Result<Vec<Result<(), HandlerError>>, DbErr> {
        let now = self.clock.now();
        let mut results: Vec<Result<(), HandlerError>> = Vec::with_capacity(batch.len());
        let mut facts = Vec::with_capacity(batch.len());
        for delivery in batch {
            match fact_of(&delivery.event) {
                Some((key, fact)) => {
                    results.push(Ok(()));
                    let digest = persistence::digest(&key);
                    facts.push((delivery, key, fact, digest));
                }
                None => results.push(Err(HandlerError::Permanent(format!(
                    "{} is not a consent fact (consumer filter misconfigured?)",
                    delivery.event.event_type()
                )))),
            }
        }
        if facts.is_empty() {
            return Ok(results);
        }

        let txn = self.store.begin().await?;
        if txn.get_database_backend() == DbBackend::Postgres {
            // The batch reads and updates ~1,000 rows by primary key. With the default
            // random_page_cost (4, a spinning disk's), PostgreSQL prices those lookups above a
            // full scan on tables of up to a few hundred thousand consents and scans the whole
            // table per batch; the rows a batch touches are in memory, so price them as such.
            txn.execute_unprepared("SET LOCAL random_page_cost = 1.1").await?;
        }
        // Write first: on SQLite the transaction then holds the write lock from its first
        // statement (a read first could not upgrade once another writer committed).
        let keys: Vec<(&str, &ConsentKey)> = facts.iter().map(|(_, k, _, d)| (d.as_str(), k)).collect();
        let persistence::Loaded { mut consents, new_keys } = persistence::lock_and_load(&txn, &keys, now).await?;

        // Changed consents, and whether only activity reports changed them (a narrower write).
        let mut changed: HashMap<&str, bool> = HashMap::new();
        let mut history = Vec::new();
        let mut outgoing = Vec::new();
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for (delivery, key, fact, digest) in &facts {
            let event_id = delivery.event.id();
            let span = tracing::debug_span!("on_consent_fact", event_id, subject = %delivery.subject, platform_id = %key.platform_id);
            custodian_telemetry::adopt_remote_parent(&span, delivery.traceparent.as_deref());
            let _entered = span.enter();

            let Some(consent) = consents.get_mut(digest) else {
                continue;
            };
            let status_before = consent.status();
            let ledger::Applied { changed: effective, transition } = ledger::apply_fact(consent, fact);
            if !effective {
                // A redelivery, the same event twice in one batch, or a fact a later one
                // already superseded: nothing to write.
                self.metrics.unchanged.inc();
                continue;
            }
            let status_after = consent.status();
            let seen = matches!(fact, Fact::Seen { .. });
            *changed.entry(digest.as_str()).or_insert(true) &= seen;
            *counts.entry(delivery.event.event_type()).or_default() += 1;
            // Activity is too frequent to keep each one; it is in history when it changes status.
            if !seen || status_before != status_after {
                history.push(persistence::history_row(
                    digest,
                    event_id,
                    delivery.event.event_type(),
                    delivery.event.time(),
                    status_after.as_str(),
                    now,
                ));
            }
            if let Transition::Ended { grant_event_id, ending } = transition {
                let data = ConsentEndedV1 {
                    issuer: key.issuer.clone(),
                    subject: key.subject.clone(),
                    platform_id: key.platform_id.clone(),
                    reason: ending.reason,
                    cause_event_id: ending.event_id.clone(),
                };
                // One `consent.ended` per ended grant, whatever the order facts arrived in.
                let mut event =
                    CloudEvent::with_id(derived_event_id("consent.ended", &grant_event_id), SOURCE, ending.at, data);
                event.traceparent = custodian_telemetry::current_traceparent();
                tracing::debug!(reason = ?ending.reason, "consent ended");
                outgoing.push(custodian_bus::outbox_row(subjects::CONSENT_ENDED, &event));
            }
            debug_assert!(status_after != Status::Unknown || consent.grant.is_none());
        }

        let to_save: Vec<persistence::Changed<'_>> = changed
            .iter()
            .filter_map(|(digest, seen_only)| {
                let consent = consents.get(*digest)?;
                Some(persistence::Changed { digest, consent, seen_only: *seen_only })
            })
            .collect();
        persistence::save_all(&txn, to_save, &new_keys, now).await?;
        persistence::append_history(&txn, history).await?;
        let ended = outgoing.len() as u64;
        if !outgoing.is_empty() {
            outbox::enqueue(&txn, SERVICE, outgoing, now).await?;
        }
        txn.commit().await?;

        if ended > 0 {
            self.relay.wake();
        }
        self.metrics.ended.inc_by(ended);
        for (event_type, n) in counts {
            self.metrics.applied.get_or_create(&vec![("type".to_owned(), event_type.to_owned())]).inc_by(n);
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use custodian_events::{CloudEvent, ConsentRevokedV1, LifecycleEvent, RevokeReason};

    use super::*;

    #[test]
    fn a_fact_read_back_at_storage_precision_is_not_newer_than_itself() {
        let time = chrono::DateTime::from_timestamp(1_795_000_000, 123_456_789).expect("time");
        let event = LifecycleEvent::ConsentRevoked(CloudEvent::new(
            "urn:test",
            time,
            ConsentRevokedV1 {
                issuer: "https://op.example".into(),
                subject: "person".into(),
                platform_id: "tp".into(),
                reason: RevokeReason::User,
                actor: None,
            },
        ));
        let (key, fact) = fact_of(&event).expect("a fact");
        let Fact::Revoked(revoke) = &fact else { panic!("a revocation") };
        assert_eq!(revoke.at.timestamp_subsec_nanos(), 123_456_000, "cut to what PostgreSQL keeps");
        let mut consent = ledger::Consent::new(key);
        assert!(ledger::apply_fact(&mut consent, &fact).changed);
        // The same event delivered again, against the state as stored: nothing to write.
        assert!(!ledger::apply_fact(&mut consent, &fact).changed);
    }
}
