//! Carries out revocations: revokes due tokens at the OP, sends due wipes to views, finishes
//! revocations whose tokens and wipes are all settled. Work is claimed in the database
//! (`next_attempt_at` moved forward in one conditional UPDATE), so replicas never do the same
//! item at once and anything a crashed replica claimed comes due again by itself. Whoever
//! settles an item (a token's outcome here, a view's ack in the handler) locks its revocation
//! first and marks it done in the same transaction when nothing is left, so of two concurrent
//! finishers the second sees the first's work.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use custodian_bus::Outgoing;
use custodian_events::{
    CloudEvent, RevocationOutcome, SessionWipeV1, TokenKind, WipeReason, derived_event_id, subjects,
};
use custodian_store::entities::{assertion, pending_wipe, revocation, revocation_token};
use custodian_store::locks::{self, LockOn};
use custodian_store::outbox;
use futures::StreamExt;
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{SERVICE, SOURCE, Vault, VaultError, assertions, handler};

const CLAIM_BATCH: u64 = 500;
/// How often the safety net for revocations left pending runs (see [`finish_stragglers`]).
const STRAGGLER_SWEEP_EVERY: Duration = Duration::from_secs(30);

pub(crate) async fn run(vault: Arc<Vault>, shutdown: CancellationToken) -> Result<(), VaultError> {
    let period = Duration::from_millis(vault.config.reconcile_every_ms.max(10));
    let straggler_period = STRAGGLER_SWEEP_EVERY;
    let mut next_straggler_sweep = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_straggler_sweep {
            next_straggler_sweep = tokio::time::Instant::now() + straggler_period;
            if let Err(e) = finish_stragglers(&vault).await {
                tracing::warn!(error = %e, "finishing settled revocations failed; will retry");
            }
        }
        match round(&vault).await {
            // More may be due right away (a full claim): go again without waiting.
            Ok(done) if done >= CLAIM_BATCH as usize => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "revocation round failed; will retry"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = vault.work.notified() => {}
            () = tokio::time::sleep(period) => {}
        }
    }
}

/// One pass over what is due. Returns how many items it handled.
pub(crate) async fn round(vault: &Vault) -> Result<usize, VaultError> {
    // Wipes first: they are cheap and the views are waiting; the OP calls follow.
    // Each settles its items and finishes their revocations in one transaction.
    let wipes = send_due_wipes(vault).await?;
    let tokens = revoke_due_tokens(vault).await?;
    Ok(wipes + tokens)
}

