//! The vault's lifecycle consumer: `consent.ended` (start a revocation), `session.opened`,
//! `session.closed`, `session.wiped` (a view's ack). A batch is applied in one transaction;
//! every effect is idempotent (keyed inserts, conditional updates), so redelivery is harmless.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use custodian_bus::{BatchHandler, Delivery, HandlerError};
use custodian_events::{
    CloudEvent, ConsentEndedV1, LifecycleEvent, RevocationOutcome, SessionOpenedV1, SessionWipedV1, TokenKind,
    TokenRevokedV1, derived_event_id, subjects,
};
use custodian_store::entities::{assertion, pending_wipe, revocation, revocation_token, view_session};
use custodian_store::locks::{self, LockOn};
use custodian_store::outbox;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter,
};

use crate::{SERVICE, SOURCE, Vault, VaultError, assertions};
use tracing::Instrument as _;

#[derive(Debug, Clone)]
pub struct LifecycleHandler {
    pub(crate) vault: Arc<Vault>,
}

impl BatchHandler for LifecycleHandler {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Result<(), HandlerError>> {
        match self.apply(batch).await {
            Ok(results) => results,
            Err(e) => {
                tracing::warn!(error = %e, size = batch.len(), "vault batch not applied");
                batch.iter().map(|_| Err(HandlerError::Transient(e.to_string()))).collect()
            }
        }
    }
}

/// What a batch changed that needs a follow-up after commit.
#[derive(Default)]
pub(crate) struct Effects {
    pub outgoing: Vec<custodian_store::outbox::OutgoingEvent>,
    pub touched_revocations: HashSet<String>,
    /// Revocations a late session reopened: set back to pending once their locks are held.
    pub reopened: HashSet<String>,
    pub new_work: bool,
    /// The batch is of nudges: a revocation it starts awaits its event on the stream.
    pub from_nudges: bool,
}

impl LifecycleHandler {
    async fn apply(&self, batch: &[Delivery]) -> Result<Vec<Result<(), HandlerError>>, VaultError> {
        let vault = &self.vault;
        let now = vault.clock.now();
        let txn = vault.store.begin_write().await?;
        let mut effects = Effects { from_nudges: batch.iter().any(|d| d.nudge), ..Effects::default() };
        let mut results = Vec::with_capacity(batch.len());
        // Views' acknowledgements are applied together after the rest of the batch, in wipe-id
        // order: a few statements per batch instead of three per ack, and rows locked in the
        // order the driver's claims lock them, so the two never deadlock.
        let mut acks: Vec<(usize, &SessionWipedV1)> = Vec::new();
        // Every person's consent this batch changes, locked up front in key order: a token
        // hand-out or another replica's batch for the same person waits for this one.
        let consents: Vec<LockOn<'_>> = batch.iter().filter_map(|d| consent_of(&d.event)).collect();
        locks::hold(&txn, &consents).await?;
        for delivery in batch {
            let span = tracing::info_span!("vault_event", event_id = delivery.event.id(), messaging.destination.name = %delivery.subject);
            custodian_telemetry::adopt_remote_parent(&span, delivery.traceparent.as_deref());
            // Instrumented, not entered: an entered span held across an await would become
            // the parent of whatever other task ran on this thread meanwhile.
            let position = results.len();
            let (acks, effects) = (&mut acks, &mut effects);
            let applied = async {
                Some(match &delivery.event {
                    LifecycleEvent::ConsentEnded(e) => start_revocation(vault, &txn, e, now, effects).await.map(|_| ()),
                    LifecycleEvent::SessionOpened(e) => session_opened(vault, &txn, e, now, effects).await,
                    LifecycleEvent::SessionClosed(e) => view_session::Entity::update_many()
                        .col_expr(view_session::Column::ClosedAt, Some(now).into())
                        .filter(view_session::Column::SessionId.eq(e.data.session_id.clone()))
                        .filter(view_session::Column::ViewId.eq(e.data.view_id.clone()))
                        .filter(view_session::Column::ClosedAt.is_null())
                        .exec(&txn)
                        .await
                        .map(|_| ())
                        .map_err(VaultError::from),
                    LifecycleEvent::SessionWiped(e) => {
                        acks.push((position, &e.data));
                        // Its place; `apply_acks` fills it in.
                        Ok(())
                    }
                    LifecycleEvent::IncidentContain(e) => crate::incident::contain(vault, &txn, e, now, effects).await,
                    LifecycleEvent::CredentialRotated(e) => crate::incident::switch_secret(vault, &e.data).await,
                    LifecycleEvent::SessionRevoke(e) => end_sessions(vault, &txn, e, now, effects).await,
                    _ => return None,
                })
            }
            .instrument(span)
            .await;
            let Some(result) = applied else {
                results.push(Err(HandlerError::Permanent(format!(
                    "{} is not for the vault (consumer filter misconfigured?)",
                    delivery.event.event_type()
                ))));
                continue;
            };
            results.push(outcome(result)?);
        }
        let acks = plan_acks(&txn, &acks).await?;
        // The revocations this batch may settle or reopen, locked before any of their items is
        // written: of two writers settling the last items of one revocation (this batch and the
        // driver, or two replicas), the second waits, then sees the first's items and marks it
        // done.
        let mut revocations: Vec<&str> = effects
            .touched_revocations
            .iter()
            .chain(&effects.reopened)
            .map(String::as_str)
            .chain(acks.revocations.iter().map(String::as_str))
            .collect();
        revocations.sort_unstable();
        revocations.dedup();
        let revocation_locks: Vec<LockOn<'_>> = revocations.iter().map(|id| LockOn::Revocation(id)).collect();
        locks::hold(&txn, &revocation_locks).await?;
        effects.touched_revocations.extend(acks.revocations.iter().cloned());
        for (at, result) in apply_acks(vault, &txn, acks, now).await? {
            results[at] = outcome(result)?;
        }
        reopen(&txn, &effects.reopened).await?;
        if !effects.outgoing.is_empty() {
            outbox::enqueue(&txn, SERVICE, std::mem::take(&mut effects.outgoing), now).await?;
            effects.new_work = true;
        }
        crate::driver::finish_revocations(vault, &txn, &effects.touched_revocations).await?;
        txn.commit().await?;
        if effects.new_work {
            vault.relay.wake();
            vault.work.notify_one();
        }
        Ok(results)
    }
}

