//! `health_check:` and `outlier:` of a pool -> `model::HealthCheck` / `model::Outlier`, with
//! their checks (path, host, expected statuses, port, timeout vs interval, ejection bounds).

use std::time::Duration;

use super::error::Issues;
use super::file::{HealthCheckFile, HealthKindFile, OutlierFile, StrOrInt};
use super::model::{HealthCheck, HealthCheckKind, Outlier, OutlierCount};
use super::node::Located;
use super::pool::{nonzero, nonzero_dur, or};
use super::retry::percent;

/// Statuses that pass an http check when `expected_status` is absent.
pub const DEFAULT_EXPECTED_STATUS: (u16, u16) = (200, 399);

/// The items `outlier.count` accepts.
pub const OUTLIER_COUNT_NAMES: &[&str] = &["connect_failure", "reset", "timeout", "5xx"];

/// A Host header value: a host name or IP, optionally with `:port`, nothing else.
pub(crate) fn valid_host(host: &str) -> bool {
    if host.contains('@') || !host.bytes().all(|b| b.is_ascii_graphic()) {
        return false;
    }
    let Ok(authority) = host.parse::<http::uri::Authority>() else {
        return false;
    };
    let name = authority.host();
    let port_ok = |rest: &str| {
        rest.is_empty()
            || rest
                .strip_prefix(':')
                .and_then(|p| p.parse::<u16>().ok())
                .is_some_and(|p| p != 0)
    };
    !name.is_empty() && host.strip_prefix(name).is_some_and(port_ok)
}

/// One `expected_status` item: `200`, `"204"` or `"200-399"`, each status 100-599.
pub(crate) fn parse_status_range(item: &StrOrInt) -> Result<(u16, u16), String> {
    let status = |n: i128| u16::try_from(n).ok().filter(|s| (100..=599).contains(s));
    match item {
        StrOrInt::Int(n) => status(*n)
            .map(|s| (s, s))
            .ok_or_else(|| format!("expected_status must be between 100 and 599, got {n}")),
        StrOrInt::Str(s) => {
            let bad = || {
                format!("invalid expected_status \"{s}\", expected a status like 200 or a range like 200-399")
            };
            let (lo, hi) = s.split_once('-').unwrap_or((s, s));
            let lo: i128 = lo.trim().parse().map_err(|_| bad())?;
            let hi: i128 = hi.trim().parse().map_err(|_| bad())?;
            let (Some(lo), Some(hi)) = (status(lo), status(hi)) else {
                return Err(format!(
                    "invalid expected_status \"{s}\": statuses must be between 100 and 599"
                ));
            };
            if lo > hi {
                return Err(format!(
                    "invalid expected_status \"{s}\": {lo} is greater than {hi}"
                ));
            }
            Ok((lo, hi))
        }
    }
}

fn expected_status(
    field: &Option<Located<Vec<Located<StrOrInt>>>>,
    issues: &mut Issues,
) -> Vec<(u16, u16)> {
    let Some(list) = field else {
        return vec![DEFAULT_EXPECTED_STATUS];
    };
    if list.value.is_empty() {
        issues.push(list.pos, "expected_status must list at least one status");
    }
    let mut out = Vec::new();
    for item in &list.value {
        match parse_status_range(&item.value) {
            Ok(range) => out.push(range),
            Err(m) => issues.push(item.pos, m),
        }
    }
    out
}

