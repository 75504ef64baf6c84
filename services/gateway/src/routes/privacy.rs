//! `GET /v1/privacy-log?platform_id=&from=&to=&limit=`: the DPO reads the holder-of-key uses
//! with the callers' identities decrypted (the audit service seals its answer to a one-time
//! key of this request; the identities never cross NATS in clear). The audit service records
//! each read with its reader before it answers; `GET /v1/privacy-log/reads` lists them.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use custodian_events::audit::{
    MAX_READS_LISTED, PRIVACY_LOG, PRIVACY_LOG_READS, PrivacyLogEntry, PrivacyLogQuery, PrivacyLogRead,
    PrivacyLogReadsQuery, PrivacyLogReadsReply, PrivacyLogReply,
};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::problem::Problem;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub platform_id: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct PrivacyLog {
    pub entries: Vec<PrivacyLogEntry>,
}

pub async fn read(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    filter: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PrivacyLog>, Problem> {
    caller.require_role(Role::Dpo)?;
    let Query(filter) = filter.map_err(|e| Problem::bad_request(e.body_text()))?;
    if filter.limit.is_some_and(|l| !(1..=crate::routes::consents::MAX_LIMIT).contains(&l)) {
        return Err(Problem::bad_request(format!("limit must be 1 to {}", crate::routes::consents::MAX_LIMIT)));
    }
    let asked_by = match &caller {
        Caller::Machine { name, .. } => name.clone(),
        Caller::Person { subject, .. } => subject.clone(),
    };
    let entries = read_log(&state, asked_by, filter).await?;
    Ok(Json(PrivacyLog { entries }))
}

/// The privacy log as `asked_by` reads it (the audit service records each read with its reader).
pub async fn read_log(state: &AppState, asked_by: String, filter: Filter) -> Result<Vec<PrivacyLogEntry>, Problem> {
    let key = custodian_crypto::ReplyKey::new();
    let query = PrivacyLogQuery {
        platform_id: filter.platform_id,
        from: filter.from,
        to: filter.to,
        limit: filter.limit,
        asked_by,
        reply_key: key.public_base64(),
    };
    let reply: PrivacyLogReply =
        custodian_bus::query(state.bus.client(), &format!("{PRIVACY_LOG}.gateway"), &query, Duration::from_secs(10))
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "privacy log query failed");
                Problem::unavailable("the audit service did not answer")
            })?;
    match reply {
        PrivacyLogReply::Sealed(sealed) => {
            let plain =
                key.open(&sealed).map_err(|_| Problem::unavailable("the audit service's answer is unreadable"))?;
            serde_json::from_slice(&plain).map_err(|_| Problem::unavailable("the audit service's answer is unreadable"))
        }
        PrivacyLogReply::Error(e) => Err(Problem::unavailable(e)),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadsFilter {
    pub limit: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct PrivacyLogReads {
    pub reads: Vec<PrivacyLogRead>,
}

/// `GET /v1/privacy-log/reads?limit=`: who read the privacy log, when, with which filter and
/// how many entries they were shown, newest first (DPO only).
pub async fn reads(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    filter: Result<Query<ReadsFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PrivacyLogReads>, Problem> {
    caller.require_role(Role::Dpo)?;
    let Query(filter) = filter.map_err(|e| Problem::bad_request(e.body_text()))?;
    if filter.limit.is_some_and(|l| !(1..=MAX_READS_LISTED).contains(&l)) {
        return Err(Problem::bad_request(format!("limit must be 1 to {MAX_READS_LISTED}")));
    }
    Ok(Json(PrivacyLogReads { reads: read_reads(&state, filter.limit).await? }))
}

/// The latest reads of the privacy log, newest first.
pub async fn read_reads(state: &AppState, limit: Option<u64>) -> Result<Vec<PrivacyLogRead>, Problem> {
    let reply: PrivacyLogReadsReply = custodian_bus::query_idempotent(
        state.bus.client(),
        &format!("{PRIVACY_LOG_READS}.gateway"),
        &PrivacyLogReadsQuery { limit },
        Duration::from_secs(5),
    )
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "privacy log reads query failed");
        Problem::unavailable("the audit service did not answer")
    })?;
    match reply {
        PrivacyLogReadsReply::Reads(reads) => Ok(reads),
        PrivacyLogReadsReply::Error(e) => Err(Problem::unavailable(e)),
    }
}
