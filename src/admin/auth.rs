//! Bearer tokens of the admin API: `admin.token_env` guards every POST;
//! `admin.read_token_env` guards every GET but the probes (`/health`, `/health/live`,
//! `/health/ready`) and the dashboard page itself (static: it holds no data). The POST
//! token also opens the GETs. Tokens are compared in constant time.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;

use super::error;

/// GET endpoints that answer without the read token: what liveness and readiness probes
/// call, and the dashboard page (which asks for the token and then reads the JSON with it).
pub(crate) const PUBLIC: &[&str] = &["/", "/health", "/health/live", "/health/ready"];

/// The configured tokens.
#[derive(Clone, Default)]
pub struct Tokens {
    /// From `admin.token_env`: every POST needs it.
    pub write: Option<Arc<str>>,
    /// From `admin.read_token_env`: every GET but `PUBLIC` needs it (or `write`).
    pub read: Option<Arc<str>>,
}

/// A token variable the config names is not set.
#[derive(Debug, thiserror::Error)]
#[error("admin: {key} names {var}, but that environment variable is unset or empty")]
pub struct MissingToken {
    pub key: &'static str,
    pub var: String,
}

impl Tokens {
    /// The tokens from the environment variables `admin.token_env` and
    /// `admin.read_token_env` name (trimmed). A named variable that is unset or blank is an
    /// error: the API would otherwise run unguarded.
    pub fn from_env(admin: &crate::config::Admin) -> Result<Tokens, MissingToken> {
        let token = |key: &'static str, var: &Option<String>| {
            let Some(var) = var else {
                return Ok(None);
            };
            match std::env::var(var) {
                Ok(t) if !t.trim().is_empty() => Ok(Some(Arc::from(t.trim()))),
                _ => Err(MissingToken {
                    key,
                    var: var.clone(),
                }),
            }
        };
        Ok(Tokens {
            write: token("token_env", &admin.token_env)?,
            read: token("read_token_env", &admin.read_token_env)?,
        })
    }
}

type Refused = Box<Response<Full<Bytes>>>;

impl Tokens {
    /// A POST: needs the write token when one is configured.
    pub(crate) fn authorize_post<B>(&self, req: &Request<B>) -> Result<(), Refused> {
        match &self.write {
            None => Ok(()),
            Some(t) => check(req, &[t]),
        }
    }

    /// A GET of `path`: needs the read (or write) token when a read token is configured.
    pub(crate) fn authorize_get<B>(&self, req: &Request<B>, path: &str) -> Result<(), Refused> {
        let Some(read) = &self.read else {
            return Ok(());
        };
        if PUBLIC.contains(&path) {
            return Ok(());
        }
        match &self.write {
            Some(w) => check(req, &[read, w]),
            None => check(req, &[read]),
        }
    }
}

/// `Authorization: Bearer T` with `T` one of `tokens`, else 401.
fn check<B>(req: &Request<B>, tokens: &[&Arc<str>]) -> Result<(), Refused> {
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) => {
            // Every token is compared (no early exit), each in constant time.
            let ok = tokens.iter().fold(false, |ok, t| {
                constant_time_eq(g.as_bytes(), t.as_bytes()) | ok
            });
            if ok {
                Ok(())
            } else {
                Err(Box::new(error(
                    StatusCode::UNAUTHORIZED,
                    "invalid bearer token",
                )))
            }
        }
        None => {
            let mut resp = error(StatusCode::UNAUTHORIZED, "missing bearer token");
            resp.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Err(Box::new(resp))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: Option<&str>) -> Request<()> {
        let mut b = Request::get("/metrics");
        if let Some(a) = auth {
            b = b.header(AUTHORIZATION, a);
        }
        b.body(()).expect("request")
    }

    fn status(r: Result<(), Refused>) -> u16 {
        r.map_or_else(|e| e.status().as_u16(), |()| 200)
    }

    #[test]
    fn reads_need_the_read_or_the_write_token_but_probes_do_not() {
        let t = Tokens {
            write: Some(Arc::from("w")),
            read: Some(Arc::from("r")),
        };
        assert_eq!(status(t.authorize_get(&req(None), "/metrics")), 401);
        assert_eq!(
            status(t.authorize_get(&req(Some("Bearer x")), "/metrics")),
            401
        );
        assert_eq!(
            status(t.authorize_get(&req(Some("Bearer r")), "/metrics")),
            200
        );
        assert_eq!(
            status(t.authorize_get(&req(Some("Bearer w")), "/metrics")),
            200
        );
        assert_eq!(
            status(t.authorize_get(&req(Some("bearer r")), "/metrics")),
            401
        );
        for public in PUBLIC {
            assert_eq!(status(t.authorize_get(&req(None), public)), 200, "{public}");
        }
        // The read token never opens a POST.
        assert_eq!(status(t.authorize_post(&req(Some("Bearer r")))), 401);
        assert_eq!(status(t.authorize_post(&req(Some("Bearer w")))), 200);
    }

    #[test]
    fn without_tokens_everything_is_open() {
        let t = Tokens::default();
        assert_eq!(status(t.authorize_get(&req(None), "/metrics")), 200);
        assert_eq!(status(t.authorize_post(&req(None))), 200);
        let write_only = Tokens {
            write: Some(Arc::from("w")),
            read: None,
        };
        assert_eq!(
            status(write_only.authorize_get(&req(None), "/metrics")),
            200
        );
        assert_eq!(status(write_only.authorize_post(&req(None))), 401);
    }
}
