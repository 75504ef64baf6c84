//! The consent state machine, pure and order-independent.
//!
//! A consent keeps the latest grant, the latest revocation, the most lenient expiry and the
//! latest sign of life; its status is a function of those. Each `apply` is a join (max by
//! time, ties broken by event id), so applying any multiset of facts in any order, any
//! number of times, gives the same state (contract: time decides, not arrival).
//!
//! Rules (contract.md): a revoke wins over a grant with an earlier or equal time; a grant
//! with a later time re-grants; an expiry counts only while no activity (or grant) is known
//! after its `idle_since` — an activity arriving late, in any order, cancels it.

use chrono::{DateTime, Utc};
use custodian_events::{ConsentKey, EndReason, RevokeReason};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub at: DateTime<Utc>,
    pub event_id: String,
    pub scopes: Vec<String>,
    pub acr: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoke {
    pub at: DateTime<Utc>,
    pub event_id: String,
    pub reason: RevokeReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expire {
    pub at: DateTime<Utc>,
    pub event_id: String,
    pub idle_since: DateTime<Utc>,
    pub sweep_id: String,
}

/// One fact about a consent, with the time it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    Granted(Grant),
    Revoked(Revoke),
    Expired(Expire),
    Seen { at: DateTime<Utc> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Facts known, but no grant yet (e.g. activity arrived before the grant).
    Unknown,
    Granted,
    Revoked,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Granted => "granted",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }
}

/// Why and when a consent stopped being honoured, and which fact did it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub at: DateTime<Utc>,
    pub reason: EndReason,
    pub event_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    pub key: ConsentKey,
    pub grant: Option<Grant>,
    pub revoke: Option<Revoke>,
    pub expire: Option<Expire>,
    pub last_seen_at: Option<DateTime<Utc>>,
}

impl Consent {
    pub fn new(key: ConsentKey) -> Self {
        Self { key, grant: None, revoke: None, expire: None, last_seen_at: None }
    }

    /// Joins `fact` into the state. Returns whether anything changed: each part is replaced
    /// only by a strictly later one, so "replaced" is "changed" (no copy to compare with:
    /// this runs for every event the ledger receives).
    pub fn apply(&mut self, fact: &Fact) -> bool {
        match fact {
            Fact::Granted(g) => {
                let newer = self.grant.as_ref().is_none_or(|cur| (g.at, &g.event_id) > (cur.at, &cur.event_id));
                if newer {
                    self.grant = Some(g.clone());
                }
                let seen = self.see(g.at);
                newer || seen
            }
            Fact::Revoked(r) => {
                let newer = self.revoke.as_ref().is_none_or(|cur| (r.at, &r.event_id) > (cur.at, &cur.event_id));
                if newer {
                    self.revoke = Some(r.clone());
                }
                newer
            }
            Fact::Expired(e) => {
                let newer = |cur: &Expire| (e.idle_since, e.at, &e.event_id) > (cur.idle_since, cur.at, &cur.event_id);
                let newer = self.expire.as_ref().is_none_or(newer);
                if newer {
                    self.expire = Some(e.clone());
                }
                newer
            }
            Fact::Seen { at } => self.see(*at),
        }
    }

    fn see(&mut self, at: DateTime<Utc>) -> bool {
        let later = self.last_seen_at.is_none_or(|cur| at > cur);
        if later {
            self.last_seen_at = Some(at);
        }
        later
    }

    /// The expiry, if it still counts (nobody was seen after its `idle_since`).
    fn effective_expire(&self) -> Option<&Expire> {
        self.expire.as_ref().filter(|e| self.last_seen_at.is_none_or(|seen| seen <= e.idle_since))
    }

    /// The latest fact that ends the consent; a revocation wins a tie with an expiry.
    pub fn ending(&self) -> Option<Ending> {
        let revoke = self.revoke.as_ref().map(|r| Ending {
            at: r.at,
            reason: if r.reason == RevokeReason::Incident { EndReason::Incident } else { EndReason::Revoked },
            event_id: r.event_id.clone(),
        });
        let expire = self.effective_expire().map(|e| Ending {
            at: e.at,
            reason: EndReason::Expired,
            event_id: e.event_id.clone(),
        });
        match (revoke, expire) {
            (Some(r), Some(e)) => Some(if e.at > r.at { e } else { r }),
            (r, e) => r.or(e),
        }
    }

    pub fn status(&self) -> Status {
        let Some(grant) = &self.grant else {
            return Status::Unknown;
        };
        match self.ending() {
            // A revoke wins over a grant with an earlier or equal time.
            Some(end) if end.at >= grant.at => match end.reason {
                EndReason::Expired => Status::Expired,
                EndReason::Revoked | EndReason::Incident => Status::Revoked,
            },
            _ => Status::Granted,
        }
    }

