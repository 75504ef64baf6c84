//! `/`: the person's consent dashboard — every platform holding their consent, a revoke form
//! each (a POST with a CSRF token, no script), and where to find the receipt.
//!
//! Rendered from `templates/dashboard.html` by askama: compiled with the binary and checked
//! at build time, HTML-escaped in every place a value goes. No inline script or style, so the
//! page runs under `default-src 'self'` and cannot be framed.

use std::sync::Arc;

use askama::Template;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use custodian_events::queries::ConsentQuery;
use serde::Deserialize;

use crate::AppState;
use crate::auth::Caller;
use crate::problem::Problem;
use crate::routes::consents::{ask_ledger, revoke_for_person};
use crate::routes::login::{person_of_cookie, session_cookie};

/// The headers of every page that may show a person's data.
pub fn personal_page_headers(headers: &mut HeaderMap) {
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

struct Person {
    issuer: String,
    subject: String,
    csrf: String,
}

struct Row {
    platform_id: String,
    state: String,
    scopes: String,
    granted_at: String,
    last_seen_at: String,
    revocable: bool,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard {
    person: Option<Person>,
    consents: Vec<Row>,
    ledger_unavailable: bool,
    revocation: Option<String>,
}

/// The form's CSRF token: bound to the session cookie (which a page of another site can
/// neither read nor set: HttpOnly, `__Host-` over HTTPS).
fn csrf_token(cookie: &str) -> String {
    custodian_crypto::sha256_hex(&format!("custodian-csrf\u{0}{cookie}"))
}

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    revocation: Option<String>,
}

fn html(page: Dashboard) -> Response {
    let mut response = match page.render() {
        Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "dashboard not rendered");
            Problem::internal("the page could not be rendered").into_response()
        }
    };
    personal_page_headers(response.headers_mut());
    response
}

pub async fn page(State(state): State<Arc<AppState>>, headers: HeaderMap, Query(query): Query<PageQuery>) -> Response {
    let signed_in = match session_cookie(&state.login, &headers) {
        Some(cookie) => match person_of_cookie(&state, &cookie).await {
            Ok(Caller::Person { issuer, subject }) => Some(Person { issuer, subject, csrf: csrf_token(&cookie) }),
            _ => None,
        },
        None => None,
    };
    let Some(person) = signed_in else {
        return html(Dashboard { person: None, consents: Vec::new(), ledger_unavailable: false, revocation: None });
    };
    let ledger = ConsentQuery {
        issuer: Some(person.issuer.clone()),
        subject: Some(person.subject.clone()),
        ..Default::default()
    };
    let (consents, ledger_unavailable) = match ask_ledger(&state, &ledger).await {
        Ok(consents) => (
            consents
                .into_iter()
                .map(|c| Row {
                    revocable: c.state == "granted",
                    scopes: c.scopes.join(" "),
                    granted_at: c.granted_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                    last_seen_at: c.last_seen_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                    platform_id: c.platform_id,
                    state: c.state,
                })
                .collect(),
            false,
        ),
        Err(_) => (Vec::new(), true),
    };
    // Only an id of the form the gateway hands out is shown back (the link is someone's to make).
    let revocation = query.revocation.filter(|id| uuid::Uuid::parse_str(id).is_ok());
    html(Dashboard { person: Some(person), consents, ledger_unavailable, revocation })
}

#[derive(Debug, Deserialize)]
pub struct RevokeForm {
    platform_id: String,
    csrf: String,
}

/// `POST /consents/revoke`: the dashboard's form. The session cookie says who; the CSRF token
/// (and the browser's `Sec-Fetch-Site`, when it sends one) that the form is this site's own.
pub async fn revoke(State(state): State<Arc<AppState>>, headers: HeaderMap, Form(form): Form<RevokeForm>) -> Response {
    let Some(cookie) = session_cookie(&state.login, &headers) else {
        return Problem::unauthorized("sign in first at /login").into_response();
    };
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site != "same-origin" && site != "none");
    let expected = csrf_token(&cookie);
    // Compared as digests: the time taken says nothing about how much of the token matched.
    let matches = custodian_crypto::sha256_hex(&form.csrf) == custodian_crypto::sha256_hex(&expected);
    if cross_site || !matches {
        return Problem::forbidden("this form did not come from your consent page; reload it and try again")
            .into_response();
    }
    let (issuer, subject) = match person_of_cookie(&state, &cookie).await {
        Ok(Caller::Person { issuer, subject }) => (issuer, subject),
        Ok(_) => return Problem::unauthorized("sign in again at /login").into_response(),
        Err(problem) => return problem.into_response(),
    };
    match revoke_for_person(&state, &issuer, &subject, form.platform_id).await {
        Ok(accepted) => Redirect::to(&format!("/?revocation={}", accepted.revocation_id)).into_response(),
        Err(problem) => problem.into_response(),
    }
}
