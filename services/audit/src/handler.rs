//! Appends each batch to the chain in stream order: skip event ids already chained, link each
//! new entry to the tail, record holder-of-key uses in the privacy log with the caller identity
//! sealed, and sign a checkpoint every `checkpoint_every` entries. A batch is one transaction,
//! or on PostgreSQL [`LANES`] transactions inserting side by side and committing in order.
//! On PostgreSQL an advisory lock serialises a redo against other replicas (one chain, one tail).

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use custodian_bus::{BatchHandler, Delivery, HandlerError};
use custodian_events::LifecycleEvent;
use custodian_store::entities::{audit_checkpoint, audit_entry, privacy_entry};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement,
};

use crate::{Audit, AuditError, chain};

/// Arbitrary constant naming the chain's lock in `pg_advisory_xact_lock`.
const CHAIN_LOCK: i64 = 0x6175_6469_7443_6861;
/// What replaces the caller identity in the chained payload of `token.hok_used`.
pub const SEALED_IDENTITY: &str = "[sealed in privacy_log]";

#[derive(Debug, Clone)]
pub struct ChainHandler {
    pub(crate) audit: Arc<Audit>,
}

impl BatchHandler for ChainHandler {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Result<(), HandlerError>> {
        match append(&self.audit, batch).await {
            Ok(()) => batch.iter().map(|_| Ok(())).collect(),
            Err(e) => {
                tracing::warn!(error = %e, size = batch.len(), "audit batch not chained");
                batch.iter().map(|_| Err(HandlerError::Transient(e.to_string()))).collect()
            }
        }
    }
}

/// The payload as chained: the event exactly as it was on the wire, except that a caller
/// identity is sealed away (that event is re-encoded without it).
fn recorded_payload(delivery: &Delivery) -> String {
    match &delivery.event {
        LifecycleEvent::TokenHokUsed(e) => {
            let mut redacted = e.clone();
            redacted.data.caller_identity = SEALED_IDENTITY.to_owned();
            String::from_utf8_lossy(&LifecycleEvent::TokenHokUsed(redacted).to_json()).into_owned()
        }
        // `from_utf8` first: its ASCII fast path checks a payload several times faster than
        // the lossy decoder, and a payload that decoded as an event is UTF-8 in practice.
        _ => match std::str::from_utf8(&delivery.raw) {
            Ok(payload) => payload.to_owned(),
            Err(_) => String::from_utf8_lossy(&delivery.raw).into_owned(),
        },
    }
}

pub(crate) async fn lock_chain<C: ConnectionTrait>(conn: &C) -> Result<(), sea_orm::DbErr> {
    if conn.get_database_backend() == DbBackend::Postgres {
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [CHAIN_LOCK.into()],
        ))
        .await?;
    }
    Ok(())
}

pub(crate) async fn tail<C: ConnectionTrait>(conn: &C) -> Result<(i64, String), sea_orm::DbErr> {
    Ok(audit_entry::Entity::find()
        .order_by_desc(audit_entry::Column::Seq)
        .limit(1)
        .one(conn)
        .await?
        .map_or((0, chain::GENESIS.to_owned()), |e| (e.seq, e.hash)))
}

/// Appends optimistically: a batch rarely holds an event already chained (only redeliveries
/// do) and the tail is usually the one this service committed last. If a unique index says
/// otherwise (`event_id`: a redelivery; `seq`: another replica moved the tail), the batch is
/// redone under the chain lock, from the tail read back, checking each id.
async fn append(audit: &Audit, batch: &[Delivery]) -> Result<(), AuditError> {
    let result = match append_checked(audit, batch, false).await {
        Err(AuditError::Db(e)) if matches!(e.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))) => {
            tracing::debug!(size = batch.len(), "batch holds events already chained or the tail moved; redoing it");
            append_checked(audit, batch, true).await
        }
        other => other,
    };
    if result.is_err() {
        set_known_tail(audit, None);
    }
    result
}

fn known_tail(audit: &Audit) -> std::sync::MutexGuard<'_, Option<(i64, String)>> {
    audit.known_tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn set_known_tail(audit: &Audit, tail: Option<(i64, String)>) {
    *known_tail(audit) = tail;
}