    /// When it ended, if it is ended.
    pub fn ended_at(&self) -> Option<DateTime<Utc>> {
        matches!(self.status(), Status::Revoked | Status::Expired).then(|| self.ending().map(|e| e.at)).flatten()
    }
}

/// What applying a fact means for the rest of the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    None,
    /// A grant that was (or, seen in time order, had been) honoured has ended: publish
    /// `consent.ended` for it.
    Ended {
        grant_event_id: String,
        ending: Ending,
    },
}

impl Consent {
    /// The grant whose honouring has ended, if the consent is ended.
    fn ended_grant(&self) -> Option<&str> {
        match self.status() {
            Status::Revoked | Status::Expired => self.grant.as_ref().map(|g| g.event_id.as_str()),
            Status::Unknown | Status::Granted => None,
        }
    }
}

/// Applies `fact` and says whether a grant just ended. Keyed on the grant, not on the
/// arrival order: a revocation applied before the (earlier) grant it ends still ends it
/// once the grant arrives, and a further revocation of an ended grant ends nothing new.
pub fn apply(consent: &mut Consent, fact: &Fact) -> Transition {
    apply_fact(consent, fact).transition
}

/// What one fact did to a consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// False for a fact already joined (a redelivery) or superseded by a later one: such a
    /// fact leaves no trace, which is what makes redelivery harmless without an inbox.
    pub changed: bool,
    pub transition: Transition,
}

