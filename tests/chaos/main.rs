//! Chaos on real processes: every service as its own `custodian serve` OS process (two
//! replicas of the consent ledger and of the vault), PostgreSQL, nats-server and the real OP.
//! People sign in and hold view sessions; while their revocations run, clients keep opening
//! sessions for them, and one process (a vault replica, a consent replica, the gateway's
//! NATS server) is killed with SIGKILL and started again.
//!
//! Asserted: every revocation accepted, its receipt done, every token inactive at the OP,
//! no view holding anything of a revoked person and no session of theirs without a wipe,
//! one `consent.ended` per revocation, `custodian status --check` clean. Measured and
//! printed (not asserted: shared machines are noisy): the time from a revocation's 202 to its
//! tokens inactive at the OP and to its receipt done, per process killed.
//!
//! `make test` runs a short variant; `make chaos` a longer one (`CHAOS_ROUNDS`, `CHAOS_PEOPLE`).
//! The `custodian` binary must be built (`target/debug/custodian`, or `CHAOS_CUSTODIAN_BIN`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use custodian_store::entities::view_session;
use custodian_testkit::eventually;
use custodian_view_sdk::{View, ViewError};
use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::Value;
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
    /// Their tokens, as the OP issued them (from the vault's sealed rows).
    tokens: Vec<String>,
}

/// What one revocation took, from its 202.
struct Timing {
    victim: &'static str,
    tokens_inactive: Duration,
    receipt_done: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocations_hold_through_sigkill_of_any_one_process() {
    let rounds = setting("CHAOS_ROUNDS", 4);
    let per_round = setting("CHAOS_PEOPLE", 6);
    let mut cluster = Cluster::start().await;
    let views: Vec<View> = vec![cluster.view("chaos-a").await, cluster.view("chaos-b").await];

    // Victims in turn: each replica of the vault and of the ledger, and the NATS server.
    let victims: [&'static str; 5] = ["vault-1", "consent-1", "vault-2", "consent-2", "nats"];
    let mut timings: Vec<Timing> = Vec::new();
    let mut revoked_total = 0u64;
    for round in 0..rounds {
        let victim = victims[round % victims.len()];
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
                        // A vault replica or the NATS server being killed: the client tries again.
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }));
        }

        // Everyone revokes; each revocation is followed from its 202 to its tokens dead at the
        // OP and its receipt done, while the victim is killed and restarted.
        let mut requests = Vec::new();
        for person in &people {
            let (browser, url) =
                (person.browser.clone(), cluster.url(&format!("/v1/me/consents/{}", cluster.platform)));
            let (probe, tokens, name) = (cluster.probe(), person.tokens.clone(), person.name.clone());
            requests.push(tokio::spawn(async move {
                let response = browser.delete(url).send().await.expect("DELETE reaches the gateway");
                let at = Instant::now();
                let status = response.status();
                let body: Value = response.json().await.unwrap_or_default();
                assert_eq!(status, StatusCode::ACCEPTED, "{name}'s revocation with {victim} killed: {body}");
                let revocation_id = body["revocation_id"].as_str().expect("revocation id").to_owned();
                let (tokens_inactive, receipt_done) =
                    tokio::join!(probe.until_inactive(&tokens, at), probe.until_done(&revocation_id, at));
                Timing { victim, tokens_inactive, receipt_done }
            }));
            tokio::time::sleep(Duration::from_millis(15)).await;
            // Half of them sent: the victim dies with the rest in flight or still to come.
            if requests.len() == people.len() / 2 {
                cluster.kill(victim);
            }
        }
        let killed_at = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.restart(victim).await;
        eprintln!("round {round}: killed {victim}, back after {:?}", killed_at.elapsed());
        for request in requests {
            timings.push(request.await.expect("a revocation held through the kill"));
        }
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
                    "view {} still holds session {session} of {} after its revocation ({victim} killed)",
                    views[*v].view_id(),
                    person.name
                );
            }
            let open = view_session::Entity::find()
                .filter(view_session::Column::Subject.eq(person.name.clone()))
                .filter(view_session::Column::WipeId.is_null())
                .filter(view_session::Column::ClosedAt.is_null())
                .all(cluster.store.db())
                .await
                .unwrap();
            assert!(
                open.is_empty(),
                "{} sessions of {} escaped the revocation ({victim} killed)",
                open.len(),
                person.name
            );
        }
    }

    assert_eq!(cluster.consent_ended_count().await, revoked_total, "one consent.ended per revocation");
    cluster.status_check().await;
    println!("\nPostgreSQL with fsync={}", cluster.fsync().await);
    report(&timings);
    cluster.stop();
}

/// Signs `name` in through the gateway and the OP's pages; waits for the grant in the ledger.
async fn sign_in(cluster: &Cluster, name: &str) -> Person {
    let browser = cluster.provider.browser();
    let start = browser.get(cluster.url("/login")).send().await.expect("GET /login");
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
    Person { name: name.to_owned(), browser, sessions: Arc::default(), tokens: Vec::new() }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(timings: &[Timing]) {
    let mut by_victim: HashMap<&str, (Vec<Duration>, Vec<Duration>)> = HashMap::new();
    for t in timings {
        let entry = by_victim.entry(t.victim).or_default();
        entry.0.push(t.tokens_inactive);
        entry.1.push(t.receipt_done);
    }
    println!("\nchaos: {} revocations, each with one process SIGKILLed while it ran", timings.len());
    println!("{:<10} {:>4}  {:>22}  {:>22}", "killed", "n", "tokens inactive p50/p99", "receipt done p50/p99");
    let mut names: Vec<&&str> = by_victim.keys().collect();
    names.sort();
    for name in names {
        let (mut tokens, mut receipts) = by_victim[*name].clone();
        tokens.sort();
        receipts.sort();
        println!(
            "{:<10} {:>4}  {:>10.2?} / {:>9.2?}  {:>10.2?} / {:>9.2?}",
            name,
            tokens.len(),
            percentile(&tokens, 50.0),
            percentile(&tokens, 99.0),
            percentile(&receipts, 50.0),
            percentile(&receipts, 99.0)
        );
    }
}