/// One event's result as the consumer takes it; a database error aborts the whole batch (the
/// transaction is unusable).
fn outcome(result: Result<(), VaultError>) -> Result<Result<(), HandlerError>, VaultError> {
    match result {
        Ok(()) => Ok(Ok(())),
        Err(VaultError::Db(e)) => Err(VaultError::Db(e)),
        Err(VaultError::Transient(e)) => Ok(Err(HandlerError::Transient(e))),
        Err(e) => Ok(Err(HandlerError::Permanent(e.to_string()))),
    }
}

/// Takes over an ended consent: records the revocation, its tokens and its wipes.
async fn start_revocation(
    vault: &Vault,
    txn: &DatabaseTransaction,
    event: &CloudEvent<ConsentEndedV1>,
    now: DateTime<Utc>,
    effects: &mut Effects,
) -> Result<bool, VaultError> {
    let data = &event.data;
    let start = RevocationStart {
        revocation_id: data.cause_event_id.clone(),
        ended_event_id: event.id.clone(),
        issuer: data.issuer.clone(),
        subject: data.subject.clone(),
        platform_id: data.platform_id.clone(),
        reason: serde_json::to_value(data.reason).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
        wipe_reason: wipe_reason(data.reason),
        until: event.time.max(now),
    };
    begin_revocation(vault, txn, &start, now, effects).await
}

/// What to revoke: one person at one platform, everything obtained or opened until `until`.
pub(crate) struct RevocationStart {
    pub revocation_id: String,
    pub ended_event_id: String,
    pub issuer: String,
    pub subject: String,
    pub platform_id: String,
    pub reason: String,
    pub wipe_reason: &'static str,
    pub until: DateTime<Utc>,
}

