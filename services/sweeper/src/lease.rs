//! The sweeps' leases: one per unfinished sweep, in a bucket of their own whose TTL is
//! `lease_ttl_secs` (see [`custodian_bus::lease`] for how a lease works).

use std::time::Duration;

use async_nats::jetstream::{self, kv};

pub use custodian_bus::lease::{Lease, LeaseError};

pub const BUCKET: &str = "custodian_sweeper_leases";

/// Opens (creating if missing) the sweeps' bucket.
pub async fn bucket(js: &jetstream::Context, ttl: Duration, replicas: usize) -> Result<kv::Store, LeaseError> {
    custodian_bus::lease::bucket(js, BUCKET, ttl, replicas).await
}
