//! Dead letters replayed from the operators' console: by the service that refused them,
//! from the audit chain's copy, once and for all, and recorded there with the operator.

use std::time::Duration;

use custodian_bus::trust::Service;
use custodian_events::queries::{self, ConsentQuery, DeadLetterSummary, HealthQuery, HealthReply};
use custodian_events::replay::{
    DeadLetterQuery, DeadLetterReply, ReplayReply, ReplayRequest, dead_letter_subject, replay_subject,
};
use custodian_events::{ReplayOutcome, subjects};
use custodian_store::clock::{Clock, ManualClock};
use reqwest::StatusCode;

use crate::support::{DPO_TOKEN, OPS_TOKEN, Stack, unique};

/// A browser-less console session: the cookie of an operator's sign-in and the page's CSRF token.
struct Console {
    http: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
}

impl Console {
    async fn sign_in(stack: &Stack, token: &str) -> Console {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("http");
        let (form_cookie, form_csrf) = sign_in_form(&http, stack).await;
        let signed_in = http
            .post(stack.url("/console/login"))
            .header("cookie", &form_cookie)
            .header("sec-fetch-site", "same-origin")
            .form(&[("token", token), ("csrf", &form_csrf)])
            .send()
            .await
            .unwrap();
        assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
        let cookie = console_cookie(&signed_in).expect("the console's cookie");
        let page = http.get(stack.url("/console")).header("cookie", &cookie).send().await.unwrap();
        crate::support::assert_page_headers(page.headers(), "the console");
        let page = page.text().await.unwrap();
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the console's CSRF token")
            .to_owned();
        Console { http, base: stack.url(""), cookie, csrf }
    }

    /// Posts the replay form; the outcome named by the redirect, or the refusal's status.
    async fn replay(&self, id: &str, durable: &str, csrf: &str, site: &str) -> Result<String, StatusCode> {
        let response = self
            .http
            .post(format!("{}/console/dead-letters/replay", self.base.trim_end_matches('/')))
            .header("cookie", &self.cookie)
            .header("sec-fetch-site", site)
            .form(&[("csrf", csrf), ("id", id), ("durable", durable)])
            .send()
            .await
            .unwrap();
        if response.status() != StatusCode::SEE_OTHER {
            return Err(response.status());
        }
        let to = response.headers()["location"].to_str().unwrap().to_owned();
        Ok(to.split("replayed=").nth(1).and_then(|r| r.split('#').next()).unwrap_or_default().to_owned())
    }

    async fn page(&self) -> String {
        let page = self.http.get(format!("{}/console", self.base.trim_end_matches('/'))).header("cookie", &self.cookie);
        page.send().await.unwrap().text().await.unwrap()
    }
}

/// The sign-in form's cookie (`name=value`) and CSRF token, as `GET /console` gives them.
async fn sign_in_form(http: &reqwest::Client, stack: &Stack) -> (String, String) {
    let form = http.get(stack.url("/console")).send().await.unwrap();
    let cookie = form
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("custodian_console_sign_in="))
        .and_then(|c| c.split(';').next())
        .expect("the sign-in form's cookie")
        .to_owned();
    let page = form.text().await.unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the sign-in form's CSRF token")
        .to_owned();
    assert!(cookie.ends_with(&format!("={csrf}")) && csrf.len() == 64, "the form's token is its cookie's");
    (cookie, csrf)
}

/// The console's session cookie a response sets, if it sets one with a value.
fn console_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|c| c.split(';').next())
        .find(|c| c.starts_with("custodian_console=") && c.len() > "custodian_console=".len())
        .map(str::to_owned)
}

