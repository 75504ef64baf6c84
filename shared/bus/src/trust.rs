//! Who may do what on NATS: one table, in code, from which nats-server's `authorization`
//! block is rendered (`custodian nats server-config`) and by which the services connect.
//!
//! Every identity is an nkey user with a private inbox prefix (`_INBOX.<name>`): nobody else
//! may subscribe to its replies. Nobody but the provisioner calls `$JS.API.>` freely; a
//! service may only manage, read and acknowledge its own durables (named in this table, their
//! filter pinned in the create subject where it has one), touch its own KV keys, publish the
//! subjects it produces, and ask or answer the requests it needs. Views are outsiders: a view
//! reads only its own wipe commands and publishes only on subjects that carry its own view
//! id, which nats-server checks against its identity.
//!
//! JetStream facts this rests on (nats-server's documentation): subscribe permissions do not
//! restrict JetStream reads (messages go to the puller's inbox), consumer creation does;
//! acks are publishes on `$JS.ACK.<stream>.<consumer>.…` (with a domain and account hash in
//! front in the newer format), so acking is bound to a consumer name.

use std::fmt;

use custodian_events::{audit, incident, queries, replay, subjects, vault};

/// How many durables an exclusive consumer cycles through, one per leadership term
/// (`<base>-t<term mod TERM_SLOTS>`): a bounded set, so the table can name each one. A slot
/// comes back only `TERM_SLOTS` terms later, and every take-over deletes the slots before it.
pub const TERM_SLOTS: u64 = 16;

/// Services of Custodian (one identity each, whatever the number of replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Consent,
    Gateway,
    Sweeper,
    Vault,
    Audit,
    Incident,
}

impl Service {
    pub const ALL: [Service; 6] =
        [Service::Consent, Service::Gateway, Service::Sweeper, Service::Vault, Service::Audit, Service::Incident];

    pub fn name(self) -> &'static str {
        match self {
            Service::Consent => "consent",
            Service::Gateway => "gateway",
            Service::Sweeper => "sweeper",
            Service::Vault => "vault",
            Service::Audit => "audit",
            Service::Incident => "incident",
        }
    }
}

/// People's roles at the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    /// Runs the stack: status, sweeps, consents, incidents, rotations, events publish.
    Ops,
    /// Reads the privacy log and incident reports.
    Dpo,
}

/// One NATS identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// Creates the stream and the KV buckets (`custodian migrate`, `custodian nats provision`).
    Provisioner,
    Service(Service),
    Operator(Operator),
    /// A view, by its view id (a subject token).
    View(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "unknown NATS identity {0:?} (provisioner, consent, gateway, sweeper, vault, audit, incident, ops, dpo or view-<id>)"
    )]
    Unknown(String),
    #[error("view id {0:?} must be letters, digits, '-' or '_' (it is a subject token)")]
    BadViewId(String),
}

impl Identity {
    pub fn view(view_id: &str) -> Result<Self, IdentityError> {
        if subjects::is_valid_token(view_id) {
            Ok(Identity::View(view_id.to_owned()))
        } else {
            Err(IdentityError::BadViewId(view_id.to_owned()))
        }
    }

    /// The name of its credential file (`<name>.nk`) and inbox prefix.
    pub fn name(&self) -> String {
        match self {
            Identity::Provisioner => "provisioner".to_owned(),
            Identity::Service(s) => s.name().to_owned(),
            Identity::Operator(Operator::Ops) => "ops".to_owned(),
            Identity::Operator(Operator::Dpo) => "dpo".to_owned(),
            Identity::View(id) => format!("view-{id}"),
        }
    }

    pub fn parse(name: &str) -> Result<Self, IdentityError> {
        if let Some(id) = name.strip_prefix("view-") {
            return Self::view(id);
        }
        match name {
            "provisioner" => Ok(Identity::Provisioner),
            "ops" => Ok(Identity::Operator(Operator::Ops)),
            "dpo" => Ok(Identity::Operator(Operator::Dpo)),
            other => Service::ALL
                .into_iter()
                .find(|s| s.name() == other)
                .map(Identity::Service)
                .ok_or_else(|| IdentityError::Unknown(other.to_owned())),
        }
    }

