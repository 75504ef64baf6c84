//! Ids under a deployment key (a test binary of its own: the key is process-wide).

use custodian_events::{derived_event_id, ids_are_keyed, install_id_key, outside_event_id};

#[test]
fn under_a_deployment_key_ids_are_stable_distinct_and_not_the_public_derivation() {
    let public = derived_event_id("consent.ended", "grant-1");
    let public_outside = outside_event_id("platform:p", "e-1");
    assert!(!ids_are_keyed());

    assert!(install_id_key([7; 32]));
    assert!(ids_are_keyed());
    let keyed = derived_event_id("consent.ended", "grant-1");
    assert_ne!(keyed, public, "no one without the key computes the id");
    assert_eq!(keyed, derived_event_id("consent.ended", "grant-1"), "the same work, the same id");
    assert_ne!(keyed, derived_event_id("consent.ended", "grant-2"));
    assert_ne!(keyed, derived_event_id("consent.endedgrant-1", ""), "parts are delimited");
    assert_ne!(outside_event_id("platform:p", "e-1"), public_outside);
    assert_ne!(
        outside_event_id("consent.ended", "grant-1"),
        keyed,
        "an outside id never equals a derived one of the same words"
    );
    let parsed = uuid::Uuid::parse_str(&keyed).expect("a UUID");
    assert_eq!(parsed.get_version_num(), 8, "a custom (v8) UUID, not a v5 an outsider could make");

    // A process serves one deployment: the first key stays.
    assert!(!install_id_key([8; 32]));
    assert_eq!(keyed, derived_event_id("consent.ended", "grant-1"));
}
