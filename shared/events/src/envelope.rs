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

/// Content type of a batch of structured-mode CloudEvents (HTTP batched mode).
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// CloudEvents 1.0, structured JSON mode, as Custodian writes it. Decoding goes through
/// [`LifecycleEvent::decode`], which also takes the optional attributes and extensions.
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
    pub dataschema: Option<String>,
    /// W3C trace context (the CloudEvents distributed-tracing extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
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
            dataschema: None,
            traceparent: None,
            tracestate: None,
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

/// Reads a structured-mode envelope: the contract's attributes, the optional ones
/// (`datacontenttype`, JSON when absent; `dataschema`; `subject`), the tracing extension, and
/// any other extension attribute, which is checked (name and type, as the spec has them) and
/// then dropped: no free text a publisher chose is kept.
struct EnvelopeVisitor;

impl<'de> serde::de::Visitor<'de> for EnvelopeVisitor {
    type Value = RawEvent<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a CloudEvents 1.0 JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error as _;
        let (mut specversion, mut id, mut source, mut event_type, mut time) = (None, None, None, None, None);
        let (mut datacontenttype, mut subject, mut dataschema) = (None, None, None);
        let (mut traceparent, mut tracestate, mut data) = (None, None, None);
        fn once<T, E: serde::de::Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), E> {
            if slot.replace(value).is_some() {
                return Err(E::duplicate_field(name));
            }
            Ok(())
        }
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "specversion" => once(&mut specversion, map.next_value::<String>()?, "specversion")?,
                "id" => once(&mut id, map.next_value::<String>()?, "id")?,
                "source" => once(&mut source, map.next_value::<String>()?, "source")?,
                "type" => once(&mut event_type, map.next_value::<String>()?, "type")?,
                "time" => once(&mut time, map.next_value::<DateTime<Utc>>()?, "time")?,
                "datacontenttype" => once(&mut datacontenttype, map.next_value::<String>()?, "datacontenttype")?,
                "subject" => once(&mut subject, map.next_value::<String>()?, "subject")?,
                "dataschema" => once(&mut dataschema, map.next_value::<String>()?, "dataschema")?,
                "traceparent" => once(&mut traceparent, map.next_value::<String>()?, "traceparent")?,
                "tracestate" => once(&mut tracestate, map.next_value::<String>()?, "tracestate")?,
                "data" => once(&mut data, map.next_value::<&'de serde_json::value::RawValue>()?, "data")?,
                "data_base64" => return Err(A::Error::custom("data_base64 is not accepted: data must be JSON")),
                name if is_extension_name(name) => {
                    let value = map.next_value::<serde_json::Value>()?;
                    if !(value.is_string() || value.is_number() || value.is_boolean()) {
                        return Err(A::Error::custom(format!(
                            "extension attribute {name} must be a string, number or boolean"
                        )));
                    }
                }
                name => {
                    return Err(A::Error::custom(format!(
                        "unknown attribute `{name}` (extension names are 1 to 20 lowercase letters or digits)"
                    )));
                }
            }
        }
        Ok(CloudEvent {
            specversion: specversion.ok_or_else(|| A::Error::missing_field("specversion"))?,
            id: id.ok_or_else(|| A::Error::missing_field("id"))?,
            source: source.ok_or_else(|| A::Error::missing_field("source"))?,
            event_type: event_type.ok_or_else(|| A::Error::missing_field("type"))?,
            time: time.ok_or_else(|| A::Error::missing_field("time"))?,
            datacontenttype: datacontenttype.unwrap_or_else(|| DATA_CONTENT_TYPE.to_owned()),
            subject,
            dataschema,
            traceparent,
            tracestate,
            data: data.ok_or_else(|| A::Error::missing_field("data"))?,
        })
    }
}

/// CloudEvents 1.0 §3.1.1: lowercase letters and digits, at most 20 characters.
fn is_extension_name(name: &str) -> bool {
    (1..=20).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A JSON media type (`application/json`, or any `…+json`), parameters allowed.
fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == DATA_CONTENT_TYPE || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn parse_envelope(bytes: &[u8]) -> Result<RawEvent<'_>, DecodeError> {
    use serde::Deserializer as _;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let raw = de.deserialize_map(EnvelopeVisitor).map_err(DecodeError::Envelope)?;
    de.end().map_err(DecodeError::Envelope)?;
    Ok(raw)
}

