//! What the consumers measure, for every service in the process: how long a batch takes to
//! apply, per durable (its base name: a term's suffix is no label of its own).

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
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

type Counters = Family<Labels, Counter>;

/// Nudges handed to a consumer's handler, by durable and outcome (`applied`, or `left` to the
/// stream's copy: refused, failed or already applied by a handler that says so).
pub(crate) static NUDGES: LazyLock<Counters> = LazyLock::new(Family::default);
pub(crate) static NUDGES_SENT: LazyLock<Counter> = LazyLock::new(Counter::default);

pub(crate) fn nudge_sent() {
    NUDGES_SENT.inc();
}

pub(crate) fn nudges_applied(durable: &str, applied: u64, left: u64) {
    let labels =
        |outcome: &str| vec![("durable".to_owned(), durable.to_owned()), ("outcome".to_owned(), outcome.to_owned())];
    if applied > 0 {
        NUDGES.get_or_create(&labels("applied")).inc_by(applied);
    }
    if left > 0 {
        NUDGES.get_or_create(&labels("left")).inc_by(left);
    }
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
    registry.register(
        "custodian_nudges_sent",
        "Core-NATS copies sent beside events on a revocation's path",
        NUDGES_SENT.clone(),
    );
    registry.register(
        "custodian_nudges",
        "Nudges handed to a consumer's handler, by durable and outcome",
        NUDGES.clone(),
    );
}
