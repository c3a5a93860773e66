//! Pool retry and degradation settings: `retry_methods`, `retry_on` and the 0-100 percent
//! fields (`panic_threshold`, `outlier.max_ejection_percent`).

use http::Method;

use super::error::Issues;
use super::file::StrOrInt;
use super::model::RetryOn;
use super::node::Located;

/// Methods retried after the request was sent when `retry_methods` is absent.
pub fn default_retry_methods() -> Vec<Method> {
    vec![
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
    ]
}

/// The names `retry_on` accepts besides 5xx status codes.
pub const RETRY_ON_NAMES: &[&str] = &["connect_failure", "reset", "timeout"];

/// The gRPC statuses `retry_on` accepts, with their codes (Envoy's `retry-on` gRPC set).
pub const GRPC_RETRY_ON: [(&str, u8); 5] = [
    ("cancelled", 1),
    ("deadline_exceeded", 4),
    ("resource_exhausted", 8),
    ("internal", 13),
    ("unavailable", 14),
];

/// `retry_methods: [GET, head, ...]`: HTTP method tokens, upper-cased, duplicates dropped.
pub(crate) fn retry_methods(
    field: &Option<Vec<Located<String>>>,
    issues: &mut Issues,
) -> Vec<Method> {
    let Some(list) = field else {
        return default_retry_methods();
    };
    let mut methods = Vec::new();
    for item in list {
        let name = item.value.trim().to_ascii_uppercase();
        match Method::from_bytes(name.as_bytes()) {
            Ok(m) => {
                if !methods.contains(&m) {
                    methods.push(m);
                }
            }
            _ => issues.push(
                item.pos,
                format!(
                    "invalid HTTP method \"{}\" in retry_methods (e.g. GET, PUT)",
                    item.value
                ),
            ),
        }
    }
    methods
}

/// `retry_on: [connect_failure, reset, timeout, 502, 503, 504]`: exactly the listed
/// conditions are on (absent: connect_failure, reset and timeout, no statuses).
pub(crate) fn retry_on(field: &Option<Vec<Located<StrOrInt>>>, issues: &mut Issues) -> RetryOn {
    let Some(list) = field else {
        return RetryOn::default();
    };
    let mut on = RetryOn {
        connect_failure: false,
        reset: false,
        timeout: false,
        statuses: Vec::new(),
        grpc: Vec::new(),
    };
    for item in list {
        let status = match &item.value {
            StrOrInt::Str(s) => match s.trim() {
                "connect_failure" => {
                    on.connect_failure = true;
                    continue;
                }
                "reset" => {
                    on.reset = true;
                    continue;
                }
                "timeout" => {
                    on.timeout = true;
                    continue;
                }
                t if GRPC_RETRY_ON.iter().any(|(n, _)| *n == t) => {
                    let code = GRPC_RETRY_ON
                        .iter()
                        .find(|(n, _)| *n == t)
                        .map_or(0, |c| c.1);
                    if !on.grpc.contains(&code) {
                        on.grpc.push(code);
                    }
                    continue;
                }
                t => match t.parse::<i128>() {
                    Ok(n) => n,
                    Err(_) => {
                        issues.push(
                            item.pos,
                            format!(
                                "unknown retry_on item \"{s}\", expected one of: {}, {}, or a status 500-599",
                                RETRY_ON_NAMES.join(", "),
                                GRPC_RETRY_ON.map(|(n, _)| n).join(", ")
                            ),
                        );
                        continue;
                    }
                },
            },
            StrOrInt::Int(n) => *n,
        };
        match u16::try_from(status) {
            Ok(s) if (500..=599).contains(&s) => {
                if !on.statuses.contains(&s) {
                    on.statuses.push(s);
                }
            }
            _ => issues.push(
                item.pos,
                format!("retry_on status must be between 500 and 599, got {status}"),
            ),
        }
    }
    on
}

/// A 0-100 percent field.
pub(crate) fn percent(
    field: &Option<Located<u32>>,
    default: u8,
    what: &str,
    issues: &mut Issues,
) -> u8 {
    match field {
        None => default,
        Some(l) => u8::try_from(l.value)
            .ok()
            .filter(|p| *p <= 100)
            .unwrap_or_else(|| {
                issues.push(
                    l.pos,
                    format!("{what} must be between 0 and 100, got {}", l.value),
                );
                default
            }),
    }
}
