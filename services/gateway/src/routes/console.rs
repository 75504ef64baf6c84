//! `/console`: the operators' pages — revocations pending or stuck, sweeps with their progress
//! and history, incidents with their steps and the DPO's deliveries, and, for the DPO, the
//! privacy log (each read recorded with the reader's name by the audit service).
//!
//! Operators sign in with their own machine token (one per person, named, with the role the
//! API enforces), not at the OP: the OP here is the citizens' identity provider, and a sign-in
//! there goes through the platform's consent. The console is the API's authorization shown as
//! pages: it asks exactly what the token's role may ask. The token is kept in an HttpOnly,
//! SameSite=Strict cookie (`__Host-` over HTTPS) for 8 hours; forms carry a CSRF token bound
//! to it, and the sign-in form one that its own cookie repeats. With script on, `/assets/live.js` updates the page every 5 s (the operator can pause
//! it); without, a refresh link.

use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use custodian_events::ReplayOutcome;
use custodian_events::incident::{INCIDENTS, IncidentQuery, IncidentReply, IncidentView};
use custodian_events::queries::{self, SweepQuery, SweepReply, SweepView};
use custodian_events::replay::{ReplayReply, ReplayRequest};
use custodian_events::vault::{self, RevocationQuery, RevocationReply};
use custodian_web::i18n::{Lang, Tr};
use custodian_web::pages::lang_choices;

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::routes::portal::{PageFrame, page};

const CONSOLE_COOKIE: &str = "custodian_console";
const SECURE_CONSOLE_COOKIE: &str = "__Host-custodian_console";
const SIGNED_IN_FOR_SECS: i64 = 8 * 3600;
/// The sign-in form's CSRF token, also in this cookie (double submit): a form posted from
/// elsewhere has neither the page's token nor, SameSite=Strict, the cookie.
const LOGIN_CSRF_COOKIE: &str = "custodian_console_sign_in";
const SECURE_LOGIN_CSRF_COOKIE: &str = "__Host-custodian_console_sign_in";
/// How long a sign-in form may stay open before it has to be loaded again.
const SIGN_IN_FORM_SECS: i64 = 3600;
/// How many of the latest sweeps and incidents the page shows.
const RECENT: u64 = 20;

/// An operator signed in to the console.
#[derive(Debug, Clone)]
pub struct Operator {
    pub name: String,
    pub role: &'static str,
    pub csrf: String,
    role_kind: Role,
}

fn cookie_name(state: &AppState) -> &'static str {
    if state.login.cookie_secure() { SECURE_CONSOLE_COOKIE } else { CONSOLE_COOKIE }
}

fn login_csrf_cookie(state: &AppState) -> &'static str {
    if state.login.cookie_secure() { SECURE_LOGIN_CSRF_COOKIE } else { LOGIN_CSRF_COOKIE }
}

fn console_token(state: &AppState, headers: &HeaderMap) -> Option<String> {
    custodian_web::pages::cookie(headers, cookie_name(state))
}

fn csrf_of(token: &str) -> String {
    custodian_crypto::sha256_hex(&format!("custodian-console-csrf\u{0}{token}"))
}

/// The operator whose token the cookie holds, if it is an operator's (ops, DPO, responder).
async fn operator(state: &AppState, headers: &HeaderMap) -> Option<Operator> {
    let token = console_token(state, headers)?;
    match state.auth.authenticate(&token).await {
        Ok(Caller::Machine { name, role, .. }) if role != Role::Platform => {
            Some(Operator { name, role: role.label(), csrf: csrf_of(&token), role_kind: role })
        }
        _ => None,
    }
}

/// A sweep as the console shows it.
#[derive(Debug)]
struct SweepLine {
    id: String,
    platform: String,
    state: String,
    dry_run: bool,
    expired: u64,
    scanned: u64,
    total: u64,
    percent: u64,
    requested_by: String,
    started: String,
    finished: String,
}

#[derive(Debug)]
struct StepLine {
    name: String,
    state: String,
    done: bool,
    attempts: i32,
    last_error: String,
    finished: String,
    delivery: String,
}

