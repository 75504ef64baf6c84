//! Chaos on real processes: every service as its own `custodian serve` OS process (two
//! replicas of each that runs replicated), PostgreSQL with fsync on, nats-server (one node, or
//! a JetStream cluster of three with `CHAOS_NATS_NODES=3`), an SMTP server and the real OP.
//!
//! Each round, people sign in and views hold sessions for them; while their revocations run,
//! clients keep opening sessions for them, and one process is SIGKILLed and started again. The
//! victims follow a schedule drawn from a seed, printed at the start (`CHAOS_SEED` replays
//! it): every kind of process in turn, in a shuffled order — a vault replica, the consent
//! leader, a gateway, the audit leader, the sweeper holding a sweep, the incident service,
//! a NATS server (in a cluster: the stream's leader, then a consumer's leader), the demo view
//! (a view process, with what it fetched in its memory) and PostgreSQL (its server processes
//! crash and it recovers from its log). The round of the sweeper runs an
//! inactivity sweep, the round of the incident service an incident's whole workflow.
//!
//! Asserted: every revocation accepted (a gateway killed mid-request is retried on the
//! other), its receipt done, every token inactive at the OP, no view holding anything of a
//! revoked person (the demo view asked through its pages, with the person's own cookie: what
//! it held is wiped, or was lost with the killed process and the restarted one acknowledged
//! the wipe) and no session of theirs without a wipe, exactly one `consent.ended` per
//! revocation and expiry, every sweep and incident finished with all its steps, each DPO
//! notification sent (at least once, and at most twice: a kill between the SMTP server's
//! acceptance and its record re-sends it with the same Message-ID), `audit verify --stream`
//! and `status --check` clean. Measured and printed (not asserted: shared machines are noisy):
//! the time from a revocation's 202 to its tokens inactive at the OP and to its receipt done,
//! and from each kill until the round's last receipt is done, per kind of process killed.
//!
//! `make test` runs a short variant; `make chaos` longer ones (`CHAOS_ROUNDS`, `CHAOS_PEOPLE`;
//! `CHAOS_KINDS` narrows the schedule to some kinds).
//! The `custodian` binary must be built (`target/debug/custodian`, or `CHAOS_CUSTODIAN_BIN`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use custodian_bus::Outgoing;
use custodian_events::{CloudEvent, ConsentGrantedV1, subjects};
use custodian_store::entities::{sweep, view_session};
use custodian_testkit::eventually;
use custodian_view_sdk::{View, ViewError};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use cluster::Cluster;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One person: their browser (holding the gateway session) and what views hold for them.
struct Person {
    name: String,
    browser: reqwest::Client,
    /// (view index, session id) of every session a view opened for them.
    sessions: Arc<Mutex<Vec<(usize, String)>>>,
    /// Every session the demo view (a process of its own) opened for them.
    demo_sessions: Arc<Mutex<Vec<String>>>,
    /// Their tokens, as the OP issued them (from the vault's sealed rows).
    tokens: Vec<String>,
}

/// What one revocation took, from its 202 (or, for a request a killed gateway dropped, from
/// its first attempt).
struct Timing {
    kind: &'static str,
    tokens_inactive: Duration,
    /// Every session the views held for the person when it was accepted acked at the vault.
    views_acked: Duration,
    receipt_done: Duration,
}

/// A round's victim, as the schedule draws it.
#[derive(Clone, Copy)]
struct Victim {
    kind: &'static str,
    /// 1 or 2, for the kinds whose victim is not decided by who leads.
    replica: usize,
}

impl Victim {
    fn describe(&self) -> String {
        match self.kind {
            "consent" => format!("consent leader (else consent-{})", self.replica),
            "audit" => format!("audit leader (else audit-{})", self.replica),
            "sweeper" => format!("sweeper holding the sweep (else sweeper-{})", self.replica),
            "vault" | "gateway" => format!("{}-{}", self.kind, self.replica),
            "incident" => "incident-1".into(),
            "nats" => "nats-1".into(),
            "view" => "view-1 (the demo view)".into(),
            other => other.to_owned(),
        }
    }
}

