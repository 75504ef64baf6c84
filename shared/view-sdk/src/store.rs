//! The view's memory store. Every entry belongs to a session, and a session to the token it
//! was opened under: an entry whose time-to-live would outlast that token is refused, and
//! entries are evicted at their expiry. Values are zeroed when dropped. Nothing touches disk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use custodian_store::clock::SharedClock;
use tokio::sync::Notify;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RetentionError {
    #[error("unknown or ended session {0:?}")]
    UnknownSession(String),
    #[error("session {0:?} was wiped: a revocation ended it, it cannot hold data again")]
    Wiped(String),
    #[error(
        "entry would outlive the token it was fetched under (token expires {token_expires_at}, entry {entry_expires_at})"
    )]
    PastTokenExpiry { token_expires_at: DateTime<Utc>, entry_expires_at: DateTime<Utc> },
}

struct Entry {
    value: Zeroizing<Vec<u8>>,
    expires_at: DateTime<Utc>,
}

struct Session {
    token_expires_at: DateTime<Utc>,
    entries: HashMap<String, Entry>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Session>,
    /// Sessions wiped, and until when that is remembered: a token handed out for one of them
    /// just before its revocation may arrive after the wipe, and must find nowhere to put data.
    wiped: HashMap<String, DateTime<Utc>>,
}

/// How long a wiped session's id is remembered: longer than any token handed out before the
/// wipe can live (the vault hands none out for a wiped session).
pub const WIPED_REMEMBERED_FOR: chrono::Duration = chrono::Duration::hours(24);

/// Shared handle; clones see the same memory.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    clock: SharedClock,
    /// Wakes the evictor when an entry with an earlier expiry arrives.
    changed: Arc<Notify>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (sessions, entries) = self.counts();
        f.debug_struct("MemoryStore").field("sessions", &sessions).field("entries", &entries).finish()
    }
}