async fn send_due_wipes(vault: &Vault) -> Result<usize, VaultError> {
    let now = vault.clock.now();
    let db = vault.store.db();
    let due: Vec<pending_wipe::Model> = pending_wipe::Entity::find()
        .filter(pending_wipe::Column::State.eq("pending"))
        .filter(pending_wipe::Column::NextAttemptAt.lte(now))
        .order_by_asc(pending_wipe::Column::NextAttemptAt)
        .limit(CLAIM_BATCH)
        .all(db)
        .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut outgoing = Vec::new();
    let mut expired = Vec::new();
    // Claim: one conditional UPDATE per retry level; a row another replica claimed
    // meanwhile (its attempts moved on) is not returned, so only one replica sends it.
    // In key order, as every writer of these rows locks them (the handler's acks too).
    let mut by_attempts: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for wipe in &due {
        by_attempts.entry(wipe.attempts).or_default().push(wipe.wipe_id.clone());
    }
    let mut claimed = Vec::new();
    for (attempts, mut ids) in by_attempts {
        ids.sort_unstable();
        let next = now + vault.config.retry_delay(attempts);
        for chunk in ids.chunks(500) {
            claimed.extend(
                pending_wipe::Entity::update_many()
                    .col_expr(pending_wipe::Column::NextAttemptAt, next.into())
                    .col_expr(pending_wipe::Column::Attempts, (attempts + 1).into())
                    .col_expr(pending_wipe::Column::SentAt, Some(now).into())
                    .filter(pending_wipe::Column::WipeId.is_in(chunk.to_vec()))
                    .filter(pending_wipe::Column::State.eq("pending"))
                    .filter(pending_wipe::Column::Attempts.eq(attempts))
                    .exec_with_returning(db)
                    .await?,
            );
        }
    }
    let traces = revocation_traces(vault, claimed.iter().filter_map(|w| w.revocation_id.clone())).await?;
    let mut spans = Vec::new();
    for wipe in claimed {
        if wipe.expires_at <= now {
            expired.push(wipe);
            continue;
        }
        // Each command continues its revocation's trace; the view's ack continues the command's.
        let span = tracing::info_span!(
            "send_wipe",
            otel.kind = "producer",
            wipe_id = %wipe.wipe_id,
            view_id = %wipe.view_id,
            revocation_id = wipe.revocation_id.as_deref().unwrap_or(""),
            attempt = wipe.attempts,
        );
        let parent = wipe.revocation_id.as_ref().and_then(|id| traces.get(id)).map(String::as_str);
        custodian_telemetry::adopt_remote_parent(&span, parent);
        match span.in_scope(|| wipe_command(&wipe)) {
            Some(out) => {
                outgoing.push(out);
                spans.push(span);
            }
            None => tracing::error!(wipe_id = %wipe.wipe_id, "wipe not sendable (bad view id or session list)"),
        }
    }
    if !expired.is_empty() {
        // Their sessions' data is gone by itself: settled, and their revocations may be done.
        vault.metrics.wipes_expired.inc_by(expired.len() as u64);
        let touched: HashSet<String> = expired.iter().filter_map(|w| w.revocation_id.clone()).collect();
        let txn = vault.store.begin_write().await?;
        hold_revocations(&txn, &touched).await?;
        pending_wipe::Entity::update_many()
            .col_expr(pending_wipe::Column::State, "expired_by_ttl".into())
            .filter(pending_wipe::Column::WipeId.is_in(expired.into_iter().map(|w| w.wipe_id)))
            .filter(pending_wipe::Column::State.eq("pending"))
            .exec(&txn)
            .await?;
        finish_revocations(vault, &txn, &touched).await?;
        txn.commit().await?;
    }
    let sent = outgoing.len();
    let published = vault.bus.publish_all(&outgoing, 256).await;
    drop(spans);
    for (result, out) in published.into_iter().zip(&outgoing) {
        match result {
            Ok(()) => {
                vault.metrics.wipes_sent.inc();
            }
            // Claimed but not sent: it comes due again after the retry delay.
            Err(e) => tracing::warn!(subject = %out.subject, error = %e, "wipe not published; will resend"),
        }
    }
    Ok(sent)
}

/// The trace context each of these revocations started in (those that have one).
async fn revocation_traces(
    vault: &Vault,
    ids: impl Iterator<Item = String>,
) -> Result<HashMap<String, String>, VaultError> {
    let ids: Vec<String> = ids.collect::<HashSet<_>>().into_iter().collect();
    let mut traces = HashMap::new();
    for chunk in ids.chunks(500) {
        let rows: Vec<(String, Option<String>)> = revocation::Entity::find()
            .select_only()
            .column(revocation::Column::RevocationId)
            .column(revocation::Column::Traceparent)
            .filter(revocation::Column::RevocationId.is_in(chunk.to_vec()))
            .into_tuple()
            .all(vault.store.db())
            .await?;
        traces.extend(rows.into_iter().filter_map(|(id, tp)| Some((id, tp?))));
    }
    Ok(traces)
}

/// Locks the revocations a transaction is about to settle items of (see `custodian_store::locks`).
pub(crate) async fn hold_revocations<C: ConnectionTrait>(conn: &C, ids: &HashSet<String>) -> Result<(), VaultError> {
    let on: Vec<LockOn<'_>> = ids.iter().map(|id| LockOn::Revocation(id)).collect();
    locks::hold(conn, &on).await?;
    Ok(())
}