/// Records a revocation, its tokens and its wipes. Returns false when it already exists (a
/// redelivery).
pub(crate) async fn begin_revocation(
    vault: &Vault,
    txn: &DatabaseTransaction,
    start: &RevocationStart,
    now: DateTime<Utc>,
    effects: &mut Effects,
) -> Result<bool, VaultError> {
    let revocation_id = start.revocation_id.clone();
    // Held already when the batch named this person; an incident's containment finds its people
    // as it goes.
    locks::hold(
        txn,
        &[LockOn::Consent { issuer: &start.issuer, subject: &start.subject, platform_id: &start.platform_id }],
    )
    .await?;
    let inserted = revocation::Entity::insert(revocation::ActiveModel {
        revocation_id: Set(revocation_id.clone()),
        ended_event_id: Set(start.ended_event_id.clone()),
        issuer: Set(start.issuer.clone()),
        subject: Set(start.subject.clone()),
        platform_id: Set(start.platform_id.clone()),
        reason: Set(start.reason.clone()),
        state: Set("pending".into()),
        started_at: Set(now),
        finished_at: Set(None),
        updated_at: Set(now),
        traceparent: Set(custodian_telemetry::current_traceparent()),
        awaits_stream: Set(effects.from_nudges),
    })
    .on_conflict(OnConflict::column(revocation::Column::RevocationId).do_nothing().to_owned())
    .exec_without_returning(txn)
    .await?;
    if inserted == 0 {
        // Its event, from the stream, after its nudge: everything before it on the stream has
        // been delivered too, so it may be done once its items are settled.
        if !effects.from_nudges {
            let confirmed = revocation::Entity::update_many()
                .col_expr(revocation::Column::AwaitsStream, false.into())
                .filter(revocation::Column::RevocationId.eq(revocation_id.clone()))
                .filter(revocation::Column::AwaitsStream.eq(true))
                .exec(txn)
                .await?;
            if confirmed.rows_affected > 0 {
                effects.touched_revocations.insert(revocation_id);
            }
        }
        return Ok(false);
    }
    vault.metrics.revocations_started.inc();
    tracing::info!(revocation_id = %revocation_id, platform_id = %start.platform_id, reason = %start.reason, "revocation started");

    // Tokens obtained before the end (a later login is a new grant).
    let rows = assertion::Entity::find()
        .filter(assertion::Column::Issuer.eq(start.issuer.clone()))
        .filter(assertion::Column::Subject.eq(start.subject.clone()))
        .filter(assertion::Column::PlatformId.eq(start.platform_id.clone()))
        .filter(assertion::Column::RevocationId.is_null())
        .filter(assertion::Column::CreatedAt.lte(start.until))
        .all(txn)
        .await?;
    let mut token_rows = Vec::new();
    let mut nothing_left = Vec::new();
    for row in &rows {
        let has_refresh = match assertions::open(&vault.keyring, row) {
            Ok(bundle) => bundle.refresh_token.is_some(),
            // Unreadable (key removed from the ring): the access token may still be live at the
            // OP and we cannot revoke it; record the failure on the receipt.
            Err(e) => {
                tracing::error!(assertion_id = %row.assertion_id, error = %e, "sealed tokens unreadable");
                true
            }
        };
        let mut pending = 0;
        for (kind, present) in [(TokenKind::Refresh, has_refresh), (TokenKind::Access, true)] {
            if !present {
                continue;
            }
            // An access token already past its expiry needs no call to the OP.
            let expired = kind == TokenKind::Access && row.access_expires_at <= now;
            if expired {
                effects.outgoing.push(token_revoked_event(
                    &start.issuer,
                    &start.subject,
                    &start.platform_id,
                    &revocation_id,
                    &row.assertion_id,
                    kind,
                    RevocationOutcome::AlreadyInvalid,
                    now,
                    None,
                ));
            } else {
                pending += 1;
            }
            token_rows.push(revocation_token::ActiveModel {
                id: Set(format!("{revocation_id}:{}:{}", row.assertion_id, kind_str(kind))),
                revocation_id: Set(revocation_id.clone()),
                assertion_id: Set(row.assertion_id.clone()),
                token_kind: Set(kind_str(kind).into()),
                outcome: Set(if expired { "already_invalid".into() } else { "pending".into() }),
                attempts: Set(0),
                last_error: Set(None),
                next_attempt_at: Set(now),
                done_at: Set(expired.then_some(now)),
            });
        }
        if pending == 0 {
            nothing_left.push(row.assertion_id.clone());
        }
    }
    if !rows.is_empty() {
        assertion::Entity::update_many()
            .col_expr(assertion::Column::RevocationId, Some(revocation_id.clone()).into())
            .col_expr(assertion::Column::UpdatedAt, now.into())
            .filter(assertion::Column::AssertionId.is_in(rows.iter().map(|r| r.assertion_id.clone())))
            .exec(txn)
            .await?;
    }
    if !nothing_left.is_empty() {
        assertion::Entity::delete_many().filter(assertion::Column::AssertionId.is_in(nothing_left)).exec(txn).await?;
    }
    for chunk in token_rows.chunks(500) {
        revocation_token::Entity::insert_many(chunk.to_vec()).exec_without_returning(txn).await?;
    }

    // Every session a token of these assertions was handed out for, whenever it opened (the
    // consent lock orders hand-outs before or after this, never beside it); and sessions only
    // announced (no token from here) that opened before the end.
    let revoked: Vec<String> = rows.iter().map(|r| r.assertion_id.clone()).collect();
    let sessions = view_session::Entity::find()
        .filter(view_session::Column::Issuer.eq(start.issuer.clone()))
        .filter(view_session::Column::Subject.eq(start.subject.clone()))
        .filter(view_session::Column::PlatformId.eq(start.platform_id.clone()))
        .filter(view_session::Column::ClosedAt.is_null())
        .filter(view_session::Column::WipedAt.is_null())
        .filter(view_session::Column::WipeId.is_null())
        .filter(
            Condition::any().add(view_session::Column::AssertionId.is_in(revoked)).add(
                Condition::all()
                    .add(view_session::Column::AssertionId.is_null())
                    .add(view_session::Column::OpenedAt.lte(start.until)),
            ),
        )
        .all(txn)
        .await?;
    schedule_wipes(
        txn,
        &revocation_id,
        &start.issuer,
        &start.subject,
        &start.platform_id,
        start.wipe_reason,
        sessions,
        now,
    )
    .await?;
    effects.touched_revocations.insert(revocation_id);
    effects.new_work = true;
    Ok(true)
}

