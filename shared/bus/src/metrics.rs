//! What the consumers measure, for every service in the process: how long a batch takes to
//! apply, per durable (its base name: a term's suffix is no label of its own).

use std::sync::LazyLock;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

type Labels = Vec<(String, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

fn batch_buckets() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

pub(crate) static BATCH_APPLY: LazyLock<Histograms> =
    LazyLock::new(|| Family::new_with_constructor(batch_buckets as fn() -> Histogram));

/// Observes one batch's apply time for `durable`.
pub(crate) fn observe_batch(durable: &str, seconds: f64) {
    let base = crate::consumer::term_base(durable).unwrap_or(durable);
    BATCH_APPLY.get_or_create(&vec![("durable".to_owned(), base.to_owned())]).observe(seconds);
}

fn age_buckets() -> Histogram {
    // 1 ms to about 65 s: a row waits for its transaction's commit, then for the relay.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub(crate) static OUTBOX_AGE: LazyLock<Histograms> =
    LazyLock::new(|| Family::new_with_constructor(age_buckets as fn() -> Histogram));

/// Observes how long an outbox row of `publisher` waited before it was published.
pub(crate) fn observe_outbox_age(publisher: &str, seconds: f64) {
    OUTBOX_AGE.get_or_create(&vec![("publisher".to_owned(), publisher.to_owned())]).observe(seconds);
}

/// Adds the consumers' and relays' metrics to `registry` (once per process).
pub fn register(registry: &mut Registry) {
    registry.register_with_unit(
        "custodian_outbox_age_at_publish",
        "Time from an outbox row's write to its publish, by publisher",
        Unit::Seconds,
        OUTBOX_AGE.clone(),
    );
    registry.register_with_unit(
        "custodian_consumer_batch_apply",
        "Time a consumer's handler took to apply one batch",
        Unit::Seconds,
        BATCH_APPLY.clone(),
    );
}