fn wipe_command(wipe: &pending_wipe::Model) -> Option<Outgoing> {
    let subject = subjects::session_wipe(&wipe.view_id)?;
    let session_ids: Vec<String> = serde_json::from_str(&wipe.session_ids).ok()?;
    let reason = match wipe.reason.as_str() {
        "incident" => WipeReason::Incident,
        "session_revoked" => WipeReason::SessionRevoked,
        "assurance_dropped" => WipeReason::AssuranceDropped,
        _ => WipeReason::ConsentEnded,
    };
    let data = SessionWipeV1 {
        wipe_id: wipe.wipe_id.clone(),
        session_ids,
        issuer: wipe.issuer.clone(),
        subject: wipe.subject.clone(),
        platform_id: wipe.platform_id.clone(),
        reason,
    };
    // Each send is a new message (its own id), the wipe id inside stays the same.
    let id = derived_event_id("session.wipe.send", &format!("{}:{}", wipe.wipe_id, wipe.attempts));
    let time = wipe.sent_at.unwrap_or(wipe.created_at);
    let event = CloudEvent::with_id(id, SOURCE, time, data);
    Some(Outgoing::event(&subject, &event))
}

struct Claimed {
    token: revocation_token::Model,
}

async fn revoke_due_tokens(vault: &Vault) -> Result<usize, VaultError> {
    let now = vault.clock.now();
    let db = vault.store.db();
    let due: Vec<revocation_token::Model> = revocation_token::Entity::find()
        .filter(revocation_token::Column::Outcome.eq("pending"))
        .filter(revocation_token::Column::NextAttemptAt.lte(now))
        .order_by_asc(revocation_token::Column::NextAttemptAt)
        .limit(CLAIM_BATCH)
        .all(db)
        .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let claim_until = now + chrono::Duration::seconds(vault.config.claim_secs.max(1) as i64);
    let ids: Vec<String> = due.iter().map(|t| t.id.clone()).collect();
    // One statement claims the lot; rows another replica claimed meanwhile no longer match.
    let mut claimed = Vec::new();
    for chunk in ids.chunks(500) {
        let rows = revocation_token::Entity::update_many()
            .col_expr(revocation_token::Column::NextAttemptAt, claim_until.into())
            .filter(revocation_token::Column::Id.is_in(chunk.to_vec()))
            .filter(revocation_token::Column::Outcome.eq("pending"))
            .filter(revocation_token::Column::NextAttemptAt.lte(now))
            .exec_with_returning(db)
            .await?;
        claimed.extend(rows.into_iter().map(|token| Claimed { token }));
    }
    let assertion_ids: HashSet<String> = claimed.iter().map(|c| c.token.assertion_id.clone()).collect();
    let mut rows: HashMap<String, assertion::Model> = HashMap::new();
    let list: Vec<String> = assertion_ids.into_iter().collect();
    for chunk in list.chunks(500) {
        for row in
            assertion::Entity::find().filter(assertion::Column::AssertionId.is_in(chunk.to_vec())).all(db).await?
        {
            rows.insert(row.assertion_id.clone(), row);
        }
    }
    let rows = Arc::new(rows);
    let traces = Arc::new(revocation_traces(vault, claimed.iter().map(|c| c.token.revocation_id.clone())).await?);
    let handled = claimed.len();
    let claimed_ids: Vec<String> = claimed.iter().map(|c| c.token.id.clone()).collect();
    // Each call's span context, for its `token.revoked` (relayed under the call that settled it).
    let call_traces: Arc<std::sync::Mutex<HashMap<String, String>>> = Arc::default();
    let calls = futures::stream::iter(claimed.into_iter().map(|c| {
        let rows = rows.clone();
        let call_traces = call_traces.clone();
        // Each OP call continues its revocation's trace (the OP receives the context too).
        let span = tracing::info_span!(
            "revoke_token",
            otel.kind = "client",
            revocation_id = %c.token.revocation_id,
            token_kind = %c.token.token_kind,
            attempt = c.token.attempts + 1,
            outcome = tracing::field::Empty,
        );
        custodian_telemetry::adopt_remote_parent(&span, traces.get(&c.token.revocation_id).map(String::as_str));
        async move {
            let outcome = revoke_one(vault, &c.token, rows.get(&c.token.assertion_id)).await;
            let label = match &outcome {
                Ok(RevocationOutcome::Revoked) => "revoked",
                Ok(RevocationOutcome::AlreadyInvalid) => "already_invalid",
                Err(_) => "failed",
            };
            tracing::Span::current().record("outcome", label);
            if let (Some(tp), Ok(mut traces)) = (custodian_telemetry::current_traceparent(), call_traces.lock()) {
                traces.insert(c.token.id.clone(), tp);
            }
            (c.token, outcome)
        }
        .instrument(span)
    }))
    .buffer_unordered(vault.config.revoke_concurrency.max(1))
    .collect::<Vec<(revocation_token::Model, Result<RevocationOutcome, String>)>>();
    let outcomes = keep_claimed(vault, &claimed_ids, calls).await;

    let txn = vault.store.begin_write().await?;
    let touched: HashSet<String> = outcomes.iter().map(|(token, _)| token.revocation_id.clone()).collect();
    hold_revocations(&txn, &touched).await?;
    // Read once the locks are held: an outcome is never dated before a finisher that ran first.
    let now = vault.clock.now();
    let mut outgoing = Vec::new();
    let mut settled_assertions = HashSet::new();
    // Each revocation read once per round, however many of its tokens settled.
    let mut revocations: HashMap<String, revocation::Model> = HashMap::new();
    for (token, outcome) in outcomes {
        match outcome {
            Ok(outcome) => {
                let label = match outcome {
                    RevocationOutcome::Revoked => "revoked",
                    RevocationOutcome::AlreadyInvalid => "already_invalid",
                };
                vault.metrics.revoked(label);
                revocation_token::Entity::update_many()
                    .col_expr(revocation_token::Column::Outcome, label.into())
                    .col_expr(revocation_token::Column::DoneAt, Some(now).into())
                    .col_expr(revocation_token::Column::Attempts, (token.attempts + 1).into())
                    .col_expr(revocation_token::Column::LastError, Option::<String>::None.into())
                    .filter(revocation_token::Column::Id.eq(token.id.clone()))
                    .filter(revocation_token::Column::Outcome.eq("pending"))
                    .exec(&txn)
                    .await?;
                if !revocations.contains_key(&token.revocation_id)
                    && let Some(rev) = revocation::Entity::find_by_id(token.revocation_id.clone()).one(&txn).await?
                {
                    revocations.insert(rev.revocation_id.clone(), rev);
                }
                if let Some(rev) = revocations.get(&token.revocation_id) {
                    let kind = if token.token_kind == "refresh" { TokenKind::Refresh } else { TokenKind::Access };
                    outgoing.push(handler::token_revoked_event(
                        &rev.issuer,
                        &rev.subject,
                        &rev.platform_id,
                        &rev.revocation_id,
                        &token.assertion_id,
                        kind,
                        outcome,
                        now,
                        call_traces.lock().ok().and_then(|traces| traces.get(&token.id).cloned()),
                    ));
                }
                settled_assertions.insert(token.assertion_id.clone());
            }
            Err(reason) => {
                vault.metrics.revoked("failed");
                let next = now + vault.config.retry_delay(token.attempts);
                tracing::warn!(revocation_id = %token.revocation_id, kind = %token.token_kind, attempts = token.attempts + 1, %reason, "token revocation failed; will retry");
                revocation_token::Entity::update_many()
                    .col_expr(revocation_token::Column::NextAttemptAt, next.into())
                    .col_expr(revocation_token::Column::Attempts, (token.attempts + 1).into())
                    .col_expr(
                        revocation_token::Column::LastError,
                        Some(reason.chars().take(500).collect::<String>()).into(),
                    )
                    .filter(revocation_token::Column::Id.eq(token.id.clone()))
                    .filter(revocation_token::Column::Outcome.eq("pending"))
                    .exec(&txn)
                    .await?;
            }
        }
    }
    // The ciphertext goes as soon as none of its tokens is left to revoke.
    for assertion_id in settled_assertions {
        let left = revocation_token::Entity::find()
            .filter(revocation_token::Column::AssertionId.eq(assertion_id.clone()))
            .filter(revocation_token::Column::Outcome.eq("pending"))
            .count(&txn)
            .await?;
        if left == 0 {
            assertion::Entity::delete_by_id(assertion_id).exec(&txn).await?;
        }
    }
    // The revocations whose last token this round settled (their locks are held: no other
    // writer settles one of theirs meanwhile, so each is observed once).
    let settled: Vec<String> = revocations.keys().cloned().collect();
    let mut still_pending: HashSet<String> = HashSet::new();
    for chunk in settled.chunks(500) {
        let rows: Vec<String> = revocation_token::Entity::find()
            .select_only()
            .column(revocation_token::Column::RevocationId)
            .filter(revocation_token::Column::RevocationId.is_in(chunk.to_vec()))
            .filter(revocation_token::Column::Outcome.eq("pending"))
            .distinct()
            .into_tuple()
            .all(&txn)
            .await?;
        still_pending.extend(rows);
    }
    for rev in revocations.values().filter(|r| !still_pending.contains(&r.revocation_id)) {
        let took = (now - rev.started_at).to_std().unwrap_or_default();
        vault.metrics.tokens_phase_seconds.observe(took.as_secs_f64());
    }
    if !outgoing.is_empty() {
        outbox::enqueue(&txn, SERVICE, outgoing, now).await?;
    }
    finish_revocations(vault, &txn, &touched).await?;
    txn.commit().await?;
    vault.relay.wake();
    Ok(handled)
}

