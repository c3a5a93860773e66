//! The first step of every proxied request, before routing, compression and the access log
//! look at it: its Host (and absolute-form or HTTP/2 authority) and its path put in normal
//! form (`crate::uri`) in place, or a 400. What was rewritten is counted per listener
//! (`autolb_requests_normalized_total`); the target as the client sent it is kept in the
//! request's extensions (`Original`) for the access log and for `forward_original`.
//!
//! A request already in normal form (the common case) costs a scan of its Host and path and
//! no allocation.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};

use super::body::ProxyBody;
use super::local;
use crate::config::Protocol;
use crate::runtime::Snapshot;
use crate::uri::{self, HostError, Normalizer, PathError, Policy};

/// The path and query as the client sent them, when normalization changed the path.
#[derive(Debug, Clone)]
pub struct Original(pub PathAndQuery);

/// Marks a request refused before routing (the access log names no pool for it).
#[derive(Debug, Clone, Copy)]
pub struct Refused;

/// Why a request is refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("duplicate Host header")]
    DuplicateHost,
    #[error("request target authority disagrees with Host")]
    Disagree,
    #[error("{0}")]
    Host(#[from] HostError),
    #[error("{0}")]
    Path(#[from] PathError),
    #[error("invalid request target")]
    Target,
}

/// Normalize `req` in place under `n`'s policy: `Some` is the 400 to answer instead.
pub fn request<B>(req: &mut Request<B>, n: &Normalizer) -> Option<Response<ProxyBody>> {
    match apply(req, &n.policy) {
        Ok(false) => None,
        Ok(true) => {
            n.counters.rewritten.fetch_add(1, Ordering::Relaxed);
            None
        }
        Err(why) => {
            n.counters.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(reason = %why, path = req.uri().path(), "request refused before routing");
            Some(local::error(
                StatusCode::BAD_REQUEST,
                &why.to_string(),
                None,
            ))
        }
    }
}

fn owned(c: Cow<'_, str>) -> Option<String> {
    match c {
        Cow::Borrowed(_) => None,
        Cow::Owned(s) => Some(s),
    }
}

/// `autolb_requests_normalized_total{listener,result}`: requests whose Host or path was
/// rewritten into normal form, and those refused (400) by normalization.
pub fn render_metrics(out: &mut String, snap: &Snapshot) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "# HELP autolb_requests_normalized_total Requests whose path or Host was rewritten into normal form before routing (rewritten), or refused with 400 (rejected)."
    );
    let _ = writeln!(out, "# TYPE autolb_requests_normalized_total counter");
    for l in snap
        .listeners
        .iter()
        .filter(|l| l.protocol != Protocol::Tcp)
    {
        let c = &l.normalize.counters;
        for (result, n) in [("rewritten", &c.rewritten), ("rejected", &c.rejected)] {
            let _ = writeln!(
                out,
                "autolb_requests_normalized_total{{listener=\"{}\",result=\"{result}\"}} {}",
                crate::prom::label(&l.name),
                n.load(Ordering::Relaxed)
            );
        }
    }
}