fn wipe_reason(reason: custodian_events::EndReason) -> &'static str {
    match reason {
        custodian_events::EndReason::Incident => "incident",
        _ => "consent_ended",
    }
}

pub(crate) fn kind_str(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Refresh => "refresh",
        TokenKind::Access => "access",
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn token_revoked_event(
    issuer: &str,
    subject: &str,
    platform_id: &str,
    revocation_id: &str,
    assertion_id: &str,
    kind: TokenKind,
    outcome: RevocationOutcome,
    at: DateTime<Utc>,
    traceparent: Option<String>,
) -> custodian_store::outbox::OutgoingEvent {
    let data = TokenRevokedV1 {
        issuer: issuer.to_owned(),
        subject: subject.to_owned(),
        platform_id: platform_id.to_owned(),
        token_kind: kind,
        outcome,
        cause_event_id: revocation_id.to_owned(),
    };
    let id = derived_event_id("token.revoked", &format!("{revocation_id}:{assertion_id}:{}", kind_str(kind)));
    let event = CloudEvent::with_id(id, SOURCE, at, data);
    let mut row = custodian_bus::outbox_row(subjects::TOKEN_REVOKED, &event);
    // Relayed under the span that settled it (the OP call), else the current one.
    if traceparent.is_some() {
        row.traceparent = traceparent;
    }
    row
}

/// One pending wipe per view for `sessions` (each session marked with its wipe).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn schedule_wipes<C: ConnectionTrait>(
    conn: &C,
    revocation_id: &str,
    issuer: &str,
    subject: &str,
    platform_id: &str,
    reason: &str,
    sessions: Vec<view_session::Model>,
    now: DateTime<Utc>,
) -> Result<usize, VaultError> {
    let mut by_view: BTreeMap<String, Vec<view_session::Model>> = BTreeMap::new();
    for session in sessions {
        by_view.entry(session.view_id.clone()).or_default().push(session);
    }
    let mut wipes = Vec::new();
    for (view_id, sessions) in by_view {
        let wipe_id = derived_event_id("session.wipe", &format!("{revocation_id}:{view_id}"));
        let expires_at = sessions.iter().map(|s| s.expires_at).max().unwrap_or(now);
        let ids: Vec<String> = sessions.iter().map(|s| s.session_id.clone()).collect();
        for chunk in ids.chunks(500) {
            view_session::Entity::update_many()
                .col_expr(view_session::Column::WipeId, Some(wipe_id.clone()).into())
                .filter(view_session::Column::SessionId.is_in(chunk.to_vec()))
                .exec(conn)
                .await?;
        }
        // Sessions already past their expiry hold nothing any more (the SDK evicted it).
        let state = if expires_at <= now { "expired_by_ttl" } else { "pending" };
        wipes.push(pending_wipe::ActiveModel {
            wipe_id: Set(wipe_id),
            revocation_id: Set(Some(revocation_id.to_owned())),
            view_id: Set(view_id),
            issuer: Set(issuer.to_owned()),
            subject: Set(subject.to_owned()),
            platform_id: Set(platform_id.to_owned()),
            reason: Set(reason.to_owned()),
            session_ids: Set(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into())),
            expires_at: Set(expires_at),
            state: Set(state.into()),
            attempts: Set(0),
            next_attempt_at: Set(now),
            sent_at: Set(None),
            acked_at: Set(None),
            created_at: Set(now),
        });
    }
    let count = wipes.len();
    for wipe in wipes {
        pending_wipe::Entity::insert(wipe)
            .on_conflict(OnConflict::column(pending_wipe::Column::WipeId).do_nothing().to_owned())
            .exec_without_returning(conn)
            .await?;
    }
    Ok(count)
}

