//! Maps the pure [`Consent`] to its `consents` row and back, and the batched reads and
//! writes the ledger needs.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use custodian_events::queries::{ConsentQuery, ConsentView, HistoryEntry};
use custodian_events::{ConsentKey, RevokeReason};
use custodian_store::consent_key_digest;
use custodian_store::entities::{consent, consent_history};
use custodian_store::sea_orm::sea_query::{LockType, OnConflict};
use custodian_store::sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use crate::ledger::{Consent, Expire, Grant, Revoke};

pub fn digest(key: &ConsentKey) -> String {
    consent_key_digest(&key.canonical())
}

fn revoke_reason_str(r: RevokeReason) -> &'static str {
    match r {
        RevokeReason::User => "user",
        RevokeReason::Provider => "provider",
        RevokeReason::Admin => "admin",
        RevokeReason::Incident => "incident",
    }
}

fn parse_revoke_reason(s: &str) -> RevokeReason {
    match s {
        "provider" => RevokeReason::Provider,
        "admin" => RevokeReason::Admin,
        "incident" => RevokeReason::Incident,
        _ => RevokeReason::User,
    }
}

pub fn from_row(row: &consent::Model) -> Consent {
    let key = ConsentKey::new(&row.issuer, &row.subject, &row.platform_id);
    let grant = match (row.granted_at, &row.grant_event_id) {
        (Some(at), Some(event_id)) => Some(Grant {
            at,
            event_id: event_id.clone(),
            scopes: serde_json::from_str(&row.scopes).unwrap_or_default(),
            acr: row.acr.clone(),
        }),
        _ => None,
    };
    let revoke = match (row.revoked_at, &row.revoke_event_id, &row.revoke_reason) {
        (Some(at), Some(event_id), Some(reason)) => {
            Some(Revoke { at, event_id: event_id.clone(), reason: parse_revoke_reason(reason) })
        }
        _ => None,
    };
    let expire = match (row.expired_at, &row.expire_event_id, row.expire_idle_since, &row.expire_sweep_id) {
        (Some(at), Some(event_id), Some(idle_since), Some(sweep_id)) => {
            Some(Expire { at, event_id: event_id.clone(), idle_since, sweep_id: sweep_id.clone() })
        }
        _ => None,
    };
    Consent { key, grant, revoke, expire, last_seen_at: row.last_seen_at }
}

pub fn to_row(c: &Consent, now: DateTime<Utc>) -> consent::ActiveModel {
    consent::ActiveModel {
        consent_key: Set(digest(&c.key)),
        issuer: Set(c.key.issuer.clone()),
        subject: Set(c.key.subject.clone()),
        platform_id: Set(c.key.platform_id.clone()),
        state: Set(c.status().as_str().to_owned()),
        scopes: Set(serde_json::to_string(&c.grant.as_ref().map(|g| g.scopes.clone()).unwrap_or_default())
            .unwrap_or_else(|_| "[]".into())),
        acr: Set(c.grant.as_ref().and_then(|g| g.acr.clone())),
        granted_at: Set(c.grant.as_ref().map(|g| g.at)),
        grant_event_id: Set(c.grant.as_ref().map(|g| g.event_id.clone())),
        revoked_at: Set(c.revoke.as_ref().map(|r| r.at)),
        revoke_reason: Set(c.revoke.as_ref().map(|r| revoke_reason_str(r.reason).to_owned())),
        revoke_event_id: Set(c.revoke.as_ref().map(|r| r.event_id.clone())),
        expired_at: Set(c.expire.as_ref().map(|e| e.at)),
        expire_idle_since: Set(c.expire.as_ref().map(|e| e.idle_since)),
        expire_event_id: Set(c.expire.as_ref().map(|e| e.event_id.clone())),
        expire_sweep_id: Set(c.expire.as_ref().map(|e| e.sweep_id.clone())),
        last_seen_at: Set(c.last_seen_at),
        ended_at: Set(c.ended_at()),
        updated_at: Set(now),
    }
}

/// Loads (and on PostgreSQL locks) the rows of `keys`, creating empty ones first so that
/// concurrent replicas serialise on the same rows instead of racing to insert them.
pub async fn lock_and_load<C: ConnectionTrait>(
    conn: &C,
    keys: &[ConsentKey],
    now: DateTime<Utc>,
) -> Result<HashMap<String, Consent>, DbErr> {
    let mut sorted: Vec<(String, &ConsentKey)> = keys.iter().map(|k| (digest(k), k)).collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted.dedup_by(|a, b| a.0 == b.0);
    for chunk in sorted.chunks(500) {
        let rows = chunk.iter().map(|(_, k)| to_row(&Consent::new((*k).clone()), now));
        consent::Entity::insert_many(rows)
            .on_conflict_do_nothing_on([consent::Column::ConsentKey])
            .exec_without_returning(conn)
            .await?;
    }
    let mut loaded = HashMap::with_capacity(sorted.len());
    for chunk in sorted.chunks(1000) {
        let mut query = consent::Entity::find()
            .filter(consent::Column::ConsentKey.is_in(chunk.iter().map(|(d, _)| d.clone())))
            .order_by_asc(consent::Column::ConsentKey);
        if conn.get_database_backend() == DbBackend::Postgres {
            query = query.lock(LockType::Update);
        }
        for row in query.all(conn).await? {
            loaded.insert(row.consent_key.clone(), from_row(&row));
        }
    }
    Ok(loaded)
}

