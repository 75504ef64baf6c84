/// Why bytes could not be turned into a lifecycle event. Every variant is permanent: the
/// same bytes will never decode, so a consumer dead-letters them with this text as reason.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    // The serde error is in the message (dead-letter reasons and problem details carry
    // it), so it is not also chained as a source: printed chains would repeat it.
    #[error("not a CloudEvents 1.0 JSON envelope: {0}")]
    Envelope(serde_json::Error),
    #[error("unsupported specversion {0:?} (only \"1.0\")")]
    SpecVersion(String),
    #[error("unsupported datacontenttype {0:?} (only \"application/json\")")]
    DataContentType(String),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("event type {event_type:?} does not belong on subject {subject:?}")]
    SubjectMismatch { event_type: String, subject: String },
    #[error(
        "view {claimed:?} named in the event is not the view {bound:?} its subject binds (a view speaks only for itself)"
    )]
    ViewMismatch { claimed: String, bound: String },
    #[error("invalid data for {event_type}: {error}")]
    Data { event_type: String, error: serde_json::Error },
    #[error("invalid field {field}: {reason}")]
    Field { field: &'static str, reason: String },
}

impl DecodeError {
    pub(crate) fn field(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Field { field, reason: reason.into() }
    }
}
