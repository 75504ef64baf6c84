//! Leases in NATS KV buckets. Whoever creates the key holds it; the holder renews it
//! (compare-and-set on the revision) faster than the bucket's TTL ages it out. A holder that
//! dies stops renewing, the entry ages out, and another replica's `create` succeeds; one that
//! finishes deletes it (only if it is still its own), so a successor need not wait.
//!
//! A lease decides who *should* work, not who *can*: a paused holder may wake after its
//! lease lapsed and not know yet. Whatever it guards must fence a stale holder (the sweeps
//! by `sweeps.holder` in the database, an exclusive consumer by a durable per term).

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::Bus;

/// Leadership leases of services whose replicas take turns (the consent ledger).
pub const LEADERSHIP_BUCKET: &str = "custodian_leases";
/// A dead leader's lease lapses this long after its last renewal (the bucket's max age): the
/// bound on how long a crashed leader's work waits for its standby.
pub const LEADERSHIP_TTL: Duration = Duration::from_secs(2);
/// Renewals per TTL leave room for three failed ones before the lease could lapse.
const RENEW_EVERY: Duration = Duration::from_millis(400);
/// How long a leader keeps leading while it cannot reach the bucket at all. While the
/// bucket's stream elects a leader (its node killed, 4–9 s) nobody can take the lease, so
/// stepping down at the TTL would only stop the work — the revocations' nudges included —
/// for the whole election. A holder cut off alone may overlap a successor for this long,
/// which is the stale holder every guarded piece of work already fences (see the module's
/// doc). A successor's write is seen at the first renewal that reaches the bucket.
pub const UNREACHABLE_GRACE: Duration = Duration::from_secs(12);
/// How often a replica that does not lead tries to take the lease.
const CONTEND_EVERY: Duration = Duration::from_millis(150);
/// How long one try may take. While the bucket's stream elects a leader (a NATS node killed),
/// its API calls hang for the client's whole request timeout, twice; bounded, a replica tries
/// again every second and takes the lease soon after the election.
const CONTEND_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("cannot open the lease bucket {bucket}: {reason}")]
    Bucket { bucket: String, reason: String },
    #[error("lease {key} taken over by another holder")]
    TakenOver { key: String },
    #[error("lease {key} not reachable: {reason}")]
    Unreachable { key: String, reason: String },
}

/// Opens (creating if missing) the bucket whose entries live `ttl` after their last write.
/// An existing bucket is left as its operator configured it.
pub async fn bucket(
    js: &jetstream::Context,
    name: &str,
    ttl: Duration,
    replicas: usize,
) -> Result<kv::Store, LeaseError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: name.to_owned(),
        history: 1,
        max_age: ttl,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| LeaseError::Bucket { bucket: name.to_owned(), reason: e.to_string() })
}

/// Sets an existing bucket's max age to `ttl` when it differs (a bucket made by an earlier
/// version): the provisioner's job, since a lease is only as short as its bucket's max age.
pub async fn set_ttl(js: &jetstream::Context, name: &str, ttl: Duration) -> Result<(), LeaseError> {
    let failed = |e: &dyn std::fmt::Display| LeaseError::Bucket { bucket: name.to_owned(), reason: e.to_string() };
    let stream_name = format!("KV_{name}");
    let mut stream = js.get_stream(&stream_name).await.map_err(|e| failed(&e))?;
    let mut config = stream.info().await.map_err(|e| failed(&e))?.config.clone();
    if config.max_age == ttl {
        return Ok(());
    }
    tracing::info!(bucket = name, from = ?config.max_age, to = ?ttl, "lease bucket's max age updated");
    config.max_age = ttl;
    js.update_stream(config).await.map_err(|e| failed(&e))?;
    Ok(())
}

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    kv: kv::Store,
    key: String,
    holder: String,
    revision: u64,
}

impl Lease {
    /// Takes the lease on `key` if nobody holds it (`Ok(None)` if someone does).
    pub async fn try_acquire(kv: &kv::Store, key: &str, holder: &str) -> Result<Option<Lease>, LeaseError> {
        match kv.create(key, Bytes::from(holder.to_owned())).await {
            Ok(revision) => {
                Ok(Some(Lease { kv: kv.clone(), key: key.to_owned(), holder: holder.to_owned(), revision }))
            }
            // Perhaps its own: a try that timed out after the server stored it, or a holder
            // that stepped down while NATS was unreachable. Nobody else wrote the key since
            // (they would have put their own name in it), so it is still this holder's.
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => match kv.entry(key).await {
                Ok(Some(entry)) if entry.value.as_ref() == holder.as_bytes() => Ok(Some(Lease {
                    kv: kv.clone(),
                    key: key.to_owned(),
                    holder: holder.to_owned(),
                    revision: entry.revision,
                })),
                _ => Ok(None),
            },
            Err(e) => Err(LeaseError::Unreachable { key: key.to_owned(), reason: e.to_string() }),
        }
    }