async fn append_checked(audit: &Audit, batch: &[Delivery], check_existing: bool) -> Result<(), AuditError> {
    let now = audit.clock.now();
    // A redo reads the tail back: the remembered one is what was just refused.
    let known = if check_existing { None } else { known_tail(audit).clone() };
    let (mut locked, seq, prev, chained) = match known {
        Some((seq, prev)) => (None, seq, prev, HashSet::new()),
        None => {
            let txn = audit.store.begin_write().await?;
            lock_chain(&txn).await?;
            let (seq, prev) = tail(&txn).await?;
            let chained = if check_existing { already_chained(&txn, batch).await? } else { HashSet::new() };
            (Some(txn), seq, prev, chained)
        }
    };
    let chunks: Vec<&[Delivery]> = batch.chunks(INSERT_CHUNK).collect();
    // Side by side only on PostgreSQL (SQLite has one writer), with the tail known (a redo
    // keeps to the one transaction that holds the chain lock) and with connections to spare
    // (lanes holding all of a small pool would wait on each other until its timeout).
    let side_by_side = locked.is_none()
        && audit.store.backend() == DbBackend::Postgres
        && audit.store.max_connections() >= 2 * LANES as u32;
    let lanes = if side_by_side { LANES.min(chunks.len()).max(1) } else { 1 };
    let per_lane = chunks.len().div_ceil(lanes).max(1);
    tracing::debug!(size = batch.len(), lanes, "chaining a batch");
    let mut links = Links::new(audit, now, seq, prev, chained, batch.len());
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..lanes).map(|_| tokio::sync::mpsc::unbounded_channel::<Linked>()).unzip();
    // Pipelined: a chunk is linked while the database inserts the ones before it; each lane
    // sends its statement as soon as it has a chunk (the linking yields first, so the lanes
    // are polled and their statements are on the wire before the next linking starts).
    let link_all = async {
        for (i, chunk) in chunks.iter().enumerate() {
            tokio::task::yield_now().await;
            // A lane that failed has dropped its receiver; its error ends the batch below.
            let _ = senders[i / per_lane].send(links.link(chunk));
        }
        drop(senders);
    };
    let fill_all =
        futures::future::try_join_all(receivers.into_iter().map(|linked| fill_lane(audit, locked.take(), linked, now)));
    let ((), filled) = tokio::join!(link_all, fill_all);
    // In chain order, each only once the one before it committed.
    for Lane { txn, checkpoints, appended } in filled? {
        txn.commit().await?;
        audit.metrics.appended.inc_by(appended);
        for c in &checkpoints {
            audit.export(c).await;
        }
    }
    set_known_tail(audit, Some((links.seq, links.prev)));
    Ok(())
}

/// Transactions a batch is spread over on PostgreSQL, each on its own connection: their inserts
/// run side by side (PostgreSQL works on each in its own process, while the service links and
/// nats-server delivers), and they commit in chain order, each once the one before committed.
/// A failure or a crash between two commits leaves a prefix of the batch chained, never a gap:
/// the batch comes again and the redo skips what is already chained.
const LANES: usize = 2;

/// A lane's transaction, filled and not yet committed.
struct Lane {
    txn: sea_orm::DatabaseTransaction,
    checkpoints: Vec<audit_checkpoint::Model>,
    appended: u64,
}

/// Inserts what is linked for this lane as it comes, then its privacy-log rows and signed
/// checkpoints, in one transaction (`txn` if the caller already began it).
async fn fill_lane(
    audit: &Audit,
    txn: Option<sea_orm::DatabaseTransaction>,
    mut linked: tokio::sync::mpsc::UnboundedReceiver<Linked>,
    now: DateTime<Utc>,
) -> Result<Lane, AuditError> {
    let txn = match txn {
        Some(txn) => txn,
        None => audit.store.begin_write().await?,
    };
    let (mut privacy, mut due, mut appended) = (Vec::new(), Vec::new(), 0u64);
    while let Some(chunk) = linked.recv().await {
        appended += chunk.rows.len() as u64;
        privacy.extend(chunk.privacy);
        due.extend(chunk.due_checkpoints);
        insert_entries(&txn, chunk.rows).await?;
    }
    for rows in privacy.chunks(500) {
        privacy_entry::Entity::insert_many(rows.to_vec()).exec_without_returning(&txn).await?;
    }
    let checkpoints: Vec<audit_checkpoint::Model> =
        due.iter().map(|(at, hash)| signed_checkpoint(audit, *at, hash, now)).collect();
    insert_checkpoints(&txn, &checkpoints).await?;
    Ok(Lane { txn, checkpoints, appended })
}