#[derive(Debug)]
struct IncidentCard {
    id: String,
    kind: String,
    platform: String,
    state: String,
    detected: String,
    summary: String,
    steps: Vec<StepLine>,
}

#[derive(Debug)]
struct RevocationLine {
    id: String,
    platform: String,
    started: String,
    tokens_pending: usize,
    views_pending: usize,
    attempts: i32,
}

/// The deployment's health as the console shows it.
#[derive(Debug)]
struct Health {
    read_at: String,
    consumers: Vec<ConsumerLine>,
    dead_letters: Vec<(String, u64)>,
    recent_dead_letters: Vec<DeadLetterLine>,
    outboxes: Vec<(String, u64, String)>,
}

#[derive(Debug)]
struct DeadLetterLine {
    id: String,
    /// The consumer that refused it and replays it, if it is one that replays.
    durable: Option<&'static str>,
    recorded_at: String,
    service: String,
    original_subject: String,
    original_id: String,
    /// Why, in the operator's language.
    cause: String,
    /// The consumer's own reason, for engineers.
    reason: String,
    /// The operators' replays of it, in words.
    replays: Vec<String>,
}

#[derive(Debug)]
struct ConsumerLine {
    name: String,
    leader: String,
    alarm: bool,
    pending: u64,
    unacknowledged: u64,
}

#[derive(Debug)]
struct PrivacyLine {
    used_at: String,
    platform: String,
    caller: String,
    organisation: String,
    service: String,
    purpose: String,
}

/// One read of the privacy log as the DPO's console lists it.
#[derive(Debug)]
struct PrivacyReadLine {
    read_at: String,
    reader: String,
    via: String,
    asked: String,
    entries: u64,
}

/// The privacy log's entries and who read it (this read first).
#[derive(Debug)]
struct Privacy {
    entries: Vec<PrivacyLine>,
    reads: Vec<PrivacyReadLine>,
}

#[derive(Template)]
#[template(path = "console.html")]
struct ConsolePage {
    page: PageFrame,
    /// The sign-in form's CSRF token (signed out only).
    sign_in_csrf: String,
    refused: Option<String>,
    /// What came of the replay the operator just asked for.
    replayed: Option<String>,
    revocations: Option<Vec<RevocationLine>>,
    sweeps: Option<Vec<SweepLine>>,
    incidents: Option<Vec<IncidentCard>>,
    privacy: Option<Privacy>,
    /// The DPO's privacy log was asked for and the audit service did not answer.
    privacy_unavailable: bool,
    health: Option<Health>,
    /// Sections the role may see whose service did not answer.
    unavailable: Vec<String>,
}

fn frame(state: &AppState, headers: &HeaderMap, lang: Option<&str>, operator: Option<Operator>) -> PageFrame {
    let tr = Tr::new(Lang::negotiate(lang, headers), state.portal.tz());
    PageFrame { tr, langs: lang_choices(tr.lang, "/console"), person: None, operator }
}

/// A word of a machine's vocabulary in the operator's language: one the catalogue does
/// not know yet (a new step, state or kind) shows as the machine wrote it.
fn translated_or_as_is(tr: &Tr, key: &str, word: &str) -> String {
    if tr.has(key) { tr.t(key) } else { word.to_owned() }
}

fn step_label(tr: &Tr, step: &str) -> String {
    translated_or_as_is(tr, &format!("console-step-{step}"), step)
}

/// A sweep's, an incident's or a step's state (`pending`, `running`, `done`, `closed`…).
fn state_word(tr: &Tr, state: &str) -> String {
    translated_or_as_is(tr, &format!("console-state-{state}"), state)
}

fn incident_kind(tr: &Tr, kind: &str) -> String {
    translated_or_as_is(tr, &format!("console-kind-{kind}"), kind)
}

/// Why a dead letter was refused, in words, the consumer's reason kept as the detail.
fn dead_letter_cause(tr: &Tr, reason: &str) -> String {
    tr.t(&format!("console-dead-letter-{}", custodian_events::DeadLetterV1::cause(reason).as_str()))
}

