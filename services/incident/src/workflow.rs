//! The workflow: incidents registered from `incident.reported`, their steps run in order by
//! one driver loop. A step either finishes (`done`, with what it did), waits (containment in
//! progress), or fails (retried with backoff; the error shows on the timeline). Every effect
//! is either idempotent (derived event ids, keyed rows) or recorded before it is repeated.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use custodian_bus::{BatchHandler, Delivery, HandlerError};
use custodian_events::incident::{
    ContainmentQuery, ContainmentReply, ExposureQuery, ExposureReply, IncidentQuery, IncidentReply, IncidentView,
    StepView, contain_event_id,
};
use custodian_events::queries::{self, ConsentQuery, ConsentReply};
use custodian_events::{
    CloudEvent, CredentialRotatedV1, DpoChannel, DpoNotifiedV1, IncidentContainV1, IncidentKind, LifecycleEvent,
    derived_event_id, subjects,
};
use custodian_store::entities::{credential, incident, incident_step};
use custodian_store::outbox;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::dpo::{self, Exposure};
use crate::{IncidentError, Incidents, SERVICE, SOURCE, credentials, rotation};

const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

fn kind_str(kind: IncidentKind) -> String {
    serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// The steps of an incident of `kind`, in order.
pub(crate) fn plan(kind: &str) -> &'static [&'static str] {
    match kind {
        "credential_loss" | "platform_compromise" => {
            &["notify_dpo", "contain", "report_containment", "rotate_credentials", "report_rotation", "final_report"]
        }
        // A planned rotation: no breach, nothing to tell the DPO, nothing to contain.
        "planned_rotation" => &["rotate_credentials"],
        _ => &["notify_dpo", "contain", "report_containment", "final_report"],
    }
}

/// `custodian credentials rotate`: a planned rotation, run and recorded like an incident's step.
pub(crate) async fn planned_rotation(
    incidents: &Incidents,
    request: Result<custodian_events::incident::RotateRequest, String>,
) -> custodian_events::incident::RotateReply {
    use custodian_events::incident::RotateReply;
    let request = match request {
        Ok(r) => r,
        Err(e) => return RotateReply::Error(e),
    };
    if !incidents.config.platforms.iter().any(|p| p.platform_id == request.platform_id) {
        return RotateReply::Error(format!(
            "no [[incident.platforms]] registration (RFC 7592) for {}",
            request.platform_id
        ));
    }
    let now = incidents.clock.now();
    let rotation_id = format!("rot-{}", uuid::Uuid::new_v4());
    let result = async {
        let txn = incidents.store.begin_write().await?;
        incident::Entity::insert(incident::ActiveModel {
            incident_id: Set(rotation_id.clone()),
            kind: Set("planned_rotation".into()),
            platform_id: Set(request.platform_id.clone()),
            issuer: Set(None),
            subject: Set(None),
            summary: Set("planned client-secret rotation".into()),
            detected_at: Set(now),
            reporter: Set(request.requested_by.clone()),
            reported_event_id: Set(rotation_id.clone()),
            state: Set("open".into()),
            created_at: Set(now),
            updated_at: Set(now),
            closed_at: Set(None),
            traceparent: Set(custodian_telemetry::current_traceparent()),
        })
        .exec_without_returning(&txn)
        .await?;
        incident_step::Entity::insert(incident_step::ActiveModel {
            id: Set(format!("{rotation_id}:rotate_credentials")),
            incident_id: Set(rotation_id.clone()),
            position: Set(0),
            step: Set("rotate_credentials".into()),
            state: Set("pending".into()),
            attempts: Set(0),
            next_attempt_at: Set(now),
            last_error: Set(None),
            started_at: Set(None),
            finished_at: Set(None),
            detail: Set("{}".into()),
        })
        .exec_without_returning(&txn)
        .await?;
        txn.commit().await
    }
    .await;
    match result {
        Ok(()) => {
            incidents.work.notify_one();
            tracing::info!(rotation_id = %rotation_id, platform_id = %request.platform_id, "planned rotation registered");
            RotateReply::Started { rotation_id }
        }
        Err(e) => RotateReply::Error(e.to_string()),
    }
}

