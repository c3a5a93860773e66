//! The cross-site guard of the admin API's POSTs, token or not: a POST must say
//! `Content-Type: application/json` (a page on another site cannot send that without a CORS
//! preflight, which the admin never grants), and a browser's `Origin` must be the admin's
//! own origin and its `Sec-Fetch-Site` `same-origin` (or `none`). curl, scripts and
//! `autolb` itself send no `Origin`: only the content type applies to them.

use http::header::{CONTENT_TYPE, HOST, ORIGIN};
use http::{HeaderMap, Request, StatusCode, Uri};

/// Why a POST was refused: the status (403 or 415) and the message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    fn forbidden(message: String) -> Refusal {
        Refusal {
            status: StatusCode::FORBIDDEN,
            message,
        }
    }
}

/// Check a POST; `Err` says why a browser on another page could have sent it.
pub(crate) fn check_post<B>(req: &Request<B>) -> Result<(), Refusal> {
    let headers = req.headers();
    if let Some(site) = single(headers, "sec-fetch-site")? {
        if !(site.eq_ignore_ascii_case("same-origin") || site.eq_ignore_ascii_case("none")) {
            return Err(Refusal::forbidden(format!(
                "cross-site request refused (Sec-Fetch-Site: {site})"
            )));
        }
    }
    if let Some(origin) = single(headers, ORIGIN.as_str())? {
        let host = single(headers, HOST.as_str())?.or_else(|| req.uri().host());
        if !same_origin(origin, host) {
            return Err(Refusal::forbidden(format!(
                "cross-site request refused: Origin {origin} is not this admin's origin"
            )));
        }
    }
    let json = single(headers, CONTENT_TYPE.as_str())?.is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
    });
    if !json {
        return Err(Refusal {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: "a POST must send Content-Type: application/json (also with an empty body)"
                .into(),
        });
    }
    Ok(())
}

/// The one value of header `name` as text: `None` when absent; refused when repeated or
/// not visible ASCII (a browser never sends either).
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Refusal> {
    let mut all = headers.get_all(name).iter();
    let Some(first) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(Refusal::forbidden(format!("repeated {name} header")));
    }
    first
        .to_str()
        .map(|v| Some(v.trim()))
        .map_err(|_| Refusal::forbidden(format!("unreadable {name} header")))
}

/// Is `origin` (`scheme://host[:port]`) the origin whose authority is `host` (the Host
/// header)? Host names compare without case, and a missing port is the origin scheme's
/// default. The scheme itself is not compared: behind a TLS-terminating proxy the page is
/// `https` while the admin serves `http`, and nothing else can serve the admin's port.
/// `null` (a sandboxed frame, a `file:` page) is never the admin's origin.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let Ok(origin) = origin.parse::<Uri>() else {
        return false;
    };
    let (Some(scheme), Some(o_host)) = (origin.scheme_str(), origin.host()) else {
        return false;
    };
    let default = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    if origin.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return false;
    }
    let Ok(authority) = host.parse::<http::uri::Authority>() else {
        return false;
    };
    o_host.eq_ignore_ascii_case(authority.host())
        && origin.port_u16().unwrap_or(default) == authority.port_u16().unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(headers: &[(&str, &str)]) -> Result<(), Refusal> {
        let mut b = Request::post("/scaling/manual");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        check_post(&b.body(()).expect("request"))
    }

    const JSON: (&str, &str) = ("content-type", "application/json");

    #[test]
    fn json_from_curl_or_the_same_origin_passes() {
        assert_eq!(post(&[JSON]), Ok(()));
        assert_eq!(
            post(&[("content-type", "Application/JSON; charset=utf-8")]),
            Ok(())
        );
        for (origin, host) in [
            ("http://127.0.0.1:9001", "127.0.0.1:9001"),
            ("http://LOCALHOST:9001", "localhost:9001"),
            ("http://[::1]:9001", "[::1]:9001"),
            ("http://admin", "admin"),
            ("http://admin", "admin:80"),
            ("https://admin.example", "admin.example:443"),
        ] {
            let r = post(&[
                JSON,
                ("origin", origin),
                ("host", host),
                ("sec-fetch-site", "same-origin"),
            ]);
            assert_eq!(r, Ok(()), "{origin} vs {host}");
        }
        assert_eq!(post(&[JSON, ("sec-fetch-site", "none")]), Ok(()));
    }

    #[test]
    fn other_sites_and_other_ports_are_refused_with_403() {
        for (origin, host) in [
            ("http://evil.example", "127.0.0.1:9001"),
            ("http://127.0.0.1:8080", "127.0.0.1:9001"),
            ("http://127.0.0.1", "127.0.0.1:9001"),
            ("null", "127.0.0.1:9001"),
            ("http://127.0.0.1:9001/x", "127.0.0.1:9001"),
            ("ftp://127.0.0.1:9001", "127.0.0.1:9001"),
        ] {
            let r = post(&[JSON, ("origin", origin), ("host", host)]);
            assert_eq!(
                r.map_err(|e| e.status),
                Err(StatusCode::FORBIDDEN),
                "{origin} vs {host}"
            );
        }
        // A browser that sends no Origin still says where the request comes from.
        for site in ["cross-site", "same-site", "Cross-Site"] {
            let r = post(&[JSON, ("sec-fetch-site", site)]);
            assert_eq!(
                r.map_err(|e| e.status),
                Err(StatusCode::FORBIDDEN),
                "{site}"
            );
        }
        let r = post(&[
            JSON,
            ("origin", "http://127.0.0.1:9001"),
            ("origin", "http://127.0.0.1:9001"),
            ("host", "127.0.0.1:9001"),
        ]);
        assert_eq!(r.map_err(|e| e.status), Err(StatusCode::FORBIDDEN));
    }

    #[test]
    fn what_a_form_or_a_simple_fetch_can_send_is_refused_with_415() {
        for ct in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("text/plain; application/json"),
            Some("application/jsonx"),
        ] {
            let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
            let r = post(&headers);
            assert_eq!(
                r.map_err(|e| e.status),
                Err(StatusCode::UNSUPPORTED_MEDIA_TYPE),
                "{ct:?}"
            );
        }
    }
}
