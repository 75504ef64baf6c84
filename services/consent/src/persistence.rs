//! Maps the pure [`Consent`] to its `consents` row and back, and the batched reads and
//! writes the ledger needs.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use custodian_events::queries::{ConsentQuery, ConsentView, HistoryEntry, IdleConsent, IdleQuery};
use custodian_events::{ConsentKey, RevokeReason};
use custodian_store::consent_key_digest;
use custodian_store::entities::{consent, consent_history};
use custodian_store::sea_orm::sea_query::OnConflict;
use custodian_store::sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement,
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
        RevokeReason::Platform => "platform",
    }
}

fn parse_revoke_reason(s: &str) -> RevokeReason {
    match s {
        "provider" => RevokeReason::Provider,
        "admin" => RevokeReason::Admin,
        "incident" => RevokeReason::Incident,
        "platform" => RevokeReason::Platform,
        _ => RevokeReason::User,
    }
}

pub fn from_row(row: &consent::Model) -> Consent {
    Stored {
        scopes: row.scopes.clone(),
        acr: row.acr.clone(),
        granted_at: row.granted_at,
        grant_event_id: row.grant_event_id.clone(),
        revoked_at: row.revoked_at,
        revoke_reason: row.revoke_reason.clone(),
        revoke_event_id: row.revoke_event_id.clone(),
        expired_at: row.expired_at,
        expire_idle_since: row.expire_idle_since,
        expire_event_id: row.expire_event_id.clone(),
        expire_sweep_id: row.expire_sweep_id.clone(),
        last_seen_at: row.last_seen_at,
    }
    .into_consent(ConsentKey::new(&row.issuer, &row.subject, &row.platform_id))
}

/// The stored columns a [`Consent`] is rebuilt from, besides its key.
struct Stored {
    scopes: String,
    acr: Option<String>,
    granted_at: Option<DateTime<Utc>>,
    grant_event_id: Option<String>,
    revoked_at: Option<DateTime<Utc>>,
    revoke_reason: Option<String>,
    revoke_event_id: Option<String>,
    expired_at: Option<DateTime<Utc>>,
    expire_idle_since: Option<DateTime<Utc>>,
    expire_event_id: Option<String>,
    expire_sweep_id: Option<String>,
    last_seen_at: Option<DateTime<Utc>>,
}

/// Reads and locks the rows of the given digests, in digest order, the columns in the order
/// [`Stored::from_columns`] takes them (by position: the decoding by column name cost more
/// than the rest of the decoding). Only the key's digest is read back, to match each row to
/// the key the caller asked for: issuer, subject and platform are not decoded again.
const LOCK_AND_LOAD: &str = "SELECT consent_key, scopes, acr, granted_at, grant_event_id, revoked_at, \
     revoke_reason, revoke_event_id, expired_at, expire_idle_since, expire_event_id, expire_sweep_id, \
     last_seen_at FROM consents WHERE consent_key = ANY($1) ORDER BY consent_key FOR UPDATE";

