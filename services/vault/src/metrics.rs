use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The vault's Prometheus metrics.
#[derive(Debug, Clone, Default)]
pub struct VaultMetrics {
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
