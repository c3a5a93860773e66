//! `pools.NAME.autoscale`: `AutoscaleFile` -> `model::Autoscale`, with its defaults and every
//! per-pool autoscale check (command, env, ports vs max, targets, steps, timings); overlaps
//! with other pools and listeners are checked in `checks.rs`.

use std::path::PathBuf;
use std::time::Duration;

use super::error::{Issues, Pos};
use super::file::{AutoscaleFile, EnvFile, TargetFile};
use super::model::{
    Autoscale, CommandProvider, Discovery, ProcessProvider, Provider, ProviderConfig, ScaleTarget,
};
use super::node::Located;
use super::pool::{nonzero, nonzero_dur, or};

/// Environment variables autolb sets itself on every instance.
const RESERVED_ENV: &[&str] = &["PORT"];

/// `3100-3199` (or a single port) -> inclusive range.
pub(crate) fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("invalid ports \"{s}\", expected a range like 3100-3199");
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (lo.trim(), hi.trim()),
        None => (s.trim(), s.trim()),
    };
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// A portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn env(file: Option<&EnvFile>, issues: &mut Issues) -> Vec<(String, String)> {
    let Some(file) = file else {
        return Vec::new();
    };
    let mut vars = Vec::new();
    for (key, value) in &file.0 {
        if !is_env_name(&key.value) {
            issues.push(
                key.pos,
                format!(
                    "invalid environment variable name \"{}\" (expected letters, digits and _, \
                     not starting with a digit)",
                    key.value
                ),
            );
        } else if RESERVED_ENV.contains(&key.value.as_str()) {
            issues.push(
                key.pos,
                format!(
                    "env {} is reserved: autolb sets it to each instance's port",
                    key.value
                ),
            );
        } else if value.value.contains('\0') {
            issues.push(
                value.pos,
                format!("env {} must not contain a NUL character", key.value),
            );
        } else {
            vars.push((key.value.clone(), value.value.clone()));
        }
    }
    vars
}

/// The targets; at least one must be set (reported at `target`, or at `autoscale`).
fn target(
    located: Option<&Located<TargetFile>>,
    autoscale_pos: Pos,
    issues: &mut Issues,
) -> ScaleTarget {
    let Some(Located { pos, value: t }) = located else {
        issues.push(autoscale_pos, "autoscale needs at least one target");
        return ScaleTarget::default();
    };
    let mut positive = |f: &Option<Located<u32>>, what: &str, max: u32| {
        f.as_ref().map(|l| {
            if l.value == 0 {
                issues.push(l.pos, format!("target.{what} must be greater than 0"));
            } else if l.value > max {
                issues.push(
                    l.pos,
                    format!("target.{what} must be between 1 and {max}, got {}", l.value),
                );
            }
            l.value
        })
    };
    let target = ScaleTarget {
        inflight_per_instance: positive(
            &t.inflight_per_instance,
            "inflight_per_instance",
            u32::MAX,
        ),
        rps_per_instance: positive(&t.rps_per_instance, "rps_per_instance", u32::MAX),
        p95_latency_ms: positive(&t.p95_latency_ms, "p95_latency_ms", u32::MAX),
        cpu_percent: positive(&t.cpu_percent, "cpu_percent", 1000),
        memory_mb: positive(&t.memory_mb, "memory_mb", u32::MAX),
        prometheus: t.prometheus.as_ref().map(|p| p.value.per_instance.value),
        redis_list: t.redis_list.as_ref().map(|r| r.value.per_instance.value),
    };
    if target == ScaleTarget::default() {
        issues.push(*pos, "autoscale needs at least one target");
    }
    target
}