impl Stored {
    /// A row of [`LOCK_AND_LOAD`], after its digest (column 0).
    fn from_columns(row: &custodian_store::sea_orm::QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            scopes: row.try_get_by_index(1)?,
            acr: row.try_get_by_index(2)?,
            granted_at: row.try_get_by_index(3)?,
            grant_event_id: row.try_get_by_index(4)?,
            revoked_at: row.try_get_by_index(5)?,
            revoke_reason: row.try_get_by_index(6)?,
            revoke_event_id: row.try_get_by_index(7)?,
            expired_at: row.try_get_by_index(8)?,
            expire_idle_since: row.try_get_by_index(9)?,
            expire_event_id: row.try_get_by_index(10)?,
            expire_sweep_id: row.try_get_by_index(11)?,
            last_seen_at: row.try_get_by_index(12)?,
        })
    }

    fn into_consent(self, key: ConsentKey) -> Consent {
        let grant = match (self.granted_at, self.grant_event_id) {
            (Some(at), Some(event_id)) => Some(Grant {
                at,
                event_id,
                scopes: serde_json::from_str(&self.scopes).unwrap_or_default(),
                acr: self.acr,
            }),
            _ => None,
        };
        let revoke = match (self.revoked_at, self.revoke_event_id, self.revoke_reason) {
            (Some(at), Some(event_id), Some(reason)) => {
                Some(Revoke { at, event_id, reason: parse_revoke_reason(&reason) })
            }
            _ => None,
        };
        let expire = match (self.expired_at, self.expire_event_id, self.expire_idle_since, self.expire_sweep_id) {
            (Some(at), Some(event_id), Some(idle_since), Some(sweep_id)) => {
                Some(Expire { at, event_id, idle_since, sweep_id })
            }
            _ => None,
        };
        Consent { key, grant, revoke, expire, last_seen_at: self.last_seen_at }
    }
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

/// Loads and locks the rows of `keys`; returns them with the digests that had no row.
///
/// PostgreSQL: one `SELECT … WHERE consent_key = ANY($1) ORDER BY consent_key FOR UPDATE`
/// (one array parameter, row locks in key order so replicas never deadlock). New keys are
/// inserted by [`save_all`], whose primary key refuses a row a replica created meanwhile. SQLite: an upsert with `RETURNING` creates missing rows and reads all, so
/// the transaction's first statement is a write and it holds the single writer lock.
pub async fn lock_and_load<C: ConnectionTrait>(
    conn: &C,
    keys: &[(&str, &ConsentKey)],
    now: DateTime<Utc>,
) -> Result<Loaded, DbErr> {
    let mut sorted: Vec<(&str, &ConsentKey)> = keys.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    sorted.dedup_by(|a, b| a.0 == b.0);
    let mut loaded = Loaded::default();
    if conn.get_database_backend() == DbBackend::Postgres {
        let digests: Vec<String> = sorted.iter().map(|(d, _)| (*d).to_owned()).collect();
        let statement = Statement::from_sql_and_values(DbBackend::Postgres, LOCK_AND_LOAD, [digests.into()]);
        for row in conn.query_all_raw(statement).await? {
            let digest: String = row.try_get_by_index(0)?;
            let Ok(at) = sorted.binary_search_by(|(d, _)| (*d).cmp(digest.as_str())) else {
                return Err(DbErr::Custom(format!("consent {digest} was not asked for")));
            };
            let consent = Stored::from_columns(&row)?.into_consent(sorted[at].1.clone());
            loaded.consents.insert(digest, consent);
        }
        for (d, k) in sorted {
            if !loaded.consents.contains_key(d) {
                loaded.consents.insert(d.to_owned(), Consent::new(k.clone()));
                loaded.new_keys.insert(d.to_owned());
            }
        }
        return Ok(loaded);
    }
    for chunk in sorted.chunks(500) {
        let rows = chunk.iter().map(|(_, k)| to_row(&Consent::new((*k).clone()), now));
        let touch =
            OnConflict::column(consent::Column::ConsentKey).update_column(consent::Column::ConsentKey).to_owned();
        for row in consent::Entity::insert_many(rows).on_conflict(touch).exec_with_returning(conn).await? {
            loaded.consents.insert(row.consent_key.clone(), from_row(&row));
        }
    }
    Ok(loaded)
}

/// The consents a batch works on, by digest, and which of them are not yet stored.
#[derive(Debug, Default)]
pub struct Loaded {
    pub consents: HashMap<String, Consent>,
    pub new_keys: std::collections::HashSet<String>,
}

const UPDATE_COLUMNS: [consent::Column; 15] = [
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
];

