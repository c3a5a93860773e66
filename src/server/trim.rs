//! Giving freed memory back to the system. glibc's allocator keeps what a burst of
//! connections freed (it returns only the top of each heap), so RSS stayed at its peak after
//! thousands of connections closed. Every `EVERY`, autolb looks at how much of its resident
//! memory the allocator does not use (RSS less the bytes in use); when that grew by `FREED`
//! over the least seen, `malloc_trim` hands the free pages back, on a blocking thread (it
//! locks each arena while it walks it). Measuring what is resident, not what the allocator
//! counts as free, sees a burst however short (the free count would have to be sampled at
//! its lowest), and memory already given back is not counted again. Other allocators
//! (musl) need nothing: no-op there.
// glibc's mallinfo2 and malloc_trim have no safe API.
#![allow(unsafe_code)]

use std::time::Duration;

/// How often the allocator's use is looked at (`mallinfo2` and `/proc/self/statm`, a few
/// microseconds).
const EVERY: Duration = Duration::from_secs(2);
/// Resident memory the allocator does not use, beyond the least seen, worth a trim.
const FREED: usize = 2 << 20;

/// Start the trimming task on the current runtime (it ends with the runtime).
pub(super) fn start() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut least = usize::MAX;
        loop {
            tick.tick().await;
            let Some(slack) = resident_unused() else {
                return; // no /proc: nothing to measure by
            };
            least = least.min(slack);
            if slack - least >= FREED {
                let _ = tokio::task::spawn_blocking(trim).await;
                // What could not be given back (fragments) is not counted again.
                least = resident_unused().unwrap_or(least);
            }
        }
    });
}

/// Resident bytes the allocator does not have in use (its free memory still in RAM, plus
/// the program's code, stacks and other mappings, which stay about the same).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn resident_unused() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = rustix::param::page_size();
    // SAFETY: mallinfo2 takes no arguments and only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    // Chunks in use in the arenas, and the large ones mapped on their own.
    let in_use = info.uordblks + info.hblkhd;
    Some((pages * page).saturating_sub(in_use))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free pages of the allocator's own heaps.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(released = released != 0, "freed memory given back");
}
