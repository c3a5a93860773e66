//! The client certificate identity headers of a proxied request: every `X-Client-Cert*`
//! field a client sent is removed (on every listener, with or without `client_auth`), then
//! the connection's verified certificate, if any, is described in them; and the 403 of a
//! route with `client_cert: required`.

use http::{HeaderMap, HeaderName, Response, StatusCode};

use super::body::ProxyBody;
use crate::tls::client_auth::ClientIdentity;

/// The prefix of the fields autolb owns (`x-client-cert`, `-subject`, `-san`,
/// `-fingerprint` and any other a client might invent to confuse a backend).
const PREFIX: &[u8] = b"x-client-cert";

fn owned(name: &HeaderName) -> bool {
    name.as_str()
        .as_bytes()
        .get(..PREFIX.len())
        .is_some_and(|p| p == PREFIX)
}

/// Remove the client's `X-Client-Cert*` fields, then set those of `identity`.
pub fn forward(headers: &mut HeaderMap, identity: Option<&std::sync::Arc<ClientIdentity>>) {
    // One pass over the names; a list only when a client sent some (never, normally).
    if headers.keys().any(owned) {
        let names: Vec<HeaderName> = headers.keys().filter(|n| owned(n)).cloned().collect();
        for name in names {
            headers.remove(name);
        }
    }
    if let Some(identity) = identity {
        for (name, value) in &identity.headers {
            headers.insert((*name).clone(), value.clone());
        }
    }
}

/// The answer to a request without a verified client certificate on a route that requires
/// one: 403, as HAProxy's `http-request deny` and Envoy's RBAC answer.
pub fn forbidden(pool: &str) -> Response<ProxyBody> {
    super::local::error(
        StatusCode::FORBIDDEN,
        "this route requires a client certificate",
        Some(pool),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn forged_fields_go_and_ours_come() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-client-cert-subject", "CN=admin"),
            ("X-Client-Cert", "forged"),
            ("x-client-cert-verified", "SUCCESS"),
            ("x-client", "kept"),
        ] {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_static(v),
            );
        }
        forward(&mut h, None);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-client"], "kept");
        let identity = std::sync::Arc::new(ClientIdentity {
            subject: "CN=alice".into(),
            headers: vec![(
                &crate::tls::client_auth::SUBJECT,
                HeaderValue::from_static("CN=alice"),
            )],
        });
        h.append(
            "x-client-cert-subject",
            HeaderValue::from_static("CN=admin"),
        );
        forward(&mut h, Some(&identity));
        assert_eq!(h["x-client-cert-subject"], "CN=alice");
        assert_eq!(h.get_all("x-client-cert-subject").iter().count(), 1);
    }
}
