//! The hash chain, pure: each entry's hash covers the previous hash, its position, what it
//! records and the digest of the recorded payload, so changing, removing, inserting or
//! reordering any entry breaks every later link. Checkpoints sign (seq, hash) with Ed25519;
//! kept outside the database, they also reveal a truncated tail.

use base64::Engine as _;
use custodian_crypto::lower_hex;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub fn digest(payload: &str) -> String {
    lower_hex(&Sha256::digest(payload.as_bytes()).into())
}

/// `SHA-256(prev_hash ‖ seq ‖ subject ‖ event_id ‖ digest)`, fields length-prefixed so no
/// two different entries serialize alike.
pub fn link_hash(prev_hash: &str, seq: i64, subject: &str, event_id: &str, digest: &str) -> String {
    let mut h = Sha256::new();
    for part in [prev_hash.as_bytes(), &seq.to_be_bytes(), subject.as_bytes(), event_id.as_bytes(), digest.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    lower_hex(&h.finalize().into())
}

pub fn checkpoint_message(seq: i64, hash: &str) -> Vec<u8> {
    format!("custodian-audit-checkpoint:v1:{seq}:{hash}").into_bytes()
}

/// Signs checkpoints.
#[derive(Clone)]
pub struct Signer {
    pub key_id: String,
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("key_id", &self.key_id).field("public_key", &self.public_key_base64()).finish()
    }
}

impl Signer {
    /// From 32 secret bytes, base64.
    pub fn from_base64(key_id: &str, secret: &str) -> Result<Self, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(secret.trim())
            .map_err(|_| "audit.signing_key is not base64".to_owned())?;
        let array: [u8; 32] =
            bytes.as_slice().try_into().map_err(|_| "audit.signing_key must be 32 bytes".to_owned())?;
        Ok(Self { key_id: key_id.to_owned(), key: SigningKey::from_bytes(&array) })
    }

    pub fn generate(key_id: &str) -> Self {
        Self { key_id: key_id.to_owned(), key: SigningKey::from_bytes(&custodian_crypto::random_32()) }
    }

    pub fn sign(&self, seq: i64, hash: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key.sign(&checkpoint_message(seq, hash)).to_bytes())
    }

    pub fn public_key_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key.verifying_key().to_bytes())
    }
}

pub fn verify_signature(public_key_base64: &str, seq: i64, hash: &str, signature_base64: &str) -> bool {
    let decode = |s: &str| base64::engine::general_purpose::STANDARD.decode(s.trim()).ok();
    let (Some(public), Some(signature)) = (decode(public_key_base64), decode(signature_base64)) else { return false };
    let (Ok(public), Ok(signature)) =
        (<[u8; 32]>::try_from(public.as_slice()), <[u8; 64]>::try_from(signature.as_slice()))
    else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(&public) else { return false };
    key.verify(&checkpoint_message(seq, hash), &Signature::from_bytes(&signature)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_digest_is_the_hex_sha256() {
        assert_eq!(digest("custodian"), hex::encode(Sha256::digest(b"custodian")));
    }

    #[test]
    fn every_field_is_in_the_hash() {
        let base = link_hash(GENESIS, 1, "lifecycle.consent.granted", "e1", &digest("{}"));
        assert_ne!(base, link_hash(GENESIS, 2, "lifecycle.consent.granted", "e1", &digest("{}")));
        assert_ne!(base, link_hash(GENESIS, 1, "lifecycle.consent.revoked", "e1", &digest("{}")));
        assert_ne!(base, link_hash(GENESIS, 1, "lifecycle.consent.granted", "e2", &digest("{}")));
        assert_ne!(base, link_hash(GENESIS, 1, "lifecycle.consent.granted", "e1", &digest("{ }")));
        assert_ne!(base, link_hash(&base, 1, "lifecycle.consent.granted", "e1", &digest("{}")));
        // Length prefixes: shifting bytes between fields changes the hash.
        assert_ne!(link_hash(GENESIS, 1, "ab", "c", "d"), link_hash(GENESIS, 1, "a", "bc", "d"));
    }

    #[test]
    fn checkpoints_verify_only_with_the_right_key_and_content() {
        let signer = Signer::generate("k1");
        let sig = signer.sign(10, "abc");
        assert!(verify_signature(&signer.public_key_base64(), 10, "abc", &sig));
        assert!(!verify_signature(&signer.public_key_base64(), 11, "abc", &sig));
        assert!(!verify_signature(&signer.public_key_base64(), 10, "abd", &sig));
        assert!(!verify_signature(&Signer::generate("k2").public_key_base64(), 10, "abc", &sig));
        assert!(!verify_signature("garbage", 10, "abc", &sig));
        let debug = format!("{signer:?}");
        assert!(debug.contains("public_key") && !debug.contains("SigningKey"), "{debug}");
    }
}