/// The rows of a batch as one array per column, for `unnest` on PostgreSQL: one statement
/// text whatever the batch size (no re-planning), binary-encoded, nothing for the server to
/// parse (a JSON parameter spent more time in `json_lex` than in the writes). Arrays cannot
/// carry NULLs here, so `nulls` holds one bit per nullable column.
#[derive(Debug, Default)]
struct ConsentColumns {
    consent_key: Vec<String>,
    issuer: Vec<String>,
    subject: Vec<String>,
    platform_id: Vec<String>,
    state: Vec<String>,
    scopes: Vec<String>,
    acr: Vec<String>,
    granted_at: Vec<DateTime<Utc>>,
    grant_event_id: Vec<String>,
    revoked_at: Vec<DateTime<Utc>>,
    revoke_reason: Vec<String>,
    revoke_event_id: Vec<String>,
    expired_at: Vec<DateTime<Utc>>,
    expire_idle_since: Vec<DateTime<Utc>>,
    expire_event_id: Vec<String>,
    expire_sweep_id: Vec<String>,
    last_seen_at: Vec<DateTime<Utc>>,
    ended_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
    nulls: Vec<i32>,
}

/// The nullable columns, in the bit order of [`ConsentColumns::nulls`].
const NULLABLE: [&str; 12] = [
    "acr",
    "granted_at",
    "grant_event_id",
    "revoked_at",
    "revoke_reason",
    "revoke_event_id",
    "expired_at",
    "expire_idle_since",
    "expire_event_id",
    "expire_sweep_id",
    "last_seen_at",
    "ended_at",
];

/// Builds one row's NULL bits; a NULL value is stored as a placeholder the bit masks out.
struct NullBits {
    bits: i32,
    placeholder_time: DateTime<Utc>,
}

impl NullBits {
    fn bit(&mut self, column: &str, is_null: bool) {
        let position = NULLABLE.iter().position(|c| *c == column).unwrap_or_default();
        self.bits |= i32::from(is_null) << position;
    }

    fn text(&mut self, column: &str, into: &mut Vec<String>, value: Option<&str>) {
        self.bit(column, value.is_none());
        into.push(value.unwrap_or_default().to_owned());
    }

    fn time(&mut self, column: &str, into: &mut Vec<DateTime<Utc>>, value: Option<DateTime<Utc>>) {
        self.bit(column, value.is_none());
        into.push(value.unwrap_or(self.placeholder_time));
    }
}

impl ConsentColumns {
    fn push(&mut self, digest: &str, c: &Consent, now: DateTime<Utc>) {
        let (grant, revoke, expire) = (c.grant.as_ref(), c.revoke.as_ref(), c.expire.as_ref());
        let mut n = NullBits { bits: 0, placeholder_time: now };
        n.text("acr", &mut self.acr, grant.and_then(|g| g.acr.as_deref()));
        n.time("granted_at", &mut self.granted_at, grant.map(|g| g.at));
        n.text("grant_event_id", &mut self.grant_event_id, grant.map(|g| g.event_id.as_str()));
        n.time("revoked_at", &mut self.revoked_at, revoke.map(|r| r.at));
        n.text("revoke_reason", &mut self.revoke_reason, revoke.map(|r| revoke_reason_str(r.reason)));
        n.text("revoke_event_id", &mut self.revoke_event_id, revoke.map(|r| r.event_id.as_str()));
        n.time("expired_at", &mut self.expired_at, expire.map(|e| e.at));
        n.time("expire_idle_since", &mut self.expire_idle_since, expire.map(|e| e.idle_since));
        n.text("expire_event_id", &mut self.expire_event_id, expire.map(|e| e.event_id.as_str()));
        n.text("expire_sweep_id", &mut self.expire_sweep_id, expire.map(|e| e.sweep_id.as_str()));
        n.time("last_seen_at", &mut self.last_seen_at, c.last_seen_at);
        n.time("ended_at", &mut self.ended_at, c.ended_at());
        self.nulls.push(n.bits);
        self.consent_key.push(digest.to_owned());
        self.issuer.push(c.key.issuer.clone());
        self.subject.push(c.key.subject.clone());
        self.platform_id.push(c.key.platform_id.clone());
        self.state.push(c.status().as_str().to_owned());
        self.scopes.push(
            serde_json::to_string(&grant.map(|g| g.scopes.clone()).unwrap_or_default()).unwrap_or_else(|_| "[]".into()),
        );
        self.updated_at.push(now);
    }

