//! Giving freed memory back to the system. glibc's allocator keeps what a burst of
//! connections freed (it returns only the top of each heap), so RSS stayed at its peak after
//! thousands of connections closed. Every `EVERY`, when at least `FREED` bytes were freed
//! since the allocator last held the least free memory (that is, memory that was in use was
//! given back to it), `malloc_trim` hands the free pages back, on a blocking thread (it
//! locks each arena while it walks it). Other allocators (musl) need nothing: no-op there.
// The allocator's statistics and trim have no safe API.
#![allow(unsafe_code)]

use std::time::Duration;

/// How often the allocator's free memory is looked at (`mallinfo2`, a few microseconds).
const EVERY: Duration = Duration::from_secs(2);
/// Freed memory worth a trim.
const FREED: usize = 4 << 20;

/// Start the trimming task on the current runtime (it ends with the runtime).
pub(super) fn start() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut least = free_bytes();
        loop {
            tick.tick().await;
            let free = free_bytes();
            least = least.min(free);
            if free - least >= FREED {
                let _ = tokio::task::spawn_blocking(trim).await;
                least = free_bytes();
            }
        }
    });
}

/// Bytes the allocator holds free (not given back, not in use).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn free_bytes() -> usize {
    // SAFETY: mallinfo2 takes no arguments and only reads the allocator's statistics.
    unsafe { libc::mallinfo2() }.fordblks
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free pages of the allocator's own heaps.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(released = released != 0, "freed memory given back");
}