/// A sign-in that is not the console's own form (no CSRF token, a token without its
/// cookie, another form's token, another site) is refused with the sign-in page, and no
/// session is opened, even with a valid operator's token.
async fn forged_sign_ins_are_refused(stack: &Stack) {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("http");
    let (cookie, csrf) = sign_in_form(&http, stack).await;
    let (other_cookie, _) = sign_in_form(&http, stack).await;
    for (what, cookie, csrf, site) in [
        ("no token, no cookie", None, None, "same-origin"),
        ("the token without its cookie", None, Some(csrf.as_str()), "same-origin"),
        ("the cookie without the token", Some(cookie.as_str()), None, "same-origin"),
        ("another form's cookie", Some(other_cookie.as_str()), Some(csrf.as_str()), "same-origin"),
        ("an empty token and cookie", Some("custodian_console_sign_in="), Some(""), "same-origin"),
        ("from another site", Some(cookie.as_str()), Some(csrf.as_str()), "cross-site"),
    ] {
        let mut form = vec![("token", OPS_TOKEN)];
        form.extend(csrf.map(|c| ("csrf", c)));
        let mut request = http.post(stack.url("/console/login")).header("sec-fetch-site", site).form(&form);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        let refused = request.send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{what}");
        assert_eq!(console_cookie(&refused), None, "{what}: no session");
        let page = refused.text().await.unwrap();
        assert!(page.contains("This sign-in did not come from the console"), "{what}: {page}");
        assert!(page.contains("name=\"csrf\""), "{what}: the form again, to sign in from");
    }
}

/// The dead letter of `original_id` as the audit service's health read lists it.
async fn dead_letter(stack: &Stack, original_id: &str, replays: usize) -> DeadLetterSummary {
    let what = format!("the dead letter of {original_id} with {replays} replays");
    custodian_testkit::eventually(&what, Duration::from_secs(30), || async {
        let reply: HealthReply =
            custodian_bus::query(stack.bus.client(), queries::HEALTH, &HealthQuery {}, Duration::from_secs(2))
                .await
                .ok()?;
        let HealthReply::Health(view) = reply else { return None };
        view.recent_dead_letters
            .into_iter()
            .find(|d| d.original_id.as_deref() == Some(original_id) && d.replays.len() >= replays)
    })
    .await
}