async fn session_opened(
    _vault: &Vault,
    txn: &DatabaseTransaction,
    event: &CloudEvent<SessionOpenedV1>,
    now: DateTime<Utc>,
    effects: &mut Effects,
) -> Result<(), VaultError> {
    let data = &event.data;
    locks::hold(
        txn,
        &[LockOn::Consent { issuer: &data.issuer, subject: &data.subject, platform_id: &data.platform_id }],
    )
    .await?;
    let row = view_session::ActiveModel {
        session_id: Set(data.session_id.clone()),
        view_id: Set(data.view_id.clone()),
        issuer: Set(data.issuer.clone()),
        subject: Set(data.subject.clone()),
        platform_id: Set(data.platform_id.clone()),
        expires_at: Set(data.expires_at),
        opened_at: Set(event.time),
        closed_at: Set(None),
        wipe_id: Set(None),
        wiped_at: Set(None),
        assertion_id: Set(None),
    };
    let inserted = view_session::Entity::insert(row.clone())
        .on_conflict(OnConflict::column(view_session::Column::SessionId).do_nothing().to_owned())
        .exec_without_returning(txn)
        .await?;
    if inserted == 0 {
        return Ok(());
    }
    // Arriving after a revocation of this person that it predates (replicas, redelivery):
    // it must be wiped too.
    let late_for = revocation::Entity::find()
        .filter(revocation::Column::Issuer.eq(data.issuer.clone()))
        .filter(revocation::Column::Subject.eq(data.subject.clone()))
        .filter(revocation::Column::PlatformId.eq(data.platform_id.clone()))
        .filter(revocation::Column::StartedAt.gte(event.time))
        .one(txn)
        .await?;
    if let Some(revocation) = late_for {
        let model = view_session::Model {
            session_id: data.session_id.clone(),
            view_id: data.view_id.clone(),
            issuer: data.issuer.clone(),
            subject: data.subject.clone(),
            platform_id: data.platform_id.clone(),
            expires_at: data.expires_at,
            opened_at: event.time,
            closed_at: None,
            wipe_id: None,
            wiped_at: None,
            assertion_id: None,
        };
        // Its own wipe id (the revocation's per-view wipe may already be acked).
        let late_id = format!("{}:late:{}", revocation.revocation_id, data.session_id);
        schedule_wipes(
            txn,
            &late_id,
            &data.issuer,
            &data.subject,
            &data.platform_id,
            "consent_ended",
            vec![model],
            now,
        )
        .await?;
        pending_wipe::Entity::update_many()
            .col_expr(pending_wipe::Column::RevocationId, Some(revocation.revocation_id.clone()).into())
            .filter(
                pending_wipe::Column::WipeId
                    .eq(derived_event_id("session.wipe", &format!("{late_id}:{}", data.view_id))),
            )
            .exec(txn)
            .await?;
        effects.reopened.insert(revocation.revocation_id.clone());
        tracing::info!(revocation_id = %revocation.revocation_id, view_id = %data.view_id, "late session scheduled for wipe");
        effects.new_work = true;
    }
    Ok(())
}