/// Runs the OP calls of a claim, renewing the claim every third of its period while they are
/// in flight: claims can be short (a crashed replica's tokens come due again within seconds)
/// whatever the OP's answer time.
async fn keep_claimed<T>(vault: &Vault, ids: &[String], calls: impl std::future::Future<Output = T>) -> T {
    let claim = Duration::from_secs(vault.config.claim_secs.max(1));
    tokio::pin!(calls);
    loop {
        tokio::select! {
            done = &mut calls => return done,
            () = tokio::time::sleep(claim / 3) => {
                let until = vault.clock.now() + chrono::Duration::from_std(claim).unwrap_or_default();
                for chunk in ids.chunks(500) {
                    let renewed = revocation_token::Entity::update_many()
                        .col_expr(revocation_token::Column::NextAttemptAt, until.into())
                        .filter(revocation_token::Column::Id.is_in(chunk.to_vec()))
                        .filter(revocation_token::Column::Outcome.eq("pending"))
                        .exec(vault.store.db())
                        .await;
                    if let Err(e) = renewed {
                        tracing::warn!(error = %e, "claim not renewed; another replica may revoke these tokens too");
                    }
                }
            }
        }
    }
}

async fn revoke_one(
    vault: &Vault,
    token: &revocation_token::Model,
    row: Option<&assertion::Model>,
) -> Result<RevocationOutcome, String> {
    let now = vault.clock.now();
    // Gone (expired and purged) or past its life: nothing left to revoke at the OP.
    let Some(row) = row else { return Ok(RevocationOutcome::AlreadyInvalid) };
    if row.expires_at <= now || (token.token_kind == "access" && row.access_expires_at <= now) {
        return Ok(RevocationOutcome::AlreadyInvalid);
    }
    let bundle = assertions::open(&vault.keyring, row).map_err(|e| e.to_string())?;
    let (secret, kind) = if token.token_kind == "refresh" {
        match bundle.refresh() {
            Some(refresh) => (refresh, custodian_oidc::TokenKind::Refresh),
            None => return Ok(RevocationOutcome::AlreadyInvalid),
        }
    } else {
        (bundle.access(), custodian_oidc::TokenKind::Access)
    };
    drop(bundle);
    let secret = &secret;
    crate::incident::with_client(vault, &row.platform_id, |client| async move { client.revoke(secret, kind).await })
        .await
        .map(|()| RevocationOutcome::Revoked)
        .map_err(|e| e.to_string())
}

