//! The person's portal: seed §1.4 made visible — every trusted platform able to act for
//! them, what it may access, and the means to withdraw its consent, with a receipt that shows
//! each step as it is done.
//!
//! `GET /` lists the platforms holding consent and the consents that ended, each with its
//! receipt; `GET /consents/revoke?platform_id=` asks for confirmation and says what
//! revoking does; `POST /consents/revoke` (CSRF token) does it and leads to
//! `GET /receipts/{id}`, a timeline with a refresh link that works without script, updated
//! live by `/assets/live.js` (same origin, which the person can pause) until every step is done.
//!
//! Pages are askama templates (compiled and type-checked with the binary, HTML-escaped
//! wherever a value goes) in the person's language, under a CSP with no `unsafe-inline`,
//! unframeable and never cached.

use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use custodian_events::queries::{ConsentQuery, ConsentView};
use custodian_events::vault::{self, Receipt, RevocationQuery, RevocationReply};
use custodian_web::i18n::{Lang, Tr};
use custodian_web::pages::{LangChoice, html, lang_choices, remember_lang};
use serde::Deserialize;

use crate::AppState;
use crate::auth::Caller;
use crate::problem::Problem;
use crate::routes::consents::{ask_ledger, person_revocation_id, revoke_for_person};
use crate::routes::login::{person_of_cookie, session_cookie};

/// Who is signed in, and the token their forms carry.
#[derive(Debug, Clone)]
pub struct Person {
    pub issuer: String,
    pub subject: String,
    pub csrf: String,
}

/// What every page shows around its content.
#[derive(Debug)]
pub struct PageFrame {
    pub tr: Tr,
    pub langs: Vec<LangChoice>,
    pub person: Option<Person>,
    /// An operator signed in to the console (never at the same time as a person's page).
    pub operator: Option<crate::routes::console::Operator>,
}

/// The form's CSRF token: bound to the session cookie (which a page of another site can
/// neither read nor set: HttpOnly, `__Host-` over HTTPS).
pub fn csrf_token(cookie: &str) -> String {
    custodian_crypto::sha256_hex(&format!("custodian-csrf\u{0}{cookie}"))
}

/// Whether a form came from this site's own page: its CSRF token matches the session's,
/// and the browser (when it says) sent it from this origin.
pub fn form_is_ours(headers: &HeaderMap, cookie: &str, csrf: &str) -> bool {
    // Compared as digests: the time taken says nothing about how much of the token matched.
    let matches = custodian_crypto::sha256_hex(csrf) == custodian_crypto::sha256_hex(&csrf_token(cookie));
    custodian_web::pages::sent_from_this_site(headers) && matches
}

#[derive(Debug, Default, Deserialize)]
pub struct LangQuery {
    pub lang: Option<String>,
}

/// The frame of a page at `path`: its language, and the person signed in (if any).
async fn frame(state: &AppState, headers: &HeaderMap, lang: Option<&str>, path: &str) -> PageFrame {
    let tr = Tr::new(Lang::negotiate(lang, headers), state.portal.tz());
    let person = match session_cookie(&state.login, headers) {
        Some(cookie) => match person_of_cookie(state, &cookie).await {
            Ok(Caller::Person { issuer, subject }) => Some(Person { issuer, subject, csrf: csrf_token(&cookie) }),
            _ => None,
        },
        None => None,
    };
    PageFrame { tr, langs: lang_choices(tr.lang, path), person, operator: None }
}

pub(crate) fn page(
    state: &AppState,
    status: StatusCode,
    rendered: askama::Result<String>,
    picked: Option<&str>,
) -> Response {
    let mut response = html(status, rendered);
    remember_lang(&mut response, picked, state.login.cookie_secure());
    response
}

/// A platform holding the person's consent, as the portal shows it.
#[derive(Debug)]
struct GrantedCard {
    name: String,
    legal: Option<String>,
    scopes: Vec<String>,
    assurance: String,
    granted_at: String,
    last_acted: String,
    views: String,
    revoke_href: String,
}

/// A consent that ended, with its receipt.
#[derive(Debug)]
struct EndedLine {
    name: String,
    ended: String,
    reason: String,
    receipt_href: Option<String>,
}

#[derive(Template)]
#[template(path = "portal.html")]
struct PortalPage {
    page: PageFrame,
    unavailable: bool,
    granted: Vec<GrantedCard>,
    ended: Vec<EndedLine>,
}

fn legal_line(state: &AppState, platform_id: &str, tr: &Tr) -> Option<String> {
    state.portal.platform(platform_id).map(|p| {
        let number = crate::registry::normalize_enterprise_number(&p.enterprise_number)
            .unwrap_or_else(|_| p.enterprise_number.clone());
        tr.t2("platform-legal", "name", &p.legal_name, "number", &number)
    })
}