/// The event ids of `batch` that the chain already holds (a redelivery).
async fn already_chained<C: ConnectionTrait>(conn: &C, batch: &[Delivery]) -> Result<HashSet<String>, sea_orm::DbErr> {
    let ids: Vec<String> = batch.iter().map(|d| d.event.id().to_owned()).collect();
    let mut chained = HashSet::new();
    for chunk in ids.chunks(500) {
        let existing: Vec<String> = audit_entry::Entity::find()
            .select_only()
            .column(audit_entry::Column::EventId)
            .filter(audit_entry::Column::EventId.is_in(chunk.to_vec()))
            .into_tuple()
            .all(conn)
            .await?;
        chained.extend(existing);
    }
    Ok(chained)
}

/// Rows per insert statement within a batch: small enough that linking the next chunk
/// overlaps most of the batch's insert time, large enough to keep statements few.
const INSERT_CHUNK: usize = 500;

/// Links deliveries to the chain, continuing from the tail it was given.
struct Links<'a> {
    audit: &'a Audit,
    now: DateTime<Utc>,
    every: i64,
    seq: i64,
    prev: String,
    /// Event ids already in the chain (only looked up when a batch is redone).
    chained: HashSet<String>,
    in_batch: HashSet<String>,
}

/// One chunk, linked: its entries, their privacy-log rows, and the checkpoints due in it.
struct Linked {
    rows: Vec<audit_entry::Model>,
    privacy: Vec<privacy_entry::ActiveModel>,
    due_checkpoints: Vec<(i64, String)>,
}

impl<'a> Links<'a> {
    fn new(
        audit: &'a Audit,
        now: DateTime<Utc>,
        seq: i64,
        prev: String,
        chained: HashSet<String>,
        size: usize,
    ) -> Self {
        Self {
            audit,
            now,
            every: audit.config.checkpoint_every.max(1) as i64,
            seq,
            prev,
            chained,
            in_batch: HashSet::with_capacity(size),
        }
    }

    fn link(&mut self, deliveries: &[Delivery]) -> Linked {
        let mut out =
            Linked { rows: Vec::with_capacity(deliveries.len()), privacy: Vec::new(), due_checkpoints: Vec::new() };
        for delivery in deliveries {
            let event = &delivery.event;
            if self.chained.contains(event.id()) || !self.in_batch.insert(event.id().to_owned()) {
                continue;
            }
            self.seq += 1;
            let seq = self.seq;
            let payload = recorded_payload(delivery);
            let digest = chain::digest(&payload);
            let hash = chain::link_hash(&self.prev, seq, &delivery.subject, event.id(), &digest);
            if let LifecycleEvent::TokenHokUsed(e) = event {
                out.privacy.push(privacy_row(self.audit, e, seq));
            }
            if seq % self.every == 0 {
                out.due_checkpoints.push((seq, hash.clone()));
            }
            out.rows.push(audit_entry::Model {
                seq,
                recorded_at: self.now,
                subject: delivery.subject.clone(),
                event_id: event.id().to_owned(),
                event_type: event.event_type().to_owned(),
                event_time: event.time(),
                payload,
                digest,
                prev_hash: std::mem::replace(&mut self.prev, hash.clone()),
                hash,
            });
        }
        out
    }
}

/// The privacy-log entry of a holder-of-key use, the caller identity sealed under the audit key.
fn privacy_row(
    audit: &Audit,
    e: &custodian_events::CloudEvent<custodian_events::TokenHokUsedV1>,
    seq: i64,
) -> privacy_entry::ActiveModel {
    let sealed = audit.keyring.seal(e.data.caller_identity.as_bytes(), &crate::identity_aad(&e.id));
    privacy_entry::ActiveModel {
        id: Set(uuid::Uuid::new_v4().to_string()),
        audit_seq: Set(seq),
        event_id: Set(e.id.clone()),
        used_at: Set(e.time),
        platform_id: Set(e.data.platform_id.clone()),
        caller_key_id: Set(sealed.key_id),
        caller_wrapped_key: Set(sealed.wrapped_key),
        caller_ciphertext: Set(sealed.ciphertext),
        caller_organisation: Set(e.data.caller_organisation.clone()),
        subject: Set(e.data.subject.clone()),
        service: Set(e.data.service.clone()),
        assertion_id: Set(e.data.assertion_id.clone()),
        token_type: Set(serde_json::to_value(e.data.token_type)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()),
        valid_until: Set(e.data.valid_until),
        purpose: Set(e.data.purpose.clone()),
    }
}