    /// A stored row as it is (the benchmark's raw baseline inserts rows, not consents).
    fn push_row(&mut self, row: &consent::Model) {
        let mut n = NullBits { bits: 0, placeholder_time: row.updated_at };
        n.text("acr", &mut self.acr, row.acr.as_deref());
        n.time("granted_at", &mut self.granted_at, row.granted_at);
        n.text("grant_event_id", &mut self.grant_event_id, row.grant_event_id.as_deref());
        n.time("revoked_at", &mut self.revoked_at, row.revoked_at);
        n.text("revoke_reason", &mut self.revoke_reason, row.revoke_reason.as_deref());
        n.text("revoke_event_id", &mut self.revoke_event_id, row.revoke_event_id.as_deref());
        n.time("expired_at", &mut self.expired_at, row.expired_at);
        n.time("expire_idle_since", &mut self.expire_idle_since, row.expire_idle_since);
        n.text("expire_event_id", &mut self.expire_event_id, row.expire_event_id.as_deref());
        n.text("expire_sweep_id", &mut self.expire_sweep_id, row.expire_sweep_id.as_deref());
        n.time("last_seen_at", &mut self.last_seen_at, row.last_seen_at);
        n.time("ended_at", &mut self.ended_at, row.ended_at);
        self.nulls.push(n.bits);
        self.consent_key.push(row.consent_key.clone());
        self.issuer.push(row.issuer.clone());
        self.subject.push(row.subject.clone());
        self.platform_id.push(row.platform_id.clone());
        self.state.push(row.state.clone());
        self.scopes.push(row.scopes.clone());
        self.updated_at.push(row.updated_at);
    }

    fn len(&self) -> usize {
        self.consent_key.len()
    }

    fn into_values(self) -> Vec<custodian_store::sea_orm::Value> {
        vec![
            self.consent_key.into(),
            self.issuer.into(),
            self.subject.into(),
            self.platform_id.into(),
            self.state.into(),
            self.scopes.into(),
            self.acr.into(),
            self.granted_at.into(),
            self.grant_event_id.into(),
            self.revoked_at.into(),
            self.revoke_reason.into(),
            self.revoke_event_id.into(),
            self.expired_at.into(),
            self.expire_idle_since.into(),
            self.expire_event_id.into(),
            self.expire_sweep_id.into(),
            self.last_seen_at.into(),
            self.ended_at.into(),
            self.updated_at.into(),
            self.nulls.into(),
        ]
    }
}

/// Every column of `consents` in [`ConsentColumns::into_values`] order, with its array type.
const COLUMNS: [(&str, &str); 19] = [
    ("consent_key", "text"),
    ("issuer", "text"),
    ("subject", "text"),
    ("platform_id", "text"),
    ("state", "text"),
    ("scopes", "text"),
    ("acr", "text"),
    ("granted_at", "timestamptz"),
    ("grant_event_id", "text"),
    ("revoked_at", "timestamptz"),
    ("revoke_reason", "text"),
    ("revoke_event_id", "text"),
    ("expired_at", "timestamptz"),
    ("expire_idle_since", "timestamptz"),
    ("expire_event_id", "text"),
    ("expire_sweep_id", "text"),
    ("last_seen_at", "timestamptz"),
    ("ended_at", "timestamptz"),
    ("updated_at", "timestamptz"),
];