    /// Replies to this identity's requests arrive under this prefix, and only it may
    /// subscribe there.
    pub fn inbox_prefix(&self) -> String {
        format!("_INBOX.{}", self.name())
    }

    /// The identities a deployment runs besides its views.
    pub fn fixed() -> Vec<Identity> {
        let mut all = vec![Identity::Provisioner];
        all.extend(Service::ALL.into_iter().map(Identity::Service));
        all.extend([Identity::Operator(Operator::Ops), Identity::Operator(Operator::Dpo)]);
        all
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// What nats-server lets one identity do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish on (wildcards as nats-server reads them).
    pub publish: Vec<String>,
    /// Subjects it may subscribe to, `"<subject> <queue>"` to bind a queue group.
    pub subscribe: Vec<String>,
    /// May answer requests it received (publish once to their reply subject).
    pub allow_responses: bool,
}

/// The bus's durable consumers, by service: `(durable, filter subjects)`. The services build
/// their `ConsumerSpec`s from these names.
pub mod durables {
    pub const CONSENT_LEDGER: &str = "consent-ledger";
    pub const CONSENT_RETENTION: &str = "consent-retention";
    pub const SWEEPER_REQUESTS: &str = "sweeper-requests";
    pub const VAULT_LIFECYCLE: &str = "vault-lifecycle";
    pub const AUDIT_CHAIN: &str = "audit-chain";
    pub const INCIDENT_REPORTS: &str = "incident-reports";
    pub const GATEWAY_SSF_TRANSMIT: &str = "gateway-ssf-transmit";
    /// The operator's read of the whole stream (`custodian audit verify --stream`).
    pub const STREAM_CHECK: &str = "ops-stream-check";

    /// A view's wipe consumer: `view-<id>-wipes`.
    pub fn view_wipes(view_id: &str) -> String {
        format!("view-{view_id}-wipes")
    }
}

/// KV buckets and who owns which keys.
pub mod buckets {
    pub use crate::lease::LEADERSHIP_BUCKET as LEADERSHIP;
    pub const SWEEPER_LEASES: &str = "custodian_sweeper_leases";
    pub const GATEWAY_SEEN_JTI: &str = "custodian_gateway_seen_jti";
}

/// The subjects the vault's lifecycle consumer reads.
pub const VAULT_LIFECYCLE_SUBJECTS: &[&str] = &[
    subjects::CONSENT_ENDED,
    subjects::SESSION_OPENED,
    subjects::SESSION_CLOSED,
    subjects::SESSION_WIPED,
    subjects::SESSION_OPENED_BY_VIEW,
    subjects::SESSION_CLOSED_BY_VIEW,
    subjects::SESSION_WIPED_BY_VIEW,
    subjects::INCIDENT_CONTAIN,
    subjects::CREDENTIAL_ROTATED,
    subjects::SESSION_REVOKE,
];

/// The subjects the consent ledger reads.
pub const CONSENT_LEDGER_SUBJECTS: &[&str] =
    &[subjects::CONSENT_GRANTED, subjects::CONSENT_REVOKED, subjects::ACTIVITY_SEEN, subjects::CONSENT_EXPIRE];

/// The consumers that replay their dead letters on an operator's request ([`crate::replay`]):
/// `(service, durable, filter subjects)`. Not the audit chain, whose order is its meaning.
pub const REPLAYING: &[(Service, &str, &[&str])] = &[
    (Service::Consent, durables::CONSENT_LEDGER, CONSENT_LEDGER_SUBJECTS),
    (Service::Consent, durables::CONSENT_RETENTION, &[subjects::RETENTION_PURGE]),
    (Service::Sweeper, durables::SWEEPER_REQUESTS, &[subjects::SWEEP_REQUESTED]),
    (Service::Vault, durables::VAULT_LIFECYCLE, VAULT_LIFECYCLE_SUBJECTS),
    (Service::Incident, durables::INCIDENT_REPORTS, &[subjects::INCIDENT_REPORTED]),
];

/// The durable of `service` that refused a message on `original_subject` and replays it.
pub fn replaying_durable(service: &str, original_subject: &str) -> Option<&'static str> {
    REPLAYING.iter().find_map(|(s, durable, filters)| {
        (s.name() == service && filters.iter().any(|f| subjects::matches_filter(f, original_subject)))
            .then_some(*durable)
    })
}

