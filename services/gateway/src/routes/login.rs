//! A person's sign-in through the OP (authorization code + PKCE), run by the vault: `/login`
//! sends the browser to the OP, `/callback` hands the code to the vault and sets the session
//! cookie, `POST /logout` ends it here and at the OP. The gateway never sees a token: the vault
//! exchanges the code, and keeps only the SHA-256 of the session cookie.
//!
//! Cookies: HttpOnly, SameSite=Lax; over HTTPS Secure and prefixed (`__Host-` for the session,
//! `__Secure-` for the login cookie, which is scoped to `/callback`). The login cookie
//! carries the OAuth `state`, so a callback is accepted only in the browser that started it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use custodian_events::vault::{
    self, LoginFinish, LoginFinishReply, LoginStart, LoginStartReply, LogoutReply, SessionLookup, WhoamiReply,
};
use serde::Deserialize;

use crate::AppState;
use crate::auth::Caller;
use crate::problem::Problem;

pub const SESSION_COOKIE: &str = "custodian_session";
pub const LOGIN_COOKIE: &str = "custodian_login";
const VAULT_TIMEOUT: Duration = Duration::from_secs(15);

use custodian_web::pages::cookie as cookie_value;

pub fn session_cookie(login: &crate::LoginConfig, headers: &HeaderMap) -> Option<String> {
    cookie_value(headers, login.session_cookie_name())
}

