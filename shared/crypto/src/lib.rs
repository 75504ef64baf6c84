//! Cryptography Custodian relies on, in one place.
//!
//! - [`KeyRing`]: envelope encryption for records at rest. Each record gets a fresh 256-bit
//!   data key (DEK); the record is sealed with the DEK and the DEK is wrapped by the ring's
//!   current key-encryption key (KEK). The KEK id is stored beside the ciphertext, so a ring
//!   holding old and new KEKs reads every record while [`KeyRing::rewrap`] moves them to the
//!   new one without touching the record's ciphertext.
//! - [`ReplyKey`] / [`seal_to`]: a sealed box (X25519 + XSalsa20-Poly1305, libsodium's
//!   `crypto_box_seal`) so that a reply carrying a token over NATS can be read only by the
//!   requester that made a one-time key pair for it: tokens never travel in clear.
//!
//! AEAD associated data binds a ciphertext to its row (e.g. the assertion id), so rows cannot
//! be swapped between people.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use zeroize::Zeroizing;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("key ring: {0}")]
    Config(String),
    #[error("record sealed under key {0:?}, which is not in the key ring")]
    UnknownKey(String),
    #[error("record does not decrypt (tampered, swapped, or wrong key)")]
    Undecryptable,
    #[error("malformed public key")]
    BadPublicKey,
}

/// `[vault.keyring]`: the KEKs, by id, and which one seals new records.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRingConfig {
    pub current: String,
    pub keys: Vec<KeyConfig>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub id: String,
    /// 32 random bytes, base64 (`custodian keys new` prints one).
    pub secret: SecretString,
}

impl fmt::Debug for KeyRingConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("KeyRingConfig").field("current", &self.current).field("keys", &ids).finish()
    }
}

impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyConfig").field("id", &self.id).field("secret", &"[redacted]").finish()
    }
}