/// Every kind of process in a shuffled order, cycle after cycle, from `seed`.
fn schedule(seed: u64, rounds: usize, nats_nodes: usize) -> Vec<Victim> {
    let kinds: Vec<&'static str> = if nats_nodes > 1 {
        vec![
            "vault",
            "consent",
            "gateway",
            "audit",
            "sweeper",
            "incident",
            "nats-stream-leader",
            "nats-consumer-leader",
            "view",
            "postgres",
        ]
    } else {
        vec!["vault", "consent", "gateway", "audit", "sweeper", "incident", "nats", "view", "postgres"]
    };
    // `CHAOS_KINDS=view,vault` narrows the schedule to those kinds (to chase one failure).
    let kinds: Vec<&'static str> = match std::env::var("CHAOS_KINDS") {
        Ok(only) => kinds.into_iter().filter(|k| only.split(',').any(|o| o.trim() == *k)).collect(),
        Err(_) => kinds,
    };
    assert!(!kinds.is_empty(), "CHAOS_KINDS names none of the kinds of process");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut plan = Vec::new();
    while plan.len() < rounds {
        let mut cycle = kinds.clone();
        cycle.shuffle(&mut rng);
        plan.extend(cycle.into_iter().map(|kind| Victim { kind, replica: rng.random_range(1..=2) }));
    }
    plan.truncate(rounds);
    plan
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocations_hold_through_sigkill_of_any_one_process() {
    let rounds = setting("CHAOS_ROUNDS", 8);
    let per_round = setting("CHAOS_PEOPLE", 6);
    let nats_nodes = setting("CHAOS_NATS_NODES", 1);
    let seed = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    let plan = schedule(seed, rounds, nats_nodes);
    println!("chaos schedule (replay with CHAOS_SEED={seed} CHAOS_ROUNDS={rounds} CHAOS_NATS_NODES={nats_nodes}):");
    for (round, victim) in plan.iter().enumerate() {
        println!("  round {round}: {}", victim.describe());
    }

    let mut cluster = Cluster::start(nats_nodes).await;
    let views: Vec<View> = vec![cluster.view("chaos-a").await, cluster.view("chaos-b").await];
    let mut timings: Vec<Timing> = Vec::new();
    let mut converged: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
    let mut killed: Vec<String> = Vec::new();
    let (mut revoked_total, mut expired_total) = (0u64, 0u64);
    let mut incidents = Vec::new();
    let mut gateway_retries = 0usize;
    let mut demo_sessions = 0usize;

    for (round, victim) in plan.iter().copied().enumerate() {
        let mut people = Vec::new();
        for i in 0..per_round {
            people.push(sign_in(&cluster, &format!("chaos-r{round}-p{i}-{}", uuid::Uuid::new_v4().simple())).await);
        }
        for person in &mut people {
            person.tokens = cluster.tokens_of(&person.name).await;
            assert!(person.tokens.len() >= 2, "access and refresh token for {}", person.name);
            for (v, view) in views.iter().enumerate() {
                let started =
                    view.start_session(None, &person.name, &cluster.platform, Duration::from_secs(20)).await.unwrap();
                view.store()
                    .put(&started.session_id, "labs", b"HbA1c 6.1%".to_vec(), Duration::from_secs(120))
                    .unwrap();
                person.sessions.lock().await.push((v, started.session_id));
            }
            let demo = open_demo_session(&cluster.demo_view_url, &person.browser)
                .await
                .unwrap_or_else(|e| panic!("the demo view opened no session for {}: {e}", person.name));
            assert!(
                demo_holds(&cluster.demo_view_url, &person.browser, &demo).await,
                "the demo view shows what it holds for {}",
                person.name
            );
            person.demo_sessions.lock().await.push(demo);
        }

        // The round's other work, running when the victim dies.
        let sweep = match victim.kind {
            "sweeper" => {
                let idle = 300;
                let platform = format!("chaos-idle-r{round}");
                grant_idle(&cluster, &platform, idle).await;
                expired_total += idle as u64;
                let accepted = cluster
                    .machine(
                        Method::POST,
                        "/v1/sweeps",
                        &cluster.ops_token,
                        Some(json!({"platform_id": platform, "inactivity_days": 90})),
                    )
                    .await;
                Some((accepted["sweep_id"].as_str().expect("sweep id").to_owned(), idle))
            }
            _ => None,
        };
        if victim.kind == "incident" {
            let reported = cluster
                .machine(
                    Method::POST,
                    "/v1/incidents",
                    &cluster.responder_token,
                    Some(json!({
                        "kind": "credential_loss",
                        "platform_id": cluster.incident_platform,
                        "summary": "client secret lost with a laptop",
                    })),
                )
                .await;
            incidents.push(reported["incident_id"].as_str().expect("incident id").to_owned());
        }

        // Clients keep opening sessions for these people while their revocations run.
        let stop = CancellationToken::new();
        let mut openers = Vec::new();
        for (i, person) in people.iter().enumerate() {
            let (view, v) = (views[i % views.len()].clone(), i % views.len());
            let (stop, sessions, name, platform) =
                (stop.clone(), person.sessions.clone(), person.name.clone(), cluster.platform.clone());
            openers.push(tokio::spawn(async move {
                while !stop.is_cancelled() {
                    match view.start_session(None, &name, &platform, Duration::from_secs(20)).await {
                        Ok(started) => {
                            let _ =
                                view.store().put(&started.session_id, "labs", b"x".to_vec(), Duration::from_secs(120));
                            sessions.lock().await.push((v, started.session_id));
                        }
                        Err(ViewError::NoToken(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                        // A vault replica or a NATS server being killed: the client tries again.
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }));
        }

        // And through the demo view's pages, as the person's browser would.
        for person in &people {
            let (stop, sessions, browser, url) =
                (stop.clone(), person.demo_sessions.clone(), person.browser.clone(), cluster.demo_view_url.clone());
            openers.push(tokio::spawn(async move {
                while !stop.is_cancelled() {
                    match open_demo_session(&url, &browser).await {
                        Ok(session) => sessions.lock().await.push(session),
                        // No token any more, or the view (or a service behind it) being killed.
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }));
        }

        // Everyone revokes; each revocation is followed from its 202 to its tokens dead at the
        // OP and its receipt done, while the victim is killed and restarted.
        let mut requests = Vec::new();
        let mut victim_name = String::new();
        for (i, person) in people.iter().enumerate() {
            let (browser, probe, tokens, name) =
                (person.browser.clone(), cluster.probe(), person.tokens.clone(), person.name.clone());
            let (gateways, platform) = (cluster.gateway_urls.clone(), cluster.platform.clone());
            let (sessions, demo_sessions) = (person.sessions.clone(), person.demo_sessions.clone());
            let kind = victim.kind;
            requests.push(tokio::spawn(async move {
                let (revocation_id, at, retries) = revoke(&browser, &gateways, i, &platform, &name).await;
                // What the views held for them when it was accepted.
                let mut held: Vec<String> = sessions.lock().await.iter().map(|(_, s)| s.clone()).collect();
                held.extend(demo_sessions.lock().await.iter().cloned());
                let (tokens_inactive, views_acked, receipt_done) = tokio::join!(
                    probe.until_inactive(&tokens, at),
                    probe.until_views_acked(&revocation_id, &held, at),
                    probe.until_done(&revocation_id, at)
                );
                (Timing { kind, tokens_inactive, views_acked, receipt_done }, retries, at)
            }));
            tokio::time::sleep(Duration::from_millis(15)).await;
            // Half of them sent: the victim dies with the rest in flight or still to come.
            if requests.len() == people.len() / 2 {
                victim_name = resolve(&cluster, victim, sweep.as_ref().map(|(id, _)| id.as_str())).await;
                cluster.kill(&victim_name);
            }
        }
        let killed_at = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.restart(&victim_name).await;
        eprintln!("round {round}: killed {victim_name}, back after {:?}", killed_at.elapsed());
        for request in requests {
            let (timing, retries, at) = request.await.expect("a revocation held through the kill");
            // Each revocation, timed from about the kill (the instant the round's last was sent).
            if std::env::var_os("CHAOS_PRINT_EACH").is_some() {
                let offset =
                    if at >= killed_at { (at - killed_at).as_secs_f64() } else { -(killed_at - at).as_secs_f64() };
                eprintln!(
                    "  accepted at kill{offset:+.2}s: tokens {:?}, views {:?}, receipt {:?}",
                    timing.tokens_inactive, timing.views_acked, timing.receipt_done
                );
            }
            timings.push(timing);
            gateway_retries += retries;
        }
        converged.entry(victim.kind).or_default().push(killed_at.elapsed());
        killed.push(victim_name.clone());
        revoked_total += people.len() as u64;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        for opener in openers {
            opener.await.expect("opener");
        }

        // Nothing of theirs is held, and every session of theirs the vault knows has a wipe.
        for person in &people {
            for (v, session) in person.sessions.lock().await.iter() {
                assert!(
                    views[*v].store().get(session, "labs").is_none() && !views[*v].store().has_session(session),
                    "view {} still holds session {session} of {} after its revocation ({victim_name} killed)",
                    views[*v].view_id(),
                    person.name
                );
            }
            demo_sessions += person.demo_sessions.lock().await.len();
            for (n, session) in person.demo_sessions.lock().await.iter().enumerate() {
                if demo_holds(&cluster.demo_view_url, &person.browser, session).await {
                    let row = view_session::Entity::find_by_id(session.clone()).one(cluster.store.db()).await;
                    panic!(
                        "the demo view still holds session {session} (its {n}th for them) of {} after its revocation \
                         ({victim_name} killed); the vault's record of it: {row:?}",
                        person.name
                    );
                }
            }
            // Retried: the pool's connections may have died with a crashed PostgreSQL.
            let open = eventually("the person's sessions", Duration::from_secs(30), || async {
                view_session::Entity::find()
                    .filter(view_session::Column::Subject.eq(person.name.clone()))
                    .filter(view_session::Column::WipeId.is_null())
                    .filter(view_session::Column::ClosedAt.is_null())
                    .all(cluster.store.db())
                    .await
                    .ok()
            })
            .await;
            assert!(
                open.is_empty(),
                "{} sessions of {} escaped the revocation ({victim_name} killed)",
                open.len(),
                person.name
            );
        }
        if let Some((sweep_id, idle)) = sweep {
            let row = eventually("the sweep to finish", Duration::from_secs(90), || async {
                let row = sweep::Entity::find_by_id(sweep_id.clone()).one(cluster.store.db()).await.ok()??;
                (row.state == "finished").then_some(row)
            })
            .await;
            assert_eq!(
                (row.scanned, row.expired),
                (idle as i64, idle as i64),
                "the sweep through {victim_name}'s kill"
            );
        }
        if victim.kind == "incident" {
            let id = incidents.last().expect("the round's incident").clone();
            let closed = eventually("the incident to close", Duration::from_secs(120), || async {
                let view = cluster
                    .machine_found(Method::GET, &format!("/v1/incidents/{id}"), &cluster.responder_token, None)
                    .await?;
                (view["state"] == "closed").then_some(view)
            })
            .await;
            let steps = closed["steps"].as_array().expect("steps");
            assert!(
                !steps.is_empty() && steps.iter().all(|s| s["state"] == "done"),
                "every step of the incident done through {victim_name}'s kill: {closed}"
            );
        }
    }

    // A sweep is finished once its commands are in its outbox; the ledger may still be ending
    // those consents. Counted once every one has had the time to, then again a moment later.
    let expected = revoked_total + expired_total;
    let settled = eventually("a consent.ended for every revocation and expiry", Duration::from_secs(60), || async {
        let n = cluster.consent_ended_count().await;
        (n >= expected).then_some(n)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        (settled, cluster.consent_ended_count().await),
        (expected, expected),
        "one consent.ended per revocation and per expired consent"
    );
    check_dpo_mails(&cluster, &incidents);
    cluster.audit_verify();
    cluster.status_check().await;
    println!("\nPostgreSQL with fsync={}; NATS: {nats_nodes} node(s)", cluster.fsync().await);
    println!("processes killed: {}", killed.join(", "));
    println!("requests a killed gateway dropped, retried on the other: {gateway_retries}");
    println!("sessions the demo view opened through its pages, each checked wiped: {demo_sessions}");
    report(&timings, &converged);
    cluster.stop();
}

/// Which process the victim is now: the leader or holder where that decides, else the drawn
/// replica.
async fn resolve(cluster: &Cluster, victim: Victim, sweep_id: Option<&str>) -> String {
    match victim.kind {
        "consent" | "audit" => cluster
            .lease_holder(custodian_bus::lease::LEADERSHIP_BUCKET, &format!("{}@", victim.kind))
            .await
            .unwrap_or_else(|| format!("{}-{}", victim.kind, victim.replica)),
        "sweeper" => {
            let holder = match sweep_id {
                Some(id) => sweep::Entity::find_by_id(id.to_owned())
                    .one(cluster.store.db())
                    .await
                    .ok()
                    .flatten()
                    .and_then(|row| row.holder),
                None => None,
            };
            holder.filter(|h| cluster.pid_of(h).is_some()).unwrap_or_else(|| format!("sweeper-{}", victim.replica))
        }
        "vault" | "gateway" => format!("{}-{}", victim.kind, victim.replica),
        "incident" => "incident-1".into(),
        "nats" => "nats-1".into(),
        "view" => "view-1".into(),
        "nats-stream-leader" => cluster.jetstream_leaders().await.0,
        "nats-consumer-leader" => cluster.jetstream_leaders().await.1,
        other => other.to_owned(),
    }
}

/// The person's DELETE, as a browser behind a load balancer sends it: to one gateway, and to
/// the other when that one is gone. A request the killed gateway took but never answered may
/// have been recorded: sent again, it is the same revocation (the same id). Returns its id,
/// when the first attempt went out, and how many attempts were lost with a gateway.
async fn revoke(
    browser: &reqwest::Client,
    gateways: &[String],
    first: usize,
    platform: &str,
    name: &str,
) -> (String, Instant, usize) {
    let started = Instant::now();
    let mut lost = 0;
    loop {
        let url = format!("{}/v1/me/consents/{platform}", gateways[(first + lost) % gateways.len()]);
        let response = match browser.delete(url).send().await {
            Ok(response) => response,
            Err(e) => {
                lost += 1;
                assert!(lost < 20, "{name}'s revocation: no gateway answers ({e})");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let status = response.status();
        let body: Value = response.json().await.unwrap_or_default();
        assert_eq!(status, StatusCode::ACCEPTED, "{name}'s revocation (attempt {}): {body}", lost + 1);
        let id = body["revocation_id"].as_str().expect("revocation id").to_owned();
        return (id, if lost > 0 { started } else { Instant::now() }, lost);
    }
}

/// `n` consents on `platform` granted 200 days ago, published as the vault would, applied.
async fn grant_idle(cluster: &Cluster, platform: &str, n: usize) {
    let bus = cluster.harness_bus().await;
    let then = custodian_store::clock::system().now() - chrono::Duration::days(200);
    let grants: Vec<Outgoing> = (0..n)
        .map(|i| {
            let event = CloudEvent::new(
                "urn:custodian:chaos",
                then,
                ConsentGrantedV1 {
                    issuer: cluster.provider.issuer.clone(),
                    subject: format!("{platform}-idle-{i}"),
                    platform_id: platform.into(),
                    scopes: vec![],
                    acr: None,
                },
            );
            Outgoing {
                subject: subjects::CONSENT_GRANTED.into(),
                event_id: event.id.clone(),
                payload: Bytes::from(event.to_json()),
                traceparent: None,
            }
        })
        .collect();
    assert!(bus.publish_all(&grants, 256).await.iter().all(Result::is_ok), "idle grants published");
    eventually("the idle grants applied", Duration::from_secs(60), || async {
        let rows = custodian_store::entities::consent::Entity::find()
            .filter(custodian_store::entities::consent::Column::PlatformId.eq(platform))
            .all(cluster.store.db())
            .await
            .ok()?;
        (rows.len() == n).then_some(())
    })
    .await;
}

/// Each notification of each incident reached the DPO's mailbox at least once; a re-send
/// after a kill between the SMTP server's acceptance and the step's record carries the same
/// Message-ID, and happens at most once per kill.
fn check_dpo_mails(cluster: &Cluster, incidents: &[String]) {
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for mail in cluster.smtp.messages() {
        if let Some(id) = mail.lines().find(|l| l.to_ascii_lowercase().starts_with("message-id:")) {
            *by_id.entry(id.to_owned()).or_default() += 1;
        }
    }
    for incident in incidents {
        let sent: Vec<usize> = by_id.iter().filter(|(id, _)| id.contains(incident.as_str())).map(|(_, n)| *n).collect();
        assert_eq!(sent.len(), 4, "initial, containment, rotation and final notices of {incident}: {by_id:?}");
        assert!(sent.iter().all(|n| (1..=2).contains(n)), "each notice once, or twice after a kill: {by_id:?}");
    }
    let resent: usize = by_id.values().map(|n| n - 1).sum();
    println!("DPO notices: {} for {} incident(s), {resent} re-sent after a kill", by_id.len(), incidents.len());
}

/// Signs `name` in through the gateway and the OP's pages; waits for the grant in the ledger.
/// Opens a session at the demo view as the person's browser does: its start page's form
/// (with the CSRF token bound to the platform's session cookie), posted. The session's id.
async fn open_demo_session(url: &str, browser: &reqwest::Client) -> Result<String, String> {
    let page = browser.get(format!("{url}/")).send().await.map_err(|e| e.to_string())?;
    let page = page.text().await.map_err(|e| e.to_string())?;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .ok_or("no form on the demo view's page (signed out?)")?
        .to_owned();
    let opened = browser
        .post(format!("{url}/sessions"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if opened.status() != StatusCode::SEE_OTHER {
        return Err(format!("the demo view answered {}", opened.status()));
    }
    let to = opened.headers()[reqwest::header::LOCATION].to_str().map_err(|e| e.to_string())?;
    to.strip_prefix("/sessions/").map(str::to_owned).ok_or_else(|| format!("redirected to {to}"))
}

/// Does the demo view show the person's data of `session` as held in its memory (its page
/// of the session, as the person's browser gets it)? Asked until it answers (it may be
/// restarting); a page that cannot tell (signed out) is a failure, not a "no".
async fn demo_holds(url: &str, browser: &reqwest::Client, session: &str) -> bool {
    let (status, page) = eventually("the demo view's page of a session", Duration::from_secs(30), || async {
        let response = browser.get(format!("{url}/sessions/{session}")).send().await.ok()?;
        let status = response.status();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return None;
        }
        Some((status, response.text().await.ok()?))
    })
    .await;
    let gone = page.contains("This app no longer holds this data.");
    match status {
        StatusCode::OK => !gone,
        StatusCode::NOT_FOUND if gone => false,
        other => panic!("the demo view's page of session {session} cannot tell ({other}): {page}"),
    }
}

async fn sign_in(cluster: &Cluster, name: &str) -> Person {
    let browser = cluster.provider.browser();
    let start =
        browser.get(cluster.url(&format!("/login?platform_id={}", cluster.platform))).send().await.expect("GET /login");
    assert_eq!(start.status(), StatusCode::SEE_OTHER, "{:?}", start.text().await);
    let to_op = start.headers()[reqwest::header::LOCATION].to_str().unwrap().to_owned();
    let back = cluster.provider.drive_interactions(&browser, to_op, name, &cluster.url("/callback")).await;
    let done = browser.get(&back).send().await.expect("GET /callback");
    assert_eq!(done.status(), StatusCode::SEE_OTHER, "callback: {:?}", done.text().await);
    eventually("the login to grant consent", Duration::from_secs(30), || {
        let (browser, url) = (browser.clone(), cluster.url("/v1/me/consents"));
        async move {
            let body: Value = browser.get(url).send().await.ok()?.json().await.ok()?;
            (!body["consents"].as_array()?.is_empty()).then_some(())
        }
    })
    .await;
    Person {
        name: name.to_owned(),
        browser,
        sessions: Arc::default(),
        demo_sessions: Arc::default(),
        tokens: Vec::new(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(timings: &[Timing], converged: &BTreeMap<&'static str, Vec<Duration>>) {
    type Columns = [Vec<Duration>; 3];
    let columns = |t: &Timing| [t.tokens_inactive, t.views_acked, t.receipt_done];
    let mut by_kind: HashMap<&str, Columns> = HashMap::new();
    let mut all = Columns::default();
    for t in timings {
        let entry = by_kind.entry(t.kind).or_default();
        for (i, d) in columns(t).into_iter().enumerate() {
            entry[i].push(d);
            all[i].push(d);
        }
    }
    println!("\nchaos: {} revocations, each with one process SIGKILLed while it ran", timings.len());
    println!(
        "{:<21} {:>4}  {:>27}  {:>27}  {:>27}  {:>9}",
        "killed", "n", "tokens revoked p50/p99/max", "views acked p50/p99/max", "receipt done p50/p99/max", "converged"
    );
    let line = |name: &str, columns: &Columns, converge: Option<Duration>| {
        let figures: Vec<String> = columns
            .iter()
            .map(|c| {
                let mut sorted = c.clone();
                sorted.sort();
                format!(
                    "{:>7.2?} / {:>7.2?} / {:>7.2?}",
                    percentile(&sorted, 50.0),
                    percentile(&sorted, 99.0),
                    sorted.last().copied().unwrap_or_default()
                )
            })
            .collect();
        println!(
            "{:<21} {:>4}  {}  {:>9}",
            name,
            columns[0].len(),
            figures.join("  "),
            converge.map(|c| format!("{c:.2?}")).unwrap_or_default(),
        );
    };
    let mut kinds: Vec<&&str> = by_kind.keys().collect();
    kinds.sort();
    for kind in kinds {
        line(kind, &by_kind[*kind], converged.get(*kind).and_then(|c| c.iter().max().copied()));
    }
    line("all", &all, converged.values().flatten().max().copied());
    println!("(views acked: the vault has the ack of every view session the person had when the revocation");
    println!(" was accepted; receipt done: every token settled and every wipe acked, once the stream has");
    println!(" delivered the revocation; converged: from the kill to the round's last receipt done, the");
    println!(" slowest round)");
}
