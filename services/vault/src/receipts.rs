//! Answers `custodian.query.revocations`: receipts by revocation id or by person/platform.

use custodian_events::vault::{Receipt, RevocationQuery, RevocationReply, TokenReceipt, ViewReceipt};
use custodian_store::entities::{pending_wipe, revocation, revocation_token};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use crate::Vault;

pub(crate) async fn answer(vault: &Vault, query: Result<RevocationQuery, String>) -> RevocationReply {
    let query = match query {
        Ok(q) => q,
        Err(e) => return RevocationReply::Error(e),
    };
    if query.revocation_id.is_none() && query.subject.is_none() && query.platform_id.is_none() && !query.pending {
        return RevocationReply::Error("give a revocation_id, a subject and/or platform_id, or pending".into());
    }
    // One snapshot: a receipt's state and its tokens and views are read as of one instant.
    let snapshot = match vault.store.begin_snapshot().await {
        Ok(txn) => txn,
        Err(e) => {
            tracing::warn!(error = %e, "receipt query failed");
            return RevocationReply::Error("the vault's database is unavailable".into());
        }
    };
    match receipts(&snapshot, &query).await {
        Ok(list) => RevocationReply::Receipts(list),
        Err(e) => {
            tracing::warn!(error = %e, "receipt query failed");
            RevocationReply::Error("the vault's database is unavailable".into())
        }
    }
}

pub async fn receipts<C: ConnectionTrait>(conn: &C, query: &RevocationQuery) -> Result<Vec<Receipt>, sea_orm::DbErr> {
    let mut select = revocation::Entity::find();
    if let Some(id) = &query.revocation_id {
        select = select.filter(revocation::Column::RevocationId.eq(id.clone()));
    }
    if let Some(v) = &query.issuer {
        select = select.filter(revocation::Column::Issuer.eq(v.clone()));
    }
    if let Some(v) = &query.subject {
        select = select.filter(revocation::Column::Subject.eq(v.clone()));
    }
    if let Some(v) = &query.platform_id {
        select = select.filter(revocation::Column::PlatformId.eq(v.clone()));
    }
    let select = if query.pending {
        // What is still open, oldest first: the longest-pending is what an operator looks at.
        select.filter(revocation::Column::State.eq("pending")).order_by_asc(revocation::Column::StartedAt)
    } else {
        select.order_by_desc(revocation::Column::StartedAt)
    };
    let rows = select.limit(100).all(conn).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let tokens = revocation_token::Entity::find()
            .filter(revocation_token::Column::RevocationId.eq(row.revocation_id.clone()))
            .order_by_asc(revocation_token::Column::Id)
            .all(conn)
            .await?
            .into_iter()
            .map(|t| TokenReceipt {
                assertion_id: t.assertion_id,
                token_kind: t.token_kind,
                outcome: t.outcome,
                attempts: t.attempts,
                last_error: t.last_error,
                done_at: t.done_at,
            })
            .collect();
        let views = pending_wipe::Entity::find()
            .filter(pending_wipe::Column::RevocationId.eq(row.revocation_id.clone()))
            .order_by_asc(pending_wipe::Column::ViewId)
            .all(conn)
            .await?
            .into_iter()
            .map(|w| ViewReceipt {
                view_id: w.view_id,
                wipe_id: w.wipe_id,
                session_ids: serde_json::from_str(&w.session_ids).unwrap_or_default(),
                state: w.state,
                attempts: w.attempts,
                sent_at: w.sent_at,
                acked_at: w.acked_at,
            })
            .collect();
        out.push(Receipt {
            revocation_id: row.revocation_id,
            ended_event_id: row.ended_event_id,
            issuer: row.issuer,
            subject: row.subject,
            platform_id: row.platform_id,
            reason: row.reason,
            state: row.state,
            started_at: row.started_at,
            finished_at: row.finished_at,
            tokens,
            views,
        });
    }
    Ok(out)
}
