//! The retry policy of one request (linkerd2-proxy's retry `Policy` as the model): what a
//! failed attempt says about whose fault it was (`classify`), whether it counts against the
//! backend, and whether the request may go again, and where (`Policy::next`); and the
//! request's time budget, `timeouts.request_total` (`Budget`).
//!
//! - A client fault (request body too large, too slow, cut off) ends the request with a 4xx
//!   and never counts against the backend.
//! - Nothing reached the backend (refused, connect timeout, failed handshake): safe for every
//!   method; another backend, else the same one.
//! - Sent, then reset or closed before a response head: the same backend may be tried again
//!   (a restart, a keep-alive race), when the request may be resent.
//! - A malformed response (invalid head or framing, a body broken before anything was
//!   forwarded) or a response timeout: the backend answered wrongly or not at all, so the
//!   request goes only to another backend, never back to the one that failed it.
//! - The budget ran out: nothing more is tried.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::RetryOn;
use crate::health::outlier::Outcome;
use crate::upstream::client_fault::{client_fault, ClientFault};
use crate::upstream::{RawError, UpstreamError};

/// What a failed attempt was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The client's doing: not the backend's fault, and the request ends here.
    Client(ClientFault),
    /// Nothing reached the backend.
    Connect,
    /// The connection broke after the request was sent, before a response head.
    Reset,
    /// The backend's answer was not valid HTTP: head, framing, or a body broken at once.
    Malformed,
    /// No response head within `timeouts.response`.
    Timeout,
    /// `timeouts.request_total` ran out during the attempt.
    Exhausted,
}

impl Class {
    /// What outlier detection counts (`None`: nothing; the backend is not to blame). A
    /// malformed answer counts as a reset: the exchange with the backend broke.
    pub fn outcome(self) -> Option<Outcome> {
        match self {
            Class::Client(_) | Class::Exhausted => None,
            Class::Connect => Some(Outcome::ConnectFailure),
            Class::Reset | Class::Malformed => Some(Outcome::Reset),
            Class::Timeout => Some(Outcome::Timeout),
        }
    }

    /// Counted as a failed request of the backend (`autolb_requests_total{code="failed"}`).
    pub fn backend_failed(self) -> bool {
        !matches!(self, Class::Client(_))
    }

    /// The answer when no attempt is left: 4xx for client faults, 504 for timeouts, 502.
    pub fn is_timeout(self) -> bool {
        matches!(self, Class::Timeout | Class::Exhausted)
    }
}

/// Where the next attempt of a request may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// No further attempt.
    Stop,
    /// Another backend; the one that failed only when there is no other.
    AnyBackend,
    /// Only a backend not tried yet.
    OtherBackend,
}

/// Classify an attempt's error. `cut`: the attempt's response timeout was shortened by the
/// request's budget (a timeout then is the budget's, not the backend's). `body`: how the
/// request's body failed, if it did (a backend client may report it as its own error).
pub fn classify(error: &UpstreamError, cut: bool, body: Option<ClientFault>) -> Class {
    if let Some(fault) = client_fault(error).or(body) {
        return Class::Client(fault);
    }
    match error {
        UpstreamError::Connect { .. }
        | UpstreamError::ConnectTimeout { .. }
        | UpstreamError::Tls { .. }
        | UpstreamError::Alpn { .. }
        | UpstreamError::Handshake { .. } => Class::Connect,
        UpstreamError::ResponseTimeout { .. } if cut => Class::Exhausted,
        UpstreamError::ResponseTimeout { .. } => Class::Timeout,
        UpstreamError::Raw { source, .. } => match source {
            RawError::Write(_) | RawError::Read(_) | RawError::Closed => Class::Reset,
            RawError::Timeout => Class::Timeout,
            RawError::ClosedInHead
            | RawError::HeadTooLarge
            | RawError::Parse(_)
            | RawError::Framing(_)
            | RawError::ClosedInBody
            | RawError::Chunked(_) => Class::Malformed,
        },
        UpstreamError::Request { source, .. } => {
            if source.is_parse() {
                Class::Malformed
            } else {
                Class::Reset
            }
        }
    }
}

/// A request's retry policy: the pool's `retry_on` and the attempts it has left.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub retry_on: &'a RetryOn,
}

impl Policy<'_> {
    /// After a failed attempt of class `class`: where the request may go next. `resendable`:
    /// the request is still at hand (nothing of it was sent, or it is idempotent and
    /// bodiless); `more`: an attempt is left.
    pub fn next(&self, class: Class, resendable: bool, more: bool) -> Next {
        if !more || !resendable {
            return Next::Stop;
        }
        let on = self.retry_on;
        match class {
            Class::Client(_) | Class::Exhausted => Next::Stop,
            Class::Connect if on.connect_failure => Next::AnyBackend,
            Class::Reset if on.reset => Next::AnyBackend,
            Class::Malformed if on.reset => Next::OtherBackend,
            Class::Timeout if on.timeout => Next::OtherBackend,
            _ => Next::Stop,
        }
    }
}

/// `timeouts.request_total`: the end of a client's wait for a response head.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub deadline: Instant,
}

