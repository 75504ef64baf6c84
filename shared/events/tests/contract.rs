//! Pins the wire form of every payload (JSON snapshots) and the strictness of decoding.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, TimeZone, Utc};
use custodian_events::*;
use serde_json::json;

const ISSUER: &str = "https://op.example";

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + secs, 0).single().unwrap_or_default()
}

fn envelope<T: EventData>(data: T) -> CloudEvent<T> {
    CloudEvent::with_id("00000000-0000-4000-8000-000000000001", "urn:custodian:test", at(0), data)
}

fn round_trip<T: EventData + std::fmt::Debug + PartialEq + Clone>(data: T) -> serde_json::Value {
    let event = envelope(data);
    let bytes = event.to_json();
    let subject = match T::SUBJECT {
        subjects::SESSION_WIPE_PREFIX => "lifecycle.session.wipe.view-1".to_owned(),
        subjects::DEADLETTER_PREFIX => "lifecycle.deadletter.consent".to_owned(),
        subjects::REPLAYED_PREFIX => "lifecycle.replayed.consent".to_owned(),
        s => s.to_owned(),
    };
    let decoded = LifecycleEvent::decode(Some(&subject), &bytes).unwrap();
    assert_eq!(decoded.id(), event.id);
    assert_eq!(decoded.to_json(), bytes, "re-encoding a decoded event changes nothing");
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn every_payload_keeps_its_wire_form() {
    insta::assert_json_snapshot!(
        "consent_granted",
        round_trip(ConsentGrantedV1 {
            issuer: ISSUER.into(),
            subject: "sub-1".into(),
            platform_id: "tp-1".into(),
            scopes: vec!["openid".into(), "offline_access".into()],
            acr: Some("urn:acr:high".into()),
        })
    );
    insta::assert_json_snapshot!(
        "consent_revoked",
        round_trip(ConsentRevokedV1 {
            issuer: ISSUER.into(),
            subject: "sub-1".into(),
            platform_id: "tp-1".into(),
            reason: RevokeReason::User,
            actor: None,
        })
    );
    insta::assert_json_snapshot!(
        "activity_seen",
        round_trip(ActivitySeenV1 { issuer: ISSUER.into(), subject: "sub-1".into(), platform_id: "tp-1".into() })
    );
    insta::assert_json_snapshot!(
        "consent_expire",
        round_trip(ConsentExpireV1 {
            issuer: ISSUER.into(),
            subject: "sub-1".into(),
            platform_id: "tp-1".into(),
            sweep_id: "sweep-1".into(),
            idle_since: at(-86_400),
        })
    );
    insta::assert_json_snapshot!(
        "consent_ended",
        round_trip(ConsentEndedV1 {
            issuer: ISSUER.into(),
            subject: "sub-1".into(),
            platform_id: "tp-1".into(),
            reason: EndReason::Revoked,
            cause_event_id: "e-1".into(),
        })
    );
    insta::assert_json_snapshot!(
        "session_opened",
        round_trip(SessionOpenedV1 {
            session_id: "s-1".into(),
            view_id: "view-1".into(),
            issuer: ISSUER.into(),
            subject: "sub-1".into(),
            platform_id: "tp-1".into(),
            expires_at: at(3600),
        })
    );
    insta::assert_json_snapshot!(
        "session_closed",
        round_trip(SessionClosedV1 { session_id: "s-1".into(), view_id: "view-1".into() })
    );
    insta::assert_json_snapshot!(
        "session_wipe",
        round_trip(SessionWipeV1 {
            wipe_id: "w-1".into(),
            session_ids: vec!["s-1".into()],
            issuer: ISSUER.into(),
            subject: "sub-1".into(),
            platform_id: "tp-1".into(),
            reason: WipeReason::ConsentEnded,
        })
    );
    insta::assert_json_snapshot!(
        "session_wiped",
        round_trip(SessionWipedV1 { wipe_id: "w-1".into(), view_id: "view-1".into(), session_ids: vec!["s-1".into()] })
    );
    insta::assert_json_snapshot!(
        "token_revoked",
        round_trip(TokenRevokedV1 {
            issuer: ISSUER.into(),
            subject: "sub-1".into(),
            platform_id: "tp-1".into(),
            token_kind: TokenKind::Refresh,
            outcome: RevocationOutcome::AlreadyInvalid,
            cause_event_id: "e-1".into(),
        })
    );
    insta::assert_json_snapshot!(
        "token_hok_used",
        round_trip(TokenHokUsedV1 {
            platform_id: "tp-1".into(),
            caller_identity: "85073003328".into(),
            caller_organisation: Some("nihii:12345".into()),
            subject: Some("sub-1".into()),
            service: "https://services.example/recipe".into(),
            assertion_id: "_a1".into(),
            token_type: HokTokenType::Saml1,
            valid_until: at(600),
            purpose: None,
        })
    );
    insta::assert_json_snapshot!(
        "incident_reported",
        round_trip(IncidentReportedV1 {
            incident_id: "inc-1".into(),
            kind: IncidentKind::PlatformCompromise,
            platform_id: "tp-1".into(),
            subject: None,
            issuer: None,
            summary: "client secret found in a public repository".into(),
            detected_at: at(-60),
            reporter: "soc@example".into(),
        })
    );
    insta::assert_json_snapshot!(
        "credential_rotated",
        round_trip(CredentialRotatedV1 {
            platform_id: "tp-1".into(),
            credential_version: 2,
            not_after_previous: at(0),
        })
    );
    insta::assert_json_snapshot!(
        "dpo_notified",
        round_trip(DpoNotifiedV1 { incident_id: "inc-1".into(), channel: DpoChannel::Email, delivered_at: at(1) })
    );
    insta::assert_json_snapshot!(
        "deadletter",
        round_trip(DeadLetterV1 {
            original_subject: "lifecycle.consent.granted".into(),
            original_id: Some("e-9".into()),
            reason: "invalid data".into(),
            payload_base64: "e30=".into(),
        })
    );
    insta::assert_json_snapshot!(
        "deadletter_replayed",
        round_trip(DeadLetterReplayedV1 {
            dead_letter_id: "dl-1".into(),
            original_subject: "lifecycle.consent.granted".into(),
            original_id: Some("e-9".into()),
            operator: "alice-ops".into(),
            outcome: ReplayOutcome::Refused,
            reason: Some("time is more than 300s past this consumer's clock".into()),
        })
    );
    insta::assert_json_snapshot!(
        "sweep_requested",
        round_trip(SweepRequestedV1 {
            sweep_id: "sweep-1".into(),
            platform_id: Some("tp-1".into()),
            inactivity_days: 90,
            dry_run: true,
            requested_by: "ops:alice".into(),
        })
    );
    insta::assert_json_snapshot!(
        "sweep_finished",
        round_trip(SweepFinishedV1 {
            sweep_id: "sweep-1".into(),
            platform_id: None,
            dry_run: false,
            scanned: 10,
            expired: 10
        })
    );
    insta::assert_json_snapshot!(
        "retention_purge",
        round_trip(RetentionPurgeV1 {
            purge_id: "purge-1".into(),
            history_before: at(-86_400 * 365),
            bus_records_before: at(-86_400 * 14),
        })
    );
    insta::assert_json_snapshot!(
        "session_revoke",
        round_trip(SessionRevokeV1 {
            issuer: "https://op.example".into(),
            subject: "person-1".into(),
            platform_id: "tp-1".into(),
            sid: Some("sid-1".into()),
            cause: SessionEndCause::BackchannelLogout,
            cause_id: "jti-1".into(),
        })
    );
    insta::assert_json_snapshot!(
        "incident_contain",
        round_trip(IncidentContainV1 {
            incident_id: "inc-1".into(),
            platform_id: "tp-1".into(),
            issuer: None,
            subject: None,
        })
    );
}

fn granted_json() -> serde_json::Value {
    serde_json::json!({
        "specversion": "1.0", "id": "e-1", "source": "urn:test", "type": "custodian.consent.granted.v1",
        "time": "2026-11-24T10:00:00Z", "datacontenttype": "application/json",
        "data": {"issuer": ISSUER, "subject": "sub-1", "platform_id": "tp-1", "scopes": ["openid"]}
    })
}

fn decode(value: &serde_json::Value) -> Result<LifecycleEvent, DecodeError> {
    LifecycleEvent::decode(Some(subjects::CONSENT_GRANTED), &serde_json::to_vec(value).unwrap())
}

#[test]
fn a_valid_grant_decodes() {
    let event = decode(&granted_json()).unwrap();
    assert!(matches!(event, LifecycleEvent::ConsentGranted(ref e) if e.data.subject == "sub-1"));
}

#[test]
fn an_unknown_data_field_is_refused_so_no_medical_data_slips_in() {
    let mut v = granted_json();
    v["data"]["diagnosis"] = "J45".into();
    let err = decode(&v).unwrap_err();
    assert!(matches!(err, DecodeError::Data { .. }), "{err}");
    assert!(err.to_string().contains("unknown field `diagnosis`"), "{err}");
}

#[test]
fn an_extension_attribute_is_checked_and_dropped_so_no_free_text_is_kept() {
    let mut v = granted_json();
    v["patientname"] = "x".into();
    let event = decode(&v).expect("an extension, as CloudEvents allows");
    let kept = String::from_utf8(event.to_json()).unwrap();
    assert!(!kept.contains("patientname"), "extensions are not carried on: {kept}");
    let long = "x".repeat(21);
    for (name, value) in [("patient_name", json!("x")), ("patientName", json!("x")), (long.as_str(), json!(1))] {
        let mut v = granted_json();
        v[name] = value;
        let err = decode(&v).unwrap_err();
        assert!(err.to_string().contains("unknown attribute"), "{name}: {err}");
    }
    let mut nested = granted_json();
    nested["patient"] = json!({"name": "x"});
    assert!(decode(&nested).unwrap_err().to_string().contains("string, number or boolean"));
}

#[test]
fn the_optional_attributes_and_the_tracing_extension_are_taken() {
    let mut v = granted_json();
    v.as_object_mut().unwrap().remove("datacontenttype");
    v["dataschema"] = "https://custodian.dev/schemas/consent.granted.v1.json".into();
    v["tracestate"] = "vendor=1".into();
    let LifecycleEvent::ConsentGranted(e) = decode(&v).expect("datacontenttype defaults to JSON") else { panic!() };
    assert_eq!(e.datacontenttype, "application/json");
    assert_eq!(e.dataschema.as_deref(), Some("https://custodian.dev/schemas/consent.granted.v1.json"));
    assert_eq!(e.tracestate.as_deref(), Some("vendor=1"));
    let mut charset = granted_json();
    charset["datacontenttype"] = "application/json; charset=utf-8".into();
    assert!(decode(&charset).is_ok());
    let mut xml = granted_json();
    xml["datacontenttype"] = "application/xml".into();
    assert!(matches!(decode(&xml), Err(DecodeError::DataContentType(_))));
    let mut base64 = granted_json();
    base64.as_object_mut().unwrap().remove("data");
    base64["data_base64"] = "e30=".into();
    assert!(decode(&base64).unwrap_err().to_string().contains("data_base64"));
}

#[test]
fn binary_mode_and_batches_decode_as_structured_events_do() {
    let v = granted_json();
    let headers: Vec<(String, String)> = ["specversion", "id", "source", "type", "time"]
        .iter()
        .map(|a| (format!("Ce-{a}"), v[a].as_str().unwrap().to_owned()))
        .collect();
    let body = serde_json::to_vec(&v["data"]).unwrap();
    let structured = custodian_events::structured_from_binary(
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        Some("application/json"),
        &body,
    )
    .expect("binary");
    let event = LifecycleEvent::decode(Some(subjects::CONSENT_GRANTED), &structured).expect("decodes");
    assert_eq!(event, decode(&v).unwrap());
    let no_version = custodian_events::structured_from_binary([("ce-id", "x")], None, &body).unwrap_err();
    assert!(no_version.to_string().contains("ce-specversion"), "{no_version}");
    let encoded =
        custodian_events::structured_from_binary([("ce-specversion", "1.0"), ("ce-source", "urn:a%20b")], None, b"{}")
            .unwrap();
    assert!(String::from_utf8(encoded).unwrap().contains("urn:a b"), "percent-decoded");

    let batch = serde_json::to_vec(&json!([v, v])).unwrap();
    assert_eq!(LifecycleEvent::decode_batch(&batch).unwrap().len(), 2);
    let mut bad = granted_json();
    bad["data"]["scopes"] = "openid".into();
    let (at, err) = LifecycleEvent::decode_batch(&serde_json::to_vec(&json!([v, bad])).unwrap()).unwrap_err();
    assert_eq!(at, Some(1), "{err}");
}

#[test]
fn a_wrong_type_or_subject_is_refused() {
    let mut v = granted_json();
    v["type"] = "custodian.consent.granted.v9".into();
    assert!(matches!(decode(&v), Err(DecodeError::UnknownType(_))));
    let v = granted_json();
    let err = LifecycleEvent::decode(Some(subjects::CONSENT_REVOKED), &serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(matches!(err, DecodeError::SubjectMismatch { .. }));
}

#[test]
fn wrongly_typed_or_empty_fields_are_refused() {
    let mut v = granted_json();
    v["data"]["scopes"] = "openid".into();
    assert!(matches!(decode(&v), Err(DecodeError::Data { .. })));
    let mut v = granted_json();
    v["data"]["subject"] = "".into();
    assert!(matches!(decode(&v), Err(DecodeError::Field { field: "subject", .. })));
    let mut v = granted_json();
    v["data"]["issuer"] = "op.example".into();
    assert!(matches!(decode(&v), Err(DecodeError::Field { field: "issuer", .. })));
    let mut v = granted_json();
    v["specversion"] = "0.3".into();
    assert!(matches!(decode(&v), Err(DecodeError::SpecVersion(_))));
    let mut v = granted_json();
    v["time"] = "yesterday".into();
    assert!(matches!(decode(&v), Err(DecodeError::Envelope(_))));
    assert!(matches!(LifecycleEvent::decode(None, b"not json"), Err(DecodeError::Envelope(_))));
}

#[test]
fn a_subjectless_event_finds_its_subject_from_its_type() {
    let event = LifecycleEvent::decode(None, &serde_json::to_vec(&granted_json()).unwrap()).unwrap();
    assert_eq!(event.fixed_subject(), Some(subjects::CONSENT_GRANTED));
}

#[test]
fn the_caller_identity_never_shows_in_debug_output() {
    let used = TokenHokUsedV1 {
        platform_id: "tp-1".into(),
        caller_identity: "85073003328".into(),
        caller_organisation: None,
        subject: None,
        service: "svc".into(),
        assertion_id: "_a".into(),
        token_type: HokTokenType::Saml2,
        valid_until: at(0),
        purpose: None,
    };
    assert!(!format!("{used:?}").contains("85073003328"));
}

#[test]
fn derived_ids_are_stable_and_distinct() {
    assert_eq!(derived_event_id("ended", "e-1"), derived_event_id("ended", "e-1"));
    assert_ne!(derived_event_id("ended", "e-1"), derived_event_id("ended", "e-2"));
    assert_ne!(derived_event_id("ended", "e-1"), derived_event_id("wipe", "e-1"));
}

#[test]
fn a_dead_letters_cause_is_read_from_the_reason_the_decoder_or_the_consumer_wrote() {
    use custodian_events::payloads::{AHEAD_OF_CLOCK, DeadLetterCause, GAVE_UP};
    let reason = |v: &serde_json::Value| decode(v).unwrap_err().to_string();
    let cause = |r: &str| DeadLetterV1::cause(r);
    let mut bad_data = granted_json();
    bad_data["data"]["diagnosis"] = "J45".into();
    let mut bad_version = granted_json();
    bad_version["specversion"] = "0.3".into();
    let mut xml = granted_json();
    xml["datacontenttype"] = "application/xml".into();
    for unreadable in [reason(&bad_data), reason(&bad_version), reason(&xml), reason(&json!([1]))] {
        assert_eq!(cause(&unreadable), DeadLetterCause::Unreadable, "{unreadable}");
    }
    let mut elsewhere = granted_json();
    elsewhere["type"] = "custodian.consent.revoked.v1".into();
    let mut unknown = granted_json();
    unknown["type"] = "custodian.nothing.v1".into();
    for misaddressed in [reason(&elsewhere), reason(&unknown)] {
        assert_eq!(cause(&misaddressed), DeadLetterCause::Misaddressed, "{misaddressed}");
    }
    assert_eq!(cause(&format!("{GAVE_UP} 5 deliveries: database locked")), DeadLetterCause::GaveUp);
    assert_eq!(
        cause(&format!("time 2030-01-01T00:00:00Z is more than 300s {AHEAD_OF_CLOCK}")),
        DeadLetterCause::AheadOfClock
    );
    assert_eq!(cause("not a sweep request"), DeadLetterCause::Refused);
}
