//! The provider seam: what differs between autoscale providers (who runs the instances,
//! how the size is set, where the members come from). The control loop (`controller.rs`)
//! reaches a provider through this trait only; each provider is one file implementing it
//! (`process.rs`, `command.rs`), and `of` maps the config's `Provider` to it. A new
//! provider is a new file here, a variant of `config::Provider` (with its keys) and an arm
//! of `of`.

use std::sync::Arc;

use tokio::time::Instant;

use super::controller::{PoolScaler, ScalerState};
use crate::config;
use crate::runtime::Runtime;

pub trait Provider: Sync {
    /// Start what runs beside the pool's control loop (the `command` provider follows the
    /// members there). Called once, when the pool starts to be autoscaled.
    fn spawn_tasks(&self, _scaler: &Arc<PoolScaler>, _runtime: &Arc<Runtime>) {}

    /// One evaluation, under the pool's lock: read the signals, decide
    /// (`PoolScaler::decide`), act, and record the decision in `st`.
    fn tick(
        &self,
        scaler: &Arc<PoolScaler>,
        st: &mut ScalerState,
        runtime: &Arc<Runtime>,
        now: Instant,
    );

    /// Whether every autolb node sees the same members: with `shared`, the fleet's size is
    /// then one decision of the leader, not a sum of per-node shares.
    fn members_shared(&self) -> bool {
        false
    }
}

/// The provider a pool's config names.
pub fn of(kind: &config::ProviderConfig) -> &'static dyn Provider {
    match kind {
        config::ProviderConfig::Process(_) => &super::process::Process,
        config::ProviderConfig::Command(_) => &super::command::Command,
    }
}