fn incident_card(tr: &Tr, state: &AppState, i: IncidentView) -> IncidentCard {
    IncidentCard {
        steps: i
            .steps
            .iter()
            .map(|s| {
                let delivered =
                    s.detail.get("email_delivered_at").and_then(|v| v.as_str()).and_then(|t| t.parse().ok());
                let delivery = match delivered {
                    Some(at) => tr.t1("console-mail-delivered", "time", &tr.datetime(&at)),
                    None => String::new(),
                };
                StepLine {
                    name: step_label(tr, &s.step),
                    done: s.state == "done",
                    state: state_word(tr, &s.state),
                    attempts: s.attempts,
                    last_error: s.last_error.clone().unwrap_or_default(),
                    finished: s.finished_at.map(|t| tr.datetime(&t)).unwrap_or_default(),
                    delivery,
                }
            })
            .collect(),
        id: i.incident_id,
        kind: incident_kind(tr, &i.kind),
        platform: state.portal.platform_name(&i.platform_id),
        state: state_word(tr, &i.state),
        detected: tr.datetime(&i.detected_at),
        summary: i.summary,
    }
}

async fn recent_sweeps(state: &AppState, tr: &Tr) -> Option<Vec<SweepLine>> {
    let query = SweepQuery { recent: Some(RECENT), ..Default::default() };
    let reply = custodian_bus::query_idempotent::<_, SweepReply>(
        state.bus.client(),
        queries::SWEEPS,
        &query,
        Duration::from_secs(5),
    )
    .await;
    let Ok(SweepReply::Sweeps(list)) = reply else { return None };
    Some(list.into_iter().map(|s: SweepView| sweep_line(state, tr, s)).collect())
}

fn sweep_line(state: &AppState, tr: &Tr, s: SweepView) -> SweepLine {
    let total = s.total.unwrap_or(s.scanned).max(s.scanned);
    SweepLine {
        percent: s.scanned.saturating_mul(100).checked_div(total).unwrap_or(100),
        platform: s.platform_id.map_or_else(|| tr.t("console-all-platforms"), |p| state.portal.platform_name(&p)),
        id: s.sweep_id,
        state: state_word(tr, &s.state),
        dry_run: s.dry_run,
        expired: s.expired,
        scanned: s.scanned,
        total,
        requested_by: s.requested_by,
        started: s.started_at.map(|t| tr.datetime(&t)).unwrap_or_default(),
        finished: s.finished_at.map(|t| tr.datetime(&t)).unwrap_or_default(),
    }
}

async fn recent_incidents(state: &AppState, tr: &Tr) -> Option<Vec<IncidentCard>> {
    let query = IncidentQuery { recent: Some(RECENT), ..Default::default() };
    let reply = custodian_bus::query_idempotent::<_, IncidentReply>(
        state.bus.client(),
        INCIDENTS,
        &query,
        Duration::from_secs(5),
    )
    .await;
    let Ok(IncidentReply::Incidents(list)) = reply else { return None };
    Some(list.into_iter().map(|i| incident_card(tr, state, i)).collect())
}

async fn pending_revocations(state: &AppState, tr: &Tr) -> Option<Vec<RevocationLine>> {
    let query = RevocationQuery { pending: true, ..Default::default() };
    let reply = custodian_bus::query_idempotent::<_, RevocationReply>(
        state.bus.client(),
        vault::REVOCATIONS,
        &query,
        Duration::from_secs(5),
    )
    .await;
    let Ok(RevocationReply::Receipts(list)) = reply else { return None };
    Some(
        list.into_iter()
            .map(|r| RevocationLine {
                tokens_pending: r.tokens.iter().filter(|t| t.done_at.is_none()).count(),
                views_pending: r.views.iter().filter(|v| v.state == "pending").count(),
                attempts: r
                    .tokens
                    .iter()
                    .map(|t| t.attempts)
                    .chain(r.views.iter().map(|v| v.attempts))
                    .max()
                    .unwrap_or(0),
                platform: state.portal.platform_name(&r.platform_id),
                started: tr.datetime(&r.started_at),
                id: r.revocation_id,
            })
            .collect(),
    )
}

