//! `GET /v1/revocations/{id}`: the receipt of a revocation (asked of the vault). A person
//! sees their own only; operators see any.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use custodian_events::vault::{self, Receipt, RevocationQuery, RevocationReply};

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::problem::Problem;

pub async fn show(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(revocation_id): Path<String>,
) -> Result<Json<Receipt>, Problem> {
    let query = RevocationQuery { revocation_id: Some(revocation_id.clone()), ..Default::default() };
    let reply: RevocationReply =
        custodian_bus::query_idempotent(state.bus.client(), vault::REVOCATIONS, &query, Duration::from_secs(5))
            .await
            .map_err(|e| {
            tracing::warn!(error = %e, "receipt query failed");
            Problem::unavailable("the token vault did not answer")
        })?;
    let receipt = match reply {
        RevocationReply::Receipts(mut list) => list.pop(),
        RevocationReply::Error(e) => return Err(Problem::bad_request(e)),
    };
    // Not yet taken over by the vault (the consent service may still be on it): 404 too.
    let not_found = || Problem::not_found(format!("no revocation {revocation_id} (yet)"));
    let receipt = receipt.ok_or_else(not_found)?;
    match &caller {
        Caller::Person { issuer, subject } if *issuer == receipt.issuer && *subject == receipt.subject => {}
        // Someone else's receipt: indistinguishable from none.
        Caller::Person { .. } => return Err(not_found()),
        Caller::Machine { .. } => caller.require_role(Role::Ops)?,
    }
    Ok(Json(receipt))
}
