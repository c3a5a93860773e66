//! The answer to a request that failed through its client's fault (see
//! `upstream::client_fault`): 413, 408 or 400, never counted against a backend.

use http::header::{HeaderValue, CONNECTION};
use http::{Response, StatusCode};

use super::body::ProxyBody;
use super::local;
use crate::upstream::client_fault::ClientFault;

/// The answer to a request that failed through its client's fault: 408 (too slow), 413 (too
/// large) or 400 (cut off), and the connection is closed (the rest of its body is never read).
pub fn fault_response(fault: ClientFault, pool: &str) -> Response<ProxyBody> {
    let (status, message) = match fault {
        ClientFault::TooSlow => (StatusCode::REQUEST_TIMEOUT, "request body too slow"),
        ClientFault::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
        ClientFault::Aborted => (StatusCode::BAD_REQUEST, "request body incomplete"),
    };
    let mut resp = local::error(status, message, Some(pool));
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}
