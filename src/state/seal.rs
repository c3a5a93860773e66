//! Data at rest in the shared state, sealed: ChaCha20-Poly1305 under the fleet's 32-byte
//! key from `AUTOLB_ACME_KEY` (base64 or 64 hex digits; the same on every node), a fresh
//! nonce per seal, the entry's name bound as associated data. Used for the ACME account,
//! certificates and keys and for the TLS session-ticket keys a fleet shares.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// The environment variable holding the 32-byte key.
pub const KEY_ENV: &str = "AUTOLB_ACME_KEY";

/// Why data could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{KEY_ENV} is unset or not 32 bytes in base64 or hex (e.g. `openssl rand -base64 32`; the same on every node)")]
    Key,
    #[error("no randomness for a nonce")]
    Random,
    #[error("sealing failed")]
    Seal,
    #[error("shared data {0:?} cannot be opened: is {KEY_ENV} the same on every node?")]
    Open(String),
}

/// The sealing key of the fleet.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl Sealer {
    /// The key of `KEY_ENV`.
    pub fn from_env() -> Result<Sealer, SealError> {
        let text = std::env::var(KEY_ENV).map_err(|_| SealError::Key)?;
        Sealer::from_text(&text)
    }

    /// A key written as base64 or 64 hex digits.
    pub fn from_text(text: &str) -> Result<Sealer, SealError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| SealError::Key)?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| SealError::Key)?
        };
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| SealError::Key)?;
        Ok(Sealer {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// `nonce || ciphertext+tag`, base64; `name` is bound as associated data.
    pub fn seal(&self, name: &str, plain: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut data = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Seal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// What `seal(name, ...)` sealed; an error for another key or name, or altered data.
    pub fn open(&self, name: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let bad = || SealError::Open(name.to_string());
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| bad())?;
        if bytes.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut data)
            .map_err(|_| bad())?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_its_key_and_name() {
        let a = Sealer::from_text(&"01".repeat(32)).expect("hex key");
        let b = Sealer::from_text(&base64::engine::general_purpose::STANDARD.encode([2u8; 32]))
            .expect("base64 key");
        assert!(Sealer::from_text("short").is_err());
        let sealed = a.seal("acme:web", b"secret").expect("seal");
        assert!(!sealed.contains("secret"));
        assert_eq!(a.open("acme:web", &sealed).expect("open"), b"secret");
        assert!(a.open("acme:other", &sealed).is_err(), "bound to its name");
        assert!(b.open("acme:web", &sealed).is_err(), "another key");
        assert_ne!(
            sealed,
            a.seal("acme:web", b"secret").expect("seal"),
            "fresh nonce"
        );
    }
}