/// Inserts chain entries. On PostgreSQL as one array per column: one statement text
/// whatever the batch size (planned once per connection), where `insert_many` would send
/// ten parameters per row in a `VALUES` list parsed and planned anew for each size.
pub async fn insert_entries<C: ConnectionTrait>(conn: &C, rows: Vec<audit_entry::Model>) -> Result<(), sea_orm::DbErr> {
    if rows.is_empty() {
        return Ok(());
    }
    if conn.get_database_backend() != DbBackend::Postgres {
        let mut rows = rows.into_iter().map(audit_entry::ActiveModel::from).peekable();
        while rows.peek().is_some() {
            let chunk: Vec<_> = rows.by_ref().take(500).collect();
            audit_entry::Entity::insert_many(chunk).exec_without_returning(conn).await?;
        }
        return Ok(());
    }
    let mut columns = EntryColumns::default();
    for m in rows {
        columns.seq.push(m.seq);
        columns.recorded_at.push(m.recorded_at);
        columns.subject.push(m.subject);
        columns.event_id.push(m.event_id);
        columns.event_type.push(m.event_type);
        columns.event_time.push(m.event_time);
        columns.payload.push(m.payload);
        columns.digest.push(m.digest);
        columns.prev_hash.push(m.prev_hash);
        columns.hash.push(m.hash);
    }
    let c = columns;
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO audit_log (seq, recorded_at, subject, event_id, event_type, event_time, payload, digest, prev_hash, hash) \
         SELECT * FROM unnest($1::int8[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], \
         $7::text[], $8::text[], $9::text[], $10::text[])",
        [
            c.seq.into(),
            c.recorded_at.into(),
            c.subject.into(),
            c.event_id.into(),
            c.event_type.into(),
            c.event_time.into(),
            c.payload.into(),
            c.digest.into(),
            c.prev_hash.into(),
            c.hash.into(),
        ],
    ))
    .await?;
    Ok(())
}

#[derive(Default)]
struct EntryColumns {
    seq: Vec<i64>,
    recorded_at: Vec<DateTime<Utc>>,
    subject: Vec<String>,
    event_id: Vec<String>,
    event_type: Vec<String>,
    event_time: Vec<DateTime<Utc>>,
    payload: Vec<String>,
    digest: Vec<String>,
    prev_hash: Vec<String>,
    hash: Vec<String>,
}

pub(crate) async fn last_checkpoint<C: ConnectionTrait>(conn: &C) -> Result<i64, sea_orm::DbErr> {
    Ok(audit_checkpoint::Entity::find()
        .order_by_desc(audit_checkpoint::Column::Seq)
        .limit(1)
        .one(conn)
        .await?
        .map_or(0, |c| c.seq))
}

/// A checkpoint over (seq, hash), signed with the audit signing key.
fn signed_checkpoint(audit: &Audit, seq: i64, hash: &str, now: DateTime<Utc>) -> audit_checkpoint::Model {
    audit_checkpoint::Model {
        seq,
        hash: hash.to_owned(),
        key_id: audit.signer.key_id.clone(),
        signature: audit.signer.sign(seq, hash),
        created_at: now,
    }
}

/// Stores checkpoints in one statement; one already stored at the same `seq` is kept.
async fn insert_checkpoints<C: ConnectionTrait>(
    conn: &C,
    checkpoints: &[audit_checkpoint::Model],
) -> Result<(), sea_orm::DbErr> {
    if checkpoints.is_empty() {
        return Ok(());
    }
    audit_checkpoint::Entity::insert_many(checkpoints.iter().cloned().map(audit_checkpoint::ActiveModel::from))
        .on_conflict(OnConflict::column(audit_checkpoint::Column::Seq).do_nothing().to_owned())
        .exec_without_returning(conn)
        .await?;
    Ok(())
}

pub(crate) async fn write_checkpoint<C: ConnectionTrait>(
    audit: &Audit,
    conn: &C,
    seq: i64,
    hash: &str,
    now: DateTime<Utc>,
) -> Result<audit_checkpoint::Model, sea_orm::DbErr> {
    let model = signed_checkpoint(audit, seq, hash, now);
    insert_checkpoints(conn, std::slice::from_ref(&model)).await?;
    Ok(model)
}