/// [`apply`], also saying whether the fact changed the consent at all.
pub fn apply_fact(consent: &mut Consent, fact: &Fact) -> Applied {
    let before = consent.ended_grant().map(str::to_owned);
    let changed = consent.apply(fact);
    let transition = match (consent.ended_grant(), consent.ending()) {
        (Some(grant), Some(ending)) if before.as_deref() != Some(grant) => {
            Transition::Ended { grant_event_id: grant.to_owned(), ending }
        }
        _ => Transition::None,
    };
    Applied { changed, transition }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).single().unwrap()
    }

    fn key() -> ConsentKey {
        ConsentKey::new("https://op", "alice", "tp")
    }

    fn grant(s: i64, id: &str) -> Fact {
        Fact::Granted(Grant { at: t(s), event_id: id.into(), scopes: vec!["openid".into()], acr: None })
    }

    fn revoke(s: i64, id: &str) -> Fact {
        Fact::Revoked(Revoke { at: t(s), event_id: id.into(), reason: RevokeReason::User })
    }

    fn expire(s: i64, idle: i64, id: &str) -> Fact {
        Fact::Expired(Expire { at: t(s), event_id: id.into(), idle_since: t(idle), sweep_id: "sw".into() })
    }

    #[test]
    fn activity_older_than_the_last_sign_of_life_changes_nothing() {
        let mut c = Consent::new(key());
        assert!(apply_fact(&mut c, &grant(12, "g")).changed);
        assert!(!apply_fact(&mut c, &Fact::Seen { at: t(0) }).changed, "the grant was a later sign of life");
        assert!(apply_fact(&mut c, &Fact::Seen { at: t(20) }).changed);
        assert_eq!(c.last_seen_at, Some(t(20)));
    }

    #[test]
    fn revoke_after_grant_ends_the_consent_once() {
        let mut c = Consent::new(key());
        assert_eq!(apply(&mut c, &grant(0, "g")), Transition::None);
        assert!(
            matches!(apply(&mut c, &revoke(10, "r")), Transition::Ended { ref ending, .. } if ending.reason == EndReason::Revoked && ending.event_id == "r")
        );
        assert_eq!(apply(&mut c, &revoke(10, "r")), Transition::None, "a duplicate ends nothing twice");
        assert_eq!(c.status(), Status::Revoked);
    }

    #[test]
    fn a_revocation_that_arrives_before_its_grant_still_ends_it_once() {
        let mut c = Consent::new(key());
        assert_eq!(apply(&mut c, &revoke(20, "r")), Transition::None);
        assert!(
            matches!(apply(&mut c, &grant(0, "g")), Transition::Ended { ref grant_event_id, .. } if grant_event_id == "g")
        );
        assert_eq!(apply(&mut c, &revoke(30, "r2")), Transition::None, "an ended grant ends once");
    }

    #[test]
    fn a_revoke_wins_a_tie_and_a_later_grant_re_grants() {
        let mut c = Consent::new(key());
        apply(&mut c, &grant(5, "g1"));
        apply(&mut c, &revoke(5, "r"));
        assert_eq!(c.status(), Status::Revoked);
        apply(&mut c, &grant(6, "g2"));
        assert_eq!(c.status(), Status::Granted);
        assert_eq!(c.grant.as_ref().unwrap().event_id, "g2");
    }

    #[test]
    fn an_older_revoke_arriving_late_does_not_end_a_newer_grant() {
        let mut c = Consent::new(key());
        apply(&mut c, &grant(10, "g"));
        assert_eq!(apply(&mut c, &revoke(5, "r")), Transition::None);
        assert_eq!(c.status(), Status::Granted);
    }

    #[test]
    fn expiry_ends_an_idle_consent_and_activity_cancels_it_in_any_order() {
        let mut c = Consent::new(key());
        apply(&mut c, &grant(0, "g"));
        apply(&mut c, &Fact::Seen { at: t(10) });
        assert!(
            matches!(apply(&mut c, &expire(100, 50, "e")), Transition::Ended { ref ending, .. } if ending.reason == EndReason::Expired)
        );
        assert_eq!(c.status(), Status::Expired);
        // Activity after idle_since, even if it arrives after the expiry, cancels it.
        apply(&mut c, &Fact::Seen { at: t(60) });
        assert_eq!(c.status(), Status::Granted);

        let mut c = Consent::new(key());
        apply(&mut c, &grant(0, "g"));
        apply(&mut c, &Fact::Seen { at: t(60) });
        assert_eq!(apply(&mut c, &expire(100, 50, "e")), Transition::None);
        assert_eq!(c.status(), Status::Granted);
    }

    #[test]
    fn incident_revocations_end_with_reason_incident() {
        let mut c = Consent::new(key());
        apply(&mut c, &grant(0, "g"));
        let fact = Fact::Revoked(Revoke { at: t(1), event_id: "r".into(), reason: RevokeReason::Incident });
        assert!(
            matches!(apply(&mut c, &fact), Transition::Ended { ref ending, .. } if ending.reason == EndReason::Incident)
        );
    }

    #[test]
    fn activity_before_any_grant_is_kept_but_lists_nothing() {
        let mut c = Consent::new(key());
        apply(&mut c, &Fact::Seen { at: t(3) });
        assert_eq!(c.status(), Status::Unknown);
        apply(&mut c, &grant(1, "g"));
        assert_eq!(c.status(), Status::Granted);
        assert_eq!(c.last_seen_at, Some(t(3)));
    }

    fn arb_fact() -> impl Strategy<Value = Fact> {
        // Few distinct times and ids so that ties and duplicates are frequent.
        let time = 0i64..20;
        let id = 0u8..6;
        prop_oneof![
            (time.clone(), id.clone()).prop_map(|(s, i)| grant(s, &format!("g{i}"))),
            (time.clone(), id.clone()).prop_map(|(s, i)| revoke(s, &format!("r{i}"))),
            (time.clone(), 0i64..20, id).prop_map(|(s, idle, i)| expire(s, idle.min(s), &format!("e{i}"))),
            time.prop_map(|s| Fact::Seen { at: t(s) }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any shuffle of a stream of facts, with duplicates, ends in the in-order state.
        #[test]
        fn replay_in_any_order_gives_the_same_state(
            facts in proptest::collection::vec(arb_fact(), 0..1000),
            seed in any::<u64>(),
        ) {
            let mut in_order = Consent::new(key());
            for f in &facts { apply(&mut in_order, f); }

            let mut shuffled: Vec<Fact> = facts.iter().chain(facts.iter().take(facts.len() / 3)).cloned().collect();
            let mut rng = seed;
            for i in (1..shuffled.len()).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (rng >> 33) as usize % (i + 1));
            }
            let mut replayed = Consent::new(key());
            for f in &shuffled { apply(&mut replayed, f); }

            prop_assert_eq!(&replayed, &in_order);
            prop_assert_eq!(replayed.status(), in_order.status());
        }

        /// `changed` says exactly whether the state differs from before the fact.
        #[test]
        fn changed_means_the_state_differs(facts in proptest::collection::vec(arb_fact(), 1..300)) {
            let mut consent = Consent::new(key());
            for f in &facts {
                let before = consent.clone();
                let applied = apply_fact(&mut consent, f);
                prop_assert_eq!(applied.changed, consent != before, "{:?} on {:?}", f, before);
            }
        }

        /// A fact joined before — a redelivery — changes nothing and ends nothing, whatever
        /// came in between: the ledger needs no inbox to apply each event once in effect.
        #[test]
        fn a_fact_applied_again_leaves_no_trace(
            facts in proptest::collection::vec(arb_fact(), 1..200),
            pick in any::<proptest::sample::Index>(),
        ) {
            let mut consent = Consent::new(key());
            for f in &facts { apply(&mut consent, f); }
            let before = consent.clone();
            let again = apply_fact(&mut consent, &facts[pick.index(facts.len())]);
            prop_assert_eq!(again, Applied { changed: false, transition: Transition::None });
            prop_assert_eq!(consent, before);
        }
    }
}