/// What a batch's wipe acks will write, read before any lock is taken.
pub(crate) struct AckPlan {
    /// Each ack's place in the batch and its verdict.
    results: Vec<(usize, Result<(), VaultError>)>,
    /// Wipes to mark acked, and sessions to mark wiped, in key order.
    to_ack: BTreeSet<String>,
    sessions: BTreeSet<String>,
    /// The revocations those wipes belong to.
    pub revocations: BTreeSet<String>,
}

/// Views' acknowledgements of wipes (`at`: each one's place in the batch), checked against the
/// wipes sent. An ack for a wipe never sent (another deployment, or purged long ago) records
/// nothing; one from another view than the wipe was sent to is refused.
async fn plan_acks(txn: &DatabaseTransaction, acks: &[(usize, &SessionWipedV1)]) -> Result<AckPlan, VaultError> {
    let mut plan = AckPlan {
        results: Vec::with_capacity(acks.len()),
        to_ack: BTreeSet::new(),
        sessions: BTreeSet::new(),
        revocations: BTreeSet::new(),
    };
    if acks.is_empty() {
        return Ok(plan);
    }
    let ids: BTreeSet<&str> = acks.iter().map(|(_, data)| data.wipe_id.as_str()).collect();
    let ids: Vec<&str> = ids.into_iter().collect();
    let mut known: HashMap<String, pending_wipe::Model> = HashMap::new();
    for chunk in ids.chunks(500) {
        let found = pending_wipe::Entity::find()
            .filter(pending_wipe::Column::WipeId.is_in(chunk.iter().copied()))
            .all(txn)
            .await?;
        known.extend(found.into_iter().map(|w| (w.wipe_id.clone(), w)));
    }
    for (at, data) in acks {
        let result = match known.get(&data.wipe_id) {
            None => {
                tracing::debug!(wipe_id = %data.wipe_id, "ack for an unknown wipe");
                Ok(())
            }
            Some(wipe) if wipe.view_id != data.view_id => Err(VaultError::Invalid(format!(
                "wipe {} was sent to view {}, not {}",
                wipe.wipe_id, wipe.view_id, data.view_id
            ))),
            Some(wipe) if !names_only_its_sessions(wipe, &data.session_ids) => Err(VaultError::Invalid(format!(
                "the ack of wipe {} names sessions that wipe did not ask view {} to wipe",
                wipe.wipe_id, wipe.view_id
            ))),
            Some(wipe) => {
                if wipe.state != "acked" {
                    plan.to_ack.insert(wipe.wipe_id.clone());
                }
                plan.sessions.extend(data.session_ids.iter().cloned());
                if let Some(revocation_id) = &wipe.revocation_id {
                    plan.revocations.insert(revocation_id.clone());
                }
                Ok(())
            }
        };
        plan.results.push((*at, result));
    }
    Ok(plan)
}

