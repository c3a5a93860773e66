//! The per-request future of HTTP/2 connections, boxed. hyper's HTTP/2 server spawns a task
//! per stream holding the service's future; autolb's (routing, balancing, forwarding,
//! retries) is several KB, and tokio copies a task's future whole when it builds the task
//! cell, when it moves it into the cell, and when it stores the output. Boxed, the task
//! holds a pointer and the future is copied once, into its box. HTTP/1 connections poll the
//! future in place (no task per request): they keep it inline.

use std::pin::Pin;

use hyper::service::Service;

/// `S` with its futures boxed.
pub(super) struct Boxed<S>(pub(super) S);

impl<S, R> Service<R> for Boxed<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<S::Future>>;

    fn call(&self, req: R) -> Self::Future {
        Box::pin(self.0.call(req))
    }
}