/// `SELECT <every consents column> FROM unnest($1 … $20)`, NULLs restored from the bits.
fn unnested_rows() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let select = COLUMNS
            .iter()
            .map(|(name, _)| match NULLABLE.iter().position(|c| c == name) {
                Some(bit) => format!("CASE WHEN r.nulls & {} = 0 THEN r.{name} END AS {name}", 1 << bit),
                None => format!("r.{name}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let arrays = COLUMNS
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| format!("${}::{ty}[]", i + 1))
            .chain(std::iter::once(format!("${}::int4[]", COLUMNS.len() + 1)))
            .collect::<Vec<_>>()
            .join(", ");
        let names =
            COLUMNS.iter().map(|(name, _)| *name).chain(std::iter::once("nulls")).collect::<Vec<_>>().join(", ");
        format!("SELECT {select} FROM unnest({arrays}) AS r({names})")
    })
}

/// Inserts rows with the statement [`save_all`] uses for new consents (PostgreSQL only):
/// the benchmark's raw baseline, so that it measures the same insert path.
pub async fn insert_rows_postgres<C: ConnectionTrait>(conn: &C, rows: &[consent::Model]) -> Result<(), DbErr> {
    let mut columns = ConsentColumns::default();
    for row in rows {
        columns.push_row(row);
    }
    conn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, insert_sql(), columns.into_values())).await?;
    Ok(())
}

fn insert_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let names = COLUMNS.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ");
        format!("INSERT INTO consents ({names}) {}", unnested_rows())
    })
}

/// A consent a batch changed.
#[derive(Debug)]
pub struct Changed<'a> {
    pub digest: &'a str,
    pub consent: &'a Consent,
    /// Only activity reports changed it: its sign of life and what follows from it (status,
    /// end) are all there is to write.
    pub seen_only: bool,
}

/// The columns an activity report can change, as arrays: the most frequent write, kept
/// narrow (no grant, revocation or expiry columns to send, unnest and assign).
#[derive(Debug, Default)]
struct SeenColumns {
    consent_key: Vec<String>,
    last_seen_at: Vec<DateTime<Utc>>,
    state: Vec<String>,
    ended_at: Vec<DateTime<Utc>>,
    has_ended: Vec<bool>,
}

impl SeenColumns {
    fn push(&mut self, digest: &str, c: &Consent, now: DateTime<Utc>) {
        let ended_at = c.ended_at();
        self.consent_key.push(digest.to_owned());
        // Never the placeholder: a consent changed by an activity report has been seen.
        self.last_seen_at.push(c.last_seen_at.unwrap_or(now));
        self.state.push(c.status().as_str().to_owned());
        self.has_ended.push(ended_at.is_some());
        self.ended_at.push(ended_at.unwrap_or(now));
    }
}

const SEEN_UPDATE: &str = "UPDATE consents AS c SET last_seen_at = r.last_seen_at, state = r.state, \
     ended_at = CASE WHEN r.has_ended THEN r.ended_at END, updated_at = $6 \
     FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::timestamptz[], $5::bool[]) \
     AS r(consent_key, last_seen_at, state, ended_at, has_ended) \
     WHERE c.consent_key = r.consent_key AND c.consent_key = ANY($1::text[])";

