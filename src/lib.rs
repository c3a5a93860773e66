//! autolb: a load balancer and reverse proxy with an embedded autoscaler.

pub mod accesslog;
pub mod admin;
pub mod affinity;
pub mod alerts;
pub mod autoscale;
pub mod balance;
pub mod compress;
pub mod config;
pub mod health;
pub mod l4;
pub mod metrics;
pub mod observe;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod state;
pub mod tls;