/// The timeouts of one attempt within a request's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptTimeouts {
    pub connect: Duration,
    pub response: Duration,
    /// `response` was shortened to the budget.
    pub cut: bool,
}

impl Budget {
    /// Starting now, `total` long.
    pub fn new(start: Instant, total: Duration) -> Budget {
        Budget {
            deadline: start
                .checked_add(total)
                .unwrap_or(start + Duration::from_secs(86_400)),
        }
    }

    /// The connect and response timeouts of an attempt starting at `now`, each at most what
    /// is left of the budget; `None` when nothing is left.
    pub fn attempt(
        &self,
        now: Instant,
        connect: Duration,
        response: Duration,
    ) -> Option<AttemptTimeouts> {
        let left = self.deadline.saturating_duration_since(now);
        if left.is_zero() {
            return None;
        }
        Some(AttemptTimeouts {
            connect: connect.min(left),
            response: response.min(left),
            cut: response > left,
        })
    }

    /// What is left of the budget at `now`.
    pub fn left(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::upstream::client_body::{ClientBodyError, TooSlow};
    use crate::upstream::client_fault::TooLarge;

    fn addr() -> SocketAddr {
        "127.0.0.1:1".parse().expect("addr")
    }

    fn raw(source: RawError) -> UpstreamError {
        UpstreamError::Raw {
            addr: addr(),
            source,
        }
    }

    #[test]
    fn failures_are_classified_by_whose_fault_they_are() {
        let refused = UpstreamError::Connect {
            addr: addr(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(classify(&refused, false, None), Class::Connect);
        let timeout = UpstreamError::ResponseTimeout {
            addr: addr(),
            after: Duration::from_secs(2),
        };
        assert_eq!(classify(&timeout, false, None), Class::Timeout);
        assert_eq!(classify(&timeout, true, None), Class::Exhausted);
        assert_eq!(classify(&raw(RawError::Closed), false, None), Class::Reset);
        // A reset a backend client made of the client's failed body is the client's.
        let cut_off = Some(ClientFault::Aborted);
        assert_eq!(
            classify(&raw(RawError::Closed), false, cut_off),
            Class::Client(ClientFault::Aborted)
        );
        for broken in [
            RawError::Framing("both Transfer-Encoding and Content-Length"),
            RawError::Parse(httparse::Error::Status),
            RawError::HeadTooLarge,
            RawError::ClosedInHead,
            RawError::Chunked("chunk size expected"),
        ] {
            assert_eq!(classify(&raw(broken), false, None), Class::Malformed);
        }
        let slow = ClientBodyError::from(TooSlow {
            received: 1,
            waited: Duration::from_secs(1),
            rate: 10,
            grace: Duration::from_secs(1),
        });
        assert_eq!(client_fault(&slow), Some(ClientFault::TooSlow));
        let large = ClientBodyError::from(TooLarge { limit: 10 });
        assert_eq!(client_fault(&large), Some(ClientFault::TooLarge));
        assert_eq!(Class::Client(ClientFault::TooLarge).outcome(), None);
        assert!(!Class::Client(ClientFault::Aborted).backend_failed());
        assert_eq!(Class::Malformed.outcome(), Some(Outcome::Reset));
    }

    #[test]
    fn only_a_failure_before_any_answer_may_go_back_to_the_same_backend() {
        let on = RetryOn::default();
        let p = Policy { retry_on: &on };
        assert_eq!(p.next(Class::Connect, true, true), Next::AnyBackend);
        assert_eq!(p.next(Class::Reset, true, true), Next::AnyBackend);
        assert_eq!(p.next(Class::Malformed, true, true), Next::OtherBackend);
        assert_eq!(p.next(Class::Timeout, true, true), Next::OtherBackend);
        assert_eq!(p.next(Class::Exhausted, true, true), Next::Stop);
        let fault = Class::Client(ClientFault::Aborted);
        assert_eq!(p.next(fault, true, true), Next::Stop);
        // Nothing left to send, or no attempt left.
        assert_eq!(p.next(Class::Connect, false, true), Next::Stop);
        assert_eq!(p.next(Class::Connect, true, false), Next::Stop);
        let off = RetryOn {
            connect_failure: true,
            reset: false,
            timeout: false,
            statuses: Vec::new(),
            grpc: Vec::new(),
        };
        let p = Policy { retry_on: &off };
        assert_eq!(p.next(Class::Malformed, true, true), Next::Stop);
        assert_eq!(p.next(Class::Timeout, true, true), Next::Stop);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_never_outlast_the_budget() {
        let t0 = Instant::now();
        let budget = Budget::new(t0, Duration::from_secs(5));
        let (connect, response) = (Duration::from_secs(2), Duration::from_secs(2));
        let first = budget.attempt(t0, connect, response).expect("time left");
        assert_eq!((first.response, first.cut), (response, false));
        tokio::time::sleep(Duration::from_secs(4)).await;
        let second = budget
            .attempt(Instant::now(), connect, response)
            .expect("time left");
        assert_eq!(second.connect, Duration::from_secs(1));
        assert_eq!(
            (second.response, second.cut),
            (Duration::from_secs(1), true)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(budget.attempt(Instant::now(), connect, response), None);
        assert_eq!(budget.left(Instant::now()), Duration::ZERO);
    }
}