#[derive(Debug, Clone)]
pub struct ReportHandler {
    pub(crate) incidents: Arc<Incidents>,
}

impl BatchHandler for ReportHandler {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Result<(), HandlerError>> {
        let mut results = Vec::with_capacity(batch.len());
        for delivery in batch {
            let LifecycleEvent::IncidentReported(event) = &delivery.event else {
                results.push(Err(HandlerError::Permanent("not an incident report".into())));
                continue;
            };
            let span =
                tracing::info_span!("register_incident", incident_id = %event.data.incident_id, event_id = %event.id);
            custodian_telemetry::adopt_remote_parent(&span, delivery.traceparent.as_deref());
            let registered = register(&self.incidents, event).instrument(span).await;
            results.push(registered.map_err(|e| HandlerError::Transient(e.to_string())));
        }
        self.incidents.work.notify_one();
        results
    }
}

/// Registers the incident and its steps (once, however often the report is delivered).
async fn register(
    incidents: &Incidents,
    event: &CloudEvent<custodian_events::IncidentReportedV1>,
) -> Result<(), IncidentError> {
    let now = incidents.clock.now();
    let data = &event.data;
    let kind = kind_str(data.kind);
    let txn = incidents.store.begin_write().await?;
    let inserted = incident::Entity::insert(incident::ActiveModel {
        incident_id: Set(data.incident_id.clone()),
        kind: Set(kind.clone()),
        platform_id: Set(data.platform_id.clone()),
        issuer: Set(data.issuer.clone()),
        subject: Set(data.subject.clone()),
        summary: Set(data.summary.clone()),
        detected_at: Set(data.detected_at),
        reporter: Set(data.reporter.clone()),
        reported_event_id: Set(event.id.clone()),
        state: Set("open".into()),
        created_at: Set(now),
        updated_at: Set(now),
        closed_at: Set(None),
        traceparent: Set(custodian_telemetry::current_traceparent()),
    })
    .on_conflict(OnConflict::column(incident::Column::IncidentId).do_nothing().to_owned())
    .exec_without_returning(&txn)
    .await?;
    if inserted == 1 {
        let steps: Vec<incident_step::ActiveModel> = plan(&kind)
            .iter()
            .enumerate()
            .map(|(i, step)| incident_step::ActiveModel {
                id: Set(format!("{}:{step}", data.incident_id)),
                incident_id: Set(data.incident_id.clone()),
                position: Set(i as i32),
                step: Set((*step).to_owned()),
                state: Set("pending".into()),
                attempts: Set(0),
                next_attempt_at: Set(now),
                last_error: Set(None),
                started_at: Set(None),
                finished_at: Set(None),
                detail: Set("{}".into()),
            })
            .collect();
        incident_step::Entity::insert_many(steps).exec_without_returning(&txn).await?;
        incidents.metrics.reported.inc();
        tracing::warn!(incident_id = %data.incident_id, kind = %kind, platform_id = %data.platform_id, "incident registered");
    }
    txn.commit().await?;
    Ok(())
}

enum Outcome {
    Done(Value),
    /// Not finished; look again after the delay (progress kept in the detail).
    Waiting(Value, Duration),
    Failed(String, Value),
}

pub(crate) async fn drive(incidents: Arc<Incidents>, shutdown: CancellationToken) -> Result<(), IncidentError> {
    let period = Duration::from_millis(incidents.config.poll_ms.max(10));
    loop {
        match round(&incidents).await {
            Ok(true) if incidents.config.step_pause_ms == 0 => continue,
            Ok(true) => {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(incidents.config.step_pause_ms)) => continue,
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "incident workflow round failed; will retry"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = incidents.work.notified() => {}
            () = tokio::time::sleep(period) => {}
        }
    }
}

/// What must be done before a step may run. Containment does not wait for the e-mail: a
/// DPO's mail server being down must not leave tokens alive.
fn prerequisites(step: &str) -> &'static [&'static str] {
    match step {
        "report_containment" => &["notify_dpo", "contain"],
        "rotate_credentials" => &["contain"],
        "report_rotation" => &["notify_dpo", "rotate_credentials"],
        "final_report" => &["notify_dpo", "contain", "report_containment", "rotate_credentials", "report_rotation"],
        _ => &[],
    }
}