/// How often the pending-work gauges are read.
const GAUGES_EVERY: Duration = Duration::from_secs(5);

/// Keeps the pending-work gauges current until `shutdown`.
pub(crate) async fn gauges(vault: Arc<Vault>, shutdown: CancellationToken) -> Result<(), VaultError> {
    loop {
        if let Err(e) = read_gauges(&vault).await {
            tracing::debug!(error = %e, "vault gauges not read");
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(GAUGES_EVERY) => {}
        }
    }
}

async fn read_gauges(vault: &Vault) -> Result<(), VaultError> {
    let db = vault.store.db();
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let wipes = pending_wipe::Entity::find().filter(pending_wipe::Column::State.eq("pending")).count(db).await?;
    let tokens =
        revocation_token::Entity::find().filter(revocation_token::Column::Outcome.eq("pending")).count(db).await?;
    let pending = revocation::Entity::find().filter(revocation::Column::State.eq("pending"));
    let revocations = pending.clone().count(db).await?;
    let oldest: Option<DateTime<Utc>> = pending
        .select_only()
        .column_as(revocation::Column::StartedAt.min(), "oldest")
        .into_tuple::<Option<DateTime<Utc>>>()
        .one(db)
        .await?
        .flatten();
    let metrics = &vault.metrics;
    metrics.pending_wipes.set(count(wipes));
    metrics.pending_token_revocations.set(count(tokens));
    metrics.pending_revocations.set(count(revocations));
    let age = oldest.map_or(0.0, |at| (vault.clock.now() - at).to_std().unwrap_or_default().as_secs_f64());
    metrics.oldest_pending_revocation_seconds.set(age);
    Ok(())
}