/// A sealed record as stored: KEK id, wrapped DEK, ciphertext (nonces prefixed).
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    pub key_id: String,
    pub wrapped_key: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("key_id", &self.key_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// Key-encryption keys by id. Cloning is cheap enough (a few keys).
#[derive(Clone)]
pub struct KeyRing {
    current: String,
    keys: BTreeMap<String, Zeroizing<[u8; KEY_LEN]>>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("current", &self.current)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// SHA-256 of `value`, hex: how bearer tokens, cookies and OAuth `state` values are kept and
/// compared (never in clear). The gateway and the vault must agree on it, hence one function.
pub fn sha256_hex(value: &str) -> String {
    use sha2::Digest as _;
    lower_hex(&sha2::Sha256::digest(value.as_bytes()).into())
}

/// Lower-case hex of a SHA-256. `hex::encode` goes char by char through an iterator; a
/// fixed buffer is several times faster, and the consent ledger and the audit chain compute
/// one or two per event.
pub fn lower_hex(bytes: &[u8; 32]) -> String {
    let mut out = [0u8; 64];
    // Cannot fail: the buffer is exactly twice the input.
    let _ = hex::encode_to_slice(bytes, &mut out);
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// 32 random bytes from the OS (e.g. an Ed25519 seed).
pub fn random_32() -> Zeroizing<[u8; KEY_LEN]> {
    let key = XChaCha20Poly1305::generate_key(&mut OsRng);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    out.copy_from_slice(&key);
    out
}

/// A new random key, base64, for a key ring entry.
pub fn generate_key() -> String {
    let key = XChaCha20Poly1305::generate_key(&mut OsRng);
    base64::engine::general_purpose::STANDARD.encode(key)
}

impl KeyRing {
    pub fn from_config(config: &KeyRingConfig) -> Result<Self, CryptoError> {
        let mut keys = BTreeMap::new();
        for key in &config.keys {
            if key.id.is_empty() || key.id.len() > 64 {
                return Err(CryptoError::Config("a key id must be 1 to 64 characters".into()));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(key.secret.expose_secret().trim())
                .map_err(|_| CryptoError::Config(format!("key {:?}: secret is not base64", key.id)))?;
            let bytes = Zeroizing::new(bytes);
            let array: [u8; KEY_LEN] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| CryptoError::Config(format!("key {:?}: secret must be {KEY_LEN} bytes", key.id)))?;
            if keys.insert(key.id.clone(), Zeroizing::new(array)).is_some() {
                return Err(CryptoError::Config(format!("key {:?} listed twice", key.id)));
            }
        }
        if !keys.contains_key(&config.current) {
            return Err(CryptoError::Config(format!("current key {:?} is not among the keys", config.current)));
        }
        Ok(Self { current: config.current.clone(), keys })
    }

    /// A ring with one random key, for tests and throwaway local runs.
    pub fn ephemeral() -> Self {
        let mut keys = BTreeMap::new();
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut array = [0u8; KEY_LEN];
        array.copy_from_slice(&key);
        keys.insert("ephemeral".to_owned(), Zeroizing::new(array));
        Self { current: "ephemeral".to_owned(), keys }
    }

    pub fn current_key_id(&self) -> &str {
        &self.current
    }

    fn kek(&self, id: &str) -> Result<XChaCha20Poly1305, CryptoError> {
        let key = self.keys.get(id).ok_or_else(|| CryptoError::UnknownKey(id.to_owned()))?;
        Ok(XChaCha20Poly1305::new(key.as_ref().into()))
    }

    /// Seals `plaintext` under a fresh data key wrapped by the current KEK.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Envelope {
        let dek = Zeroizing::new(XChaCha20Poly1305::generate_key(&mut OsRng));
        let ciphertext = encrypt(&XChaCha20Poly1305::new(&dek), plaintext, aad);
        let wrapped_key = self.wrap(&self.current, &dek[..]);
        Envelope { key_id: self.current.clone(), wrapped_key, ciphertext }
    }

    pub fn open(&self, envelope: &Envelope, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let dek = self.unwrap(envelope)?;
        let cipher = XChaCha20Poly1305::new_from_slice(&dek).map_err(|_| CryptoError::Undecryptable)?;
        decrypt(&cipher, &envelope.ciphertext, aad)
    }

    /// The same record with its data key wrapped by the current KEK; `None` if it already is.
    pub fn rewrap(&self, envelope: &Envelope) -> Result<Option<Envelope>, CryptoError> {
        if envelope.key_id == self.current {
            return Ok(None);
        }
        let dek = self.unwrap(envelope)?;
        Ok(Some(Envelope {
            key_id: self.current.clone(),
            wrapped_key: self.wrap(&self.current, &dek),
            ciphertext: envelope.ciphertext.clone(),
        }))
    }

    fn wrap(&self, kek_id: &str, dek: &[u8]) -> Vec<u8> {
        // The current key is always in the ring (checked at construction).
        match self.kek(kek_id) {
            Ok(kek) => encrypt(&kek, dek, kek_id.as_bytes()),
            Err(_) => unreachable!("the ring's current key is always present"),
        }
    }

    fn unwrap(&self, envelope: &Envelope) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let kek = self.kek(&envelope.key_id)?;
        decrypt(&kek, &envelope.wrapped_key, envelope.key_id.as_bytes())
    }
}

fn encrypt(cipher: &XChaCha20Poly1305, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
    out.extend_from_slice(&nonce);
    match cipher.encrypt(&nonce, Payload { msg: plaintext, aad }) {
        Ok(sealed) => out.extend_from_slice(&sealed),
        // Only fails for messages beyond 256 GiB.
        Err(_) => unreachable!("XChaCha20-Poly1305 encryption of a small record cannot fail"),
    }
    out
}

fn decrypt(cipher: &XChaCha20Poly1305, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(CryptoError::Undecryptable);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Undecryptable)?;
    cipher
        .decrypt(&XNonce::from(nonce), Payload { msg: body, aad })
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Undecryptable)
}

/// A one-time key pair a requester makes to receive one sealed reply.
pub struct ReplyKey(crypto_box::SecretKey);

impl fmt::Debug for ReplyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReplyKey([redacted])")
    }
}

impl Default for ReplyKey {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyKey {
    pub fn new() -> Self {
        Self(crypto_box::SecretKey::generate(&mut OsRng))
    }

    /// The public half, base64, to put in the request.
    pub fn public_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0.public_key().as_bytes())
    }

    /// Opens a reply sealed with [`seal_to`] for this key.
    pub fn open(&self, sealed_base64: &str) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let sealed =
            base64::engine::general_purpose::STANDARD.decode(sealed_base64).map_err(|_| CryptoError::Undecryptable)?;
        self.0.unseal(&sealed).map(Zeroizing::new).map_err(|_| CryptoError::Undecryptable)
    }
}