pub(crate) fn autoscale(
    located: &Located<AutoscaleFile>,
    issues: &mut Issues,
) -> Option<Autoscale> {
    let (file, pos) = (&located.value, located.pos);
    let before = issues.len();
    let provider = match &file.provider {
        None => Provider::Process,
        Some(p) => Provider::from_name(&p.value).unwrap_or_else(|| {
            let known: Vec<&str> = Provider::ALL.iter().map(|p| p.name()).collect();
            issues.push(
                p.pos,
                format!(
                    "unknown autoscale provider \"{}\" (known: {})",
                    p.value,
                    known.join(", ")
                ),
            );
            Provider::Process
        }),
    };
    let is_command = provider == Provider::Command;
    let (scale, list, discovery) = command_provider(file, pos, is_command, issues);
    let command = or(&file.command, Vec::new());
    if is_command {
        if let Some(c) = &file.command {
            issues.push(
                c.pos,
                "autoscale command is for provider process; provider command uses scale and list",
            );
        }
    } else if command.first().is_none_or(|c| c.trim().is_empty()) {
        let at = file.command.as_ref().map_or(pos, |c| c.pos);
        issues.push(
            at,
            "autoscale needs a command, e.g. [autolb-echo, --port, \"{port}\"]",
        );
    }
    let env = env(file.env.as_ref(), issues);
    let cwd = file.cwd.as_ref().and_then(|c| {
        if c.value.trim().is_empty() {
            issues.push(c.pos, "autoscale cwd must not be empty");
            None
        } else {
            // Made relative to the config file's directory in `convert::build`.
            Some(PathBuf::from(&c.value))
        }
    });
    let ports = match &file.ports {
        None if is_command => (0, 0),
        Some(p) if is_command => {
            issues.push(p.pos, "autoscale ports are for provider process");
            (0, 0)
        }
        None => {
            issues.push(pos, "autoscale needs ports, e.g. 3100-3199");
            (0, 0)
        }
        Some(p) => parse_ports(&p.value).unwrap_or_else(|m| {
            issues.push(p.pos, m);
            (0, 0)
        }),
    };
    let (min, max) = (or(&file.min, 1), or(&file.max, 8));
    let max_pos = file.max.as_ref().map_or(pos, |m| m.pos);
    if max == 0 {
        issues.push(max_pos, "autoscale max must be at least 1");
    } else if min > max {
        let at = file.min.as_ref().map_or(max_pos, |m| m.pos);
        issues.push(at, format!("autoscale min {min} is greater than max {max}"));
    }
    let count = if ports.0 == 0 {
        None
    } else {
        Some(u32::from(ports.1) - u32::from(ports.0) + 1)
    };
    if let Some(count) = count.filter(|&c| max > c) {
        let ports_pos = file.ports.as_ref().map_or(pos, |p| p.pos);
        let at = file.max.as_ref().map_or(ports_pos, |m| m.pos);
        issues.push(
            at,
            format!(
                "autoscale max {max} exceeds the {count} ports in {}-{}",
                ports.0, ports.1
            ),
        );
    }
    let target = target(file.target.as_ref(), pos, issues);
    let t = file.target.as_ref().map(|t| &t.value);
    let external = super::ExternalTargets {
        prometheus: super::autoscale_external::prometheus(
            t.and_then(|t| t.prometheus.as_ref()),
            issues,
        ),
        redis_list: super::autoscale_external::redis_list(
            t.and_then(|t| t.redis_list.as_ref()),
            issues,
        ),
    };
    let secs = Duration::from_secs;
    let up_step = file.scale_up.as_ref().and_then(|s| s.max_step.clone());
    let down = file.scale_down.as_ref();
    let stabilization = down.and_then(|s| s.stabilization.as_ref());
    let down_step = down.and_then(|s| s.max_step.clone());
    let provider = if is_command {
        ProviderConfig::Command(CommandProvider {
            scale,
            list,
            discovery,
        })
    } else {
        ProviderConfig::Process(ProcessProvider { command, ports })
    };
    let autoscale = Autoscale {
        provider,
        env,
        cwd,
        min,
        max,
        interval: nonzero_dur(&file.interval, secs(5), "autoscale interval", issues),
        target,
        external,
        scale_up_max_step: nonzero(&up_step, 4, "autoscale scale_up.max_step", issues),
        scale_down_stabilization: stabilization.map_or(secs(300), |s| s.value.0),
        scale_down_max_step: nonzero(&down_step, 1, "autoscale scale_down.max_step", issues),
        drain_timeout: file.drain_timeout.as_ref().map_or(secs(30), |d| d.value.0),
        stop_grace: nonzero_dur(&file.stop_grace, secs(10), "autoscale stop_grace", issues),
        manual_hold: file.manual_hold.as_ref().map_or(secs(600), |d| d.value.0),
        cold_start_queue: nonzero(
            &file.cold_start_queue,
            100,
            "autoscale cold_start_queue",
            issues,
        ),
        cold_start_timeout: nonzero_dur(
            &file.cold_start_timeout,
            secs(30),
            "autoscale cold_start_timeout",
            issues,
        ),
        shared: file.shared.as_ref().is_some_and(|s| s.value),
        timezone: super::schedule::timezone(file.timezone.as_ref(), issues),
        schedule: super::schedule::schedule(file.schedule.as_ref(), count, issues),
        predictive: super::schedule::predictive(file.predictive.as_ref(), issues),
    };
    (issues.len() == before).then_some(autoscale)
}

/// `scale`, `list` and `discovery` (provider `command` only; it needs `scale` and exactly
/// one of `list` or `discovery`).
fn command_provider(
    file: &AutoscaleFile,
    pos: Pos,
    is_command: bool,
    issues: &mut Issues,
) -> (Vec<String>, Vec<String>, Option<Discovery>) {
    if !is_command {
        for (what, at) in [
            ("scale", file.scale.as_ref().map(|s| s.pos)),
            ("list", file.list.as_ref().map(|s| s.pos)),
            ("discovery", file.discovery.as_ref().map(|s| s.pos)),
        ] {
            if let Some(at) = at {
                issues.push(at, format!("autoscale {what} needs provider: command"));
            }
        }
        return (Vec::new(), Vec::new(), None);
    }
    let argv = |f: &Option<Located<Vec<String>>>, what: &str, issues: &mut Issues| {
        let v = or(f, Vec::new());
        if f.is_some() && v.first().is_none_or(|c| c.trim().is_empty()) {
            let at = f.as_ref().map_or(pos, |l| l.pos);
            issues.push(at, format!("autoscale {what} must name a program"));
        }
        v
    };
    let scale = argv(&file.scale, "scale", issues);
    if file.scale.is_none() {
        issues.push(
            pos,
            "provider command needs scale, e.g. [./scale.sh, \"{pool}\", \"{count}\"]",
        );
    }
    let list = argv(&file.list, "list", issues);
    let discovery = file
        .discovery
        .as_ref()
        .and_then(|d| super::discovery::discovery(d, issues));
    match (&file.list, &file.discovery) {
        (None, None) => issues.push(pos, "provider command needs list or discovery"),
        (Some(_), Some(d)) => issues.push(d.pos, "use either list or discovery, not both"),
        _ => {}
    }
    (scale, list, discovery)
}
