//! autolb: a load balancer and reverse proxy with an embedded autoscaler.
// Unsafe code is denied everywhere but in the modules that say why they need it
// (`forbid` could not be relaxed per module): server::trim (glibc's malloc_trim) and
// autoscale::process (pre_exec). rustix covers signals, sysconf, SCM_RIGHTS and splice.
#![deny(unsafe_code)]

pub(crate) mod accesslog;
pub(crate) mod acme;
pub mod admin;
pub mod affinity;
pub(crate) mod alerts;
pub mod autoscale;
pub mod backend;
pub mod balance;
pub mod build;
pub(crate) mod cache;
pub(crate) mod compress;
pub mod config;
pub(crate) mod health;
pub mod l4;
pub(crate) mod log_throttle;
pub(crate) mod metrics;
pub(crate) mod ocsp;
pub(crate) mod procstat;
pub(crate) mod prom;
pub mod proxy;
pub mod proxy_proto;
pub mod runtime;
pub(crate) mod sched;
pub mod server;
pub mod state;
pub(crate) mod tickets;
pub mod tls;
pub mod upstream;
pub mod uri;
