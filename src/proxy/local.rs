//! Answers autolb writes itself (no backend involved): short JSON errors.

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use super::body::ProxyBody;

/// `{"error": message, "status": code[, "pool": name]}` with the given status.
pub fn error(status: StatusCode, message: &str, pool: Option<&str>) -> Response<ProxyBody> {
    let mut body = serde_json::json!({ "error": message, "status": status.as_u16() });
    if let Some(p) = pool {
        body["pool"] = serde_json::Value::from(p);
    }
    let mut resp = Response::new(ProxyBody::full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