fn card(state: &AppState, c: &ConsentView, tr: &Tr) -> GrantedCard {
    let registered = state.portal.platform(&c.platform_id);
    let views = registered
        .map(|p| {
            p.views.iter().map(|v| state.portal.view_name(&c.platform_id, &v.view_id, tr.lang)).collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
        .map_or_else(|| tr.t("platform-views-none"), |v| v.join(", "));
    GrantedCard {
        name: state.portal.platform_name(&c.platform_id),
        legal: legal_line(state, &c.platform_id, tr),
        scopes: c.scopes.iter().map(|s| state.portal.scope_words(&c.platform_id, s, tr)).collect(),
        assurance: c.acr.clone().unwrap_or_else(|| tr.t("platform-assurance-unknown")),
        granted_at: tr.datetime_or_never(&c.granted_at),
        last_acted: tr.datetime_or_never(&c.last_seen_at),
        views,
        revoke_href: format!(
            "/consents/revoke?{}",
            url::form_urlencoded::Serializer::new(String::new()).append_pair("platform_id", &c.platform_id).finish()
        ),
    }
}

/// The person's receipts, newest first (at most the vault's page of 100).
async fn receipts_of(state: &AppState, person: &Person) -> Result<Vec<Receipt>, Problem> {
    let query = RevocationQuery {
        issuer: Some(person.issuer.clone()),
        subject: Some(person.subject.clone()),
        ..Default::default()
    };
    ask_receipts(state, &query).await
}

async fn ask_receipts(state: &AppState, query: &RevocationQuery) -> Result<Vec<Receipt>, Problem> {
    match custodian_bus::query_idempotent::<_, RevocationReply>(
        state.bus.client(),
        vault::REVOCATIONS,
        query,
        Duration::from_secs(5),
    )
    .await
    {
        Ok(RevocationReply::Receipts(list)) => Ok(list),
        Ok(RevocationReply::Error(e)) => {
            tracing::warn!(error = %e, "receipts not answered");
            Err(Problem::unavailable("the token vault could not answer"))
        }
        Err(e) => {
            tracing::warn!(error = %e, "receipt query failed");
            Err(Problem::unavailable("the token vault did not answer"))
        }
    }
}

fn receipt_href(revocation_id: &str) -> String {
    format!("/receipts/{revocation_id}")
}

/// `GET /`: the platforms holding the person's consent, and those whose consent ended.
pub async fn portal(State(state): State<Arc<AppState>>, headers: HeaderMap, Query(q): Query<LangQuery>) -> Response {
    let frame = frame(&state, &headers, q.lang.as_deref(), "/").await;
    let tr = frame.tr;
    let Some(person) = frame.person.clone() else {
        let body = PortalPage { page: frame, unavailable: false, granted: Vec::new(), ended: Vec::new() }.render();
        return page(&state, StatusCode::OK, body, q.lang.as_deref());
    };
    let ledger = ConsentQuery {
        issuer: Some(person.issuer.clone()),
        subject: Some(person.subject.clone()),
        ..Default::default()
    };
    let (consents, receipts) = match (ask_ledger(&state, &ledger).await, receipts_of(&state, &person).await) {
        (Ok(consents), Ok(receipts)) => (consents, receipts),
        _ => {
            let body = PortalPage { page: frame, unavailable: true, granted: Vec::new(), ended: Vec::new() }.render();
            return page(&state, StatusCode::SERVICE_UNAVAILABLE, body, q.lang.as_deref());
        }
    };
    let granted = consents.iter().filter(|c| c.state == "granted").map(|c| card(&state, c, &tr)).collect();
    // Every receipt is an ended consent (a revocation, an expiry or an incident), newest first.
    let mut ended: Vec<EndedLine> = receipts
        .iter()
        .map(|r| EndedLine {
            name: state.portal.platform_name(&r.platform_id),
            ended: tr.t1("history-ended", "when", &tr.datetime(&r.started_at)),
            reason: tr.t(history_reason_key(&r.reason)),
            receipt_href: Some(receipt_href(&r.revocation_id)),
        })
        .collect();
    // A consent that ended with nothing for the vault to do has no receipt: listed too.
    for c in consents.iter().filter(|c| c.state != "granted") {
        if !receipts.iter().any(|r| r.platform_id == c.platform_id) {
            ended.push(EndedLine {
                name: state.portal.platform_name(&c.platform_id),
                ended: tr.t1("history-ended", "when", &tr.datetime_or_never(&c.ended_at)),
                reason: tr.t(history_reason_key(&c.state)),
                receipt_href: None,
            });
        }
    }
    let body = PortalPage { page: frame, unavailable: false, granted, ended }.render();
    page(&state, StatusCode::OK, body, q.lang.as_deref())
}

/// A page of a signed-in person asked without a session: 401, with the invitation to sign in.
fn signed_out(state: &AppState, frame: PageFrame, lang: Option<&str>) -> Response {
    let body = PortalPage { page: frame, unavailable: false, granted: Vec::new(), ended: Vec::new() }.render();
    page(state, StatusCode::UNAUTHORIZED, body, lang)
}

/// The history's words for why a consent ended (`revoked`, `expired`, `incident`).
fn history_reason_key(reason: &str) -> &'static str {
    match reason {
        "expired" => "history-reason-expired",
        "incident" => "history-reason-incident",
        _ => "history-reason-revoked",
    }
}

/// The receipt's first step: who asked for the revocation, and why.
fn receipt_asked_key(reason: &str) -> &'static str {
    match reason {
        "expired" => "receipt-asked-reason-expired",
        "incident" => "receipt-asked-reason-incident",
        _ => "receipt-asked",
    }
}

