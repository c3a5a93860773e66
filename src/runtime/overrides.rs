//! Operator overrides of backends, HAProxy's `set server`: a state (`ready`, `drain`,
//! `maint`) and a weight per backend, set through `POST /backends/state`, applied when the
//! snapshot is built, and kept across reloads while the backend remains (a weight override
//! ends when a reload changes that backend's configured weight: the newer word wins).

use std::collections::{BTreeMap, HashMap};

use super::ManagedBackend;
use crate::backend::BackendMode;
use crate::config::Config;

/// Weights an override may set (the config's range).
pub const WEIGHTS: std::ops::RangeInclusive<u32> = 1..=256;

/// One backend's override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Override {
    pub mode: BackendMode,
    /// The weight set, and the configured weight it replaced.
    pub weight: Option<(u32, u32)>,
}

/// Why an override cannot be set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OverrideError {
    #[error("no pool \"{0}\"")]
    UnknownPool(String),
    #[error("pool \"{pool}\" has no backend \"{backend}\" (its backends: {known})")]
    UnknownBackend {
        pool: String,
        backend: String,
        known: String,
    },
    #[error(
        "weight must be between 1 and 256, got {0} (use \"state\": \"drain\" to stop new traffic)"
    )]
    Weight(u64),
}

/// Every override, by pool and backend address (as written in the config, or the
/// instance's address for an autoscaled pool).
#[derive(Debug, Default)]
pub struct Overrides(BTreeMap<String, BTreeMap<String, Override>>);

/// A backend's configured weight (an autoscaled instance's from its discovery, else 1),
/// if the backend exists.
fn configured_weight(
    config: &Config,
    managed: &HashMap<String, Vec<ManagedBackend>>,
    pool: &str,
    backend: &str,
) -> Option<u32> {
    let p = config.pools.iter().find(|p| p.name == pool)?;
    p.backends
        .iter()
        .find(|b| b.address == backend)
        .map(|b| b.weight)
        .or_else(|| {
            managed
                .get(pool)?
                .iter()
                .find(|m| m.address == backend)
                .map(|m| m.weight)
        })
}

impl Overrides {
    pub fn get(&self, pool: &str, backend: &str) -> Option<&Override> {
        self.0.get(pool)?.get(backend)
    }

