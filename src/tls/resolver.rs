//! SNI certificate selection: a `CertStore` built from a listener's pairs (exact names, then
//! `*.` wildcards one label deep, else the first pair unless `strict_sni`), held by the
//! resolver behind an `ArcSwap` so a reload swaps it without touching open connections, and
//! the OCSP staples attached to its certificates (kept across swaps by leaf certificate).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use super::certs::LoadedPair;

/// The certificates of one listener, indexed by name.
pub struct CertStore {
    certs: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, Vec<usize>>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, Vec<usize>>,
    strict: bool,
}

impl CertStore {
    /// Index `pairs` (in order: earlier pairs win a shared name).
    pub fn new(pairs: &[LoadedPair], strict: bool) -> CertStore {
        let mut store = CertStore {
            certs: Vec::with_capacity(pairs.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            strict,
        };
        for (i, pair) in pairs.iter().enumerate() {
            store.certs.push(pair.key.clone());
            for name in &pair.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(suffix) => (&mut store.wildcard, suffix),
                    None => (&mut store.exact, name.as_str()),
                };
                let list = map.entry(key.to_string()).or_default();
                if !list.contains(&i) {
                    list.push(i);
                }
            }
        }
        store
    }

    /// The certificate for `sni`, among those whose key can sign with one of `schemes`
    /// (an RSA and an ECDSA certificate may share names). `None` refuses the handshake.
    pub fn resolve(
        &self,
        sni: Option<&str>,
        schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let lower;
            let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                lower = name.to_ascii_lowercase();
                lower.as_str()
            } else {
                name
            };
            let name = name.trim_end_matches('.');
            if let Some(found) = self.exact.get(name).and_then(|l| self.pick(l, schemes)) {
                return Some(found);
            }
            let wildcard = name
                .split_once('.')
                .filter(|(label, rest)| !label.is_empty() && !rest.is_empty())
                .and_then(|(_, rest)| self.wildcard.get(rest))
                .and_then(|l| self.pick(l, schemes));
            if wildcard.is_some() {
                return wildcard;
            }
        }
        if self.strict {
            return None;
        }
        // The default: the first pair, or the first whose key the client can use.
        let all: Vec<usize> = (0..self.certs.len()).collect();
        self.pick(&all, schemes)
    }

    /// The same store with `staples` (OCSP responses by leaf certificate DER) attached, and
    /// no staple on a certificate that has none there.
    fn stapled(&self, staples: &HashMap<Vec<u8>, Arc<[u8]>>) -> CertStore {
        let certs = self
            .certs
            .iter()
            .map(|ck| {
                let staple = ck
                    .end_entity_cert()
                    .ok()
                    .and_then(|leaf| staples.get(leaf.as_ref()));
                if ck.ocsp.as_deref() == staple.map(|s| &s[..]) {
                    return ck.clone();
                }
                let mut with = CertifiedKey::new(ck.cert.clone(), ck.key.clone());
                with.ocsp = staple.map(|s| s.to_vec());
                Arc::new(with)
            })
            .collect();
        CertStore {
            certs,
            exact: self.exact.clone(),
            wildcard: self.wildcard.clone(),
            strict: self.strict,
        }
    }

    fn pick(&self, candidates: &[usize], schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let usable = candidates
            .iter()
            .filter_map(|&i| self.certs.get(i))
            .find(|ck| ck.key.choose_scheme(schemes).is_some());
        usable
            .or_else(|| candidates.first().and_then(|&i| self.certs.get(i)))
            .cloned()
    }
}

/// Certificates that do not come from the listener's files (ACME): asked before the store
/// for the exact name, and when the store has nothing for the client.
pub trait CertSource: Send + Sync {
    /// The certificate for `sni` (`exact`: only one naming it; else the default), or the
    /// validation certificate of a pending tls-alpn-01 challenge when `acme_tls` (the client
    /// offered ALPN `acme-tls/1`).
    fn resolve(&self, sni: Option<&str>, exact: bool, acme_tls: bool) -> Option<Arc<CertifiedKey>>;
}

/// rustls's certificate resolver for one listener.
pub struct SniResolver {
    store: ArcSwap<CertStore>,
    /// Set once at start-up when the listener has `tls.acme`.
    source: std::sync::OnceLock<Arc<dyn CertSource>>,
    /// OCSP staples by leaf certificate DER; the lock also orders swaps and restaples.
    staples: Mutex<HashMap<Vec<u8>, Arc<[u8]>>>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("certificates", &self.store.load().certs.len())
            .finish()
    }
}

impl SniResolver {
    pub fn new(store: CertStore) -> SniResolver {
        SniResolver {
            store: ArcSwap::from_pointee(store),
            source: std::sync::OnceLock::new(),
            staples: Mutex::new(HashMap::new()),
        }
    }

