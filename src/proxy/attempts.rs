//! One request's attempts at a pool, between them: which backend the next attempt goes to
//! (the pinned one first, then the balancer, never one the retry policy ruled out), and
//! what a finished attempt leaves behind: counted against its backend or not (a client's
//! fault never is), and whether the request may go again (`retry::Policy`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::retry::{Class, Next, Policy};
use crate::balance::PickContext;
use crate::health::outlier::{self, Outcome};
use crate::log_throttle::warn_throttled;
use crate::runtime::events::EventLog;
use crate::runtime::Pool;
use crate::upstream::UpstreamError;

/// A response that arrived broken, found before anything of it was forwarded.
#[derive(Debug, thiserror::Error)]
pub enum Broken {
    #[error("invalid response framing: both Transfer-Encoding and Content-Length")]
    Framing,
    #[error("invalid response body: {0}")]
    Body(crate::upstream::BodyError),
}

/// What went wrong in an attempt that gave no response to forward.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error(transparent)]
    Upstream(UpstreamError),
    #[error(transparent)]
    Broken(Broken),
}

/// How a request ended when it got no response to forward.
pub enum Failure {
    /// Its last attempt failed.
    Attempt(Class, AttemptError),
    /// A response status listed in `retry_on`, discarded before anything was forwarded.
    Status(u16),
    /// `timeouts.request_total` ran out before an attempt could start.
    Exhausted,
}

impl Failure {
    /// Why the request goes again: an index into `PoolStats::retries` (`RETRY_REASONS`).
    fn reason(&self) -> Option<usize> {
        match self {
            Failure::Attempt(Class::Connect, _) => Some(0),
            Failure::Attempt(Class::Timeout, _) => Some(1),
            Failure::Attempt(Class::Reset | Class::Malformed, _) => Some(2),
            Failure::Status(_) => Some(3),
            Failure::Attempt(Class::Client(_) | Class::Exhausted, _) | Failure::Exhausted => None,
        }
    }
}

/// The state a request carries from one attempt to the next.
pub struct Attempts<'a> {
    pool: &'a Arc<Pool>,
    events: &'a Arc<EventLog>,
    policy: Policy<'a>,
    /// The balancer's context; backends already tried are excluded from it.
    pick: PickContext,
    /// Sticky sessions: the first attempt goes there.
    pinned: Option<usize>,
    /// Where the next attempt may go.
    route: Next,
    /// The backend of the last failed attempt.
    failed: Option<usize>,
    /// Why the last attempt gave nothing to forward.
    pub last: Option<Failure>,
}

impl<'a> Attempts<'a> {
    pub fn new(
        pool: &'a Arc<Pool>,
        events: &'a Arc<EventLog>,
        pick: PickContext,
        pinned: Option<usize>,
    ) -> Attempts<'a> {
        Attempts {
            pool,
            events,
            policy: Policy {
                retry_on: &pool.retry_on,
            },
            pick,
            pinned,
            route: Next::AnyBackend,
            failed: None,
            last: None,
        }
    }

    /// The backend of attempt `n` (from 0), and whether it is the pinned one; `None` when
    /// the request has nowhere left to go.
    pub fn choose(&mut self, n: u32) -> Option<(usize, bool)> {
        let pool = self.pool;
        let pinned = self.pinned.filter(|&i| n == 0 && i < pool.backends.len());
        // Another backend where one exists, else (when the failure allows it) the same one
        // again.
        let fallback = n > 0 && self.route == Next::AnyBackend;
        let idx = pinned
            .or_else(|| pool.balancer.pick(&pool.backends, &self.pick))
            .or_else(|| {
                let any = PickContext {
                    exclude: 0,
                    ..self.pick
                };
                fallback
                    .then(|| pool.balancer.pick(&pool.backends, &any))
                    .flatten()
            })?;
        // Past 64 backends the mask cannot tell: never the one that just failed, at least.
        if self.route == Next::OtherBackend && self.failed == Some(idx) {
            return None;
        }
        if idx < 64 {
            self.pick.exclude |= 1 << idx;
        }
        if let Some(why) = self.last.as_ref().and_then(Failure::reason) {
            pool.stats.retries[why].fetch_add(1, Ordering::Relaxed);
        }
        Some((idx, pinned == Some(idx)))
    }

    /// Backend `idx` answered with a status listed in `retry_on` (HTTP, or gRPC when
    /// `grpc`): the answer is dropped before anything of it was forwarded, and the request
    /// may go to any backend. An HTTP status counts for outlier detection.
    pub fn discard_answer(&mut self, idx: usize, status: u16, grpc: bool) {
        let backend = &self.pool.backends[idx];
        backend.stats.record_status(status);
        if !grpc {
            outlier::observe(self.pool, backend, Outcome::Status5xx, self.events);
        }
        backend.stats.end();
        self.route = Next::AnyBackend;
        self.failed = Some(idx);
        self.last = Some(Failure::Status(status));
    }

    /// Attempt `n` at backend `idx` failed with `class`: counted against the backend unless
    /// it was the client's fault. `resendable`: the request is still at hand; `more`: an
    /// attempt is left. Whether the request goes again.
    pub fn failed(
        &mut self,
        idx: usize,
        n: u32,
        class: Class,
        error: AttemptError,
        resendable: bool,
        more: bool,
    ) -> bool {
        let (pool, backend) = (self.pool, &self.pool.backends[idx]);
        backend.stats.end();
        if let Class::Client(_) = class {
            // The client's fault: the backend's record stays as it was.
            self.last = Some(Failure::Attempt(class, error));
            return false;
        }
        backend.stats.record_failure();
        if let Some(outcome) = class.outcome() {
            outlier::observe(pool, backend, outcome, self.events);
        }
        warn_throttled!(backend.stats.log, pool = %pool.name, backend = %backend.address, attempt = n + 1, error = %error; "backend failed");
        self.route = self.policy.next(class, resendable, more);
        self.failed = Some(idx);
        self.last = Some(Failure::Attempt(class, error));
        self.route != Next::Stop
    }
}
