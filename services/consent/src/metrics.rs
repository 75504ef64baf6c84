use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters of the consent ledger, exported on the gateway's `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct ConsentMetrics {
    pub applied: Family<Vec<(String, String)>, Counter>,
    pub ended: Counter,
    pub unchanged: Counter,
    /// 1 while this replica leads the ledger consumer.
    pub leading: Gauge,
}

impl ConsentMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "custodian_consent_events_applied",
            "Consent facts applied, by event type",
            self.applied.clone(),
        );
        registry.register("custodian_consent_ended", "Consents that stopped being honoured", self.ended.clone());
        registry.register(
            "custodian_consent_unchanged",
            "Consent facts that changed nothing (redelivered, or superseded by a later fact)",
            self.unchanged.clone(),
        );
        registry.register(
            "custodian_consent_ledger_leading",
            "1 while this replica leads the ledger consumer; summed over the replicas it is 1, and 0 means consent events wait",
            self.leading.clone(),
        );
    }
}
