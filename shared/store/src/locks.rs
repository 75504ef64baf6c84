//! Transaction-scoped locks on things that are not one row: a person's consent at a platform,
//! a revocation. Writers that must not interleave take the same lock first, so the second
//! waits for the first to commit and then reads what it wrote.
//!
//! PostgreSQL: `pg_advisory_xact_lock`, released at commit or rollback, taken in key order so
//! that two writers never wait on each other in a circle. SQLite: nothing to do, a write
//! transaction already holds the database's one write lock from its first statement
//! ([`crate::Store::begin_write`]).

use sea_orm::{ConnectionTrait, DbBackend, DbErr};
use sha2::{Digest, Sha256};

/// What a lock is on; each kind its own key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockOn<'a> {
    /// One person's consent at one platform: what a revocation, a token hand-out and a
    /// session's arrival must not interleave on.
    Consent { issuer: &'a str, subject: &'a str, platform_id: &'a str },
    /// One revocation: the writers that settle its items and may find it finished.
    Revocation(&'a str),
}

impl LockOn<'_> {
    /// A 64-bit key: the first eight bytes of a SHA-256 over the kind and its parts (NUL-separated:
    /// identifiers carry no control characters).
    pub fn key(&self) -> i64 {
        let mut hash = Sha256::new();
        match self {
            LockOn::Consent { issuer, subject, platform_id } => {
                hash.update(b"custodian:lock:consent\0");
                for part in [issuer, subject, platform_id] {
                    hash.update(part.as_bytes());
                    hash.update([0]);
                }
            }
            LockOn::Revocation(id) => {
                hash.update(b"custodian:lock:revocation\0");
                hash.update(id.as_bytes());
            }
        }
        let digest = hash.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        i64::from_be_bytes(first)
    }
}

/// Takes every lock of `on` until the transaction `conn` ends, in key order.
pub async fn hold<C: ConnectionTrait>(conn: &C, on: &[LockOn<'_>]) -> Result<(), DbErr> {
    if on.is_empty() || conn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let mut keys: Vec<i64> = on.iter().map(LockOn::key).collect();
    keys.sort_unstable();
    keys.dedup();
    for chunk in keys.chunks(1000) {
        // Integers formatted by us, not text from outside. The subquery's order is the order
        // the outer scan calls the function in.
        let values: Vec<String> = chunk.iter().map(|k| format!("({k}::bigint)")).collect();
        let sql = format!(
            "SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT k FROM (VALUES {}) AS v(k) ORDER BY k) AS ordered",
            values.join(",")
        );
        conn.execute_unprepared(&sql).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::LockOn;

    #[test]
    fn keys_are_stable_and_separate_kinds_and_parts() {
        let a = LockOn::Consent { issuer: "i", subject: "s", platform_id: "p" };
        assert_eq!(a.key(), LockOn::Consent { issuer: "i", subject: "s", platform_id: "p" }.key());
        assert_ne!(a.key(), LockOn::Consent { issuer: "i", subject: "sp", platform_id: "" }.key());
        assert_ne!(LockOn::Revocation("x").key(), LockOn::Revocation("y").key());
        assert_ne!(LockOn::Revocation("i\0s\0p\0").key(), a.key(), "a revocation id cannot take a consent's lock");
    }
}
