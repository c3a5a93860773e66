//! What a listener does around the proxy: ACME http-01 challenges of autolb's own `tls.acme`
//! answered before routing, `redirect_https` (a 308 to the https URL; ACME HTTP-01
//! challenges excepted), `hsts` (Strict-Transport-Security on https responses),
//! `Alt-Svc` for `http3: true`, and HTTP/2 and HTTP/3 requests' `cookie` fields joined into
//! one header for HTTP/1.1 backends (RFC 9113 8.2.3, RFC 9114 4.2.1).

use std::sync::Arc;

use crate::upstream::downstream::Downstream;
use http::header::{
    HeaderValue, ALT_SVC, CONTENT_LENGTH, COOKIE, HOST, LOCATION, STRICT_TRANSPORT_SECURITY,
};
use http::{Request, Response, StatusCode, Version};

use crate::config::Listener;
use crate::proxy::body::ProxyBody;
use crate::proxy::{self, local, ConnContext};

/// A listener's settings that act on every request (absent when none is set).
pub(crate) struct Front {
    /// `redirect_https`: the https port.
    redirect: Option<u16>,
    /// `hsts`: the header value, on https connections.
    hsts: Option<HeaderValue>,
    /// `http3: true`: `Alt-Svc: h3=":PORT"; ma=86400` on responses over TCP.
    alt_svc: Option<HeaderValue>,
    /// `tls.acme` on some listener: its http-01 challenges (plain http connections only).
    acme: Option<Arc<crate::acme::Acme>>,
}

impl Front {
    /// What `listener` asks for on a connection that is `https` or not, made to `port`.
    pub fn of(
        listener: Option<&Listener>,
        https: bool,
        port: u16,
        acme: Option<Arc<crate::acme::Acme>>,
    ) -> Option<Arc<Front>> {
        let l = listener?;
        let hsts = l
            .hsts
            .as_ref()
            .filter(|_| https)
            .and_then(|h| HeaderValue::from_str(&h.header_value()).ok());
        let redirect = l.redirect_https.filter(|_| !https);
        // Over TCP: an HTTP/3 request arrives with version HTTP/3 and gets none (`respond`).
        let alt_svc = l
            .http3
            .as_ref()
            .filter(|_| https && port != 0)
            .and_then(|_| HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400")).ok());
        (hsts.is_some() || redirect.is_some() || alt_svc.is_some() || acme.is_some()).then(|| {
            Arc::new(Front {
                redirect,
                hsts,
                alt_svc,
                acme,
            })
        })
    }
}

/// Serve one request: the redirect, or the proxy (with h2 cookies joined, HSTS added).
pub(crate) async fn respond(
    mut req: Request<Downstream>,
    ctx: Arc<ConnContext>,
    front: Option<Arc<Front>>,
) -> Response<ProxyBody> {
    if let Some(addrs) = ctx.addrs {
        req.extensions_mut().insert(addrs);
    }
    if let Some(acme) = front.as_ref().and_then(|f| f.acme.as_ref()) {
        if let Some(resp) = own_challenge(&req, acme).await {
            return resp;
        }
    }
    if let Some(port) = front.as_ref().and_then(|f| f.redirect) {
        if !acme_challenge(&req, &ctx) {
            return redirect(&req, port);
        }
    }
    let h3 = req.version() == Version::HTTP_3;
    if req.version() >= Version::HTTP_2 {
        join_cookies(req.headers_mut());
    }
    let mut resp = match proxy::handle(req, ctx).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if let Some(h) = front.as_ref().and_then(|f| f.hsts.as_ref()) {
        resp.headers_mut()
            .insert(STRICT_TRANSPORT_SECURITY, h.clone());
    }
    if let Some(a) = front
        .as_ref()
        .and_then(|f| f.alt_svc.as_ref())
        .filter(|_| !h3)
    {
        resp.headers_mut().insert(ALT_SVC, a.clone());
    }
    resp
}

/// The answer to an http-01 challenge of autolb's own ACME orders (this node's or, in a
/// fleet, another's): the key authorization, as RFC 8555 8.3 asks. Other tokens go on to
/// the routes.
async fn own_challenge(
    req: &Request<Downstream>,
    acme: &crate::acme::Acme,
) -> Option<Response<ProxyBody>> {
    let token = req
        .uri()
        .path()
        .strip_prefix(crate::acme::CHALLENGE_PREFIX)?;
    // base64url characters only: nothing else is a token.
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    let key_authorization = acme.http01(token).await?;
    let mut resp = Response::new(ProxyBody::full(bytes::Bytes::from(key_authorization)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Some(resp)
}

/// ACME HTTP-01 challenges (`/.well-known/acme-challenge/...`) must be answered over plain
/// http: they are proxied, not redirected, when a route or the listener's pool takes them.
fn acme_challenge(req: &Request<Downstream>, ctx: &ConnContext) -> bool {
    const PREFIX: &str = "/.well-known/acme-challenge/";
    let path = req.uri().path();
    // Only a path in normal form: `/.well-known/acme-challenge/../../x` is redirected.
    let normal = matches!(
        crate::uri::path::normalize(path, &Default::default()),
        Ok(std::borrow::Cow::Borrowed(_))
    );
    if !normal || !path.starts_with(PREFIX) {
        return false;
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            let h = req.headers().get(HOST)?.to_str().ok()?;
            Some(strip_port(h).trim_matches(['[', ']']).to_string())
        })
        .unwrap_or_default();
    ctx.runtime
        .snapshot()
        .select_pool(ctx.listener, &host, req.uri().path())
        .is_some()
}

/// A host as it may appear in a URL: a DNS name or IPv4 address, or a bracketed IPv6 one.
fn valid_host(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

/// `host[:port]` -> host (IPv6 keeps its brackets).
fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// 308 to the same host, path and query over https (`port` left out when 443).
fn redirect(req: &Request<Downstream>, port: u16) -> Response<ProxyBody> {
    let authority = match req.uri().authority() {
        Some(a) => Some(a.as_str().to_string()),
        None => req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string),
    };
    let host = authority
        .as_deref()
        .map(strip_port)
        .filter(|h| valid_host(h));
    let Some(host) = host else {
        return local::error(
            StatusCode::BAD_REQUEST,
            "missing or invalid Host header",
            None,
        );
    };
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let Ok(location) = HeaderValue::from_str(&location) else {
        return local::error(StatusCode::BAD_REQUEST, "invalid request target", None);
    };
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(LOCATION, location);
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

/// HTTP/2 and HTTP/3 may split `cookie` into several fields; HTTP/1.1 wants one, joined with "; ".
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut values = headers.get_all(COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port_and_bad_ones_are_refused() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("a.example"), "a.example");
        assert!(valid_host("a.example"));
        assert!(valid_host("[::1]"));
        assert!(!valid_host("evil.example/x"));
        assert!(!valid_host("a b"));
        assert!(!valid_host(""));
    }

    #[test]
    fn cookies_are_joined() {
        let mut h = http::HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1"));
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h[COOKIE], "a=1; b=2");
    }
}
