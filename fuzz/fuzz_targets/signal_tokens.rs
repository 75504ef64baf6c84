//! Any bytes as a compact JWS and as its claims: the header check, the standard claim
//! checks, the logout-token and security-event-token checks return an answer, never panic.
#![no_main]

use custodian_gateway::auth::{check_standard_claims, signed_alg};
use custodian_gateway::routes::signals::{logout_token_claims, security_event_claims};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = signed_alg(&text);
    if let Ok(claims) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = check_standard_claims(&claims, "https://op.example", &["tp-1"], 1_795_000_000);
        let _ = check_standard_claims(&claims, "https://op.example", &["tp-1"], i64::MAX);
        let _ = check_standard_claims(&claims, "https://op.example", &["tp-1"], i64::MIN);
        for typ in [None, Some("logout+jwt"), Some("secevent+jwt")] {
            let _ = logout_token_claims(typ, &claims);
            let _ = security_event_claims(typ, &claims);
        }
    }
});
