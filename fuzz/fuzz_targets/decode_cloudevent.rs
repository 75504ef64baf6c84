//! Any bytes, with or without a subject: `LifecycleEvent::decode` returns an event or an
//! error, never panics; a decoded event re-encodes and decodes to itself.
#![no_main]

use custodian_events::LifecycleEvent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for subject in [None, Some("lifecycle.consent.granted"), Some("lifecycle.session.wipe.view-1")] {
        if let Ok(event) = LifecycleEvent::decode(subject, data) {
            let again = LifecycleEvent::decode(subject, &event.to_json()).expect("a decoded event re-decodes");
            assert_eq!(again.id(), event.id());
        }
    }
});
