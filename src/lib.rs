//! autolb: a load balancer and reverse proxy with an embedded autoscaler.
// Unsafe code is denied everywhere but in the modules that say why they need it
// (`forbid` could not be relaxed per module): server::trim (glibc's malloc_trim) and
// autoscale::process (pre_exec). rustix covers signals, sysconf and SCM_RIGHTS.
#![deny(unsafe_code)]

pub mod accesslog;
pub mod acme;
pub mod admin;
pub mod affinity;
pub mod alerts;
pub mod autoscale;
pub mod balance;
pub mod build;
pub mod cache;
pub mod compress;
pub mod config;
pub mod health;
pub mod l4;
pub mod metrics;
pub mod ocsp;
pub mod prom;
pub mod proxy;
pub mod runtime;
pub mod sched;
pub mod server;
pub mod state;
pub mod tls;
pub mod uri;