fn set_cookie(state: &AppState, name: &str, value: &str, path: &str, max_age: i64) -> HeaderValue {
    let secure = if state.login.cookie_secure() { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn vault_unavailable(e: custodian_bus::QueryError) -> Problem {
    tracing::warn!(error = %e, "vault did not answer");
    Problem::unavailable("the token vault did not answer; please retry")
}

/// The person behind a session cookie, asked of the vault. While the vault cannot read its
/// database (e.g. PostgreSQL restarting) it is asked again within the budget, as the consent
/// ledger is: a person's request is not lost to a restart.
pub async fn person_of_cookie(state: &AppState, cookie: &str) -> Result<Caller, Problem> {
    let lookup = SessionLookup { session_digest: crate::auth::token_digest(cookie) };
    let deadline = tokio::time::Instant::now() + VAULT_TIMEOUT;
    loop {
        let budget = deadline.saturating_duration_since(tokio::time::Instant::now());
        match custodian_bus::query_idempotent::<_, WhoamiReply>(state.bus.client(), vault::WHOAMI, &lookup, budget)
            .await
            .map_err(vault_unavailable)?
        {
            WhoamiReply::Person(p) => return Ok(Caller::Person { issuer: p.issuer, subject: p.subject }),
            WhoamiReply::Unknown => {
                return Err(Problem::unauthorized("session expired or unknown; sign in again at /login"));
            }
            WhoamiReply::Error(e) => {
                if tokio::time::Instant::now() + WHOAMI_PAUSE * 2 >= deadline {
                    tracing::warn!(reason = %e, budget_ms = VAULT_TIMEOUT.as_millis() as u64, "vault unavailable for the whole budget");
                    return Err(Problem::unavailable(e));
                }
                tokio::time::sleep(WHOAMI_PAUSE).await;
            }
        }
    }
}

/// Between two questions to a vault that could not read its database.
const WHOAMI_PAUSE: Duration = Duration::from_millis(200);

#[derive(Debug, Deserialize)]
pub struct LoginParams {
    pub platform_id: Option<String>,
}

/// `GET /login`: off to the OP.
pub async fn login(State(state): State<Arc<AppState>>, Query(params): Query<LoginParams>) -> Result<Response, Problem> {
    let request = LoginStart { platform_id: params.platform_id };
    let reply: LoginStartReply =
        custodian_bus::query_idempotent(state.bus.client(), vault::LOGIN_START, &request, VAULT_TIMEOUT)
            .await
            .map_err(vault_unavailable)?;
    match reply {
        LoginStartReply::Redirect { authorize_url, state: oauth_state } => {
            let mut response = Redirect::to(&authorize_url).into_response();
            let cookie = set_cookie(&state, state.login.login_cookie_name(), &oauth_state, "/callback", 600);
            response.headers_mut().append(header::SET_COOKIE, cookie);
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
        LoginStartReply::UnknownPlatform(reason) => Err(Problem::not_found(format!("sign-in cannot start: {reason}"))),
        LoginStartReply::Error(reason) => Err(Problem::unavailable(format!("sign-in cannot start: {reason}"))),
    }
}

#[derive(Debug, Deserialize)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    pub iss: Option<String>,
}

/// `GET /callback`: the OP sends the person back with a code.
pub async fn callback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(params): Query<CallbackParams>,
) -> Result<Response, Problem> {
    if let Some(error) = params.error {
        let detail = params.error_description.unwrap_or_default();
        return Err(Problem::bad_request(format!("the OpenID provider answered {error}: {detail}")));
    }
    // RFC 9207: an `iss` in the response must be our OP (mix-up defence).
    if let (Some(iss), Some(oidc)) = (&params.iss, state.auth.person_issuer())
        && iss.trim_end_matches('/') != oidc.trim_end_matches('/')
    {
        return Err(Problem::bad_request("the callback came from another issuer"));
    }
    let (Some(code), Some(oauth_state)) = (params.code, params.state) else {
        return Err(Problem::bad_request("the callback needs code and state"));
    };
    let expected = cookie_value(&headers, state.login.login_cookie_name()).ok_or_else(|| {
        Problem::bad_request("no sign-in in progress in this browser (cookie missing); start at /login")
    })?;
    if !constant_time_eq(expected.as_bytes(), oauth_state.as_bytes()) {
        return Err(Problem::bad_request("state does not match the sign-in started in this browser"));
    }
    let cookie = new_session_secret();
    let finish = LoginFinish { state: oauth_state, code, session_digest: crate::auth::token_digest(&cookie) };
    let reply: LoginFinishReply = custodian_bus::query(state.bus.client(), vault::LOGIN_FINISH, &finish, VAULT_TIMEOUT)
        .await
        .map_err(vault_unavailable)?;
    match reply {
        LoginFinishReply::Person(person) => {
            let max_age = (person.expires_at - state.clock.now()).num_seconds().max(0);
            let mut response = Redirect::to(&state.login.after_login).into_response();
            let headers = response.headers_mut();
            headers.append(
                header::SET_COOKIE,
                set_cookie(&state, state.login.session_cookie_name(), &cookie, "/", max_age),
            );
            headers.append(header::SET_COOKIE, set_cookie(&state, state.login.login_cookie_name(), "", "/callback", 0));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
        LoginFinishReply::Refused(reason) => {
            Err(Problem::new(StatusCode::FORBIDDEN, "login-refused", "Sign-in refused").detail(reason))
        }
        LoginFinishReply::Error(reason) => Err(Problem::unavailable(format!("sign-in could not finish: {reason}"))),
    }
}

/// `POST /logout`: the portal's form ends the session here and sends the browser to the OP
/// to end it there. Only a form of this site's own signs the person out (CSRF token, and
/// `Sec-Fetch-Site` when the browser sends it); there is no GET, so a link or an image on
/// another site cannot.
pub async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let mut target = state.login.after_login.clone();
    if let Some(cookie) = session_cookie(&state.login, &headers) {
        // The form's token; a body that is no form (or none) carries none, and is refused.
        let csrf = url::form_urlencoded::parse(&body).find(|(k, _)| k == "csrf").map(|(_, v)| v.into_owned());
        if !crate::routes::portal::form_is_ours(&headers, &cookie, csrf.as_deref().unwrap_or_default()) {
            return Problem::forbidden("this sign-out did not come from your consent page; you are still signed in")
                .into_response();
        }
        let lookup = SessionLookup { session_digest: crate::auth::token_digest(&cookie) };
        match custodian_bus::query_idempotent::<_, LogoutReply>(
            state.bus.client(),
            vault::LOGOUT,
            &lookup,
            VAULT_TIMEOUT,
        )
        .await
        {
            Ok(LogoutReply { end_session_url: Some(url) }) => target = url,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "logout not recorded by the vault"),
        }
    }
    let mut response = Redirect::to(&target).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(&state, state.login.session_cookie_name(), "", "/", 0));
    response
}

fn new_session_secret() -> String {
    use rand::Rng as _;
    let bytes: [u8; 32] = rand::rng().random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
