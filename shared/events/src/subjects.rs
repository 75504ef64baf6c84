//! NATS subject names. Constants, never assembled ad hoc; the only identifiers that may
//! appear in a subject are a view id (wipe commands) and a service name (dead letters and
//! their replays).

pub const STREAM: &str = "LIFECYCLE";
pub const ALL: &str = "lifecycle.>";

pub const CONSENT_GRANTED: &str = "lifecycle.consent.granted";
pub const CONSENT_REVOKED: &str = "lifecycle.consent.revoked";
pub const ACTIVITY_SEEN: &str = "lifecycle.activity.seen";
pub const CONSENT_EXPIRE: &str = "lifecycle.consent.expire";
pub const CONSENT_ENDED: &str = "lifecycle.consent.ended";
pub const SESSION_OPENED: &str = "lifecycle.session.opened";
pub const SESSION_CLOSED: &str = "lifecycle.session.closed";
/// Prefix of `lifecycle.session.wipe.<view_id>`; see [`session_wipe`].
pub const SESSION_WIPE_PREFIX: &str = "lifecycle.session.wipe";
pub const SESSION_WIPED: &str = "lifecycle.session.wiped";
/// A view publishes its session events on the v1 subject followed by its view id
/// (`lifecycle.session.opened.<view_id>`), so that nats-server binds them to its identity;
/// these match them all.
pub const SESSION_OPENED_BY_VIEW: &str = "lifecycle.session.opened.*";
pub const SESSION_CLOSED_BY_VIEW: &str = "lifecycle.session.closed.*";
pub const SESSION_WIPED_BY_VIEW: &str = "lifecycle.session.wiped.*";
pub const SESSION_REVOKE: &str = "lifecycle.session.revoke";
pub const TOKEN_REVOKED: &str = "lifecycle.token.revoked";
pub const TOKEN_HOK_USED: &str = "lifecycle.token.hok_used";
pub const INCIDENT_REPORTED: &str = "lifecycle.incident.reported";
pub const INCIDENT_CONTAIN: &str = "lifecycle.incident.contain";
pub const CREDENTIAL_ROTATED: &str = "lifecycle.credential.rotated";
pub const DPO_NOTIFIED: &str = "lifecycle.dpo.notified";
pub const SWEEP_REQUESTED: &str = "lifecycle.sweep.requested";
pub const SWEEP_FINISHED: &str = "lifecycle.sweep.finished";
pub const RETENTION_PURGE: &str = "lifecycle.retention.purge";
/// Prefix of `lifecycle.deadletter.<service>`; see [`deadletter`].
pub const DEADLETTER_PREFIX: &str = "lifecycle.deadletter";

/// Prefix of `lifecycle.replayed.<service>`: an operator's replay of one of the service's
/// dead letters, and what came of it; see [`replayed`].
pub const REPLAYED_PREFIX: &str = "lifecycle.replayed";

/// Is `token` usable as one NATS subject token (no separator, no wildcard, no space)?
pub fn is_valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 128
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `lifecycle.session.wipe.<view_id>`, or `None` when the view id is not a valid token.
pub fn session_wipe(view_id: &str) -> Option<String> {
    is_valid_token(view_id).then(|| format!("{SESSION_WIPE_PREFIX}.{view_id}"))
}

/// `<subject>.<view_id>` for a view's own session event (`subject` one of the session
/// subjects), or `None` when the view id is not a valid token.
pub fn by_view(subject: &str, view_id: &str) -> Option<String> {
    is_valid_token(view_id).then(|| format!("{subject}.{view_id}"))
}

/// The view id a view-bound session subject carries (`None` for the v1 subject).
pub fn view_of(subject: &str) -> Option<&str> {
    [SESSION_OPENED, SESSION_CLOSED, SESSION_WIPED].into_iter().find_map(|s| token_after(subject, s))
}

/// `lifecycle.deadletter.<service>`, or `None` when the service name is not a valid token.
pub fn deadletter(service: &str) -> Option<String> {
    is_valid_token(service).then(|| format!("{DEADLETTER_PREFIX}.{service}"))
}

/// `lifecycle.replayed.<service>`, or `None` when the service name is not a valid token.
pub fn replayed(service: &str) -> Option<String> {
    is_valid_token(service).then(|| format!("{REPLAYED_PREFIX}.{service}"))
}

/// Does `subject` match the NATS filter `filter` (`*` one token, `>` one or more)?
pub fn matches_filter(filter: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for want in filter.split('.') {
        match (want, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (want, Some(token)) if want == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

/// The routing token after a prefix, e.g. the view id of a wipe subject.
pub fn token_after<'a>(subject: &'a str, prefix: &str) -> Option<&'a str> {
    subject.strip_prefix(prefix)?.strip_prefix('.').filter(|t| is_valid_token(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_nats_server_matches_them() {
        assert!(matches_filter("lifecycle.consent.granted", "lifecycle.consent.granted"));
        assert!(!matches_filter("lifecycle.consent.granted", "lifecycle.consent.granted.x"));
        assert!(!matches_filter("lifecycle.consent.granted", "lifecycle.consent"));
        assert!(matches_filter("lifecycle.session.opened.*", "lifecycle.session.opened.view-1"));
        assert!(!matches_filter("lifecycle.session.opened.*", "lifecycle.session.opened"));
        assert!(!matches_filter("lifecycle.session.opened.*", "lifecycle.session.opened.a.b"));
        assert!(matches_filter("lifecycle.>", "lifecycle.consent.granted"));
        assert!(!matches_filter("lifecycle.>", "lifecycle"));
        assert!(!matches_filter("lifecycle.>", "custodian.query.health"));
    }

    #[test]
    fn wipe_subject_carries_only_a_plain_view_token() {
        assert_eq!(session_wipe("view-1").as_deref(), Some("lifecycle.session.wipe.view-1"));
        assert_eq!(session_wipe("a.b"), None);
        assert_eq!(session_wipe("*"), None);
        assert_eq!(session_wipe(">"), None);
        assert_eq!(session_wipe(""), None);
        assert_eq!(token_after("lifecycle.session.wipe.view-1", SESSION_WIPE_PREFIX), Some("view-1"));
        assert_eq!(token_after("lifecycle.session.wipe.a.b", SESSION_WIPE_PREFIX), None);
    }
}