async fn health(state: &AppState, tr: &Tr) -> Option<Health> {
    let reply = custodian_bus::query_idempotent::<_, queries::HealthReply>(
        state.bus.client(),
        queries::HEALTH,
        &queries::HealthQuery::default(),
        Duration::from_secs(5),
    )
    .await;
    let Ok(queries::HealthReply::Health(view)) = reply else { return None };
    Some(Health {
        read_at: tr.datetime(&view.read_at),
        consumers: view
            .consumers
            .into_iter()
            .map(|c| ConsumerLine {
                leader: match (&c.leader, c.takes_turns) {
                    (Some(holder), _) => holder.clone(),
                    (None, true) => tr.t("console-no-leader"),
                    (None, false) => tr.t("console-shared"),
                },
                alarm: c.takes_turns && c.leader.is_none(),
                name: c.name,
                pending: c.pending,
                unacknowledged: c.unacknowledged,
            })
            .collect(),
        dead_letters: view.dead_letters,
        recent_dead_letters: view
            .recent_dead_letters
            .into_iter()
            .map(|d| {
                let service = d.subject.rsplit('.').next().unwrap_or_default().to_owned();
                DeadLetterLine {
                    durable: custodian_bus::trust::replaying_durable(&service, &d.original_subject),
                    replays: d.replays.iter().map(|r| replay_line(tr, r)).collect(),
                    id: d.id,
                    recorded_at: tr.datetime(&d.recorded_at),
                    service,
                    original_subject: d.original_subject,
                    original_id: d.original_id.unwrap_or_default(),
                    cause: dead_letter_cause(tr, &d.reason),
                    reason: d.reason,
                }
            })
            .collect(),
        outboxes: view.outboxes.into_iter().map(|o| (o.publisher, o.waiting, tr.datetime(&o.oldest))).collect(),
    })
}

fn replay_line(tr: &Tr, r: &queries::ReplaySummary) -> String {
    let key = match r.outcome {
        ReplayOutcome::Applied => "console-replay-applied",
        ReplayOutcome::Refused => "console-replay-refused",
        ReplayOutcome::NotNow => "console-replay-not-now",
    };
    let time = tr.datetime(&r.recorded_at);
    let reason = r.reason.clone().unwrap_or_default();
    tr.args(key, &[("operator", r.operator.as_str()), ("time", time.as_str()), ("reason", reason.as_str())])
}

/// The privacy log as `reader` reads it, then the record of its reads, this one included
/// (the audit service records a read before it answers).
async fn privacy_log(state: &AppState, tr: &Tr, reader: &str) -> Option<Privacy> {
    let filter = crate::routes::privacy::Filter { limit: Some(50), ..Default::default() };
    let entries = crate::routes::privacy::read_log(state, reader.to_owned(), filter).await.ok()?;
    let reads = crate::routes::privacy::read_reads(state, Some(RECENT)).await.ok()?;
    let entries = entries
        .into_iter()
        .map(|e| PrivacyLine {
            used_at: tr.datetime(&e.used_at),
            platform: state.portal.platform_name(&e.platform_id),
            caller: e.caller_identity,
            organisation: e.caller_organisation.unwrap_or_default(),
            service: e.service,
            purpose: e.purpose.unwrap_or_default(),
        })
        .collect();
    let reads = reads
        .into_iter()
        .map(|r| {
            let mut asked =
                vec![r.platform_id.map_or_else(|| tr.t("console-all-platforms"), |p| state.portal.platform_name(&p))];
            asked.extend(r.from.map(|t| tr.t1("console-privacy-from", "time", &tr.datetime(&t))));
            asked.extend(r.to.map(|t| tr.t1("console-privacy-to", "time", &tr.datetime(&t))));
            PrivacyReadLine {
                read_at: tr.datetime(&r.read_at),
                reader: r.reader,
                via: r.via,
                asked: asked.join(", "),
                entries: r.entries,
            }
        })
        .collect();
    Some(Privacy { entries, reads })
}

/// Set by `/assets/live.js` on its updates of the live region: the privacy log, outside that
/// region, is not read again (each read is recorded; the DPO reads it once per page).
const LIVE_UPDATE: &str = "x-custodian-live";