    /// Serve `source`'s certificates too (once; a second call is ignored).
    pub fn set_source(&self, source: Arc<dyn CertSource>) {
        let _ = self.source.set(source);
    }

    /// New handshakes use `store`; connections already open keep their certificate.
    /// The staples held are attached to the new store's certificates.
    pub fn swap(&self, store: CertStore) {
        match self.staples.lock() {
            Ok(staples) => self.store.store(Arc::new(store.stapled(&staples))),
            Err(_) => self.store.store(Arc::new(store)),
        }
    }

    /// Staple `ocsp` (a DER OCSP response) to the certificate whose leaf is `leaf` from the
    /// next handshake on; `None` serves it without a staple.
    pub fn staple(&self, leaf: &[u8], ocsp: Option<Arc<[u8]>>) {
        let Ok(mut staples) = self.staples.lock() else {
            return;
        };
        match ocsp {
            Some(der) => staples.insert(leaf.to_vec(), der),
            None => staples.remove(leaf),
        };
        let current = self.store.load();
        self.store.store(Arc::new(current.stapled(&staples)));
    }

    /// The certificate chains served now (leaf first), from the listener's files.
    pub fn chains(&self) -> Vec<Vec<rustls_pki_types::CertificateDer<'static>>> {
        self.store
            .load()
            .certs
            .iter()
            .map(|ck| ck.cert.clone())
            .collect()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let source = self.source.get();
        if let Some(source) = source {
            let acme_tls = hello.alpn().is_some_and(|mut offered| {
                offered.any(|p| p == crate::config::ACME_TLS_ALPN.as_bytes())
            });
            let found = source.resolve(hello.server_name(), true, acme_tls);
            if found.is_some() || acme_tls {
                return found;
            }
        }
        let store = self.store.load();
        let found = store
            .resolve(hello.server_name(), hello.signature_schemes())
            .or_else(|| {
                let default = !store.strict && store.certs.is_empty();
                source.filter(|_| default)?.resolve(None, false, false)
            });
        if found.is_none() {
            tracing::debug!(sni = ?hello.server_name(), "no certificate for this name: handshake refused");
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> LoadedPair {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signing = crate::tls::provider()
            .key_provider
            .load_private_key(der)
            .expect("signing key");
        LoadedPair {
            key: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)),
            names: names.iter().map(|s| s.to_string()).collect(),
            not_before: 0,
            not_after: i64::MAX,
            not_before_text: String::new(),
            not_after_text: String::new(),
            fingerprint: 0,
            cert_path: names[0].into(),
        }
    }

    const SCHEMES: &[SignatureScheme] = &[SignatureScheme::ECDSA_NISTP256_SHA256];

    fn which(store: &CertStore, pairs: &[LoadedPair], sni: Option<&str>) -> Option<usize> {
        let got = store.resolve(sni, SCHEMES)?;
        pairs.iter().position(|p| Arc::ptr_eq(&p.key, &got))
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let pairs = vec![
            pair(&["a.example"]),
            pair(&["b.example", "www.b.example"]),
            pair(&["*.wild.example"]),
        ];
        let store = CertStore::new(&pairs, false);
        assert_eq!(which(&store, &pairs, Some("a.example")), Some(0));
        assert_eq!(which(&store, &pairs, Some("WWW.B.Example")), Some(1));
        assert_eq!(which(&store, &pairs, Some("x.wild.example")), Some(2));
        assert_eq!(which(&store, &pairs, Some("x.wild.example.")), Some(2));
        // A wildcard covers exactly one label.
        assert_eq!(which(&store, &pairs, Some("a.b.wild.example")), Some(0));
        assert_eq!(which(&store, &pairs, Some("wild.example")), Some(0));
        assert_eq!(which(&store, &pairs, Some("other.test")), Some(0));
        assert_eq!(which(&store, &pairs, None), Some(0));
    }

    #[test]
    fn strict_refuses_unknown_and_missing_names() {
        let pairs = vec![pair(&["a.example"]), pair(&["*.wild.example"])];
        let store = CertStore::new(&pairs, true);
        assert_eq!(which(&store, &pairs, Some("a.example")), Some(0));
        assert_eq!(which(&store, &pairs, Some("x.wild.example")), Some(1));
        assert!(store.resolve(Some("other.test"), SCHEMES).is_none());
        assert!(store.resolve(None, SCHEMES).is_none());
    }

    #[test]
    fn earlier_pairs_win_a_shared_name() {
        let pairs = vec![pair(&["a.example"]), pair(&["a.example", "c.example"])];
        let store = CertStore::new(&pairs, false);
        assert_eq!(which(&store, &pairs, Some("a.example")), Some(0));
        assert_eq!(which(&store, &pairs, Some("c.example")), Some(1));
    }
}
