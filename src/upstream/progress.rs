//! A gRPC call's request-stream progress (`Progress`) and `within`, the wait for a backend
//! that starts again while that stream moves: a client stream that flows is never cut by
//! the response timeout.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The bytes of a call's request stream sent so far: while they grow, the backend is not
/// silent on us (it reads), and the wait for its answer starts again.
#[derive(Debug, Clone, Default)]
pub struct Progress(pub Arc<AtomicU64>);

impl Progress {
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Whether the stream moved since `seen` (updated).
    pub fn moved(&self, seen: &mut u64) -> bool {
        let now = self.get();
        let moved = now != *seen;
        *seen = now;
        moved
    }
}

/// The wait for `fut` was longer than its timeout.
#[derive(Debug, Clone, Copy)]
pub struct Elapsed;

/// `fut` within `timeout`; with `progress`, the timeout restarts as long as the request
/// stream moved during the last `timeout` (a client stream that flows is never cut).
pub async fn within<F: Future>(
    timeout: Duration,
    progress: Option<&Progress>,
    fut: F,
) -> Result<F::Output, Elapsed> {
    let Some(progress) = progress else {
        return tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| Elapsed);
    };
    let mut fut = std::pin::pin!(fut);
    let mut seen = 0;
    progress.moved(&mut seen);
    loop {
        match tokio::time::timeout(timeout, fut.as_mut()).await {
            Ok(out) => return Ok(out),
            Err(_) if progress.moved(&mut seen) => continue,
            Err(_) => return Err(Elapsed),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_flowing_stream_restarts_the_wait() {
        let progress = Progress::default();
        let p = progress.clone();
        // The stream moves every 600 ms for 3 s; the answer comes at 3.5 s.
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(600)).await;
                p.0.fetch_add(10, Ordering::Relaxed);
            }
        });
        let answer = tokio::time::sleep(Duration::from_millis(3500));
        let t = Duration::from_secs(1);
        assert!(within(t, Some(&progress), answer).await.is_ok());
        // Without progress, the same wait is cut after 1 s.
        let answer = tokio::time::sleep(Duration::from_millis(3500));
        let start = Instant::now();
        assert!(within(t, Some(&progress), answer).await.is_err());
        assert_eq!(start.elapsed(), t);
        let answer = tokio::time::sleep(Duration::from_millis(3500));
        assert!(within(t, None, answer).await.is_err());
    }
}