/// What platforms say (through the gateway, or an operator's `custodian events publish`).
pub const PLATFORM_FACTS: &[&str] =
    &[subjects::CONSENT_GRANTED, subjects::CONSENT_REVOKED, subjects::ACTIVITY_SEEN, subjects::TOKEN_HOK_USED];

/// Builds one identity's permissions.
#[derive(Debug, Default)]
struct Grant(Permissions);

impl Grant {
    fn new(identity: &Identity) -> Self {
        let mut g = Grant::default();
        g.0.subscribe.push(format!("{}.>", identity.inbox_prefix()));
        g
    }

    /// Publishes `subjects`, and the nudges of those nudged ([`crate::nudge`]): who may say
    /// a thing may say it both ways.
    fn publish(mut self, subjects: &[&str]) -> Self {
        self.0.publish.extend(subjects.iter().map(|s| (*s).to_owned()));
        self.0
            .publish
            .extend(subjects.iter().filter(|s| crate::nudge::is_nudged_filter(s)).map(|s| crate::nudge::subject(s)));
        self
    }

    /// Takes the nudges of the nudged ones of its durable's `filters`, in the queue group its
    /// replicas share: it may read them as nudges since it reads them from the stream.
    fn nudges(mut self, durable: &str, filters: &[&str]) -> Self {
        let queue = crate::nudge::queue(durable);
        self.0.subscribe.extend(
            filters
                .iter()
                .filter(|f| crate::nudge::is_nudged_filter(f))
                .map(|f| format!("{} {queue}", crate::nudge::subject(f))),
        );
        self
    }

    fn request(self, subjects: &[&str]) -> Self {
        self.publish(subjects)
    }

    /// Answers `subjects` in the queue group `queue` (replicas share them).
    fn respond(mut self, queue: &str, subjects: &[&str]) -> Self {
        self.0.subscribe.extend(subjects.iter().map(|s| format!("{s} {queue}")));
        self.0.allow_responses = true;
        self
    }

    /// Reads the stream's configuration and state (`Bus::new`).
    fn stream_info(self) -> Self {
        let subject = format!("$JS.API.STREAM.INFO.{}", subjects::STREAM);
        self.publish(&[&subject])
    }

    /// Opens, pulls from, acknowledges and (re)creates its own durable `name`. With a single
    /// filter the create subject carries it, so the durable cannot be made to read more.
    fn consumer(mut self, stream: &str, name: &str, filters: &[&str]) -> Self {
        let api = "$JS.API.CONSUMER";
        self.0.publish.extend([
            format!("{api}.INFO.{stream}.{name}"),
            format!("{api}.MSG.NEXT.{stream}.{name}"),
            format!("{api}.DELETE.{stream}.{name}"),
            format!("$JS.ACK.{stream}.{name}.>"),
            format!("$JS.ACK.*.*.{stream}.{name}.>"),
        ]);
        match filters {
            [one] => self.0.publish.push(format!("{api}.CREATE.{stream}.{name}.{one}")),
            _ => self.0.publish.push(format!("{api}.CREATE.{stream}.{name}")),
        }
        self
    }

    /// An exclusive consumer: its durable from before leases and one per term slot.
    fn exclusive_consumer(mut self, base: &str, filters: &[&str]) -> Self {
        self = self.consumer(subjects::STREAM, base, filters);
        for slot in 0..TERM_SLOTS {
            self = self.consumer(subjects::STREAM, &format!("{base}-t{slot}"), filters);
        }
        let names = format!("$JS.API.CONSUMER.NAMES.{}", subjects::STREAM);
        self.publish(&[&names])
    }