/// Runs every due step whose prerequisites are done. True if a step finished.
async fn round(incidents: &Incidents) -> Result<bool, IncidentError> {
    let now = incidents.clock.now();
    let open: Vec<String> = incident_step::Entity::find()
        .filter(incident_step::Column::State.eq("pending"))
        .all(incidents.store.db())
        .await?
        .into_iter()
        .map(|s| s.incident_id)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut runnable = Vec::new();
    for incident_id in open {
        let steps = incident_step::Entity::find()
            .filter(incident_step::Column::IncidentId.eq(incident_id))
            .order_by_asc(incident_step::Column::Position)
            .all(incidents.store.db())
            .await?;
        let done: std::collections::HashSet<&str> =
            steps.iter().filter(|s| s.state != "pending").map(|s| s.step.as_str()).collect();
        let planned: std::collections::HashSet<&str> = steps.iter().map(|s| s.step.as_str()).collect();
        for step in &steps {
            let ready = prerequisites(&step.step).iter().all(|p| done.contains(p) || !planned.contains(p));
            if step.state == "pending" && ready && step.next_attempt_at <= now {
                runnable.push(step.clone());
            }
        }
    }
    let mut progressed = false;
    for step in runnable {
        if progressed && incidents.config.step_pause_ms > 0 {
            break;
        }
        let Some(incident) = incident::Entity::find_by_id(step.incident_id.clone()).one(incidents.store.db()).await?
        else {
            continue;
        };
        let detail: Value = serde_json::from_str(&step.detail).unwrap_or_else(|_| json!({}));
        // Every step, on whichever replica, continues the trace of the report.
        let span = tracing::info_span!(
            "incident_step",
            incident_id = %incident.incident_id,
            step = %step.step,
            attempt = step.attempts + 1,
            outcome = tracing::field::Empty,
        );
        custodian_telemetry::adopt_remote_parent(&span, incident.traceparent.as_deref());
        let outcome = run_step(incidents, &incident, &step, detail).instrument(span.clone()).await;
        span.record(
            "outcome",
            match &outcome {
                Outcome::Done(_) => "done",
                Outcome::Waiting(..) => "waiting",
                Outcome::Failed(..) => "failed",
            },
        );
        progressed |= record(incidents, &incident, &step, outcome).instrument(span).await?;
    }
    Ok(progressed)
}

