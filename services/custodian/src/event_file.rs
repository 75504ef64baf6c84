//! The events of a file given to `custodian events publish`: one CloudEvent (a JSON object,
//! laid out as you like), a JSON array of them, or JSON Lines (one per line, blank lines
//! skipped). Every event is checked before any is published, exactly as the consumers decode
//! it, so a file with one bad event publishes nothing. Each event is published as its own
//! bytes: what the audit chain digests is what the file said.

use bytes::Bytes;
use custodian_bus::Outgoing;
use custodian_events::LifecycleEvent;
use serde_json::value::RawValue;

/// How many refusals are listed before "… and N more".
const LISTED: usize = 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventFileError {
    #[error("the file holds no event")]
    Empty,
    #[error("not a JSON array of events: {0}")]
    NotAnArray(String),
    #[error("{count} of {total} event(s) refused; nothing was published:\n{details}")]
    Refused { count: usize, total: usize, details: String },
}

/// The file's events, ready to publish, in file order.
pub fn events_of(bytes: &[u8]) -> Result<Vec<Outgoing>, EventFileError> {
    let text = bytes.trim_ascii();
    if text.is_empty() {
        return Err(EventFileError::Empty);
    }
    // (where in the file, the event's bytes)
    let items: Vec<(Option<String>, Vec<u8>)> = if text.starts_with(b"[") {
        let elements: Vec<Box<RawValue>> =
            serde_json::from_slice(text).map_err(|e| EventFileError::NotAnArray(e.to_string()))?;
        elements
            .iter()
            .enumerate()
            .map(|(i, raw)| (Some(format!("element {}", i + 1)), raw.get().as_bytes().to_vec()))
            .collect()
    } else if serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok() {
        vec![(None, text.to_vec())]
    } else {
        text.split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.trim_ascii().is_empty())
            .map(|(n, line)| (Some(format!("line {}", n + 1)), line.trim_ascii().to_vec()))
            .collect()
    };
    if items.is_empty() {
        return Err(EventFileError::Empty);
    }
    let total = items.len();
    let (mut events, mut refusals) = (Vec::with_capacity(total), Vec::new());
    for (at, bytes) in items {
        let here = at.map_or_else(String::new, |at| format!("{at}: "));
        match LifecycleEvent::decode(None, &bytes) {
            Err(e) => refusals.push(format!("{here}{e}")),
            Ok(event) => match event.fixed_subject() {
                None => refusals.push(format!(
                    "{here}{} is a routed command (a view's wipe, a dead letter); it is not published from the CLI",
                    event.event_type()
                )),
                Some(subject) => events.push(Outgoing {
                    subject: subject.to_owned(),
                    event_id: event.id().to_owned(),
                    traceparent: event.traceparent().map(str::to_owned),
                    payload: Bytes::from(bytes),
                }),
            },
        }
    }
    if refusals.is_empty() {
        return Ok(events);
    }
    Err(EventFileError::Refused { count: refusals.len(), total, details: listed(&refusals) })
}

/// The first [`LISTED`] of `lines`, indented one per line, then "… and N more".
pub fn listed(lines: &[String]) -> String {
    let mut shown: Vec<String> = lines.iter().take(LISTED).map(|line| format!("  {line}")).collect();
    if lines.len() > LISTED {
        shown.push(format!("  … and {} more", lines.len() - LISTED));
    }
    shown.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(subject: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"grant-{subject}","source":"urn:test","type":"custodian.consent.granted.v1","time":"2026-11-24T10:00:00Z","datacontenttype":"application/json","data":{{"issuer":"https://op.example","subject":"{subject}","platform_id":"tp","scopes":["openid"],"acr":null}}}}"#
        )
    }

    fn ids(events: &[Outgoing]) -> Vec<&str> {
        events.iter().map(|e| e.event_id.as_str()).collect()
    }

    #[test]
    fn one_event_laid_out_over_many_lines_is_one_event_with_its_bytes_kept() {
        let pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&grant("ann")).unwrap()).unwrap();
        let events = events_of(format!("\n{pretty}\n").as_bytes()).unwrap();
        assert_eq!(ids(&events), ["grant-ann"]);
        assert_eq!(events[0].subject, "lifecycle.consent.granted");
        assert_eq!(events[0].payload, pretty.as_bytes());
    }

    #[test]
    fn an_array_and_json_lines_give_their_events_in_order() {
        let array = format!("[{}, {}]", grant("ann"), grant("bob"));
        assert_eq!(ids(&events_of(array.as_bytes()).unwrap()), ["grant-ann", "grant-bob"]);
        let lines = format!("{}\n\n{}\r\n{}\n", grant("ann"), grant("bob"), grant("cy"));
        let events = events_of(lines.as_bytes()).unwrap();
        assert_eq!(ids(&events), ["grant-ann", "grant-bob", "grant-cy"]);
        assert_eq!(events[1].payload, grant("bob").as_bytes());
    }

    #[test]
    fn one_bad_event_refuses_the_file_and_names_where_and_why() {
        let unknown_field = grant("bob").replace(r#""acr":null"#, r#""acr":null,"diagnosis":"flu""#);
        let lines = format!("{}\n{unknown_field}\nnot json\n{}\n", grant("ann"), grant("cy"));
        let Err(EventFileError::Refused { count, total, details }) = events_of(lines.as_bytes()) else {
            panic!("a file with bad lines must be refused");
        };
        assert_eq!((count, total), (2, 4));
        assert!(details.contains("line 2: ") && details.contains("diagnosis"), "{details}");
        assert!(details.contains("line 3: "), "{details}");
        assert!(!details.contains("line 1: ") && !details.contains("line 4: "), "{details}");
    }

    #[test]
    fn an_empty_file_or_a_broken_array_is_refused() {
        assert_eq!(events_of(b" \n\n").unwrap_err(), EventFileError::Empty);
        assert_eq!(events_of(b"[]").unwrap_err(), EventFileError::Empty);
        assert!(matches!(events_of(b"[{\"a\":1},").unwrap_err(), EventFileError::NotAnArray(_)));
    }

    #[test]
    fn past_twenty_refusals_the_rest_are_counted() {
        let lines = "{}\n".repeat(25);
        let Err(EventFileError::Refused { count, details, .. }) = events_of(lines.as_bytes()) else {
            panic!("refused");
        };
        assert_eq!(count, 25);
        assert_eq!(details.lines().count(), 21);
        assert!(details.ends_with("… and 5 more"), "{details}");
    }
}