impl MemoryStore {
    pub fn new(clock: SharedClock) -> Self {
        Self { inner: Arc::default(), clock, changed: Arc::new(Notify::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind: still consistent.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a session bound to a token that expires at `token_expires_at`; refused for a
    /// session already wiped.
    pub fn open_session(&self, session_id: &str, token_expires_at: DateTime<Utc>) -> Result<(), RetentionError> {
        let mut inner = self.lock();
        if inner.wiped.contains_key(session_id) {
            return Err(RetentionError::Wiped(session_id.to_owned()));
        }
        inner
            .sessions
            .entry(session_id.to_owned())
            .or_insert_with(|| Session { token_expires_at, entries: HashMap::new() });
        drop(inner);
        self.changed.notify_one();
        Ok(())
    }

    /// Keeps `value` for `ttl`, refused if that runs past the session's token.
    pub fn put(
        &self,
        session_id: &str,
        key: &str,
        value: Vec<u8>,
        ttl: std::time::Duration,
    ) -> Result<DateTime<Utc>, RetentionError> {
        let now = self.clock.now();
        let entry_expires_at = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let mut inner = self.lock();
        let session =
            inner.sessions.get_mut(session_id).ok_or_else(|| RetentionError::UnknownSession(session_id.to_owned()))?;
        if entry_expires_at > session.token_expires_at {
            return Err(RetentionError::PastTokenExpiry {
                token_expires_at: session.token_expires_at,
                entry_expires_at,
            });
        }
        session.entries.insert(key.to_owned(), Entry { value: Zeroizing::new(value), expires_at: entry_expires_at });
        drop(inner);
        self.changed.notify_one();
        Ok(entry_expires_at)
    }

    /// The value, if present and not expired.
    pub fn get(&self, session_id: &str, key: &str) -> Option<Zeroizing<Vec<u8>>> {
        let now = self.clock.now();
        let inner = self.lock();
        let entry = inner.sessions.get(session_id)?.entries.get(key)?;
        (entry.expires_at > now).then(|| entry.value.clone())
    }

    pub fn has_session(&self, session_id: &str) -> bool {
        self.lock().sessions.contains_key(session_id)
    }

    /// Whether the session was wiped by a revocation (remembered for [`WIPED_REMEMBERED_FOR`]).
    pub fn was_wiped(&self, session_id: &str) -> bool {
        let now = self.clock.now();
        self.lock().wiped.get(session_id).is_some_and(|until| *until > now)
    }

    /// Drops the sessions and all their entries, and remembers them as wiped (they cannot be
    /// opened again); returns how many sessions were held.
    pub fn wipe(&self, session_ids: &[String]) -> usize {
        let until = self.clock.now() + WIPED_REMEMBERED_FOR;
        let mut inner = self.lock();
        let mut held = 0;
        for id in session_ids {
            held += usize::from(inner.sessions.remove(id.as_str()).is_some());
            inner.wiped.insert(id.clone(), until);
        }
        held
    }

    /// Ends a session the view itself closed: its data dropped, and the id free of any memory.
    pub fn close(&self, session_id: &str) -> bool {
        self.lock().sessions.remove(session_id).is_some()
    }

    /// Drops every expired entry, and sessions whose token expired. Returns entries dropped.
    pub fn evict_expired(&self) -> usize {
        let now = self.clock.now();
        let mut inner = self.lock();
        let mut dropped = 0;
        inner.wiped.retain(|_, until| *until > now);
        inner.sessions.retain(|_, session| {
            if session.token_expires_at <= now {
                dropped += session.entries.len();
                return false;
            }
            let before = session.entries.len();
            session.entries.retain(|_, e| e.expires_at > now);
            dropped += before - session.entries.len();
            true
        });
        dropped
    }

    /// The earliest moment something in the store expires.
    pub fn next_expiry(&self) -> Option<DateTime<Utc>> {
        let inner = self.lock();
        inner
            .sessions
            .values()
            .flat_map(|s| s.entries.values().map(|e| e.expires_at).chain(std::iter::once(s.token_expires_at)))
            .min()
    }

    /// (sessions, entries) held right now.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.sessions.len(), inner.sessions.values().map(|s| s.entries.len()).sum())
    }

    /// Evicts at each expiry until `shutdown` (sleeps until the next expiry or a change).
    pub async fn run_evictor(self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            self.evict_expired();
            let wait = match self.next_expiry() {
                Some(at) => (at - self.clock.now()).to_std().unwrap_or_default().min(std::time::Duration::from_secs(1)),
                None => std::time::Duration::from_secs(1),
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.changed.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use custodian_store::clock::{Clock, ManualClock};

    use super::*;

    fn store() -> (MemoryStore, Arc<ManualClock>) {
        let clock = ManualClock::new(DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z").unwrap().into());
        (MemoryStore::new(clock.clone()), clock)
    }

    #[test]
    fn refuses_entries_that_outlive_the_token() {
        let (store, clock) = store();
        store.open_session("s1", clock.now() + chrono::Duration::seconds(60)).unwrap();
        assert!(store.put("s1", "labs", b"x".to_vec(), Duration::from_secs(60)).is_ok());
        let err = store.put("s1", "labs", b"x".to_vec(), Duration::from_secs(61)).unwrap_err();
        assert!(matches!(err, RetentionError::PastTokenExpiry { .. }), "{err}");
        assert_eq!(
            store.put("nope", "k", vec![], Duration::from_secs(1)),
            Err(RetentionError::UnknownSession("nope".into()))
        );
    }

    #[test]
    fn entries_vanish_at_their_expiry_and_sessions_with_their_token() {
        let (store, clock) = store();
        store.open_session("s1", clock.now() + chrono::Duration::seconds(60)).unwrap();
        store.put("s1", "short", b"a".to_vec(), Duration::from_secs(10)).unwrap();
        store.put("s1", "long", b"b".to_vec(), Duration::from_secs(50)).unwrap();
        clock.advance(chrono::Duration::seconds(10));
        assert!(store.get("s1", "short").is_none(), "expired entries are never returned");
        assert_eq!(store.evict_expired(), 1);
        assert_eq!(store.get("s1", "long").unwrap().as_slice(), b"b");
        clock.advance(chrono::Duration::seconds(50));
        assert_eq!(store.evict_expired(), 1);
        assert_eq!(store.counts(), (0, 0));
    }

    #[test]
    fn wipe_drops_only_the_named_sessions() {
        let (store, clock) = store();
        for id in ["a", "b", "c"] {
            store.open_session(id, clock.now() + chrono::Duration::seconds(60)).unwrap();
            store.put(id, "k", b"v".to_vec(), Duration::from_secs(5)).unwrap();
        }
        assert_eq!(store.wipe(&["a".into(), "c".into(), "zz".into()]), 2);
        assert_eq!(store.counts(), (1, 1));
        assert!(store.get("b", "k").is_some());
        assert!(store.get("a", "k").is_none());
    }

    #[test]
    fn a_wiped_session_cannot_be_opened_again_until_long_after_any_token_of_it() {
        let (store, clock) = store();
        assert_eq!(store.wipe(&["late".to_owned()]), 0, "not held yet: the wipe overtook the token");
        let expiry = clock.now() + chrono::Duration::seconds(60);
        assert_eq!(store.open_session("late", expiry), Err(RetentionError::Wiped("late".into())));
        assert!(store.put("late", "k", b"v".to_vec(), Duration::from_secs(5)).is_err());
        store.open_session("closed", expiry).unwrap();
        assert!(store.close("closed"));
        store.open_session("closed", expiry).unwrap();
        clock.advance(WIPED_REMEMBERED_FOR + chrono::Duration::seconds(1));
        store.evict_expired();
        store.open_session("late", clock.now() + chrono::Duration::seconds(60)).unwrap();
    }
}