    /// Set `backend`'s state and, when given, its weight; returns the previous override.
    /// A weight equal to the configured one ends the weight override.
    pub fn set(
        &mut self,
        config: &Config,
        managed: &HashMap<String, Vec<ManagedBackend>>,
        pool: &str,
        backend: &str,
        mode: BackendMode,
        weight: Option<u64>,
    ) -> Result<Override, OverrideError> {
        let Some(p) = config.pools.iter().find(|p| p.name == pool) else {
            return Err(OverrideError::UnknownPool(pool.into()));
        };
        let Some(configured) = configured_weight(config, managed, pool, backend) else {
            let known: Vec<&str> = p
                .backends
                .iter()
                .map(|b| b.address.as_str())
                .chain(
                    managed
                        .get(pool)
                        .into_iter()
                        .flatten()
                        .map(|m| m.address.as_str()),
                )
                .collect();
            return Err(OverrideError::UnknownBackend {
                pool: pool.into(),
                backend: backend.into(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        };
        let weight = match weight {
            Some(w) if !WEIGHTS.contains(&u32::try_from(w).unwrap_or(0)) => {
                return Err(OverrideError::Weight(w))
            }
            Some(w) => Some(w as u32),
            None => None,
        };
        let previous = self.get(pool, backend).copied().unwrap_or_default();
        let next = Override {
            mode,
            weight: match weight {
                Some(w) if w == configured => None,
                Some(w) => Some((w, configured)),
                None => previous.weight,
            },
        };
        let backends = self.0.entry(pool.to_string()).or_default();
        if next == Override::default() {
            backends.remove(backend);
            if backends.is_empty() {
                self.0.remove(pool);
            }
        } else {
            backends.insert(backend.to_string(), next);
        }
        Ok(previous)
    }

    /// Drop the overrides of backends that are gone, and weight overrides whose backend's
    /// configured weight changed; returns a line for the log per dropped override.
    pub fn prune(
        &mut self,
        config: &Config,
        managed: &HashMap<String, Vec<ManagedBackend>>,
    ) -> Vec<String> {
        let mut dropped = Vec::new();
        for (pool, backends) in &mut self.0 {
            backends.retain(|backend, o| {
                match configured_weight(config, managed, pool, backend) {
                    None => {
                        dropped.push(format!(
                            "pool {pool}: backend {backend} is gone: its state {} ends",
                            o.mode.as_str()
                        ));
                        false
                    }
                    Some(now) => {
                        if let Some((w, was)) = o.weight.filter(|(_, was)| *was != now) {
                            dropped.push(format!(
                                "pool {pool}: backend {backend}: configured weight {was} -> {now} replaces the weight {w} set through the admin API"
                            ));
                            o.weight = None;
                        }
                        *o != Override::default()
                    }
                }
            });
        }
        self.0.retain(|_, b| !b.is_empty());
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(weight: u32) -> Config {
        let yaml = format!(
            "admin: {{ listen: \"127.0.0.1:0\" }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", pool: web }}
pools:
  web:
    backends:
      - {{ address: \"127.0.0.1:3001\", weight: {weight} }}
      - {{ address: \"127.0.0.1:3002\" }}
"
        );
        crate::config::load_str(&yaml, Path::new("t.yaml")).expect("valid config")
    }

    #[test]
    fn set_validates_and_a_reload_keeps_what_still_applies() {
        let (c, m) = (config(2), HashMap::new());
        let mut o = Overrides::default();
        let set = |o: &mut Overrides, c: &Config, b: &str, mode, w| o.set(c, &m, "web", b, mode, w);
        assert_eq!(
            o.set(&c, &m, "api", "x", BackendMode::Drain, None),
            Err(OverrideError::UnknownPool("api".into()))
        );
        let e = set(&mut o, &c, "127.0.0.1:9", BackendMode::Drain, None).expect_err("unknown");
        assert!(
            e.to_string().contains("127.0.0.1:3001, 127.0.0.1:3002"),
            "{e}"
        );
        for bad in [0, 257, u64::MAX] {
            assert_eq!(
                set(&mut o, &c, "127.0.0.1:3001", BackendMode::Ready, Some(bad)),
                Err(OverrideError::Weight(bad))
            );
        }
        assert_eq!(o.0.len(), 0, "nothing set by a refused call");

        set(&mut o, &c, "127.0.0.1:3001", BackendMode::Drain, Some(5)).expect("set");
        set(&mut o, &c, "127.0.0.1:3002", BackendMode::Maint, None).expect("set");
        // ready keeps the weight; the configured weight ends the override.
        set(&mut o, &c, "127.0.0.1:3001", BackendMode::Ready, None).expect("set");
        let a = *o.get("web", "127.0.0.1:3001").expect("override");
        assert_eq!(a.mode, BackendMode::Ready);
        assert_eq!(a.weight, Some((5, 2)));

        // A reload that keeps both backends and their weights keeps everything.
        assert!(o.prune(&config(2), &m).is_empty());
        // A changed configured weight ends the weight override (and the entry, now empty).
        let dropped = o.prune(&config(3), &m);
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        assert!(o.get("web", "127.0.0.1:3001").is_none());
        assert_eq!(
            o.get("web", "127.0.0.1:3002").map(|x| x.mode),
            Some(BackendMode::Maint)
        );
        // ready with the configured weight is no override at all.
        set(
            &mut o,
            &config(3),
            "127.0.0.1:3002",
            BackendMode::Ready,
            Some(1),
        )
        .expect("set");
        assert!(o.0.is_empty());
    }
}