/// Seals `plaintext` so only the holder of the secret half of `public_base64` reads it.
pub fn seal_to(public_base64: &str, plaintext: &[u8]) -> Result<String, CryptoError> {
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(public_base64).map_err(|_| CryptoError::BadPublicKey)?;
    let array: [u8; 32] = bytes.as_slice().try_into().map_err(|_| CryptoError::BadPublicKey)?;
    let public = crypto_box::PublicKey::from(array);
    let sealed = public.seal(&mut OsRng, plaintext).map_err(|_| CryptoError::BadPublicKey)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sha256_hex_is_the_lower_hex_of_the_digest() {
        use sha2::Digest as _;
        for input in ["", "custodian", "ÿ\u{0}é"] {
            assert_eq!(sha256_hex(input), hex::encode(sha2::Sha256::digest(input.as_bytes())));
        }
        assert_eq!(lower_hex(&[0xab; 32]), "ab".repeat(32));
    }

    fn ring(current: &str, ids: &[(&str, &str)]) -> KeyRing {
        KeyRing::from_config(&KeyRingConfig {
            current: current.to_owned(),
            keys: ids.iter().map(|(id, secret)| KeyConfig { id: (*id).into(), secret: (*secret).into() }).collect(),
        })
        .unwrap()
    }

    #[test]
    fn seal_open_round_trip_with_fresh_data_keys() {
        let ring = KeyRing::ephemeral();
        let a = ring.seal(b"refresh-token-value", b"row-1");
        let b = ring.seal(b"refresh-token-value", b"row-1");
        assert_ne!(a.wrapped_key, b.wrapped_key, "each record has its own data key");
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_eq!(ring.open(&a, b"row-1").unwrap().as_slice(), b"refresh-token-value");
        assert!(!a.ciphertext.windows(7).any(|w| w == b"refresh"), "no plaintext in the ciphertext");
    }

    #[test]
    fn swapped_rows_and_tampering_are_refused() {
        let ring = KeyRing::ephemeral();
        let mut sealed = ring.seal(b"secret", b"row-1");
        assert_eq!(ring.open(&sealed, b"row-2"), Err(CryptoError::Undecryptable));
        let last = sealed.ciphertext.len() - 1;
        sealed.ciphertext[last] ^= 1;
        assert_eq!(ring.open(&sealed, b"row-1"), Err(CryptoError::Undecryptable));
    }

    #[test]
    fn rotation_rewraps_without_touching_the_ciphertext() {
        let (k1, k2) = (generate_key(), generate_key());
        let old = ring("k1", &[("k1", &k1)]);
        let both = ring("k2", &[("k1", &k1), ("k2", &k2)]);
        let only_new = ring("k2", &[("k2", &k2)]);
        let sealed = old.seal(b"token", b"aad");
        assert_eq!(only_new.open(&sealed, b"aad"), Err(CryptoError::UnknownKey("k1".into())));
        let moved = both.rewrap(&sealed).unwrap().unwrap();
        assert_eq!(moved.key_id, "k2");
        assert_eq!(moved.ciphertext, sealed.ciphertext);
        assert_eq!(only_new.open(&moved, b"aad").unwrap().as_slice(), b"token");
        assert!(both.rewrap(&moved).unwrap().is_none(), "already under the current key");
    }

    #[test]
    fn bad_configurations_say_what_is_wrong() {
        let cfg = |current: &str, secret: &str| KeyRingConfig {
            current: current.into(),
            keys: vec![KeyConfig { id: "k1".into(), secret: secret.into() }],
        };
        let err = KeyRing::from_config(&cfg("k1", "not base64!")).unwrap_err();
        assert!(err.to_string().contains("not base64"), "{err}");
        let err = KeyRing::from_config(&cfg("k1", "c2hvcnQ=")).unwrap_err();
        assert!(err.to_string().contains("32 bytes"), "{err}");
        let err = KeyRing::from_config(&cfg("k9", &generate_key())).unwrap_err();
        assert!(err.to_string().contains("k9"), "{err}");
        let debug = format!("{:?}", cfg("k1", "c2VjcmV0LXZhbHVl"));
        assert!(!debug.contains("c2VjcmV0LXZhbHVl"), "{debug}");
    }

    #[test]
    fn sealed_replies_open_only_with_the_requesters_key() {
        let key = ReplyKey::new();
        let sealed = seal_to(&key.public_base64(), b"access-token").unwrap();
        assert_eq!(key.open(&sealed).unwrap().as_slice(), b"access-token");
        assert_eq!(ReplyKey::new().open(&sealed), Err(CryptoError::Undecryptable));
        assert_eq!(seal_to("AAAA", b"x"), Err(CryptoError::BadPublicKey));
    }
}
