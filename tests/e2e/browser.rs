//! The person's pages in a real browser: Debian's Chromium, headless, through ChromeDriver.
//! A person signs in at the real OP, sees the platform as the registry describes it, fetches
//! their profile into the demo view, withdraws consent after a confirmation, and watches the
//! receipt reach done, in each of the four languages; axe-core finds nothing serious or
//! critical on any page; identifiers made to break out of HTML or a script are shown as text.
//! Screenshots of each page go to `target/screenshots/`.

use std::collections::BTreeMap;
use std::time::Duration;

use custodian_gateway::registry::{PlatformEntry, PortalConfig, ViewEntry};
use custodian_testkit::browser::{self, Client, CmdError, Element, Locator};
use serde_json::json;

use crate::support::{PLATFORM_TOKEN, Stack, unique};

/// WebDriver's key codes (W3C WebDriver §17.4.2).
const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";

/// Planted in every field a page shows: it must come out as these very characters.
/// How long a page may take to show what it must: a budget on a loaded machine, not a
/// target (speed is measured by the benches).
const PAGE: Duration = Duration::from_secs(30);
/// How long what another service applies may take to show on a page.
const SETTLE: Duration = Duration::from_secs(60);

const HOSTILE: &str = "x');document.title='XSS';//\"><img src=x onerror=\"document.title='XSS'\">&amp;";