/// A safety net: finishes revocations whose every item is settled but that are still pending.
/// Every writer that settles an item locks its revocation first and checks it in the same
/// transaction, so this finds something only when an item was settled some other way (by hand
/// in the database, or by a replica of an earlier version). Only revocations unchanged for a
/// claim period are looked at. `revocations_by_state` (state, updated_at) finds them.
pub(crate) async fn finish_stragglers(vault: &Vault) -> Result<(), VaultError> {
    let now = vault.clock.now();
    let unchanged_since = now - chrono::Duration::seconds(vault.config.claim_secs.max(1) as i64);
    let txn = vault.store.begin_write().await?;
    let done = finish_where(&txn, revocation::Column::UpdatedAt.lte(unchanged_since), None, None, now).await?;
    let mut found = Vec::new();
    if done > 0 {
        found = observe_finished(vault, &txn, None, now).await?;
    }
    txn.commit().await?;
    if done > 0 {
        vault.metrics.revocations_done.inc_by(done);
        found.truncate(10);
        tracing::warn!(
            count = done,
            revocation_ids = %found.join(","),
            "found revocations with every token and wipe settled but not marked done, and finished them; \
             their items were settled outside the vault's own transactions"
        );
    }
    Ok(())
}

/// Marks done every touched revocation with no token and no wipe left pending. Called with the
/// touched revocations' locks held; dated then, so never before the outcomes it follows.
pub(crate) async fn finish_revocations<C: ConnectionTrait>(
    vault: &Vault,
    conn: &C,
    touched: &HashSet<String>,
) -> Result<(), VaultError> {
    if touched.is_empty() {
        return Ok(());
    }
    let now = vault.clock.now();
    // Sorted: concurrent transactions then lock rows in the same order (no deadlock).
    let mut ids: Vec<String> = touched.iter().cloned().collect();
    ids.sort();
    for chunk in ids.chunks(500) {
        use sea_orm::sea_query::ExprTrait as _;
        let done = finish_where(
            conn,
            revocation::Column::RevocationId.is_in(chunk.to_vec()),
            Some(Expr::col(revocation_token::Column::RevocationId).is_in(chunk.to_vec())),
            Some(Expr::col(pending_wipe::Column::RevocationId).is_in(chunk.to_vec())),
            now,
        )
        .await?;
        if done > 0 {
            vault.metrics.revocations_done.inc_by(done);
            observe_finished(vault, conn, Some(chunk), now).await?;
            tracing::debug!(count = done, "revocations finished");
        }
    }
    Ok(())
}

