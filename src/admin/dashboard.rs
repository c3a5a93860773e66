//! The live dashboard at `GET /` of the admin port: one self-contained page (HTML, CSS and
//! JavaScript embedded in the binary, no CDN) that polls the admin JSON endpoints every
//! second or two and shows pools, backends, the autoscaler, recent events and listeners.

use std::sync::LazyLock;

use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::Response;
use http_body_util::Full;
use sha2::{Digest, Sha256};

const HTML: &str = include_str!("dashboard.html");
const CSS: &str = include_str!("dashboard.css");
/// The page's one script: helpers, overview, pools and the autoscaler, then the other panels
/// and the polling loop.
const JS: &str = concat!(
    include_str!("dashboard.js"),
    "\n",
    include_str!("dashboard_panels.js")
);

/// The assembled page and its Content-Security-Policy (the one inline script is allowed by
/// its hash; nothing is loaded from elsewhere, and the page only talks to its own origin).
struct Page {
    body: Bytes,
    csp: HeaderValue,
}

static PAGE: LazyLock<Page> = LazyLock::new(|| {
    let body = HTML.replacen("/*CSS*/", CSS, 1).replacen("/*JS*/", JS, 1);
    let script = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(JS.as_bytes()));
    let csp = format!(
        "default-src 'none'; script-src 'sha256-{script}'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    Page {
        body: Bytes::from(body),
        csp: HeaderValue::from_str(&csp)
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'")),
    }
});

/// `GET /`: the dashboard page.
pub fn page() -> Response<Full<Bytes>> {
    let page = &*PAGE;
    let mut resp = Response::new(Full::new(page.body.clone()));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(http::header::CONTENT_SECURITY_POLICY, page.csp.clone());
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_embeds_its_assets_and_allows_exactly_its_script() {
        let resp = page();
        let body = std::str::from_utf8(&PAGE.body).expect("utf-8");
        assert!(!body.contains("/*CSS*/") && !body.contains("/*JS*/"));
        assert!(body.contains("getJSON(\"/loadbalancer/status\")"));
        for external in ["<script src", "<link", "@import", "url(http"] {
            assert!(!body.contains(external), "no external asset: {external}");
        }
        let csp = resp.headers()[http::header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ascii");
        assert!(csp.contains("script-src 'sha256-"), "{csp}");
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        // The hash covers exactly the text between <script> and </script>.
        let start = body.find("<script>").expect("script") + "<script>".len();
        let end = body.find("</script>").expect("end");
        assert_eq!(&body[start..end], JS);
    }
}
