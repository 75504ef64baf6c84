//! Operators start inactivity sweeps and watch them (the sweeper does the work).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use custodian_events::queries::{self, SweepQuery, SweepReply, SweepView};
use custodian_events::{CloudEvent, SweepRequestedV1, subjects};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::problem::Problem;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartSweep {
    pub platform_id: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
    /// Default: 90 days (the seed's "long inactivity"). A JSON number with no fraction, as
    /// JSON Schema's `integer` has it (`90.0` too).
    #[serde(default, deserialize_with = "whole_days")]
    pub inactivity_days: Option<u32>,
}

fn whole_days<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    use serde::de::Error as _;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else { return Ok(None) };
    if let Some(n) = number.as_u64() {
        return u32::try_from(n).map(Some).map_err(|_| D::Error::custom("inactivity_days is too large"));
    }
    match number.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&f) => Ok(Some(f as u32)),
        _ => Err(D::Error::custom(format!("inactivity_days must be a whole number of days, not {number}"))),
    }
}

#[derive(Debug, Serialize)]
pub struct SweepStarted {
    pub sweep_id: String,
}

pub async fn start(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<SweepStarted>), Problem> {
    caller.require_role(Role::Ops)?;
    let body: StartSweep = crate::problem::json_object(body)?;
    let Caller::Machine { name, .. } = &caller else { return Err(Problem::forbidden("operators only")) };
    let data = SweepRequestedV1 {
        sweep_id: format!("sweep-{}", uuid::Uuid::new_v4().simple()),
        platform_id: body.platform_id,
        inactivity_days: body.inactivity_days.unwrap_or(90),
        dry_run: body.dry_run,
        requested_by: format!("ops:{name}"),
    };
    let event = CloudEvent::new(crate::SOURCE, state.clock.now(), data);
    custodian_events::EventData::validate(&event.data).map_err(|e| Problem::bad_request(e.to_string()))?;
    let out = custodian_bus::Outgoing::event(subjects::SWEEP_REQUESTED, &event);
    state.bus.publish_retrying(&out, crate::routes::consents::PUBLISH_BUDGET).await.map_err(|e| {
        tracing::warn!(error = %e, "sweep request not published");
        Problem::unavailable("the sweep request could not be recorded; retry")
    })?;
    Ok((StatusCode::ACCEPTED, Json(SweepStarted { sweep_id: event.data.sweep_id })))
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(sweep_id): Path<String>,
) -> Result<Json<SweepView>, Problem> {
    caller.require_role(Role::Ops)?;
    let reply = custodian_bus::query_idempotent::<_, SweepReply>(
        state.bus.client(),
        queries::SWEEPS,
        &SweepQuery { sweep_id: sweep_id.clone(), ..Default::default() },
        Duration::from_secs(5),
    )
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "sweep query failed");
        Problem::unavailable("the sweeper did not answer")
    })?;
    match reply {
        SweepReply::Sweep(view) => Ok(Json(view)),
        // A request not yet picked up by the sweeper is not known yet.
        SweepReply::NotFound => Err(Problem::not_found(format!("no sweep {sweep_id} (yet)"))),
        SweepReply::Error(e) => Err(Problem::unavailable(e)),
        SweepReply::Sweeps(_) => Err(Problem::unavailable("the sweeper answered a list")),
    }
}