#[derive(Debug, Deserialize)]
pub struct ConfirmQuery {
    platform_id: String,
    lang: Option<String>,
}

#[derive(Template)]
#[template(path = "confirm.html")]
struct ConfirmPage {
    page: PageFrame,
    platform_id: String,
    name: String,
    legal: Option<String>,
}

/// `GET /consents/revoke?platform_id=`: what revoking does, and the form that does it.
pub async fn confirm(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<ConfirmQuery>,
) -> Response {
    if q.platform_id.is_empty() {
        return Problem::bad_request("platform_id must not be empty").into_response();
    }
    let path = format!(
        "/consents/revoke?{}",
        url::form_urlencoded::Serializer::new(String::new()).append_pair("platform_id", &q.platform_id).finish()
    );
    let frame = frame(&state, &headers, q.lang.as_deref(), &path).await;
    if frame.person.is_none() {
        return signed_out(&state, frame, q.lang.as_deref());
    }
    let tr = frame.tr;
    let body = ConfirmPage {
        name: state.portal.platform_name(&q.platform_id),
        legal: legal_line(&state, &q.platform_id, &tr),
        platform_id: q.platform_id,
        page: frame,
    }
    .render();
    page(&state, StatusCode::OK, body, q.lang.as_deref())
}

#[derive(Debug, Deserialize)]
pub struct RevokeForm {
    platform_id: String,
    csrf: String,
}

