use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The vault's Prometheus metrics.
#[derive(Debug, Clone)]
pub struct VaultMetrics {
    /// From a revocation's start (the consent ended) to its last token revoked and last view
    /// acknowledgement: the time a person's data may still be held.
    pub revocation_seconds: Histogram,
    /// From a revocation's start to its last token settled at the OP (revoked or found
    /// invalid): the time a stolen token could still be used.
    pub tokens_phase_seconds: Histogram,
    /// What waits now (read every few seconds): wipes not acknowledged, token revocations
    /// not settled, revocations not done, and the age of the oldest of those.
    pub pending_wipes: Gauge,
    pub pending_token_revocations: Gauge,
    pub pending_revocations: Gauge,
    pub oldest_pending_revocation_seconds: Gauge<f64, AtomicU64>,
    /// OP revocation calls by outcome (`revoked`, `already_invalid`, `failed`).
    pub tokens_revoked: Family<Vec<(String, String)>, Counter>,
    pub wipes_sent: Counter,
    pub wipes_acked: Counter,
    pub wipes_expired: Counter,
    pub revocations_started: Counter,
    pub revocations_done: Counter,
    pub tokens_handed_out: Counter,
    pub refreshes: Counter,
    pub logins: Counter,
}

impl Default for VaultMetrics {
    fn default() -> Self {
        let metrics = Self::empty();
        // Every outcome from 0: a rate reads from the start, and a dashboard finds the series.
        for outcome in ["revoked", "already_invalid", "failed"] {
            let created = metrics.tokens_revoked.get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())]);
            drop(created);
        }
        metrics
    }
}

impl VaultMetrics {
    fn empty() -> Self {
        Self {
            // 5 ms to about 80 s.
            revocation_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 15)),
            tokens_phase_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 15)),
            pending_wipes: Gauge::default(),
            pending_token_revocations: Gauge::default(),
            pending_revocations: Gauge::default(),
            oldest_pending_revocation_seconds: Gauge::default(),
            tokens_revoked: Family::default(),
            wipes_sent: Counter::default(),
            wipes_acked: Counter::default(),
            wipes_expired: Counter::default(),
            revocations_started: Counter::default(),
            revocations_done: Counter::default(),
            tokens_handed_out: Counter::default(),
            refreshes: Counter::default(),
            logins: Counter::default(),
        }
    }
}

impl VaultMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "custodian_vault_tokens_revoked",
            "Tokens revoked at the OP, by outcome",
            self.tokens_revoked.clone(),
        );
        registry.register(
            "custodian_vault_wipes_sent",
            "Wipe commands sent to views (resends included)",
            self.wipes_sent.clone(),
        );
        registry.register("custodian_vault_wipes_acked", "Wipes acknowledged by views", self.wipes_acked.clone());
        registry.register(
            "custodian_vault_wipes_expired",
            "Wipes given up because the sessions expired (TTL)",
            self.wipes_expired.clone(),
        );
        registry.register(
            "custodian_vault_revocations_started",
            "Ended consents taken over",
            self.revocations_started.clone(),
        );
        registry.register("custodian_vault_revocations_done", "Revocations finished", self.revocations_done.clone());
        registry.register_with_unit(
            "custodian_vault_revocation_duration",
            "From a revocation's start to its last token revoked and last view acknowledgement",
            Unit::Seconds,
            self.revocation_seconds.clone(),
        );
        registry.register_with_unit(
            "custodian_vault_revocation_tokens_duration",
            "From a revocation's start to its last token settled at the OP",
            Unit::Seconds,
            self.tokens_phase_seconds.clone(),
        );
        registry.register(
            "custodian_vault_pending_wipes",
            "Wipe commands not yet acknowledged by their view",
            self.pending_wipes.clone(),
        );
        registry.register(
            "custodian_vault_pending_token_revocations",
            "Tokens of revocations not yet settled at the OP",
            self.pending_token_revocations.clone(),
        );
        registry.register(
            "custodian_vault_pending_revocations",
            "Revocations not yet done",
            self.pending_revocations.clone(),
        );
        registry.register_with_unit(
            "custodian_vault_oldest_pending_revocation_age",
            "Age of the oldest revocation not yet done (0 when none)",
            Unit::Seconds,
            self.oldest_pending_revocation_seconds.clone(),
        );
        registry.register(
            "custodian_vault_tokens_handed_out",
            "Access tokens handed to platform services",
            self.tokens_handed_out.clone(),
        );
        registry.register(
            "custodian_vault_refreshes",
            "Access tokens renewed with a refresh token",
            self.refreshes.clone(),
        );
        registry.register("custodian_vault_logins", "Logins completed", self.logins.clone());
    }

    pub fn revoked(&self, outcome: &str) {
        self.tokens_revoked.get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())]).inc();
    }
}
