//! A request's client faults: the client's body over `limits.max_body` (`TooLarge`), too
//! slow (`client_body::TooSlow`) or cut off. `client_fault` finds them in an upstream error,
//! and a `FaultWatch` carries them out of a `ClientBody` that a backend client swallowed
//! (hyper's HTTP/2 client resets the stream and reports an error of its own). None counts
//! against a backend; `proxy::client_fault::fault_response` is what the client gets.

use std::error::Error as StdError;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use super::client_body::{ClientBodyError, TooSlow};

/// The request body went over `limits.max_body` (also the error `server::framed` gives
/// hyper when a chunked body outgrows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request body over max_body ({limit} bytes)")]
pub struct TooLarge {
    pub limit: u64,
}

/// How a request failed through its client's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Below `min_body_rate`: 408.
    TooSlow,
    /// Over `max_body`: 413.
    TooLarge,
    /// The body was cut off or broken (the client left, a bad chunk): 400.
    Aborted,
}

impl ClientFault {
    /// How a `ClientBody` failed.
    pub fn of(error: &ClientBodyError) -> ClientFault {
        match error {
            ClientBodyError::TooSlow(_) => ClientFault::TooSlow,
            ClientBodyError::TooLarge(_) => ClientFault::TooLarge,
            ClientBodyError::Client(reading) if over_max_body(reading) => ClientFault::TooLarge,
            ClientBodyError::Client(_)
            | ClientBodyError::Http3(_)
            | ClientBodyError::BadText(_) => ClientFault::Aborted,
        }
    }
}

/// Where a `ClientBody` notes how it failed, for the request that sent it.
#[derive(Debug, Clone, Default)]
pub struct FaultWatch(Arc<AtomicU8>);

impl FaultWatch {
    pub fn set(&self, fault: ClientFault) {
        let code = match fault {
            ClientFault::TooSlow => 1,
            ClientFault::TooLarge => 2,
            ClientFault::Aborted => 3,
        };
        self.0.store(code, Ordering::Release);
    }

    /// The body's failure, if it failed.
    pub fn get(&self) -> Option<ClientFault> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(ClientFault::TooSlow),
            2 => Some(ClientFault::TooLarge),
            3 => Some(ClientFault::Aborted),
            _ => None,
        }
    }
}

/// Did this (upstream) error come from the client's request body, and how?
pub fn client_fault(error: &(dyn StdError + 'static)) -> Option<ClientFault> {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<TooSlow>() {
            return Some(ClientFault::TooSlow);
        }
        if e.is::<TooLarge>() {
            return Some(ClientFault::TooLarge);
        }
        if let Some(body) = e.downcast_ref::<ClientBodyError>() {
            return Some(ClientFault::of(body));
        }
        next = e.source();
    }
    None
}

/// Did reading the client's body fail because `server::framed` cut it at `max_body`? (An
/// `io::Error` hides its payload from `source()`: it is looked for by hand.)
fn over_max_body(error: &hyper::Error) -> bool {
    let mut next: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|inner| inner.is::<TooLarge>()) {
                return true;
            }
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn faults_are_found_in_an_error_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("request failed")]
        struct Outer(#[source] Box<dyn StdError + Send + Sync>);
        let slow = TooSlow {
            received: 1,
            waited: Duration::from_secs(2),
            rate: 100,
            grace: Duration::from_secs(1),
        };
        let e = Outer(Box::new(ClientBodyError::from(slow)));
        assert_eq!(client_fault(&e), Some(ClientFault::TooSlow));
        assert_eq!(client_fault(&slow), Some(ClientFault::TooSlow));
        let large = Outer(Box::new(ClientBodyError::from(TooLarge { limit: 1 })));
        assert_eq!(client_fault(&large), Some(ClientFault::TooLarge));
        let other = Outer(Box::new(std::io::Error::other("reset")));
        assert_eq!(client_fault(&other), None);
    }

    #[test]
    fn a_watch_tells_how_the_body_failed() {
        let w = FaultWatch::default();
        assert_eq!(w.get(), None);
        for fault in [
            ClientFault::TooSlow,
            ClientFault::TooLarge,
            ClientFault::Aborted,
        ] {
            w.clone().set(fault);
            assert_eq!(w.get(), Some(fault));
        }
    }
}