    /// Reads and writes `keys` (`>`: all) of a KV bucket.
    fn kv(mut self, bucket: &str, keys: &[&str]) -> Self {
        self.0
            .publish
            .extend([format!("$JS.API.STREAM.INFO.KV_{bucket}"), format!("$JS.API.STREAM.MSG.GET.KV_{bucket}")]);
        for key in keys {
            self.0.publish.push(format!("$KV.{bucket}.{key}"));
            self.0.publish.push(format!("$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{key}"));
        }
        self
    }

    fn deadletters(self, service: &str) -> Self {
        let subject = format!("{}.{service}", subjects::DEADLETTER_PREFIX);
        self.publish(&[&subject])
    }

    /// Replays its dead letters on an operator's request ([`crate::replay`]): answers them for
    /// each of its durables in [`REPLAYING`], reads its own dead letters from the audit
    /// chain, and records each replay.
    fn replays(mut self, service: Service) -> Self {
        for (_, durable, _) in REPLAYING.iter().filter(|(s, _, _)| *s == service) {
            self = self.respond(durable, &[&format!("{}.{durable}", replay::REPLAY)]);
        }
        let lookup = format!("{}.{}", replay::DEAD_LETTER, service.name());
        let record = format!("{}.{}", subjects::REPLAYED_PREFIX, service.name());
        self.request(&[&lookup]).publish(&[&record])
    }

    fn done(self) -> Permissions {
        self.0
    }
}