/// Writes what [`plan_acks`] found: the wipes marked acked and their sessions wiped, in key
/// order, with one statement per 500 of each.
async fn apply_acks(
    vault: &Vault,
    txn: &DatabaseTransaction,
    plan: AckPlan,
    now: DateTime<Utc>,
) -> Result<Vec<(usize, Result<(), VaultError>)>, VaultError> {
    let to_ack: Vec<String> = plan.to_ack.into_iter().collect();
    for chunk in to_ack.chunks(500) {
        let acked = pending_wipe::Entity::update_many()
            .col_expr(pending_wipe::Column::State, "acked".into())
            .col_expr(pending_wipe::Column::AckedAt, Some(now).into())
            .filter(pending_wipe::Column::WipeId.is_in(chunk.iter().cloned()))
            .filter(pending_wipe::Column::State.ne("acked"))
            .exec(txn)
            .await?;
        vault.metrics.wipes_acked.inc_by(acked.rows_affected);
    }
    let sessions: Vec<String> = plan.sessions.into_iter().collect();
    for chunk in sessions.chunks(500) {
        view_session::Entity::update_many()
            .col_expr(view_session::Column::WipedAt, Some(now).into())
            .filter(view_session::Column::SessionId.is_in(chunk.iter().cloned()))
            .filter(view_session::Column::WipedAt.is_null())
            .exec(txn)
            .await?;
    }
    Ok(plan.results)
}

/// Sets back to pending the revocations a late session gave a new wipe (their locks held).
async fn reopen(txn: &DatabaseTransaction, revocations: &HashSet<String>) -> Result<(), VaultError> {
    if revocations.is_empty() {
        return Ok(());
    }
    let mut ids: Vec<String> = revocations.iter().cloned().collect();
    ids.sort();
    revocation::Entity::update_many()
        .col_expr(revocation::Column::State, "pending".into())
        .col_expr(revocation::Column::FinishedAt, Option::<DateTime<Utc>>::None.into())
        .filter(revocation::Column::RevocationId.is_in(ids))
        .exec(txn)
        .await?;
    Ok(())
}

/// The person's consent an event changes or depends on, if any.
fn consent_of(event: &LifecycleEvent) -> Option<LockOn<'_>> {
    let (issuer, subject, platform_id) = match event {
        LifecycleEvent::ConsentEnded(e) => (&e.data.issuer, &e.data.subject, &e.data.platform_id),
        LifecycleEvent::SessionOpened(e) => (&e.data.issuer, &e.data.subject, &e.data.platform_id),
        LifecycleEvent::SessionRevoke(e) => (&e.data.issuer, &e.data.subject, &e.data.platform_id),
        _ => return None,
    };
    Some(LockOn::Consent { issuer, subject, platform_id })
}

/// Does an ack name only sessions of the wipe it acknowledges? A view acks what it was told
/// to wipe; anything else would mark another view's (or person's) session wiped.
fn names_only_its_sessions(wipe: &pending_wipe::Model, acked: &[String]) -> bool {
    let asked: HashSet<String> =
        serde_json::from_str::<Vec<String>>(&wipe.session_ids).unwrap_or_default().into_iter().collect();
    acked.iter().all(|s| asked.contains(s))
}

/// The OP ended the person's session (back-channel logout, CAEP): tokens revoked and views
/// wiped like a revocation, the consent untouched, and their web sessions here ended too.
async fn end_sessions(
    vault: &Vault,
    txn: &DatabaseTransaction,
    event: &CloudEvent<custodian_events::SessionRevokeV1>,
    now: DateTime<Utc>,
    effects: &mut Effects,
) -> Result<(), VaultError> {
    use custodian_events::SessionEndCause;
    let data = &event.data;
    let start = RevocationStart {
        revocation_id: format!("session:{}", data.cause_id),
        ended_event_id: event.id.clone(),
        issuer: data.issuer.clone(),
        subject: data.subject.clone(),
        platform_id: data.platform_id.clone(),
        reason: serde_json::to_value(data.cause).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
        wipe_reason: match data.cause {
            SessionEndCause::AssuranceDropped => "assurance_dropped",
            _ => "session_revoked",
        },
        until: event.time.max(now),
    };
    begin_revocation(vault, txn, &start, now, effects).await?;
    custodian_store::entities::web_session::Entity::delete_many()
        .filter(custodian_store::entities::web_session::Column::Issuer.eq(data.issuer.clone()))
        .filter(custodian_store::entities::web_session::Column::Subject.eq(data.subject.clone()))
        .filter(custodian_store::entities::web_session::Column::PlatformId.eq(data.platform_id.clone()))
        .exec(txn)
        .await?;
    Ok(())
}