/// Records how long each revocation just finished (at `now`, among `ids` when given) took;
/// returns their ids.
async fn observe_finished<C: ConnectionTrait>(
    vault: &Vault,
    conn: &C,
    ids: Option<&[String]>,
    now: DateTime<Utc>,
) -> Result<Vec<String>, VaultError> {
    let mut finished = revocation::Entity::find()
        .filter(revocation::Column::State.eq("done"))
        .filter(revocation::Column::FinishedAt.eq(now));
    if let Some(ids) = ids {
        finished = finished.filter(revocation::Column::RevocationId.is_in(ids.to_vec()));
    }
    let mut found = Vec::new();
    for row in finished.all(conn).await? {
        let took = (now - row.started_at).to_std().unwrap_or_default();
        vault.metrics.revocation_seconds.observe(took.as_secs_f64());
        found.push(row.revocation_id);
    }
    Ok(found)
}

/// Marks done the pending revocations that `revocations` selects and that have no token and no
/// wipe left pending (`tokens` and `wipes`, when given, narrow those subqueries to the same
/// revocations). Returns how many it marked.
async fn finish_where<C: ConnectionTrait>(
    conn: &C,
    revocations: Expr,
    tokens: Option<Expr>,
    wipes: Option<Expr>,
    now: DateTime<Utc>,
) -> Result<u64, VaultError> {
    // Imported here only: its `max` would shadow `Ord::max` on integers elsewhere.
    use sea_orm::sea_query::ExprTrait as _;
    let mut pending_tokens = Query::select()
        .column(revocation_token::Column::RevocationId)
        .from(revocation_token::Entity)
        .and_where(Expr::col(revocation_token::Column::Outcome).eq("pending"))
        .to_owned();
    if let Some(tokens) = tokens {
        pending_tokens.and_where(tokens);
    }
    // `NOT IN` a list holding a NULL is never true: wipes of a closed session have no revocation.
    let mut pending_wipes = Query::select()
        .column(pending_wipe::Column::RevocationId)
        .from(pending_wipe::Entity)
        .and_where(Expr::col(pending_wipe::Column::State).eq("pending"))
        .and_where(Expr::col(pending_wipe::Column::RevocationId).is_not_null())
        .to_owned();
    if let Some(wipes) = wipes {
        pending_wipes.and_where(wipes);
    }
    let done = revocation::Entity::update_many()
        .col_expr(revocation::Column::State, "done".into())
        .col_expr(revocation::Column::FinishedAt, Some(now).into())
        .col_expr(revocation::Column::UpdatedAt, now.into())
        .filter(revocations)
        .filter(revocation::Column::State.eq("pending"))
        .filter(revocation::Column::AwaitsStream.eq(false))
        .filter(revocation::Column::RevocationId.not_in_subquery(pending_tokens))
        .filter(revocation::Column::RevocationId.not_in_subquery(pending_wipes))
        .exec(conn)
        .await?;
    Ok(done.rows_affected)
}