/// Writes the changed consents. On PostgreSQL new rows, updates and activity-only updates
/// are one statement each, the rows travelling as arrays ([`ConsentColumns`],
/// [`SeenColumns`]). A new key that a concurrent replica inserted first makes the batch fail
/// (transient), so it is retried on the fresh row instead of overwriting it.
pub async fn save_all<C: ConnectionTrait>(
    conn: &C,
    consents: Vec<Changed<'_>>,
    new_keys: &std::collections::HashSet<String>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    if conn.get_database_backend() == DbBackend::Postgres {
        let (mut inserts, mut updates, mut seen) =
            (ConsentColumns::default(), ConsentColumns::default(), SeenColumns::default());
        for Changed { digest, consent, seen_only } in consents {
            if new_keys.contains(digest) {
                inserts.push(digest, consent, now);
            } else if seen_only {
                seen.push(digest, consent, now);
            } else {
                updates.push(digest, consent, now);
            }
        }
        if !seen.consent_key.is_empty() {
            let SeenColumns { consent_key, last_seen_at, state, ended_at, has_ended } = seen;
            let values =
                [consent_key.into(), last_seen_at.into(), state.into(), ended_at.into(), has_ended.into(), now.into()];
            conn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, SEEN_UPDATE, values)).await?;
        }
        if inserts.len() > 0 {
            // A plain INSERT: a key a concurrent replica created meanwhile violates the
            // primary key and fails the batch, which is retried on the fresh row. (`ON
            // CONFLICT DO NOTHING` would say the same through `rows_affected`, at the price of
            // a speculative insertion — an extra index probe and WAL record — on every row.)
            conn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, insert_sql(), inserts.into_values()))
                .await?;
        }
        if updates.len() > 0 {
            let set = UPDATE_COLUMNS
                .iter()
                .map(|c| {
                    let name = custodian_store::sea_orm::IdenStatic::as_str(c);
                    format!("{name} = r.{name}")
                })
                .collect::<Vec<_>>()
                .join(", ");
            // `= ANY($1)` repeats the join key as an index condition: without it, on a table
            // not yet analysed, the planner prefers a sequential scan of every consent feeding
            // a hash join (it cannot see how short the arrays are), once per batch.
            let sql = format!(
                "UPDATE consents AS c SET {set} FROM ({}) AS r \
                 WHERE c.consent_key = r.consent_key AND c.consent_key = ANY($1::text[])",
                unnested_rows()
            );
            conn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, updates.into_values())).await?;
        }
        return Ok(());
    }
    let on_conflict = OnConflict::column(consent::Column::ConsentKey).update_columns(UPDATE_COLUMNS).to_owned();
    for chunk in consents.chunks(500) {
        consent::Entity::insert_many(chunk.iter().map(|c| to_row(c.consent, now)))
            .on_conflict(on_conflict.clone())
            .exec_without_returning(conn)
            .await?;
    }
    Ok(())
}

/// Appends history rows; on PostgreSQL as arrays, one statement.
pub async fn append_history<C: ConnectionTrait>(
    conn: &C,
    rows: Vec<consent_history::ActiveModel>,
) -> Result<(), DbErr> {
    if rows.is_empty() {
        return Ok(());
    }
    if conn.get_database_backend() == DbBackend::Postgres {
        use custodian_store::sea_orm::TryIntoModel;
        let (mut key, mut event_id, mut event_type, mut event_time, mut state_after, mut recorded_at) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for mut row in rows {
            row.id = Set(0);
            let m = row.try_into_model()?;
            key.push(m.consent_key);
            event_id.push(m.event_id);
            event_type.push(m.event_type);
            event_time.push(m.event_time);
            state_after.push(m.state_after);
            recorded_at.push(m.recorded_at);
        }
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO consent_history (consent_key, event_id, event_type, event_time, state_after, recorded_at) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::timestamptz[])",
            [
                key.into(),
                event_id.into(),
                event_type.into(),
                event_time.into(),
                state_after.into(),
                recorded_at.into(),
            ],
        ))
        .await?;
        return Ok(());
    }
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