/// The permissions of `identity`: the one table.
pub fn permissions(identity: &Identity) -> Permissions {
    let g = Grant::new(identity);
    let stream = subjects::STREAM;
    match identity {
        Identity::Provisioner => g.publish(&["$JS.API.>"]).done(),
        Identity::Service(Service::Consent) => g
            .stream_info()
            .deadletters("consent")
            .publish(&[subjects::CONSENT_ENDED])
            .exclusive_consumer(durables::CONSENT_LEDGER, CONSENT_LEDGER_SUBJECTS)
            .nudges(durables::CONSENT_LEDGER, CONSENT_LEDGER_SUBJECTS)
            .consumer(stream, durables::CONSENT_RETENTION, &[subjects::RETENTION_PURGE])
            .kv(buckets::LEADERSHIP, &[durables::CONSENT_LEDGER])
            .respond("consent", &[queries::CONSENTS, queries::IDLE_CONSENTS, queries::PLATFORMS])
            .replays(Service::Consent)
            .done(),
        Identity::Service(Service::Sweeper) => g
            .stream_info()
            .deadletters("sweeper")
            .publish(&[subjects::CONSENT_EXPIRE, subjects::SWEEP_FINISHED, subjects::RETENTION_PURGE])
            .consumer(stream, durables::SWEEPER_REQUESTS, &[subjects::SWEEP_REQUESTED])
            .kv(buckets::SWEEPER_LEASES, &[">"])
            .respond("sweeper", &[queries::SWEEPS])
            .request(&[queries::IDLE_CONSENTS, queries::PLATFORMS])
            .replays(Service::Sweeper)
            .done(),
        Identity::Service(Service::Vault) => g
            .stream_info()
            .deadletters("vault")
            .publish(&[
                &format!("{}.*", subjects::SESSION_WIPE_PREFIX),
                subjects::TOKEN_REVOKED,
                subjects::CONSENT_GRANTED,
                subjects::ACTIVITY_SEEN,
                subjects::TOKEN_HOK_USED,
            ])
            .consumer(stream, durables::VAULT_LIFECYCLE, VAULT_LIFECYCLE_SUBJECTS)
            .nudges(durables::VAULT_LIFECYCLE, VAULT_LIFECYCLE_SUBJECTS)
            .respond(
                "vault",
                &[
                    vault::LOGIN_START,
                    vault::LOGIN_FINISH,
                    vault::WHOAMI,
                    &format!("{}.*", vault::WHOAMI),
                    vault::LOGOUT,
                    &format!("{}.*", vault::TOKEN),
                    &format!("{}.*", vault::HOK),
                    vault::REVOCATIONS,
                    incident::CONTAINMENT,
                    incident::EXPOSURE,
                ],
            )
            .request(&[incident::CREDENTIAL])
            .replays(Service::Vault)
            .done(),
        Identity::Service(Service::Audit) => g
            .stream_info()
            .deadletters("audit")
            .exclusive_consumer(durables::AUDIT_CHAIN, &[subjects::ALL])
            .kv(buckets::LEADERSHIP, &[durables::AUDIT_CHAIN])
            // The deployment's gauges: the consumers' state and who leads each (reading the
            // leases, never writing one), no message of the stream.
            .publish(&[&format!("$JS.API.CONSUMER.LIST.{stream}")])
            .publish(&[&format!("$JS.API.DIRECT.GET.KV_{0}.$KV.{0}.>", buckets::LEADERSHIP)])
            .respond(
                "audit",
                &[
                    &format!("{}.*", audit::PRIVACY_LOG),
                    &format!("{}.*", audit::PRIVACY_LOG_READS),
                    queries::HEALTH,
                    &format!("{}.*", replay::DEAD_LETTER),
                ],
            )
            .done(),
        Identity::Service(Service::Incident) => g
            .stream_info()
            .deadletters("incident")
            .publish(&[subjects::INCIDENT_CONTAIN, subjects::CREDENTIAL_ROTATED, subjects::DPO_NOTIFIED])
            .consumer(stream, durables::INCIDENT_REPORTS, &[subjects::INCIDENT_REPORTED])
            .respond("incident", &[incident::INCIDENTS, incident::CREDENTIAL, incident::ROTATE])
            .request(&[incident::CONTAINMENT, incident::EXPOSURE, queries::CONSENTS])
            .replays(Service::Incident)
            .done(),
        Identity::Service(Service::Gateway) => g
            .stream_info()
            .deadletters("gateway")
            .publish(PLATFORM_FACTS)
            .publish(&[subjects::SWEEP_REQUESTED, subjects::INCIDENT_REPORTED, subjects::SESSION_REVOKE])
            .consumer(stream, durables::GATEWAY_SSF_TRANSMIT, &[subjects::CONSENT_ENDED, subjects::SESSION_REVOKE])
            .kv(buckets::GATEWAY_SEEN_JTI, &[">"])
            .request(&[
                queries::CONSENTS,
                queries::PLATFORMS,
                queries::SWEEPS,
                queries::HEALTH,
                vault::LOGIN_START,
                vault::LOGIN_FINISH,
                vault::WHOAMI,
                vault::LOGOUT,
                vault::REVOCATIONS,
                incident::INCIDENTS,
                &format!("{}.gateway", audit::PRIVACY_LOG),
                &format!("{}.gateway", audit::PRIVACY_LOG_READS),
                // The console's replays of dead letters, for the operator signed in there.
                &format!("{}.*", replay::REPLAY),
            ])
            .done(),
        Identity::Operator(Operator::Ops) => g
            // Monitoring (`custodian status`): read-only JetStream calls, the leases.
            .publish(&[
                "$JS.API.INFO",
                "$JS.API.STREAM.INFO.*",
                "$JS.API.STREAM.NAMES",
                "$JS.API.CONSUMER.INFO.*.*",
                "$JS.API.CONSUMER.NAMES.*",
                "$JS.API.CONSUMER.LIST.*",
                // The newest dead letter per subject (`status --check`'s news since the last
                // check); ops reads the whole stream for `audit verify --stream` anyway.
                &format!("$JS.API.STREAM.MSG.GET.{stream}"),
            ])
            .kv(buckets::LEADERSHIP, &[">"])
            // `audit verify --stream` reads the whole stream with a consumer of its own: an
            // operator's check of what was acknowledged.
            .consumer(stream, durables::STREAM_CHECK, &[subjects::ALL])
            .publish(PLATFORM_FACTS)
            .publish(&[subjects::SWEEP_REQUESTED, subjects::INCIDENT_REPORTED])
            .request(&[
                queries::CONSENTS,
                queries::PLATFORMS,
                queries::SWEEPS,
                vault::REVOCATIONS,
                incident::INCIDENTS,
                incident::ROTATE,
                incident::EXPOSURE,
            ])
            .done(),
        Identity::Operator(Operator::Dpo) => g
            .stream_info()
            .request(&[
                &format!("{}.dpo", audit::PRIVACY_LOG),
                &format!("{}.dpo", audit::PRIVACY_LOG_READS),
                incident::INCIDENTS,
            ])
            .done(),
        Identity::View(id) => {
            let wipes = format!("{}.{id}", subjects::SESSION_WIPE_PREFIX);
            g.consumer(stream, &durables::view_wipes(id), &[&wipes])
                .nudges(&durables::view_wipes(id), &[&wipes])
                .deadletters(&identity.name())
                .publish(&[
                    &format!("{}.{id}", subjects::SESSION_OPENED),
                    &format!("{}.{id}", subjects::SESSION_CLOSED),
                    &format!("{}.{id}", subjects::SESSION_WIPED),
                    &format!("{}.{id}", vault::TOKEN),
                    &format!("{}.{id}", vault::HOK),
                    // Who a person signed in at the platform is (their session cookie's digest).
                    &format!("{}.{id}", vault::WHOAMI),
                ])
                .done()
        }
    }
}