fn words(en: &str, nl: &str, fr: &str, de: &str) -> BTreeMap<String, String> {
    [("en", en), ("nl", nl), ("fr", fr), ("de", de)].into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

async fn text(client: &Client) -> String {
    client.find(Locator::Css("body")).await.expect("body").text().await.expect("text")
}

async fn no_script_ran(client: &Client) {
    let title = client.title().await.expect("title");
    assert!(!title.contains("XSS"), "a planted script ran: the title is {title:?}");
}

/// axe-core on the page as it stands: nothing serious or critical.
async fn accessible(client: &Client, page: &str) {
    let found = browser::axe_serious(client).await;
    assert!(found.is_empty(), "{page}: accessibility violations {found:#?}");
}

/// [`accessible`] on `url` in each language, chosen by the switcher's `?lang=`, ending in
/// English; each page's screenshot is `<shot>-<lang>`.
async fn accessible_in_every_language(client: &Client, url: &str, page: &str, shot: &str) {
    let separator = if url.contains('?') { '&' } else { '?' };
    for lang in ["nl", "fr", "de", "en"] {
        client.goto(&format!("{url}{separator}lang={lang}")).await.unwrap_or_else(|e| panic!("{page}: {e}"));
        let what = format!("{page} in {lang}");
        custodian_testkit::eventually(&what, PAGE, || async {
            let html = client.find(Locator::Css("html")).await.ok()?;
            (html.attr("lang").await.ok()?.as_deref() == Some(lang)).then_some(())
        })
        .await;
        accessible(client, &what).await;
        browser::screenshot(client, &format!("{shot}-{lang}")).await;
    }
}

async fn click_link(client: &Client, text: &str) {
    client
        .find(Locator::LinkText(text))
        .await
        .unwrap_or_else(|e| panic!("a link {text:?}: {e}"))
        .click()
        .await
        .expect("click");
}

async fn click_button(client: &Client, text: &str) {
    let xpath = format!("//button[normalize-space(.)=\"{text}\"]");
    client
        .find(Locator::XPath(&xpath))
        .await
        .unwrap_or_else(|e| panic!("a button {text:?}: {e}"))
        .click()
        .await
        .expect("click");
}

/// Acts on what `locator` finds in a live region, found afresh on each try: a live update
/// can replace the element between its finding and the act (a stale element).
async fn on_live<T, Fut>(client: &Client, locator: Locator<'_>, act: impl Fn(Element) -> Fut) -> T
where
    Fut: std::future::Future<Output = Result<T, CmdError>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        let done = match client.find(locator).await {
            Ok(element) => act(element).await,
            Err(e) => Err(e),
        };
        match done {
            Ok(value) => return value,
            Err(e) if tries >= 5 => panic!("{locator:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The text of the frame the client is in ("" while it has no body).
async fn frame_text_here(client: &Client) -> String {
    match client.find(Locator::Css("body")).await {
        Ok(body) => body.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The OP's own login and consent pages, as a person fills them in.
async fn sign_in_at_the_op(client: &Client, login: &str) {
    let field = client
        .wait()
        .at_most(SETTLE)
        .for_element(Locator::Css("input[name=login]"))
        .await
        .expect("the OP's login form");
    field.send_keys(login).await.expect("login typed");
    client
        .find(Locator::Css("input[name=password]"))
        .await
        .expect("password field")
        .send_keys("any")
        .await
        .expect("password typed");
    client.find(Locator::Css("button[type=submit]")).await.expect("sign-in button").click().await.expect("signed in");
    // The login page has gone (its button must not be taken for the consent page's).
    let deadline = tokio::time::Instant::now() + SETTLE;
    while !client.find_all(Locator::Css("input[name=password]")).await.map(|found| found.is_empty()).unwrap_or(false) {
        assert!(tokio::time::Instant::now() < deadline, "the OP's login page never went");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The consent page (the OP asks once per client).
    let consent = client
        .wait()
        .at_most(SETTLE)
        .for_element(Locator::Css("button[type=submit]"))
        .await
        .expect("the OP's consent page");
    consent.click().await.expect("consented");
}

#[tokio::test]
async fn a_person_signs_in_withdraws_consent_with_confirmation_and_reads_the_receipt_in_four_languages() {
    let mut stack = Stack::infrastructure().await;
    stack.platform_token_speaks_for = vec![HOSTILE.to_owned()];
    stack.start_consent();
    stack.start_gateway().await;
    let (client, settings) = stack.register_platform().await;
    let platform_id = client.client_id.clone();
    stack.portal = PortalConfig {
        platforms: vec![PlatformEntry {
            platform_id: platform_id.clone(),
            name: "Zorgplatform Demo".into(),
            legal_name: format!("Zorg & Co NV {HOSTILE}"),
            enterprise_number: "0203.201.340".into(),
            scopes: [(
                "openid".to_owned(),
                words(
                    "Who you are, and your vaccination record",
                    "Wie u bent, en uw vaccinatiegegevens",
                    "Qui vous êtes, et vos vaccinations",
                    "Wer Sie sind, und Ihr Impfausweis",
                ),
            )]
            .into(),
            views: vec![ViewEntry {
                view_id: "demo".into(),
                name: words(
                    &format!("The demo app {HOSTILE}"),
                    "De demo-app",
                    "L’application de démonstration",
                    "Die Demo-App",
                ),
            }],
        }],
        ..Default::default()
    };
    stack.restart_gateway().await;
    stack.start_vault(crate::support::test_vault_config(vec![settings]));
    let view_url = stack.start_demo_view(&platform_id).await;
    // The person's own identifier (the OP's `sub`, shown in the header) carries them too.
    let person = format!("{}\"'<&');x//", unique("ines"));

    let b = browser::browser("en").await;
    b.goto(&stack.url("/")).await.expect("portal");
    browser::wait_for_text(&b, "Sign in to see which platforms", PAGE).await;
    accessible(&b, "portal, signed out").await;
    browser::screenshot(&b, "portal-signed-out-en").await;
    click_link(&b, "Sign in at your identity provider").await;
    sign_in_at_the_op(&b, &person).await;

    // The portal: the platform by name, legal entity and enterprise number, what it may see.
    // The grant of the sign-in reaches the ledger a moment after the portal may have been drawn.
    let portal = browser::reload_until_text(&b, "Zorgplatform Demo", SETTLE).await;
    assert!(portal.contains(&format!("Zorg & Co NV {HOSTILE}, enterprise number 0203.201.340")), "{portal}");
    assert!(
        portal.contains("Who you are, and your vaccination record"),
        "the registry's words for the scope: {portal}"
    );
    assert!(portal.contains("Act for you while you are not signed in"), "the catalogue's words for offline_access");
    assert!(portal.contains(&format!("The demo app {HOSTILE}")) && portal.contains("Level of assurance"), "{portal}");
    assert!(!portal.contains("+00:00") && !portal.contains("T0"), "no RFC 3339 time on the page: {portal}");
    no_script_ran(&b).await;

    // A grant for a platform whose id is made to break out: shown as text, no script runs.
    let grant = json!({
        "specversion": "1.0", "id": unique("e"), "source": "urn:test", "type": "custodian.consent.granted.v1",
        "time": stack.clock.now().to_rfc3339(), "datacontenttype": "application/json",
        "data": {"issuer": stack.provider.issuer, "subject": person, "platform_id": HOSTILE, "scopes": ["openid", HOSTILE]}
    });
    let published =
        stack.http.post(stack.url("/v1/events")).bearer_auth(PLATFORM_TOKEN).json(&grant).send().await.unwrap();
    assert_eq!(published.status(), reqwest::StatusCode::ACCEPTED);
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        b.refresh().await.expect("reload");
        let page = text(&b).await;
        if page.contains("This platform is not in the registry") {
            assert!(page.contains(&format!("Access named “{HOSTILE}”")), "the planted scope as text: {page}");
            assert!(page.lines().any(|l| l.trim() == HOSTILE), "the planted id as the platform's name: {page}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the planted grant never showed: {page}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let images = b.find_all(Locator::Css("main img")).await.expect("query");
    assert!(images.is_empty(), "no planted element became part of the page");
    no_script_ran(&b).await;
    accessible(&b, "portal").await;
    browser::screenshot(&b, "portal-signed-in-en").await;

    // The demo view knows the person by the platform's session, and fetches for them alone.
    b.goto(&view_url).await.expect("demo view");
    browser::wait_for_text(&b, "This app holds nothing of yours.", PAGE).await;
    accessible(&b, "demo view").await;
    click_button(&b, "Fetch my profile into this app").await;
    let profile = browser::wait_for_text(&b, "Your profile, as this app holds it", SETTLE).await;
    assert!(profile.contains(&person), "the profile fetched with the person's token: {profile}");
    assert!(text(&b).await.contains(&format!("Signed in as {person}")), "the planted subject as text");
    assert!(!profile.contains('{'), "the data as text, not JSON: {profile}");
    accessible_in_every_language(&b, &view_url, "demo view session", "view-session").await;

    // Withdraw: a confirmation that says what it does, then the receipt until done.
    b.goto(&stack.url("/")).await.expect("portal");
    let link = b
        .find(Locator::XPath(
            "//section[.//h2[normalize-space(.)='Zorgplatform Demo']]//a[contains(@href, '/consents/revoke')]",
        ))
        .await
        .expect("the platform's withdraw link");
    link.click().await.expect("to the confirmation");
    let confirm = browser::wait_for_text(&b, "Withdraw your consent from Zorgplatform Demo?", PAGE).await;
    assert!(confirm.contains("every app of the platform erases the data of yours it holds in memory"), "{confirm}");
    let confirm_url = b.current_url().await.expect("url").to_string();
    accessible_in_every_language(&b, &confirm_url, "confirmation", "confirm").await;
    // By keyboard alone: the skip link comes first, then Tab reaches the confirmation's
    // button, and Enter presses it.
    let focused = |b: Client| async move {
        let element = b.active_element().await.expect("the focused element");
        element.text().await.unwrap_or_default().trim().to_owned()
    };
    b.active_element().await.expect("focus").send_keys(TAB).await.expect("Tab");
    assert_eq!(focused(b.clone()).await, "Skip to the content", "the first stop is the skip link");
    let mut presses = 1;
    while focused(b.clone()).await != "Yes, withdraw my consent" {
        assert!(presses < 40, "Tab never reached the confirmation's button");
        b.active_element().await.expect("focus").send_keys(TAB).await.expect("Tab");
        presses += 1;
    }
    b.active_element().await.expect("focus").send_keys(ENTER).await.expect("Enter");
    let receipt = browser::wait_for_text(&b, "Done. Every step below is confirmed.", SETTLE).await;
    assert!(
        receipt.contains("Your refresh token") && receipt.contains("withdrawn at the identity provider at"),
        "{receipt}"
    );
    assert!(receipt.contains(&format!("The demo app {HOSTILE} erased your data at")), "the view's erasure: {receipt}");
    no_script_ran(&b).await;
    assert!(receipt.contains("Every step done on"), "{receipt}");
    accessible(&b, "receipt").await;
    browser::screenshot(&b, "receipt-en").await;
    let receipt_url = b.current_url().await.expect("url").to_string();

    // The switcher: each language, on the receipt and the portal.
    for (lang, name, receipt_title, portal_title) in [
        ("nl", "Nederlands", "Ontvangstbewijs: toestemming aan Zorgplatform Demo ingetrokken", "Uw toestemmingen"),
        ("fr", "Français", "Reçu : consentement à Zorgplatform Demo retiré", "Vos consentements"),
        ("de", "Deutsch", "Quittung: Einwilligung für Zorgplatform Demo widerrufen", "Ihre Einwilligungen"),
        ("en", "English", "Receipt: consent of Zorgplatform Demo withdrawn", "Your consents"),
    ] {
        b.goto(&receipt_url).await.expect("receipt");
        click_link(&b, name).await;
        browser::wait_for_text(&b, receipt_title, PAGE).await;
        let html_lang = b.find(Locator::Css("html")).await.expect("html").attr("lang").await.expect("lang");
        assert_eq!(html_lang.as_deref(), Some(lang));
        accessible(&b, &format!("receipt ({lang})")).await;
        browser::screenshot(&b, &format!("receipt-{lang}")).await;
        // The choice sticks: the portal comes in the same language without asking again.
        b.goto(&stack.url("/")).await.expect("portal");
        browser::wait_for_text(&b, portal_title, PAGE).await;
        let html_lang = b.find(Locator::Css("html")).await.expect("html").attr("lang").await.expect("lang");
        assert_eq!(html_lang.as_deref(), Some(lang), "the portal keeps the language chosen on the receipt");
        accessible(&b, &format!("portal ({lang})")).await;
        browser::screenshot(&b, &format!("portal-{lang}")).await;
        b.goto(&stack.url(&format!("/?lang={lang}"))).await.expect("portal");
        no_script_ran(&b).await;
    }

    // On a phone's screen: nothing wider than the screen.
    b.set_window_size(390, 844).await.expect("a phone-sized window");
    b.goto(&stack.url("/?lang=en")).await.expect("portal");
    browser::wait_for_text(&b, "Ended consents", PAGE).await;
    let fits = b.execute("return document.documentElement.scrollWidth <= window.innerWidth;", Vec::new()).await;
    let wide = b
        .execute(
            "return Array.from(document.querySelectorAll('body *')).filter(e => e.getBoundingClientRect().right > window.innerWidth + 1).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right) + ' ' + (e.textContent || '').slice(0, 40));",
            Vec::new(),
        )
        .await
        .expect("measured");
    browser::screenshot(&b, "portal-phone-en").await;
    assert_eq!(
        fits.expect("measured"),
        serde_json::Value::Bool(true),
        "the portal scrolls sideways on a phone: {wide}"
    );
    browser::screenshot(&b, "portal-phone-en").await;
    b.goto(&receipt_url).await.expect("receipt");
    let fits = b.execute("return document.documentElement.scrollWidth <= window.innerWidth;", Vec::new()).await;
    assert_eq!(fits.expect("measured"), serde_json::Value::Bool(true), "the receipt scrolls sideways on a phone");
    browser::screenshot(&b, "receipt-phone-en").await;
    b.set_window_size(1280, 1000).await.expect("back to a desktop window");

    // The view says what happened to the data.
    b.goto(&view_url).await.expect("demo view");
    browser::wait_for_text(&b, "erased: you withdrew your consent", PAGE).await;
    browser::screenshot(&b, "view-after-en").await;
    b.close().await.expect("browser closed");

    // A browser that asks for French gets French before any choice.
    let fr = browser::browser("fr-BE,fr").await;
    fr.goto(&stack.url("/")).await.expect("portal");
    browser::wait_for_text(&fr, "Connectez-vous pour voir quelles plateformes", PAGE).await;
    accessible(&fr, "portal, signed out (fr)").await;
    browser::screenshot(&fr, "portal-signed-out-fr").await;
    fr.close().await.expect("browser closed");
}

/// The portal cannot be framed, even by a page of the same site's host.
#[tokio::test]
async fn the_portal_refuses_to_be_framed_and_the_demo_view_serves_no_one_without_a_session() {
    let mut stack = Stack::infrastructure().await;
    stack.start_consent();
    stack.start_gateway().await;
    let (client, settings) = stack.register_platform().await;
    stack.start_vault(crate::support::test_vault_config(vec![settings]));
    let view_url = stack.start_demo_view(&client.client_id).await;

    let b = browser::browser("en").await;
    // A page that frames the portal, served by the demo view's origin (a sibling of the same host).
    // The first frame is the control: the gateway's style sheet may be framed, and shows.
    // The framing page is served from the same host on another port: a same-site page.
    let framing = format!(
        "<!doctype html><title>framing</title><iframe src=\"{}\"></iframe><iframe src=\"{}\"></iframe>",
        stack.url("/assets/custodian.css"),
        stack.url("/")
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let framing_url = format!("http://{}/", listener.local_addr().expect("addr"));
    let site = axum::Router::new().route("/", axum::routing::get(move || async move { axum::response::Html(framing) }));
    tokio::spawn(async move { axum::serve(listener, site).await });
    b.goto(&framing_url).await.expect("framing page");
    let frame_text = |index: u16| {
        let b = b.clone();
        async move {
            b.enter_frame(index).await.expect("into the frame");
            let text = frame_text_here(&b).await;
            b.enter_parent_frame().await.expect("out of the frame");
            text
        }
    };
    custodian_testkit::eventually("the control frame loaded", PAGE, || {
        let loaded = frame_text(0);
        async move { loaded.await.contains("--ink").then_some(()) }
    })
    .await;
    // The portal's frame, once the browser has settled it: its own document (not the frame's
    // initial about:blank), loaded. Refused, it is the browser's error page.
    let (framed_url, framed) = custodian_testkit::eventually("the portal's frame settled", PAGE, || {
        let b = b.clone();
        async move {
            b.enter_frame(1).await.ok()?;
            let state = b.execute("return [document.URL, document.readyState];", Vec::new()).await;
            let framed = frame_text_here(&b).await;
            b.enter_parent_frame().await.expect("out of the frame");
            let state = state.ok()?;
            let url = state[0].as_str()?.to_owned();
            (url != "about:blank" && state[1] == "complete").then_some((url, framed))
        }
    })
    .await;
    assert!(
        !framed.contains("Your consents") && !framed.contains("Sign in"),
        "the portal rendered in a frame: {framed}"
    );
    assert!(framed_url.starts_with("chrome-error:"), "the browser refused the frame: it shows {framed_url}");

    // The demo view, without the platform's session: an invitation to sign in, and a fetch
    // sent anyway is refused with nothing fetched.
    b.goto(&view_url).await.expect("demo view");
    let page = browser::wait_for_text(&b, "Sign in through the platform", PAGE).await;
    assert!(!page.contains("Fetch my profile"), "{page}");
    b.close().await.expect("closed");
    let anonymous = stack.http.post(format!("{view_url}/sessions")).form(&[("subject", "alice")]).send().await.unwrap();
    assert_eq!(anonymous.status(), reqwest::StatusCode::UNAUTHORIZED);
    // Signed in, but with a form from elsewhere (no CSRF token): refused.
    let (signed_in, _cookie, _) = stack.login_through_gateway(&unique("noor")).await;
    let forged = signed_in.post(format!("{view_url}/sessions")).form(&[("csrf", "0")]).send().await.unwrap();
    assert_eq!(forged.status(), reqwest::StatusCode::FORBIDDEN);
    let home = signed_in.get(&view_url).send().await.unwrap();
    crate::support::assert_page_headers(home.headers(), "the demo view");
    let home = home.text().await.unwrap();
    assert!(home.contains("This app holds nothing of yours."), "nothing was fetched: {home}");
}

/// The operators' console: an operator signs in with their own token; ops sees a sweep's
/// progress and an incident's steps with the DPO's deliveries, the DPO the privacy log; a
/// platform's token is refused.
#[tokio::test]
async fn an_operator_sees_a_sweeps_progress_and_an_incidents_steps_in_the_console() {
    use crate::support::{DPO_TOKEN, OPS_TOKEN, RESPONDER_TOKEN};
    let mut stack = Stack::infrastructure().await;
    stack.start_consent();
    stack.start_gateway().await;
    let (client, settings) = stack.register_platform().await;
    stack.start_vault(crate::support::test_vault_config(vec![settings]));
    stack.start_sweeper("s1", crate::support::test_sweeper_config());
    stack.start_audit(crate::audit::audit_config(None));
    // The platforms' names in the registry carry hostile characters: the console shows them.
    let entry = |platform_id: &str, name: String| PlatformEntry {
        platform_id: platform_id.to_owned(),
        name,
        legal_name: "Zorg & Co NV".into(),
        enterprise_number: "0203.201.340".into(),
        scopes: Default::default(),
        views: Vec::new(),
    };
    stack.portal = PortalConfig {
        platforms: vec![
            entry("tp", format!("Idle platform {HOSTILE}")),
            entry(&client.client_id, format!("Leaking platform {HOSTILE}")),
        ],
        ..Default::default()
    };
    stack.restart_gateway().await;
    let smtp = custodian_testkit::SmtpServer::start();
    stack.start_incident(crate::incidents::incident_config(&stack, &smtp, &client));

    // Three consents idle for 200 days, and a sweep that ends them.
    let long_ago = (stack.clock.now() - chrono::Duration::days(200)).to_rfc3339();
    for n in 0..3 {
        let grant = json!({
            "specversion": "1.0", "id": unique("e"), "source": "urn:test", "type": "custodian.consent.granted.v1",
            "time": long_ago, "datacontenttype": "application/json",
            "data": {"issuer": "https://op.example", "subject": format!("{}-{n}", unique("idle")), "platform_id": "tp", "scopes": ["openid"]}
        });
        let r = stack.http.post(stack.url("/v1/events")).bearer_auth(PLATFORM_TOKEN).json(&grant).send().await.unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    }
    custodian_testkit::eventually("three idle grants", SETTLE, || async {
        let q = custodian_events::queries::ConsentQuery { platform_id: Some("tp".into()), ..Default::default() };
        (stack.ledger(q).await.len() == 3).then_some(())
    })
    .await;
    let sweep = json!({"platform_id": "tp", "inactivity_days": 90});
    let r = stack.http.post(stack.url("/v1/sweeps")).bearer_auth(OPS_TOKEN).json(&sweep).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    let summary = format!("a laptop <b>lost</b> & found {HOSTILE}");
    let incident = json!({"kind": "data_leak", "platform_id": client.client_id, "summary": summary});
    let r =
        stack.http.post(stack.url("/v1/incidents")).bearer_auth(RESPONDER_TOKEN).json(&incident).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    let incident_id = r.json::<serde_json::Value>().await.unwrap()["incident_id"].as_str().unwrap().to_owned();
    crate::incidents::closed(&stack, &incident_id, Duration::from_secs(60)).await;

    // A far-dated grant published on the bus is dead-lettered by the consent service.
    let far = crate::gateway_edge::grant(&stack, &unique("kato"), "tp", stack.clock.now() + chrono::Duration::days(1));
    stack.bus.publish_event(custodian_events::subjects::CONSENT_GRANTED, &far).await.expect("publish");

    let b = browser::browser("en").await;
    b.goto(&stack.url("/console")).await.expect("console");
    browser::wait_for_text(&b, "Sign in with your own operator token", PAGE).await;
    accessible_in_every_language(&b, &stack.url("/console"), "console sign-in", "console-sign-in").await;
    // A platform's token is not an operator's.
    b.find(Locator::Css("#token")).await.expect("token field").send_keys(PLATFORM_TOKEN).await.expect("typed");
    click_button(&b, "Sign in to the console").await;
    browser::wait_for_text(&b, "This token is not an operator's", PAGE).await;

    b.goto(&stack.url("/console")).await.expect("console");
    b.find(Locator::Css("#token")).await.expect("token field").send_keys(OPS_TOKEN).await.expect("typed");
    click_button(&b, "Sign in to the console").await;
    let page = browser::wait_for_text(&b, "3 of 3 idle consents examined", SETTLE).await;
    assert!(page.contains("test-ops (ops)"), "who is signed in: {page}");
    assert!(page.contains("Consents ended\n3") || page.contains("Consents ended 3"), "{page}");
    assert!(page.contains("Final report: done"), "the incident's steps: {page}");
    assert!(page.contains("Data leak at"), "the incident's kind in words: {page}");
    assert!(page.contains("e-mail to the DPO accepted at"), "the DPO's deliveries: {page}");
    assert!(page.contains(&summary), "the summary as text: {page}");
    assert!(page.contains(&format!("Sweep of Idle platform {HOSTILE}")), "the registry's name as text: {page}");
    assert!(page.contains(&format!("Data leak at Leaking platform {HOSTILE}")), "{page}");
    no_script_ran(&b).await;
    assert!(!page.contains("Privacy log"), "the privacy log is the DPO's only");
    // The audit service reads the deployment every 5 s; the page follows live.
    let live = browser::wait_for_text(&b, "past this consumer's clock", SETTLE).await;
    assert!(live.contains("Health of the deployment") && live.contains("consent-ledger"), "{live}");
    assert!(live.contains("lifecycle.deadletter.consent: 1"), "the count per subject: {live}");
    assert!(live.contains(&far.id), "the dead letter's event, with its reason: {live}");
    assert!(live.contains("Dated too far ahead of the service's clock."), "the cause in words: {live}");
    assert!(!live.contains("Unavailable right now"), "every section answered: {live}");
    let progress = on_live(&b, Locator::Css("progress"), |bar| async move { bar.attr("value").await }).await;
    assert_eq!(progress.as_deref(), Some("100"), "the sweep's progress bar");
    accessible(&b, "console (ops)").await;
    browser::screenshot(&b, "console-ops-en").await;
    // Replayed while it is still dated ahead: refused again, and the page says so and why.
    let replay = format!("//tr[.//span[normalize-space(.)='{}']]//button[@type='submit']", far.id);
    on_live(&b, Locator::XPath(&replay), |button| async move { button.click().await }).await;
    browser::wait_for_text(&b, "The dead letter was replayed and refused again", SETTLE).await;
    let replayed = browser::wait_for_text(&b, "Replayed by test-ops at", SETTLE).await;
    assert!(replayed.contains("refused again (time "), "the replay's reason: {replayed}");
    accessible(&b, "console after a replay").await;
    browser::screenshot(&b, "console-replayed-en").await;
    accessible_in_every_language(&b, &stack.url("/console"), "console (ops)", "console-ops").await;
    click_link(&b, "Nederlands").await;
    let dutch = browser::wait_for_text(&b, "Console voor beheerders", PAGE).await;
    for words in ["Eindverslag: klaar", "Datalek bij", "Te ver vooruit gedateerd"] {
        assert!(dutch.contains(words), "{words:?}: the machine's words in Dutch: {dutch}");
    }
    assert!(dutch.contains("Toestand\nvoltooid") || dutch.contains("Toestand voltooid"), "the sweep's state: {dutch}");
    accessible(&b, "console (ops, nl)").await;
    browser::screenshot(&b, "console-ops-nl").await;
    click_button(&b, "Afmelden").await;
    browser::wait_for_text(&b, "Meld u aan met uw eigen beheerderstoken", PAGE).await;
    b.close().await.expect("closed");

    // A platform reports a holder-of-key use whose every free field is hostile.
    let hok = json!({
        "specversion": "1.0", "id": unique("hok"), "source": "urn:test", "type": "custodian.token.hok_used.v1",
        "time": stack.clock.now().to_rfc3339(), "datacontenttype": "application/json",
        "data": {
            "platform_id": "tp", "caller_identity": format!("caller {HOSTILE}"),
            "caller_organisation": format!("org {HOSTILE}"), "subject": format!("person {HOSTILE}"),
            "service": format!("https://services.example/{HOSTILE}"), "assertion_id": format!("a-{HOSTILE}"),
            "token_type": "saml2", "valid_until": (stack.clock.now() + chrono::Duration::minutes(5)).to_rfc3339(),
            "purpose": format!("purpose {HOSTILE}")
        }
    });
    let r = stack.http.post(stack.url("/v1/events")).bearer_auth(PLATFORM_TOKEN).json(&hok).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED, "{}", r.text().await.unwrap_or_default());

    // The DPO sees the privacy log, and no sweep.
    let dpo = browser::browser("en").await;
    dpo.goto(&stack.url("/console")).await.expect("console");
    dpo.find(Locator::Css("#token")).await.expect("token field").send_keys(DPO_TOKEN).await.expect("typed");
    click_button(&dpo, "Sign in to the console").await;
    let page = browser::wait_for_text(&dpo, "Your reading of this log is itself recorded", SETTLE).await;
    let page = if page.contains(&format!("purpose {HOSTILE}")) {
        page
    } else {
        // The audit service may not have chained the use yet: the page is read again.
        custodian_testkit::eventually("the planted use in the privacy log", SETTLE, || async {
            dpo.refresh().await.ok()?;
            let page = text(&dpo).await;
            page.contains(&format!("purpose {HOSTILE}")).then_some(page)
        })
        .await
    };
    for planted in [format!("caller {HOSTILE} (org {HOSTILE})"), format!("https://services.example/{HOSTILE}")] {
        assert!(page.contains(&planted), "{planted:?} as text: {page}");
    }
    assert!(page.contains(&format!("Idle platform {HOSTILE}")), "the platform's name: {page}");
    no_script_ran(&dpo).await;
    assert!(!page.contains("Inactivity sweeps") && page.contains("Incidents"), "{page}");
    // This very read is on record, with the DPO's name, before the page showed the log.
    assert!(page.contains("Reads of this log") && page.contains("test-dpo"), "the reads, with their reader: {page}");
    accessible_in_every_language(&dpo, &stack.url("/console"), "console (dpo)", "console-dpo").await;
    dpo.close().await.expect("closed");
}