#[derive(Debug, Default, serde::Deserialize)]
pub struct ConsoleQuery {
    lang: Option<String>,
    /// Set by the redirect after a replay: what came of it.
    replayed: Option<String>,
}

/// `GET /console`: the sign-in form, or the sections the operator's role may see.
pub async fn console(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<ConsoleQuery>,
) -> Response {
    let signed_in = operator(&state, &headers).await;
    let frame = frame(&state, &headers, q.lang.as_deref(), signed_in.clone());
    let tr = frame.tr;
    let Some(op) = signed_in else {
        let status = if console_token(&state, &headers).is_some() { StatusCode::FORBIDDEN } else { StatusCode::OK };
        return sign_in_page(&state, frame, status, None, q.lang.as_deref());
    };
    let ops = op.role_kind == Role::Ops;
    let (revocations, sweeps, health) = if ops {
        tokio::join!(pending_revocations(&state, &tr), recent_sweeps(&state, &tr), health(&state, &tr))
    } else {
        (None, None, None)
    };
    let incidents = recent_incidents(&state, &tr).await;
    let dpo = op.role_kind == Role::Dpo;
    let read_privacy = dpo && !headers.contains_key(LIVE_UPDATE);
    let privacy = if read_privacy { privacy_log(&state, &tr, &op.name).await } else { None };
    let mut unavailable = Vec::new();
    for (shown, missing, key) in [
        (ops, health.is_none(), "console-health"),
        (ops, revocations.is_none(), "console-revocations"),
        (ops, sweeps.is_none(), "console-sweeps"),
        (true, incidents.is_none(), "console-incidents"),
    ] {
        if shown && missing {
            unavailable.push(tr.t(key));
        }
    }
    let replayed = match q.replayed.as_deref() {
        Some(outcome @ ("applied" | "refused" | "not_now" | "not_found" | "unavailable")) if ops => {
            Some(tr.t(&format!("console-replayed-{}", outcome.replace('_', "-"))))
        }
        _ => None,
    };
    let body = ConsolePage {
        page: frame,
        sign_in_csrf: String::new(),
        refused: None,
        replayed,
        revocations,
        sweeps,
        incidents,
        privacy_unavailable: read_privacy && privacy.is_none(),
        privacy,
        health,
        unavailable,
    };
    page(&state, StatusCode::OK, body.render(), q.lang.as_deref())
}

/// The sign-in form, with a fresh CSRF token in the form and in its cookie.
fn sign_in_page(
    state: &AppState,
    frame: PageFrame,
    status: StatusCode,
    refused: Option<String>,
    lang: Option<&str>,
) -> Response {
    let csrf = custodian_crypto::lower_hex(&custodian_crypto::random_32());
    let body = ConsolePage {
        page: frame,
        sign_in_csrf: csrf.clone(),
        refused,
        replayed: None,
        revocations: None,
        sweeps: None,
        incidents: None,
        privacy: None,
        privacy_unavailable: false,
        health: None,
        unavailable: Vec::new(),
    };
    let mut response = page(state, status, body.render(), lang);
    set_cookie(state, &mut response, login_csrf_cookie(state), &csrf, SIGN_IN_FORM_SECS);
    response
}