/// A grant dated a day ahead is dead-lettered by the ledger. Replayed at once, it is refused
/// again for the same reason; replayed once the clock has caught up, it is applied; replayed
/// again, nothing changes. Each replay is in the audit chain with the operator's name, and the
/// console shows them. Only ops may replay, only from the console's own form, and only the
/// gateway may ask a service for one. Signing in takes the console's own sign-in form.
#[tokio::test]
async fn a_dead_letter_replayed_from_the_console_is_applied_once_its_cause_is_gone_and_each_replay_is_chained() {
    let mut stack = Stack::infrastructure().await;
    let clock = ManualClock::new(stack.clock.now());
    stack.clock = clock.clone();
    stack.start_consent();
    stack.start_gateway().await;
    stack.start_audit(crate::audit::audit_config(None));

    let person = unique("ada");
    let far = crate::gateway_edge::grant(&stack, &person, "tp", clock.now() + chrono::Duration::days(1));
    stack.bus.publish_event(subjects::CONSENT_GRANTED, &far).await.expect("publish");
    let letter = dead_letter(&stack, &far.id, 0).await;
    assert_eq!(letter.subject, "lifecycle.deadletter.consent");
    assert!(letter.reason.contains("past this consumer's clock"), "{}", letter.reason);
    let mine = || ConsentQuery { subject: Some(person.clone()), with_history: true, ..Default::default() };

    forged_sign_ins_are_refused(&stack).await;
    let ops = Console::sign_in(&stack, OPS_TOKEN).await;
    // Refused: from another site, without the page's CSRF token, by another role, for nothing.
    assert_eq!(ops.replay(&letter.id, "consent-ledger", &ops.csrf, "cross-site").await, Err(StatusCode::FORBIDDEN));
    assert_eq!(ops.replay(&letter.id, "consent-ledger", "0", "same-origin").await, Err(StatusCode::FORBIDDEN));
    let dpo = Console::sign_in(&stack, DPO_TOKEN).await;
    assert_eq!(dpo.replay(&letter.id, "consent-ledger", &dpo.csrf, "same-origin").await, Err(StatusCode::FORBIDDEN));
    assert_eq!(
        ops.replay(&letter.id, "no-such-consumer", &ops.csrf, "same-origin").await,
        Err(StatusCode::BAD_REQUEST)
    );
    assert_eq!(
        ops.replay("no-such-dead-letter", "consent-ledger", &ops.csrf, "same-origin").await.as_deref(),
        Ok("not_found")
    );
    // The consent service's other consumer did not refuse it: it has no such dead letter.
    assert_eq!(ops.replay(&letter.id, "consent-retention", &ops.csrf, "same-origin").await.as_deref(), Ok("not_found"));
    // A service reads only its own dead letters from the chain: the vault asking for the
    // consent service's is told there is none, and may not ask on the consent service's name.
    let vault = stack.service_bus(Service::Vault).await;
    let lookup = DeadLetterQuery { id: letter.id.clone() };
    let own = dead_letter_subject("vault").unwrap();
    let found: DeadLetterReply =
        custodian_bus::query(vault.client(), &own, &lookup, Duration::from_secs(5)).await.expect("answered");
    assert_eq!(found, DeadLetterReply::NotFound);
    let theirs = dead_letter_subject("consent").unwrap();
    let refused =
        custodian_bus::query::<_, DeadLetterReply>(vault.client(), &theirs, &lookup, Duration::from_secs(2)).await;
    assert!(refused.is_err(), "the vault read the consent service's dead letter: {refused:?}");

    // Still dated ahead of the clock: refused again, with the reason.
    assert_eq!(ops.replay(&letter.id, "consent-ledger", &ops.csrf, "same-origin").await.as_deref(), Ok("refused"));
    assert!(stack.ledger(mine()).await.is_empty(), "nothing applied");

    // The clock has caught up: applied, once.
    clock.advance(chrono::Duration::days(1) + chrono::Duration::minutes(1));
    assert_eq!(ops.replay(&letter.id, "consent-ledger", &ops.csrf, "same-origin").await.as_deref(), Ok("applied"));
    let applied = stack.ledger(mine()).await;
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert_eq!(applied[0].state, "granted");
    assert_eq!(ops.replay(&letter.id, "consent-ledger", &ops.csrf, "same-origin").await.as_deref(), Ok("applied"));
    let again = stack.ledger(mine()).await;
    assert_eq!(again, applied, "a second replay changes nothing");
    assert_eq!(again[0].history.len(), 1, "one grant in the history: {:?}", again[0].history);

    // The chain holds each replay, with who asked and what came of it.
    let letter = dead_letter(&stack, &far.id, 3).await;
    let outcomes: Vec<_> = letter.replays.iter().map(|r| (r.operator.as_str(), r.outcome)).collect();
    assert_eq!(
        outcomes,
        [
            ("test-ops", ReplayOutcome::Refused),
            ("test-ops", ReplayOutcome::Applied),
            ("test-ops", ReplayOutcome::Applied)
        ]
    );
    assert!(letter.replays[0].reason.as_deref().unwrap_or_default().contains("past this consumer's clock"));
    let page = ops.page().await;
    assert!(page.contains("Replayed by test-ops at") && page.contains(": applied."), "{page}");
    assert!(page.contains("refused again (time "), "the refusal's reason: {page}");

    // Only the gateway may ask for a replay: a view's identity is refused by nats-server, and
    // nothing is replayed.
    let view = stack.view_bus("nosy").await;
    let asked = ReplayRequest { dead_letter_id: letter.id.clone(), operator: "mallory".into() };
    let subject = replay_subject("consent-ledger").unwrap();
    let refused = custodian_bus::query::<_, ReplayReply>(view.client(), &subject, &asked, Duration::from_secs(2)).await;
    assert!(refused.is_err(), "a view got an answer: {refused:?}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let letter = dead_letter(&stack, &far.id, 3).await;
    assert_eq!(letter.replays.len(), 3, "no replay by the view: {:?}", letter.replays);
}