    /// The revision that created or last renewed it.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Renews; `TakenOver` means someone else holds it now.
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        match self.kv.update(&self.key, Bytes::from(self.holder.clone()), self.revision).await {
            Ok(revision) => {
                self.revision = revision;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(LeaseError::TakenOver { key: self.key.clone() })
            }
            Err(e) => Err(LeaseError::Unreachable { key: self.key.clone(), reason: e.to_string() }),
        }
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

    /// Deletes the lease if it is still this holder's (never a successor's).
    pub async fn release(self) {
        match self.kv.delete_expect_revision(&self.key, Some(self.revision)).await {
            Ok(()) => tracing::debug!(lease = %self.key, "lease released"),
            Err(e) => tracing::debug!(lease = %self.key, error = %e, "lease not released (it lapses by itself)"),
        }
    }
}

/// This replica leads `name` for one term: its lease is renewed in the background.
#[derive(Debug)]
pub struct Leadership {
    /// The KV revision that created the lease: a later leadership of `name` has a higher one.
    term: u64,
    ended: CancellationToken,
    stop: CancellationToken,
    renewer: tokio::task::JoinHandle<()>,
}

impl Leadership {
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Cancelled when the term ends: the lease is lost (taken over, or not renewed in time)
    /// or the service is stopping.
    pub fn ended(&self) -> &CancellationToken {
        &self.ended
    }

    /// Stops renewing and deletes the lease if it is still this term's.
    pub async fn release(mut self) {
        self.stop.cancel();
        let _ = (&mut self.renewer).await;
    }
}

impl Drop for Leadership {
    /// Dropped without [`Leadership::release`] (a crash): the lease lapses by itself.
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// This machine's or pod's name: `HOSTNAME` (set in containers, the pod's name in
/// Kubernetes; a shell does not export it), else `/etc/hostname`, else `local`.
pub fn host_name() -> String {
    let named = |h: String| Some(h.trim().to_owned()).filter(|h| !h.is_empty());
    std::env::var("HOSTNAME")
        .ok()
        .and_then(named)
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().and_then(named))
        .unwrap_or_else(|| "local".into())
}

/// A name for this replica in a lease (logs and `nats kv get` show who holds it).
pub fn holder_id(service: &str) -> String {
    let host = host_name();
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{service}@{host}/{}/{}", std::process::id(), &nonce[..8])
}

/// Waits until this replica leads `name`; `None` on shutdown.
pub async fn lead(bus: &Bus, name: &str, holder: &str, shutdown: &CancellationToken) -> Option<Leadership> {
    let mut store = None;
    let mut standing_by = false;
    while !shutdown.is_cancelled() {
        let attempt = async {
            let kv = match &store {
                Some(kv) => kv,
                None => store.insert(bucket(bus.jetstream(), LEADERSHIP_BUCKET, LEADERSHIP_TTL, bus.replicas()).await?),
            };
            Lease::try_acquire(kv, name, holder).await
        };
        let attempt = async {
            tokio::time::timeout(CONTEND_TIMEOUT, attempt).await.unwrap_or_else(|_| {
                Err(LeaseError::Unreachable {
                    key: name.to_owned(),
                    reason: format!("no answer within {CONTEND_TIMEOUT:?}"),
                })
            })
        };
        match attempt.await {
            Ok(Some(lease)) => {
                let term = lease.revision();
                tracing::info!(lease = name, term, holder, "lease taken: this replica leads");
                let (ended, stop) = (shutdown.child_token(), CancellationToken::new());
                let renewer = tokio::spawn(renew_until_stopped(lease, ended.clone(), stop.clone()));
                return Some(Leadership { term, ended, stop, renewer });
            }
            Ok(None) if !standing_by => {
                tracing::info!(lease = name, holder, "another replica leads; standing by");
                standing_by = true;
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

/// Renews until stopped (then releases), taken over, or not provably held any more.
async fn renew_until_stopped(mut lease: Lease, lost: CancellationToken, stop: CancellationToken) {
    let mut renewed_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return lease.release().await,
            () = tokio::time::sleep(RENEW_EVERY) => {}
        }
        match lease.renew().await {
            Ok(()) => renewed_at = tokio::time::Instant::now(),
            Err(e @ LeaseError::TakenOver { .. }) => {
                tracing::warn!(error = %e, "stepping down");
                return lost.cancel();
            }
            // The bucket answered nobody for longer than an election takes: stop.
            Err(e) if renewed_at.elapsed() + RENEW_EVERY >= UNREACHABLE_GRACE => {
                tracing::warn!(error = %e, "lease not renewed in time; stepping down");
                return lost.cancel();
            }
            Err(e) => tracing::warn!(error = %e, "lease renewal failed; leading on, will retry"),
        }
    }
}
