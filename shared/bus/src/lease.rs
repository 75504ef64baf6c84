//! Leadership among the replicas of a service: a key in the `custodian_leases` KV bucket,
//! created by one holder and renewed by it. A holder that dies stops renewing and its lease
//! lapses [`LEASE_TTL`] later (the bucket's max age); one that stops gracefully deletes it
//! and a successor takes over within [`CONTEND_EVERY`].
//!
//! The lease decides who *should* work, not who *can*: a paused holder may wake up after
//! its lease lapsed and not know yet. Whatever it guards must fence a stale holder by the
//! lease's term (the exclusive consumer gives each term its own durable).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::{Bus, BusError};

pub const LEASES_BUCKET: &str = "custodian_leases";
/// A dead holder's lease lapses this long after its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// Renewals per TTL leave room for a few failed ones before the lease could lapse.
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How often a replica that is not the holder tries to take the lease.
const CONTEND_EVERY: Duration = Duration::from_secs(1);

/// This replica holds the lease `name` for one term.
#[derive(Debug)]
pub struct Leadership {
    name: String,
    /// The KV revision that created the lease: a later leadership of `name` has a higher one.
    term: u64,
    lost: CancellationToken,
    store: kv::Store,
    revision: Arc<AtomicU64>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Leadership {
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Cancelled when the lease is lost (taken over, or not renewed in time).
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Stops renewing and deletes the lease if it is still this term's, so that a successor
    /// need not wait for it to lapse.
    pub async fn release(self) {
        self.renewer.abort();
        let revision = self.revision.load(Ordering::Acquire);
        match self.store.delete_expect_revision(&self.name, Some(revision)).await {
            Ok(()) => tracing::info!(lease = %self.name, term = self.term, "lease released"),
            Err(e) => {
                tracing::debug!(lease = %self.name, term = self.term, error = %e, "lease not released (lapses by itself)")
            }
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// A name for this replica in the lease (logs and `nats kv get` show who leads).
pub fn holder_id(service: &str) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{service}@{host}/{}/{}", std::process::id(), &nonce[..8])
}

async fn leases(bus: &Bus) -> Result<kv::Store, BusError> {
    bus.jetstream()
        .create_or_update_key_value(kv::Config {
            bucket: LEASES_BUCKET.to_owned(),
            description: "leadership leases of Custodian's replicas".to_owned(),
            history: 1,
            max_age: LEASE_TTL,
            num_replicas: bus.replicas(),
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::Stream { stream: format!("KV_{LEASES_BUCKET}"), reason: e.to_string() })
}

/// Waits until this replica holds the lease `name`; `None` on shutdown.
pub async fn acquire(bus: &Bus, name: &str, holder: &str, shutdown: &CancellationToken) -> Option<Leadership> {
    let mut store = None;
    let mut waiting_logged = false;
    while !shutdown.is_cancelled() {
        let attempt = async {
            let kv = match &store {
                Some(kv) => kv,
                None => store.insert(leases(bus).await?),
            };
            match kv.create(name, Bytes::from(holder.to_owned())).await {
                Ok(revision) => Ok(Some((kv.clone(), revision))),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(BusError::Stream { stream: format!("KV_{LEASES_BUCKET}"), reason: e.to_string() }),
            }
        };
        match attempt.await {
            Ok(Some((store, term))) => {
                tracing::info!(lease = name, term, holder, "lease taken: this replica leads");
                let lost = CancellationToken::new();
                let revision = Arc::new(AtomicU64::new(term));
                let renewer = tokio::spawn(renew(
                    store.clone(),
                    name.to_owned(),
                    Bytes::from(holder.to_owned()),
                    revision.clone(),
                    lost.clone(),
                ));
                return Some(Leadership { name: name.to_owned(), term, lost, store, revision, renewer });
            }
            Ok(None) if !waiting_logged => {
                tracing::info!(lease = name, holder, "another replica leads; standing by");
                waiting_logged = true;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(lease = name, error = %e, "cannot contend for the lease; will retry"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(CONTEND_EVERY) => {}
        }
    }
    None
}

/// Renews until the lease is taken over or cannot be proven held any more.
async fn renew(store: kv::Store, name: String, value: Bytes, revision: Arc<AtomicU64>, lost: CancellationToken) {
    let mut renewed_at = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        match store.update(&name, value.clone(), revision.load(Ordering::Acquire)).await {
            Ok(next) => {
                revision.store(next, Ordering::Release);
                renewed_at = tokio::time::Instant::now();
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                tracing::warn!(lease = %name, "lease taken over (it lapsed); stepping down");
                lost.cancel();
                return;
            }
            // Past this point the lease may have lapsed and a successor may lead.
            Err(e) if renewed_at.elapsed() + RENEW_EVERY >= LEASE_TTL => {
                tracing::warn!(lease = %name, error = %e, "lease not renewed in time; stepping down");
                lost.cancel();
                return;
            }
            Err(e) => tracing::warn!(lease = %name, error = %e, "lease renewal failed; will retry"),
        }
    }
}
