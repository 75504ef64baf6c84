//! `/`: the person's consent dashboard — every platform holding their consent, a revoke
//! button each, and the receipt of what a revocation did.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Html;
use custodian_events::queries::ConsentQuery;

use crate::AppState;
use crate::auth::Caller;
use crate::routes::consents::ask_ledger;
use crate::routes::login::{person_of_cookie, session_cookie};

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

pub async fn page(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Html<String> {
    let person = match session_cookie(&state.login, &headers) {
        Some(cookie) => person_of_cookie(&state, &cookie).await.ok(),
        None => None,
    };
    let Some(Caller::Person { issuer, subject }) = person else {
        return Html(layout(
            "<p>You are not signed in.</p><p><a href=\"/login\">Sign in at your identity provider</a></p>",
        ));
    };
    let query = ConsentQuery { issuer: Some(issuer.clone()), subject: Some(subject.clone()), ..Default::default() };
    let body = match ask_ledger(&state, &query).await {
        Err(_) => "<p>The consent ledger is unavailable; please retry.</p>".to_owned(),
        Ok(consents) if consents.is_empty() => "<p>No platform holds your consent.</p>".to_owned(),
        Ok(consents) => {
            let rows: String = consents
                .iter()
                .map(|c| {
                    let button = if c.state == "granted" {
                        format!("<button onclick=\"revoke('{}')\">Revoke</button>", escape(&c.platform_id))
                    } else {
                        String::new()
                    };
                    format!(
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{button}</td></tr>",
                        escape(&c.platform_id),
                        escape(&c.state),
                        escape(&c.scopes.join(" ")),
                        c.granted_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                        c.last_seen_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                    )
                })
                .collect();
            format!(
                "<table border=1 cellpadding=4><tr><th>platform</th><th>state</th><th>scopes</th><th>granted</th>\
                 <th>last seen</th><th></th></tr>{rows}</table><p id=result></p>"
            )
        }
    };
    Html(layout(&format!(
        "<p>Signed in as <code>{}</code> at <code>{}</code> — <a href=\"/logout\">sign out</a></p>{body}",
        escape(&subject),
        escape(&issuer)
    )))
}

fn layout(body: &str) -> String {
    format!(
        "<!doctype html><meta charset=utf-8><title>Your consents — Custodian</title><h1>Platforms holding your consent</h1>{body}\
         <script>\
         async function revoke(p) {{\
           const r = await fetch('/v1/me/consents/' + encodeURIComponent(p), {{method: 'DELETE', credentials: 'same-origin'}});\
           const b = await r.json();\
           const out = document.getElementById('result');\
           if (r.status === 202) {{ out.innerHTML = 'Revoked. <a href=\"/v1/revocations/' + b.revocation_id + '\">Receipt</a> (tokens revoked at the provider, views wiped).'; }}\
           else {{ out.textContent = b.detail || r.statusText; }}\
         }}\
         </script>"
    )
}