async fn record(
    incidents: &Incidents,
    incident: &incident::Model,
    step: &incident_step::Model,
    outcome: Outcome,
) -> Result<bool, IncidentError> {
    let now = incidents.clock.now();
    let started = step.started_at.unwrap_or(now);
    let update = |attempts: i32| {
        incident_step::Entity::update_many()
            .col_expr(incident_step::Column::StartedAt, Some(started).into())
            .col_expr(incident_step::Column::Attempts, attempts.into())
            .filter(incident_step::Column::Id.eq(step.id.clone()))
            .filter(incident_step::Column::State.eq("pending"))
    };
    match outcome {
        Outcome::Done(detail) => {
            let txn = incidents.store.begin_write().await?;
            update(step.attempts + 1)
                .col_expr(incident_step::Column::State, "done".into())
                .col_expr(incident_step::Column::FinishedAt, Some(now).into())
                .col_expr(incident_step::Column::LastError, Option::<String>::None.into())
                .col_expr(incident_step::Column::Detail, detail.to_string().into())
                .exec(&txn)
                .await?;
            let last = plan(&incident.kind).last().is_some_and(|s| *s == step.step);
            if last {
                incident::Entity::update_many()
                    .col_expr(incident::Column::State, "closed".into())
                    .col_expr(incident::Column::ClosedAt, Some(now).into())
                    .col_expr(incident::Column::UpdatedAt, now.into())
                    .filter(incident::Column::IncidentId.eq(incident.incident_id.clone()))
                    .exec(&txn)
                    .await?;
                incidents.metrics.closed.inc();
            }
            // What the step did that others must know about.
            let mut events = Vec::new();
            for (channel, key) in
                [(DpoChannel::Email, "email_delivered_at"), (DpoChannel::Webhook, "webhook_delivered_at")]
            {
                if let Some(at) = detail[key].as_str().and_then(|t| t.parse::<DateTime<Utc>>().ok()) {
                    let data = DpoNotifiedV1 { incident_id: incident.incident_id.clone(), channel, delivered_at: at };
                    let id = derived_event_id("dpo.notified", &format!("{}:{key}", step.id));
                    events.push(custodian_bus::outbox_row(
                        subjects::DPO_NOTIFIED,
                        &CloudEvent::with_id(id, SOURCE, now, data),
                    ));
                }
            }
            if step.step == "rotate_credentials"
                && let Some(version) = detail["version"].as_i64()
            {
                let data = CredentialRotatedV1 {
                    platform_id: incident.platform_id.clone(),
                    credential_version: version as u32,
                    not_after_previous: detail["not_after_previous"]
                        .as_str()
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(now),
                };
                let id = derived_event_id("credential.rotated", &format!("{}:{version}", incident.platform_id));
                events.push(custodian_bus::outbox_row(
                    subjects::CREDENTIAL_ROTATED,
                    &CloudEvent::with_id(id, SOURCE, now, data),
                ));
            }
            if !events.is_empty() {
                outbox::enqueue(&txn, SERVICE, events, now).await?;
            }
            txn.commit().await?;
            incidents.relay.wake();
            tracing::info!(incident_id = %incident.incident_id, step = %step.step, "incident step done");
            Ok(true)
        }
        Outcome::Waiting(detail, after) => {
            // Waiting is not a failed attempt.
            update(step.attempts)
                .col_expr(incident_step::Column::Detail, detail.to_string().into())
                .col_expr(
                    incident_step::Column::NextAttemptAt,
                    (now + chrono::Duration::from_std(after).unwrap_or_default()).into(),
                )
                .exec(incidents.store.db())
                .await?;
            Ok(false)
        }
        Outcome::Failed(error, detail) => {
            let next = now + incidents.config.retry_delay(step.attempts);
            tracing::warn!(incident_id = %incident.incident_id, step = %step.step, attempts = step.attempts + 1, %error, "incident step failed; will retry");
            update(step.attempts + 1)
                .col_expr(incident_step::Column::LastError, Some(error.chars().take(1000).collect::<String>()).into())
                .col_expr(incident_step::Column::Detail, detail.to_string().into())
                .col_expr(incident_step::Column::NextAttemptAt, next.into())
                .exec(incidents.store.db())
                .await?;
            Ok(false)
        }
    }
}

async fn run_step(
    incidents: &Incidents,
    incident: &incident::Model,
    step: &incident_step::Model,
    detail: Value,
) -> Outcome {
    match step.step.as_str() {
        "notify_dpo" => notify(incidents, incident, step, detail, "initial").await,
        "report_containment" => notify(incidents, incident, step, detail, "containment").await,
        "report_rotation" => notify(incidents, incident, step, detail, "rotation").await,
        "final_report" => notify(incidents, incident, step, detail, "final").await,
        "contain" => contain(incidents, incident, detail).await,
        "rotate_credentials" => rotate(incidents, incident, detail).await,
        other => Outcome::Failed(format!("unknown step {other}"), detail),
    }
}

async fn exposure(incidents: &Incidents, incident: &incident::Model) -> Result<Exposure, String> {
    let client = incidents.bus.client();
    let query = ExposureQuery {
        platform_id: incident.platform_id.clone(),
        issuer: incident.issuer.clone(),
        subject: incident.subject.clone(),
    };
    let vault: ExposureReply =
        custodian_bus::query(client, custodian_events::incident::EXPOSURE, &query, QUERY_TIMEOUT)
            .await
            .map_err(|e| format!("the vault did not answer: {e}"))?;
    let ExposureReply::Exposure(vault) = vault else { return Err("the vault could not count".into()) };
    let ledger = ConsentQuery {
        platform_id: Some(incident.platform_id.clone()),
        subject: incident.subject.clone(),
        state: Some("granted".into()),
        limit: Some(10_000_000),
        ..Default::default()
    };
    let consents =
        match custodian_bus::query::<_, ConsentReply>(client, queries::CONSENTS, &ledger, QUERY_TIMEOUT).await {
            Ok(ConsentReply::Consents(list)) => list.len() as u64,
            Ok(ConsentReply::Error(e)) => return Err(format!("the ledger refused: {e}")),
            Ok(ConsentReply::Unavailable(e)) => return Err(format!("the ledger could not read its database: {e}")),
            Err(e) => return Err(format!("the ledger did not answer: {e}")),
        };
    Ok(Exposure {
        consents,
        people: vault.people,
        token_records: vault.token_records,
        open_sessions: vault.open_sessions,
    })
}