/// Sets one of the console's cookies: HttpOnly, SameSite=Strict, Secure over HTTPS; an
/// empty `value` with `max_age` 0 deletes it.
fn set_cookie(state: &AppState, response: &mut Response, name: &str, value: &str, max_age: i64) {
    let secure = if state.login.cookie_secure() { "; Secure" } else { "" };
    let cookie = format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// `POST /console/login`: an operator's token, checked as the API checks it, from the
/// console's own sign-in form (its CSRF token matches its cookie).
pub async fn login(State(state): State<Arc<AppState>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let field = |name: &str| url::form_urlencoded::parse(&body).find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    let token = field("token").unwrap_or_default();
    let refuse = |key: &str| {
        let frame = frame(&state, &headers, None, None);
        let refused = Some(frame.tr.t(key));
        sign_in_page(&state, frame, StatusCode::FORBIDDEN, refused, None)
    };
    let expected = custodian_web::pages::cookie(&headers, login_csrf_cookie(&state));
    let from_the_form = match (expected, field("csrf")) {
        (Some(expected), Some(sent)) => {
            !expected.is_empty() && crate::routes::login::constant_time_eq(expected.as_bytes(), sent.as_bytes())
        }
        _ => false,
    };
    if !custodian_web::pages::sent_from_this_site(&headers) || !from_the_form {
        return refuse("console-forged");
    }
    match state.auth.authenticate(&token).await {
        Ok(Caller::Machine { role, .. }) if role != Role::Platform => {}
        _ => return refuse("console-refused"),
    }
    let mut response = Redirect::to("/console").into_response();
    set_cookie(&state, &mut response, cookie_name(&state), &token, SIGNED_IN_FOR_SECS);
    // The sign-in form's token is used up.
    set_cookie(&state, &mut response, login_csrf_cookie(&state), "", 0);
    response
}

/// `POST /console/logout`: forgets the token (CSRF token required).
pub async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let csrf = url::form_urlencoded::parse(&body).find(|(k, _)| k == "csrf").map(|(_, v)| v.into_owned());
    if let Some(token) = console_token(&state, &headers)
        && (!custodian_web::pages::sent_from_this_site(&headers) || csrf.as_deref() != Some(csrf_of(&token).as_str()))
    {
        return crate::problem::Problem::forbidden("this sign-out did not come from the console").into_response();
    }
    let mut response = Redirect::to("/console").into_response();
    set_cookie(&state, &mut response, cookie_name(&state), "", 0);
    response
}

/// `POST /console/dead-letters/replay` (ops only, CSRF token required): asks the service
/// that refused a dead letter to try it again. The service reads the dead letter from the
/// audit chain itself and records the replay there with the operator's name; the page says
/// what came of it.
pub async fn replay(State(state): State<Arc<AppState>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let field = |name: &str| url::form_urlencoded::parse(&body).find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    let Some(op) = operator(&state, &headers).await else {
        return crate::problem::Problem::unauthorized("sign in to the console first").into_response();
    };
    if !custodian_web::pages::sent_from_this_site(&headers) || field("csrf").as_deref() != Some(op.csrf.as_str()) {
        return crate::problem::Problem::forbidden("this replay did not come from the console").into_response();
    }
    if op.role_kind != Role::Ops {
        return crate::problem::Problem::forbidden("replaying dead letters is for the ops role").into_response();
    }
    let id = field("id").filter(|id| !id.is_empty());
    let durable = field("durable").and_then(|d| {
        custodian_bus::trust::REPLAYING.iter().find(|(_, known, _)| *known == d).map(|(_, known, _)| *known)
    });
    let (Some(id), Some(durable)) = (id, durable) else {
        return crate::problem::Problem::bad_request("name the dead letter (id) and a consumer that replays (durable)")
            .into_response();
    };
    let Some(subject) = custodian_events::replay::replay_subject(durable) else {
        return crate::problem::Problem::bad_request("durable is not a subject token").into_response();
    };
    let asked = ReplayRequest { dead_letter_id: id, operator: op.name.clone() };
    // A replay never doubles an effect (the service's inbox), so a lost one is asked again.
    let reply = custodian_bus::query_idempotent::<_, ReplayReply>(
        state.bus.client(),
        &subject,
        &asked,
        Duration::from_secs(10),
    )
    .await;
    let outcome = match reply {
        Ok(ReplayReply::Replayed { outcome: ReplayOutcome::Applied, .. }) => "applied",
        Ok(ReplayReply::Replayed { outcome: ReplayOutcome::Refused, .. }) => "refused",
        Ok(ReplayReply::Replayed { outcome: ReplayOutcome::NotNow, .. }) => "not_now",
        Ok(ReplayReply::NotFound) => "not_found",
        Ok(ReplayReply::Error(e)) => {
            tracing::warn!(%durable, error = %e, "a dead letter's replay failed");
            "unavailable"
        }
        Err(e) => {
            tracing::warn!(%durable, error = %e, "a dead letter's replay was not answered");
            "unavailable"
        }
    };
    Redirect::to(&format!("/console?replayed={outcome}#dead-letters")).into_response()
}