/// An nkey user of the rendered configuration.
#[derive(Debug, Clone)]
pub struct User {
    pub identity: Identity,
    /// Its public nkey (`U…`), or a nats-server variable (`$NKEY_VAULT`) to be filled in from
    /// the server's environment.
    pub nkey: String,
}

/// nats-server's TLS block.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_file: String,
    pub key_file: String,
    pub ca_file: String,
    /// Require a client certificate signed by `ca_file` (mTLS).
    pub verify: bool,
}

/// Renders the `tls` and `authorization` blocks of nats-server's configuration for `users`.
/// No user means no anonymous access: a client without one of these keys is refused.
pub fn render_server_config(users: &[User], tls: Option<&ServerTls>) -> String {
    let mut out = String::from("# Rendered by `custodian nats server-config` from the permission table in code.\n");
    if let Some(tls) = tls {
        out.push_str(&format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: {}\n  timeout: 5\n}}\n",
            quote(&tls.cert_file),
            quote(&tls.key_file),
            quote(&tls.ca_file),
            tls.verify
        ));
    }
    out.push_str("authorization {\n  users: [\n");
    for user in users {
        let p = permissions(&user.identity);
        let nkey = if user.nkey.starts_with('$') { user.nkey.clone() } else { quote(&user.nkey) };
        out.push_str(&format!("    # {}\n    {{\n      nkey: {nkey}\n      permissions: {{\n", user.identity));
        out.push_str(&format!("        publish: {{ allow: {} }}\n", list(&p.publish, 10)));
        out.push_str(&format!("        subscribe: {{ allow: {} }}\n", list(&p.subscribe, 10)));
        if p.allow_responses {
            out.push_str("        allow_responses: true\n");
        }
        out.push_str("      }\n    }\n");
    }
    out.push_str("  ]\n}\n");
    out
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// One subject a line: the rendered file is read by people reviewing a deployment.
fn list(items: &[String], indent: usize) -> String {
    let pad = " ".repeat(indent);
    let quoted: Vec<String> = items.iter().map(|s| format!("{pad}  {}", quote(s))).collect();
    format!("[\n{}\n{pad}]", quoted.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_refuse_what_is_not_an_identity() {
        for identity in Identity::fixed().into_iter().chain([Identity::view("demo").unwrap()]) {
            assert_eq!(Identity::parse(&identity.name()).unwrap(), identity);
        }
        assert!(Identity::parse("root").is_err());
        assert!(Identity::view("a.b").is_err());
        assert!(Identity::view(">").is_err());
    }

    #[test]
    fn only_the_provisioner_calls_the_jetstream_api_freely() {
        for identity in Identity::fixed().into_iter().chain([Identity::view("v1").unwrap()]) {
            let p = permissions(&identity);
            let free = p.publish.iter().any(|s| s == "$JS.API.>" || s == ">" || s == "$JS.>");
            assert_eq!(free, identity == Identity::Provisioner, "{identity}: {:?}", p.publish);
            assert!(
                !p.subscribe.iter().any(|s| s == ">" || s.starts_with("lifecycle")),
                "{identity} subscribes to the stream's subjects"
            );
            assert!(!p.subscribe.iter().any(|s| s == "_INBOX.>"), "{identity} reads every inbox");
        }
    }

    #[test]
    fn only_the_gateway_asks_for_replays_and_each_service_replays_and_reads_only_its_own_dead_letters() {
        let mut identities = Identity::fixed();
        identities.push(Identity::view("v1").unwrap());
        for identity in &identities {
            let p = permissions(identity);
            let asks = p.publish.iter().any(|s| s.starts_with(replay::REPLAY) || s == "$JS.API.>");
            assert_eq!(
                asks,
                matches!(identity, Identity::Service(Service::Gateway) | Identity::Provisioner),
                "{identity} may ask for a replay"
            );
            for subject in p.publish.iter().filter(|s| s.starts_with(replay::DEAD_LETTER)) {
                let Identity::Service(service) = identity else { panic!("{identity} reads dead letters") };
                assert_eq!(*subject, format!("{}.{}", replay::DEAD_LETTER, service.name()));
            }
        }
        for (service, durable, filters) in REPLAYING {
            let p = permissions(&Identity::Service(*service));
            assert!(durable.starts_with(service.name()), "{durable} is {}'s", service.name());
            assert!(p.subscribe.contains(&format!("{}.{durable} {durable}", replay::REPLAY)), "{durable} answers");
            assert!(p.publish.contains(&format!("{}.{}", subjects::REPLAYED_PREFIX, service.name())));
            for filter in *filters {
                let example = filter.replace('*', "v1");
                assert_eq!(replaying_durable(service.name(), &example), Some(*durable), "{example}");
            }
        }
        let audit = permissions(&Identity::Service(Service::Audit));
        assert!(audit.subscribe.contains(&format!("{}.* audit", replay::DEAD_LETTER)));
        assert_eq!(replaying_durable("audit", subjects::CONSENT_GRANTED), None, "the chain does not replay");
        assert_eq!(replaying_durable("vault", subjects::CONSENT_GRANTED), None, "not a subject the vault reads");
    }

    #[test]
    fn a_view_reads_only_its_own_wipes_and_publishes_only_under_its_own_id() {
        let p = permissions(&Identity::view("v1").unwrap());
        for subject in &p.publish {
            let own = subject.ends_with(".v1")
                || subject.ends_with(".view-v1")
                || subject.contains(".view-v1-wipes")
                || subject.ends_with(".view-v1-wipes.lifecycle.session.wipe.v1");
            assert!(own, "a view may publish {subject}");
        }
        assert!(
            p.publish.contains(&"$JS.API.CONSUMER.CREATE.LIFECYCLE.view-v1-wipes.lifecycle.session.wipe.v1".to_owned())
        );
        assert!(!p.allow_responses, "a view answers nothing");
        assert_eq!(
            p.subscribe,
            vec![
                "_INBOX.view-v1.>".to_owned(),
                "custodian.nudge.lifecycle.session.wipe.v1 view-v1-wipes-nudges".to_owned(),
            ],
            "its own inbox, and the nudges of its own wipes"
        );
        assert!(p.publish.contains(&"custodian.nudge.lifecycle.session.wiped.v1".to_owned()), "{:?}", p.publish);
    }

    #[test]
    fn the_rendered_configuration_names_every_user_with_its_permissions_and_no_anonymous_one() {
        let users = vec![
            User { identity: Identity::Service(Service::Vault), nkey: "UVAULT".into() },
            User { identity: Identity::view("v1").unwrap(), nkey: "$NKEY_VIEW_V1".into() },
        ];
        let tls =
            ServerTls { cert_file: "s.pem".into(), key_file: "s.key".into(), ca_file: "ca.pem".into(), verify: true };
        let rendered = render_server_config(&users, Some(&tls));
        assert!(rendered.contains("nkey: \"UVAULT\""), "{rendered}");
        assert!(rendered.contains("nkey: $NKEY_VIEW_V1"), "{rendered}");
        assert!(rendered.contains("\"custodian.vault.token.* vault\""), "{rendered}");
        assert!(rendered.contains("verify: true"));
        assert!(!rendered.contains("no_auth_user"));
    }
}
