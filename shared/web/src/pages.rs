//! What every page of the gateway and the views has in common: the security headers, the
//! style sheet (a file of this origin, so the CSP needs no `unsafe-inline`), and the
//! language cookie the switcher sets.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::i18n::{LANG_COOKIE, Lang};

/// The value of cookie `name` in a request (empty counts as absent).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

/// False when the browser says (`Sec-Fetch-Site`) that a form was sent from another site; a
/// client that does not say is judged by the form's CSRF token alone.
pub fn sent_from_this_site(headers: &HeaderMap) -> bool {
    !headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site != "same-origin" && site != "none")
}

/// Scripts, styles, images and forms of this origin only; no framing by anyone.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'";

/// The headers of every page, and above all of those that may show a person's data: no
/// inline script or style runs, nothing frames it, nothing caches it, no referrer leaves.
pub fn page_headers(headers: &mut HeaderMap) {
    let set = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(header::VARY, HeaderValue::from_static("Cookie, Accept-Language"));
}

/// A rendered page, or a plain error page if the template failed (logged, never shown).
pub fn html(status: StatusCode, rendered: Result<String, impl std::fmt::Display>) -> Response {
    let mut response = match rendered {
        Ok(body) => (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "page not rendered");
            (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "error")
                .into_response()
        }
    };
    page_headers(response.headers_mut());
    response
}

/// Keeps the language picked with the switcher (`?lang=`) for the next pages.
pub fn remember_lang(response: &mut Response, picked: Option<&str>, secure: bool) {
    let Some(lang) = picked.and_then(Lang::from_code) else { return };
    let secure = if secure { "; Secure" } else { "" };
    let cookie = format!("{LANG_COOKIE}={}; Path=/; Max-Age=31536000; SameSite=Lax{secure}", lang.code());
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// `GET /assets/custodian.css`: the pages' one style sheet.
pub async fn stylesheet() -> Response {
    let mut response = (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")],
        include_str!("../assets/custodian.css"),
    )
        .into_response();
    response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// `GET /assets/live.js`: live updates on top of pages that work without it.
pub async fn live_script() -> Response {
    let mut response = (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")],
        include_str!("../assets/live.js"),
    )
        .into_response();
    response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// The switcher's entries for a page: each language with the link that picks it.
#[derive(Debug, Clone)]
pub struct LangChoice {
    pub code: &'static str,
    pub name: &'static str,
    pub href: String,
    pub current: bool,
}

/// The switcher's links, back to `path` (a path of this site, with its own query, if any).
pub fn lang_choices(current: Lang, path: &str) -> Vec<LangChoice> {
    let separator = if path.contains('?') { '&' } else { '?' };
    Lang::ALL
        .into_iter()
        .map(|lang| LangChoice {
            code: lang.code(),
            name: lang.endonym(),
            href: format!("{path}{separator}lang={}", lang.code()),
            current: lang == current,
        })
        .collect()
}