/// `POST /consents/revoke`: the confirmation's form. The session cookie says who; the CSRF
/// token (and the browser's `Sec-Fetch-Site`, when it sends one) that the form is this site's.
pub async fn revoke(State(state): State<Arc<AppState>>, headers: HeaderMap, Form(form): Form<RevokeForm>) -> Response {
    let Some(cookie) = session_cookie(&state.login, &headers) else {
        return Problem::unauthorized("sign in first at /login").into_response();
    };
    if !form_is_ours(&headers, &cookie, &form.csrf) {
        return Problem::forbidden("this form did not come from your consent page; reload it and try again")
            .into_response();
    }
    let (issuer, subject) = match person_of_cookie(&state, &cookie).await {
        Ok(Caller::Person { issuer, subject }) => (issuer, subject),
        Ok(_) => return Problem::unauthorized("sign in again at /login").into_response(),
        Err(problem) => return problem.into_response(),
    };
    match revoke_for_person(&state, &issuer, &subject, form.platform_id).await {
        Ok(accepted) => Redirect::to(&receipt_href(&accepted.revocation_id)).into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// One line of a receipt's timeline.
#[derive(Debug)]
struct Step {
    text: String,
    done: bool,
}

#[derive(Template)]
#[template(path = "receipt.html")]
struct ReceiptPage {
    page: PageFrame,
    revocation_id: String,
    name: String,
    pending: bool,
    steps: Vec<Step>,
    self_href: String,
}

#[derive(Template)]
#[template(path = "not_found.html")]
struct NotFoundPage {
    page: PageFrame,
}

/// The receipt as a timeline a person reads: what was asked, each token withdrawn at the
/// OP, each view's erasure, and when all was done.
fn timeline(state: &AppState, receipt: &Receipt, tr: &Tr) -> Vec<Step> {
    let mut steps = vec![Step {
        text: tr.t1(receipt_asked_key(&receipt.reason), "time", &tr.datetime(&receipt.started_at)),
        done: true,
    }];
    if receipt.tokens.is_empty() {
        steps.push(Step { text: tr.t("receipt-no-tokens"), done: true });
    }
    for token in &receipt.tokens {
        let what = tr.t(if token.token_kind == "refresh" { "receipt-token-refresh" } else { "receipt-token-access" });
        let (how, done) = match (token.outcome.as_str(), &token.done_at) {
            ("revoked", Some(at)) => (tr.t1("receipt-token-revoked", "time", &tr.time(at)), true),
            ("already_invalid", Some(at)) => (tr.t1("receipt-token-invalid", "time", &tr.time(at)), true),
            _ if token.attempts > 0 => {
                (tr.t1("receipt-token-retrying", "attempts", &(token.attempts + 1).to_string()), false)
            }
            _ => (tr.t("receipt-token-pending"), false),
        };
        steps.push(Step { text: tr.t2("receipt-token-line", "what", &what, "how", &how), done });
    }
    if receipt.views.is_empty() {
        steps.push(Step { text: tr.t("receipt-no-views"), done: true });
    }
    for view in &receipt.views {
        let name = state.portal.view_name(&receipt.platform_id, &view.view_id, tr.lang);
        let step = match (view.state.as_str(), &view.acked_at) {
            ("acked", Some(at)) => {
                Step { text: tr.t2("receipt-view-acked", "view", &name, "time", &tr.time(at)), done: true }
            }
            ("expired_by_ttl", at) => {
                let at = at.or(view.sent_at).unwrap_or(receipt.started_at);
                Step { text: tr.t2("receipt-view-expired", "view", &name, "time", &tr.time(&at)), done: true }
            }
            _ => Step { text: tr.t1("receipt-view-pending", "view", &name), done: false },
        };
        steps.push(step);
    }
    if let (Some(at), "done") = (&receipt.finished_at, receipt.state.as_str()) {
        steps.push(Step { text: tr.t1("receipt-finished", "time", &tr.datetime(at)), done: true });
    }
    steps
}

/// `GET /receipts/{id}`: one of the person's receipts. Someone else's is indistinguishable
/// from none. Accepted but not yet taken over by the vault, it says so and refreshes.
pub async fn receipt(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(revocation_id): Path<String>,
    Query(q): Query<LangQuery>,
) -> Response {
    // Only an id of the form the gateway hands out goes anywhere (the link is anyone's to make).
    let Ok(id) = uuid::Uuid::parse_str(&revocation_id) else {
        let frame = frame(&state, &headers, q.lang.as_deref(), "/").await;
        return page(&state, StatusCode::NOT_FOUND, NotFoundPage { page: frame }.render(), q.lang.as_deref());
    };
    let path = receipt_href(&id.to_string());
    let frame = frame(&state, &headers, q.lang.as_deref(), &path).await;
    let Some(person) = frame.person.clone() else {
        return signed_out(&state, frame, q.lang.as_deref());
    };
    let tr = frame.tr;
    let query = RevocationQuery { revocation_id: Some(id.to_string()), ..Default::default() };
    let found = match ask_receipts(&state, &query).await {
        Ok(list) => list.into_iter().find(|r| r.issuer == person.issuer && r.subject == person.subject),
        Err(problem) => return problem.into_response(),
    };
    let (name, pending, steps) = match found {
        Some(receipt) => {
            let steps = timeline(&state, &receipt, &tr);
            (state.portal.platform_name(&receipt.platform_id), receipt.state != "done", steps)
        }
        None => {
            // Not at the vault yet: the person's own revocation if the ledger has it, or has
            // yet to apply it (its id is derived from the grant it ends, so it is known).
            let ledger = ConsentQuery {
                issuer: Some(person.issuer.clone()),
                subject: Some(person.subject.clone()),
                with_history: true,
                ..Default::default()
            };
            let accepted = match ask_ledger(&state, &ledger).await {
                Ok(consents) => {
                    let id = id.to_string();
                    consents.into_iter().find(|c| {
                        c.history.iter().any(|h| h.event_id == id)
                            || (c.state == "granted"
                                && c.granted_at.is_some_and(|at| {
                                    person_revocation_id(&person.issuer, &person.subject, &c.platform_id, at) == id
                                }))
                    })
                }
                Err(problem) => return problem.into_response(),
            };
            let Some(consent) = accepted else {
                return page(&state, StatusCode::NOT_FOUND, NotFoundPage { page: frame }.render(), q.lang.as_deref());
            };
            let steps = vec![Step { text: tr.t("receipt-accepted"), done: false }];
            (state.portal.platform_name(&consent.platform_id), true, steps)
        }
    };
    let body =
        ReceiptPage { page: frame, revocation_id: id.to_string(), name, pending, steps, self_href: path }.render();
    page(&state, StatusCode::OK, body, q.lang.as_deref())
}
