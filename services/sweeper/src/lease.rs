//! A lease in a NATS KV bucket: whoever creates the key holds it; the holder renews it
//! (compare-and-set on the revision) faster than the bucket's TTL expires it. A holder that
//! dies stops renewing, the entry ages out, and another replica's `create` succeeds.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

pub const BUCKET: &str = "custodian_sweeper_leases";

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("cannot open the lease bucket {BUCKET}: {0}")]
    Bucket(String),
    #[error("lease {key} lost: {reason}")]
    Lost { key: String, reason: String },
}

/// Opens (creating if missing) the bucket whose entries live `ttl` after their last write.
pub async fn bucket(js: &jetstream::Context, ttl: Duration, replicas: usize) -> Result<kv::Store, LeaseError> {
    if let Ok(store) = js.get_key_value(BUCKET).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: BUCKET.to_owned(),
        history: 1,
        max_age: ttl,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| LeaseError::Bucket(e.to_string()))
}

#[derive(Debug)]
pub struct Lease {
    kv: kv::Store,
    key: String,
    holder: String,
    revision: u64,
}

impl Lease {
    /// Takes the lease on `key` if nobody holds it.
    pub async fn try_acquire(kv: &kv::Store, key: &str, holder: &str) -> Option<Lease> {
        let revision = kv.create(key, Bytes::from(holder.to_owned())).await.ok()?;
        Some(Lease { kv: kv.clone(), key: key.to_owned(), holder: holder.to_owned(), revision })
    }

    /// Renews; an error means someone else holds it now (or the bucket is unreachable long
    /// enough that we must assume so).
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        self.revision = self
            .kv
            .update(&self.key, Bytes::from(self.holder.clone()), self.revision)
            .await
            .map_err(|e| LeaseError::Lost { key: self.key.clone(), reason: e.to_string() })?;
        Ok(())
    }

    /// Renews every `every` until a renewal fails; returns the failure.
    pub async fn keep_alive(&mut self, every: Duration) -> LeaseError {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.renew().await {
                return e;
            }
        }
    }

    pub async fn release(self) {
        let _ = self.kv.delete(&self.key).await;
    }
}