pub async fn save_all<C: ConnectionTrait>(conn: &C, consents: Vec<&Consent>, now: DateTime<Utc>) -> Result<(), DbErr> {
    let on_conflict = OnConflict::column(consent::Column::ConsentKey)
        .update_columns([
            consent::Column::State,
            consent::Column::Scopes,
            consent::Column::Acr,
            consent::Column::GrantedAt,
            consent::Column::GrantEventId,
            consent::Column::RevokedAt,
            consent::Column::RevokeReason,
            consent::Column::RevokeEventId,
            consent::Column::ExpiredAt,
            consent::Column::ExpireIdleSince,
            consent::Column::ExpireEventId,
            consent::Column::ExpireSweepId,
            consent::Column::LastSeenAt,
            consent::Column::EndedAt,
            consent::Column::UpdatedAt,
        ])
        .to_owned();
    for chunk in consents.chunks(500) {
        consent::Entity::insert_many(chunk.iter().map(|c| to_row(c, now)))
            .on_conflict(on_conflict.clone())
            .exec_without_returning(conn)
            .await?;
    }
    Ok(())
}

pub async fn append_history<C: ConnectionTrait>(
    conn: &C,
    rows: Vec<consent_history::ActiveModel>,
) -> Result<(), DbErr> {
    for chunk in rows.chunks(1000) {
        consent_history::Entity::insert_many(chunk.to_vec()).exec_without_returning(conn).await?;
    }
    Ok(())
}

pub fn history_row(
    key_digest: &str,
    event_id: &str,
    event_type: &str,
    event_time: DateTime<Utc>,
    state_after: &str,
    now: DateTime<Utc>,
) -> consent_history::ActiveModel {
    consent_history::ActiveModel {
        id: Default::default(),
        consent_key: Set(key_digest.to_owned()),
        event_id: Set(event_id.to_owned()),
        event_type: Set(event_type.to_owned()),
        event_time: Set(event_time),
        state_after: Set(state_after.to_owned()),
        recorded_at: Set(now),
    }
}

pub const MAX_QUERY_LIMIT: u64 = 10_000;

/// The ledger as people and operators see it (consents with a grant only).
pub async fn query<C: ConnectionTrait>(conn: &C, q: &ConsentQuery) -> Result<Vec<ConsentView>, DbErr> {
    let mut find = consent::Entity::find().filter(consent::Column::State.ne("unknown"));
    if let Some(v) = &q.issuer {
        find = find.filter(consent::Column::Issuer.eq(v.as_str()));
    }
    if let Some(v) = &q.subject {
        find = find.filter(consent::Column::Subject.eq(v.as_str()));
    }
    if let Some(v) = &q.platform_id {
        find = find.filter(consent::Column::PlatformId.eq(v.as_str()));
    }
    if let Some(v) = &q.state {
        find = find.filter(consent::Column::State.eq(v.as_str()));
    }
    let rows = find
        .order_by_asc(consent::Column::Issuer)
        .order_by_asc(consent::Column::Subject)
        .order_by_asc(consent::Column::PlatformId)
        .limit(q.limit.unwrap_or(1000).min(MAX_QUERY_LIMIT))
        .all(conn)
        .await?;
    let mut views = Vec::with_capacity(rows.len());
    for row in rows {
        let history = if q.with_history {
            consent_history::Entity::find()
                .filter(consent_history::Column::ConsentKey.eq(row.consent_key.as_str()))
                .order_by_asc(consent_history::Column::Id)
                .all(conn)
                .await?
                .into_iter()
                .map(|h| HistoryEntry {
                    event_id: h.event_id,
                    event_type: h.event_type,
                    event_time: h.event_time,
                    state_after: h.state_after,
                    recorded_at: h.recorded_at,
                })
                .collect()
        } else {
            Vec::new()
        };
        views.push(ConsentView {
            scopes: serde_json::from_str(&row.scopes).unwrap_or_default(),
            issuer: row.issuer,
            subject: row.subject,
            platform_id: row.platform_id,
            state: row.state,
            acr: row.acr,
            granted_at: row.granted_at,
            last_seen_at: row.last_seen_at,
            ended_at: row.ended_at,
            history,
        });
    }
    Ok(views)
}