/// Keeps the open-incident and failing-step gauges current until `shutdown`.
pub(crate) async fn gauges(incidents: Arc<Incidents>, shutdown: CancellationToken) -> Result<(), IncidentError> {
    loop {
        if let Err(e) = read_gauges(&incidents).await {
            tracing::debug!(error = %e, "incident gauges not read");
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

async fn read_gauges(incidents: &Incidents) -> Result<(), IncidentError> {
    use sea_orm::PaginatorTrait as _;
    let db = incidents.store.db();
    let open = incident::Entity::find().filter(incident::Column::State.eq("open")).count(db).await?;
    let failing = incident_step::Entity::find()
        .filter(incident_step::Column::State.eq("pending"))
        .filter(incident_step::Column::LastError.is_not_null())
        .all(db)
        .await?;
    let metrics = &incidents.metrics;
    metrics.open.set(i64::try_from(open).unwrap_or(i64::MAX));
    metrics.failing_steps.clear();
    for step in ["notify_dpo", "contain", "report_containment", "rotate_credentials", "report_rotation", "final_report"]
    {
        let n = failing.iter().filter(|s| s.step == step).count();
        metrics.failing_steps.get_or_create(&vec![("step".to_owned(), step.to_owned())]).set(n as i64);
    }
    Ok(())
}

/// One notification to the DPO (e-mail, then the webhook if any). Progress is kept in the
/// detail so a retry does not send the e-mail twice.
async fn notify(
    incidents: &Incidents,
    incident: &incident::Model,
    step: &incident_step::Model,
    mut detail: Value,
    stage: &str,
) -> Outcome {
    // The first notification counts what is exposed; later ones report what was done.
    let counted = if stage == "initial" {
        match detail.get("exposure").cloned() {
            Some(e) => serde_json::from_value(e).unwrap_or_default(),
            None => match exposure(incidents, incident).await {
                Ok(e) => {
                    detail["exposure"] = json!(e);
                    e
                }
                Err(e) => return Outcome::Failed(e, detail),
            },
        }
    } else {
        first_exposure(incidents, incident).await
    };
    let steps = incident_step::Entity::find()
        .filter(incident_step::Column::IncidentId.eq(incident.incident_id.clone()))
        .order_by_asc(incident_step::Column::Position)
        .all(incidents.store.db())
        .await
        .unwrap_or_default();
    if detail.get("email_delivered_at").is_none() {
        let now = incidents.clock.now();
        let notice = dpo::compose(stage, incident, &counted, &incidents.config.dpo.contact, &steps, &step.step, now);
        let message_id = format!("<{}.{}@custodian>", incident.incident_id, step.step);
        let sent = match &incidents.mailer {
            Ok(mailer) => dpo::send_email(&incidents.config.dpo, mailer, &message_id, &notice).await,
            Err(e) => Err(e.clone()),
        };
        match sent {
            Ok(at) => {
                incidents.metrics.emails.inc();
                detail["email_delivered_at"] = json!(at);
                detail["message_id"] = json!(message_id);
                // Recorded at once: a crash before the step is marked must not send it again.
                let _ = incident_step::Entity::update_many()
                    .col_expr(incident_step::Column::Detail, detail.to_string().into())
                    .filter(incident_step::Column::Id.eq(step.id.clone()))
                    .exec(incidents.store.db())
                    .await;
            }
            Err(e) => return Outcome::Failed(e, detail),
        }
    }
    if incidents.config.dpo.webhook_url.is_some() && detail.get("webhook_delivered_at").is_none() {
        let payload = json!({
            "incident_id": incident.incident_id, "stage": stage, "kind": incident.kind,
            "platform_id": incident.platform_id, "summary": incident.summary,
            "detected_at": incident.detected_at, "exposure": counted, "contact": incidents.config.dpo.contact,
        });
        match dpo::send_webhook(&incidents.config.dpo, &payload).await {
            Ok(Some(at)) => detail["webhook_delivered_at"] = json!(at),
            Ok(None) => {}
            Err(e) => return Outcome::Failed(e, detail),
        }
    }
    Outcome::Done(detail)
}

async fn first_exposure(incidents: &Incidents, incident: &incident::Model) -> Exposure {
    let id = format!("{}:notify_dpo", incident.incident_id);
    match incident_step::Entity::find_by_id(id).one(incidents.store.db()).await {
        Ok(Some(s)) => serde_json::from_str::<Value>(&s.detail)
            .ok()
            .and_then(|d| serde_json::from_value(d["exposure"].clone()).ok())
            .unwrap_or_default(),
        _ => Exposure::default(),
    }
}

fn containment_scope(incidents: &Incidents, incident: &incident::Model) -> &'static str {
    match incident.kind.as_str() {
        "user_compromise" => "person",
        "data_leak" => match incidents.config.data_leak_containment.get(&incident.platform_id).map(String::as_str) {
            Some("none") => "none",
            _ => "platform",
        },
        _ => "platform",
    }
}

async fn contain(incidents: &Incidents, incident: &incident::Model, mut detail: Value) -> Outcome {
    let scope = containment_scope(incidents, incident);
    detail["scope"] = json!(scope);
    if scope == "none" {
        return Outcome::Done(detail);
    }
    let now = incidents.clock.now();
    if detail.get("command_at").is_none() {
        let data = IncidentContainV1 {
            incident_id: incident.incident_id.clone(),
            platform_id: incident.platform_id.clone(),
            issuer: if scope == "person" { incident.issuer.clone() } else { None },
            subject: if scope == "person" { incident.subject.clone() } else { None },
        };
        let event = CloudEvent::with_id(contain_event_id(&incident.incident_id), SOURCE, now, data);
        detail["command_at"] = json!(now);
        let result = async {
            let txn = incidents.store.begin_write().await?;
            outbox::enqueue(&txn, SERVICE, vec![custodian_bus::outbox_row(subjects::INCIDENT_CONTAIN, &event)], now)
                .await?;
            incident_step::Entity::update_many()
                .col_expr(incident_step::Column::Detail, detail.to_string().into())
                .filter(incident_step::Column::Id.eq(format!("{}:contain", incident.incident_id)))
                .exec(&txn)
                .await?;
            txn.commit().await
        }
        .await;
        if let Err(e) = result {
            return Outcome::Failed(e.to_string(), json!({}));
        }
        incidents.relay.wake();
        return Outcome::Waiting(detail, Duration::from_millis(incidents.config.poll_ms.max(10)));
    }
    let query = ContainmentQuery { incident_id: incident.incident_id.clone() };
    match custodian_bus::query::<_, ContainmentReply>(
        incidents.bus.client(),
        custodian_events::incident::CONTAINMENT,
        &query,
        QUERY_TIMEOUT,
    )
    .await
    {
        Ok(ContainmentReply::Containment(c)) => {
            detail["revocations"] = json!(c.revocations);
            detail["pending"] = json!(c.pending);
            detail["tokens_revoked"] = json!(c.tokens_revoked);
            detail["sessions_wiped"] = json!(c.sessions_wiped);
            if c.taken_over && c.pending == 0 {
                Outcome::Done(detail)
            } else {
                Outcome::Waiting(detail, Duration::from_millis(incidents.config.poll_ms.max(10)))
            }
        }
        Ok(ContainmentReply::Error(e)) => Outcome::Failed(format!("the vault: {e}"), detail),
        Err(e) => Outcome::Failed(format!("the vault did not answer: {e}"), detail),
    }
}

/// create → set → test → finish. The new version is stored (sealed) the moment the OP issues
/// it; the check and the switch are repeatable.
async fn rotate(incidents: &Incidents, incident: &incident::Model, mut detail: Value) -> Outcome {
    let Some(platform) = incidents.config.platforms.iter().find(|p| p.platform_id == incident.platform_id) else {
        return Outcome::Failed(
            format!("no [[incident.platforms]] registration for {} (RFC 7592): rotate by hand", incident.platform_id),
            detail,
        );
    };
    let db = incidents.store.db();
    let now = incidents.clock.now();
    if detail.get("version").is_none() {
        let current = match credentials::current(db, &platform.platform_id).await {
            Ok(Some(row)) => row,
            Ok(None) => return Outcome::Failed("no current credential stored".into(), detail),
            Err(e) => return Outcome::Failed(e.to_string(), detail),
        };
        let secrets = match credentials::open(incidents, &current) {
            Ok(s) => s,
            Err(e) => return Outcome::Failed(e.to_string(), detail),
        };
        // A crash between the OP's answer and our record of it would lose the new secret:
        // the request is written down first, and a resumed step checks whether it took effect.
        if detail.get("requested_at").is_some() {
            match rotation::authenticates(platform, &SecretString::from(secrets.client_secret.clone())).await {
                Ok(true) => {} // the earlier request never reached the OP: ask again
                Ok(false) => {
                    return Outcome::Failed(
                        "the OP rotated the secret but its answer was lost in a crash: rotate it by hand at the \
                         OP and import it (the old secret no longer works)"
                            .into(),
                        detail,
                    );
                }
                Err(e) => return Outcome::Failed(e, detail),
            }
        }
        detail["requested_at"] = json!(now);
        if let Err(e) = incident_step::Entity::update_many()
            .col_expr(incident_step::Column::Detail, detail.to_string().into())
            .filter(incident_step::Column::Id.eq(format!("{}:rotate_credentials", incident.incident_id)))
            .exec(db)
            .await
        {
            return Outcome::Failed(e.to_string(), detail);
        }
        let next = match rotation::rotate(platform, &secrets).await {
            Ok(next) => next,
            Err(e) => return Outcome::Failed(e, detail),
        };
        let version = current.version + 1;
        detail["previous_version"] = json!(current.version);
        detail["version"] = json!(version);
        detail["created_at"] = json!(now);
        let stored = async {
            let txn = incidents.store.begin_write().await.map_err(IncidentError::from)?;
            credentials::store(incidents, &txn, &platform.platform_id, version, "pending", &next, now).await?;
            incident_step::Entity::update_many()
                .col_expr(incident_step::Column::Detail, detail.to_string().into())
                .filter(incident_step::Column::Id.eq(format!("{}:rotate_credentials", incident.incident_id)))
                .exec(&txn)
                .await?;
            txn.commit().await.map_err(IncidentError::from)
        }
        .await;
        if let Err(e) = stored {
            // The OP has issued a secret we could not keep: say so loudly, an operator must act.
            tracing::error!(platform_id = %platform.platform_id, error = %e, "rotated secret NOT stored; the platform needs a manual rotation");
            return Outcome::Failed(format!("new secret not stored: {e}"), detail);
        }
        incidents.metrics.rotations.inc();
    }
    let version = detail["version"].as_i64().unwrap_or_default() as i32;
    let previous = detail["previous_version"].as_i64().unwrap_or_default() as i32;
    let rows = (
        credentials::by_version(db, &platform.platform_id, version).await,
        credentials::by_version(db, &platform.platform_id, previous).await,
    );
    let (Ok(Some(new_row)), Ok(Some(old_row))) = rows else {
        return Outcome::Failed("stored credential versions missing".into(), detail);
    };
    let (new, old) = match (credentials::open(incidents, &new_row), credentials::open(incidents, &old_row)) {
        (Ok(n), Ok(o)) => (n, o),
        _ => return Outcome::Failed("stored credentials unreadable".into(), detail),
    };
    match rotation::authenticates(platform, &SecretString::from(new.client_secret.clone())).await {
        Ok(true) => detail["new_secret_authenticates"] = json!(true),
        Ok(false) => return Outcome::Failed("the new secret does not authenticate at the OP".into(), detail),
        Err(e) => return Outcome::Failed(e, detail),
    }
    match rotation::authenticates(platform, &SecretString::from(old.client_secret.clone())).await {
        Ok(works) => detail["old_secret_refused"] = json!(!works),
        Err(e) => return Outcome::Failed(e, detail),
    }
    detail["tested_at"] = json!(now);
    let grace = chrono::Duration::seconds(incidents.config.previous_secret_grace_secs as i64);
    let not_after = now + grace;
    detail["not_after_previous"] = json!(not_after);
    let switched = async {
        let txn = incidents.store.begin_write().await?;
        credential::Entity::update_many()
            .col_expr(credential::Column::State, "current".into())
            .filter(credential::Column::Id.eq(new_row.id.clone()))
            .exec(&txn)
            .await?;
        credential::Entity::update_many()
            .col_expr(credential::Column::State, (if grace.is_zero() { "retired" } else { "previous" }).into())
            .col_expr(credential::Column::NotAfter, Some(not_after).into())
            .filter(credential::Column::PlatformId.eq(platform.platform_id.clone()))
            .filter(credential::Column::Version.lt(version))
            .exec(&txn)
            .await?;
        txn.commit().await
    }
    .await;
    if let Err(e) = switched {
        return Outcome::Failed(e.to_string(), detail);
    }
    tracing::warn!(platform_id = %platform.platform_id, version, "client secret rotated");
    Outcome::Done(detail)
}

pub(crate) async fn view(incidents: &Incidents, query: Result<IncidentQuery, String>) -> IncidentReply {
    let query = match query {
        Ok(q) => q,
        Err(e) => return IncidentReply::Error(e),
    };
    // One snapshot: the step that closes an incident commits both at once.
    let snapshot = match incidents.store.begin_snapshot().await {
        Ok(txn) => txn,
        Err(e) => return IncidentReply::Error(e.to_string()),
    };
    let db = &snapshot;
    if query.incident_id.is_empty()
        && let Some(recent) = query.recent
    {
        let newest =
            incident::Entity::find().order_by_desc(incident::Column::CreatedAt).limit(recent.min(100)).all(db).await;
        let mut views = Vec::new();
        for incident in newest.unwrap_or_default() {
            match incident_view(db, incident).await {
                Ok(view) => views.push(view),
                Err(e) => return IncidentReply::Error(e.to_string()),
            }
        }
        return IncidentReply::Incidents(views);
    }
    let incident = match incident::Entity::find_by_id(query.incident_id.clone()).one(db).await {
        Ok(Some(i)) => i,
        Ok(None) => return IncidentReply::NotFound,
        Err(e) => return IncidentReply::Error(e.to_string()),
    };
    match incident_view(db, incident).await {
        Ok(view) => IncidentReply::Incident(Box::new(view)),
        Err(e) => IncidentReply::Error(e.to_string()),
    }
}

async fn incident_view<C: sea_orm::ConnectionTrait>(
    db: &C,
    incident: incident::Model,
) -> Result<IncidentView, sea_orm::DbErr> {
    let steps = incident_step::Entity::find()
        .filter(incident_step::Column::IncidentId.eq(incident.incident_id.clone()))
        .order_by_asc(incident_step::Column::Position)
        .all(db)
        .await?;
    Ok(IncidentView {
        incident_id: incident.incident_id,
        kind: incident.kind,
        platform_id: incident.platform_id,
        issuer: incident.issuer,
        subject: incident.subject,
        summary: incident.summary,
        detected_at: incident.detected_at,
        reporter: incident.reporter,
        state: incident.state,
        created_at: incident.created_at,
        closed_at: incident.closed_at,
        steps: steps
            .into_iter()
            .map(|s| StepView {
                next_attempt_at: (s.state == "pending").then_some(s.next_attempt_at),
                step: s.step,
                state: s.state,
                attempts: s.attempts,
                last_error: s.last_error,
                started_at: s.started_at,
                finished_at: s.finished_at,
                detail: serde_json::from_str(&s.detail).unwrap_or(Value::Null),
            })
            .collect(),
    })
}