pub(crate) fn health(file: &HealthCheckFile, issues: &mut Issues) -> HealthCheck {
    let kind = match or(&file.kind, HealthKindFile::Http) {
        HealthKindFile::Http => HealthCheckKind::Http,
        HealthKindFile::Tcp => HealthCheckKind::Tcp,
        HealthKindFile::Grpc => HealthCheckKind::Grpc,
    };
    if let Some(s) = file
        .service
        .as_ref()
        .filter(|_| kind != HealthCheckKind::Grpc)
    {
        issues.push(s.pos, "health_check service applies to type: grpc only");
    }
    if let Some(p) = file.path.as_ref().filter(|_| kind == HealthCheckKind::Grpc) {
        issues.push(
            p.pos,
            "health_check path does not apply to type: grpc (it asks grpc.health.v1.Health/Check)",
        );
    }
    let path = or(&file.path, "/health".to_string());
    if let Some(p) = &file.path {
        if kind == HealthCheckKind::Http && !p.value.starts_with('/') {
            issues.push(
                p.pos,
                format!(
                    "health_check path must start with \"/\", got \"{}\"",
                    p.value
                ),
            );
        }
    }
    let host = file.host.as_ref().map(|h| {
        let host = h.value.trim();
        if !valid_host(host) {
            issues.push(
                h.pos,
                format!(
                    "invalid health_check host \"{}\" (a host name, optionally with :port)",
                    h.value
                ),
            );
        }
        host.to_string()
    });
    let port = file.port.as_ref().map(|p| match u16::try_from(p.value) {
        Ok(port) if port != 0 => port,
        _ => {
            issues.push(
                p.pos,
                format!(
                    "health_check port must be between 1 and 65535, got {}",
                    p.value
                ),
            );
            0
        }
    });
    let interval = nonzero_dur(
        &file.interval,
        Duration::from_secs(2),
        "health_check interval",
        issues,
    );
    // The default timeout (1s) shrinks to a shorter interval; a written one must fit.
    let timeout = nonzero_dur(
        &file.timeout,
        Duration::from_secs(1).min(interval),
        "health_check timeout",
        issues,
    );
    let interval_ok = file.interval.as_ref().is_none_or(|i| !i.value.0.is_zero());
    if let Some(t) = file
        .timeout
        .as_ref()
        .filter(|_| interval_ok && timeout > interval)
    {
        issues.push(
            t.pos,
            format!(
                "health_check timeout {} exceeds interval {}",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        );
    }
    HealthCheck {
        kind,
        path,
        service: file
            .service
            .as_ref()
            .map_or_else(String::new, |s| s.value.clone()),
        host,
        expected_status: expected_status(&file.expected_status, issues),
        port,
        interval,
        timeout,
        rise: nonzero(&file.rise, 2, "health_check rise", issues),
        fall: nonzero(&file.fall, 3, "health_check fall", issues),
    }
}

fn outlier_count(
    field: &Option<Located<Vec<Located<String>>>>,
    issues: &mut Issues,
) -> OutlierCount {
    let Some(list) = field else {
        return OutlierCount::default();
    };
    if list.value.is_empty() {
        issues.push(
            list.pos,
            "outlier count must list at least one failure kind",
        );
    }
    let mut count = OutlierCount {
        connect_failure: false,
        reset: false,
        timeout: false,
        status_5xx: false,
    };
    for item in &list.value {
        match item.value.trim() {
            "connect_failure" => count.connect_failure = true,
            "reset" => count.reset = true,
            "timeout" => count.timeout = true,
            "5xx" => count.status_5xx = true,
            other => issues.push(
                item.pos,
                format!(
                    "unknown outlier count item \"{other}\", expected one of: {}",
                    OUTLIER_COUNT_NAMES.join(", ")
                ),
            ),
        }
    }
    count
}

pub(crate) fn outlier(file: &OutlierFile, issues: &mut Issues) -> Outlier {
    let ejection = nonzero_dur(
        &file.ejection,
        Duration::from_secs(30),
        "outlier ejection",
        issues,
    );
    let ejection_ok = file.ejection.as_ref().is_none_or(|e| !e.value.0.is_zero());
    let max_ejection = match &file.max_ejection {
        None => ejection.max(Duration::from_secs(300)),
        Some(m) if m.value.0 < ejection && ejection_ok => {
            issues.push(
                m.pos,
                format!(
                    "outlier max_ejection {} is shorter than ejection {}",
                    humantime::format_duration(m.value.0),
                    humantime::format_duration(ejection)
                ),
            );
            ejection
        }
        Some(m) => m.value.0,
    };
    Outlier {
        consecutive_failures: nonzero(
            &file.consecutive_failures,
            5,
            "outlier consecutive_failures",
            issues,
        ),
        ejection,
        max_ejection,
        max_ejection_percent: percent(
            &file.max_ejection_percent,
            50,
            "outlier max_ejection_percent",
            issues,
        ),
        count: outlier_count(&file.count, issues),
    }
}
