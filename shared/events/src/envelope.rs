use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::DecodeError;
use crate::payloads::*;
use crate::subjects;

pub const SPEC_VERSION: &str = "1.0";
pub const DATA_CONTENT_TYPE: &str = "application/json";
/// Content type of a structured-mode CloudEvent (also the NATS `content-type` header).
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// A typed payload tied to its subject and CloudEvents type.
pub trait EventData: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The subject (or, for routed commands, the subject prefix).
    const SUBJECT: &'static str;
    const TYPE: &'static str;
    /// What serde cannot check: non-empty bounded identifiers, URLs, combinations.
    fn validate(&self) -> Result<(), DecodeError>;
}

/// CloudEvents 1.0, structured JSON mode. Only the attributes of the contract are accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudEvent<T> {
    pub specversion: String,
    /// The publisher's idempotency key; also sent as `Nats-Msg-Id`.
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// When the fact happened (decides ordering, not arrival).
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub data: T,
}

impl<T: EventData> CloudEvent<T> {
    /// A new event with a random id.
    pub fn new(source: impl Into<String>, time: DateTime<Utc>, data: T) -> Self {
        Self::with_id(uuid::Uuid::new_v4().to_string(), source, time, data)
    }

    /// A new event with a chosen (e.g. derived, deterministic) id.
    pub fn with_id(id: impl Into<String>, source: impl Into<String>, time: DateTime<Utc>, data: T) -> Self {
        Self {
            specversion: SPEC_VERSION.to_owned(),
            id: id.into(),
            source: source.into(),
            event_type: T::TYPE.to_owned(),
            time,
            datacontenttype: DATA_CONTENT_TYPE.to_owned(),
            subject: None,
            traceparent: None,
            data,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain structs with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The envelope with `data` not yet typed: kept as the JSON text it was (no value tree is
/// built), then parsed once into the type the envelope names.
type RawEvent<'a> = CloudEvent<&'a serde_json::value::RawValue>;

impl RawEvent<'_> {
    fn check_attributes(&self) -> Result<(), DecodeError> {
        if self.specversion != SPEC_VERSION {
            return Err(DecodeError::SpecVersion(self.specversion.clone()));
        }
        if self.datacontenttype != DATA_CONTENT_TYPE {
            return Err(DecodeError::DataContentType(self.datacontenttype.clone()));
        }
        if self.id.trim().is_empty() || self.id.len() > 256 {
            return Err(DecodeError::field("id", "must be 1 to 256 bytes"));
        }
        if self.source.trim().is_empty() || self.source.len() > 1024 {
            return Err(DecodeError::field("source", "must be a non-empty URI-reference"));
        }
        Ok(())
    }

    fn into_typed<T: EventData>(self) -> Result<CloudEvent<T>, DecodeError> {
        let data: T = serde_json::from_str(self.data.get())
            .map_err(|error| DecodeError::Data { event_type: self.event_type.clone(), error })?;
        data.validate()?;
        Ok(CloudEvent {
            specversion: self.specversion,
            id: self.id,
            source: self.source,
            event_type: self.event_type,
            time: self.time,
            datacontenttype: self.datacontenttype,
            subject: self.subject,
            traceparent: self.traceparent,
            data,
        })
    }
}

macro_rules! lifecycle_events {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// Any event of the contract, decoded and validated.
        #[derive(Debug, Clone, PartialEq)]
        pub enum LifecycleEvent {
            $($variant(CloudEvent<$ty>),)*
        }

        impl LifecycleEvent {
            /// Decode a structured-mode CloudEvent. With `subject`, the event type must be
            /// the one that subject carries; without, the subject is derived from the type.
            pub fn decode(subject: Option<&str>, bytes: &[u8]) -> Result<Self, DecodeError> {
                let event = Self::decode_unbound(subject, bytes)?;
                event.check_view_binding(subject)?;
                Ok(event)
            }

            fn decode_unbound(subject: Option<&str>, bytes: &[u8]) -> Result<Self, DecodeError> {
                let raw: RawEvent = serde_json::from_slice(bytes).map_err(DecodeError::Envelope)?;
                raw.check_attributes()?;
                let event_type = raw.event_type.clone();
                $(
                    if event_type == <$ty as EventData>::TYPE {
                        if let Some(subject) = subject {
                            if !subject_matches(<$ty as EventData>::SUBJECT, subject) {
                                return Err(DecodeError::SubjectMismatch { event_type, subject: subject.to_owned() });
                            }
                        }
                        return raw.into_typed::<$ty>().map(Self::$variant);
                    }
                )*
                Err(DecodeError::UnknownType(event_type))
            }

            pub fn id(&self) -> &str {
                match self { $(Self::$variant(e) => &e.id,)* }
            }

            /// Gives the event another id (the edge's: see [`outside_event_id`]).
            pub fn set_id(&mut self, id: String) {
                match self { $(Self::$variant(e) => e.id = id,)* }
            }

            pub fn time(&self) -> DateTime<Utc> {
                match self { $(Self::$variant(e) => e.time,)* }
            }

            /// Re-dates the event (the edge's: an outsider's clock never dates past its own).
            pub fn set_time(&mut self, time: DateTime<Utc>) {
                match self { $(Self::$variant(e) => e.time = time,)* }
            }

            pub fn source(&self) -> &str {
                match self { $(Self::$variant(e) => &e.source,)* }
            }

            /// Names who published it (the edge's: the authenticated caller, not a claim).
            pub fn set_source(&mut self, source: String) {
                match self { $(Self::$variant(e) => e.source = source,)* }
            }

            pub fn event_type(&self) -> &str {
                match self { $(Self::$variant(e) => &e.event_type,)* }
            }

            pub fn traceparent(&self) -> Option<&str> {
                match self { $(Self::$variant(e) => e.traceparent.as_deref(),)* }
            }

            /// The fixed subject, or the prefix for routed commands (wipe, dead letter).
            pub fn subject_or_prefix(&self) -> &'static str {
                match self { $(Self::$variant(_) => <$ty as EventData>::SUBJECT,)* }
            }

            pub fn to_json(&self) -> Vec<u8> {
                match self { $(Self::$variant(e) => e.to_json(),)* }
            }
        }
    };
}

lifecycle_events! {
    ConsentGranted(ConsentGrantedV1),
    ConsentRevoked(ConsentRevokedV1),
    ActivitySeen(ActivitySeenV1),
    ConsentExpire(ConsentExpireV1),
    ConsentEnded(ConsentEndedV1),
    SessionOpened(SessionOpenedV1),
    SessionClosed(SessionClosedV1),
    SessionWipe(SessionWipeV1),
    SessionWiped(SessionWipedV1),
    TokenRevoked(TokenRevokedV1),
    TokenHokUsed(TokenHokUsedV1),
    IncidentReported(IncidentReportedV1),
    CredentialRotated(CredentialRotatedV1),
    DpoNotified(DpoNotifiedV1),
    DeadLetter(DeadLetterV1),
    SweepRequested(SweepRequestedV1),
    SweepFinished(SweepFinishedV1),
    RetentionPurge(RetentionPurgeV1),
    IncidentContain(IncidentContainV1),
    SessionRevoke(SessionRevokeV1),
}

/// Routed subjects (`…wipe.<view>`, `…deadletter.<service>`) match their prefix plus one token.
fn subject_matches(expected: &str, actual: &str) -> bool {
    if expected == subjects::SESSION_WIPE_PREFIX || expected == subjects::DEADLETTER_PREFIX {
        subjects::token_after(actual, expected).is_some()
    } else if [subjects::SESSION_OPENED, subjects::SESSION_CLOSED, subjects::SESSION_WIPED].contains(&expected) {
        // The v1 subject, or the one bound to the publishing view.
        expected == actual || subjects::token_after(actual, expected).is_some()
    } else {
        expected == actual
    }
}

impl LifecycleEvent {
    /// The view a session event speaks for.
    pub fn view_id(&self) -> Option<&str> {
        match self {
            Self::SessionOpened(e) => Some(&e.data.view_id),
            Self::SessionClosed(e) => Some(&e.data.view_id),
            Self::SessionWiped(e) => Some(&e.data.view_id),
            _ => None,
        }
    }

    /// A session event on a view-bound subject must name that view.
    fn check_view_binding(&self, subject: Option<&str>) -> Result<(), DecodeError> {
        match (subject.and_then(subjects::view_of), self.view_id()) {
            (Some(bound), Some(claimed)) if bound != claimed => {
                Err(DecodeError::ViewMismatch { claimed: claimed.to_owned(), bound: bound.to_owned() })
            }
            _ => Ok(()),
        }
    }

    /// The subject a publisher without one (e.g. `POST /v1/events`) sends this event on.
    /// `None` for routed commands, which need their routing token.
    pub fn fixed_subject(&self) -> Option<&'static str> {
        let s = self.subject_or_prefix();
        (s != subjects::SESSION_WIPE_PREFIX && s != subjects::DEADLETTER_PREFIX).then_some(s)
    }
}