impl RawEvent<'_> {
    fn check_attributes(&self) -> Result<(), DecodeError> {
        if self.specversion != SPEC_VERSION {
            return Err(DecodeError::SpecVersion(self.specversion.clone()));
        }
        if !is_json_media_type(&self.datacontenttype) {
            return Err(DecodeError::DataContentType(self.datacontenttype.clone()));
        }
        // Lengths in characters, as the published JSON Schema counts them.
        let chars = |s: &str| s.chars().count();
        if self.id.trim().is_empty() || chars(&self.id) > 256 {
            return Err(DecodeError::field("id", "must be 1 to 256 characters, not only spaces"));
        }
        if self.source.trim().is_empty() || chars(&self.source) > 1024 {
            return Err(DecodeError::field("source", "must be a non-empty URI-reference"));
        }
        if self.dataschema.as_deref().is_some_and(|d| d.trim().is_empty() || chars(d) > 1024) {
            return Err(DecodeError::field("dataschema", "must be a non-empty URI of at most 1024 characters"));
        }
        for (field, value) in [("traceparent", &self.traceparent), ("tracestate", &self.tracestate)] {
            if value.as_deref().is_some_and(|v| chars(v) > 512 || v.chars().any(char::is_control)) {
                return Err(DecodeError::field(field, "must be a W3C trace-context header value"));
            }
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
            // Kept as written by Custodian: one media type for JSON data.
            datacontenttype: DATA_CONTENT_TYPE.to_owned(),
            subject: self.subject,
            dataschema: self.dataschema,
            traceparent: self.traceparent,
            tracestate: self.tracestate,
            data,
        })
    }
}

/// CloudEvents binary mode (HTTP `ce-*` headers; NATS headers the same way): the attributes
/// from the headers, `data` from the body, `datacontenttype` from the content type. Returns
/// the event in structured mode. Header names are case-insensitive; values percent-decoded
/// (HTTP binding §3.1.3.2).
pub fn structured_from_binary<'h>(
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Vec<u8>, DecodeError> {
    let mut envelope = serde_json::Map::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        let Some(attribute) = lower.strip_prefix("ce-") else { continue };
        if attribute == "datacontenttype" || attribute == "data" {
            return Err(DecodeError::field("ce-datacontenttype", "binary mode carries it as Content-Type"));
        }
        let decoded = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| DecodeError::field("ce-*", "a header is not UTF-8 once percent-decoded"))?
            .into_owned();
        if envelope.insert(attribute.to_owned(), serde_json::Value::String(decoded)).is_some() {
            return Err(DecodeError::field("ce-*", format!("ce-{attribute} appears twice")));
        }
    }
    if !envelope.contains_key("specversion") {
        return Err(DecodeError::field("ce-specversion", "binary mode needs the ce-specversion header"));
    }
    let content_type = content_type.unwrap_or(DATA_CONTENT_TYPE);
    if !is_json_media_type(content_type) {
        return Err(DecodeError::DataContentType(content_type.to_owned()));
    }
    envelope.insert("datacontenttype".into(), serde_json::Value::String(DATA_CONTENT_TYPE.into()));
    let data: serde_json::Value = serde_json::from_slice(body).map_err(DecodeError::Envelope)?;
    envelope.insert("data".into(), data);
    serde_json::to_vec(&envelope).map_err(DecodeError::Envelope)
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
                let raw = parse_envelope(bytes)?;
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

            /// Sets the W3C trace context the event travels with (the edge's span).
            pub fn set_traceparent(&mut self, traceparent: Option<String>) {
                match self { $(Self::$variant(e) => e.traceparent = traceparent,)* }
            }

            /// The fixed subject, or the prefix for routed commands (wipe, dead letter).
            pub fn subject_or_prefix(&self) -> &'static str {
                match self { $(Self::$variant(_) => <$ty as EventData>::SUBJECT,)* }
            }

            pub fn to_json(&self) -> Vec<u8> {
                match self { $(Self::$variant(e) => e.to_json(),)* }
            }

            /// HTTP batched mode: a JSON array of structured events, each decoded as
            /// [`Self::decode`] does; the first that does not decode refuses the batch, named
            /// by its position.
            pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Self>, (Option<usize>, DecodeError)> {
                let items: Vec<&serde_json::value::RawValue> =
                    serde_json::from_slice(bytes).map_err(|e| (None, DecodeError::Envelope(e)))?;
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| Self::decode(None, item.get().as_bytes()).map_err(|e| (Some(i), e)))
                    .collect()
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
    DeadLetterReplayed(DeadLetterReplayedV1),
    SweepRequested(SweepRequestedV1),
    SweepFinished(SweepFinishedV1),
    RetentionPurge(RetentionPurgeV1),
    IncidentContain(IncidentContainV1),
    SessionRevoke(SessionRevokeV1),
}

/// Routed subjects (`…wipe.<view>`, `…deadletter.<service>`, `…replayed.<service>`) match their prefix plus one token.
fn subject_matches(expected: &str, actual: &str) -> bool {
    if [subjects::SESSION_WIPE_PREFIX, subjects::DEADLETTER_PREFIX, subjects::REPLAYED_PREFIX].contains(&expected) {
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
        let routed = [subjects::SESSION_WIPE_PREFIX, subjects::DEADLETTER_PREFIX, subjects::REPLAYED_PREFIX];
        (!routed.contains(&s)).then_some(s)
    }
}
