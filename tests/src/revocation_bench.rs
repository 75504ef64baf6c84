//! `custodian-bench revocation`: consent.revoked → last view ack, per person with 10 sessions
//! (p50/p99), without and with tokens to revoke at the OP (the OP's own RFC 7009 latency
//! printed beside it), and a burst fan-out of 10,000 sessions (sessions/s). Baselines in the
//! same run: a raw 4-hop JetStream relay (the hops a revocation takes: revoked → ended →
//! wipe → wiped) and raw JetStream publish+consume of the same number of messages.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull;
use custodian_bus::{Bus, StreamSettings};
use custodian_events::*;
use custodian_store::Store;
use custodian_store::clock::{self, Clock as _};
use custodian_testkit::{NatsServer, PgCluster, Provider, TEST_CLIENT_ID, TEST_CLIENT_SECRET, TEST_REDIRECT_URI};
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const VIEWS: usize = 10;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Who acked which wipe, as session.wiped arrives (core subscription: observing only).
#[derive(Clone, Default)]
struct Acks {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    notify: Arc<Notify>,
}

impl Acks {
    async fn watch(client: async_nats::Client) -> Self {
        let acks = Acks::default();
        // Views ack on the subject bound to their identity: `lifecycle.session.wiped.<view>`.
        let mut sub = client.subscribe(subjects::SESSION_WIPED_BY_VIEW.to_owned()).await.unwrap();
        let a = acks.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if let Ok(LifecycleEvent::SessionWiped(e)) = LifecycleEvent::decode(Some(&msg.subject), &msg.payload) {
                    a.seen.lock().unwrap().entry(e.data.wipe_id.clone()).or_insert_with(Instant::now);
                    a.notify.notify_waiters();
                }
            }
        });
        acks
    }

    /// Waits until every wipe id is acked; returns when the last one was.
    async fn all(&self, ids: &HashSet<String>, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            {
                let seen = self.seen.lock().unwrap();
                if ids.iter().all(|id| seen.contains_key(id)) {
                    return ids.iter().filter_map(|id| seen.get(id).copied()).max();
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }
}

struct Bench {
    bus: Bus,
    store: Store,
    keyring: custodian_crypto::KeyRing,
    views: Vec<custodian_view_sdk::View>,
    issuer: String,
    acks: Acks,
    _shutdown: CancellationToken,
}

/// On the secured server (TLS, client certificates, an nkey per identity, the permission
/// table): the bench's own publisher is the harness (it provisions, as `custodian nats
/// provision` would), each service and view runs on its own identity.
async fn setup(nats: &mut NatsServer, provider: &Provider) -> Bench {
    let client = nats.connect_harness().await;
    let bus = Bus::new(client.clone(), &StreamSettings::default()).await.unwrap();
    custodian_bus::provision(&bus, Duration::from_secs(30)).await.unwrap();
    let service_bus = async |service| {
        let client = nats.connect(&custodian_bus::trust::Identity::Service(service), "bench-service").await;
        Bus::new(client, &StreamSettings::default()).await.unwrap()
    };
    let (consent_bus, vault_bus) = (
        service_bus(custodian_bus::trust::Service::Consent).await,
        service_bus(custodian_bus::trust::Service::Vault).await,
    );
    let store = Store::connect_and_migrate(&PgCluster::shared().fresh_database(), 16).await.unwrap();
    let clock = clock::system();
    let shutdown = CancellationToken::new();
    let keyring = custodian_crypto::KeyRing::ephemeral();

    let consent = custodian_consent::Deps {
        store: store.clone(),
        bus: consent_bus,
        clock: clock.clone(),
        metrics: Default::default(),
    };
    let config = custodian_consent::ConsentConfig { reconcile_every_secs: 1, ..Default::default() };
    tokio::spawn(custodian_consent::run(consent, config, shutdown.clone()));
    let vault = custodian_vault::Deps {
        store: store.clone(),
        bus: vault_bus,
        clock: clock.clone(),
        keyring: keyring.clone(),
        metrics: Default::default(),
    };
    let settings = custodian_oidc::ClientSettings {
        issuer: provider.issuer.clone(),
        ca_file: Some(provider.ca_file.clone()),
        client_id: TEST_CLIENT_ID.into(),
        client_secret: TEST_CLIENT_SECRET.into(),
        redirect_uri: TEST_REDIRECT_URI.into(),
        scopes: vec!["openid".into(), "offline_access".into()],
        required_acr: None,
        acr_order: Vec::new(),
        timeout_secs: 10,
    };
    let vault_config = custodian_vault::VaultConfig { clients: vec![settings], ..Default::default() };
    tokio::spawn(custodian_vault::run(vault, vault_config, shutdown.clone()));
    let mut views = Vec::new();
    for v in 0..VIEWS {
        let view_id = format!("bench-view-{v}");
        nats.add_view(&view_id);
        let identity = custodian_bus::trust::Identity::view(&view_id).unwrap();
        let view_bus = Bus::attach(nats.connect(&identity, "bench-view").await);
        let view = custodian_view_sdk::View::new(&view_id, view_bus, clock.clone()).unwrap();
        let running = view.clone();
        let token = shutdown.clone();
        tokio::spawn(async move { running.run(token).await });
        views.push(view);
    }
    let acks = Acks::watch(client).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Bench { bus, store, keyring, views, issuer: provider.issuer.clone(), acks, _shutdown: shutdown }
}

impl Bench {
    /// Grants `people` consents and opens 10 sessions each (one per view); waits for the ledger.
    async fn seed(&self, people: &[String], platform: &str) {
        let now = clock::SystemClock.now();
        let grants: Vec<custodian_bus::Outgoing> = people
            .iter()
            .map(|p| {
                let data = ConsentGrantedV1 {
                    issuer: self.issuer.clone(),
                    subject: p.clone(),
                    platform_id: platform.into(),
                    scopes: vec!["openid".into()],
                    acr: None,
                };
                custodian_bus::Outgoing::event(subjects::CONSENT_GRANTED, &CloudEvent::new("urn:bench", now, data))
            })
            .collect();
        for r in self.bus.publish_all(&grants, 512).await {
            r.unwrap();
        }
        let expiry = now + chrono::Duration::seconds(3600);
        futures::stream::iter(people.iter().flat_map(|p| self.views.iter().map(move |v| (p, v))))
            .for_each_concurrent(256, |(person, view)| async move {
                view.open_session(&self.issuer, person, platform, expiry).await.unwrap();
            })
            .await;
        // The ledger must hold every grant, and the vault every session, before revoking.
        let expected_sessions = (people.len() * VIEWS) as u64;
        loop {
            let q = queries::ConsentQuery {
                platform_id: Some(platform.into()),
                state: Some("granted".into()),
                limit: Some(1_000_000),
                ..Default::default()
            };
            let granted = match custodian_bus::query::<_, queries::ConsentReply>(
                self.bus.client(),
                queries::CONSENTS,
                &q,
                Duration::from_secs(30),
            )
            .await
            {
                Ok(queries::ConsentReply::Consents(v)) => v.len(),
                _ => 0,
            };
            use custodian_store::sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
            let sessions = custodian_store::entities::view_session::Entity::find()
                .filter(custodian_store::entities::view_session::Column::PlatformId.eq(platform))
                .count(self.store.db())
                .await
                .unwrap();
            if granted == people.len() && sessions == expected_sessions {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn revoke_event(&self, person: &str, platform: &str) -> CloudEvent<ConsentRevokedV1> {
        let data = ConsentRevokedV1 {
            issuer: self.issuer.clone(),
            subject: person.into(),
            platform_id: platform.into(),
            reason: RevokeReason::User,
            actor: None,
        };
        CloudEvent::new("urn:bench", clock::SystemClock.now(), data)
    }

    fn wipe_ids(&self, revocation_id: &str) -> HashSet<String> {
        self.views
            .iter()
            .map(|v| derived_event_id("session.wipe", &format!("{revocation_id}:{}", v.view_id())))
            .collect()
    }

    /// One revocation at a time: consent.revoked published → the last of the 10 view acks.
    async fn latencies(&self, people: &[String], platform: &str) -> Vec<Duration> {
        let mut out = Vec::with_capacity(people.len());
        for person in people {
            let event = self.revoke_event(person, platform);
            let ids = self.wipe_ids(&event.id);
            let start = Instant::now();
            self.bus.publish_event(subjects::CONSENT_REVOKED, &event).await.unwrap();
            let last = self.acks.all(&ids, Duration::from_secs(60)).await.expect("all views acked");
            out.push(last.saturating_duration_since(start));
        }
        out.sort();
        out
    }
}

/// The same 4 hops with nothing but JetStream: a message relayed by 3 pull consumers.
async fn raw_relay(bus: &Bus, n: usize) -> Vec<Duration> {
    let js = bus.jetstream();
    let stream = js.get_stream(subjects::STREAM).await.unwrap();
    let mut consumers = Vec::new();
    for hop in 0..4 {
        let c = stream
            .create_consumer(pull::Config {
                durable_name: Some(format!("raw-hop-{hop}")),
                filter_subject: format!("lifecycle.rawhop.h{hop}"),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .unwrap();
        consumers.push(c.messages().await.unwrap());
    }
    let mut last = consumers.pop().unwrap();
    for (hop, mut messages) in consumers.into_iter().enumerate() {
        let js = js.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = messages.next().await {
                m.ack().await.ok();
                js.publish(format!("lifecycle.rawhop.h{}", hop + 1), m.payload.clone()).await.unwrap().await.unwrap();
            }
        });
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        js.publish("lifecycle.rawhop.h0", format!("{{\"i\":{i}}}").into()).await.unwrap().await.unwrap();
        let m = last.next().await.unwrap().unwrap();
        m.ack().await.ok();
        out.push(start.elapsed());
    }
    out.sort();
    out
}

pub async fn run() {
    let n: usize = std::env::var("CUSTODIAN_BENCH_REVOCATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let n_op: usize = std::env::var("CUSTODIAN_BENCH_OP_REVOCATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    println!(
        "custodian revocation bench: PostgreSQL, {VIEWS} views, NATS with TLS, client certificates, an nkey per \
         service and view and the permission table, 2 cores shared\n"
    );
    let mut nats = NatsServer::start();
    let provider = Provider::shared();
    let bench = setup(&mut nats, provider).await;

    let raw = raw_relay(&bench.bus, n).await;
    println!(
        "raw JetStream 4-hop relay            n={n:<5} p50 {:>6.2} ms  p99 {:>6.2} ms",
        ms(percentile(&raw, 0.5)),
        ms(percentile(&raw, 0.99))
    );

    // (1) No tokens to revoke: the OP is out of the path.
    let people: Vec<String> = (0..n).map(|i| format!("lat-{i}")).collect();
    bench.seed(&people, "tp-bench").await;
    let lat = bench.latencies(&people, "tp-bench").await;
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    println!(
        "revoked → last of 10 view acks (OP excluded) n={n:<5} p50 {:>6.2} ms  p99 {:>6.2} ms  (target p99 <= 25 ms; {:.1}x the raw relay's p99)",
        ms(p50),
        ms(p99),
        ms(p99) / ms(percentile(&raw, 0.99)).max(0.001)
    );

    // (2) With a refresh and an access token per person, revoked at the OP in the same flow.
    let mut with_tokens = Vec::new();
    let login_start = Instant::now();
    for i in 0..n_op {
        let person = format!("op-{i}");
        let tokens = provider.login(&person).await;
        let now = clock::SystemClock.now();
        let imported = custodian_vault::ImportedTokens {
            issuer: bench.issuer.clone(),
            subject: person.clone(),
            platform_id: TEST_CLIENT_ID.into(),
            acr: None,
            scopes: vec!["openid".into(), "offline_access".into()],
            tokens: custodian_vault::TokenBundle {
                access_token: tokens.access_token.clone(),
                refresh_token: tokens.refresh_token.clone(),
                id_token: None,
            },
            access_expires_at: now + chrono::Duration::seconds(3000),
            expires_at: now + chrono::Duration::days(14),
        };
        custodian_vault::import_tokens(&bench.store, &bench.keyring, &imported, now).await.unwrap();
        with_tokens.push(person);
    }
    eprintln!("({n_op} people signed in at the OP in {:.1} s)", login_start.elapsed().as_secs_f64());
    bench.seed(&with_tokens, TEST_CLIENT_ID).await;
    // Tokens revoked in parallel with the wipes: the receipt is done at the later of the two.
    let mut done_times = Vec::new();
    for person in &with_tokens {
        let event = bench.revoke_event(person, TEST_CLIENT_ID);
        let ids = bench.wipe_ids(&event.id);
        let start = Instant::now();
        bench.bus.publish_event(subjects::CONSENT_REVOKED, &event).await.unwrap();
        let views_done = bench.acks.all(&ids, Duration::from_secs(60)).await.expect("acks");
        let deadline = Instant::now() + Duration::from_secs(60);
        let tokens_done = loop {
            use custodian_store::sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
            assert!(Instant::now() < deadline, "revocation {} not done within 60 s", event.id);
            let r = custodian_store::entities::revocation::Entity::find()
                .filter(custodian_store::entities::revocation::Column::RevocationId.eq(event.id.clone()))
                .one(bench.store.db())
                .await
                .unwrap();
            if r.is_some_and(|r| r.state == "done") {
                break Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        done_times.push(views_done.max(tokens_done).saturating_duration_since(start));
    }
    done_times.sort();
    // The OP's own RFC 7009 latency, measured with the same client.
    let op = custodian_oidc::OidcClient::discover(custodian_oidc::ClientSettings {
        issuer: provider.issuer.clone(),
        ca_file: Some(provider.ca_file.clone()),
        client_id: TEST_CLIENT_ID.into(),
        client_secret: TEST_CLIENT_SECRET.into(),
        redirect_uri: TEST_REDIRECT_URI.into(),
        scopes: vec![],
        required_acr: None,
        acr_order: vec![],
        timeout_secs: 10,
    })
    .await
    .unwrap();
    let mut op_lat = Vec::new();
    for i in 0..n_op {
        let start = Instant::now();
        op.revoke(&format!("unknown-token-{i}").into(), custodian_oidc::TokenKind::Access).await.unwrap();
        op_lat.push(start.elapsed());
    }
    op_lat.sort();
    println!(
        "revoked → views acked + 2 tokens revoked at the OP, n={n_op:<5} p50 {:>6.2} ms  p99 {:>6.2} ms  (the OP's own RFC 7009 call: p50 {:.2} ms, p99 {:.2} ms)",
        ms(percentile(&done_times, 0.5)),
        ms(percentile(&done_times, 0.99)),
        ms(percentile(&op_lat, 0.5)),
        ms(percentile(&op_lat, 0.99)),
    );

    // (3) Burst: 1,000 people x 10 sessions revoked at once.
    let burst: Vec<String> = (0..1000).map(|i| format!("burst-{i}")).collect();
    bench.seed(&burst, "tp-burst").await;
    let events: Vec<_> = burst.iter().map(|p| bench.revoke_event(p, "tp-burst")).collect();
    let ids: HashSet<String> = events.iter().flat_map(|e| bench.wipe_ids(&e.id)).collect();
    let outgoing: Vec<_> =
        events.iter().map(|e| custodian_bus::Outgoing::event(subjects::CONSENT_REVOKED, e)).collect();
    let start = Instant::now();
    for r in bench.bus.publish_all(&outgoing, 512).await {
        r.unwrap();
    }
    let last = bench.acks.all(&ids, Duration::from_secs(300)).await.expect("burst acked");
    let elapsed = last.saturating_duration_since(start);
    let sessions = burst.len() * VIEWS;
    // Raw: the same number of messages published and consumed once through JetStream.
    let raw_start = Instant::now();
    let raw_out: Vec<_> = (0..sessions)
        .map(|i| custodian_bus::Outgoing {
            subject: "lifecycle.rawburst".into(),
            event_id: format!("raw-burst-{i}"),
            payload: format!("{{\"i\":{i}}}").into(),
            traceparent: None,
        })
        .collect();
    for r in bench.bus.publish_all(&raw_out, 512).await {
        r.unwrap();
    }
    let stream = bench.bus.jetstream().get_stream(subjects::STREAM).await.unwrap();
    let c = stream
        .create_consumer(pull::Config { filter_subject: "lifecycle.rawburst".into(), ..Default::default() })
        .await
        .unwrap();
    let mut msgs = c.messages().await.unwrap();
    for _ in 0..sessions {
        msgs.next().await.unwrap().unwrap().ack().await.ok();
    }
    let raw_rate = sessions as f64 / raw_start.elapsed().as_secs_f64();
    let rate = sessions as f64 / elapsed.as_secs_f64();
    println!(
        "fan-out burst: {} people x {VIEWS} sessions = {sessions} sessions wiped and acked in {:.2} s: {:.0} sessions/s (raw JetStream publish+consume {:.0} msg/s; ratio {:.2})",
        burst.len(),
        elapsed.as_secs_f64(),
        rate,
        raw_rate,
        rate / raw_rate
    );
}

/// `custodian-bench incident`: incident reported → the DPO's e-mail accepted by the SMTP
/// server (p50/p99 over 20 incidents; baseline: the same e-mail sent straight with lettre),
/// and → full containment of 10,000 view sessions (1,000 people x 10 views).
pub async fn run_incident() {
    use lettre::AsyncTransport;
    println!("custodian incident bench: PostgreSQL, {VIEWS} views, aiosmtpd, 2 cores shared\n");
    let mut nats = NatsServer::start();
    let provider = Provider::shared();
    let bench = setup(&mut nats, provider).await;
    let smtp = custodian_testkit::SmtpServer::start();

    // Baseline: one e-mail over SMTP with nothing else.
    let mailer =
        lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous("127.0.0.1").port(smtp.port()).build();
    let mut raw = Vec::new();
    for i in 0..20 {
        let email = lettre::Message::builder()
            .from("bench@localhost".parse().unwrap())
            .to("dpo@localhost".parse().unwrap())
            .subject(format!("raw {i}"))
            .body("x".repeat(2000))
            .unwrap();
        let start = Instant::now();
        mailer.send(email).await.unwrap();
        raw.push(start.elapsed());
    }
    raw.sort();
    let baseline_mails = smtp.messages().len();

    let shutdown = CancellationToken::new();
    let incident_bus = Bus::new(
        nats.connect(&custodian_bus::trust::Identity::Service(custodian_bus::trust::Service::Incident), "bench").await,
        &StreamSettings::default(),
    )
    .await
    .unwrap();
    let deps = custodian_incident::Deps {
        store: bench.store.clone(),
        bus: incident_bus,
        clock: clock::system(),
        keyring: bench.keyring.clone(),
        metrics: Default::default(),
    };
    let config = custodian_incident::IncidentConfig {
        dpo: custodian_incident::DpoConfig {
            to: vec!["dpo@localhost".into()],
            smtp_url: smtp.url(),
            ..Default::default()
        },
        poll_ms: 20,
        ..Default::default()
    };
    tokio::spawn(custodian_incident::run(deps, config, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let report = |platform: &str, summary: &str| {
        let data = IncidentReportedV1 {
            incident_id: format!("inc-{}", uuid::Uuid::new_v4()),
            kind: IncidentKind::DataLeak,
            platform_id: platform.into(),
            subject: None,
            issuer: None,
            summary: summary.into(),
            detected_at: clock::SystemClock.now(),
            reporter: "bench".into(),
        };
        CloudEvent::new("urn:bench", clock::SystemClock.now(), data)
    };
    let mut to_email = Vec::new();
    for i in 0..20 {
        let before = smtp.messages().len();
        let event = report("tp-quiet", &format!("bench {i}"));
        let start = Instant::now();
        bench.bus.publish_event(subjects::INCIDENT_REPORTED, &event).await.unwrap();
        while smtp.messages().len() == before {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        to_email.push(start.elapsed());
        // Let its follow-ups go out before the next one is timed.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    to_email.sort();
    println!(
        "raw SMTP send (lettre → aiosmtpd)                 p50 {:>7.2} ms  p99 {:>7.2} ms",
        ms(percentile(&raw, 0.5)),
        ms(percentile(&raw, 0.99))
    );
    println!(
        "incident reported → DPO e-mail accepted, n=20     p50 {:>7.2} ms  p99 {:>7.2} ms  (target <= 2 s; {:.1}x the raw send's p50)",
        ms(percentile(&to_email, 0.5)),
        ms(percentile(&to_email, 0.99)),
        ms(percentile(&to_email, 0.5)) / ms(percentile(&raw, 0.5)).max(0.001)
    );
    let _ = baseline_mails;

    // Containment of 10,000 sessions.
    let people: Vec<String> = (0..1000).map(|i| format!("inc-{i}")).collect();
    bench.seed(&people, "tp-incident").await;
    let event = report("tp-incident", "bench containment");
    let incident_id = event.data.incident_id.clone();
    let start = Instant::now();
    bench.bus.publish_event(subjects::INCIDENT_REPORTED, &event).await.unwrap();
    loop {
        let query =
            custodian_events::incident::IncidentQuery { incident_id: incident_id.clone(), ..Default::default() };
        if let Ok(custodian_events::incident::IncidentReply::Incident(view)) = custodian_bus::query(
            bench.bus.client(),
            custodian_events::incident::INCIDENTS,
            &query,
            Duration::from_secs(5),
        )
        .await
            && view.steps.iter().any(|s| s.step == "contain" && s.state == "done")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let contained = start.elapsed();
    for view in &bench.views {
        assert_eq!(view.store().counts(), (0, 0), "every view wiped");
    }
    println!(
        "incident reported → containment done: 10,000 sessions of 1,000 people wiped and acked in {:.2} s ({:.0} sessions/s)",
        contained.as_secs_f64(),
        10_000.0 / contained.as_secs_f64()
    );
    shutdown.cancel();
}
