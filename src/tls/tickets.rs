//! TLS session-ticket keys (rustls `ProducesTickets`): tickets are sealed with
//! ChaCha20-Poly1305 under the current key and opened under the current or the previous
//! one, so a ticket stays good for one rotation period after the key that made it is
//! replaced. Keys rotate on the listener's schedule (`session_tickets.rotate`) on their own,
//! or are set from outside: a fleet shares them through the state backend (`tickets`
//! service), so a ticket from one node resumes on any.
//!
//! A ticket is `key id (8 bytes) || nonce (12) || ciphertext || tag (16)`; the key id is
//! bound as associated data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

const ID_LEN: usize = 8;
/// Key material: 8 id bytes and 32 key bytes.
pub const SECRET_LEN: usize = ID_LEN + 32;

/// One ticket key.
pub struct TicketKey {
    id: [u8; ID_LEN],
    aead: LessSafeKey,
    /// The material, to share it.
    secret: [u8; SECRET_LEN],
}

impl TicketKey {
    /// A key from its material (`secret`: id then key).
    pub fn from_secret(secret: &[u8]) -> Option<TicketKey> {
        let secret: [u8; SECRET_LEN] = secret.try_into().ok()?;
        let id = secret[..ID_LEN].try_into().ok()?;
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &secret[ID_LEN..]).ok()?;
        Some(TicketKey {
            id,
            aead: LessSafeKey::new(unbound),
            secret,
        })
    }

    /// A new random key.
    pub fn generate(rng: &SystemRandom) -> Option<TicketKey> {
        let mut secret = [0u8; SECRET_LEN];
        rng.fill(&mut secret).ok()?;
        TicketKey::from_secret(&secret)
    }

    pub fn secret(&self) -> &[u8] {
        &self.secret
    }
}

/// The keys in use: tickets are made under `current`, opened under either.
pub struct KeySet {
    pub current: TicketKey,
    pub previous: Option<TicketKey>,
    /// When `current` was made here (local rotation); shared keys are replaced from outside.
    made: Instant,
}

/// The ticket producer of one https listener.
pub struct Ticketer {
    keys: ArcSwap<KeySet>,
    /// Rotation period; tickets live as long as two.
    rotate: Duration,
    /// Keys come from the fleet: no local rotation.
    shared: std::sync::atomic::AtomicBool,
    rng: SystemRandom,
    rotating: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticketer")
            .field("rotate", &self.rotate)
            .finish()
    }
}

impl Ticketer {
    /// A ticketer with a fresh key, rotated every `rotate` (at least a second).
    pub fn new(rotate: Duration) -> Option<Arc<Ticketer>> {
        let rng = SystemRandom::new();
        let current = TicketKey::generate(&rng)?;
        Some(Arc::new(Ticketer {
            keys: ArcSwap::from_pointee(KeySet {
                current,
                previous: None,
                made: Instant::now(),
            }),
            rotate: rotate.max(Duration::from_secs(1)),
            shared: std::sync::atomic::AtomicBool::new(false),
            rng,
            rotating: std::sync::Mutex::new(()),
        }))
    }

    pub fn rotate_every(&self) -> Duration {
        self.rotate
    }

    /// Use these keys (from the fleet) from now on, and stop rotating locally.
    pub fn set_shared(&self, current: TicketKey, previous: Option<TicketKey>) {
        self.shared
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let same = {
            let now = self.keys.load();
            now.current.id == current.id
                && now.previous.as_ref().map(|k| k.id) == previous.as_ref().map(|k| k.id)
        };
        if !same {
            self.keys.store(Arc::new(KeySet {
                current,
                previous,
                made: Instant::now(),
            }));
        }
    }

    /// Rotate locally again (the fleet's keys are out of reach), from the next ticket on.
    pub fn set_local(&self) {
        self.shared
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Rotate now: a new current key, the current one kept as previous.
    pub fn rotate(&self) {
        let Ok(_one) = self.rotating.lock() else {
            return;
        };
        let Some(fresh) = TicketKey::generate(&self.rng) else {
            return;
        };
        let old = self.keys.load_full();
        let previous = TicketKey::from_secret(old.current.secret());
        self.keys.store(Arc::new(KeySet {
            current: fresh,
            previous,
            made: Instant::now(),
        }));
    }

    /// The id of the current key (tests, logs).
    pub fn current_id(&self) -> [u8; ID_LEN] {
        self.keys.load().current.id
    }

    fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        let keys = self.keys.load();
        let local = !self.shared.load(std::sync::atomic::Ordering::Relaxed);
        if local && keys.made.elapsed() >= self.rotate {
            drop(keys);
            self.rotate();
            return self.keys.load();
        }
        keys
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.rotate.as_secs().saturating_mul(2)).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys();
        let key = &keys.current;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(ID_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let (head, body) = out.split_at_mut(ID_LEN + NONCE_LEN);
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&head[..ID_LEN]),
                body,
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < ID_LEN + NONCE_LEN + 16 {
            return None;
        }
        let (id, rest) = cipher.split_at(ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.keys();
        let key = [Some(&keys.current), keys.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(id), &mut data)
            .ok()?;
        let len = plain.len();
        data.truncate(len);
        Some(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_under_the_current_and_the_previous_key_only() {
        let t = Ticketer::new(Duration::from_secs(3600)).expect("ticketer");
        let ticket = t.encrypt(b"session").expect("ticket");
        assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
        t.rotate();
        assert_eq!(
            t.decrypt(&ticket).as_deref(),
            Some(&b"session"[..]),
            "previous key"
        );
        t.rotate();
        assert_eq!(t.decrypt(&ticket), None, "two rotations later");
        let mut forged = t.encrypt(b"session").expect("ticket");
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(t.decrypt(&forged), None);
        assert_eq!(t.decrypt(b"short"), None);
    }

    #[test]
    fn shared_keys_open_each_others_tickets() {
        let rng = SystemRandom::new();
        let key = TicketKey::generate(&rng).expect("key");
        let (a, b) = (
            Ticketer::new(Duration::from_secs(1)).expect("a"),
            Ticketer::new(Duration::from_secs(1)).expect("b"),
        );
        let other = TicketKey::generate(&rng).expect("key");
        a.set_shared(TicketKey::from_secret(key.secret()).expect("key"), None);
        b.set_shared(
            TicketKey::from_secret(other.secret()).expect("key"),
            TicketKey::from_secret(key.secret()),
        );
        let ticket = a.encrypt(b"s").expect("ticket");
        assert_eq!(b.decrypt(&ticket).as_deref(), Some(&b"s"[..]));
        // Shared keys do not rotate locally, however old; local ones do.
        let age = |t: &Ticketer| {
            let keys = t.keys.load();
            t.keys.store(Arc::new(KeySet {
                current: TicketKey::from_secret(keys.current.secret()).expect("key"),
                previous: None,
                made: Instant::now()
                    .checked_sub(Duration::from_secs(2))
                    .expect("an instant 2 s ago"),
            }));
        };
        age(&a);
        let id = a.current_id();
        a.encrypt(b"s").expect("ticket");
        assert_eq!(a.current_id(), id);
        a.set_local();
        a.encrypt(b"s").expect("ticket");
        assert_ne!(a.current_id(), id, "rotated once local");
    }
}