/// One page of granted consents of `platform_id` last seen before `idle_before`, in
/// `(last_seen_day, consent_key)` order after the cursor: a range scan of the
/// `consents_idle_scan` index, so memory and time per page do not depend on the table size.
///
/// The index keys on the UTC day (migration `m20261129_000008`); the exact instant is
/// filtered on the row. The cursor is the last row returned, whose day is that of its
/// `last_seen_at`.
///
/// On PostgreSQL the page is read with sorting disabled for its transaction. The planner
/// multiplies the selectivities of the day bound and the instant bound as if independent
/// (they are one bound); when few consents are idle, it then expects fewer rows than the page
/// holds and reads every idle row of the platform into a sort, for every page (measured: a
/// sweep of 1M consents took 4.3 s for the scan alone instead of 0.5 s). Walking the index in
/// order stops at the page's end.
pub async fn idle_page(
    conn: &custodian_store::sea_orm::DatabaseConnection,
    q: &IdleQuery,
) -> Result<Vec<IdleConsent>, DbErr> {
    if conn.get_database_backend() != DbBackend::Postgres {
        return idle_page_in(conn, q).await;
    }
    let txn = custodian_store::begin(conn).await?;
    txn.execute_unprepared("SET LOCAL enable_sort = off").await?;
    let page = idle_page_in(&txn, q).await?;
    txn.commit().await?;
    Ok(page)
}

async fn idle_page_in<C: ConnectionTrait>(conn: &C, q: &IdleQuery) -> Result<Vec<IdleConsent>, DbErr> {
    use custodian_store::sea_orm::sea_query::{Expr, ExprTrait};
    let mut find = idle_filter(consent::Entity::find(), q);
    if let Some(after) = &q.after {
        find =
            find.filter(Expr::tuple([Expr::col(LastSeenDay), Expr::col(consent::Column::ConsentKey)]).gt(Expr::tuple(
                [Expr::value(after.last_seen_at.date_naive()), Expr::value(after.consent_key.clone())],
            )));
    }
    let rows = find
        .order_by_asc(Expr::col(LastSeenDay))
        .order_by_asc(consent::Column::ConsentKey)
        .limit(q.limit.clamp(1, MAX_QUERY_LIMIT))
        .all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(IdleConsent {
                last_seen_at: r.last_seen_at?,
                consent_key: r.consent_key,
                issuer: r.issuer,
                subject: r.subject,
                platform_id: r.platform_id,
            })
        })
        .collect())
}

/// The generated column the sweep's index keys on (not in the entity: nobody writes it).
#[derive(Clone, Copy)]
struct LastSeenDay;

impl custodian_store::sea_orm::sea_query::Iden for LastSeenDay {
    fn unquoted(&self) -> &str {
        "last_seen_day"
    }
}

/// Granted consents of the query's platform last seen before `idle_before`: the day bound
/// lets the index range over days, the instant bound decides.
fn idle_filter(
    find: custodian_store::sea_orm::Select<consent::Entity>,
    q: &IdleQuery,
) -> custodian_store::sea_orm::Select<consent::Entity> {
    use custodian_store::sea_orm::sea_query::{Expr, ExprTrait};
    find.filter(consent::Column::PlatformId.eq(q.platform_id.as_str()))
        .filter(Expr::col(LastSeenDay).lte(q.idle_before.date_naive()))
        .filter(consent::Column::LastSeenAt.lt(q.idle_before))
        .filter(consent::Column::State.eq("granted"))
}

pub async fn idle_count<C: ConnectionTrait>(conn: &C, q: &IdleQuery) -> Result<u64, DbErr> {
    use custodian_store::sea_orm::PaginatorTrait;
    idle_filter(consent::Entity::find(), q).count(conn).await
}

/// Platforms with at least one granted consent.
pub async fn platforms<C: ConnectionTrait>(conn: &C) -> Result<Vec<String>, DbErr> {
    consent::Entity::find()
        .select_only()
        .column(consent::Column::PlatformId)
        .filter(consent::Column::State.eq("granted"))
        .distinct()
        .order_by_asc(consent::Column::PlatformId)
        .into_tuple()
        .all(conn)
        .await
}

/// Deletes history older than `before`.
pub async fn purge_history<C: ConnectionTrait>(conn: &C, before: DateTime<Utc>) -> Result<u64, DbErr> {
    let res = consent_history::Entity::delete_many()
        .filter(consent_history::Column::RecordedAt.lt(before))
        .exec(conn)
        .await?;
    Ok(res.rows_affected)
}