/// Rewrite what is not in normal form; `Ok(true)` when something was.
pub fn apply<B>(req: &mut Request<B>, policy: &Policy) -> Result<bool, Refusal> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::DuplicateHost);
    }
    let host = host
        .map(|h| uri::host::authority(h.as_bytes()))
        .transpose()?;
    let authority = req
        .uri()
        .authority()
        .map(|a| uri::host::authority(a.as_str().as_bytes()))
        .transpose()?;
    if let (Some(h), Some(a)) = (&host, &authority) {
        if h != a {
            return Err(Refusal::Disagree);
        }
    }
    let (host, authority) = (host.and_then(owned), authority.and_then(owned));
    let raw = req.uri().path();
    // CONNECT's authority-form has no path; `OPTIONS *` is the one asterisk-form.
    let path = if raw.is_empty() || (raw == "*" && req.method() == Method::OPTIONS) {
        None
    } else {
        owned(uri::path::normalize(raw, policy)?)
    };
    let changed = host.is_some() || authority.is_some() || path.is_some();
    if let Some(h) = host {
        let value = HeaderValue::try_from(h).map_err(|_| Refusal::Target)?;
        req.headers_mut().insert(HOST, value);
    }
    if authority.is_none() && path.is_none() {
        return Ok(changed);
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    if let Some(a) = authority {
        parts.authority = Some(Authority::try_from(a).map_err(|_| Refusal::Target)?);
    }
    if let Some(p) = path {
        let original = parts.path_and_query.take();
        let text = match original.as_ref().and_then(PathAndQuery::query) {
            Some(q) => format!("{p}?{q}"),
            None => p,
        };
        parts.path_and_query = Some(PathAndQuery::try_from(text).map_err(|_| Refusal::Target)?);
        if let Some(o) = original {
            req.extensions_mut().insert(Original(o));
        }
    }
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| Refusal::Target)?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (target after, Host after, changed, original path kept).
    type Outcome = (String, Option<String>, bool, Option<String>);

    fn run(target: &str, host: Option<&str>) -> Result<Outcome, Refusal> {
        let mut b = Request::get(target);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        let mut req = b.body(()).expect("request");
        let changed = apply(&mut req, &Policy::default())?;
        let host = req
            .headers()
            .get(HOST)
            .map(|h| h.to_str().unwrap_or("?").to_string());
        let original = req
            .extensions()
            .get::<Original>()
            .map(|o| o.0.as_str().to_string());
        Ok((req.uri().to_string(), host, changed, original))
    }

    #[test]
    fn normal_requests_are_left_alone() {
        assert_eq!(
            run("/a/b?x=/../y", Some("a.example:8080")),
            Ok((
                "/a/b?x=/../y".into(),
                Some("a.example:8080".into()),
                false,
                None
            ))
        );
        assert_eq!(run("/", None), Ok(("/".into(), None, false, None)));
    }

    #[test]
    fn paths_and_hosts_are_rewritten_queries_kept() {
        assert_eq!(
            run("/x/%2e%2e/%61dmin//y?q=%2e%2e", Some("ADMIN.example.")),
            Ok((
                "/admin/y?q=%2e%2e".into(),
                Some("admin.example".into()),
                true,
                Some("/x/%2e%2e/%61dmin//y?q=%2e%2e".into())
            ))
        );
        assert_eq!(
            run("http://Admin.Example./x/../y", Some("admin.example")),
            Ok((
                "http://admin.example/y".into(),
                Some("admin.example".into()),
                true,
                Some("/x/../y".into())
            ))
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        assert_eq!(
            run("/a", Some("Admin.example")),
            Ok(("/a".into(), Some("admin.example".into()), true, None))
        );
        assert_eq!(
            run("/a", Some("user@admin.example")),
            Err(Refusal::Host(HostError::UserInfo))
        );
        assert_eq!(
            run("/..", Some("a")),
            Err(Refusal::Path(PathError::AboveRoot))
        );
        assert_eq!(
            run("http://a.example/", Some("b.example")),
            Err(Refusal::Disagree)
        );
        let mut req = Request::get("/").body(()).expect("request");
        req.headers_mut()
            .append(HOST, HeaderValue::from_static("a"));
        req.headers_mut()
            .append(HOST, HeaderValue::from_static("a"));
        assert_eq!(
            apply(&mut req, &Policy::default()),
            Err(Refusal::DuplicateHost)
        );
    }

    #[test]
    fn asterisk_only_for_options() {
        let mut req = Request::options("*").body(()).expect("request");
        assert_eq!(apply(&mut req, &Policy::default()), Ok(false));
        let mut req = Request::get("*").body(()).expect("request");
        assert_eq!(
            apply(&mut req, &Policy::default()),
            Err(Refusal::Path(PathError::NotAbsolute))
        );
    }
}
